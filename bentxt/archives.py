"""Sequential reading of the release's monolithic ``.tar.zst`` archives.

The archives are one zstd stream each (no seekable frames), so the only way in
is front to back: zstd stream reader -> ``tarfile`` in stream mode ``r|``.
That works the same for a local path, ``http(s)://`` and ``hf://`` because the
raw bytes come from fsspec and nothing ever seeks.
``datasets``' own ``iter_archive`` cannot read ``.tar.zst`` (notes, section 2).

Over ``http(s)://`` the raw bytes come from ``ResumableHTTPStream``: one
archive is tens of GB read through a single GET, and a dropped connection
(or aiohttp's 5-minute total timeout) must not restart the download from byte 0.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import tarfile
import time
from typing import Dict, Iterator, Optional, Tuple

import fsspec
import fsspec.asyn
import zstandard
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import _prepare_single_hop_path_and_storage_options, xopen
from fsspec.exceptions import FSTimeoutError

from .layout import parse_member

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


def _display(urlpath: str) -> str:
    return urlpath.split("::")[-1]


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
                    f"Archive {_display(self.url)}: the connection broke at byte {self.pos} and the server does "
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
                    raise ResumeError(f"Archive {_display(self.url)}: resuming at {where} got HTTP {status}") from err
                if failures > self.max_retries:
                    raise ResumeError(
                        f"Archive {_display(self.url)}: the download stopped at {where}; gave up after "
                        f"{self.max_retries} retries ({failures} attempts in a row without progress; "
                        f"last error: {type(err).__name__}: {err})"
                    ) from err
                delay = self.backoff * failures
                logger.info(
                    "Archive %s: connection lost at %s (%s: %s); resuming with Range: bytes=%d- in %.1fs [%d/%d]",
                    _display(self.url), where, type(err).__name__, err, self.pos, delay, failures, self.max_retries,
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


def iter_tar_zst(urlpath: str, download_config: Optional[DownloadConfig] = None) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for every regular file, in archive order.

    Truncation or corruption anywhere (inside a zstd frame, a tar header or a
    member's data) raises ArchiveError naming the archive and the last member
    that was read completely, so a user knows how far a download got.
    """
    last_good = "(none: the archive failed before its first member)"
    try:
        with open_archive(urlpath, download_config) as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20, closefd=False)
            with reader, tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise tarfile.ReadError(f"member {info.name} ends after {len(data)} of {info.size} bytes")
                    yield info.name, data
                    last_good = info.name
    except ResumeError as err:
        raise ResumeError(f"{err}; the last member read completely is {last_good}") from err
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as err:
        raise ArchiveError(
            f"Archive {_display(urlpath)} is damaged or truncated after member {last_good}: {err}"
        ) from err


def iter_archive_patches(
    urlpath: str, sensor: str, download_config: Optional[DownloadConfig] = None
) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Group consecutive band files of one patch: yield ``(patch name, {band: tiff bytes})``.

    The release lists a patch's files next to each other (sorted paths), so
    grouping consecutive members needs memory for one patch only. Members of
    the other sensor, reference maps and stray files are skipped; a patch
    whose files are split apart (an unsorted archive) is an error rather than
    a silently duplicated patch.
    """
    current: Optional[str] = None
    bands: Dict[str, bytes] = {}
    finished = set()
    for name, data in iter_tar_zst(urlpath, download_config):
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
                    f"Archive {_display(urlpath)}: the files of patch {patch} are not consecutive "
                    f"(member {name}); the archive is not sorted like the release"
                )
            current, bands = patch, {}
        bands[band] = data
    if current is not None:
        yield current, bands
