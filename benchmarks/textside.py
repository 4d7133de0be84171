"""The text side at full scale (9,553,962 rows), each target against ``pd.read_parquet`` of the same file.

    python -m benchmarks.textside [--work DIR] [--repeat 2] [--layout hf|pyarrow]

The file is ``benchmarks/textscale.py``'s release-sized stand-in, laid out as
``datasets`` writes Parquet (``--layout hf``: ~100 MB row groups, page index,
content-defined pages; the release's own layout is unknown) or as pyarrow's
default writer does (``--layout pyarrow``: 1 Mi-row groups). Every measurement
is a child process (its peak RSS is its own):

- baseline: ``pd.read_parquet`` of the whole file + ``isin`` filters (the publisher's loader);
- ``s1s2-all`` text side as preparing does it (``read_selection(sort_by=key)`` + grouping + checks);
- streaming starts: ``select_annotations`` for one split, what a stream does before its first
  archive read: ``s2-vqa-bench`` (15 k texts), ``s1s2-all-bench``, ``s2-vqa`` train (the largest split).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTS = (("s2-vqa-bench", "bench"), ("s1s2-all-bench", "bench"), ("s2-vqa", "train"))


def main(argv=None) -> int:
    from benchmarks.common import log, run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / ".bench-work"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--layout", choices=("hf", "pyarrow"), default="hf")
    args = parser.parse_args(argv)
    base = Path(args.work) / "text" / "BigEarthNet.txt.parquet"
    info = run_child("benchmarks.textscale:ensure", {"path": str(base)})
    path = base
    if args.layout == "hf":
        path = base.with_name("hf-layout.parquet")
        info = run_child("benchmarks.textscale:hf_layout", {"path": str(base), "out": str(path)})
    log(f"{path}: {info['rows']:,} rows, {info['bytes'] / 1e6:,.0f} MB, {info['row_groups']} row groups")
    results = {}
    for k in range(args.repeat):
        runs = [("pandas", "benchmarks.textscale:measure_pandas", {"path": str(path), "config": "s1s2-all"}),
                ("s1s2-all", "benchmarks.textscale:measure",
                 {"path": str(path), "config": "s1s2-all", "sort_by_key": True})]
        runs += [(f"{c} {s}", "benchmarks.textscale:measure_stream_start", {"path": str(path), "config": c, "split": s})
                 for c, s in STARTS]
        for name, target, kwargs in runs:
            res = run_child(target, kwargs)
            results.setdefault(name, []).append(res)
            log(f"run {k + 1}: {name}: {res['seconds']:.2f} s, peak RSS {res['peak_rss_mb']:,.0f} MB, "
                f"{res['rows']:,} rows")
    summary = {name: {"seconds": [round(r["seconds"], 2) for r in runs],
                      "peak_rss_mb": [round(r["peak_rss_mb"]) for r in runs]} for name, runs in results.items()}
    print(json.dumps({"file": str(path), "layout": args.layout, **info, "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
