"""Sequential reading of the release's monolithic ``.tar.zst`` archives.

The archives are one zstd stream each (no seekable frames), so the only way in
is front to back: zstd stream reader -> tar headers read in order (torchgeo's
mirror: gzip over the concatenated ``.tar.gzaa``/``.tar.gzab`` parts).
That works the same for a local path, ``http(s)://`` and ``hf://`` because the
raw bytes come from fsspec and nothing ever seeks.
``datasets``' own ``iter_archive`` cannot read ``.tar.zst`` (docs/datasets-notes.md#streaming-archives).

Over ``http(s)://`` the raw bytes come from ``ResumableHTTPStream``: one
archive is tens of GB read through a single GET, and a dropped connection
(or aiohttp's 5-minute total timeout) must not restart the download from byte 0.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import zlib
from functools import lru_cache
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Type, Union, cast

import fsspec
import fsspec.asyn
import zstandard
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import xopen
from fsspec.exceptions import FSTimeoutError

from bentxt import compat
from bentxt.bands import SENSOR_BANDS
from bentxt.errors import BigEarthNetTxtError
from bentxt.imagery.layout import display_name, parse_member
from bentxt.imagery.raster import max_band_file_bytes
from bentxt.imagery.readers import BadBand, BandData

logger = logging.getLogger("bigearthnet_txt")

#: consecutive failed reads (without a byte of progress) before a stream gives up
HTTP_MAX_RETRIES = 5
#: seconds to wait before retry n are ``HTTP_RETRY_BACKOFF * n``
HTTP_RETRY_BACKOFF = float(os.environ.get("BENTXT_HTTP_RETRY_BACKOFF", "0.5"))
#: seconds without a byte (or a connection) before a stalled HTTP read is reported and resumed; aiohttp's own
#: default, a 300 s total per request, cost 5 minutes of silence per stall (issue 20)
HTTP_STALL_TIMEOUT = float(os.environ.get("BENTXT_HTTP_TIMEOUT", "60"))


class ArchiveError(BigEarthNetTxtError, ValueError):
    """A damaged or unexpected archive; the message names the archive and the last good member."""


class ResumeError(ArchiveError):
    """An HTTP archive stream broke and could not be resumed (the message names the byte offset)."""


class _Truncated(BigEarthNetTxtError, ConnectionError):
    """The body ended before its Content-Length: the connection was closed under us."""



def _transport_errors() -> Tuple[Type[BaseException], ...]:
    import aiohttp  # imported late like datasets does: it is slow to import and http-only

    return (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, FSTimeoutError)


class ResumableHTTPStream(io.RawIOBase):
    """A readable, non-seekable byte stream of one URL that survives dropped connections.

    It tracks how many bytes it has handed out; when a read fails with a
    transport error, or the body ends before the first response's
    Content-Length, it reopens the URL with ``Range: bytes=<pos>-`` and goes on.
    A resume must be answered 206 with a Content-Range starting at ``pos``:
    anything else would silently corrupt the zstd stream, so it is an error.
    After ``max_retries`` failures in a row without progress it raises
    ``ResumeError``. Requests go through fsspec's HTTP filesystem in streaming
    mode (``block_size=0``) with the given fsspec storage options.
    """

    def __init__(
        self,
        url: str,
        storage_options: Optional[dict] = None,
        max_retries: Optional[int] = None,
        backoff: Optional[float] = None,
        timeout: Optional[float] = None,
    ):
        super().__init__()
        self.url = url
        options = dict(storage_options or {})
        import aiohttp

        # a stall ends after `timeout` s without a byte, not after a total time: one archive is a long GET
        self.timeout = HTTP_STALL_TIMEOUT if timeout is None else timeout
        client = dict(options.get("client_kwargs") or {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout))
        options["client_kwargs"] = client
        # Our headers are merged in at every open rather than left in the filesystem's
        # options: fsspec would otherwise pass `headers` twice to its HEAD request.
        # Identity encoding keeps byte offsets (and Content-Length) those of the file.
        self._headers = {**options.pop("headers", {}), "Accept-Encoding": "identity"}
        self._fs = fsspec.filesystem(url.split("://")[0], **options)
        self.max_retries = HTTP_MAX_RETRIES if max_retries is None else max_retries
        self.backoff = HTTP_RETRY_BACKOFF if backoff is None else backoff
        self.pos = 0
        self.size: Optional[int] = None  # the file's length, once a response told it
        self._file: Any = None  # the open fsspec file (untyped), None between connections

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        headers = dict(self._headers)
        kwargs = {}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
            kwargs["size"] = self.size or self.pos  # any size skips fsspec's HEAD: the GET is checked below
        self._file = self._fs.open(self.url, "rb", block_size=0, headers=headers, **kwargs)
        response = compat.http_response(self._file)
        if self.pos:
            content_range = response.headers.get("Content-Range", "")
            if response.status != 206 or not content_range.startswith(f"bytes {self.pos}-"):
                self._close_file()
                answer = f"with Content-Range {content_range}" if content_range else "without Content-Range"
                raise ResumeError(
                    f"Archive {display_name(self.url)}: the connection broke at byte {self.pos} and the server does "
                    f"not support resuming (it answered Range: bytes={self.pos}- with HTTP {response.status} {answer})"
                )
            total = content_range.rpartition("/")[2]
            self.size = int(total) if total.isdigit() else self.size
        elif response.headers.get("Content-Encoding", "identity") == "identity" and response.content_length is not None:
            self.size = response.content_length

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except Exception:  # a broken connection may fail to close; it is being replaced anyway
                pass

    def _received_before_the_break(self, n: int) -> bytes:
        """Up to ``n`` body bytes that aiohttp buffered before the connection broke.

        Once a response has failed, aiohttp's reads raise without returning the
        data it already holds (all of it when the server is fast), so without
        this every resume would restart up to a buffer's worth earlier. This
        uses aiohttp's private ``StreamReader._read_nowait``; if that changes,
        the salvage returns nothing and resuming is only less efficient.
        """
        content = getattr(compat.http_response(self._file), "content", None)
        if content is None or content.exception() is None:  # not a broken body (or not aiohttp)
            return b""

        async def take() -> bytes:  # on the event loop thread, which owns the buffer
            return compat.buffered_bytes(content, n)

        try:
            return fsspec.asyn.sync(self._fs.loop, take)
        except Exception:
            return b""

    def readinto(self, buffer) -> int:
        if not len(buffer) or (self.size is not None and self.pos >= self.size):
            return 0
        failures = 0
        while True:
            try:
                if self._file is None:
                    self._open()
                data = self._file.read(len(buffer))
                if not data and self.size is not None and self.pos < self.size:
                    raise _Truncated(f"the body ended at byte {self.pos} of {self.size}")
                break
            except _transport_errors() as err:
                data = self._received_before_the_break(len(buffer))
                if data:  # hand those out first; the next read fails again and resumes after them
                    break
                self._close_file()
                failures += 1
                where = f"byte {self.pos}" + (f" of {self.size}" if self.size is not None else "")
                status = getattr(err, "status", None)  # an HTTP error status (aiohttp.ClientResponseError)
                if status is not None and 400 <= status < 500 and status != 429:  # a refusal: retrying cannot help
                    if not self.pos:
                        raise
                    raise ResumeError(f"Archive {display_name(self.url)}: resuming at {where} got HTTP {status}") from err
                if failures > self.max_retries:
                    raise ResumeError(
                        f"Archive {display_name(self.url)}: the download stopped at {where}; gave up after "
                        f"{self.max_retries} retries ({failures} attempts in a row without progress; "
                        f"last error: {type(err).__name__}: {err})"
                    ) from err
                delay = self.backoff * failures
                if isinstance(err, (asyncio.TimeoutError, FSTimeoutError)):  # said as it happens, not after the retries
                    logger.warning(
                        "Archive %s: no data for %.0f s at %s (a stalled server or connection); reconnecting "
                        "[%d/%d] (BENTXT_HTTP_TIMEOUT sets the wait)",
                        display_name(self.url), self.timeout, where, failures, self.max_retries,
                    )
                logger.info(
                    "Archive %s: connection lost at %s (%s: %s); resuming with Range: bytes=%d- in %.1fs [%d/%d]",
                    display_name(self.url), where, type(err).__name__, err, self.pos, delay, failures, self.max_retries,
                )
                time.sleep(delay)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        self._close_file()
        super().close()


def open_archive(urlpath: str, download_config: Optional[DownloadConfig] = None):
    """The raw bytes of an archive: resumable for a single-hop http(s) URL, ``xopen`` otherwise.

    The URL and storage options (``download_config.storage_options``, proxy
    settings, Google Drive confirmation) are prepared exactly as ``xopen`` does.
    """
    if "::" not in urlpath and urlpath.startswith(("http://", "https://")):
        url, options = compat.xopen_storage_options(urlpath, download_config)
        protocol = url.split("://")[0]
        if protocol in ("http", "https"):  # Hub URLs have become hf:// paths
            return ResumableHTTPStream(url, options.get(protocol))
    return xopen(urlpath, "rb", download_config=download_config, block_size=0)


class _PartsStream(io.RawIOBase):
    """Several files read as one stream (torchgeo's ``.tar.gzaa``, ``.tar.gzab``): no joined copy on disk."""

    _current: Any  # the part being read (what open_archive gives), None between parts

    def __init__(self, paths: Sequence[str], download_config: Optional[DownloadConfig]):
        self._paths, self._dlc, self._current = list(paths), download_config, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = open_archive(self._paths.pop(0), self._dlc)
            n = self._current.readinto(buffer)
            if n:
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


class _Counted(io.RawIOBase):
    """Counts the compressed bytes read, for a progress bar with an ETA over a multi-GB archive."""

    def __init__(self, raw, bar):
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        self._bar.update(n)
        return n

    def close(self) -> None:
        self._raw.close()
        self._bar.close()
        super().close()


def _progress_bar(paths: Sequence[str], download_config: Optional[DownloadConfig], name: str):
    from datasets.utils import tqdm

    try:
        total = sum(fsspec.core.url_to_fs(p.split("::")[-1])[0].size(p.split("::")[-1]) for p in paths)
    except Exception:  # a server that does not tell the size: a bar without ETA
        total = None
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"Reading {name.rsplit('/', 1)[-1]}", leave=False)


class _ZstdProcess(io.RawIOBase):
    """zstd decompression in a ``zstd -dc`` child process, read here as a pipe.

    Decompression is half the cost of a pass over an archive, and in this
    process it holds the GIL (measured: 5x slower beside one busy Python
    thread). In its own process it runs on another core while this one parses
    tar headers and decodes bands. A local file is handed to the child as its
    standard input (the file offset, shared with the child, drives the
    progress bar); any other stream (HTTP with resume, split parts) is fed by
    a thread that only waits in I/O. The exit status and zstd's message are
    checked at the end of the stream, so damage is still an error naming the
    archive. Used when the ``zstd`` command exists, unless
    ``BENTXT_ZSTD_PROCESS=0``; otherwise ``zstandard`` decompresses in-process.
    """

    def __init__(self, command: str, raw=None, fd: Optional[int] = None, bar=None):
        super().__init__()
        self._fd, self._bar, self._seen, self._next_update = fd, bar, 0, 0.0
        self._proc = subprocess.Popen([command, "-dcq", *_zstd_options(command)],
                                      stdin=fd if fd is not None else subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        assert self._proc.stdout is not None  # a pipe
        _widen_pipe(self._proc.stdout.fileno())
        self._error: Optional[BaseException] = None
        self._feeder = None
        if fd is None:
            self._feeder = threading.Thread(target=self._feed, args=(raw,), daemon=True)
            self._feeder.start()

    def _feed(self, raw) -> None:
        assert self._proc.stdin is not None  # a pipe when fed by this thread
        try:
            for chunk in iter(lambda: raw.read1(1 << 20), b""):  # read1: data before a failure is kept
                self._proc.stdin.write(chunk)
        except BrokenPipeError:  # zstd stopped (damaged input): its exit status tells why
            pass
        except BaseException as err:  # e.g. a ResumeError of an HTTP stream: raised in the reading thread
            if not self.closed:  # (after close, only "I/O on a closed file" errors of the early stop remain)
                self._error = err
        finally:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = cast(io.FileIO, self._proc.stdout).readinto(buffer)  # bufsize=0: the pipe is an unbuffered FileIO
        if self._bar is not None and self._fd is not None and (not n or time.monotonic() > self._next_update):
            position = os.lseek(self._fd, 0, os.SEEK_CUR)  # the child's position in the shared file
            self._bar.update(position - self._seen)
            self._seen, self._next_update = position, time.monotonic() + 0.2
        if not n:
            self._finish()
        return n or 0

    def _finish(self) -> None:
        if self._feeder is not None:
            self._feeder.join()
        if self._error is not None:
            raise self._error
        if self._proc.wait() != 0:
            assert self._proc.stderr is not None  # a pipe
            message = self._proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise zstandard.ZstdError(f"zstd: {message[-1] if message else 'failed'}")

    def close(self) -> None:
        if self.closed:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._feeder is not None:
            self._feeder.join()
        for pipe in (self._proc.stdout, self._proc.stderr):
            assert pipe is not None  # both are pipes
            pipe.close()
        if self._bar is not None and self._fd is not None:
            self._bar.close()
        super().close()


@lru_cache(maxsize=4)
def _zstd_options(command: str) -> Tuple[str, ...]:
    """``--no-asyncio`` where this zstd has it (its long help lists ``--[no-]asyncio``).

    zstd's asynchronous I/O runs its writes in a second thread: it helps when
    a core is idle, but preparing keeps both cores busy (two zstd children,
    two decoding workers, the texts), and the thread hand-offs cost CPU
    (measured on 5,000 pairs: ~0.45 s less CPU for the two archives, the whole
    preparation ~4 % faster in 5 of 5 alternating runs).
    """
    try:
        found = subprocess.run([command, "-H"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    return ("--no-asyncio",) if b"--[no-]asyncio" in found.stdout + found.stderr else ()


def _widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Let zstd run up to 1 MiB ahead of the reader (Linux; the default pipe holds 64 kB).

    Fewer sleeps and wake-ups on both sides once the reader keeps up with zstd
    (measured on 2,000 pairs' S2 archive: zstd's kernel time 0.46 s instead of 0.54-0.62 s).
    """
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size: the default works
        pass


def _local_file(raw) -> Optional[int]:
    """The OS file descriptor under ``raw`` when it is a plain local file (a child process can read it itself)."""
    try:
        fd = raw.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zstd_command() -> Optional[str]:
    if os.environ.get("BENTXT_ZSTD_PROCESS", "1") == "0":
        return None
    return shutil.which("zstd")


def _decompressed(raw, bar=None):
    """zstd for the release, gzip for torchgeo's parts, nothing for a plain tar: chosen by the stream's magic bytes.

    Not by file name: ``datasets``' download cache stores a remote archive
    under a hash without its extension. ``bar`` counts the compressed bytes read.
    """
    command, fd = _zstd_command(), _local_file(raw)
    if command is not None and fd is not None and os.pread(fd, 4, 0) == _ZSTD_MAGIC:
        os.lseek(fd, 0, os.SEEK_SET)
        return io.BufferedReader(_ZstdProcess(command, fd=fd, bar=bar), 1 << 20)
    buffered = io.BufferedReader(_Counted(raw, bar) if bar is not None else raw, 1 << 16)
    magic = buffered.peek(4)[:4]
    if magic == _ZSTD_MAGIC:  # buffered: tar headers are read 512 bytes at a time
        if command is not None:
            return io.BufferedReader(_ZstdProcess(command, raw=buffered), 1 << 20)
        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_size=1 << 16, closefd=False)
        return io.BufferedReader(reader, 1 << 16)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    return buffered


#: sizes beyond this are corruption, not members: the release's largest member is 58 kB
#: (a GNU base-256 size field could otherwise claim up to 2**88 bytes)
MAX_MEMBER_BYTES = 1 << 40
#: GNU long names and pax headers are read into memory; real ones are a few hundred bytes
MAX_EXTENDED_HEADER_BYTES = 1 << 20
#: members nobody wants are read and dropped in pieces of this size, never whole
SKIP_CHUNK_BYTES = 1 << 20

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
#: typeflags of regular files: tarfile's REGULAR_TYPES without GNU sparse files (refused below)
_FILE_TYPES = (b"0", b"\0", b"7")
#: links, devices, fifos and directories: GNU tar and tarfile read no data for them, so a size is ambiguous
_NO_DATA_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")
#: headers that describe the next member rather than being one
_EXTENDED_TYPES = (b"L", b"K", b"x", b"X", b"g")
#: numeric header fields besides size and checksum; they are not used, but garbage in them means a bad header
_OTHER_NUMBERS = (("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("mtime", 136, 148),
                  ("devmajor", 329, 337), ("devminor", 337, 345))
_OCTAL = re.compile(rb" *([0-7]*) *")
#: mode, uid, gid, size, mtime and checksum as GNU tar and tarfile write them
_USUAL_NUMBERS = re.compile(rb"[0-7]{7}\0[0-7]{7}\0[0-7]{7}\0[0-7]{11}\0[0-7]{11}\0[0-7]{6}\0 ")
#: devmajor and devminor, as digits or left empty
_USUAL_DEVICES = re.compile(rb"(?:[0-7]{7}\0|\0{8}){2}")
_NONE_YET = "(none: the archive failed before its first member)"


class _TarError(BigEarthNetTxtError):
    """A tar header or member that cannot be read as it claims."""


class Oversized(str):
    """What :class:`_TarReader` yields for a wanted member bigger than the caller's bound: why it was not read.

    Yielded instead of raising, so that ``skip_invalid`` treats such a band
    file in an archive as it treats it in a folder (issue 20, item 4).
    """


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # stream readers may return short reads
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _number(field: bytes, what: str) -> int:
    """A numeric header field: octal digits, or GNU base-256 (big sizes, negative times).

    Stricter than ``tarfile`` (no signs, underscores or tabs), so whatever is
    accepted here has the value ``tarfile`` gives it.
    """
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    match = _OCTAL.fullmatch(field.split(b"\0", 1)[0])
    if match is None:
        raise _TarError(f"the {what} field of a tar header is not a number: not a tar archive, or corrupted")
    return int(match[1] or b"0", 8)


def _byte_sum(block: bytes, _adler32=zlib.adler32) -> int:
    """The sum of a 512-byte block's bytes, exactly, 5x faster than ``sum``.

    Adler-32's low half is 1 + the byte sum modulo 65,521; a 256-byte half sums
    to at most 65,280, so for each half it is the exact sum. Two headers per
    member and 7.7 M members make this ~40 s of the release's preparation.
    """
    return (_adler32(block[:256]) & 0xFFFF) + (_adler32(block[256:]) & 0xFFFF) - 2


def _check_header(header: bytes) -> int:
    """The member size a 512-byte header declares, after checking its checksum and every numeric field."""
    if _USUAL_NUMBERS.fullmatch(header, 100, 156) and _USUAL_DEVICES.fullmatch(header, 329, 345):
        # what GNU tar and tarfile write: ~4 us per member less than checking field by field
        checksum, size = int(header[148:154], 8), int(header[124:135], 8)
    else:
        checksum, size = _number(header[148:156], "checksum"), _number(header[124:136], "size")
        for what, start, end in _OTHER_NUMBERS:
            _number(header[start:end], what)
    if checksum != _byte_sum(header) - sum(header[148:156]) + 256:  # the checksum field counts as 8 spaces
        raise _TarError("tar header checksum mismatch (not a tar archive, or corrupted)")
    return _checked_size(size)


def _checked_size(size: int) -> int:
    if size < 0:
        raise _TarError(f"a tar header declares a negative size ({size})")
    if size > MAX_MEMBER_BYTES:
        raise _TarError(f"a tar header declares {size} bytes, more than any member could have ({MAX_MEMBER_BYTES})")
    return size


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[345]:  # a ustar prefix; in GNU headers these bytes are times that tarfile would take as a prefix
        if header[257:263] != b"ustar\0":
            raise _TarError("a non-POSIX tar header has data in its name prefix field")
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _gnu_long_name(data: bytes) -> str:
    name, nul, _ = data.partition(b"\0")
    if not nul:  # GNU tar stores the NUL; without it tarfile would read on into the padding
        raise _TarError("a GNU long name is not NUL-terminated")
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> Dict[bytes, bytes]:
    """The ``"<length> <key>=<value>\\n"`` records of a pax header; anything else is an error.

    The length counts the whole record, so every record moves forward by at
    least its own text: zero, negative or non-numeric lengths cannot loop.
    """
    records: Dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _TarError(f"a pax record at byte {pos} of its header has no valid length")
        end = pos + int(digits)
        if end <= space + 1 or end > len(data):
            raise _TarError(f"a pax record at byte {pos} of its header has length {int(digits)}, "
                            f"which does not fit its header of {len(data)} bytes")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not key or not equals or data[end - 1 : end] != b"\n":
            raise _TarError(f"a pax record at byte {pos} of its header is not <length> <key>=<value>\\n")
        records[key] = value
        pos = end
    return records


def _pax_size(value: bytes) -> int:
    if not value.isdigit():
        raise _TarError("a pax size record is not a number")
    return _checked_size(int(value))


def _refuse_sparse(records: Dict[bytes, bytes]) -> None:
    if any(key.startswith(b"GNU.sparse.") for key in records):
        raise _TarError("a GNU sparse file (pax GNU.sparse records): not supported")


class _TarReader:
    """Regular-file members of an uncompressed tar stream, with GNU long names and pax paths.

    ``tarfile`` spends ~60 us per member building TarInfo objects; the release
    has 7.7 M members of 1-58 kB, so this reads the 512-byte headers itself
    (what the release's GNU tar writes: ustar/GNU headers, ``L`` long names,
    pax ``x`` headers for good measure). Every header field is checked, and
    whatever this reader accepts it reads as ``tarfile`` does (a fuzz test
    holds it to that); where the two could disagree (two names for one
    member, a directory with data, sparse files) it refuses instead.

    Only members that ``wanted`` accepts are read into memory, after their
    size is checked against ``max_size``; everything else is skipped in
    ``SKIP_CHUNK_BYTES`` pieces, so memory does not depend on member sizes.
    ``offset`` is where the header being read starts in the uncompressed
    stream, for messages.
    """

    def __init__(
        self,
        stream,
        wanted: Optional[Callable[[str], bool]] = None,
        max_size: Optional[Callable[[str], int]] = None,
    ):
        self.stream, self.wanted, self.max_size = stream, wanted, max_size
        self._stream_read = stream.read
        self.offset = 0
        self.last_good = _NONE_YET
        self._position = 0
        self._checked_long_names: Dict[bytes, int] = {}  # GNU long-name headers already checked -> their sizes

    def _read(self, n: int) -> bytes:
        data = self._stream_read(n)
        if len(data) < n:  # stream readers may return short reads
            data += _read_exact(self.stream, n - len(data))
        self._position += len(data)
        if len(data) < n:
            raise _TarError(f"unexpected end of data: {len(data)} of {n} bytes after the tar header")
        return data

    def _skip(self, n: int) -> None:
        buffer = memoryview(bytearray(min(n, SKIP_CHUNK_BYTES)))
        while n:
            got = self.stream.readinto(buffer[: min(n, len(buffer))])
            if not got:
                raise _TarError(f"unexpected end of data: {n} bytes of a member are missing")
            self._position += got
            n -= got

    def members(self) -> Iterator[Tuple[str, Union[bytes, Oversized]]]:
        long_name: Optional[str] = None  # from an L header or a pax path, for the next member
        pax_size: Optional[int] = None
        pending = False  # an extended header is waiting for its member
        while True:
            self.offset = self._position
            header = self._stream_read(_BLOCK)
            if len(header) < _BLOCK and header:
                header += _read_exact(self.stream, _BLOCK - len(header))
            self._position += len(header)
            if not header:  # tar ends with zero blocks: without them the data stopped early (a cut download
                # or zstd frame, which zstandard's stream reader does not report), even between two members
                raise _TarError("the archive ends without tar's end-of-archive blocks: it is truncated")
            if header == _ZERO_BLOCK:
                if pending:
                    raise _TarError("the archive ends after an extended header, before the member it describes")
                return  # the end-of-archive blocks
            if len(header) < _BLOCK:
                raise _TarError("unexpected end of data inside a tar header")
            kind = header[156:157]
            size = self._checked_long_names.get(header) if kind == b"L" else None
            if size is None:
                size = _check_header(header)
                if kind == b"L":  # the release has one long-name header per name length: checked once
                    if len(self._checked_long_names) >= 256:
                        self._checked_long_names.clear()
                    self._checked_long_names[header] = size
            padding = -size % _BLOCK
            if kind in _EXTENDED_TYPES:
                if size > MAX_EXTENDED_HEADER_BYTES:
                    raise _TarError(f"an extended tar header of {size} bytes (at most {MAX_EXTENDED_HEADER_BYTES})")
                data, pending = self._read(size), True
                if self._read(padding).strip(b"\0"):  # tarfile would parse pax records in the padding
                    raise _TarError("an extended tar header has data in its padding")
                if kind == b"L":
                    if long_name is not None:
                        raise _TarError("two long names for one member")
                    long_name = _gnu_long_name(data)
                elif kind in (b"x", b"X"):
                    records = _pax_records(data)
                    _refuse_sparse(records)
                    if b"path" in records:
                        if long_name is not None:
                            raise _TarError("two long names for one member")
                        long_name = records[b"path"].decode("utf-8", "surrogateescape")
                    if b"size" in records:
                        if pax_size is not None:
                            raise _TarError("two pax sizes for one member")
                        pax_size = _pax_size(records[b"size"])
                elif kind == b"g":
                    records = _pax_records(data)
                    _refuse_sparse(records)
                    if b"path" in records or b"size" in records:
                        raise _TarError("a global pax header sets a path or size for every member")
                continue
            if kind == b"S":
                raise _TarError("a GNU sparse file: not supported")
            if pax_size is not None:
                size, padding = pax_size, -pax_size % _BLOCK
            name = long_name if long_name is not None else _header_name(header)
            long_name, pax_size, pending = None, None, False
            old_style_directory = kind == b"\0" and header[:100].split(b"\0", 1)[0].endswith(b"/")
            if kind in _NO_DATA_TYPES or old_style_directory:
                if size:
                    raise _TarError(f"the link, device or directory {name} declares {size} bytes of data")
                continue
            if kind not in _FILE_TYPES:
                self._skip(size + padding)
                continue
            if not name or name.endswith("/"):
                raise _TarError(f"a file member named {name!r}")
            if self.wanted is not None and not self.wanted(name):
                self._skip(size + padding)
                continue
            limit = self.max_size(name) if self.max_size is not None else None
            if limit is not None and size > limit:  # never read: the caller decides (skip_invalid, or an error)
                self._skip(size + padding)
                yield name, Oversized(
                    f"member {name} has {size} bytes, more than a file of its kind can need ({limit} bytes); "
                    f"refused unread (tar header at byte {self.offset})"
                )
                self.last_good = name
                continue
            data = self._read(size)
            if padding:
                self._read(padding)
            yield name, data
            self.last_good = name


def _read_tar(
    stream,
    name: str,
    wanted: Optional[Callable[[str], bool]] = None,
    max_size: Optional[Callable[[str], int]] = None,
) -> Iterator[Tuple[str, Union[bytes, Oversized]]]:
    """``_TarReader`` with its errors turned into ArchiveErrors that name the archive, member and offset."""
    reader = _TarReader(stream, wanted, max_size)
    try:
        yield from reader.members()
    except ResumeError as err:
        raise ResumeError(f"{err}; the last member read completely is {reader.last_good}") from err
    except (_TarError, zstandard.ZstdError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ArchiveError(
            f"Archive {name} is damaged or truncated after member {reader.last_good}: {err} "
            f"(tar header at byte {reader.offset} of the uncompressed tar)"
        ) from err


def iter_tar(
    paths: Sequence[str],
    download_config: Optional[DownloadConfig] = None,
    progress: bool = False,
    *,
    wanted: Optional[Callable[[str], bool]] = None,
    max_size: Optional[Callable[[str], int]] = None,
    checksum=None,
) -> Iterator[Tuple[str, Union[bytes, Oversized]]]:
    """Yield ``(member name, bytes)`` for every regular file of one archive, in archive order.

    ``paths`` are the parts of one archive (one path for the release's
    ``.tar.zst``). Truncation or corruption anywhere (inside a compressed
    frame, a tar header or a member's data) raises ArchiveError naming the
    archive, the last member read completely and the offset of the failing
    header, so a user knows how far a download got.

    With ``wanted``, only the files it accepts are read into memory (the rest
    are skipped unread), and ``max_size(name)`` bounds each one's size: a
    larger member is skipped unread and yielded as an :class:`Oversized` reason.

    ``checksum`` (a ``sources.RecordedChecksum``): the raw bytes are hashed as
    they stream by (:class:`_Hashing`, all of them, to the end of the file);
    a size the server announces is checked before the first member
    (``checksum.check_size``), the digest and size after the last one
    (``checksum.check``, which raises on a mismatch): a URL is read once,
    never downloaded first to be hashed.
    """
    name = display_name(paths[0]) + (f" (+{len(paths) - 1} parts)" if len(paths) > 1 else "")
    raw = open_archive(paths[0], download_config) if len(paths) == 1 else _PartsStream(paths, download_config)
    hashing = raw = _Hashing(raw, checksum) if checksum is not None else raw
    bar = _progress_bar(paths, download_config, name) if progress else None
    with raw:
        try:
            stream = _decompressed(raw, bar)  # reads the first bytes
        except ResumeError as err:
            raise ResumeError(f"{err}; the last member read completely is {_NONE_YET}") from err
        with stream:
            yield from _read_tar(stream, name, wanted, max_size)
            if checksum is not None:  # the decompressor to its end (zstd then has read all its input)
                while stream.read(1 << 20):
                    pass
        if checksum is not None:
            assert isinstance(hashing, _Hashing)
            hashing.finish()


class _Hashing(io.RawIOBase):
    """An archive's raw bytes, hashed as they are read: a checksum without a second pass over tens of GB.

    hashlib releases the GIL on large buffers, so hashing in the thread that
    feeds zstd costs the decoding process little (~1 s per GB for md5 or sha256 on one core).
    """

    def __init__(self, raw, checksum):
        super().__init__()
        self._raw, self._checksum = raw, checksum
        self._digest = hashlib.new(checksum.algorithm)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        if n:
            if not self.count:  # the first bytes: the server has said how large the file is
                size = getattr(self._raw, "size", None)
                self._checksum.check_size(size if isinstance(size, int) else None)
            self._digest.update(memoryview(buffer)[:n])
            self.count += n
        return n or 0

    def finish(self) -> None:
        """Hash what the decompressor left unread (trailing bytes), then compare digest and size."""
        for chunk in iter(lambda: self.read(1 << 20), b""):
            pass
        self._checksum.check(self._digest.hexdigest(), self.count)

    def close(self) -> None:
        self._raw.close()
        super().close()


def iter_tar_zst(
    urlpath: str, download_config: Optional[DownloadConfig] = None
) -> Iterator[Tuple[str, Union[bytes, Oversized]]]:
    """One ``.tar.zst`` archive (the release's format)."""
    return iter_tar([urlpath], download_config)


@lru_cache(maxsize=16)  # asked twice per member (wanted, then max_size and grouping): parse it once
def _sensor_member(member: str, sensor: str) -> Optional[Tuple[str, str, int]]:
    """``(patch, band, largest file size)`` when the member is a band file of ``sensor``, else None."""
    parsed = parse_member(member)
    if parsed is None or parsed[0] != sensor or parsed[2] not in SENSOR_BANDS[sensor]:
        return None
    return parsed[1], parsed[2], _MAX_BAND_FILE_BYTES[parsed[2]]


def _wanted_member(member: str, sensor: str) -> Tuple[str, str, int]:
    """:func:`_sensor_member` of a member that ``wanted`` accepted: never None."""
    parsed = _sensor_member(member, sensor)
    assert parsed is not None
    return parsed


_MAX_BAND_FILE_BYTES = {band: max_band_file_bytes(band) for bands in SENSOR_BANDS.values() for band in bands}


def iter_archive_patches(
    paths: Union[str, Sequence[str]], sensor: str, download_config: Optional[DownloadConfig] = None, progress: bool = True,
    checksum=None,
) -> Iterator[Tuple[str, BandData]]:
    """Group consecutive band files of one patch: yield ``(patch name, {band: tiff bytes})``.

    The release lists a patch's files next to each other (sorted paths), so
    grouping consecutive members needs memory for one patch only. Members of
    the other sensor, reference maps and stray files are skipped unread, and a
    band file larger than its band could need is refused unread, so memory
    does not depend on what else the archive holds: its band is a
    ``readers.BadBand`` (decoding it is a RasterError, skippable with
    ``skip_invalid`` like a bad file in a folder), and so is a band whose
    member occurs twice (which copy is meant is ambiguous). A patch whose
    files are split apart (an unsorted archive) is an error rather than a
    silently duplicated patch. ``checksum``: see :func:`iter_tar`.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    current: Optional[str] = None
    bands: BandData = {}
    finished = set()
    members = iter_tar(
        paths,
        download_config,
        progress=progress,
        wanted=lambda member: _sensor_member(member, sensor) is not None,
        max_size=lambda member: _wanted_member(member, sensor)[2],
        checksum=checksum,
    )
    data: Union[bytes, Oversized, BadBand]
    for name, data in members:
        patch, band, _ = _wanted_member(name, sensor)
        if patch != current:
            if current is not None:
                finished.add(current)
                yield current, bands
            if patch in finished:
                raise ArchiveError(
                    f"Archive {display_name(paths[0])}: the files of patch {patch} are not consecutive "
                    f"(member {name}); the archive is not sorted like the release"
                )
            current, bands = patch, {}
        if band in bands:
            data = BadBand(f"member {name} occurs more than once in archive {display_name(paths[0])}; "
                           f"which copy is meant is ambiguous")
        elif isinstance(data, Oversized):
            data = BadBand(str(data))
        bands[band] = data
    if current is not None:
        yield current, bands
