"""Throughput and peak memory of the builder against baselines measured in the same run.

    python benchmarks/run.py [--patches 2000] [--read-patches 150] [--only NAME[,NAME]] [--work DIR]

Generates release-format data (``tests/make_fixtures.py``: real GeoTIFF/tar/zstd
layout, ~19 texts per image pair) and a full-scale annotation parquet
(``benchmarks/textscale.py``), then measures (NAME in brackets):

1. [random]  cached random access ``ds[i]`` (numpy, 12x120x120 float32) vs the
   publisher's LMDB reader (``benchmarks/publisher_reference.py``), one core;
2. [batched] batched iteration (64, numpy and torch) vs the reference DataLoader loop;
3. [text]    selecting and grouping 9,553,962 annotation rows (time, peak RSS)
   vs the publisher's pandas read;
4. [stream]  ``as_streaming_dataset`` from ``.tar.zst`` (examples/s, peak RSS), and the Parquet export.

Preparation (speed, disk, cache sizes, the release projection) is ``benchmarks/release.py``.

Every measurement that reports memory runs in its own child process (peak RSS
= its VmHWM). Results are one table. Generated data is kept in ``--work`` (reused
by later runs with the same sizes); without ``--work`` a temporary folder is
used and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, format_table, log, machine_line, run_child  # noqa: E402

NAMES = ("random", "batched", "text", "stream")
TEXT_CONFIGS = ("s1s2-all", "s1s2-vqa", "s2-captioning-bench")


class Context:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self._fixture = self._read = None
        self.notes: List[str] = []
        self.profiles: List[str] = []

    @property
    def fixture(self) -> Dict:
        if self._fixture is None:
            from benchmarks import data

            self._fixture = data.fixture(self.work, self.args.patches)
        return self._fixture

    @property
    def read(self) -> Dict:
        if self._read is None:
            from benchmarks import data

            self._read = data.read_subset(self.work, self.fixture, self.args.read_patches)
            self._read["cache_dir"] = str(self.work / f"read-cache-{self.args.patches}-{self.args.read_patches}")
            if not (Path(self._read["cache_dir"]) / "done").exists():
                log(f"preparing the read cache: {self._read['rows']} texts of {self._read['patches']} image pairs, "
                    f"bands S1S2-10m20m (float32 12x120x120 per text)")
                shutil.rmtree(self._read["cache_dir"], ignore_errors=True)
                run_child("benchmarks.reading:prepare",
                          {"data_dir": self._read["data_dir"], "cache_dir": self._read["cache_dir"]})
                (Path(self._read["cache_dir"]) / "done").touch()
        return self._read


# ----------------------------------------------------------------------------- measurements


def m_random(ctx: Context) -> List[Row]:
    r = ctx.read
    log("random access: ours vs the LMDB reference (one core)")
    res = run_child("benchmarks.reading:random_access", {k: r[k] for k in ("data_dir", "cache_dir", "lmdb_dir")}, one_core=True)
    ctx.notes.append(f"random/batched: {res['rows']} texts of {r['patches']} image pairs; images and texts of "
                     f"{res['checked']} random rows checked identical to the reference before timing")
    return [
        Row("1. random access ds[i], numpy, 1 core", res["ours"], res["reference"], "ex/s", target=1.5, target_text=">= 1.5x"),
        Row("   same, columns image/input/output only", res["ours_3_columns"], res["reference"], "ex/s"),
    ]


def m_batched(ctx: Context) -> List[Row]:
    r = ctx.read
    log("batched iteration: ours (numpy, torch) vs the reference DataLoader (num_workers=0)")
    res = run_child("benchmarks.reading:batched", {k: r[k] for k in ("data_dir", "cache_dir", "lmdb_dir")}, one_core=True)
    return [
        Row("2. batched (64) image/input/output, numpy, 1 core", res["ours_numpy"], res["reference"], "ex/s", target=3,
            target_text=">= 3x"),
        Row("   batched (64) image/input/output, torch, 1 core", res["ours_torch"], res["reference"], "ex/s", target=3,
            target_text=">= 3x"),
        Row("   same, numpy batches + torch.from_numpy", res["ours_numpy_to_torch"], res["reference"], "ex/s", target=3,
            target_text=">= 3x"),
    ]


def m_text(ctx: Context) -> List[Row]:
    from benchmarks import textscale

    path = ctx.work / "text" / "BigEarthNet.txt.parquet"
    log(f"full-scale annotation parquet ({textscale.N_ROWS:,} rows) in {path}")
    info = run_child("benchmarks.textscale:ensure", {"path": str(path)})
    ctx.notes.append(f"text: {info['rows']:,} rows, {info['patches']:,} pairs, {info['bytes'] / 1e6:,.0f} MB parquet, "
                     f"{info['row_groups']} row groups"
                     + ("" if info.get("cached") else f", generated in {info['seconds']:.0f} s"))
    log("text: the publisher's pandas read (baseline)")
    base = run_child("benchmarks.textscale:measure_pandas", {"path": str(path), "config": "s1s2-all"})
    rows = []
    variants = [(c, False) for c in TEXT_CONFIGS] + [("s1s2-all", True)]
    for config, sort_by_key in variants:
        log(f"text: {config}{' (read_selection sort_by=key)' if sort_by_key else ''}")
        res = run_child("benchmarks.textscale:measure", {"path": str(path), "config": config, "sort_by_key": sort_by_key})
        label = f"5. text {config}" + (" + sort_by=key" if sort_by_key else "")
        full = config == "s1s2-all"
        rows.append(Row(f"{label}: time", res["seconds"], base["seconds"] if full else None, "s", higher_is_better=False,
                        absolute_max=20 if full else None, target_text="< 20 s" if full else ""))
        rows.append(Row(f"{label}: peak RSS", res["peak_rss_mb"], base["peak_rss_mb"] if full else None, "MB",
                        higher_is_better=False, absolute_max=3000 if full else None, target_text="< 3 GB" if full else ""))
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in res["steps"].items())
        ctx.notes.append(f"{label}: {res['rows']:,} rows / {res['patches']:,} pairs, table {res['table_mb']:,.0f} MB, "
                         f"Arrow pool peak {res['arrow_peak_mb']:,.0f} MB; {steps}")
    log("text: s1s2-all as preparing does it (texts left in the file, then parsed into the texts file)")
    res = run_child("benchmarks.textscale:measure_prepare_texts", {"path": str(path), "config": "s1s2-all",
                                                                   "work": str(ctx.work)})
    rows.append(Row("5. text s1s2-all, preparing: selected, checked, grouped", res["select_seconds"], base["seconds"], "s",
                    higher_is_better=False, absolute_max=10, target_text="< 10 s"))
    rows.append(Row("5. text s1s2-all, preparing: + parsed texts file in pair order", res["seconds"], None, "s",
                    higher_is_better=False))
    rows.append(Row("5. text s1s2-all, preparing: peak RSS", res["peak_rss_mb"], base["peak_rss_mb"], "MB",
                    higher_is_better=False, absolute_max=1500, target_text="< 1.5 GB"))
    ctx.notes.append(f"text baseline: pd.read_parquet + isin filters, {base['rows']:,} rows (no grouping)")
    return rows


def m_stream(ctx: Context) -> List[Row]:
    fx = ctx.fixture
    n = fx["patches"]
    log("streaming s2-vqa train from the .tar.zst")
    bare = run_child("benchmarks.preparation:bare_stream", {"archives": [fx["s2_archive"]]})
    base = run_child("benchmarks.preparation:import_only")
    cache = ctx.work / "stream-cache"
    res = run_child("benchmarks.preparation:stream", {"data_dir": fx["data_dir"], "config": "s2-vqa", "split": "train",
                                                     "cache_dir": str(cache)})
    shutil.rmtree(cache, ignore_errors=True)
    ctx.notes.append(f"stream s2-vqa train: {res['examples']:,} examples in {res['seconds']:.1f} s = "
                     f"{res['examples'] / res['seconds']:,.0f} examples/s (the whole S2 archive is read for one split)")
    rows = [
        Row("6. stream s2-vqa train (.tar.zst): archive rate", n / res["seconds"], n / bare["seconds"], "p/s"),
        Row("   stream s2-vqa train: peak RSS (vs import only)", res["peak_rss_mb"], base["peak_rss_mb"], "MB",
            higher_is_better=False),
    ]
    rows.append(_export_rows(ctx))
    return rows


def _export_rows(ctx: Context) -> Row:
    """s1s2-vqa train streamed from a Parquet export (texts + imagery joined) vs the builder streaming the archives.

    Both read the cached-reading subset (``--read-patches`` image pairs), so
    the export stays small; the export itself is written first and not timed.
    """
    if not (Path(__file__).resolve().parents[1] / "bentxt" / "export.py").exists():
        return Row("   TODO stream s1s2-vqa from the packed export", None, None, "",
                   target_text="bentxt/export/writer.py missing")
    r = ctx.read
    out, cache = ctx.work / "export", ctx.work / "export-cache"
    try:
        shutil.rmtree(out, ignore_errors=True)
        log("exporting s1s2-vqa of the reading subset to Parquet (bentxt.export.writer), then streaming it")
        made = run_child("benchmarks.preparation:export_once",
                         {"data_dir": r["data_dir"], "out_dir": str(out), "cache_dir": str(cache)})
        res = run_child("benchmarks.preparation:stream_export", {"out_dir": str(out), "cache_dir": str(cache)})
        base = run_child("benchmarks.preparation:stream", {"data_dir": r["data_dir"], "config": "s1s2-vqa", "split": "train",
                                                          "cache_dir": str(cache)})
    except Exception as err:  # the export module is developed separately: keep the table, say why
        return Row("   TODO stream s1s2-vqa from the packed export", None, None, "",
                   target_text=f"failed: {str(err).splitlines()[-1][:60]}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    assert res["examples"] == base["examples"], (res["examples"], base["examples"])
    ctx.notes.append(f"export: s1s2-vqa of {r['patches']} image pairs, {made['files']} Parquet files, "
                     f"{made['bytes'] / 1e6:,.0f} MB; "
                     f"streamed train ({res['examples']:,} examples) with numpy_batches: peak RSS {res['peak_rss_mb']:,.0f} MB "
                     f"(builder from the archives: {base['peak_rss_mb']:,.0f} MB)")
    return Row("   stream s1s2-vqa train: Parquet export vs archives", res["examples"] / res["seconds"],
               base["examples"] / base["seconds"], "ex/s")


MEASUREMENTS: Dict[str, Callable[[Context], List[Row]]] = {
    "random": m_random, "batched": m_batched, "text": m_text, "stream": m_stream,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=2000, help="image pairs in the generated archives (default 2000)")
    parser.add_argument("--read-patches", type=int, default=150,
                        help="image pairs in the cached-reading data set (~19 texts x 0.69 MB each; default 150)")
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}")
    parser.add_argument("--work", default=None, help="keep generated data here and reuse it (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; choose from {list(NAMES)}")
    temporary = args.work is None
    if temporary:
        args.work = tempfile.mkdtemp(prefix="bentxt-bench-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ctx = Context(args)
    rows: List[Row] = []
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    try:
        for name in names:
            rows += MEASUREMENTS[name](ctx)
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)
    load1 = os.getloadavg()[0]
    print(format_table(rows))
    print("\nratio: ours vs the baseline measured in this run, > 1 = ours better (faster, or less memory)")
    for note in ctx.notes:
        print(f"- {note}")
    print(f"- machine: {machine_line()}; load average {load0:.1f} at start, {load1:.1f} at end; "
          f"{time.perf_counter() - start:.0f} s in all")
    for profile in ctx.profiles:
        print(f"\n{profile}")
    print("\nREADME (markdown):\n")
    print(format_table(rows, markdown=True))
    print("\nRatio: ours vs the baseline measured in the same run; > 1 means ours is better (faster, or less memory).")
    print(f"\n{machine_line()}. `python benchmarks/run.py --patches {args.patches} --read-patches {args.read_patches}`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
