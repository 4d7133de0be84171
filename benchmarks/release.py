"""The full release on one machine: preparation speed, peak disk, cache sizes and reading, projected from measured rates.

    python benchmarks/release.py [--patches 5000] [--read-patches 150] [--repeat 3] [--work DIR]

Everything runs in one go against baselines measured in the same run:

1. prepare ``s1s2-all`` from the ``.tar.zst`` with ``num_proc=2`` vs ``zstd -dc`` of both archives
   (the CLI, to /dev/null, one after the other), at ``--patches`` and at half of it: the difference
   gives the per-pair cost without fixed start-up costs, which is what the release projection uses;
   peak extra disk while preparing (the cache folder sampled every 50 ms) against the final cache;
2. cache sizes on the fixture: ``s1s2-vqa`` default, its ``layout="patch"`` variant, the parquet,
   ``bands="S1S2-10m20m"``; and per config at release scale (measured bytes per pair and per text
   times the release's 464,044 pairs and per-config text counts);
3. reading against the publisher's LMDB path (``benchmarks/publisher_reference.py``, asserted
   bit-identical first), one core, ``bands="S1S2-10m20m"`` at 120 px: ``ds[i]`` with the default
   columns in numpy and in the default format, torch batches of 64 with the default columns;
4. per image pair against torchgeo's ``BigEarthNetV2.__getitem__`` on extracted folders
   (``benchmarks/torchgeo_reference.py``, its reading path re-implemented line by line).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, log, print_report, run_child  # noqa: E402

#: the release (docs/release.md#counts): pairs with texts, pairs in the archives, texts per config
RELEASE_PAIRS = 464_044
RELEASE_ARCHIVE_PAIRS = 549_488
RELEASE_TEXTS = {"s1s2-all": 9_553_962, "s1s2-vqa": 6_884_344, "s1s2-captioning": 463_932, "s1s2-grounding": 2_205_686}
RELEASE_ARCHIVE_BYTES = 54_439_153_171 + 63_251_710_377


# ----------------------------------------------------------------------------- child functions


def zstd_cli(archives: List[str]) -> dict:
    t = time.perf_counter()
    for archive in archives:
        subprocess.run(["zstd", "-dcq", archive], stdout=subprocess.DEVNULL, check=True)
    return {"seconds": time.perf_counter() - t}


def _folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _sample_peak(cache_dir: str, peak, stop) -> None:
    """In its own process (a thread here would take the GIL from the preparation it measures)."""
    while not stop.wait(0.05):
        peak.value = max(peak.value, _folder_bytes(cache_dir))


def prepare(data_dir: str, cache_dir: str, config: str = "s1s2-all", num_proc: int = 2, **options) -> dict:
    """Prepare through load_dataset's builder; the cache folder's size is sampled by another process while it runs."""
    import logging
    import multiprocessing

    import datasets

    import bigearthnet_txt  # noqa: F401  (registers the name)

    datasets.disable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(logging.WARNING)
    context = multiprocessing.get_context("spawn")
    peak, stop = context.Value("q", 0), context.Event()
    sampler = context.Process(target=_sample_peak, args=(cache_dir, peak, stop), daemon=True)
    builder = datasets.load_dataset_builder("bigearthnet_txt", config, data_dir=data_dir, cache_dir=cache_dir, **options)
    sampler.start()
    t = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    seconds = time.perf_counter() - t
    stop.set()
    sampler.join()
    final = _folder_bytes(cache_dir)
    ds = builder.as_dataset()
    imagery = _folder_bytes(os.path.join(cache_dir, "bigearthnet_txt", "imagery"))  # the source's imagery stores
    return {"seconds": seconds, "cache_bytes": final, "peak_bytes": max(peak.value, final), "imagery_bytes": imagery,
            "examples": sum(p.num_rows for p in ds.values()), "pairs": sum(len(set(p["patch_id"])) for p in ds.values())}


def reading(data_dir: str, cache_dir: str, lmdb_dir: str, repeat: int = 2, batch_size: int = 64) -> dict:
    """ds[i] (numpy, default format) and torch batches with the default columns, vs the publisher's path."""
    import numpy as np
    import torch

    from benchmarks import reading as R
    from benchmarks.publisher_reference import data_loader

    ours, ref, ref_to_ours = R.open_both(data_dir, cache_dir, lmdb_dir)
    checked = R.check_identical(ours, ref, ref_to_ours, n=32)
    plain = ours.with_format(None)
    torch_ds = ours.with_format("torch")
    order = np.random.default_rng(0).permutation(len(ref))
    ours_order, ref_order = [int(k) for k in ref_to_ours[order]], [int(j) for j in order]

    def timed(fn, items):
        t = time.perf_counter()
        for i in items:
            fn(i)
        return time.perf_counter() - t

    def torch_batches():
        for batch in torch_ds.iter(batch_size=batch_size):
            assert batch["image"].dtype == torch.float32

    def reference_batches():
        for batch in data_loader(ref, batch_size=batch_size):
            assert batch["image_input"].dtype == torch.float32

    for fn, items in ((ours.__getitem__, ours_order), (plain.__getitem__, ours_order), (ref.__getitem__, ref_order)):
        timed(fn, items[: max(1, len(items) // 10)])  # warm-up: page cache, lazy opens
    n = len(order)
    result = {
        "rows": n, "checked": checked,
        "numpy": n / min(timed(ours.__getitem__, ours_order) for _ in range(repeat)),
        "default": n / min(timed(plain.__getitem__, ours_order) for _ in range(repeat)),
        "reference": n / min(timed(ref.__getitem__, ref_order) for _ in range(repeat)),
    }
    for name, fn in (("torch", torch_batches), ("reference_batches", reference_batches)):
        fn()
        best = min(_once(fn) for _ in range(repeat))
        result[name] = n / best
    return result


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- the run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=5000, help="image pairs in the generated archives (>= 500)")
    parser.add_argument("--read-patches", type=int, default=150, help="image pairs of the reading subset")
    parser.add_argument("--work", help="folder for generated data (kept and reused); default: a temporary folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs per preparation timing (the best counts)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: prepare,sizes,reading,torchgeo")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work or tempfile.mkdtemp(prefix="bentxt-release-bench-"))
    from benchmarks import data

    rows: List[Row] = []
    notes: List[str] = []
    try:
        full = data.fixture(work, args.patches)
        if "prepare" not in skip:
            rows += measure_prepare(work, full, data.fixture(work, max(8, args.patches // 2)), notes, args.repeat)
        if "sizes" not in skip:
            rows += measure_sizes(work, full, notes)
        if "reading" not in skip or "torchgeo" not in skip:
            read = data.read_subset(work, full, args.read_patches)
            if "reading" not in skip:
                rows += measure_reading(work, read, notes)
            if "torchgeo" not in skip:
                rows += measure_torchgeo(work, full, read, notes)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_report(rows, notes)
    return 0


def measure_prepare(work: Path, full: Dict, half: Dict, notes: List[str], repeat: int = 3) -> List[Row]:
    """Each of the four timings is the best of ``repeat`` runs, interleaved (this VM's speed drifts by +-30 %)."""
    results: Dict[int, tuple] = {}
    for k in range(repeat):
        for fx in (half, full):
            log(f"run {k + 1}/{repeat}: zstd -dc of both archives, {fx['patches']} pairs")
            z = run_child("benchmarks.release:zstd_cli", {"archives": [fx["s2_archive"], fx["s1_archive"]]})
            cache = work / f"prepare-cache-{fx['patches']}"
            shutil.rmtree(cache, ignore_errors=True)
            log(f"run {k + 1}/{repeat}: prepare s1s2-all, num_proc=2, {fx['patches']} pairs")
            p = run_child("benchmarks.release:prepare", {"data_dir": fx["data_dir"], "cache_dir": str(cache)})
            shutil.rmtree(cache, ignore_errors=True)
            _, best_z, best_p = results.get(fx["patches"], (fx, z, p))
            results[fx["patches"]] = (fx, min(z, best_z, key=lambda r: r["seconds"]),
                                      min(p, best_p, key=lambda r: r["seconds"]))
    (fx, z, p), (hx, hz, hp) = results[full["patches"]], results[half["patches"]]
    n, dn = fx["patches"], fx["patches"] - hx["patches"]
    per_pair = (p["seconds"] - hp["seconds"]) / dn
    per_pair_zstd = (z["seconds"] - hz["seconds"]) / dn
    extra = (p["peak_bytes"] - p["cache_bytes"]) / p["cache_bytes"]
    notes.append(
        f"prepare s1s2-all, num_proc=2: {n} pairs ({p['examples']:,} texts) in {p['seconds']:.2f} s, zstd -dc of both "
        f"archives {z['seconds']:.2f} s; {hx['patches']} pairs: {hp['seconds']:.2f} s vs {hz['seconds']:.2f} s (best of "
        f"{repeat} each). Per pair "
        f"(difference of the two sizes): ours {per_pair * 1e3:.3f} ms, zstd -dc {per_pair_zstd * 1e3:.3f} ms"
    )
    notes.append(f"peak disk while preparing: {p['peak_bytes'] / 1e6:,.1f} MB, final cache {p['cache_bytes'] / 1e6:,.1f} MB "
                 f"(+{extra * 100:.1f} %); imagery stores {p['imagery_bytes'] / 1e6:,.1f} MB")
    projected = per_pair * RELEASE_ARCHIVE_PAIRS
    notes.append(f"release projection, s1s2-all: {projected / 60:,.0f} min (per-pair cost x {RELEASE_ARCHIVE_PAIRS:,} archive "
                 f"pairs, texts included), zstd -dc alone {per_pair_zstd * RELEASE_ARCHIVE_PAIRS / 60:,.0f} min")
    return [
        Row(f"prepare s1s2-all num_proc=2 ({n} pairs), whole run", n / p["seconds"], n / z["seconds"], "p/s", target=0.6,
            absolute_min=1000, target_text=">= 0.6x, >= 1,000 p/s"),
        Row("   per-pair rate without start-up (two sizes)", 1 / per_pair, 1 / per_pair_zstd, "p/s", target=0.6,
            absolute_min=1000, target_text=">= 0.6x, >= 1,000 p/s"),
        Row("   peak extra disk while preparing", extra * 100, None, "%", higher_is_better=False, absolute_max=10,
            target_text="< 10 %"),
        Row("   release projection s1s2-all (prepare)", projected / 60, per_pair_zstd * RELEASE_ARCHIVE_PAIRS / 60, "min",
            higher_is_better=False, absolute_max=30, target_text="< 30 min"),
    ]


def measure_sizes(work: Path, fx: Dict, notes: List[str]) -> List[Row]:
    parquet = os.path.getsize(os.path.join(fx["data_dir"], "BigEarthNet.txt.parquet"))
    sizes = {}
    for label, config, options in (("vqa", "s1s2-vqa", {}), ("vqa-patch", "s1s2-vqa", {"layout": "patch"}),
                                   ("vqa-bands", "s1s2-vqa", {"bands": "S1S2-10m20m"}), ("all", "s1s2-all", {})):
        cache = work / f"size-cache-{label}"
        shutil.rmtree(cache, ignore_errors=True)
        log(f"cache size of {config} {options or ''}")
        sizes[label] = run_child("benchmarks.release:prepare", {"data_dir": fx["data_dir"], "cache_dir": str(cache),
                                                               "config": config, **options})
        shutil.rmtree(cache, ignore_errors=True)
    vqa, patch, bands, all_ = sizes["vqa"], sizes["vqa-patch"], sizes["vqa-bands"], sizes["all"]
    base = patch["cache_bytes"] + parquet
    pixels = patch["imagery_bytes"] / vqa["pairs"]
    rows = [
        Row("cache s1s2-vqa / (patch layout + parquet)", vqa["cache_bytes"] / 1e6, base / 1e6, "MB", higher_is_better=False,
            target=1 / 1.15, target_text="<= 1.15x"),
        Row("cache s1s2-vqa bands=S1S2-10m20m / (patch + parquet)", bands["cache_bytes"] / 1e6, base / 1e6, "MB",
            higher_is_better=False, target=1 / 1.15, target_text="<= 1.15x"),
    ]
    for config, res in (("s1s2-vqa", vqa), ("s1s2-all", all_)):
        text_per_row = (res["cache_bytes"] - res["imagery_bytes"]) / res["examples"]
        projected = pixels * RELEASE_PAIRS + text_per_row * RELEASE_TEXTS[config]
        notes.append(f"{config}: {res['cache_bytes'] / 1e6:,.1f} MB for {res['pairs']} pairs / {res['examples']:,} texts; "
                     f"{pixels / 1e3:,.1f} kB pixels per pair, {text_per_row:,.0f} B per text outside the imagery stores")
        rows.append(Row(f"   release projection, {config} cache", projected / 1e9, None, "GB", higher_is_better=False,
                        absolute_max=160 if config == "s1s2-vqa" else None,
                        target_text="< 160 GB" if config == "s1s2-vqa" else ""))
    return rows


def measure_reading(work: Path, read: Dict, notes: List[str]) -> List[Row]:
    from benchmarks import reading as R

    cache = work / f"read-cache-{read['patches']}-v2"
    run_child("benchmarks.reading:prepare", {"data_dir": read["data_dir"], "cache_dir": str(cache)})  # cached: no-op
    log("reading: ours vs the publisher's LMDB path, one core")
    res = run_child("benchmarks.release:reading", {"data_dir": read["data_dir"], "cache_dir": str(cache),
                                                   "lmdb_dir": read["lmdb_dir"]}, one_core=True)
    notes.append(f"reading: {res['rows']:,} texts of {read['patches']} pairs, bands {R.BANDS} at 120 px, every column; "
                 f"{res['checked']} random rows checked bit-identical to the publisher's path first")
    return [
        Row("ds[i], default columns, numpy, 1 core", res["numpy"], res["reference"], "ex/s", target=2, target_text=">= 2x"),
        Row("ds[i], default columns, default format, 1 core", res["default"], res["reference"], "ex/s", target=1,
            target_text=">= 1x"),
        Row("torch batches of 64, default columns, 1 core", res["torch"], res["reference_batches"], "ex/s", target=3,
            target_text=">= 3x"),
    ]


def measure_torchgeo(work: Path, fx: Dict, read: Dict, notes: List[str]) -> List[Row]:
    log("per image pair: ours vs torchgeo's BigEarthNetV2.__getitem__ on extracted folders, one core")
    res = run_child("benchmarks.torchgeo_reference:compare", {"work": str(work), "data_dir": read["data_dir"]}, one_core=True)
    notes.append(f"torchgeo: {res['pairs']} pairs extracted to folders; ours = the s1s2-all patch-layout cache read "
                 f"with ds[i] (numpy, the four band groups); torchgeo = image_s1, image_s2, mask and label per pair")
    return [Row("per pair vs torchgeo BigEarthNetV2.__getitem__, 1 core", res["ours"], res["torchgeo"], "p/s", target=10,
                target_text=">= 10x")]


if __name__ == "__main__":
    sys.exit(main())
