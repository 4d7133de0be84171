"""Importing the package replaces ``datasets``' numpy and torch formatters for the whole process: for datasets that are
not ours, nothing may change. ``tests/formatting_sample.py`` formats a sample of plain datasets (ints, floats, strings,
None values, nested lists, structs, ClassLabel, Array2D/3D, Image, columns named like ours; ``dtype=`` arguments,
``columns=`` selections, rows, slices, columns, iteration, IterableDataset) in a fresh process without the package and
in one with it; every value, dtype, shape and type must be equal."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sample(mode: str, tmp_path: Path) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "formatting_sample.py"), mode], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_plain_datasets_format_exactly_as_datasets_does(tmp_path):
    without = _sample("without", tmp_path)
    with_package = _sample("with", tmp_path)
    assert len(without) > 300 and set(without) == set(with_package)
    # the sample covers what our formatter would change if it took a dataset for ours: int columns become int64
    row = without["lookalike/numpy/[]/columns=None/row"][2]
    assert row["s2_10m"][:3] == ["ndarray", "int64", [2, 2, 2]] and row["s1"][:2] == ["ndarray", "float32"]
    differing = {key: (without[key], with_package[key]) for key in without if without[key] != with_package[key]}
    assert not differing, f"{len(differing)} outputs differ, first: {next(iter(differing.items()))}"
