"""A full disk as an error that says where, how much is needed and how much is left.

Preparing the release writes ~135 GB (``s1s2-all``); a disk that fills up
half-way used to say only ``[Errno 28] No space left on device`` after
hours, although the size is estimated before the first byte is written
(``config.estimate_cache_bytes``). :func:`check_free_space` compares the two
before preparing; :func:`describe_enospc` turns a raw ``ENOSPC`` that still
happens (another writer filled the disk, the estimate was low) into the same
message.
"""

from __future__ import annotations

import errno
import os
import shutil
from typing import Optional

from bentxt.errors import BigEarthNetTxtError


class DiskFullError(BigEarthNetTxtError, OSError):
    """Not enough free space for a preparation (errno ``ENOSPC``); the message names the folder and both sizes."""


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def existing_parent(folder: str) -> str:
    """``folder`` or its nearest existing parent: the one whose file system a folder not made yet will be on."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(folder: str) -> int:
    """Bytes free for this user on the file system that holds (or will hold) ``folder``."""
    return shutil.disk_usage(existing_parent(folder)).free


def _message(folder: str, needed: int, free: int, what: str) -> str:
    return (
        f"{what} needs about {_gb(needed)} in {folder}, but only {_gb(free)} is free there "
        f"({_gb(needed - free)} short): free some space, or pass cache_dir= (--cache-dir) on a larger disk"
    )


def check_free_space(folder: str, needed_bytes: int, what: str) -> None:
    """Raise :class:`DiskFullError` when the file system of ``folder`` has less than ``needed_bytes`` free.

    ``what`` names the work in the message (e.g. ``"preparing config s1s2-all"``).
    The folder need not exist yet: the nearest existing parent is measured.
    """
    free = free_bytes(folder)
    if needed_bytes > free:
        raise DiskFullError(errno.ENOSPC, _message(folder, needed_bytes, free, what))


def describe_enospc(err: BaseException, folder: str, needed: Optional[int] = None,
                    what: str = "preparing") -> BaseException:
    """A raw ``[Errno 28]`` as a :class:`DiskFullError` naming ``folder``, the space needed and the space left.

    Any other error is returned unchanged, so a caller can write
    ``raise describe_enospc(err, folder, needed) from err``.
    """
    if not isinstance(err, OSError) or err.errno != errno.ENOSPC or isinstance(err, DiskFullError):
        return err
    free = free_bytes(folder)
    if needed is None:
        text = (f"{what}: the disk of {folder} is full ({_gb(free)} free): free some space, "
                f"or pass cache_dir= (--cache-dir) on a larger disk")
    else:
        text = _message(folder, needed, free, what)
    where = f" (writing {err.filename})" if getattr(err, "filename", None) else ""
    return DiskFullError(errno.ENOSPC, text + where)
