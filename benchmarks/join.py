"""Preparation rate and streaming-join memory, against baselines measured in the same run.

    python benchmarks/join.py [--patches 1000] [--keep DIR]

Baselines: the bare cost of streaming the same archives (zstd + tar, no
decode, no join) for rates, and a process that opens the same stream but
reads nothing (imports, and torch if datasets finds it) for memory. Each streaming measurement runs in its own process so its peak RSS is
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def bare_stream(fixture) -> float:
    """Seconds to read both archives front to back without decoding anything."""
    from bentxt.archives import iter_tar_zst

    t = time.perf_counter()
    for archive in (fixture.s2_archive, fixture.s1_archive):
        for _name, _data in iter_tar_zst(str(archive)):
            pass
    return time.perf_counter() - t


def prepare(fixture, config: str, num_proc, cache: str) -> float:
    import datasets

    import bigearthnet_txt as bt

    datasets.disable_progress_bars()
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=str(fixture.root), cache_dir=cache)
    t = time.perf_counter()
    builder.download_and_prepare(num_proc=num_proc)
    return time.perf_counter() - t


_CHILD = """
import json, sys, time
sys.path[:0] = {paths!r}
import datasets, bigearthnet_txt as bt
datasets.disable_progress_bars()
config, data_dir, split = sys.argv[1:4]
t = time.perf_counter(); n = 0
b = bt.BigEarthNetTxt(config_name=config.replace("none:", ""), data_dir=data_dir, cache_dir=sys.argv[4])
stream = b.as_streaming_dataset(split=split)  # datasets imports torch here when it is installed (~250 MB)
if not config.startswith("none:"):
    for _ in stream:
        n += 1
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])  # kB; ru_maxrss would include the parent's
print(json.dumps({{"examples": n, "seconds": time.perf_counter() - t, "peak_rss_mb": hwm / 1024}}))
"""


def stream_in_child(fixture, config: str, split: str, cache: str) -> dict:
    code = _CHILD.format(paths=[str(ROOT), str(ROOT / "tests")])
    out = subprocess.run(
        [sys.executable, "-c", code, config, str(fixture.root), split, cache], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1000, help="extra generated patches (plus the 8 fixed ones)")
    parser.add_argument("--keep", default=None, help="write the fixture here instead of a temporary folder")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bentxt-bench-join-")
    try:
        run(args, work)
    finally:
        if not args.keep:  # annotation-layout caches hold ~20 copies of every image: never leave them behind
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: str) -> None:
    from make_fixtures import make_fixture

    t = time.perf_counter()
    fixture = make_fixture(Path(work) / "data", seed=1, n_extra_patches=args.patches)
    n = len(fixture.archived_patches)
    rows = fixture.table.num_rows
    print(f"fixture: {n} patches, {rows} annotations ({time.perf_counter() - t:.1f} s to generate), "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")

    bare = bare_stream(fixture)
    print(f"\n{'measurement':52s} {'value':>16s} {'vs baseline':>12s}")
    print(f"{'bare stream S2+S1 archives (baseline)':52s} {n / bare:>11.0f} p/s {1:>11.2f}x")
    for config, num_proc in (("s2-all", None), ("s1s2-all", None), ("s1s2-all", 2)):
        seconds = prepare(fixture, config, num_proc, tempfile.mkdtemp(dir=work))
        label = f"prepare {config} num_proc={num_proc or 1}"
        print(f"{label:52s} {n / seconds:>11.0f} p/s {bare / seconds:>11.2f}x   ({rows / seconds:.0f} examples/s)")

    base = stream_in_child(fixture, "none:s2-all", "train", tempfile.mkdtemp(dir=work))
    print(f"{'peak RSS: stream opened, nothing read (baseline)':52s} {base['peak_rss_mb']:>12.0f} MB {1:>11.2f}x")
    for config in ("s2-all", "s1s2-all"):
        r = stream_in_child(fixture, config, "train", tempfile.mkdtemp(dir=work))
        label = f"streaming {config} train: peak RSS"
        print(f"{label:52s} {r['peak_rss_mb']:>12.0f} MB {r['peak_rss_mb'] / base['peak_rss_mb']:>11.2f}x   "
              f"({r['examples'] / r['seconds']:.0f} examples/s)")
    s1_bytes = os.path.getsize(fixture.s1_archive)
    print(f"\nS1 archive: {s1_bytes / 1e6:.0f} MB compressed; the s1s2 streaming join spills the train split's S1 files to disk")


if __name__ == "__main__":
    main()
