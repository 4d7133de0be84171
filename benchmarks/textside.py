"""The text side at full scale (9,553,962 rows), each target against ``pd.read_parquet`` of the same file.

    python -m benchmarks.textside [--work DIR] [--repeat 2] [--layout hf|pyarrow] [--ab] [--against CHECKOUT]

The file is ``benchmarks/textscale.py``'s release-sized stand-in, laid out as
``datasets`` writes Parquet (``--layout hf``: ~100 MB row groups, page index,
content-defined pages; the release's own layout is unknown) or as pyarrow's
default writer does (``--layout pyarrow``: 1 Mi-row groups). Every measurement
is a child process (its peak RSS is its own):

- baseline: ``pd.read_parquet`` of the whole file + ``isin`` filters (the publisher's loader);
- ``s1s2-all`` text side as preparing does it: the selection read, checked and grouped with the texts left
  in the file (``select_annotations(..., texts_later=True)``: what the imagery pass waits for on a source
  seen before), then the whole text side up to the parsed texts file in pair order (``write_texts``), with
  the peak RSS of both; ``--ab`` adds the route before (every column in memory, then parsed), same run;
- streaming starts: ``select_annotations`` for one split, what a stream does before its first
  archive read: ``s2-vqa-bench`` (15 k texts), ``s1s2-all-bench``, ``s2-vqa`` train (the largest split).

``--against CHECKOUT`` runs every measurement but the baseline with the code of another checkout too (e.g. a
``git worktree`` of an older commit), interleaved with ours, so a change is measured within one hour of the VM.
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
    parser.add_argument("--ab", action="store_true", help="also the text side with every column in memory (before)")
    parser.add_argument("--against", help="another checkout of the project: each measurement run with its code too")
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
        prepare = {"path": str(path), "config": "s1s2-all", "work": str(Path(args.work))}
        runs = [("pandas", "benchmarks.textscale:measure_pandas", {"path": str(path), "config": "s1s2-all"}),
                ("s1s2-all", "benchmarks.textscale:measure_prepare_texts", prepare)]
        if args.ab:
            runs.append(("s1s2-all in memory", "benchmarks.textscale:measure_prepare_texts", dict(prepare, in_memory=True)))
        runs += [(f"{c} {s}", "benchmarks.textscale:measure_stream_start", {"path": str(path), "config": c, "split": s})
                 for c, s in STARTS]
        children = []
        for name, target, kwargs in runs:
            ours = [(name, target, kwargs, None)]
            if args.against and name != "pandas":  # the other checkout's code too, in turns second and first
                ours.append((f"{name} [{Path(args.against).name}]", target, kwargs, args.against))
            children += ours if k % 2 == 0 else ours[::-1]
        for name, target, kwargs, root in children:
            res = run_child(target, kwargs, root=root)
            results.setdefault(name, []).append(res)
            steps = f" (selected and grouped in {res['select_seconds']:.2f} s)" if "select_seconds" in res else ""
            log(f"run {k + 1}: {name}: {res['seconds']:.2f} s{steps}, peak RSS {res['peak_rss_mb']:,.0f} MB, "
                f"{res['rows']:,} rows")
    summary = {name: {key: [round(r[key], 2) for r in runs] for key in ("seconds", "select_seconds", "peak_rss_mb")
                      if key in runs[0]} for name, runs in results.items()}
    print(json.dumps({"file": str(path), "layout": args.layout, **info, "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
