"""Preparing from URLs (a local HTTP server on 127.0.0.1) against preparing from the same files on disk.

    python -m benchmarks.url_prepare [--patches 2000] [--work DIR] [--config s1s2-all] [--num-proc 2]

The server runs in its own process. Prints, for each route, the preparation time, the bytes of the whole HF
cache folder, of its ``downloads/`` and of the prepared dataset (everything
else: the Arrow files and the imagery store), and how often each archive was
requested. Each run is a child process (``benchmarks.common.run_child``), local
first then URL, alternating ``--repeat`` times.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
FILES = {"annotations": "BigEarthNet.txt.parquet", "s1": "BigEarthNet-S1.tar.zst", "s2": "BigEarthNet-S2.tar.zst"}


def _bytes(folder: Path) -> int:
    files = folder.rglob("*") if folder.exists() else ()
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


_SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from http_server import serve_directory
with serve_directory({root!r}) as (url, log):
    print(url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    print(repr([tuple(r) for r in log]), flush=True)
"""


@contextlib.contextmanager
def serving(root: str):
    """``tests/http_server.py`` in its own process (in this one it would take the GIL from the preparation)."""
    code = _SERVER.format(tests=str(ROOT / "tests"), root=root)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    log: list = []
    try:
        yield proc.stdout.readline().strip(), log
    finally:
        proc.stdin.close()
        log.extend(ast.literal_eval(proc.stdout.readline() or "[]"))
        proc.wait(timeout=30)


def prepare(data_dir: str, cache_dir: str, config: str, num_proc: int, serve: bool) -> Dict:
    """One preparation in this process: from ``data_dir`` itself, or from it served over HTTP on 127.0.0.1."""
    import datasets

    import bigearthnet_txt as bt

    datasets.disable_progress_bars()
    served = serving(data_dir) if serve else contextlib.nullcontext((None, []))
    with served as (url, log):
        if serve:
            builder = bt.BigEarthNetTxt(config_name=config, cache_dir=cache_dir,
                                        data_files={k: f"{url}/{name}" for k, name in FILES.items()})
        else:
            builder = bt.BigEarthNetTxt(config_name=config, cache_dir=cache_dir, data_dir=data_dir)
        start = time.perf_counter()
        builder.download_and_prepare(num_proc=num_proc)
        seconds = time.perf_counter() - start
    cache = Path(cache_dir)
    everything, downloads = _bytes(cache), _bytes(cache / "downloads")
    gets = [path for method, path, _ in log if method == "GET" and path.endswith(".tar.zst")]
    return {"seconds": seconds, "hf_cache_bytes": everything, "download_bytes": downloads,
            "prepared_bytes": everything - downloads, "archive_gets": {p: gets.count(p) for p in sorted(set(gets))},
            "examples": sum(s.num_examples for s in builder.info.splits.values())}


def main(argv=None) -> int:
    from benchmarks import data
    from benchmarks.common import log, run_child

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--work", default=str(ROOT / ".bench-work"))
    parser.add_argument("--config", default="s1s2-all")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    work = Path(args.work)
    fx = data.fixture(work, args.patches)
    results: Dict[str, list] = {"local": [], "url": []}
    for _ in range(args.repeat):
        for route in ("local", "url"):
            cache = work / f"url-bench-cache-{route}"
            shutil.rmtree(cache, ignore_errors=True)
            res = run_child("benchmarks.url_prepare:prepare", {"data_dir": fx["data_dir"], "cache_dir": str(cache),
                                                               "config": args.config, "num_proc": args.num_proc,
                                                               "serve": route == "url"})
            shutil.rmtree(cache, ignore_errors=True)
            results[route].append(res)
            log(f"{route}: {res['seconds']:.2f} s, HF cache {res['hf_cache_bytes'] / 1e6:.1f} MB "
                f"(downloads {res['download_bytes'] / 1e6:.1f} MB, prepared {res['prepared_bytes'] / 1e6:.1f} MB), "
                f"archive GETs {res['archive_gets']}, peak RSS {res['peak_rss_mb']:.0f} MB")
    best = {route: min(r["seconds"] for r in runs) for route, runs in results.items()}
    last = results["url"][-1]
    summary = {
        "patches": fx["patches"], "archive_bytes": fx["archive_bytes"], "best_seconds": best,
        "url_over_local_time": best["url"] / best["local"],
        "url_cache_over_prepared": last["hf_cache_bytes"] / last["prepared_bytes"],
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
