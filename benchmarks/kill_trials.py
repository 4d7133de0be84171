"""Kill a preparation at a random moment, many times: no worker, no zstd child and no growing folder may remain.

Issue 20, item 1: a SIGKILL of the preparing process (only that process, not
its group: what the OOM killer or ``kill PID`` does) used to leave both
imagery workers running, reparented to PID 1, writing on into the abandoned
``.incomplete`` folder. Each trial here starts ``s1s2-all`` from the fixture
archives with ``num_proc=2`` in a fresh interpreter whose band decoding is
slowed down (``delay`` seconds per patch, so a trial lasts seconds, not
milliseconds), records the pids of the workers and of their ``zstd``
children, kills the preparing process at a random moment, then checks within
``grace`` seconds that every recorded process is gone and that the cache
folder stopped growing.

    python -m benchmarks.kill_trials [--trials 20] [--patches 120] [--delay 0.02] [--seed 0]

prints one line per trial and a summary (JSON with ``--json``); exit status 1
if any trial left something behind. ``tests/test_worker_death.py`` runs a few
trials of the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]

#: the preparing process: band decoding slowed down and every worker / zstd pid written to a file, nothing else changed
DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
import datasets, bigearthnet_txt as bt
from bentxt.imagery import archives
from bentxt.imagery import readers
datasets.disable_progress_bars()
data, cache, pids, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
from bentxt import join
join.TEXTS_PER_PROCESS = 1  # the text shards written by datasets' own pool of num_proc processes, as at release scale

def note(kind, pid):
    with open(os.path.join(pids, kind), "a") as f:
        f.write(f"{{pid}}\\n")

decode, seen = readers.decode_patch, set()
def slow_decode(*args, **kwargs):
    if os.getpid() not in seen:
        seen.add(os.getpid())
        note("workers", os.getpid())
    time.sleep(delay)
    return decode(*args, **kwargs)
readers.decode_patch = slow_decode

start = archives._ZstdProcess.__init__
def noted_start(self, *args, **kwargs):
    start(self, *args, **kwargs)
    note("zstd", self._proc.pid)
archives._ZstdProcess.__init__ = noted_start

note("started", os.getpid())
b = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=data, cache_dir=cache, writer_batch_size=8)
b.download_and_prepare(num_proc=2)
note("finished", os.getpid())
"""


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it holds no CPU, files or memory)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def folder_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _pids(folder: Path, kind: str) -> List[int]:
    path = folder / kind
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _text_shards(cache: Path) -> List[str]:
    """The text shards written so far; ``os.walk`` skips a folder removed while it looks (``Path.glob`` raised)."""
    return [os.path.join(folder, name) for folder, _, names in os.walk(cache) for name in names
            if name.startswith("bigearthnet_txt-") and name.endswith(".arrow")]


def kill_trial(data_dir: str, work: Path, kill_after: Optional[float] = None, delay: float = 0.02,
               grace: float = 10.0, sig: int = signal.SIGKILL, timeout: float = 120.0,
               when: str = "imagery") -> Dict[str, object]:
    """One trial: kill the preparing process ``kill_after`` seconds after it started its imagery workers
    (``when="imagery"``) or its first text shard appeared (``when="shards"``: datasets' writer pool runs);
    returns what was left behind."""
    pids, cache = work / "pids", work / "cache"
    pids.mkdir(parents=True)
    code = DRIVER.format(root=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code, data_dir, str(cache), str(pids), str(delay)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    below: List[int] = []
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and len(_pids(pids, "workers")) < 2:
            time.sleep(0.01)
        while when == "shards" and proc.poll() is None and time.monotonic() < deadline and not _text_shards(cache):
            time.sleep(0.002)
        if kill_after:
            time.sleep(kill_after)
        if proc.poll() is not None:
            raise RuntimeError(f"the preparation ended before the kill (exit {proc.returncode}): "
                               f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
        below = descendants(proc.pid)  # imagery workers, their zstd children, datasets' writer pool
        workers, zstd = _pids(pids, "workers"), _pids(pids, "zstd")
        killed_at = time.monotonic()
        os.kill(proc.pid, sig)  # the preparing process only, as the OOM killer or `kill PID` would
        proc.wait()
        children = sorted(set(below + workers + _pids(pids, "zstd")))
        while time.monotonic() < killed_at + grace and any(alive(p) for p in children):
            time.sleep(0.02)
        gone_after = time.monotonic() - killed_at
        left = [p for p in sorted(set(children + _pids(pids, "zstd"))) if alive(p)]
        size = folder_bytes(cache)
        time.sleep(1.0)
        growth = folder_bytes(cache) - size
        return {"workers": len(workers), "zstd": len(set(zstd + _pids(pids, "zstd"))), "processes": len(children),
                "left_alive": left,
                "gone_after_s": round(gone_after, 3), "growth_bytes": growth, "cache_bytes": size}
    finally:
        try:  # never leave anything behind, whatever the trial found
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in set(_pids(pids, "workers") + _pids(pids, "zstd") + below):
            try:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        proc.stderr.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--patches", type=int, default=120, help="extra fixture patches (the pass lasts ~patches * delay)")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds added to each patch's decoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from make_fixtures import make_fixture

    rng = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="bentxt-kill-") as tmp:
        fixture = make_fixture(Path(tmp) / "data", seed=5, n_extra_patches=args.patches)
        pass_seconds = (len(fixture.patches) * args.delay)  # one archive's pass, decoding at `delay` per patch
        for k in range(args.trials):
            moment = rng.uniform(0, pass_seconds * 0.9)
            result = kill_trial(str(fixture.root), Path(tmp) / f"trial-{k}", kill_after=moment, delay=args.delay,
                                sig=getattr(signal, f"SIG{args.signal}"))
            result["kill_after_s"] = round(moment, 3)
            results.append(result)
            if not args.json:
                print(f"trial {k + 1:2d}: killed {moment:5.2f} s into the imagery pass; {result['workers']} workers, "
                      f"{result['zstd']} zstd; left alive {result['left_alive']}; all gone after "
                      f"{result['gone_after_s']:.2f} s; cache grew {result['growth_bytes']} B in the next second")
    failed = [r for r in results if r["left_alive"] or r["growth_bytes"]]
    summary = {"trials": len(results), "failed": len(failed), "max_gone_after_s": max(r["gone_after_s"] for r in results)}
    print(json.dumps({"summary": summary, "trials": results} if args.json else summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
