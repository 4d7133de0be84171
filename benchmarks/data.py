"""Benchmark inputs: a release-format fixture at a chosen scale, a reading subset and its LMDB.

Everything is generated once per ``--work`` folder and reused by later runs
(a ``done.json`` note marks a finished folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import log  # also puts tests/ on sys.path

from make_fixtures import ARCHIVE_NAME, MAPS_ARCHIVE_NAME, PARQUET_NAME as PARQUET  # noqa: E402

ARCHIVES = (ARCHIVE_NAME["s2"], ARCHIVE_NAME["s1"], MAPS_ARCHIVE_NAME)


def _done(folder: Path) -> Dict:
    note = folder / "done.json"
    return json.loads(note.read_text()) if note.exists() else {}


def fixture(work: Path, patches: int, seed: int = 1) -> Dict:
    """``make_fixture`` with ``patches`` image pairs in all (8 fixed + generated), ~19 texts each."""
    from make_fixtures import make_fixture

    root = work / f"fixture-{patches}-seed{seed}"
    info = _done(root)
    if info:
        return info
    shutil.rmtree(root, ignore_errors=True)
    log(f"generating a fixture of {patches} image pairs in {root} (~13 ms per pair)")
    fx = make_fixture(root / "data", seed=seed, n_extra_patches=max(0, patches - 8))
    archived = fx.archived_patches
    info = {
        "data_dir": str(root / "data"),
        "patches": len(archived),
        "rows": fx.table.num_rows,
        "s2_archive": str(fx.s2_archive),
        "s1_archive": str(fx.s1_archive),
        "archive_bytes": os.path.getsize(fx.s2_archive) + os.path.getsize(fx.s1_archive),
    }
    (root / "done.json").write_text(json.dumps(info, indent=1))
    return info


def read_subset(work: Path, fx: Dict, patches: int, seed: int = 2) -> Dict:
    """A data dir whose parquet keeps the rows of ``patches`` random image pairs (archives linked), plus their LMDB."""
    from benchmarks.publisher_reference import write_lmdb_from_archives

    root = work / f"read-{Path(fx['data_dir']).parent.name}-{patches}"
    info = _done(root)
    if info:
        return info
    shutil.rmtree(root, ignore_errors=True)
    data = root / "data"
    data.mkdir(parents=True)
    table = pq.read_table(Path(fx["data_dir"]) / PARQUET)
    names = np.array(sorted(set(table["patch_id"].to_pylist())))
    chosen = np.random.default_rng(seed).choice(names, size=min(patches, len(names)), replace=False)
    rows = table.filter(pc.is_in(table["patch_id"], pa.array(chosen.tolist())))  # file order: rows stay scattered
    pq.write_table(rows, data / PARQUET, row_group_size=max(16, rows.num_rows // 4))
    for name in ARCHIVES:
        os.symlink(Path(fx["data_dir"]) / name, data / name)
    pairs = dict(zip(rows["patch_id"].to_pylist(), rows["s1_name"].to_pylist()))
    log(f"writing a rico-hdl style LMDB of {len(pairs)} image pairs")
    lmdb_dir = write_lmdb_from_archives(fx["s2_archive"], fx["s1_archive"], str(root / "Encoded-BigEarthNet"), pairs,
                                        pairs.values())
    info = {"data_dir": str(data), "lmdb_dir": str(lmdb_dir), "patches": len(pairs), "rows": rows.num_rows}
    (root / "done.json").write_text(json.dumps(info, indent=1))
    return info
