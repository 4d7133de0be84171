"""bentxt.imagery.geo: grids read from the GeoTIFF tags equal rasterio's; names give what they can, never a guess."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
import rasterio
from affine import Affine
from make_fixtures import REAL_PATCH_ID, REAL_S1_NAME, encode_geotiff
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from bentxt.imagery import geo
from bentxt.imagery.archives import iter_archive_patches
from bentxt.bands import SENSOR_BANDS
from bentxt.imagery.readers import FolderReader

#: the real pair's 10 m grid (docs/release.md#patch-names: tile 33UUP's corner 300000/5400000, cell 61/39)
REAL_GRID = geo.GeoRef(32633, (10.0, 0.0, 373_200.0, 0.0, -10.0, 5_353_200.0), 120, 120)


def _rasterio(data: bytes):
    with MemoryFile(data) as mem, mem.open() as ds:
        return ds.crs.to_epsg(), tuple(ds.transform)[:6], ds.width, ds.height, tuple(ds.bounds)


def _archive_bands(path, sensor, name):
    for patch, bands in iter_archive_patches(str(path), sensor, progress=False):
        if patch == name:
            return bands
    raise AssertionError(f"{name} not in {path}")


@pytest.fixture(scope="module")
def real_files(fixture_data, extracted):
    """The real pair's band files, from the archives and from the extracted folders."""
    folder = FolderReader(str(extracted), {s: SENSOR_BANDS[s] for s in ("s1", "s2")})
    return {
        "archive": {"s2": _archive_bands(fixture_data.s2_archive, "s2", REAL_PATCH_ID),
                    "s1": _archive_bands(fixture_data.s1_archive, "s1", REAL_S1_NAME)},
        "folder": {"s2": folder.read("s2", REAL_PATCH_ID), "s1": folder.read("s1", REAL_S1_NAME)},
    }


@pytest.mark.parametrize("source", ["archive", "folder"])
def test_real_pair_grids_equal_rasterio(real_files, fixture_data, source):
    names = {"s2": REAL_PATCH_ID, "s1": REAL_S1_NAME}
    patch = fixture_data.patch(REAL_PATCH_ID)
    for sensor, files in real_files[source].items():
        assert sorted(files) == sorted(SENSOR_BANDS[sensor])
        for band, data in files.items():
            grid = geo.georef_from_tiff(data)
            epsg, transform, width, height, bounds = _rasterio(data)
            assert (grid.epsg, grid.transform, grid.width, grid.height) == (epsg, transform, width, height), band
            assert grid.bounds == bounds == (373_200.0, 5_352_000.0, 374_400.0, 5_353_200.0)
        pair = geo.pair_georef(files, sensor, names[sensor])
        assert pair == REAL_GRID
        assert Affine(*pair.transform) == patch.transform(10)


def test_footprint_centre_is_the_published_location(fixture_data):
    patch = fixture_data.patch(REAL_PATCH_ID)
    fp = geo.footprint(REAL_GRID)
    assert fp.centre == pytest.approx((13.297826045662056, 48.31398981125651), abs=1e-12)
    assert (patch.longitude, patch.latitude) == pytest.approx(fp.centre, abs=1e-12)
    west, south, east, north = fp.bounds
    lons, lats = zip(*fp.corners)
    assert (west, south, east, north) == pytest.approx((min(lons), min(lats), max(lons), max(lats)), abs=1e-9)
    assert 0.0160 < east - west < 0.0170 and 0.0107 < north - south < 0.0111  # 1.2 km at 48.3 N
    ul_lon, ul_lat = rasterio.warp.transform(CRS.from_epsg(32633), CRS.from_epsg(4326), [373_200.0], [5_353_200.0])
    assert fp.corners[0] == pytest.approx((ul_lon[0], ul_lat[0]), abs=1e-12)


_UTM_20M = Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_400_000.0)


def _tiff(epsg=32633, transform=_UTM_20M, tags=None, crs=True):
    array = np.arange(3600, dtype=np.uint16).reshape(60, 60)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=60, height=60, count=1, dtype="uint16",
                      crs=CRS.from_epsg(epsg) if crs else None, transform=transform) as ds:
            ds.write(array, 1)
            if tags:
                ds.update_tags(**tags)
        return mem.read()


@pytest.mark.parametrize(
    "kind", ["utm", "pixel_is_point", "geographic", "southern"],
)
def test_other_layouts_follow_rasterio(kind):
    """The fast reader takes the released layout; PixelIsPoint and non-UTM CRSs go through rasterio, with its result."""
    data = {
        "utm": lambda: _tiff(),
        "pixel_is_point": lambda: _tiff(tags={"AREA_OR_POINT": "Point"}),
        "geographic": lambda: _tiff(epsg=4326, transform=Affine(0.001, 0, 13.0, 0, -0.001, 48.0)),
        "southern": lambda: _tiff(epsg=32733),
    }[kind]()
    grid = geo.georef_from_tiff(data)
    epsg, transform, width, height, _ = _rasterio(data)
    assert (grid.epsg, width, height) == (epsg, 60, 60)
    assert grid.transform == pytest.approx(transform, abs=0, rel=1e-15)
    if kind == "utm":
        assert geo._fast_georef(data) == grid
    if kind == "pixel_is_point":
        with pytest.raises(geo._Unsupported):
            geo._fast_georef(data)


def test_file_without_crs_names_the_file():
    with pytest.raises(geo.GeoError, match=r"patch P band B05: the GeoTIFF has no CRS"):
        geo.georef_from_tiff(_tiff(crs=False), "patch P band B05")
    with pytest.raises(geo.GeoError, match="patch P band B05: not a readable GeoTIFF"):
        geo.georef_from_tiff(b"II*\x00garbage", "patch P band B05")


def test_pair_with_a_band_from_another_square_is_refused(real_files):
    files = dict(real_files["archive"]["s2"])
    moved = encode_geotiff(np.ones((60, 60), np.uint16), 32633, Affine(20, 0, 373_220.0, 0, -20, 5_353_200.0), 0)
    files["B11"] = moved
    with pytest.raises(geo.GeoError, match=f"patch {REAL_PATCH_ID}: band B11 .* not on the same square"):
        geo.pair_georef(files, "s2", REAL_PATCH_ID)
    files["B11"] = encode_geotiff(np.ones((120, 120), np.uint16), 32633, Affine(10, 0, 373_200, 0, -10, 5_353_200), 0)
    with pytest.raises(geo.GeoError, match=r"band B11: pixel size 10.0 x -10.0 m, expected 20 m"):
        geo.pair_georef(files, "s2", REAL_PATCH_ID)


def test_names_give_the_epsg_and_the_transform_only_with_the_tile_corner(fixture_data, real_files):
    """An LMDB holds arrays only: the name gives EPSG and grid cell exactly; the transform needs the tile's corner."""
    from_name = geo.georef_from_name("s2", REAL_PATCH_ID)
    assert (from_name.tile, from_name.epsg, from_name.column, from_name.row) == ("33UUP", 32633, 61, 39)
    assert from_name.georef is None and "upper-left corner of tile 33UUP" in from_name.missing
    with pytest.raises(geo.GeoError, match=f"patch {REAL_PATCH_ID}: the transform needs the upper-left corner"):
        from_name.require()
    assert geo.geo_values("s2", from_name)["s2_epsg"] == 32633
    assert all(math.isnan(v) for v in geo.geo_values("s2", from_name)["s2_transform"])

    corner = geo.tile_origin(REAL_GRID, "s2", REAL_PATCH_ID)
    assert corner == (300_000.0, 5_400_000.0)
    other = next(p for p in fixture_data.patches if p.tile == "33UUP" and p.patch_id != REAL_PATCH_ID)
    for sensor, name in (("s2", other.patch_id), ("s1", other.s1_name)):  # S1 numbers are not zero-padded
        derived = geo.georef_from_name(sensor, name, tile_ul=corner).require()
        assert Affine(*derived.transform) == other.transform(10)
    assert geo.georef_from_name("s1", "S1A_IW_GRDH_1SDV_20170613T165043_33HUP_5_4").epsg == 32733  # band H: south
    with pytest.raises(geo.GeoError, match="not a BigEarthNet v2.0 S2 patch name"):
        geo.georef_from_name("s2", "S2A_MSIL2A_20170613T101031_N9999_R022_33UUP_61_39")


def test_geo_features_hold_the_values():
    features = geo.geo_features()
    assert list(features) == ["s1_epsg", "s1_transform", "s1_bounds", "s2_epsg", "s2_transform", "s2_bounds"]
    row = {**geo.geo_values("s1", None), **geo.geo_values("s2", REAL_GRID)}
    ds = datasets.Dataset.from_list([row], features=features)
    back = ds[0]
    assert back["s2_epsg"] == 32633 and back["s2_transform"] == list(REAL_GRID.transform)
    assert back["s2_bounds"] == [373_200.0, 5_352_000.0, 374_400.0, 5_353_200.0]
    assert back["s1_epsg"] == -1 and all(math.isnan(v) for v in back["s1_bounds"])
    assert REAL_GRID.with_resolution(60) == geo.GeoRef(32633, (60.0, 0.0, 373_200.0, 0.0, -60.0, 5_353_200.0), 20, 20)


@pytest.mark.parametrize("source", ["archives", "folders"])
def test_every_row_carries_its_pairs_grids_prepared_and_streamed(source, fixture_data, extracted, tmp_path):
    """The columns s1/s2_epsg, _transform, _bounds: read once per pair from the GeoTIFF tags while preparing (kept in
    the imagery store's index), and while streaming; equal to rasterio's for the real pair."""
    import bigearthnet_txt as bt

    data_dir = fixture_data.root if source == "archives" else extracted
    builder = bt.BigEarthNetTxt(config_name="s1s2-captioning", data_dir=str(data_dir), cache_dir=str(tmp_path))
    builder.download_and_prepare()
    prepared = builder.as_dataset(split="test").with_format("numpy", dtype=None)
    streamed = list(builder.as_streaming_dataset(split="test"))
    folder = FolderReader(str(extracted), {"s2": ("B02",), "s1": ("VV",)})
    rows = [i for i in range(prepared.num_rows) if prepared[i]["patch_id"] == REAL_PATCH_ID]
    assert rows
    for sensor, name, band in (("s2", REAL_PATCH_ID, "B02"), ("s1", REAL_S1_NAME, "VV")):
        epsg, transform, width, height, bounds = _rasterio(folder.read(sensor, name)[band])
        assert (width, height) == (geo.GRID_SIZE, geo.GRID_SIZE)
        for row in (prepared[rows[0]], streamed[rows[0]]):
            assert int(row[f"{sensor}_epsg"]) == epsg
            assert np.array_equal(np.asarray(row[f"{sensor}_transform"]), np.array(transform))
            assert np.array_equal(np.asarray(row[f"{sensor}_bounds"]), np.array(bounds))
    for i in range(prepared.num_rows):  # every pair's grid, the same both ways
        for column in ("s2_epsg", "s2_transform", "s1_bounds"):
            assert np.array_equal(np.asarray(prepared[i][column]), np.asarray(streamed[i][column])), (i, column)
