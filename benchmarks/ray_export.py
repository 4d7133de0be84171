"""Export past one machine: pairs/s of the Ray engine with 1 and 2 workers against the local export, in one run.

    python benchmarks/ray_export.py [--patches 500] [--config s1s2-vqa] [--repeats 2] [--work DIR]

1. A release-format fixture of ``--patches`` image pairs (``benchmarks/data.fixture``), its archives
   extracted into ``BigEarthNet-S1/`` and ``BigEarthNet-S2/`` trees beside the parquet: a folder
   source (random access), as labs keep the imagery on shared storage.
2. The config is prepared once from the folders (``num_proc=2``, timed for reference): every export
   below reads that cache (their ``download_and_prepare`` is a cache hit).
3. Exports into fresh folders, the fastest of ``--repeats`` each: ``bentxt.export.writer.export`` with
   ``num_proc=1`` and ``2`` (the single-machine export), then, in a local ``ray.init(num_cpus=2)``,
   ``bentxt.export.ray_engine.export`` with ``num_workers=1`` and ``2``. Each time covers the whole call
   (cache check, planning, previews, Parquet, card); the Ray rows include Ray Data's job start and
   scheduling, not ``ray.init`` (printed apart, with the first Ray export on cold worker processes).
4. Every export's rows are checked against the first local one (per split, texts and imagery).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import log, machine_line  # noqa: E402  (also puts tests/ on sys.path)
from benchmarks.data import fixture  # noqa: E402


def extract_folders(fx: Dict, root: Path) -> Path:
    """The fixture's S1/S2 archives as extracted trees, the parquet linked beside them (done once per work folder)."""
    from bentxt.imagery.archives import iter_tar_zst

    done = root / "done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for archive in (fx["s1_archive"], fx["s2_archive"]):
        for name, data in iter_tar_zst(archive):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    os.symlink(Path(fx["data_dir"]) / "BigEarthNet.txt.parquet", root / "BigEarthNet.txt.parquet")
    done.write_text("ok")
    return root


def fastest(run: Callable[[Path], None], out: Path, repeats: int) -> Tuple[float, Path]:
    """The fastest of ``repeats`` runs, each into a fresh folder; returns (seconds, the last folder)."""
    times = []
    for k in range(repeats):
        folder = out.with_name(f"{out.name}-{k}")
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        run(folder)
        times.append(time.perf_counter() - t)
    return min(times), folder


def fingerprint(root: Path, name: str) -> Dict[str, str]:
    """A digest per config and split of the rows (files concatenated in order): texts, imagery and browse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    for config in sorted(p.name for p in (root / "data").iterdir() if not p.name.startswith(".")):
        for split in ("train", "validation", "test", "bench"):
            files = sorted((root / "data" / config).glob(f"{split}-*.parquet"))
            if not files:
                continue
            table = pa.concat_tables([pq.read_table(f) for f in files])
            digest = hashlib.sha256()
            for column in table.columns:
                column = column.combine_chunks()
                if isinstance(column, pa.ExtensionArray):  # Array3D: the values, in order
                    values = column.storage
                    while pa.types.is_list(values.type):
                        values = values.flatten()
                    digest.update(values.to_numpy(zero_copy_only=False).tobytes())
                else:
                    digest.update(repr(column.to_pylist()).encode())
            out[f"{config}/{split}"] = f"{table.num_rows}:{digest.hexdigest()[:16]}"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=500, help="image pairs in the fixture (>= 500 for the issue)")
    parser.add_argument("--config", default="s1s2-vqa")
    parser.add_argument("--repeats", type=int, default=2, help="runs per export; the fastest is kept")
    parser.add_argument("--work", default=None, help="keep the fixture and outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    import datasets

    from bentxt.export import writer as ex
    from bentxt.export import ray_engine
    from bentxt.registration import builder_for

    datasets.disable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(logging.WARNING)
    temporary = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="bentxt-ray-export-"))
    cache = work / "cache"
    load_start = os.getloadavg()[0]  # other work on the machine skews the scaling: printed with the table
    try:
        fx = fixture(work, args.patches)
        folders = extract_folders(fx, work / "folders")
        shutil.rmtree(cache, ignore_errors=True)  # prepared anew in each run, so its time is measured
        t = time.perf_counter()
        builder = builder_for(args.config, data_dir=str(folders), cache_dir=str(cache))
        builder.download_and_prepare(num_proc=2)
        prepare_s = time.perf_counter() - t
        prepared = builder.as_dataset()
        pairs = sum(len(ex.patch_starts(part, builder.config.key_column)) - 1 for part in prepared.values())
        texts = sum(part.num_rows for part in prepared.values())
        common = dict(data_dir=str(folders), cache_dir=str(cache), progress=False)

        rows: List[Tuple[str, str, float, Path]] = []
        for proc in (1, 2):
            log(f"local export, num_proc={proc}")
            seconds, out = fastest(lambda o: ex.export(args.config, o, num_proc=proc, **common), work / f"local{proc}",
                                   args.repeats)
            rows.append(("local (bentxt.export.writer)", f"{proc} process{'es' if proc > 1 else ''}", seconds, out))

        import ray

        # Ray's session folder holds Unix sockets (paths of at most 107 bytes): a short folder of its own, removed after
        sessions = tempfile.mkdtemp(prefix="bentxt-ray-")
        os.environ["RAY_TMPDIR"] = sessions
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        init_s = time.perf_counter() - t
        try:
            t = time.perf_counter()
            ray_engine.export(args.config, work / "ray-cold", num_workers=2, **common)
            cold_s = time.perf_counter() - t
            for workers in (1, 2):
                log(f"Ray export, num_workers={workers}")
                seconds, out = fastest(lambda o: ray_engine.export(args.config, o, num_workers=workers, **common),
                                       work / f"ray{workers}", args.repeats)
                rows.append(("ray (bentxt.export.ray_engine)", f"{workers} worker{'s' if workers > 1 else ''}", seconds, out))
        finally:
            ray.shutdown()
            shutil.rmtree(sessions, ignore_errors=True)

        name = args.config
        reference = fingerprint(rows[0][3], name)
        base = rows[0][2]
        print(f"{machine_line()}; load average (1 min) at the start {load_start:.2f}, at the end {os.getloadavg()[0]:.2f}")
        print(f"export of {name}: {pairs} image pairs, {texts} texts, from a cache prepared from extracted folders "
              f"({prepare_s:.1f} s, {pairs / prepare_s:.0f} pairs/s with num_proc=2); fastest of {args.repeats}")
        print(f"ray.init(num_cpus=2): {init_s:.1f} s; first Ray export (cold workers, 2): {cold_s:.1f} s "
              f"({pairs / cold_s:.0f} pairs/s)")
        print()
        print("| engine | parallelism | seconds | pairs/s | vs local, 1 process | same rows as local |")
        print("|---|---|---|---|---|---|")
        for engine, parallel, seconds, out in rows:
            same = "yes" if fingerprint(out, name) == reference else "NO"
            files = sum(1 for _ in (out / "data").glob("*/*.parquet"))
            print(f"| {engine} | {parallel} | {seconds:.2f} | {pairs / seconds:.0f} | {base / seconds:.2f}x | {same} "
                  f"({files} files) |")
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
