"""Time to the first streamed example, and the spill, for ``s1s2`` streamed from the archives.

    python -m benchmarks.stream_start [--patches 1000] [--work DIR] [--split train]

``s1s2`` from archives reads the whole S1 archive (spilling the split's S1
bands) before the first example; ``s2`` starts at once. Both are measured on
the same generated release-format data, and the S1 wait is projected to the
release by its rate (archive bytes per second): the release's S1 archive is
54.4 GB (``dataset_infos/sources.json``). Each run is a child process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]


def first_example(data_dir: str, cache_dir: str, config: str, split: str) -> Dict:
    """Seconds to the first streamed example, the spill folder's size then, and the seconds for the whole split."""
    import datasets

    import bigearthnet_txt as bt

    datasets.disable_progress_bars()
    spill = Path(cache_dir) / "bigearthnet_txt" / ".spill"
    peak = {"bytes": 0}
    done = threading.Event()

    def watch() -> None:  # the spill folder's largest size (it is removed at the end of the split)
        while not done.wait(0.05):
            size = sum(p.stat().st_size for p in spill.rglob("*") if p.is_file()) if spill.exists() else 0
            peak["bytes"] = max(peak["bytes"], size)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir)
    start = time.perf_counter()
    stream = iter(builder.as_streaming_dataset(split=split))
    next(stream)
    first = time.perf_counter() - start
    n = 1 + sum(1 for _ in stream)
    total = time.perf_counter() - start
    done.set()
    watcher.join()
    return {"first_seconds": first, "seconds": total, "examples": n, "spill_peak_bytes": peak["bytes"]}


def main(argv=None) -> int:
    from benchmarks import data
    from benchmarks.common import log, run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--work", default=str(ROOT / ".bench-work"))
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    work = Path(args.work)
    fx = data.fixture(work, args.patches)
    s1_bytes = Path(fx["s1_archive"]).stat().st_size
    out = {"patches": fx["patches"], "s1_archive_bytes": s1_bytes}
    for config in ("s2-all", "s1s2-all"):
        cache = work / f"stream-start-{config}"
        shutil.rmtree(cache, ignore_errors=True)
        res = run_child("benchmarks.stream_start:first_example", {"data_dir": fx["data_dir"], "cache_dir": str(cache),
                                                                  "config": config, "split": args.split})
        shutil.rmtree(cache, ignore_errors=True)
        out[config] = res
        log(f"{config} {args.split}: first example after {res['first_seconds']:.2f} s, all {res['examples']:,} in "
            f"{res['seconds']:.2f} s, spill peak {res['spill_peak_bytes'] / 1e6:.1f} MB")
    wait = out["s1s2-all"]["first_seconds"] - out["s2-all"]["first_seconds"]
    release_s1 = 54_439_153_171
    out["s1_rate_mb_s"] = s1_bytes / max(wait, 1e-9) / 1e6
    out["release_projection_minutes"] = release_s1 / (s1_bytes / max(wait, 1e-9)) / 60
    pairs = out["s1s2-all"]["spill_peak_bytes"] / max(1, fx["patches"])
    out["spill_bytes_per_archive_pair"] = pairs
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
