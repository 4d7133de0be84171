"""Every place the imagery already lives, behind one description per sensor.

- ``archives``: the release's ``.tar.zst`` (or torchgeo's ``.tar.gzaa``/``.tar.gzab`` parts):
  sequential only, read by ``bentxt.archives``;
- ``folders``: the extracted ``BigEarthNet-S1/`` / ``BigEarthNet-S2/`` trees: one file per band,
  random access by path;
- ``lmdb``: a rico-hdl conversion (``Encoded-BigEarthNet/``): key = patch name, value =
  ``safetensors`` dict of native arrays, random access.

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

from .layout import ROOT_DIR, band_path

KINDS = ("archives", "folders", "lmdb")

BandData = Dict[str, Union[bytes, memoryview, np.ndarray]]


@dataclass(frozen=True)
class ImageSource:
    """Where one sensor's bands come from: a kind and its paths (archive parts, a folder, an LMDB)."""

    kind: str
    paths: Tuple[str, ...]

    @property
    def sequential(self) -> bool:
        return self.kind == "archives"

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
    fs, inner = fsspec.core.url_to_fs(path)
    if fs.isdir(inner):
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


def open_reader(source: ImageSource, bands: Dict[str, Tuple[str, ...]]):
    if source.kind == "folders":
        return FolderReader(source.paths[0], bands)
    if source.kind == "lmdb":
        return LmdbReader(source.paths[0])
    raise ValueError(f"{source.kind} sources are read sequentially, not by patch")
