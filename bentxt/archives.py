"""Sequential reading of the release's monolithic ``.tar.zst`` archives.

The archives are one zstd stream each (no seekable frames), so the only way in
is front to back: zstd stream reader -> ``tarfile`` in stream mode ``r|``.
That works the same for a local path, ``http(s)://`` and ``hf://`` because the
raw bytes come from ``datasets``' ``xopen`` (fsspec) and nothing ever seeks.
``datasets``' own ``iter_archive`` cannot read ``.tar.zst`` (notes, section 2).
"""

from __future__ import annotations

import tarfile
from typing import Dict, Iterator, Optional, Tuple

import zstandard
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import xopen

from .layout import parse_member


class ArchiveError(ValueError):
    """A damaged or unexpected archive; the message names the archive and the last good member."""


def _display(urlpath: str) -> str:
    return urlpath.split("::")[-1]


def iter_tar_zst(urlpath: str, download_config: Optional[DownloadConfig] = None) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for every regular file, in archive order.

    Truncation or corruption anywhere (inside a zstd frame, a tar header or a
    member's data) raises ArchiveError naming the archive and the last member
    that was read completely, so a user knows how far a download got.
    """
    last_good = "(none: the archive failed before its first member)"
    try:
        with xopen(urlpath, "rb", download_config=download_config, block_size=0) as raw:
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
