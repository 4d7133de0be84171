"""Child processes of a preparation die with it, whatever kills it.

A SIGKILL or SIGTERM of the preparing process runs no ``finally`` and no
``atexit``: its forked helpers (the imagery workers of ``join.run_jobs``,
the shard writers of ``datasets``' own pool) used to live on, reparented to
PID 1, writing into the abandoned ``.incomplete`` folder or waiting forever
for work (issue 20, item 1). On Linux the kernel can kill a child when its
parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere these are
no-ops and only the parent's own clean-up on the exit paths it sees remains.

Two entries: :func:`die_with_parent`, a pool initializer, and
:func:`children_die_with_this_process`, which arms it in every child forked
from the calling thread while the block runs (``datasets`` creates its pool
itself). Processes started through ``subprocess`` (the ``zstd`` children of
``bentxt.imagery.archives``) are not forked through Python and need nothing: their
output pipe's only reader is the worker, so they end on their next write.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Dict, Iterator

_PR_SET_PDEATHSIG = 1
_LOCK = threading.Lock()
#: thread ident -> how many nested blocks it runs; read by the at-fork hook
_ARMED: Dict[int, int] = {}
_STATE = {"hooked": False, "arm_child": False, "parent": 0}


def die_with_parent(parent: int) -> None:
    """In a child: be killed (SIGKILL) when the parent ``parent`` dies; exit now if it already has.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends,
    so the forking thread must outlive its children: ``join.run_jobs`` waits
    for its pool in that thread, and :func:`children_die_with_this_process`
    arms only children of the thread that entered it. A parent that died
    before the signal was armed is caught by the check after it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl (not Linux)
        return
    if os.getppid() != parent:
        os._exit(1)


def _before_fork() -> None:
    _STATE["arm_child"] = _ARMED.get(threading.get_ident(), 0) > 0
    _STATE["parent"] = os.getpid()


def _after_fork_in_child() -> None:
    if _STATE["arm_child"]:
        _ARMED.clear()  # the child's own forks are its business
        die_with_parent(_STATE["parent"])


@contextmanager
def children_die_with_this_process() -> Iterator[None]:
    """While the block runs, children forked from this thread die with this process."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        yield
        return
    me = threading.get_ident()
    with _LOCK:
        if not _STATE["hooked"]:
            os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
            _STATE["hooked"] = True
        _ARMED[me] = _ARMED.get(me, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _ARMED[me] -= 1
            if not _ARMED[me]:
                del _ARMED[me]
