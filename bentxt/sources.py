"""Where a config's files come from: one class per kind of image source, and the annotation parquet.

The kinds (each a small picklable description; readers open where they are used,
once per process, because LMDB environments and open files must not cross a fork):

- :class:`ArchiveSource`: the release's ``.tar.zst`` (or torchgeo's ``.tar.gzaa``/``.tar.gzab``
  parts), local or remote; read front to back only;
- :class:`FolderSource`: the extracted ``BigEarthNet-S1/`` / ``BigEarthNet-S2/`` trees, by path;
- :class:`LmdbSource`: a rico-hdl conversion (``data.mdb``), by key;
- :class:`ExportSource`: a Parquet export of this builder (``bentxt/export/writer.py``), read in order.

A new kind is one class here (``detect``, ``find_in``, ``patches`` and, if it
has random access, ``open_reader``) plus its fixture; nothing else dispatches
on kinds.

Files are chosen in this order: ``image_source=`` (a path for both sensors or
``{"s1": path, "s2": path}``), ``data_files={"annotations": ..., "s1": ...,
"s2": ...}``, ``data_dir=`` (release names, extracted trees, an LMDB or
torchgeo parts, found by a few ``exists`` calls: a folder is never walked),
then the release URLs recorded in ``dataset_infos/sources.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import fsspec
from datasets import SplitDict, SplitInfo
from datasets.utils.file_utils import xopen
from datasets.utils.info_utils import VerificationMode

from bentxt.imagery import archives
from bentxt.imagery import readers
from bentxt.errors import BigEarthNetTxtError
from bentxt.imagery.layout import MAPS_DIR, ROOT_DIR, display_name, remember_origin

logger = logging.getLogger("bigearthnet_txt")

SOURCE_KEYS = ("annotations", "s1", "s2")


class SourceError(BigEarthNetTxtError, ValueError):
    """A source file is missing, ambiguous or not the release's file."""


class ChecksumError(SourceError):
    """A file's size or checksum differs from the one recorded in dataset_infos/."""


def infos_dir():
    """``dataset_infos/`` (installed as the package ``bentxt.dataset_infos``)."""
    return resources.files("bentxt.dataset_infos")


@lru_cache(maxsize=None)
def release() -> Dict[str, dict]:
    """The recorded release files: name, URL, size, checksums (dataset_infos/sources.json)."""
    data = json.loads(infos_dir().joinpath("sources.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def is_url(path: str) -> bool:
    return "://" in path


def _fs(path: str):
    return fsspec.core.url_to_fs(path)


# ----------------------------------------------------------------------------- image sources


@dataclass(frozen=True)
class ImageSource:
    """Where one sensor's bands come from. Subclasses say how to find, fetch and read one kind."""

    paths: Tuple[str, ...]
    kind: ClassVar[str] = "?"
    #: True: read front to back only (one pass, in the source's own order); False: random access by patch name
    sequential: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """For messages: the file or folder name(s), with the kind."""
        names = ", ".join(display_name(p).rstrip("/").rsplit("/", 1)[-1] for p in self.paths)
        return f"{self.kind} {names}"

    @classmethod
    def detect(cls, path: str, sensor: str) -> Optional["ImageSource"]:
        """This kind, if a user-given ``path`` holds it."""
        return None

    @classmethod
    def find_in(cls, data_dir: str, sensor: str) -> Optional["ImageSource"]:
        """This kind, if ``data_dir`` holds it under the usual names (a few ``exists`` calls, never a walk)."""
        return None

    def download(self, dl_manager) -> "ImageSource":
        """What preparing reads: remote files fetched into the datasets download cache where the kind needs it."""
        return self

    def verify(self, key: str, verification_mode) -> None:
        logger.info("%s is read from %s: checksums are recorded for the release archives only", key, self.name)

    def fingerprint(self) -> List[object]:
        """What identifies the content cheaply (sizes and mtimes of the top files): part of the cache key."""
        return [_stat(p) for p in self.paths]

    def patches(self, sensor: str, bands: Sequence[str], dlc=None) -> Iterator[Tuple[str, readers.BandData]]:
        """Every patch of the sensor, in the source's own order: ``(name, {band: data})`` (sequential kinds only)."""
        raise TypeError(f"{self.name} is read by patch name (open_reader), never walked")

    def open_reader(self, bands: Dict[str, Tuple[str, ...]]):
        """A reader with ``read(sensor, name)`` / ``has`` / ``close`` (random-access kinds only)."""
        raise TypeError(f"{self.name} is read front to back, not by patch")


@dataclass(frozen=True)
class RecordedChecksum:
    """A file's recorded size and checksum (dataset_infos/sources.json), compared with its bytes as they are read.

    An archive prepared from its URL is read once, as it downloads
    (``archives.iter_tar(..., checksum=)``): its bytes are hashed on the way,
    the size the server announces is compared before the first member, the
    digest after the last. A mismatch raises :class:`ChecksumError` inside the
    imagery pass, so preparing fails and ``datasets`` removes the unfinished
    cache folder: nothing a later run could take for complete is left.
    """

    path: str
    algorithm: str
    digest: Optional[str]
    size: Optional[int]
    file_name: str

    @classmethod
    def of(cls, path: str, info: dict) -> "RecordedChecksum":
        algorithm = "sha256" if info.get("sha256") else "md5"
        return cls(path, algorithm, info.get(algorithm), info.get("num_bytes"), info["file_name"])

    def check_size(self, size: Optional[int]) -> None:
        if size is not None and self.size is not None and size != self.size:
            raise ChecksumError(
                f"{display_name(self.path)}: size {size} bytes, expected {self.size} bytes for the release file "
                f"{self.file_name} (dataset_infos/sources.json)"
            )

    def check(self, digest: str, size: int) -> None:
        self.check_size(size)
        if self.digest and digest != self.digest:
            raise ChecksumError(
                f"{display_name(self.path)}: {self.algorithm} {digest}, expected {self.digest} for the release file "
                f"{self.file_name} (dataset_infos/sources.json)"
            )


@dataclass(frozen=True)
class ArchiveSource(ImageSource):
    """``.tar.zst`` archives (or torchgeo's parts), local paths or URLs.

    ``checksums``: archives whose bytes are checked as they are read
    (:class:`RecordedChecksum`), set by :meth:`download` for URLs read in place.
    """

    checksums: Tuple[RecordedChecksum, ...] = ()
    kind: ClassVar[str] = "archive"
    sequential: ClassVar[bool] = True

    @classmethod
    def detect(cls, path: str, sensor: str) -> ArchiveSource:
        return cls((path,))

    @classmethod
    def find_in(cls, data_dir: str, sensor: str) -> Optional[ImageSource]:
        fs, inner = _fs(data_dir)
        name = release()[sensor]["file_name"]
        if fs.exists(f"{inner}/{name}"):
            return cls((_join(data_dir, name),))
        parts = [f"{ROOT_DIR[sensor]}.tar.gz{suffix}" for suffix in ("aa", "ab", "ac", "ad")]
        found = [p for p in parts if fs.exists(f"{inner}/{p}")]
        return cls(tuple(_join(data_dir, p) for p in found)) if found else None

    @property
    def archives(self) -> Tuple[Tuple[str, ...], ...]:
        """The archives to read, each as its parts: split parts (``x.tar.gzaa``, ``x.tar.gzab``) form one archive."""
        groups: Dict[str, list] = {}
        for path in self.paths:
            stem = path[:-2] if re.search(r"\.tar\.gz[a-z]{2}$", path) else path
            groups.setdefault(stem, []).append(path)
        return tuple(tuple(sorted(parts)) for parts in groups.values())

    def download(self, dl_manager, key: str = "", keep_archives: bool = False, verification_mode=None) -> ImageSource:
        """URLs are read in place, once, as they download (no copy); ``keep_archives=True`` copies them first.

        A URL read in place gets its recorded checksum checked on the fly when
        it is the release's recorded URL (unless ``verification_mode`` is
        ``no_checks``) or with ``verification_mode="all_checks"``, as a copy would be.
        """
        remote = [p for p in self.paths if is_url(p)]
        if keep_archives or not remote:
            local = tuple(dl_manager.download(list(self.paths)))
            for path, url in zip(local, self.paths):
                remember_origin(path, url)
            return ArchiveSource(local)
        mode = getattr(verification_mode, "value", verification_mode)
        info = release().get(key)
        checksums: Tuple[RecordedChecksum, ...] = ()
        if info is not None and len(self.paths) == 1 and mode != "no_checks" and (
            self.paths[0] == info["url"] or mode == "all_checks"
        ):
            checksums = (RecordedChecksum.of(self.paths[0], info),)
        size = sum(s for s in (_size(p) for p in remote) if s)
        logger.info(
            "%s: %s read from its URL as it downloads (%.1f GB), straight into the cache; %s; no copy is kept "
            "(keep_archives=True keeps one in the download folder)",
            key or self.name, ", ".join(display_name(p) for p in remote), size / 1e9,
            f"its {checksums[0].algorithm} is checked on the fly" if checksums else "no recorded checksum is checked",
        )
        return ArchiveSource(self.paths, checksums)

    def verify(self, key: str, verification_mode) -> None:
        if self.checksums:
            logger.info("%s: %s is checked as it is read", key, self.checksums[0].algorithm)
            return
        if len(self.paths) != 1:
            logger.info("%s comes in %d parts; checksums are recorded for the single release file only", key, len(self.paths))
            return
        verify_file(self.paths[0], release()[key])

    def fingerprint(self) -> List[object]:
        return [_stat(p) if not is_url(p) else [p, _recorded_checksum(p)] for p in self.paths]

    def patches(self, sensor: str, bands: Sequence[str], dlc=None):
        checked = {c.path: c for c in self.checksums}
        for parts in self.archives:
            checksum = checked.get(parts[0]) if len(parts) == 1 else None
            yield from archives.iter_archive_patches(parts, sensor, dlc, checksum=checksum)


@dataclass(frozen=True)
class FolderSource(ImageSource):
    kind: ClassVar[str] = "folder"
    sequential: ClassVar[bool] = False

    @classmethod
    def detect(cls, path: str, sensor: str) -> Optional[ImageSource]:
        fs, inner = _fs(path)
        if fs.isdir(f"{inner.rstrip('/')}/{ROOT_DIR[sensor]}"):
            return cls((path.rstrip("/"),))
        if inner.rstrip("/").endswith(ROOT_DIR[sensor]) and fs.isdir(inner):
            return cls((path.rstrip("/").rsplit("/", 1)[0] or "/",))
        return None

    @classmethod
    def find_in(cls, data_dir: str, sensor: str) -> Optional[ImageSource]:
        return cls.detect(data_dir, sensor)

    def fingerprint(self) -> List[object]:
        return [_stat(self.paths[0]), _stat(f"{self.paths[0].rstrip('/')}/{ROOT_DIR['s1']}"),
                _stat(f"{self.paths[0].rstrip('/')}/{ROOT_DIR['s2']}")]

    def open_reader(self, bands):
        return readers.FolderReader(self.paths[0], bands)


@dataclass(frozen=True)
class LmdbSource(ImageSource):
    kind: ClassVar[str] = "LMDB"
    sequential: ClassVar[bool] = False

    @classmethod
    def detect(cls, path: str, sensor: str) -> Optional[ImageSource]:
        fs, inner = _fs(path)
        return cls((path.rstrip("/"),)) if fs.exists(f"{inner.rstrip('/')}/data.mdb") else None

    @classmethod
    def find_in(cls, data_dir: str, sensor: str) -> Optional[ImageSource]:
        return cls.detect(data_dir, sensor) or cls.detect(_join(data_dir, "Encoded-BigEarthNet"), sensor)

    def fingerprint(self) -> List[object]:
        return [_stat(f"{self.paths[0]}/data.mdb")]

    def open_reader(self, bands):
        return readers.LmdbReader(self.paths[0])


@dataclass(frozen=True)
class ExportSource(ImageSource):
    kind: ClassVar[str] = "export"
    sequential: ClassVar[bool] = True

    @classmethod
    def detect(cls, path: str, sensor: str) -> Optional[ImageSource]:
        fs, inner = _fs(path)
        root = inner.rstrip("/")
        return cls((path,)) if fs.exists(f"{root}/README.md") and fs.isdir(f"{root}/data") else None

    def fingerprint(self) -> List[object]:
        return [_stat(f"{self.paths[0].rstrip('/')}/README.md")]

    def patches(self, sensor, bands, dlc=None):
        return readers.iter_export_patches(self.paths[0], sensor, dlc)


#: detection order for a user-given path (an archive is what is left: any file)
KINDS: Tuple[Type[ImageSource], ...] = (ExportSource, LmdbSource, FolderSource)
#: search order inside ``data_dir``
DATA_DIR_KINDS: Tuple[Type[ImageSource], ...] = (ArchiveSource, FolderSource, LmdbSource)


def detect(path: str, sensor: str) -> ImageSource:
    """What a user-given path holds: a local path or a URL (``hf://datasets/org/name`` for a Hub export)."""
    if not is_url(path) and not os.path.exists(path):  # never guessed to be a Hub repo: only URLs reach the network
        hint = f"; for the Hub dataset {path!r} write hf://datasets/{path}" if re.fullmatch(r"[\w.-]+/[\w.-]+", path) else ""
        raise SourceError(f"image_source {path!r} does not exist (a local path, or a URL such as hf://datasets/org/name){hint}")
    if is_archive_url(path):
        return ArchiveSource.detect(path, sensor)
    fs, inner = _fs(path)
    if fs.isdir(inner):
        for kind in KINDS:
            found = kind.detect(path, sensor)
            if found is not None:
                return found
        raise SourceError(
            f"{path} is neither an extracted {ROOT_DIR[sensor]}/ tree (or its parent), an LMDB folder (data.mdb) "
            f"nor an export (README.md + data/); for archives name the file ({release()[sensor]['file_name']}), "
            f"or pass the folder as data_dir"
        )
    return ArchiveSource.detect(path, sensor)


_ARCHIVE_NAME = re.compile(r"\.(tar|tar\.zst|tar\.gz|tgz|tar\.gz[a-z]{2})$")


def is_archive_url(path: str) -> bool:
    """An http(s) URL naming an archive file (the query ignored, e.g. Zenodo's ``?download=1``).

    Such a URL is never asked whether it is a folder: fsspec's HTTP ``isdir``
    GETs the whole body to look for links in it, i.e. 54-63 GB into memory for
    a release archive, on every cache-key computation.
    """
    if not path.startswith(("http://", "https://")):
        return False
    return bool(_ARCHIVE_NAME.search(path.split("?", 1)[0].split("#", 1)[0]))


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.abspath(os.path.join(root, name))


def _stat(path: str) -> List[object]:
    try:
        fs, inner = _fs(path)
        info = fs.info(inner)
        return [display_name(path), info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("created")]
    except (FileNotFoundError, OSError, ValueError):
        return [display_name(path), None, None]


def _recorded_checksum(path: str) -> Optional[str]:
    for info in release().values():
        if info["url"] == path:
            return info.get("sha256") or info.get("md5")
    return None


# ----------------------------------------------------------------------------- choosing files


def resolve(config, sensors) -> Dict[str, Any]:
    """``{"annotations": path or URL, "s1": ImageSource, "s2": ImageSource}`` for the keys a config needs."""
    needed = ("annotations",) + tuple(sensors)
    data_files = dict(config.data_files or {})
    named = {k: list(v) if not isinstance(v, str) else [v] for k, v in data_files.items() if k in SOURCE_KEYS}
    unnamed = [k for k in data_files if k not in SOURCE_KEYS]
    if unnamed:
        raise SourceError(
            f"data_files keys {unnamed} are not understood; name each file: data_files={{'annotations': "
            f"'.../BigEarthNet.txt.parquet', 's1': '.../BigEarthNet-S1.tar.zst', 's2': '.../BigEarthNet-S2.tar.zst'}}"
        )
    chosen = _image_source_option(config.image_source, sensors)
    files: Dict[str, Any] = {}
    for key in needed:
        if key in chosen:
            files[key] = chosen[key]
        elif key in named:
            paths = [_absolute(p) for p in named[key]]
            if key == "annotations":
                if len(paths) != 1:
                    raise SourceError(f"data_files['annotations'] must be one parquet file, got {paths}")
                files[key] = paths[0]
            else:
                files[key] = detect(paths[0], key) if len(paths) == 1 else ArchiveSource(tuple(paths))
        elif config.data_dir:
            files[key] = _in_data_dir(config.data_dir, key)
        else:
            files[key] = release()[key]["url"] if key == "annotations" else ArchiveSource((release()[key]["url"],))
    return files


def _absolute(path: str) -> str:
    return path if is_url(path) else os.path.realpath(path)


def _image_source_option(option, sensors) -> Dict[str, ImageSource]:
    if option is None:
        return {}
    if isinstance(option, str):
        option = {sensor: option for sensor in sensors}
    if not isinstance(option, dict) or not set(option) <= set(ROOT_DIR):
        raise SourceError(f"image_source must be a path or a dict with keys 's1'/'s2', got {option!r}")
    out = {}
    for sensor, value in option.items():
        if sensor not in sensors:
            continue
        paths = [value] if isinstance(value, str) else list(value)
        paths = [_absolute(p) if os.path.exists(p) else p for p in paths]
        out[sensor] = detect(paths[0], sensor) if len(paths) == 1 else ArchiveSource(tuple(paths))
    return out


def _in_data_dir(data_dir: str, key: str):
    """The release file by its release name, or for images any other form the imagery is kept in."""
    info = release()[key]
    root = data_dir.rstrip("/") if is_url(data_dir) else os.path.realpath(data_dir)
    fs, inner = _fs(root)
    if not fs.isdir(inner):
        raise SourceError(f"data_dir {data_dir} is not a folder")
    if key == "annotations":
        if fs.exists(f"{inner}/{info['file_name']}"):
            return _join(root, info["file_name"])
    else:
        for kind in DATA_DIR_KINDS:
            found = kind.find_in(root, key)
            if found is not None:
                return found
    forms = "" if key == "annotations" else (
        f", an extracted {ROOT_DIR[key]}/ folder, an LMDB (Encoded-BigEarthNet/data.mdb) "
        f"or torchgeo's {ROOT_DIR[key]}.tar.gzaa parts"
    )
    raise SourceError(
        f"data_dir {data_dir} has no {info['file_name']} (the {_what(key)}, {info['num_bytes'] / 1e9:.1f} GB){forms}. "
        f"Download it from {info['url']} into that folder, or pass data_files={{'{key}': <path or URL>}}."
    )


def _what(key: str) -> str:
    return {"annotations": "BigEarthNet.txt annotation parquet", "s1": "Sentinel-1 archive", "s2": "Sentinel-2 archive"}[key]


def fingerprint(files: Dict[str, Any]) -> Dict[str, object]:
    """Cheap identity of every input (sizes, mtimes, recorded checksums): a changed input means a new cache."""
    out: Dict[str, object] = {}
    for key, value in files.items():
        if isinstance(value, ImageSource):
            out[key] = [value.kind, list(value.paths), value.fingerprint()]
        else:
            out[key] = [value, _stat(value) if not is_url(value) else _recorded_checksum(value)]
    return out


def download(files: Dict[str, Any], dl_manager, keep_archives: bool = False,
             verification_mode=None) -> Dict[str, Any]:
    """The parquet goes to the datasets download cache; archives at URLs are read in place as they download.

    At release scale a copy of the archives would be 118 GB beside a cache of
    ~135 GB, and preparing could only start after the last byte arrived. So
    an archive URL is read once, front to back, by the imagery pass
    (``archives.open_archive``: Range-resume after a dropped connection),
    its checksum checked on the fly (:class:`RecordedChecksum`).
    ``keep_archives=True`` copies the archives into the download folder first,
    for users who prepare many selections offline. Local paths are used in place.
    """
    out = dict(files)
    out["annotations"] = dl_manager.download(files["annotations"])
    remember_origin(out["annotations"], files["annotations"])
    for key, source in files.items():
        if isinstance(source, ArchiveSource):
            out[key] = source.download(dl_manager, key, keep_archives, verification_mode)
        elif isinstance(source, ImageSource):
            out[key] = source.download(dl_manager)
    return out


def spill_notice(config_name: str, split: str, source: ImageSource, groups, pairs: int, spill_dir: str) -> str:
    """What streaming an ``s1s2`` split from archives reads before its first example, and the faster routes.

    The two archives are sorted differently, so the other sensor's archive is
    read whole (its wanted pairs spilled to disk) before the driving one can
    yield anything: at release scale the 54 GB S1 archive, minutes on a fast
    disk and far longer over a network (README, Performance).
    """
    size = sum(s for s in (_size(p) for p in source.paths) if s)
    per_pair = sum(g.nbytes for g in groups)
    return (
        f"streaming {config_name} split {split}: before the first example, all of {source.name} "
        f"({size / 1e9:.1f} GB) is read and the bands of its {pairs} pair(s) of the split are spilled to {spill_dir} "
        f"(~{pairs * per_pair / 1e9:.2f} GB, removed at the end); the two archives are sorted differently. Faster "
        f"routes: a prepared cache (load_dataset without streaming: each archive read once), an export "
        f"(bentxt.export.writer), or the extracted folders or an LMDB as image_source (read by patch, no spill)"
    )


def _size(path: str) -> Optional[int]:
    try:
        fs, inner = _fs(path)
        return fs.size(inner)
    except Exception:  # a server that does not tell: the log line says 0.0 GB
        return None


def verify(files: Dict[str, Any], verification_mode) -> None:
    """With ``verification_mode="all_checks"``, compare sizes and checksums with dataset_infos/sources.json.

    Runs before any file is parsed, so a damaged download reports its checksum
    (expected and found) rather than whatever parse error the damage causes.
    """
    if verification_mode not in (VerificationMode.ALL_CHECKS, "all_checks"):
        return
    for key, value in files.items():
        if isinstance(value, ImageSource):
            value.verify(key, verification_mode)
        else:
            verify_file(value, release()[key])


def verify_file(path: str, info: dict) -> None:
    fs, inner = _fs(path)
    size = fs.size(inner)
    recorded = RecordedChecksum.of(path, info)
    recorded.check_size(size)
    if not recorded.digest:
        return
    digest = hashlib.new(recorded.algorithm)
    with xopen(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            digest.update(chunk)
    recorded.check(digest.hexdigest(), size)


def is_release_file(path: str, key: str) -> bool:
    """Cheap identity check (size) used to decide whether recorded split sizes apply."""
    try:
        fs, inner = _fs(path)
        return fs.size(inner) == release()[key]["num_bytes"]
    except Exception:  # unreachable remote file: cannot tell, so do not claim it
        return False


@lru_cache(maxsize=None)
def recorded_infos() -> Dict[str, dict]:
    """dataset_infos/dataset_infos.json: per config features, split sizes and download checksums."""
    path = infos_dir().joinpath("dataset_infos.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_split_sizes(config, files: Dict[str, Any]) -> Optional[SplitDict]:
    """Recorded split sizes, when they apply: the release parquet, no filters, the default layout."""
    if config.layout != "annotation" or any(v is not None for v in config.filters.values()):
        return None
    splits = recorded_infos().get(config.name, {}).get("splits")
    if not splits or not is_release_file(str(files["annotations"]), "annotations"):
        return None
    out = SplitDict()
    for name, info in splits.items():
        out.add(SplitInfo(name=name, num_examples=info["num_examples"]))
    return out


__all__ = [
    "ImageSource", "ArchiveSource", "RecordedChecksum", "FolderSource", "LmdbSource", "ExportSource", "KINDS",
    "DATA_DIR_KINDS",
    "SourceError", "ChecksumError", "detect", "resolve", "download", "verify", "verify_file", "fingerprint",
    "release", "recorded_infos", "expected_split_sizes", "is_release_file", "MAPS_DIR", "display_name",
]
