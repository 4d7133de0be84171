"""The fixtures must be faithful to the release format, or builder tests prove nothing.

Expected values come from docs/release.md; band names, sizes and
dtypes come from bentxt.bands, paths from bentxt.imagery.layout.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
from collections import deque
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zstandard
from rasterio.io import MemoryFile

from bentxt.bands import GROUP_OF_BAND, NODATA, SENSOR_BANDS
from bentxt.imagery.layout import PATCH_NAME_RE, band_path
from make_fixtures import (
    CLASS_OF_CODE,
    MAP_DTYPE,
    PARQUET_SCHEMA,
    REAL_PATCH_ID,
    REAL_ROWS,
    REAL_S1_NAME,
    SYNTHETIC_MD,
    SYNTHETIC_METADATA,
    TAR_MTIME,
    Fixture,
    encode_geotiff,
    make_fixture,
    reference_map_path,
)

#: docs/release.md#geotiff-properties: group -> (file bytes, rows per strip, strips)
FACTS_TIFF = {"s2_10m": (29_196, 34, 4), "s2_20m": (7_572, 60, 1), "s2_60m": (1_172, 20, 1), "s1": (58_024, 17, 8)}
#: GDAL 3.10's libtiff writes StripByteCounts as SHORT when a strip is < 64 KiB; the released
#: S1 files are 16 bytes larger, i.e. 8 LONG counts (an older libtiff). Nothing in GDAL's
#: creation options forces LONG, so the fixture S1 files are 58,008 bytes.
SIZE_DEVIATION = {"s1": -16}
MAP_ROWS_PER_STRIP = 34
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BOX_RE = re.compile(r"^\[(\d+(?:\.\d+)?) (\d+(?:\.\d+)?), (\d+(?:\.\d+)?) (\d+(?:\.\d+)?)\]$")
POINT_RE = re.compile(r"<point>\((\d+(?:\.\d+)?), (\d+(?:\.\d+)?)\)</point>")


class NonSeekable(io.RawIOBase):
    """A pipe-like reader: a reader that seeks or tells would fail on the real HTTP stream."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:  # type: ignore[override]
        chunk = self._buf.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)

    def seek(self, *args):  # type: ignore[override]
        raise io.UnsupportedOperation("seek")

    def tell(self):  # type: ignore[override]
        raise io.UnsupportedOperation("tell")


def tiff_tags(data: bytes) -> Dict[int, Tuple[int, ...]]:
    """Raw IFD entries (tag -> values of SHORT/LONG tags), independent of what GDAL reports."""
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    tags = {}
    for i in range(n):
        tag, typ, count, value = struct.unpack_from("<HHII", data, ifd + 2 + 12 * i)
        if typ in (3, 4):
            fmt = "<" + ("H" if typ == 3 else "I") * count
            inline = struct.calcsize(fmt) <= 4
            tags[tag] = struct.unpack_from(fmt, data, ifd + 10 + 12 * i if inline else value)
        else:
            tags[tag] = ()
    return tags


def read_archive(path: Path) -> List[Tuple[tarfile.TarInfo, bytes]]:
    reader = zstandard.ZstdDecompressor().stream_reader(NonSeekable(path.read_bytes()))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]


@pytest.fixture(scope="module")
def archives(fixture_data: Fixture) -> Dict[str, List[Tuple[tarfile.TarInfo, bytes]]]:
    return {key: read_archive(path) for key, path in fixture_data.archives.items()}


def expected_members(fx: Fixture) -> Dict[str, List[str]]:
    s2 = [band_path("s2", p.patch_id, b) for p in fx.archived_patches for b in SENSOR_BANDS["s2"]]
    s1 = [band_path("s1", p.s1_name, b) for p in fx.archived_patches for b in SENSOR_BANDS["s1"]]
    maps = [reference_map_path(p.patch_id) for p in fx.archived_patches]
    return {"s2": sorted(s2), "s1": sorted(s1), "reference_maps": sorted(maps)}


# --------------------------------------------------------------------------- archives


def test_files_and_sample_marker(fixture_data: Fixture) -> None:
    names = sorted(p.name for p in fixture_data.root.iterdir())
    assert names == ["BigEarthNet-S1.tar.zst", "BigEarthNet-S2.tar.zst", "BigEarthNet.txt.parquet", "Reference_Maps.tar.zst"]


def test_zstd_is_one_frame_without_seek_table(fixture_data: Fixture) -> None:
    for path in fixture_data.archives.values():
        data = path.read_bytes()
        assert data[:4] == ZSTD_MAGIC
        dobj = zstandard.ZstdDecompressor().decompressobj()
        dobj.decompress(data)
        # one frame that consumes the whole file: no second frame, no skippable seek-table frame
        assert dobj.eof and dobj.unused_data == b""
        assert zstandard.get_frame_parameters(data).has_checksum


def test_members_sorted_gnu_files_only(fixture_data: Fixture, archives) -> None:
    expected = expected_members(fixture_data)
    for key, members in archives.items():
        names = [m.name for m, _ in members]
        assert names == expected[key]
        assert names == sorted(names)
        for m, _ in members:
            assert m.isreg() and not m.isdir()
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime, m.mode) == (0, 0, "", "", TAR_MTIME, 0o644)
        raw = zstandard.ZstdDecompressor().stream_reader(fixture_data.archives[key].read_bytes()).read(512)
        assert raw[257:265] == b"ustar  \x00"  # GNU magic (tarfile.GNU_FORMAT), not POSIX ustar
        assert len(zstandard.ZstdDecompressor().stream_reader(fixture_data.archives[key].read_bytes()).read()) % 10240 == 0


def test_s1_string_order_differs_from_numeric(archives) -> None:
    s1 = [m.name for m, _ in archives["s1"]]
    s2 = [m.name for m, _ in archives["s2"]]
    first = lambda names, suffix: next(i for i, n in enumerate(names) if f"{suffix}/" in n)  # noqa: E731
    assert first(s1, "_29SND_10_5") < first(s1, "_29SND_9_5")
    assert first(s2, "_T29SND_09_05") < first(s2, "_T29SND_10_05")


def test_zero_padding_and_pairing(fixture_data: Fixture) -> None:
    for p in fixture_data.patches:
        assert PATCH_NAME_RE["s2"].match(p.patch_id) and PATCH_NAME_RE["s1"].match(p.s1_name)
        s2_parts, s1_parts = p.patch_id.split("_"), p.s1_name.split("_")
        assert all(len(n) == 2 for n in s2_parts[-2:])
        assert all(n == str(int(n)) for n in s1_parts[-2:])  # never zero-padded
        assert [int(n) for n in s2_parts[-2:]] == [int(n) for n in s1_parts[-2:]]
        assert s2_parts[-3] == "T" + s1_parts[-3] == "T" + p.tile
        assert s2_parts[2] != s1_parts[4]  # acquisition date/time differ
    assert any(len(n) == 1 for p in fixture_data.patches for n in p.s1_name.split("_")[-2:])
    assert {p.patch_id[:3] for p in fixture_data.patches} == {"S2A", "S2B"}
    assert {p.s1_name[:3] for p in fixture_data.patches} == {"S1A", "S1B"}
    assert len({p.epsg for p in fixture_data.patches}) >= 2


# --------------------------------------------------------------------------- GeoTIFFs


def test_geotiffs_match_release_properties_and_values(fixture_data: Fixture, archives) -> None:
    by_member = {}
    for p in fixture_data.archived_patches:
        for band, member in p.member_paths().items():
            by_member[member] = (p, band)
    for key, members in archives.items():
        for m, data in members:
            p, band = by_member[m.name]
            with MemoryFile(data) as mem, mem.open() as ds:
                assert ds.driver == "GTiff" and ds.count == 1
                assert ds.crs.to_epsg() == p.epsg
                assert ds.tags()["AREA_OR_POINT"] == "Area"
                assert ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "BAND") == "BAND"
                assert data[:4] == b"II*\x00"  # classic little-endian TIFF
                tags = tiff_tags(data)
                assert tags[262] == (1,) and tags[277] == (1,)  # MinIsBlack, one sample
                assert 322 not in tags  # no TileWidth: striped
                geokeys = tags[34735]
                keys = {geokeys[i]: geokeys[i + 3] for i in range(4, len(geokeys), 4)}
                assert keys[1025] == 1 and keys[3072] == p.epsg  # RasterPixelIsArea, ProjectedCSType
                has_nodata = band == "reference_map" or NODATA[GROUP_OF_BAND[band].sensor] is not None
                assert (42113 in tags) == has_nodata  # GDAL_NODATA: S1 files carry none
                values = ds.read(1)
                if band == "reference_map":
                    assert ds.dtypes[0] == MAP_DTYPE and values.shape == (120, 120)
                    assert ds.compression == rasterio.enums.Compression.deflate
                    assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
                    assert ds.block_shapes == [(MAP_ROWS_PER_STRIP, 120)]
                    assert ds.nodata == 0
                    assert ds.transform == p.transform(10)
                    assert set(np.unique(values)) <= set(CLASS_OF_CODE)
                    np.testing.assert_array_equal(values, p.reference_map)
                    continue
                group = GROUP_OF_BAND[band]
                size, rows, strips = FACTS_TIFF[group.name]
                assert len(data) == size + SIZE_DEVIATION.get(group.name, 0), (m.name, len(data))
                assert ds.dtypes[0] == group.dtype and values.shape == (group.size, group.size)
                assert ds.compression is None
                assert ds.block_shapes == [(rows, group.size)] and -(-group.size // rows) == strips
                assert ds.nodata == NODATA[group.sensor]
                assert ds.transform == p.transform(group.resolution_m)
                assert ds.res == (group.resolution_m, group.resolution_m)
                assert values.dtype == p.bands[band].dtype
                np.testing.assert_array_equal(values, p.bands[band])


def test_template_encoding_equals_rasterio(fixture_data: Fixture, archives) -> None:
    """The fast header-reuse path must produce exactly what rasterio writes, for every file."""
    by_member = {m.name: data for m, data in archives["s2"] + archives["s1"]}
    for p in fixture_data.archived_patches:
        for band, member in p.member_paths().items():
            if band == "reference_map":
                continue
            group = GROUP_OF_BAND[band]
            direct = encode_geotiff(p.bands[band], p.epsg, p.transform(group.resolution_m), NODATA[group.sensor])
            assert by_member[member] == direct, member


def test_pixel_values_realistic_and_distinct(fixture_data: Fixture) -> None:
    seen: Dict[Tuple[int, ...], str] = {}
    for p in fixture_data.patches:
        for band, values in p.bands.items():
            if band in SENSOR_BANDS["s2"]:
                assert 35 <= values.min() and values.max() <= 10_000 and values.min() > 0
            else:
                low, high = {"VV": (-25, 10), "VH": (-35, 2)}[band]
                assert low <= values.min() and values.max() <= high
                assert np.mean(values != np.round(values)) > 0.9  # fractional dB
            key = (values.shape, values.tobytes())
            assert key not in seen, f"{p.patch_id} {band} duplicates {seen.get(key)}"
            seen[key] = f"{p.patch_id} {band}"
        assert p.bands["VH"].mean() < p.bands["VV"].mean()


# --------------------------------------------------------------------------- parquet


def test_parquet_schema_and_metadata(fixture_data: Fixture) -> None:
    f = pq.ParquetFile(fixture_data.parquet)
    schema = f.schema_arrow
    assert schema.remove_metadata() == PARQUET_SCHEMA
    assert {k: v for k, v in schema.metadata.items() if k in SYNTHETIC_METADATA} == SYNTHETIC_METADATA
    assert f.metadata.num_row_groups > 3
    table = f.read()
    assert table.equals(fixture_data.table)
    assert all(table.column(c).null_count == 0 for c in table.column_names)


def test_parquet_rows(fixture_data: Fixture) -> None:
    t = fixture_data.table.to_pylist()
    ids = [r["ID"] for r in t]
    assert len(set(ids)) == len(ids)
    by_patch: Dict[str, List[dict]] = {}
    for i, r in enumerate(t):
        by_patch.setdefault(r["patch_id"], []).append({**r, "pos": i})
    for pid, rows in by_patch.items():
        p = fixture_data.patch(pid)
        assert p.rows == len(rows)
        columns = ("s1_name", "split", "country", "season", "climate_zone", "latitude", "longitude")
        assert {tuple(r[c] for c in columns) for r in rows} == {
            (p.s1_name, p.split, p.country, p.season, p.climate_zone, p.latitude, p.longitude)
        }
        positions = sorted(r["pos"] for r in rows)
        assert positions[-1] - positions[0] + 1 > len(rows)  # shuffled: a patch's rows are not contiguous
        if pid != REAL_PATCH_ID:
            got = sorted(r["ID"] for r in rows)
            assert got == list(range(got[0], got[0] + len(got)))
    splits = {s: {p.patch_id for p in fixture_data.patches if p.split == s} for s in ("train", "validation", "test", "bench")}
    assert all(splits.values()) and len(splits["train"]) >= 2 and len(splits["test"]) >= 2
    assert any(not p.has_caption for p in fixture_data.patches if p.split == "bench")
    for p in fixture_data.patches:
        caption = [r for r in by_patch[p.patch_id] if r["type"] == "captioning"]
        assert len(caption) == int(p.has_caption)
        assert all(r["category"] == "None" for r in caption)
    assert len({p.country for p in fixture_data.patches}) >= 3 and len({p.season for p in fixture_data.patches}) >= 3
    assert len({p.climate_zone for p in fixture_data.patches}) >= 3
    categories = {(r["type"], r["category"]) for r in t}
    assert categories == {
        *(("binary", c) for c in ("presence", "area", "count", "adjacency")),
        *(("mcq", c) for c in ("presence", "area", "count", "adjacency", "relative pos", "country", "season", "climate zone")),
        ("bounding box", "point"), ("bounding box", "reference"), ("captioning", "None"),
    }


def test_answer_formats(fixture_data: Fixture) -> None:
    for r in fixture_data.table.to_pylist():
        if r["type"] == "binary":
            assert r["output"] in ("yes", "no")
        elif r["type"] == "mcq":
            assert r["output"] in tuple("abcd")
            assert re.findall(r"\b([a-d])\) ", r["input"])[-4:] == list("abcd") and "\n" not in r["input"]
        elif r["type"] == "bounding box":
            m = BOX_RE.match(r["output"])
            assert m, r["output"]
            x0, y0, x1, y1 = map(float, m.groups())
            assert all(repr(v) == s for v, s in zip((x0, y0, x1, y1), m.groups()))  # minimal float repr
            assert all(abs(v * 100 - round(v * 100)) < 1e-9 for v in (x0, y0, x1, y1))  # 0.01 grid
            assert 0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1
            point = POINT_RE.search(r["input"])
            assert (point is not None) == (r["category"] == "point")
            if point:
                px, py = map(float, point.groups())
                assert x0 <= px <= x1 and y0 <= py <= y1
            else:
                assert re.search(r"<ref>[^<]+</ref>", r["input"])


def test_real_patch_rows(fixture_data: Fixture) -> None:
    rows = sorted((r for r in fixture_data.table.to_pylist() if r["patch_id"] == REAL_PATCH_ID), key=lambda r: r["ID"])
    assert [(r["ID"], r["type"], r["category"], r["input"], r["output"]) for r in rows] == list(REAL_ROWS)
    r = rows[0]
    assert (r["s1_name"], r["split"], r["latitude"], r["longitude"]) == (
        REAL_S1_NAME, "test", 48.31398981125651, 13.297826045662056
    )
    assert (r["country"], r["season"], r["climate_zone"]) == ("Austria", "Summer", "Temperate, no dry season, warm summer")
    caption = next(r["output"] for r in rows if r["type"] == "captioning")
    assert caption.startswith(
        'This satellite image, captured during the summer season in Austria, showcases a diverse landscape within '
        'the "temperate, no dry season, warm summer" climate zone. The dominant feature is the broad-leaved forest, '
        'covering approximately 586,000 square meters,'
    )
    assert 80 <= len(caption.split()) <= 130
    m = fixture_data.patch(REAL_PATCH_ID).reference_map
    assert np.count_nonzero(m == 311) * 100 == 586_000


def test_latlon_is_the_patch_centre(fixture_data: Fixture) -> None:
    """Published lat/lon = patch centre; the real patch confirms the grid rule UL + 1200 * (x, -y)."""
    for p in fixture_data.patches:
        t = p.transform(10)
        lon, lat = rasterio.warp.transform(f"EPSG:{p.epsg}", "EPSG:4326", [t.c + 600], [t.f - 600])
        assert (p.latitude, p.longitude) == (lat[0], lon[0])
    real = fixture_data.patch(REAL_PATCH_ID)
    assert real.ul == (300_000 + 1200 * 61, 5_400_000 - 1200 * 39)


def _regions(m: np.ndarray) -> List[Tuple[str, Set[Tuple[int, int]]]]:
    """4-connected regions of equal 19-class name."""
    cls = np.vectorize(CLASS_OF_CODE.get)(m)
    seen = np.zeros(m.shape, bool)
    out = []
    for start in zip(*np.nonzero(~seen)):
        if seen[start]:
            continue
        name, pixels, queue = cls[start], set(), deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            pixels.add((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < m.shape[0] and 0 <= cc < m.shape[1] and not seen[rr, cc] and cls[rr, cc] == name:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append((str(name), pixels))
    return out


def _box(pixels: Set[Tuple[int, int]]) -> str:
    rows, cols = [p[0] for p in pixels], [p[1] for p in pixels]
    x0, y0 = (100 * min(cols)) // 120, (100 * min(rows)) // 120
    x1, y1 = -((-100 * (max(cols) + 1)) // 120), -((-100 * (max(rows) + 1)) // 120)
    return f"[{x0 / 100} {y0 / 100}, {x1 / 100} {y1 / 100}]"


def test_boxes_are_regions_of_the_reference_map(fixture_data: Fixture) -> None:
    """Boxes must be the extent of a connected region containing the point, as in the real data."""
    rows = fixture_data.table.to_pylist()
    for p in fixture_data.patches:
        regions = _regions(np.asarray(p.reference_map))
        for r in rows:
            if r["patch_id"] != p.patch_id or r["type"] != "bounding box":
                continue
            point = POINT_RE.search(r["input"])
            if point:
                px, py = map(float, point.groups())
                pixel = (int(py * 120), int(px * 120))
                region = next(pix for _, pix in regions if pixel in pix)
                assert _box(region) == r["output"], (p.patch_id, r["input"])
            else:
                name = re.search(r"<ref>(?:largest connected region of )?([^<]+)</ref>", r["input"]).group(1)
                boxes = [_box(pix) for n, pix in regions if n.lower() == name.lower()]
                assert r["output"] in boxes, (p.patch_id, r["input"], boxes)


# --------------------------------------------------------------------------- roles, determinism, LMDB, sample


def test_determinism(fixture_data: Fixture, tmp_path: Path) -> None:
    again = make_fixture(tmp_path / "again", seed=0)
    for key, path in {**fixture_data.archives, "parquet": fixture_data.parquet}.items():
        other = {**again.archives, "parquet": again.parquet}[key]
        assert path.read_bytes() == other.read_bytes(), key
    other_seed = make_fixture(tmp_path / "seed1", seed=1)
    assert other_seed.s2_archive.read_bytes() != fixture_data.s2_archive.read_bytes()
    assert [p.patch_id for p in other_seed.patches] == [p.patch_id for p in fixture_data.patches]


def test_join_roles_and_extra_patches(fixture_data: Fixture, tmp_path: Path) -> None:
    named = fixture_data.patches[2].patch_id
    fx = make_fixture(tmp_path / "roles", n_extra_patches=5, archive_only=2, text_only=[named])
    assert len(fx.patches) == len(fixture_data.patches) + 5 + 2
    archive_only = [p for p in fx.patches if p.rows == 0]
    text_only = [p for p in fx.patches if not p.in_archives]
    assert len(archive_only) == 2 and [p.patch_id for p in text_only] == [named]
    table_ids = set(fx.table.column("patch_id").to_pylist())
    assert not {p.patch_id for p in archive_only} & table_ids and named in table_ids
    members = {m.name for m, _ in read_archive(fx.s2_archive)} | {m.name for m, _ in read_archive(fx.s1_archive)}
    for p in archive_only:
        assert band_path("s2", p.patch_id, "B02") in members and band_path("s1", p.s1_name, "VV") in members
    assert not any(named in m for m in members)
    assert not any(fixture_data.patch(named).s1_name in m for m in members)
    # default patches keep their values when patches are added
    np.testing.assert_array_equal(fx.patch(REAL_PATCH_ID).bands["B04"], fixture_data.patch(REAL_PATCH_ID).bands["B04"])


def test_lmdb_records(fixture_data: Fixture, fixture_lmdb: Path) -> None:
    import lmdb
    from safetensors.numpy import load

    env = lmdb.open(str(fixture_lmdb), readonly=True, lock=False)
    with env.begin() as txn:
        records = {k.decode(): load(bytes(v)) for k, v in txn.cursor()}
    env.close()
    expected = {p.patch_id for p in fixture_data.archived_patches} | {p.s1_name for p in fixture_data.archived_patches}
    expected |= {f"{p.patch_id}_reference_map" for p in fixture_data.archived_patches}
    assert set(records) == expected
    for p in fixture_data.archived_patches:
        assert set(records[p.patch_id]) == set(SENSOR_BANDS["s2"]) and set(records[p.s1_name]) == set(SENSOR_BANDS["s1"])
        for band, values in p.bands.items():
            got = records[p.patch_id if band in SENSOR_BANDS["s2"] else p.s1_name][band]
            assert got.dtype == values.dtype
            np.testing.assert_array_equal(got, values)
        np.testing.assert_array_equal(records[f"{p.patch_id}_reference_map"]["Data"], p.reference_map)


def test_sample_is_small_and_marked(tmp_path: Path) -> None:
    fx = make_fixture(tmp_path / "sample", sample=True)
    assert "synthetic" in (tmp_path / "sample" / SYNTHETIC_MD).read_text().lower()
    assert sum(f.stat().st_size for f in (tmp_path / "sample").iterdir()) < 2_000_000
    assert fx.sample
    assert pq.read_schema(fx.parquet).metadata[b"synthetic"] == b"true"
