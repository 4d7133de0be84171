"""The ``bigearthnet-txt`` command line (info, show, demo, --quiet) and examples/train_one_step.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import bigearthnet_txt as bt
from bentxt import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def restore_global_state():
    """--quiet switches datasets' bars off and the logger to WARNING: put both back after each test."""
    level = logging.getLogger("bigearthnet_txt").level
    yield
    datasets.enable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(level)


def table(out: str) -> dict:
    """The size table printed by ``info``: {split: [cells]} (cells split on 2+ spaces)."""
    import re

    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in (*bt.SPLITS, "total"):
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- info


def test_info_lists_configs(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "90 configs" in out and "task grounding: type bounding box" in out


def test_info_release_sizes_and_cache_estimates(capsys):
    assert cli.main(["info", "s1s2-all"]) == 0
    out = capsys.readouterr().out
    assert "s2_20m: Array3D(shape=(6, 60, 60), dtype='uint16')" in out
    rows = table(out)
    # rows and image pairs of the release (facts file section 4); cache = images per row (annotation layout)
    # or per pair (patch layout): 4*120*120*2 + 6*60*60*2 + 2*20*20*2 + 2*120*120*4 = 275,200 B, +2%, + 270 B/row
    assert rows["train"] == ["4,674,281", "229,114", "1,313.35 GB", "65.58 GB"]
    assert rows["bench"] == ["15,029", "1,082", "4.22 GB", "0.31 GB"]
    assert rows["total"][:2] == ["9,553,962", "464,044"]
    assert round(4_674_281 * (275_200 * 1.02 + 270) / 1e9, 2) == 1313.35


def test_info_marks_unknown_per_task_counts(capsys):
    assert cli.main(["info", "s1-grounding-bench", "--layout", "patch"]) == 0
    out = capsys.readouterr().out
    assert "annotations: List(" in out and "s2_10m" not in out
    assert table(out)["bench"] == ["unknown (<= 15,029)", "unknown (<= 1,082)", "<= 1.77 GB", "<= 0.13 GB"]


def test_info_counts_a_data_dir(fixture_data, capsys):
    assert cli.main(["info", "s2-vqa", "--data-dir", str(fixture_data.root)]) == 0
    out = capsys.readouterr().out
    assert "not the release parquet" in out
    rows = table(out)
    t = fixture_data.table.filter(pc.is_in(fixture_data.table["type"], pa.array(["binary", "mcq"])))
    for split in bt.SPLITS:
        part = t.filter(pc.equal(t["split"], split))
        assert rows[split][:2] == [str(len(part)), str(len(pc.unique(part["patch_id"])))]
    assert rows["total"][0] == str(len(t))


def test_info_rejects_unknown_config():
    with pytest.raises(SystemExit, match="Did you mean"):
        cli.main(["info", "s2-grounding-tset"])


# ----------------------------------------------------------------------------- show


def read_png(path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_show_writes_the_grounding_example(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "pictures" / "grounding.png"
    assert cli.main(["--quiet", "show", "s1s2-grounding", "--split", "test", "--id", "27527", "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ID 27527, bounding box, patch S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39" in out
    image = read_png(png)
    assert image.shape[1] == 800 and image.shape[2] == 4 and image[..., :3].std() > 0.1
    yellow = (image[..., 0] > 0.8) & (image[..., 1] > 0.8) & (image[..., 2] < 0.35)
    assert yellow.sum() > 500  # the box outline, in both panels


def test_show_streaming_draws_the_same_picture_as_prepared(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "prepared.png", tmp_path / "streamed.png"
    assert cli.main(["--quiet", "show", "s2-grounding-test", "--id", "27529", "-o", str(a)]) == 0
    assert cli.main(["--quiet", "show", "s2-grounding-test", "--id", "27529", "--streaming", "-o", str(b)]) == 0
    np.testing.assert_array_equal(read_png(a), read_png(b))


def test_show_patch_layout_and_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "patch.png"
    assert cli.main(["--quiet", "show", "s1s2-all", "--layout", "patch", "--id", "27530", "-o", str(png)]) == 0
    assert "ID 27530, bounding box" in capsys.readouterr().out and png.is_file()
    with pytest.raises(SystemExit, match="--id 99999999: no such annotation in split test"):
        cli.main(["--quiet", "show", "s1s2-grounding-test", "--id", "99999999", "-o", str(png)])
    with pytest.raises(SystemExit, match="has the splits"):
        cli.main(["--quiet", "show", "s1s2-grounding-test", "--split", "train", "-o", str(png)])


def test_quiet_silences_bars_and_info_logs(tmp_path, capfd):
    pytest.importorskip("matplotlib")
    assert cli.main(["--quiet", "show", "s1-binary-bench", "-o", str(tmp_path / "q.png")]) == 0
    err = capfd.readouterr().err
    assert "Generating" not in err and "bigearthnet_txt:" not in err and "examples/s" not in err
    datasets.enable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(logging.INFO)
    assert cli.main(["show", "s1-binary-bench", "-o", str(tmp_path / "loud.png")]) == 0
    err = capfd.readouterr().err
    assert "Generating bench split" in err and "examples/s" in err  # datasets' bar with its rate


def test_demo_still_works(capsys):
    assert cli.main(["--quiet", "demo", "--config", "s1-captioning", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "streaming test: 2 examples read" in out and "(prepared: 2)" in out


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "bigearthnet_txt", "--quiet", "info", "s2-captioning-bench"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "unknown (<= 15,029)" in run.stdout


# ----------------------------------------------------------------------------- example


def test_train_one_step_example(tmp_path):
    pytest.importorskip("torch", reason="examples/train_one_step.py needs PyTorch (pip install 'bigearthnet-txt[torch]')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "train_one_step.py"), "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("batch: s2_10m (8, 4, 120, 120) torch.float32")
    assert "image_input groups: ['s2_10m', 's2_20m', 's2_60m']" in lines[1]
    before, after = (float(v) for v in lines[-1].split()[2::2])
    assert np.isfinite(before) and np.isfinite(after) and after < before
