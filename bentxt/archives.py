"""Sequential reading of the release's monolithic ``.tar.zst`` archives.

The archives are one zstd stream each (no seekable frames), so the only way in
is front to back: zstd stream reader -> tar headers read in order (torchgeo's
mirror: gzip over the concatenated ``.tar.gzaa``/``.tar.gzab`` parts).
That works the same for a local path, ``http(s)://`` and ``hf://`` because the
raw bytes come from fsspec and nothing ever seeks.
``datasets``' own ``iter_archive`` cannot read ``.tar.zst`` (notes, section 2).

Over ``http(s)://`` the raw bytes come from ``ResumableHTTPStream``: one
archive is tens of GB read through a single GET, and a dropped connection
(or aiohttp's 5-minute total timeout) must not restart the download from byte 0.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import os
import time
import zlib
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import fsspec
import fsspec.asyn
import zstandard
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import _prepare_single_hop_path_and_storage_options, xopen
from fsspec.exceptions import FSTimeoutError

from .layout import display_name, parse_member

logger = logging.getLogger("bigearthnet_txt")

#: consecutive failed reads (without a byte of progress) before a stream gives up
HTTP_MAX_RETRIES = 5
#: seconds to wait before retry n are ``HTTP_RETRY_BACKOFF * n``
HTTP_RETRY_BACKOFF = float(os.environ.get("BENTXT_HTTP_RETRY_BACKOFF", "0.5"))


class ArchiveError(ValueError):
    """A damaged or unexpected archive; the message names the archive and the last good member."""


class ResumeError(ArchiveError):
    """An HTTP archive stream broke and could not be resumed (the message names the byte offset)."""


class _Truncated(ConnectionError):
    """The body ended before its Content-Length: the connection was closed under us."""



def _transport_errors() -> Tuple[type, ...]:
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
    ):
        super().__init__()
        self.url = url
        options = dict(storage_options or {})
        # Our headers are merged in at every open rather than left in the filesystem's
        # options: fsspec would otherwise pass `headers` twice to its HEAD request.
        # Identity encoding keeps byte offsets (and Content-Length) those of the file.
        self._headers = {**options.pop("headers", {}), "Accept-Encoding": "identity"}
        self._fs = fsspec.filesystem(url.split("://")[0], **options)
        self.max_retries = HTTP_MAX_RETRIES if max_retries is None else max_retries
        self.backoff = HTTP_RETRY_BACKOFF if backoff is None else backoff
        self.pos = 0
        self.size: Optional[int] = None  # the file's length, once a response told it
        self._file = None

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        headers = dict(self._headers)
        kwargs = {}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
            kwargs["size"] = self.size or self.pos  # any size skips fsspec's HEAD: the GET is checked below
        self._file = self._fs.open(self.url, "rb", block_size=0, headers=headers, **kwargs)
        response = self._file.r
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
        content = getattr(getattr(self._file, "r", None), "content", None)
        if content is None or content.exception() is None:  # not a broken body (or not aiohttp)
            return b""

        async def take() -> bytes:  # on the event loop thread, which owns the buffer
            return content._read_nowait(n)

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
        url, options = _prepare_single_hop_path_and_storage_options(urlpath, download_config)
        protocol = url.split("://")[0]
        if protocol in ("http", "https"):  # Hub URLs have become hf:// paths
            return ResumableHTTPStream(url, options.get(protocol))
    return xopen(urlpath, "rb", download_config=download_config, block_size=0)


class _PartsStream(io.RawIOBase):
    """Several files read as one stream (torchgeo's ``.tar.gzaa``, ``.tar.gzab``): no joined copy on disk."""

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


def _decompressed(raw):
    """zstd for the release, gzip for torchgeo's parts, nothing for a plain tar: chosen by the stream's magic bytes.

    Not by file name: ``datasets``' download cache stores a remote archive
    under a hash without its extension.
    """
    buffered = io.BufferedReader(raw, 1 << 16)
    magic = buffered.peek(4)[:4]
    if magic == b"\x28\xb5\x2f\xfd":  # buffered: tar headers are read 512 bytes at a time
        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_size=1 << 16, closefd=False)
        return io.BufferedReader(reader, 1 << 16)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    return buffered


class _TarError(Exception):
    pass


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # stream readers may return short reads
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _number(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise _TarError(f"not a tar header (numeric field {field!r}): not a tar archive, or corrupted") from None


def _members(stream) -> Iterator[Tuple[str, bytes]]:
    """Regular-file members of a tar stream, with GNU long names and pax paths.

    ``tarfile`` spends ~60 us per member building TarInfo objects; the release
    has 7.7 M members of 1-58 kB, so this reads the 512-byte headers itself
    (what the release's GNU tar writes: ustar/GNU headers, ``L`` long names,
    pax ``x`` headers for good measure) and checks every header checksum.
    """
    long_name: Optional[str] = None
    while True:
        header = _read_exact(stream, 512)
        if not header or header == bytes(512):
            return  # end-of-archive blocks (or a stream that ends cleanly between members)
        if len(header) < 512:
            raise _TarError("unexpected end of data inside a tar header")
        stored = _number(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise _TarError("tar header checksum mismatch (not a tar archive, or corrupted)")
        size, kind = _number(header[124:136]), header[156:157]
        data = _read_exact(stream, size)
        if len(data) < size:
            raise _TarError(f"unexpected end of data: member ends after {len(data)} of {size} bytes")
        padding = -size % 512
        if padding and len(_read_exact(stream, padding)) < padding:
            raise _TarError("unexpected end of data in member padding")
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind == b"x":
            long_name = _pax_path(data) or long_name
            continue
        if kind == b"g":
            continue
        name = long_name or _header_name(header)
        long_name = None
        if kind in (b"0", b"\0", b"7"):
            yield name, data


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a separate prefix field (GNU uses those bytes otherwise)
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> Optional[str]:
    while data:
        length, _, rest = data.partition(b" ")
        record, data = rest[: int(length) - len(length) - 1], data[int(length) :]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def iter_tar(
    paths: Sequence[str], download_config: Optional[DownloadConfig] = None, progress: bool = False
) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for every regular file of one archive, in archive order.

    ``paths`` are the parts of one archive (one path for the release's
    ``.tar.zst``). Truncation or corruption anywhere (inside a compressed
    frame, a tar header or a member's data) raises ArchiveError naming the
    archive and the last member read completely, so a user knows how far a
    download got.
    """
    name = display_name(paths[0]) + (f" (+{len(paths) - 1} parts)" if len(paths) > 1 else "")
    last_good = "(none: the archive failed before its first member)"
    try:
        raw = open_archive(paths[0], download_config) if len(paths) == 1 else _PartsStream(paths, download_config)
        if progress:
            raw = _Counted(raw, _progress_bar(paths, download_config, name))
        with raw, _decompressed(raw) as stream:
            for member, data in _members(stream):
                yield member, data
                last_good = member
    except ResumeError as err:
        raise ResumeError(f"{err}; the last member read completely is {last_good}") from err
    except (_TarError, zstandard.ZstdError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ArchiveError(f"Archive {name} is damaged or truncated after member {last_good}: {err}") from err


def iter_tar_zst(urlpath: str, download_config: Optional[DownloadConfig] = None) -> Iterator[Tuple[str, bytes]]:
    """One ``.tar.zst`` archive (the release's format)."""
    return iter_tar([urlpath], download_config)


def iter_archive_patches(
    paths: Union[str, Sequence[str]], sensor: str, download_config: Optional[DownloadConfig] = None, progress: bool = True
) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Group consecutive band files of one patch: yield ``(patch name, {band: tiff bytes})``.

    The release lists a patch's files next to each other (sorted paths), so
    grouping consecutive members needs memory for one patch only. Members of
    the other sensor, reference maps and stray files are skipped; a patch
    whose files are split apart (an unsorted archive) is an error rather than
    a silently duplicated patch.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    current: Optional[str] = None
    bands: Dict[str, bytes] = {}
    finished = set()
    for name, data in iter_tar(paths, download_config, progress=progress):
        parsed = parse_member(name)
        if parsed is None or parsed[0] != sensor:
            continue
        _, patch, band = parsed
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
        bands[band] = data
    if current is not None:
        yield current, bands
