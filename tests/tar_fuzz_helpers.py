"""Helpers for the tar reader's tests: tars written by ``tarfile``, raw header surgery and ``tarfile`` as the reference.

Kept out of the test module so the fuzz strategies and the unit tests build
their inputs the same way.
"""

from __future__ import annotations

import contextlib
import io
import signal
import tarfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import zstandard

BLOCK = 512


class TimeLimitExceeded(Exception):
    """Raised inside the code under test when it runs past its time bound (a hang)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail the block with TimeLimitExceeded after ``seconds``: a hang becomes a test failure.

    Uses SIGALRM, which interrupts pure-Python loops (the main thread only,
    where pytest runs tests).
    """

    def expire(signum, frame):
        raise TimeLimitExceeded(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tar_bytes(members: Sequence[Tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT, pax: Optional[dict] = None) -> bytes:
    """A tar written by ``tarfile`` (regular files; a name ending in "/" is a directory).

    It ends after its two end-of-archive blocks, without tarfile's padding to
    10 kB records, so that a failing fuzz example prints short.
    """
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=pax or {}) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = 1_704_067_200, 0, 0
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        end = tar.offset + 2 * BLOCK
    return out.getvalue()[:end]


def header(name: str, size: int, kind: bytes = b"0", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A member's header as ``tarfile`` writes it: one block, after a GNU ``L`` header if the name is long."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, 1_704_067_200
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def member(name: str, data: bytes, kind: bytes = b"0") -> bytes:
    """A header plus its data, padded to whole blocks."""
    return header(name, len(data), kind) + data + bytes(-len(data) % BLOCK)


def pax_member(records: bytes, kind: bytes = b"x") -> bytes:
    """A pax header with the given raw record bytes, which may be malformed on purpose."""
    return member("././@PaxHeader", records, kind)


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def set_field(block: bytes, start: int, end: int, value: bytes) -> bytes:
    """Overwrite a header field and recompute the checksum, so the change gets past it."""
    assert len(value) == end - start
    return with_checksum(block[:start] + value + block[end:])


def with_checksum(block: bytes) -> bytes:
    """``block`` (a 512-byte header) with a correct checksum field."""
    block = bytearray(block[:BLOCK])
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def header_regions(data: bytes) -> List[Tuple[int, int]]:
    """Byte ranges of every member's headers (and extended-header data) in a valid tar, via ``tarfile``.

    Each range runs from a member's first header to the start of its data;
    the last range is the first end-of-archive block.
    """
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        infos = tar.getmembers()
        end = tar.offset
    regions = [(info.offset, info.offset_data) for info in infos]
    return regions + [(end, min(end + BLOCK, len(data)))]


def tarfile_files(data: bytes) -> Tuple[List[Tuple[str, bytes]], Optional[Exception]]:
    """What ``tarfile`` (mode "r:") reads from ``data``: its regular files, and the error that stopped it, if any.

    ``tarfile`` itself can spin on garbage (a GNU sparse 1.0 map that never
    ends), so it gets a time bound too; running out of it counts as an error.
    """
    files: List[Tuple[str, bytes]] = []
    try:
        with time_limit(2), tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if info.isreg():
                    if info.offset_data + info.size > len(data):  # would fail, after allocating the whole size
                        raise tarfile.ReadError("unexpected end of data")
                    files.append((info.name, tar.extractfile(info).read()))
    except Exception as err:  # noqa: BLE001 - tarfile may raise anything on garbage; it is only the reference
        return files, err
    return files, None


def write_tar_zst_with_zeros(
    path: Path, before: Sequence[Tuple[str, bytes]], zeros_name: str, zeros_size: int, after: Sequence[Tuple[str, bytes]]
) -> None:
    """A .tar.zst with one member of ``zeros_size`` zero bytes, streamed: never more than 1 MiB in memory."""
    chunk = bytes(1 << 20)
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=1).stream_writer(fh, closefd=False) as out:
        for name, data in before:
            out.write(member(name, data))
        out.write(header(zeros_name, zeros_size))
        left = zeros_size + (-zeros_size % BLOCK)
        while left:
            out.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
        for name, data in after:
            out.write(member(name, data))
        out.write(end_of_archive())
