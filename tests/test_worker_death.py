"""Killing a preparation kills its helpers: imagery workers, their zstd children, datasets' writer pool (issue 20, item 1).

Only the preparing process is killed (``os.kill(pid)``, as the OOM killer or
``kill PID`` does), never its process group: before the fix both imagery
workers lived on, reparented to PID 1, writing into the abandoned
``.incomplete`` folder. The trials are ``benchmarks/kill_trials.py``'s
(``python -m benchmarks.kill_trials`` runs 20 at random moments); the wait
for the processes to go is bounded generously, so a busy machine passes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.kill_trials import kill_trial  # noqa: E402
from bentxt.cache import lifetime  # noqa: E402
from make_fixtures import make_fixture  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """68 pairs: at 0.05 s a patch each archive's pass lasts ~3.4 s, long enough to be killed in."""
    return make_fixture(tmp_path_factory.mktemp("kill"), seed=5, n_extra_patches=60)


def assert_nothing_left(result: dict) -> None:
    assert result["workers"] == 2 and result["zstd"] >= 2, result  # the kill came while both workers decoded
    assert result["left_alive"] == [], result
    assert result["growth_bytes"] == 0, result  # the abandoned .incomplete folder stopped growing


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_preparing_process_kills_its_workers_and_zstd(slow_data, tmp_path, sig):
    assert_nothing_left(kill_trial(str(slow_data.root), tmp_path / "t", kill_after=0.3, delay=0.05, sig=sig))


def test_random_moments_leave_nothing_behind(slow_data, tmp_path):
    """Three kills at random moments of the imagery pass (the benchmark does 20)."""
    rng = random.Random(20)
    for k in range(3):
        assert_nothing_left(kill_trial(str(slow_data.root), tmp_path / f"t{k}", kill_after=rng.uniform(0, 2.5), delay=0.05))


def test_datasets_writer_pool_dies_too(slow_data, tmp_path):
    """Killed while datasets' own pool writes the text shards (it forks them itself: lifetime arms it while preparing)."""
    result = kill_trial(str(slow_data.root), tmp_path / "t", delay=0.0, when="shards")
    assert result["processes"] > result["workers"] + result["zstd"], result  # the writer pool was running
    assert result["left_alive"] == [] and result["growth_bytes"] == 0, result


def test_children_of_other_threads_or_after_the_block_are_not_armed():
    """Only forks from the thread inside ``children_die_with_this_process`` get the parent-death signal."""
    code = (
        "import ctypes, os, sys, threading\n"
        "from bentxt.cache import lifetime\n"
        "def pdeathsig():\n"
        "    sig = ctypes.c_int()\n"
        "    ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)\n"  # PR_GET_PDEATHSIG
        "    return sig.value\n"
        "def child_signal():\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.write(w, str(pdeathsig()).encode()); os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    return int(os.read(r, 10))\n"
        "out = {}\n"
        "with lifetime.children_die_with_this_process():\n"
        "    out['inside'] = child_signal()\n"
        "    t = threading.Thread(target=lambda: out.__setitem__('other thread', child_signal())); t.start(); t.join()\n"
        "out['after'] = child_signal()\n"
        "print(out)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str({"inside": int(signal.SIGKILL), "other thread": 0, "after": 0})


def test_a_child_whose_parent_already_died_exits(tmp_path):
    """The race the check after prctl closes: the parent died before the signal was armed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        lifetime.die_with_parent(-1)  # "the parent" is not our parent: as if it had died and we were reparented
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 1
