"""How a patch's bands are read from each form the imagery is kept in.

- archives: ``bentxt.imagery.archives.iter_archive_patches`` (front to back, GeoTIFF bytes per band);
- extracted folders: :class:`FolderReader` (one GeoTIFF per band, by path);
- a rico-hdl LMDB: :class:`LmdbReader` (key = patch name, value = safetensors dict of arrays);
- an export of this builder: :func:`iter_export_patches` (its imagery config's rows, arrays per band group).

Every reader gives ``{band: GeoTIFF bytes or ndarray}``; :func:`band_array`
turns either into a checked 2-D array, so every source fails the same way: a
``RasterError`` that names the patch, the band and the source.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, Iterator, Optional, Tuple, Union

import fsspec
import numpy as np

from bentxt.imagery import raster
from bentxt.bands import groups_for_sensors
from bentxt.imagery.layout import NAME_COLUMN, band_path, check_patch_name

class BadBand(str):
    """Band data a reader refused before decoding (e.g. an archive member larger than its band can need, or
    present twice): the reason. Decoding it raises ``RasterError``, so ``skip_invalid`` skips it like any bad file."""


BandData = Dict[str, Union[bytes, memoryview, np.ndarray, BadBand]]


def band_array(value, band: str, where: str) -> np.ndarray:
    """Band data as read (an array, or GeoTIFF bytes) -> the checked native 2-D array."""
    if isinstance(value, BadBand):
        raise raster.RasterError(f"{where}: {value}")
    array = value if isinstance(value, np.ndarray) else raster.decode_geotiff(value, where=where)
    return raster.check_band(array, band, where=where)


def decode_patch(data: Optional[BandData], bands, name: str, source: str,
                 out: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The wanted bands of one patch, decoded and checked; a missing band is a RasterError too.

    ``out`` (band -> array slot, e.g. a row of the imagery writer's batch)
    receives the bands directly: one copy, no intermediate array.
    """
    arrays = {}
    for band in bands:
        where = f"patch {name} band {band} (in {source})"
        if not data or band not in data:
            raise raster.RasterError(f"{where}: the band file is missing")
        value = data[band]
        if out is None or isinstance(value, BadBand):
            arrays[band] = band_array(value, band, where)
        elif isinstance(value, np.ndarray):
            out[band][...] = raster.check_band(value, band, where=where)
        else:
            raster.decode_band_into(value, band, out[band], where=where)
    return out if out is not None else arrays


class FolderReader:
    """Extracted trees: ``<root>/BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif``.

    Only what was asked for is read: the patch name must match the release
    grammar before a path is built from it, a band file must be a regular file
    (a link is refused, so nothing outside the tree is read), and a file larger
    than its band could need is refused before it is read.
    """

    def __init__(self, root: str, bands: Dict[str, Tuple[str, ...]]):
        self.root, self.bands_of = root.rstrip("/"), bands
        self.fs, self.inner = fsspec.core.url_to_fs(self.root)
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in getattr(self.fs, "protocol", ())

    def read(self, sensor: str, patch: str) -> Optional[BandData]:
        """All wanted band files of a patch; None when the patch folder does not exist."""
        check_patch_name(sensor, patch, f"folder {self.root}")
        out: BandData = {}
        for band in self.bands_of[sensor]:
            path = f"{self.inner}/{band_path(sensor, patch, band)}"
            try:
                out[band] = self._read_file(path, band, patch)
            except FileNotFoundError:
                continue  # a missing band is reported by the decoder, naming the band
        if not out and not self.fs.isdir(self._patch_dir(sensor, patch)):
            return None
        return out

    def _read_file(self, path: str, band: str, patch: str) -> bytes:
        limit = raster.max_band_file_bytes(band)
        where = f"patch {patch} band {band} ({path})"
        if self.local:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                raise raster.RasterError(f"{where}: not a regular file (a link or a device); band files must be plain files")
            if info.st_size > limit:
                raise raster.RasterError(f"{where}: {info.st_size} bytes, more than a {band} band file can hold ({limit})")
        with self.fs.open(path, "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise raster.RasterError(f"{where}: more than {limit} bytes, more than a {band} band file can hold")
        return data

    def has(self, sensor: str, patch: str) -> bool:
        check_patch_name(sensor, patch, f"folder {self.root}")
        return self.fs.isdir(self._patch_dir(sensor, patch))

    def _patch_dir(self, sensor: str, patch: str) -> str:
        return os.path.dirname(f"{self.inner}/{band_path(sensor, patch, self.bands_of[sensor][0])}")

    def close(self) -> None:
        pass


class LmdbReader:
    """A rico-hdl LMDB, opened read-only the way the publisher's loader opens it (docs/release.md#lmdb).

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
        self.path = path
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
        if value is None:
            return None
        try:
            return dict(self._load(value))
        except Exception as err:  # safetensors raises its own error types; name the record instead
            raise raster.RasterError(
                f"patch {patch} in LMDB {self.path}: the value ({len(value)} bytes) is not a safetensors record "
                f"of band arrays ({type(err).__name__})"
            ) from None

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


def iter_export_patches(root: str, sensor: str, download_config=None) -> Iterator[Tuple[str, BandData]]:
    """``(patch name, {band: array})`` of every pair of an export's imagery config holding the sensor's native groups
    (``imagery-s2``, ``imagery-s1``, ``imagery-s1s2``), read by ``bentxt.export.reader`` (the export's one reader)."""
    from bentxt.export.reader import iter_pairs

    groups = groups_for_sensors((sensor,))
    options = (download_config.storage_options or {}) if download_config else {}
    try:
        for name, arrays in iter_pairs(root, sensor, [g.name for g in groups], NAME_COLUMN[sensor], options):
            yield name, {b: arrays[g.name][k] for g in groups for k, b in enumerate(g.bands)}
    except ValueError as err:
        if "do not hold" in str(err):
            raise raster.RasterError(str(err)) from None
        raise
