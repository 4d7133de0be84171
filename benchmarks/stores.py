"""Several configs of one source: one imagery store, and what each further config costs.

    python benchmarks/stores.py [--patches 2000] [--work DIR] [--skip textscale]

Measured in one run, each against a baseline of the same run:

1. four ``s1s2`` configs of one download prepared into one ``cache_dir`` (``vqa``, ``captioning``,
   ``grounding``, ``vqa-validation``), ``num_proc=2``: the first against ``zstd -dc`` of both archives,
   the others against the first (the per-pair rate of a first preparation against >= 0.6x of ``zstd -dc``
   is ``benchmarks/release.py``'s); disk of the whole cache against one copy of the pixels plus the
   parquet; projected to the release (every task x split config of ``s1s2`` together);
2. a second config at the release's text scale: a 9,553,962-row parquet (``benchmarks/textscale.py``)
   whose first image pairs are the fixture's; ``s2-vqa`` prepared first (its pass finds the few
   pairs the archive holds and records the rest as absent, ``skip_missing=True``), then
   ``s2-captioning`` timed in a fresh process with its peak RSS, against ``pd.read_parquet`` of the
   same file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, log, print_report, run_child  # noqa: E402
from benchmarks.release import RELEASE_PAIRS  # noqa: E402

CONFIGS = ("s1s2-vqa", "s1s2-captioning", "s1s2-grounding", "s1s2-vqa-validation")
#: texts per task at release scale (docs/release.md#counts); each task has 5 configs (all splits + one per split),
#: which together hold its texts twice
RELEASE_TASK_TEXTS = {"all": 9_553_962, "vqa": 6_884_344, "captioning": 463_932, "grounding": 2_205_686}


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def prepare(data_dir: str, cache_dir: str, config: str, num_proc: int = 2, **options) -> dict:
    """One config through load_dataset's builder (in a child: its own peak RSS)."""
    import logging

    import datasets

    import bigearthnet_txt  # noqa: F401

    datasets.disable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(logging.WARNING)
    builder = datasets.load_dataset_builder("bigearthnet_txt", config, data_dir=data_dir, cache_dir=cache_dir, **options)
    t = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    seconds = time.perf_counter() - t
    ds = builder.as_dataset()
    return {"seconds": seconds, "texts": sum(p.num_rows for p in ds.values()), "text_bytes": _folder_bytes(builder.cache_dir),
            "pairs": len({pid for p in ds.values() for pid in p["patch_id"]})}


def several_configs(work: Path, fx: Dict, notes: List[str]) -> List[Row]:
    from bentxt.cache import store

    cache = work / "stores-cache"
    shutil.rmtree(cache, ignore_errors=True)
    log("zstd -dc of both archives")
    zstd = min((run_child("benchmarks.release:zstd_cli", {"archives": [fx["s2_archive"], fx["s1_archive"]]})
                for _ in range(2)), key=lambda r: r["seconds"])
    results = {}
    for config in CONFIGS:
        log(f"prepare {config} into the shared cache")
        results[config] = run_child("benchmarks.stores:prepare", {"data_dir": fx["data_dir"], "cache_dir": str(cache),
                                                                 "config": config})
    parquet = os.path.getsize(os.path.join(fx["data_dir"], "BigEarthNet.txt.parquet"))
    stores_bytes = _folder_bytes(str(cache / "bigearthnet_txt" / "imagery"))
    total = _folder_bytes(str(cache / "bigearthnet_txt"))
    pair_bytes = store.pair_bytes("s1") + store.pair_bytes("s2")
    pixels = fx["patches"] * pair_bytes / 1.02  # the raw values, once
    first = results[CONFIGS[0]]
    texts = sum(r["texts"] for r in results.values())
    per_text = sum(r["text_bytes"] for r in results.values()) / texts
    release_store = RELEASE_PAIRS * stores_bytes / fx["patches"]
    release_texts = 2 * sum(RELEASE_TASK_TEXTS.values()) * per_text
    notes.append(
        f"{len(CONFIGS)} configs of one source ({fx['patches']} pairs, {texts:,} texts in all): cache {total / 1e6:,.1f} MB = "
        f"one store {stores_bytes / 1e6:,.1f} MB + texts {(total - stores_bytes) / 1e6:,.1f} MB ({per_text:,.0f} B per text); "
        f"one copy of the pixels {pixels / 1e6:,.1f} MB, parquet {parquet / 1e6:,.1f} MB"
    )
    notes.append(
        f"release projection, every task x split config of s1s2 together (20 configs, "
        f"{2 * sum(RELEASE_TASK_TEXTS.values()) / 1e6:,.1f} M texts): store {release_store / 1e9:,.0f} GB + texts "
        f"{release_texts / 1e9:,.1f} GB = {(release_store + release_texts) / 1e9:,.0f} GB"
    )
    rows = [  # the whole run with its start-up; benchmarks/release.py measures the per-pair rate against >= 0.6x
        Row(f"prepare {CONFIGS[0]} (first, {fx['patches']} pairs, whole run) vs zstd -dc", fx["patches"] / first["seconds"],
            fx["patches"] / zstd["seconds"], "p/s"),
    ]
    for config in CONFIGS[1:]:
        r = results[config]
        rows.append(Row(f"   then {config} (store already holds its pairs)", r["seconds"], first["seconds"], "s",
                        higher_is_better=False))
    rows += [
        Row(f"   disk of the {len(CONFIGS)} configs / (pixels once + parquet)", total / 1e6, (pixels + parquet) / 1e6, "MB",
            higher_is_better=False, target=1 / 1.25, target_text="<= 1.25x"),
        Row("   release projection, all 20 s1s2 configs", (release_store + release_texts) / 1e9, None, "GB",
            higher_is_better=False),
    ]
    return rows


def text_scale_data(work: Path, fx: Dict) -> str:
    """The release-sized parquet with its first image pairs renamed to the fixture's (so they have pixels)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from benchmarks import textscale

    folder = work / "textscale-data"
    done = folder / "done"
    if done.exists():
        return str(folder)
    big = work / "textscale.parquet"
    log("generating (or reusing) the 9.55 M-row parquet")
    textscale.ensure(str(big))
    folder.mkdir(exist_ok=True)
    small = pq.read_table(Path(fx["data_dir"]) / "BigEarthNet.txt.parquet", columns=["patch_id", "s1_name", "split"])
    pairs = sorted(set(zip(small["patch_id"].to_pylist(), small["s1_name"].to_pylist(), small["split"].to_pylist())))
    reader = pq.ParquetFile(big)
    table = reader.read()
    firsts = table.group_by("patch_id").aggregate([("s1_name", "min"), ("split", "min")])
    rename_s2, rename_s1 = {}, {}
    by_split: Dict[str, list] = {}
    for pid, s1, split in zip(firsts["patch_id"].to_pylist(), firsts["s1_name_min"].to_pylist(), firsts["split_min"].to_pylist()):
        by_split.setdefault(split, []).append((pid, s1))
    for pid, s1, split in pairs:  # same split, so the pair's texts keep their split
        old_pid, old_s1 = by_split[split].pop()
        rename_s2[old_pid], rename_s1[old_s1] = pid, s1

    def renamed(column: pa.ChunkedArray, mapping: Dict[str, str]) -> pa.Array:
        values = np.array(column.to_pylist(), dtype=object)
        for old, new in mapping.items():
            values[values == old] = new
        return pa.array(values.tolist(), pa.string())

    log(f"renaming {len(pairs)} image pairs of the big parquet to the fixture's")
    mask = pc.is_in(table["patch_id"], pa.array(list(rename_s2)))
    idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    pid = table["patch_id"].to_numpy(zero_copy_only=False).astype(object)
    s1 = table["s1_name"].to_numpy(zero_copy_only=False).astype(object)
    for i in idx:
        s1[i] = rename_s1[s1[i]]
        pid[i] = rename_s2[pid[i]]
    table = table.set_column(table.schema.get_field_index("patch_id"), "patch_id", pa.array(pid.tolist(), pa.string()))
    table = table.set_column(table.schema.get_field_index("s1_name"), "s1_name", pa.array(s1.tolist(), pa.string()))
    pq.write_table(table, folder / "BigEarthNet.txt.parquet", row_group_size=reader.metadata.row_group(0).num_rows)
    for name in ("BigEarthNet-S1.tar.zst", "BigEarthNet-S2.tar.zst"):
        target = folder / name
        if not target.exists():
            os.symlink(Path(fx["data_dir"]) / name, target)
    done.write_text("ok")
    return str(folder)


def second_config_at_text_scale(work: Path, fx: Dict, notes: List[str]) -> List[Row]:
    data = text_scale_data(work, fx)
    cache = work / "textscale-cache"
    shutil.rmtree(cache, ignore_errors=True)
    log("prepare s2-vqa (the first config of this source) at text scale")
    first = run_child("benchmarks.stores:prepare", {"data_dir": data, "cache_dir": str(cache), "config": "s2-vqa",
                                                    "skip_missing": True})
    log("prepare s2-captioning (a second config) at text scale")
    second = run_child("benchmarks.stores:prepare", {"data_dir": data, "cache_dir": str(cache), "config": "s2-captioning",
                                                     "skip_missing": True})
    pandas = run_child("benchmarks.textscale:measure_pandas", {"path": os.path.join(data, "BigEarthNet.txt.parquet"),
                                                               "config": "s2-captioning"})
    shutil.rmtree(cache, ignore_errors=True)
    notes.append(f"text scale: s2-vqa first {first['seconds']:.1f} s ({first['peak_rss_mb']:,.0f} MB); s2-captioning "
                 f"second {second['seconds']:.1f} s ({second['peak_rss_mb']:,.0f} MB peak RSS, {second['texts']:,} texts "
                 f"kept of 9,553,962); pd.read_parquet + isin {pandas['seconds']:.1f} s ({pandas['peak_rss_mb']:,.0f} MB)")
    return [
        Row("second config at release text scale (s2-captioning)", second["seconds"], pandas["seconds"], "s",
            higher_is_better=False, absolute_max=10, target_text="< 10 s"),
        Row("   its peak RSS", second["peak_rss_mb"], pandas["peak_rss_mb"], "MB", higher_is_better=False,
            absolute_max=1500, target_text="< 1.5 GB"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=2000, help="image pairs in the generated archives")
    parser.add_argument("--work", help="folder for generated data (kept and reused); default: a temporary folder")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: configs,textscale")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work or tempfile.mkdtemp(prefix="bentxt-stores-bench-"))
    from benchmarks import data

    rows: List[Row] = []
    notes: List[str] = []
    try:
        fx = data.fixture(work, args.patches)
        if "configs" not in skip:
            rows += several_configs(work, fx, notes)
        if "textscale" not in skip:
            rows += second_config_at_text_scale(work, data.fixture(work, 8), notes)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_report(rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
