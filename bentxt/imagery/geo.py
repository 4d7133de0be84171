"""Where a patch is on the Earth: CRS, affine transform and bounds of its grids.

Every band file of BigEarthNet v2.0 is a north-up GeoTIFF in the WGS 84 / UTM
zone of its Sentinel-2 tile (docs/release.md#geotiff-properties): S2 at 10/20/60 m and S1 at
10 m, all covering the same 1,200 m square. The examples carry only the
centre's latitude and longitude; this module gives the grids themselves.

- :func:`georef_from_tiff` reads EPSG code, transform and size from the GeoTIFF
  tags of one band file. Like ``bentxt.imagery.raster``'s decoder it parses the few
  tags itself (a few µs; the files are tiny classic TIFFs) and hands anything
  it does not fully understand (BigTIFF, a ModelTransformation matrix,
  PixelIsPoint, several tiepoints, a user-defined CRS) to rasterio, so the
  result always equals ``rasterio.open(...)``'s ``crs.to_epsg()``,
  ``transform``, ``width``/``height``.
- :func:`pair_georef` checks that all band files of one patch agree and gives
  the sensor's grid once per patch (what the imagery store keeps per pair).
- :func:`georef_from_name` is for sources that hold only arrays (a rico-hdl
  LMDB): the name gives the EPSG code exactly (tile -> UTM zone, latitude band
  -> hemisphere) and the 1,200 m grid position, but not the tile's upper-left
  corner (docs/release.md#patch-names), so the transform is known only when the caller
  gives that corner (:func:`tile_origin` takes it from any one GeoTIFF of the
  tile). Without it the transform stays unknown, and says why; it is never
  guessed.
- :func:`footprint` gives the patch's corners and bounds in longitude/latitude
  through rasterio's PROJ (rasterio is a dependency; pyproj is not needed).
- :func:`geo_features` declares the per-pair columns in one place.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import datasets
import numpy as np

from bentxt.bands import GROUP_OF_BAND, SENSOR_BANDS
from bentxt.errors import BigEarthNetTxtError

__all__ = [
    "GeoError",
    "GeoRef",
    "NameGeoRef",
    "Footprint",
    "georef_from_tiff",
    "pair_georef",
    "georef_from_name",
    "tile_origin",
    "footprint",
    "geo_features",
    "geo_values",
    "PATCH_SIZE_M",
]

#: side of every patch in metres (120 px x 10 m), and the step of the patch grid inside a tile
#: (docs/release.md#patch-names)
PATCH_SIZE_M = 1200

# TIFF / GeoTIFF tags and GeoKeys read here
_WIDTH, _HEIGHT = 256, 257
_PIXEL_SCALE, _TIEPOINT, _MODEL_TRANSFORMATION, _GEOKEYS = 33550, 33922, 34264, 34735
_MODEL_TYPE, _RASTER_TYPE, _GEOGRAPHIC_TYPE, _PROJECTED_TYPE = 1024, 1025, 2048, 3072
_PIXEL_IS_AREA = 1
_USER_DEFINED = 32767
#: TIFF field type -> (struct format, size): SHORT, LONG, DOUBLE
_FIELDS = {3: ("H", 2), 4: ("I", 4), 12: ("d", 8)}


class GeoError(BigEarthNetTxtError, ValueError):
    """A band file without usable georeferencing, band files of one patch that disagree, or a grid that is not known."""


class GeoRef(NamedTuple):
    """One raster grid: EPSG code, affine transform ``(a, b, c, d, e, f)`` as in rasterio/affine, size in pixels."""

    epsg: int
    transform: Tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` like ``rasterio``'s ``DatasetReader.bounds`` (north-up grids)."""
        a, b, c, d, e, f = self.transform
        if b or d:
            raise GeoError(f"transform {self.transform} is rotated; BigEarthNet grids are north-up")
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def resolution(self) -> float:
        return abs(self.transform[0])

    def with_resolution(self, resolution: float) -> "GeoRef":
        """The same area on another pixel size (the 20 m and 60 m S2 grids share the 10 m grid's corner)."""
        size = self.width * self.resolution / resolution
        if abs(size - round(size)) > 1e-9:
            raise GeoError(f"a {self.width * self.resolution} m grid is not a whole number of {resolution} m pixels")
        a, b, c, d, e, f = self.transform
        sx, sy = math.copysign(resolution, a), math.copysign(resolution, e)
        return GeoRef(self.epsg, (sx, b, c, d, sy, f), round(size), round(size))


class _Unsupported(BigEarthNetTxtError):
    """The fast tag reader declines; rasterio decides."""


def _entries(data: bytes) -> Tuple[str, Dict[int, Tuple[int, int, int]]]:
    """Byte order and ``{tag: (type, count, offset of the value field)}`` of the first IFD."""
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        raise _Unsupported  # BigTIFF, or not a TIFF: rasterio gives the error
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (n,) = struct.unpack_from(order + "H", data, ifd)
    entries: Dict[int, Tuple[int, int, int]] = {}
    for i in range(n):
        at = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack_from(order + "HHI", data, at)
        entries[tag] = (typ, count, at + 8)
    return order, entries


def _values(data: bytes, order: str, entry: Tuple[int, int, int]) -> Tuple:
    typ, count, field_at = entry
    if typ not in _FIELDS:
        raise _Unsupported
    fmt, size = _FIELDS[typ]
    at = field_at if size * count <= 4 else struct.unpack_from(order + "I", data, field_at)[0]
    if at + size * count > len(data):
        raise _Unsupported  # truncated: rasterio names the problem
    return struct.unpack_from(f"{order}{count}{fmt}", data, at)


def _fast_georef(data: bytes) -> GeoRef:
    order, entries = _entries(data)
    if _MODEL_TRANSFORMATION in entries or not {_WIDTH, _HEIGHT, _PIXEL_SCALE, _TIEPOINT, _GEOKEYS} <= set(entries):
        raise _Unsupported
    (width,), (height,) = _values(data, order, entries[_WIDTH]), _values(data, order, entries[_HEIGHT])
    scale = _values(data, order, entries[_PIXEL_SCALE])
    tiepoint = _values(data, order, entries[_TIEPOINT])
    keys = _values(data, order, entries[_GEOKEYS])
    if len(tiepoint) != 6 or len(scale) < 2 or len(keys) < 4 or entries[_GEOKEYS][0] != 3:
        raise _Unsupported
    geokeys = {}
    for i in range(keys[3]):
        key, location, count, value = keys[4 + 4 * i : 8 + 4 * i]
        if location == 0 and count == 1:
            geokeys[key] = value
    # PixelIsPoint shifts the grid by half a pixel in GDAL; a geographic or user-defined CRS needs PROJ: rasterio decides
    if geokeys.get(_RASTER_TYPE, _PIXEL_IS_AREA) != _PIXEL_IS_AREA or geokeys.get(_MODEL_TYPE) != 1:
        raise _Unsupported
    epsg = geokeys.get(_PROJECTED_TYPE)
    if epsg is None or epsg == _USER_DEFINED:
        raise _Unsupported
    i, j, _, x, y, _ = tiepoint
    sx, sy = scale[0], scale[1]
    return GeoRef(int(epsg), (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy), int(width), int(height))


def _rasterio_georef(data: bytes, where: str) -> GeoRef:
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(bytes(data)) as mem, mem.open() as ds:
            epsg = ds.crs.to_epsg() if ds.crs is not None else None
            transform, width, height = tuple(ds.transform)[:6], ds.width, ds.height
    except Exception as err:  # rasterio raises its own error classes
        raise GeoError(f"{where}: not a readable GeoTIFF: {err}") from err
    if epsg is None:
        raise GeoError(f"{where}: the GeoTIFF has no CRS with an EPSG code; BigEarthNet band files are in WGS 84 / UTM")
    a, b, c, d, e, f = (float(v) for v in transform)
    return GeoRef(int(epsg), (a, b, c, d, e, f), int(width), int(height))


def georef_from_tiff(data: bytes, where: str = "GeoTIFF data") -> GeoRef:
    """EPSG code, transform and size of one GeoTIFF band file, equal to what rasterio reads from it."""
    try:
        return _fast_georef(data)
    except (_Unsupported, struct.error):
        return _rasterio_georef(data, where)


def pair_georef(band_files: Mapping[str, bytes], sensor: str, name: str) -> GeoRef:
    """The sensor's 10 m grid of one patch, after checking that all its band files describe the same square.

    A band file on another CRS, another area or an unexpected pixel size is an
    error naming the patch and the band, not a silently mixed-up pair.
    """
    if not band_files:
        raise GeoError(f"patch {name}: no {sensor.upper()} band files to read the grid from")
    grids = {}
    for band, data in band_files.items():
        where = f"patch {name} band {band}"
        grid = georef_from_tiff(data, where)
        expected = GROUP_OF_BAND[band].resolution_m
        if not math.isclose(grid.resolution, expected) or not math.isclose(abs(grid.transform[4]), expected):
            raise GeoError(f"{where}: pixel size {grid.transform[0]} x {grid.transform[4]} m, expected {expected} m")
        grids[band] = grid
    first_band = next(iter(grids))
    first = grids[first_band]
    for band, grid in grids.items():
        if grid.epsg != first.epsg or not all(math.isclose(u, v, abs_tol=1e-6) for u, v in zip(grid.bounds, first.bounds)):
            raise GeoError(
                f"patch {name}: band {band} (EPSG:{grid.epsg}, bounds {grid.bounds}) and band {first_band} "
                f"(EPSG:{first.epsg}, bounds {first.bounds}) are not on the same square"
            )
    finest = min(grids.values(), key=lambda g: g.resolution)
    return finest if finest.resolution == 10 else finest.with_resolution(10)


# ----------------------------------------------------------------------------- from patch names

#: the end of a patch name: MGRS tile (S2 with a leading T) and the grid position (S2 zero-padded, S1 not)
_NAME_TAIL = {
    "s2": re.compile(r"_T(?P<zone>\d{2})(?P<band>[C-X])(?P<square>[A-Z]{2})_(?P<x>\d{2})_(?P<y>\d{2})$"),
    "s1": re.compile(r"_(?P<zone>\d{2})(?P<band>[C-X])(?P<square>[A-Z]{2})_(?P<x>\d+)_(?P<y>\d+)$"),
}


@dataclass(frozen=True)
class NameGeoRef:
    """What a patch name says about its grid: EPSG code and grid position exactly; the transform only with the tile's corner."""

    name: str
    tile: str
    epsg: int
    column: int
    row: int
    georef: Optional[GeoRef]  # None: the tile's upper-left corner was not given
    missing: Optional[str]  # why ``georef`` is None

    def require(self) -> GeoRef:
        """The grid, or a GeoError saying why it cannot be derived."""
        if self.georef is None:
            raise GeoError(f"patch {self.name}: {self.missing}")
        return self.georef


def georef_from_name(sensor: str, name: str, tile_ul: Optional[Tuple[float, float]] = None) -> NameGeoRef:
    """The 10 m grid a patch name implies (docs/release.md#patch-names).

    The tile gives the UTM zone (EPSG 326zz north of the equator, latitude
    bands N-X; 327zz for C-M) and the trailing numbers the 1,200 m step from
    the tile's upper-left corner: ``UL_x + 1200 x``, ``UL_y - 1200 y``. The
    corner itself is not in the name, so the transform is only given when
    ``tile_ul`` is (e.g. from :func:`tile_origin` on any GeoTIFF of the same
    tile); otherwise ``georef`` is None and ``missing`` says why.
    """
    m = _NAME_TAIL[sensor].search(name)
    if m is None:
        raise GeoError(f"{name!r} is not a BigEarthNet v2.0 {sensor.upper()} patch name with a tile and grid position")
    zone = int(m["zone"])
    if not 1 <= zone <= 60:
        raise GeoError(f"patch {name}: UTM zone {zone} does not exist")
    epsg = (32600 if m["band"] >= "N" else 32700) + zone
    tile = f"{m['zone']}{m['band']}{m['square']}"
    column, row = int(m["x"]), int(m["y"])
    if tile_ul is None:
        return NameGeoRef(name, tile, epsg, column, row, None,
                          f"the transform needs the upper-left corner of tile {tile}, which the patch name does not "
                          "hold (read one GeoTIFF of the tile: bentxt.imagery.geo.tile_origin)")
    left, top = tile_ul[0] + PATCH_SIZE_M * column, tile_ul[1] - PATCH_SIZE_M * row
    return NameGeoRef(name, tile, epsg, column, row, GeoRef(epsg, (10.0, 0.0, left, 0.0, -10.0, top), 120, 120), None)


def tile_origin(georef: GeoRef, sensor: str, name: str) -> Tuple[float, float]:
    """The tile's upper-left corner from one patch's grid (read from its GeoTIFF) and its name; exact, no rounding."""
    position = georef_from_name(sensor, name)
    if position.epsg != georef.epsg:
        raise GeoError(f"patch {name}: the name says EPSG:{position.epsg}, the GeoTIFF EPSG:{georef.epsg}")
    left, _, _, top = georef.bounds
    return left - PATCH_SIZE_M * position.column, top + PATCH_SIZE_M * position.row


# ----------------------------------------------------------------------------- lat/lon


class Footprint(NamedTuple):
    """A grid in WGS 84: its four corners (UL, UR, LR, LL) as (lon, lat), and the (west, south, east, north) box holding it."""

    corners: Tuple[Tuple[float, float], ...]
    bounds: Tuple[float, float, float, float]
    centre: Tuple[float, float]


def footprint(georef: GeoRef) -> Footprint:
    """Corners, bounding box (densified edges: a UTM square is not a lat/lon rectangle) and centre in lon/lat.

    Uses rasterio's PROJ, the same transformation rasterio.warp gives anywhere
    else; the centre matches the parquet's ``latitude``/``longitude`` columns.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform, transform_bounds

    left, bottom, right, top = georef.bounds
    src, dst = CRS.from_epsg(georef.epsg), CRS.from_epsg(4326)
    xs = [left, right, right, left, (left + right) / 2]
    ys = [top, top, bottom, bottom, (top + bottom) / 2]
    lons, lats = transform(src, dst, xs, ys)
    corners = tuple((float(lon), float(lat)) for lon, lat in zip(lons[:4], lats[:4]))
    west, south, east, north = (float(v) for v in transform_bounds(src, dst, left, bottom, right, top, densify_pts=21))
    return Footprint(corners, (west, south, east, north), (float(lons[4]), float(lats[4])))


# ----------------------------------------------------------------------------- features

_NAN = float("nan")


def geo_features(sensors: Sequence[str] = ("s1", "s2")) -> datasets.Features:
    """Per pair and sensor: ``<s>_epsg``, ``<s>_transform`` (6 values, rasterio order) and ``<s>_bounds``.

    The grid is the sensor's 10 m grid (S2's 20 m / 60 m grids share its
    corner: :meth:`GeoRef.with_resolution`). Fixed-size, never null, like the
    other columns: an unknown transform or bounds is NaN-filled (see
    :func:`geo_values`), an unknown EPSG code is -1.
    """
    out = {}
    for sensor in sensors:
        if sensor not in SENSOR_BANDS:
            raise ValueError(f"sensor {sensor!r}: choose from {sorted(SENSOR_BANDS)}")
        out[f"{sensor}_epsg"] = datasets.Value("int32")
        out[f"{sensor}_transform"] = datasets.List(datasets.Value("float64"), length=6)
        out[f"{sensor}_bounds"] = datasets.List(datasets.Value("float64"), length=4)
    return datasets.Features(out)


def geo_values(sensor: str, grid: "GeoRef | NameGeoRef | None") -> Dict[str, object]:
    """The :func:`geo_features` values of one sensor: a read grid, a name-derived one (maybe without transform), or nothing."""
    if isinstance(grid, NameGeoRef):
        epsg, grid = grid.epsg, grid.georef
    else:
        epsg = grid.epsg if grid is not None else -1
    return {
        f"{sensor}_epsg": epsg,
        f"{sensor}_transform": list(grid.transform) if grid is not None else [_NAN] * 6,
        f"{sensor}_bounds": list(grid.bounds) if grid is not None else [_NAN] * 4,
    }


# ----------------------------------------------------------------------------- per pair, while preparing and streaming

#: the band file whose tags give a patch's grid: each sensor's first 10 m band (all its band files cover one square)
GRID_BAND = {"s2": "B02", "s1": "VV"}
#: pixels per side of the 10 m grid the columns describe
GRID_SIZE = 120
NO_TRANSFORM = (_NAN,) * 6


def patch_grid(data: Optional[Mapping[str, object]], sensor: str, name: str) -> Tuple[int, Tuple[float, ...]]:
    """(EPSG code, 10 m transform) of one patch, from its GeoTIFF's tags: read once per pair when it is decoded.

    Sources that hold only arrays (a rico-hdl LMDB) give the EPSG code from the
    name and no transform (NaN): the name does not fix the tile's corner, and it
    is never guessed. A file without a usable grid gives -1 and NaN.
    """
    files = {band: v for band, v in (data or {}).items() if isinstance(v, (bytes, bytearray, memoryview))}
    value = files.get(GRID_BAND[sensor], next(iter(files.values()), None))  # any band file: all cover the square
    if value is not None:
        try:
            grid = georef_from_tiff(bytes(value), f"patch {name}")
            grid = grid if grid.resolution == 10 else grid.with_resolution(10)
            return grid.epsg, tuple(grid.transform)
        except GeoError:
            return -1, NO_TRANSFORM
    try:
        return georef_from_name(sensor, name).epsg, NO_TRANSFORM
    except GeoError:
        return -1, NO_TRANSFORM


def grid_columns(sensor: str, epsg, transforms) -> Dict[str, np.ndarray]:
    """The :func:`geo_features` columns of one sensor, one value per pair (arrays: ``epsg`` (n,), ``transforms``
    (n, 6)); bounds are the transform applied to the 120 x 120 grid, as rasterio's ``bounds``."""
    transforms = np.asarray(transforms, dtype=np.float64).reshape(-1, 6)
    a, c, e, f = transforms[:, 0], transforms[:, 2], transforms[:, 4], transforms[:, 5]
    xs, ys = np.stack([c, c + a * GRID_SIZE]), np.stack([f, f + e * GRID_SIZE])
    bounds = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)
    return {f"{sensor}_epsg": np.asarray(epsg, dtype=np.int32), f"{sensor}_transform": transforms,
            f"{sensor}_bounds": bounds}
