"""Every place the imagery already lives, behind one description per sensor.

- ``archives``: the release's ``.tar.zst`` (or torchgeo's ``.tar.gzaa``/``.tar.gzab`` parts):
  sequential only, read by ``bentxt.archives``;
- ``folders``: the extracted ``BigEarthNet-S1/`` / ``BigEarthNet-S2/`` trees: one file per band,
  random access by path;
- ``lmdb``: a rico-hdl conversion (``Encoded-BigEarthNet/``): key = patch name, value =
  ``safetensors`` dict of native arrays, random access;
- ``export``: a Parquet export of this builder (``bentxt/export.py``), locally or a Hub repo
  (``hf://datasets/<org>/<name>`` or ``<org>/<name>``): sequential, native band groups per row.

A source is a small picklable description (``ImageSource``); readers are opened
where they are used, once per process, because LMDB environments and open
files must not cross a fork.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import fsspec
import numpy as np

from .layout import NAME_COLUMN, ROOT_DIR, band_path

BandData = Dict[str, Union[bytes, memoryview, np.ndarray]]


@dataclass(frozen=True)
class ImageSource:
    """Where one sensor's bands come from: a kind and its paths (archive parts, a folder, an LMDB)."""

    kind: str
    paths: Tuple[str, ...]

    @property
    def sequential(self) -> bool:
        return self.kind in ("archives", "export")

    @property
    def archives(self) -> Tuple[Tuple[str, ...], ...]:
        """The archives to read, each as its parts: split parts (``x.tar.gzaa``, ``x.tar.gzab``) form one archive."""
        groups: Dict[str, list] = {}
        for path in self.paths:
            stem = path[:-2] if re.search(r"\.tar\.gz[a-z]{2}$", path) else path
            groups.setdefault(stem, []).append(path)
        return tuple(tuple(sorted(parts)) for parts in groups.values())

    @property
    def name(self) -> str:
        """For error messages: the file or folder name(s)."""
        return ", ".join(p.split("::")[-1].rstrip("/").rsplit("/", 1)[-1] for p in self.paths)


def detect(path: str, sensor: str) -> ImageSource:
    """What a user-given path holds: an archive (or its parts), an extracted tree, or an LMDB."""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not os.path.exists(path):  # a Hub repo id
        path = f"hf://datasets/{path}"
    fs, inner = fsspec.core.url_to_fs(path)
    if fs.isdir(inner):
        if fs.exists(f"{inner.rstrip('/')}/README.md") and fs.isdir(f"{inner.rstrip('/')}/data"):
            return ImageSource("export", (path,))
        if fs.exists(f"{inner.rstrip('/')}/data.mdb"):
            return ImageSource("lmdb", (path,))
        if fs.isdir(f"{inner.rstrip('/')}/{ROOT_DIR[sensor]}"):
            return ImageSource("folders", (path,))
        if inner.rstrip("/").endswith(ROOT_DIR[sensor]):
            return ImageSource("folders", (path.rstrip("/").rsplit("/", 1)[0] or "/",))
        raise ValueError(
            f"{path} is neither an extracted {ROOT_DIR[sensor]}/ tree (or its parent) nor an LMDB folder (data.mdb)"
        )
    return ImageSource("archives", (path,))


class FolderReader:
    """Extracted trees: ``<root>/BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif``."""

    def __init__(self, root: str, bands: Dict[str, Tuple[str, ...]]):
        self.root, self.bands_of = root.rstrip("/"), bands
        self.fs, self.inner = fsspec.core.url_to_fs(self.root)

    def read(self, sensor: str, patch: str) -> Optional[BandData]:
        """All wanted band files of a patch; None when the patch folder does not exist."""
        out: BandData = {}
        for band in self.bands_of[sensor]:
            try:
                with self.fs.open(f"{self.inner}/{band_path(sensor, patch, band)}", "rb") as f:
                    out[band] = f.read()
            except FileNotFoundError:
                continue  # a missing band is reported by the decoder, naming the band
        if not out and not self.fs.isdir(self._patch_dir(sensor, patch)):
            return None
        return out

    def has(self, sensor: str, patch: str) -> bool:
        return self.fs.isdir(self._patch_dir(sensor, patch))

    def _patch_dir(self, sensor: str, patch: str) -> str:
        return os.path.dirname(f"{self.inner}/{band_path(sensor, patch, self.bands_of[sensor][0])}")

    def close(self) -> None:
        pass


class LmdbReader:
    """A rico-hdl LMDB, opened read-only the way the publisher's loader opens it (facts, section 13).

    One environment per process and path (py-lmdb refuses a second open, and
    S1 and S2 usually share one LMDB); it is reference-counted so the last
    reader of a process closes it. Values are copied out of the transaction
    before it ends (py-lmdb buffers are only valid inside it; the publisher's
    loader gets this wrong).
    """

    _open: Dict[Tuple[int, str], list] = {}  # (pid, path) -> [env, users]

    def __init__(self, path: str):
        try:
            import lmdb
            from safetensors.numpy import load
        except ImportError as err:  # pragma: no cover - exercised only without the extra
            raise ImportError("Reading an LMDB needs the 'lmdb' extra: pip install 'bigearthnet-txt[lmdb]'") from err
        self._load, self._key = load, (os.getpid(), os.path.realpath(path))
        entry = self._open.get(self._key)
        if entry is None:
            env = lmdb.open(path, readonly=True, lock=False, meminit=False, readahead=True, max_spare_txns=16, subdir=True)
            entry = self._open[self._key] = [env, 0]
        entry[1] += 1
        self.env = entry[0]

    def read(self, sensor: str, patch: str) -> Optional[BandData]:
        with self.env.begin(write=False) as txn:
            value = txn.get(patch.encode())
        return None if value is None else dict(self._load(value))

    def has(self, sensor: str, patch: str) -> bool:
        with self.env.begin(write=False, buffers=True) as txn:
            return txn.get(patch.encode()) is not None

    def close(self) -> None:
        entry = self._open.get(self._key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].close()
                del self._open[self._key]


def iter_export_patches(root: str, sensor: str, download_config=None):
    """``(patch name, {band: array})`` from an export: any exported config holding the sensor's native groups.

    A patch's rows are consecutive in an export (``bentxt/export.py``), so the
    first row of each run carries its arrays; the patch layout, one row per
    pair, is preferred when the export has it.
    """
    import pyarrow.parquet as pq

    from .bands import groups_for_sensors

    groups = groups_for_sensors((sensor,))
    key = NAME_COLUMN[sensor]
    fs, inner = fsspec.core.url_to_fs(root, **((download_config.storage_options or {}) if download_config else {}))
    candidates = []
    for config_dir in sorted(fs.glob(f"{inner.rstrip('/')}/data/*")):
        files = sorted(fs.glob(f"{config_dir}/*.parquet"))
        if files:
            names = pq.read_schema(fs.open(files[0], "rb")).names
            if all(g.name in names for g in groups):
                candidates.append(("annotations" not in names, config_dir, files))
    if not candidates:
        raise ValueError(f"export {root} has no config with the native {sensor} band groups {[g.name for g in groups]}")
    _, config_dir, files = min(candidates)
    previous = None  # a patch's rows may straddle row groups and files: yield it once
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for i in range(parquet.num_row_groups):
                table = parquet.read_row_group(i, columns=[key] + [g.name for g in groups])
                names = table[key].to_pylist()
                first = [j for j in range(len(names)) if names[j] != (names[j - 1] if j else previous)]
                arrays = {g.name: _array3d(table[g.name], g.shape) for g in groups}
                for j in first:
                    yield names[j], {b: arrays[g.name][j, k] for g in groups for k, b in enumerate(g.bands)}
                previous = names[-1] if names else previous


def _array3d(column, shape) -> np.ndarray:
    """An Array3D column as one (rows, *shape) ndarray, without Python lists."""
    storage = column.combine_chunks()
    storage = getattr(storage, "storage", storage)
    for _ in range(3):
        storage = storage.flatten()
    return storage.to_numpy(zero_copy_only=False).reshape(len(column), *shape)


def open_reader(source: ImageSource, bands: Dict[str, Tuple[str, ...]]):
    if source.kind == "folders":
        return FolderReader(source.paths[0], bands)
    if source.kind == "lmdb":
        return LmdbReader(source.paths[0])
    raise ValueError(f"{source.kind} sources are read sequentially, not by patch")
