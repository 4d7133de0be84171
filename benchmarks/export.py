"""Streaming a Parquet export vs streaming the raw archives through the builder.

    python benchmarks/export.py [--patches 500] [--config s1s2-vqa] [--repeats 2] [--keep DIR]

Generates a fixture (tests/make_fixtures.py, seed 1, ``--patches`` extra image
pairs) and exports one config twice with bentxt.export: in the default
annotation layout (one row per text, each row carrying its patch's bands) and
in the patch layout (one row per image pair). Then it streams splits several
ways, each run in its own interpreter so that its peak RSS (VmHWM from
/proc/self/status; ru_maxrss of a child would include the parent's) is its
own, keeping the fastest of ``--repeats`` runs:

- ``builder``: ``as_streaming_dataset`` over the .tar.zst archives;
- ``export python``: ``load_dataset(export, config, streaming=True)`` in the
  default python format (arrays become nested lists);
- ``export numpy``: the same stream read with ``bentxt.export.numpy_batches``
  (Arrow batches -> numpy, exact dtypes);
- ``export numpy, W workers``: a torch DataLoader whose workers each take
  whole files (``split_dataset_by_node``) and read them with numpy_batches.

Last, the sharding claims on the export: ``split_dataset_by_node`` over 4
ranks gives disjoint, complete parts of whole files, and a DataLoader with 4
workers over the stream reads every example once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT), str(ROOT / "tests")]
sys.path[:0] = [p for p in PATHS if p not in sys.path]

_CHILD = """
import json, sys, time
sys.path[:0] = {paths!r}
import datasets
datasets.disable_progress_bars()
import bigearthnet_txt as bt
from bentxt.export import numpy_batches
how, config, layout, name, split, data_dir, export_dir, cache, workers = sys.argv[1:10]
workers = int(workers)
t = time.perf_counter(); n = 0; first = None; worker_peaks = []


def count(k):
    global n, first
    n += k
    if first is None:
        first = time.perf_counter() - t


if how == "builder":
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache, layout=layout)
    for _ in builder.as_streaming_dataset(split=split):
        count(1)
else:
    stream = datasets.load_dataset(export_dir, name, split=split, streaming=True, cache_dir=cache)
    if how == "python":
        for _ in stream:
            count(1)
    elif workers == 0:
        for batch in numpy_batches(stream, batch_size=64):
            count(len(batch["patch_id"]))
    else:
        import numpy as np
        import torch
        from datasets.distributed import split_dataset_by_node

        class Files(torch.utils.data.IterableDataset):
            # each worker reads whole files; arrays leave it as tensors (shared memory, no pickled copies)

            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                part = split_dataset_by_node(stream, rank=info.id, world_size=info.num_workers)
                for batch in numpy_batches(part, batch_size=64):
                    yield {{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}}
                yield {{"worker_peak_kb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])}}

        for batch in torch.utils.data.DataLoader(Files(), batch_size=None, num_workers=workers):
            if "worker_peak_kb" in batch:
                worker_peaks.append(batch["worker_peak_kb"])
            else:
                count(len(batch["patch_id"]))
seconds = time.perf_counter() - t
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
# with workers: the parent's peak plus each worker's (an upper bound: the peaks need not coincide)
print(json.dumps({{"examples": n, "seconds": seconds, "first": first, "peak_rss_mb": (hwm + sum(worker_peaks)) / 1024}}))
"""


def run_child(how: str, config: str, layout: str, name: str, split: str, data_dir: Path, export_dir: Path,
              cache: str, workers: int = 0, repeats: int = 1) -> dict:
    """The fastest of ``repeats`` runs (this machine's load varies), with that run's peak RSS."""
    code = _CHILD.format(paths=PATHS)
    env = {**os.environ, "HF_DATASETS_CACHE": cache}
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code, how, config, layout, name, split, str(data_dir), str(export_dir), cache,
             str(workers)],
            capture_output=True, text=True, check=True, env=env,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def check_ranks(export_dir: Path, config: str, split: str, world_size: int = 4) -> str:
    import datasets
    from datasets.distributed import split_dataset_by_node

    stream = datasets.load_dataset(str(export_dir), config, split=split, streaming=True).select_columns(["ID"])
    parts = [split_dataset_by_node(stream, rank=r, world_size=world_size) for r in range(world_size)]
    ids = [[row["ID"] for row in p] for p in parts]
    flat = [i for p in ids for i in p]
    whole = stream.num_shards % world_size == 0 and all(p.num_shards == stream.num_shards // world_size for p in parts)
    return (f"split_dataset_by_node, {world_size} ranks over {stream.num_shards} {split} files: files per rank "
            f"{[p.num_shards for p in parts]} ({'whole files' if whole else 'row-level fallback'}), examples per rank "
            f"{[len(p) for p in ids]}, {'disjoint' if len(flat) == len(set(flat)) else 'OVERLAPPING'}, "
            f"{len(set(flat))} distinct")


def check_dataloader(export_dir: Path, config: str, split: str, workers: int = 4) -> str:
    try:
        import torch
    except ImportError:
        return "torch is not installed: DataLoader check skipped"
    import warnings

    import datasets

    stream = datasets.load_dataset(str(export_dir), config, split=split, streaming=True).select_columns(["ID"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "suggested max number of worker": more workers than cores is the point here
        ids = [int(row["ID"]) for row in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)]
    return (f"DataLoader num_workers={workers} over {stream.num_shards} {split} files: {len(ids)} examples read, "
            f"{len(set(ids))} distinct ({'each once' if len(ids) == len(set(ids)) else 'DUPLICATES'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=500, help="extra generated image pairs (plus the 8 fixed ones)")
    parser.add_argument("--config", default="s1s2-vqa")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the fastest is kept")
    parser.add_argument("--keep", default=None, help="work here instead of a temporary folder")
    args = parser.parse_args()

    import datasets

    from bentxt.export import export
    from make_fixtures import make_fixture

    datasets.disable_progress_bars()
    work = Path(args.keep or tempfile.mkdtemp(prefix="bentxt-export-bench-"))
    cache = str(work / "cache")
    os.environ["HF_DATASETS_CACHE"] = cache
    t = time.perf_counter()
    fixture = make_fixture(work / "data", seed=1, n_extra_patches=args.patches)
    archives = sum(os.path.getsize(fixture.archives[s]) for s in ("s1", "s2"))
    print(f"fixture: {len(fixture.archived_patches)} image pairs, {fixture.table.num_rows} annotations, S1+S2 archives "
          f"{archives / 1e6:.0f} MB ({time.perf_counter() - t:.1f} s); {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    out = work / "export"
    names = {"annotation": args.config, "patch": f"{args.config}-patches"}
    for layout, name in names.items():
        t = time.perf_counter()
        export(args.config, out, data_dir=str(fixture.root), cache_dir=cache, name=name, layout=layout, progress=False)
        files = sorted((out / "data" / name).glob("*.parquet"))
        per_split = {s: sum(f.name.startswith(f"{s}-") for f in files) for s in ("train", "validation", "test", "bench")}
        print(f"export {name} (layout={layout}; prepare + previews + Parquet): {time.perf_counter() - t:.1f} s, "
              f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB, files per split {per_split}")

    rows: List[Dict[str, object]] = []
    cases = [("annotation", "train"), ("annotation", "bench"), ("patch", "train")]
    for layout, split in cases:
        runs = {
            "builder (.tar.zst archives)": ("builder", 0),
            "export, python rows": ("python", 0),
            "export, numpy_batches": ("numpy", 0),
            f"export, numpy_batches, {args.workers} workers": ("numpy", args.workers),
        }
        base = None
        for label, (how, workers) in runs.items():
            repeats = 1 if how == "python" else args.repeats  # the known slow path: once is enough
            r = run_child(how, args.config, layout, names[layout], split, fixture.root, out, cache, workers, repeats)
            rate = r["examples"] / r["seconds"]
            steady = (r["examples"] - 1) / max(r["seconds"] - r["first"], 1e-9)
            base = base or (rate, r["peak_rss_mb"], r["examples"], steady)
            rows.append({"case": f"{layout} {split}", "reader": label, "examples": r["examples"], "rate": rate,
                         "rate_x": rate / base[0], "steady": steady, "steady_x": steady / base[3], "first": r["first"],
                         "rss": r["peak_rss_mb"], "rss_x": r["peak_rss_mb"] / base[1], "same": r["examples"] == base[2]})

    print(f"\n{args.config}: stream a whole split, one process per run (fastest of {args.repeats}; python rows once).")
    print("ex/s: whole run incl. setup; steady: after the first example; first: seconds to the first example;")
    print("peak RSS: VmHWM of the reading process (with workers: parent + each worker's, an upper bound)")
    print(f"{'layout split':17s} {'reader':34s} {'examples':>8s} {'ex/s':>6s} {'(x)':>6s} {'steady':>7s} {'(x)':>6s} "
          f"{'first':>6s} {'peak RSS':>9s} {'(x)':>6s}")
    for r in rows:
        print(f"{r['case']:17s} {r['reader']:34s} {r['examples']:>8d} {r['rate']:>6.0f} {r['rate_x']:>5.2f}x "
              f"{r['steady']:>7.0f} {r['steady_x']:>5.2f}x {r['first']:>5.1f}s {r['rss']:>6.0f} MB {r['rss_x']:>5.2f}x"
              + ("" if r["same"] else "  (DIFFERENT COUNT)"))

    print()
    print(check_ranks(out, args.config, "train"))
    print(check_dataloader(out, args.config, "train"))


if __name__ == "__main__":
    main()
