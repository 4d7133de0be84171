"""Timing, peak-memory and table helpers shared by the benchmarks.

Peak memory is the child process's own ``VmHWM`` from ``/proc/self/status``
(``ru_maxrss`` of a child would include what it inherited from a forked
parent), so every measurement that reports memory runs in a fresh
interpreter started by :func:`run_child`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT), str(ROOT / "tests")]
for _p in reversed(PATHS):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def pin_to_one_core() -> int:
    """Restrict this process (and its thread pools) to one CPU; returns the CPU."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    try:
        import pyarrow as pa

        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return cpu


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Minimum wall time of ``repeat`` calls (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


_CHILD = """
import json, os, sys
sys.path[:0] = {paths!r}
if {one_core!r}:
    os.environ["OMP_NUM_THREADS"] = "1"
    from benchmarks.common import pin_to_one_core
    pin_to_one_core()
import importlib
module, _, name = {target!r}.partition(":")
result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[1]))
from benchmarks.common import peak_rss_mb
result = dict(result or {{}}, peak_rss_mb=peak_rss_mb())
print("@@RESULT@@" + json.dumps(result))
"""


def run_child(target: str, kwargs: Optional[dict] = None, one_core: bool = False, timeout: float = 1800,
              root: Optional[str] = None) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh interpreter; its JSON result plus ``peak_rss_mb``.

    ``one_core`` pins the child to one CPU (and one Arrow / torch thread)
    before anything heavy is imported. ``root``: another checkout of the
    project whose code (and benchmarks) the child runs instead, for an A/B
    against older code in the same run.
    """
    paths = PATHS if root is None else [str(Path(root).resolve()), str(Path(root).resolve() / "tests")]
    code = _CHILD.format(paths=paths, target=target, one_core=one_core)
    env = dict(os.environ, OMP_NUM_THREADS="1") if one_core else None
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs or {})], capture_output=True, text=True, timeout=timeout, env=env
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    raise RuntimeError(f"child {target} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


# ----------------------------------------------------------------------------- the results table


@dataclass
class Row:
    """One line of the results table. ``higher_is_better`` decides how the ratio is formed."""

    measurement: str
    ours: Optional[float]
    baseline: Optional[float]
    unit: str = ""
    target: Optional[float] = None  # minimum ratio (or maximum absolute value with ``absolute_max``)
    target_text: str = ""
    higher_is_better: bool = True
    absolute_max: Optional[float] = None  # target on ``ours`` itself: ours <= absolute_max
    absolute_min: Optional[float] = None  # target on ``ours`` itself: ours >= absolute_min
    note: str = ""
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> Optional[float]:
        if self.ours is None or self.baseline in (None, 0) or self.ours == 0:
            return None
        return self.ours / self.baseline if self.higher_is_better else self.baseline / self.ours

    @property
    def met(self) -> Optional[bool]:
        checks = []
        if self.target is not None:
            checks.append(self.ratio is not None and self.ratio >= self.target)
        if self.absolute_max is not None:
            checks.append(self.ours is not None and self.ours <= self.absolute_max)
        if self.absolute_min is not None:
            checks.append(self.ours is not None and self.ours >= self.absolute_min)
        return all(checks) if checks else None


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    head = ("measurement", "ours", "baseline", "ratio", "target", "met?")
    body = []
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        body.append((r.measurement, _fmt(r.ours, r.unit), _fmt(r.baseline, r.unit), ratio, r.target_text or "-", met))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---", "---"]) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    sep = "  "
    out = [sep.join(h.ljust(w) if i in (0, 4, 5) else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    out.append(sep.join("-" * w for w in widths))
    for cells in body:
        out.append(sep.join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(out)


def print_report(rows: Sequence[Row], notes: Sequence[str]) -> None:
    """The machine, the results table (markdown) and the notes: what every benchmark prints at its end."""
    print(machine_line())
    print(format_table(rows, markdown=True))
    for note in notes:
        print(f"- {note}")


def machine_line() -> str:
    """Machine, software and date, for the README table."""
    import datasets
    import pyarrow

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 ** 2:.0f} GB RAM"
    except OSError:
        pass
    return (
        f"{time.strftime('%Y-%m-%d')}; {cpu}, {os.cpu_count()} cores, {mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, datasets {datasets.__version__}, pyarrow {pyarrow.__version__}"
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sizes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())
