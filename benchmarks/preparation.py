"""Preparation from ``.tar.zst`` archives and streaming, each against the bare archive read of the same run.

The bare rate is what any reader of the release pays: zstd decompression plus
tar parsing of both archives, nothing decoded (``bentxt.imagery.archives.iter_tar_zst``).
Every function runs in its own child process (``run_child``) so its peak RSS
is its own; ``prepare`` uses ``num_proc=1``, so rates are per process.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from pathlib import Path
from typing import List, Optional


def bare_stream(archives: List[str]) -> dict:
    """Seconds to read the archives front to back (zstd + tar), members and bytes seen."""
    from bentxt.imagery.archives import iter_tar_zst

    t = time.perf_counter()
    members = size = 0
    for archive in archives:
        for _name, data in iter_tar_zst(archive):
            members += 1
            size += len(data)
    return {"seconds": time.perf_counter() - t, "members": members, "bytes": size}


def _cache_bytes(cache_dir: str) -> int:
    return sum(p.stat().st_size for p in Path(cache_dir).rglob("*.arrow"))


def prepare(data_dir: str, cache_dir: str, config: str = "s1s2-all", layout: str = "annotation",
            num_proc: Optional[int] = None, profile_top: int = 0) -> dict:
    """``download_and_prepare`` from the archives into ``cache_dir``; optionally the top cProfile entries."""
    import datasets

    import bigearthnet_txt as bt

    datasets.disable_progress_bars()
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir, layout=layout)
    profiler = cProfile.Profile() if profile_top else None
    t = time.perf_counter()
    if profiler:
        profiler.enable()
    builder.download_and_prepare(num_proc=num_proc)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - t
    splits = builder.info.splits
    result = {
        "seconds": seconds,
        "examples": sum(s.num_examples for s in splits.values()),
        "cache_bytes": _cache_bytes(cache_dir),
    }
    if profiler:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(profile_top)
        result["profile"] = _trim(out.getvalue())
    return result


def _trim(text: str) -> str:
    """pstats output from the column header on, paths shortened."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    site = str(Path(os.__file__).parent)
    return "\n".join(line.replace(site, "<stdlib>").replace(str(Path(__file__).resolve().parents[1]), ".")
                     for line in lines[start:] if line.strip())


def stream(data_dir: str, config: str, split: str, cache_dir: str) -> dict:
    """Iterate one split of ``as_streaming_dataset`` straight from the archives: examples and seconds."""
    import datasets

    import bigearthnet_txt as bt

    datasets.disable_progress_bars()
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir)
    t = time.perf_counter()
    n = 0
    for _example in builder.as_streaming_dataset(split=split):
        n += 1
    return {"examples": n, "seconds": time.perf_counter() - t}


def import_only() -> dict:
    import datasets  # noqa: F401

    import bigearthnet_txt  # noqa: F401

    return {}


def export_once(data_dir: str, out_dir: str, cache_dir: str, config: str = "s1s2-vqa") -> dict:
    """Write ``config`` as a Parquet export with ``bentxt.export.writer.export`` (not timed by the table)."""
    from bentxt.export.writer import export

    t = time.perf_counter()
    export(config, out_dir, data_dir=data_dir, cache_dir=cache_dir, progress=False)
    files = list(Path(out_dir).rglob("*.parquet"))
    return {"seconds": time.perf_counter() - t, "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def stream_export(out_dir: str, cache_dir: str, config: str = "s1s2-vqa", split: str = "train") -> dict:
    """Stream one split of the export: texts and imagery joined in order (``bentxt.export.writer.iter_examples``)."""
    import os

    import datasets

    from bentxt.export.writer import iter_examples

    datasets.disable_progress_bars()
    os.environ["HF_DATASETS_CACHE"] = cache_dir
    t = time.perf_counter()
    n = sum(1 for _ in iter_examples(out_dir, config, split))
    return {"examples": n, "seconds": time.perf_counter() - t}
