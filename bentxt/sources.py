"""Where a config's files come from, and whether they are the release's files.

Images may also come from ``image_source=`` (a path for both sensors, or
``{"s1": path, "s2": path}``): an archive, an extracted folder or an LMDB; it
is a config option because ``datasets`` resolves ``data_files`` as files only.
Otherwise three ways, checked in this order:
1. ``data_files={"annotations": ..., "s1": ..., "s2": ...}``: explicit paths or
   URLs (local, ``http(s)://``, ``hf://``); an image key may name an archive, its
   parts, an extracted folder or an LMDB; a missing key falls back to 2 or 3;
2. ``data_dir=``: a folder holding the release files under their release names,
   the extracted ``BigEarthNet-S1/`` / ``BigEarthNet-S2/`` trees, an LMDB
   (``Encoded-BigEarthNet/``) or torchgeo's ``.tar.gzaa``/``.tar.gzab`` parts;
3. nothing: the release URLs recorded in ``dataset_infos/sources.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from functools import lru_cache
from importlib import resources
from typing import Dict, Optional

import fsspec
from datasets import SplitDict, SplitInfo
from datasets.utils.file_utils import xopen
from datasets.utils.info_utils import VerificationMode

from .imagery import ImageSource, detect
from .layout import ROOT_DIR, display_name  # noqa: F401  (re-exported: sources.display_name)

logger = logging.getLogger("bigearthnet_txt")

SOURCE_KEYS = ("annotations", "s1", "s2")


class SourceError(ValueError):
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



def resolve(config, sensors) -> Dict[str, object]:
    """``{"annotations": url, "s1": [urls], "s2": [urls]}`` for the keys a config needs."""
    needed = ("annotations",) + tuple(sensors)
    data_files = dict(config.data_files or {})
    named = {k: list(v) for k, v in data_files.items() if k in SOURCE_KEYS}
    unnamed = [k for k in data_files if k not in SOURCE_KEYS]
    if named and unnamed:
        raise SourceError(
            f"data_files keys {unnamed} are not understood; use the keys {list(SOURCE_KEYS)} "
            f"(the annotation parquet and the S1 / S2 archives)"
        )
    if unnamed and not config.data_dir:
        raise SourceError(
            f"data_files must name each file: data_files={{'annotations': '.../BigEarthNet.txt.parquet', "
            f"'s1': '.../BigEarthNet-S1.tar.zst', 's2': '.../BigEarthNet-S2.tar.zst'}} (got keys {unnamed})"
        )
    files: Dict[str, object] = {}
    chosen = _image_source_option(getattr(config, "image_source", None), sensors)
    for key in needed:
        if key in chosen:
            files[key] = chosen[key]
        elif key in named:
            paths = named[key]
            if key == "annotations":
                if len(paths) != 1:
                    raise SourceError(f"data_files['annotations'] must be one parquet file, got {paths}")
                files[key] = paths[0]
            else:
                files[key] = detect(paths[0], key) if len(paths) == 1 else ImageSource("archives", tuple(paths))
        elif config.data_dir:
            files[key] = _in_data_dir(config.data_dir, key)
        else:
            files[key] = release()[key]["url"] if key == "annotations" else ImageSource("archives", (release()[key]["url"],))
    return files


def _image_source_option(option, sensors) -> Dict[str, ImageSource]:
    if option is None:
        return {}
    if isinstance(option, str):
        option = {sensor: option for sensor in sensors}
    if not isinstance(option, dict) or not set(option) <= set(ROOT_DIR):
        raise SourceError(f"image_source must be a path or a dict with keys 's1'/'s2', got {option!r}")
    out = {}
    for sensor, value in option.items():
        paths = [value] if isinstance(value, str) else list(value)
        out[sensor] = detect(paths[0], sensor) if len(paths) == 1 else ImageSource("archives", tuple(paths))
    return out


def _in_data_dir(data_dir: str, key: str):
    """The release file by its release name, or for images any other form the imagery is kept in."""
    info = release()[key]
    root = data_dir.rstrip("/")
    fs, inner = fsspec.core.url_to_fs(root)
    local = (lambda p: p) if "://" in root else os.path.abspath

    def found(name: str) -> bool:
        return fs.exists(f"{inner}/{name}")

    if found(info["file_name"]):
        path = local(f"{root}/{info['file_name']}")
        return path if key == "annotations" else ImageSource("archives", (path,))
    if key != "annotations":
        if fs.isdir(f"{inner}/{ROOT_DIR[key]}"):
            return ImageSource("folders", (local(root),))
        for lmdb_dir in ("", "/Encoded-BigEarthNet"):
            if found(f"{lmdb_dir.lstrip('/')}/data.mdb".lstrip("/")):
                return ImageSource("lmdb", (local(root + lmdb_dir),))
        parts = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{inner}/{ROOT_DIR[key]}.tar.gz??"))
        if parts:
            return ImageSource("archives", tuple(local(f"{root}/{p}") for p in parts))
    forms = "" if key == "annotations" else (
        f", an extracted {ROOT_DIR[key]}/ folder, an LMDB (Encoded-BigEarthNet/data.mdb) or torchgeo's {ROOT_DIR[key]}.tar.gzaa parts"
    )
    raise SourceError(
        f"data_dir {data_dir} has no {info['file_name']} (the {_what(key)}, {info['num_bytes'] / 1e9:.1f} GB){forms}. "
        f"Download it from {info['url']} into that folder, or pass data_files={{'{key}': <path or URL>}}."
    )


def _what(key: str) -> str:
    return {"annotations": "BigEarthNet.txt annotation parquet", "s1": "Sentinel-1 archive", "s2": "Sentinel-2 archive"}[key]


def download(files: Dict[str, object], dl_manager) -> Dict[str, object]:
    """Remote files go to the datasets download cache; local paths are used in place (no copy)."""
    out = dict(files)
    out["annotations"] = dl_manager.download(files["annotations"])
    for key, source in files.items():
        if isinstance(source, ImageSource) and source.kind == "archives":
            out[key] = ImageSource("archives", tuple(dl_manager.download(list(source.paths))))
    return out


def verify(files: Dict[str, object], verification_mode) -> None:
    """With ``verification_mode="all_checks"``, compare sizes and checksums with dataset_infos/sources.json.

    Runs before any file is parsed, so a damaged download reports its checksum
    (expected and found) rather than whatever parse error the damage causes.
    """
    if verification_mode not in (VerificationMode.ALL_CHECKS, "all_checks"):
        return
    for key, value in files.items():
        if isinstance(value, ImageSource) and value.kind != "archives":
            logger.info("%s is read from %s (%s): checksums are recorded for the release archives only", key, value.kind, value.name)
            continue
        paths = [value] if isinstance(value, str) else list(value.paths)
        if len(paths) != 1:
            logger.info("%s comes in %d parts; checksums are recorded for the single release file only", key, len(paths))
            continue
        verify_file(paths[0], release()[key])


def verify_file(path: str, info: dict) -> None:
    name = display_name(path)
    fs, inner = fsspec.core.url_to_fs(path)
    size = fs.size(inner)
    if info.get("num_bytes") is not None and size != info["num_bytes"]:
        raise ChecksumError(
            f"{name}: size {size} bytes, expected {info['num_bytes']} bytes for the release file "
            f"{info['file_name']} (dataset_infos/sources.json)"
        )
    algorithm = "sha256" if info.get("sha256") else "md5"
    expected = info.get(algorithm)
    if not expected:
        return
    digest = hashlib.new(algorithm)
    with xopen(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 23), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ChecksumError(
            f"{name}: {algorithm} {digest.hexdigest()}, expected {expected} for the release file "
            f"{info['file_name']} (dataset_infos/sources.json)"
        )


def is_release_file(path: str, key: str) -> bool:
    """Cheap identity check (size) used to decide whether recorded split sizes apply."""
    try:
        fs, inner = fsspec.core.url_to_fs(path)
        return fs.size(inner) == release()[key]["num_bytes"]
    except Exception:  # unreachable remote file: cannot tell, so do not claim it
        return False


@lru_cache(maxsize=None)
def recorded_infos() -> Dict[str, dict]:
    """dataset_infos/dataset_infos.json: per config features, split sizes and download checksums."""
    path = infos_dir().joinpath("dataset_infos.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_split_sizes(config, files: Dict[str, object]) -> Optional[SplitDict]:
    """Recorded split sizes, when they apply: the release parquet, no filters, the default layout."""
    if config.layout != "annotation" or any(getattr(config, o) is not None for o in ("categories", "countries", "seasons", "climate_zones")):
        return None
    splits = recorded_infos().get(config.name, {}).get("splits")
    if not splits or not is_release_file(str(files["annotations"]), "annotations"):
        return None
    out = SplitDict()
    for name, info in splits.items():
        out.add(SplitInfo(name=name, num_examples=info["num_examples"]))
    return out
