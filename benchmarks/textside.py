"""The text side at full scale (9,553,962 rows), each target against ``pd.read_parquet`` of the same file.

    python -m benchmarks.textside [--work DIR] [--repeat 2] [--layout hf-near|hf|pyarrow] [--ab] [--against CHECKOUT]

The file is ``benchmarks/textscale.py``'s release-sized stand-in, laid out as
``datasets`` writes Parquet (~100 MB row groups, page index, content-defined
pages; the release's own row groups are unknown), with a pair's rows within
~3,100 rows of each other like the one pair known (docs/release.md#annotation-parquet) (``--layout
hf-near``, the default: :func:`textscale.near_layout`, 433 MB against the
release's 466 MB) or scattered through the whole file (``--layout hf``, the
worst case: 850 MB), or scattered in pyarrow's default 1 Mi-row groups
(``--layout pyarrow``). Every measurement is a child process (its peak RSS is
its own):

- baseline: ``pd.read_parquet`` of the whole file + ``isin`` filters (the publisher's loader);
- ``s1s2-all`` text side as preparing does it: the selection read, checked and grouped with the texts left
  in the file (``select_annotations(..., texts_later=True)``: what the imagery pass waits for on a source
  seen before), then the whole text side up to the parsed texts file in pair order (``write_texts``), with
  the peak RSS of both; ``--ab`` adds the route before (every column in memory, then parsed), same run;
- selections with their texts read at once (``select_annotations``): ``s2-vqa-bench`` (10,681 texts),
  ``s1s2-all-bench``, and ``s2-vqa`` train (the largest split: what its stream does before its first archive
  read), with their CPU-seconds; the bench one once more pinned to one core, to show how its time follows
  the cores (it decodes whole column chunks on every core it may use: ``decode_threads``), and projected
  to 4 and 8 cores (its CPU-seconds over the cores). A bench stream gets its texts in the background
  instead (``annotations.StreamedTexts``), so for it these rows are the decoding work, not the wait;
- the name pass that starts preparing ``s1s2-all`` on a new source (``annotations.selected_names``);
- the first streamed example as a user waits for it (``as_streaming_dataset(split)``, then ``next``) for the
  two bench configs, on the same parquet beside archives that hold 8 of its pairs (:func:`first_example_data`).

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
#: the renamed pairs of the first-example data have bench texts of every type but VQA
FIRST_EXAMPLES = (("s2-all-bench", "bench"), ("s1s2-all-bench", "bench"))


def first_example_data(work: str, layout: str) -> dict:
    """A folder: the release-sized parquet in ``layout`` beside archives holding 8 of its pairs (2 of them bench).

    ``benchmarks/stores.py``'s text-scale data (the parquet's first pairs
    renamed to a generated fixture's, so they have pixels), the parquet
    rewritten like the other measurements' file.
    """
    import os

    from benchmarks import data, stores, textscale

    stores_work = Path(work) / "stores"
    source = Path(stores.text_scale_data(stores_work, data.fixture(stores_work, 8)))
    folder = Path(work) / "text" / f"first-example-{layout}"
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "BigEarthNet.txt.parquet"
    if layout == "hf":
        textscale.hf_layout(str(source / parquet.name), str(parquet))
    elif layout == "hf-near":
        textscale.near_layout(str(source / parquet.name), str(parquet))
    elif not parquet.exists():
        os.symlink(source / parquet.name, parquet)
    for archive in ("BigEarthNet-S1.tar.zst", "BigEarthNet-S2.tar.zst"):
        if not (folder / archive).exists():
            os.symlink((source / archive).resolve(), folder / archive)
    return {"data_dir": str(folder)}


def main(argv=None) -> int:
    from benchmarks.common import log, run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(ROOT / ".bench-work"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--layout", choices=("hf-near", "hf", "pyarrow"), default="hf-near")
    parser.add_argument("--ab", action="store_true", help="also the text side with every column in memory (before)")
    parser.add_argument("--against", help="another checkout of the project: each measurement run with its code too")
    args = parser.parse_args(argv)
    base = Path(args.work) / "text" / "BigEarthNet.txt.parquet"
    info = run_child("benchmarks.textscale:ensure", {"path": str(base)})
    path = base
    if args.layout == "hf":
        path = base.with_name("hf-layout.parquet")
        info = run_child("benchmarks.textscale:hf_layout", {"path": str(base), "out": str(path)})
    elif args.layout == "hf-near":
        path = base.with_name("hf-near.parquet")
        info = run_child("benchmarks.textscale:near_layout", {"path": str(base), "out": str(path)})
    log(f"{path}: {info['rows']:,} rows, {info['bytes'] / 1e6:,.0f} MB, {info['row_groups']} row groups")
    first_data = run_child("benchmarks.textside:first_example_data", {"work": args.work, "layout": args.layout})["data_dir"]
    results = {}
    bench_config, bench_split = STARTS[0]
    for k in range(args.repeat):
        prepare = {"path": str(path), "config": "s1s2-all", "work": str(Path(args.work))}
        runs = [("pandas", "benchmarks.textscale:measure_pandas", {"path": str(path), "config": "s1s2-all"}),
                ("s1s2-all", "benchmarks.textscale:measure_prepare_texts", prepare),
                ("s1s2-all name pass", "benchmarks.textscale:measure_name_pass", {"path": str(path), "config": "s1s2-all"})]
        if args.ab:
            runs.append(("s1s2-all in memory", "benchmarks.textscale:measure_prepare_texts", dict(prepare, in_memory=True)))
        runs += [(f"{c} {s}", "benchmarks.textscale:measure_stream_start", {"path": str(path), "config": c, "split": s})
                 for c, s in STARTS]
        # what a user waits for: the builder's streaming route to the first example (the archives hold few pairs)
        cache = str(Path(args.work) / "text" / "first-example-cache")
        runs += [(f"{c} {s}, first example", "benchmarks.textscale:measure_first_example",
                  {"data_dir": first_data, "config": c, "split": s, "cache_dir": cache}) for c, s in FIRST_EXAMPLES]
        children = []
        for name, target, kwargs in runs:
            ours = [(name, target, kwargs, None, False)]
            if args.against and name != "pandas" and _has(args.against, target):  # the other checkout's code too,
                # in turns second and first
                ours.append((f"{name} [{Path(args.against).name}]", target, kwargs, args.against, False))
            children += ours if k % 2 == 0 else ours[::-1]
        # the first bench start again on one core: how its wall time follows the cores (it is CPU-bound)
        children.append((f"{bench_config} {bench_split} on one core", "benchmarks.textscale:measure_stream_start",
                         {"path": str(path), "config": bench_config, "split": bench_split}, None, True))
        for name, target, kwargs, root, one_core in children:
            res = run_child(target, kwargs, one_core=one_core, root=root)
            results.setdefault(name, []).append(res)
            steps = f" (selected and grouped in {res['select_seconds']:.2f} s)" if "select_seconds" in res else ""
            cpu = f", {res['cpu_seconds']:.2f} CPU-s" if "cpu_seconds" in res else ""
            log(f"run {k + 1}: {name}: {res['seconds']:.2f} s{steps}{cpu}, peak RSS {res['peak_rss_mb']:,.0f} MB, "
                f"{res['rows']:,} rows")
    summary = {name: {key: [round(r[key], 2) for r in runs] for key in ("seconds", "select_seconds", "cpu_seconds",
                                                                        "peak_rss_mb") if key in runs[0]}
               for name, runs in results.items()}
    start = summary.get(f"{bench_config} {bench_split}", {})
    if "cpu_seconds" in start:  # where a start's time goes with more cores: its CPU-seconds over them, at best
        cpu = min(start["cpu_seconds"])
        summary["projected bench start"] = {f"{n} cores": round(cpu / n, 2) for n in (2, 4, 8)}
    print(json.dumps({"file": str(path), "layout": args.layout, **info, "results": summary}, indent=1))
    return 0


def _has(checkout: str, target: str) -> bool:
    """Whether another checkout's benchmarks define ``module:function`` (an older one may lack a newer measurement)."""
    module, function = target.split(":")
    source = Path(checkout) / (module.replace(".", "/") + ".py")
    return source.exists() and f"def {function}(" in source.read_text()


if __name__ == "__main__":
    sys.exit(main())
