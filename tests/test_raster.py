"""Tests for bentxt.imagery.raster: GeoTIFF decoding and torch-compatible resampling.

Fixtures are written with rasterio in the layouts of the real release
(docs/release.md#geotiff-properties); a small hand-made TIFF writer covers layouts GDAL does not
produce by default (big-endian, strips out of order, unpadded last strip,
corrupt byte counts). Resampling is checked against plain-Python loops that
follow PyTorch's documented formulas, and against torch itself when installed.
"""

from __future__ import annotations

import math
import struct
import warnings
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from bentxt.imagery import raster
from bentxt.bands import BAND_COMBINATIONS, BAND_GROUPS, GROUP_OF_BAND, NODATA, BandGroup
from bentxt.imagery.raster import RESAMPLE_MODES, RasterError, check_band, decode_geotiff, resample, stack_groups, stack_image

# --------------------------------------------------------------------------- #
# Fixtures: GeoTIFFs in the real layouts
# --------------------------------------------------------------------------- #

#: rows per strip of the released files (docs/release.md#geotiff-properties)
ROWS_PER_STRIP = {"s2_10m": 34, "s2_20m": 60, "s2_60m": 20, "s1": 17}
#: byte sizes of the released S2 files; GDAL reproduces them exactly
S2_FILE_BYTES = {"s2_10m": 29_196, "s2_20m": 7_572, "s2_60m": 1_172}

WHERE = "patch S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57 band B02 in BigEarthNet-S2.tar.zst"


def write_geotiff(array: np.ndarray, resolution: int = 10, **profile: object) -> bytes:
    """An in-memory GeoTIFF (EPSG:32633, north-up) of a 2-D or (bands, h, w) array."""
    bands = array[None] if array.ndim == 2 else array
    options = dict(
        driver="GTiff",
        count=bands.shape[0],
        height=bands.shape[1],
        width=bands.shape[2],
        dtype=bands.dtype,
        crs=CRS.from_epsg(32633),
        transform=Affine(resolution, 0, 300_000, 0, -resolution, 5_000_000),
    )
    options.update(profile)
    with MemoryFile() as memfile:
        with memfile.open(**options) as dataset:
            dataset.write(bands)
        return memfile.read()


def read_rasterio(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as memfile, memfile.open() as dataset:
            return dataset.read(1)


def band_values(group: BandGroup, seed: int = 0) -> np.ndarray:
    """Plausible pixels: S2 reflectance with nodata zeros and the dtype's extremes, S1 dB."""
    rng = np.random.default_rng(seed)
    shape = (group.size, group.size)
    if group.sensor == "s1":
        return rng.normal(-12.0, 5.0, shape).astype(group.dtype)
    values = rng.integers(0, 10_000, shape).astype(group.dtype)
    values[0, :3] = 0
    values[-1, -1] = np.iinfo(values.dtype).max
    return values


def real_layout_tiff(group: BandGroup, values: Optional[np.ndarray] = None) -> bytes:
    values = band_values(group) if values is None else values
    return write_geotiff(
        values,
        resolution=group.resolution_m,
        blockysize=ROWS_PER_STRIP[group.name],
        nodata=NODATA[group.sensor],
    )


def handmade_tiff(
    array: np.ndarray,
    rows_per_strip: int,
    order: str = "<",
    strip_order: Optional[Sequence[int]] = None,
    byte_counts: Optional[List[int]] = None,
    samples_per_pixel: int = 1,
) -> bytes:
    """A minimal baseline TIFF (no GeoTIFF tags) with full control over the strip layout."""
    height, width = array.shape[:2]
    file_dtype = array.dtype.newbyteorder(order)
    strips = [array[r : r + rows_per_strip].astype(file_dtype).tobytes() for r in range(0, height, rows_per_strip)]
    n_strips = len(strips)
    sample_format = {"u": 1, "i": 2, "f": 3}[array.dtype.kind]
    n_tags = 11
    arrays_at = 8 + 2 + 12 * n_tags + 4
    data_at = arrays_at + (8 * n_strips if n_strips > 1 else 0)
    offsets = [0] * n_strips
    blob = b""
    for i in strip_order if strip_order is not None else range(n_strips):
        offsets[i] = data_at + len(blob)
        blob += strips[i]
    counts = byte_counts if byte_counts is not None else [len(s) for s in strips]

    def entry(tag: int, field_type: int, values: Sequence[int], pointer: int = 0) -> bytes:
        fmt = {3: "H", 4: "I"}[field_type]
        head = struct.pack(order + "HHI", tag, field_type, len(values))
        if struct.calcsize(fmt) * len(values) <= 4:
            return head + struct.pack(order + fmt * len(values), *values).ljust(4, b"\0")
        return head + struct.pack(order + "I", pointer)

    ifd = struct.pack(order + "H", n_tags) + b"".join(
        [
            entry(256, 4, [width]),
            entry(257, 4, [height]),
            entry(258, 3, [array.dtype.itemsize * 8] * samples_per_pixel, 0),
            entry(259, 3, [1]),
            entry(262, 3, [1]),
            entry(273, 4, offsets, arrays_at),
            entry(277, 3, [samples_per_pixel]),
            entry(278, 4, [rows_per_strip]),
            entry(279, 4, counts, arrays_at + 4 * n_strips),
            entry(284, 3, [1]),
            entry(339, 3, [sample_format] * samples_per_pixel, 0),
        ]
    ) + struct.pack(order + "I", 0)
    out_of_line = struct.pack(order + "I" * n_strips, *offsets) + struct.pack(order + "I" * n_strips, *counts)
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)
    return header + ifd + (out_of_line if n_strips > 1 else b"") + blob


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of the rasterio fallback fail the test."""

    def fail(data: object, where: str) -> np.ndarray:
        raise AssertionError("decode_geotiff fell back to rasterio")

    monkeypatch.setattr(raster, "_decode_rasterio", fail)


# --------------------------------------------------------------------------- #
# decode_geotiff: fast path
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("group", BAND_GROUPS, ids=lambda g: g.name)
def test_fixture_has_the_real_layout(group: BandGroup) -> None:
    data = real_layout_tiff(group)
    with MemoryFile(data) as memfile, memfile.open() as dataset:
        assert dataset.block_shapes == [(ROWS_PER_STRIP[group.name], group.size)]
        assert dataset.compression is None
        assert dataset.nodata == NODATA[group.sensor]
        assert dataset.crs.to_epsg() == 32633
        assert dataset.res == (group.resolution_m, group.resolution_m)
    if group.name in S2_FILE_BYTES:
        assert len(data) == S2_FILE_BYTES[group.name]


@pytest.mark.parametrize("group", BAND_GROUPS, ids=lambda g: g.name)
def test_fast_path_equals_rasterio(group: BandGroup, no_fallback: None) -> None:
    data = real_layout_tiff(group)
    expected = read_rasterio(data)
    fast = raster._decode_fast(data, WHERE)
    assert fast is not None, "the fast path declined a real-layout file"
    assert fast.dtype == expected.dtype == np.dtype(group.dtype)
    np.testing.assert_array_equal(fast, expected)
    decoded = decode_geotiff(data, WHERE)
    np.testing.assert_array_equal(decoded, expected)
    assert check_band(decoded, group.bands[0], WHERE) is decoded


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_result_is_writable_and_independent_of_input(wrap: type, no_fallback: None) -> None:
    group = GROUP_OF_BAND["B02"]
    values = band_values(group)
    buffer = wrap(real_layout_tiff(group, values))
    decoded = decode_geotiff(buffer, WHERE)
    assert decoded.flags.writeable and decoded.flags.owndata
    decoded[:] = 7  # must not touch the input
    np.testing.assert_array_equal(decode_geotiff(buffer, WHERE), values)


def test_layout_cache_never_returns_stale_pixels(no_fallback: None) -> None:
    group = GROUP_OF_BAND["VV"]
    for seed in range(3):
        values = band_values(group, seed)
        np.testing.assert_array_equal(decode_geotiff(real_layout_tiff(group, values), WHERE), values)


def test_same_ifd_bytes_with_other_strip_positions() -> None:
    """Two files whose IFDs are byte-identical but whose strip offset arrays differ."""
    values = np.arange(12 * 5, dtype=np.uint16).reshape(12, 5)
    in_order = handmade_tiff(values, 3)
    reversed_strips = handmade_tiff(values, 3, strip_order=[3, 2, 1, 0])
    assert in_order[:8 + 2 + 12 * 11] == reversed_strips[:8 + 2 + 12 * 11]
    for data in (in_order, reversed_strips, in_order):
        np.testing.assert_array_equal(raster._decode_fast(data), values)
        np.testing.assert_array_equal(read_rasterio(data), values)


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"])
@pytest.mark.parametrize(
    "rows_per_strip, strip_order",
    [(7, None), (7, [2, 0, 1]), (20, None), (3, list(reversed(range(7))))],
    ids=["unpadded-last-strip", "strips-out-of-order", "one-strip", "many-reversed"],
)
def test_fast_path_handmade_layouts(
    order: str, dtype: str, rows_per_strip: int, strip_order: Optional[List[int]]
) -> None:
    rng = np.random.default_rng(1)
    values = (rng.normal(0, 1000, (20, 9))).astype(dtype)
    data = handmade_tiff(values, rows_per_strip, order=order, strip_order=strip_order)
    fast = raster._decode_fast(data, WHERE)
    assert fast is not None
    assert fast.dtype == np.dtype(dtype) and fast.dtype.isnative
    np.testing.assert_array_equal(fast, values)
    np.testing.assert_array_equal(read_rasterio(data), values)


# --------------------------------------------------------------------------- #
# decode_geotiff: fallback
# --------------------------------------------------------------------------- #


def test_reference_map_deflate_predictor_falls_back() -> None:
    codes = np.random.default_rng(2).choice([211, 231, 311, 313], (120, 120)).astype(np.uint16)
    data = write_geotiff(codes, blockysize=34, nodata=0, compress="deflate", predictor=2)
    assert raster._decode_fast(data, WHERE) is None
    decoded = decode_geotiff(data, WHERE)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, codes)


@pytest.mark.parametrize(
    "profile",
    [
        dict(tiled=True, blockxsize=16, blockysize=16),
        dict(compress="lzw"),
        dict(compress="deflate", predictor=3),
    ],
    ids=["tiled", "lzw", "deflate-float-predictor"],
)
def test_other_layouts_fall_back(profile: Dict[str, object]) -> None:
    values = np.random.default_rng(3).normal(size=(32, 48)).astype(np.float32)
    data = write_geotiff(values, **profile)
    assert raster._decode_fast(data) is None
    np.testing.assert_array_equal(decode_geotiff(data, WHERE), values)


def test_bigtiff_falls_back() -> None:
    values = np.arange(400, dtype=np.uint16).reshape(20, 20)
    data = write_geotiff(values, BIGTIFF="YES")
    assert data[:4] == b"II+\x00"
    np.testing.assert_array_equal(decode_geotiff(data, WHERE), values)


# --------------------------------------------------------------------------- #
# decode_geotiff: the fast path declines what it does not fully understand
# --------------------------------------------------------------------------- #

Entry = Tuple[int, int, int, int]


def ifd_of(data: bytes) -> Tuple[List[Entry], int]:
    """The first IFD of a little-endian TIFF: (tag, type, count, value-or-offset) entries and the next IFD's offset."""
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    entries = [struct.unpack_from("<HHII", data, ifd + 2 + 12 * i) for i in range(n)]
    return entries, struct.unpack_from("<I", data, ifd + 2 + 12 * n)[0]


def with_ifd(data: bytes, entries: Sequence[Entry], next_ifd: int = 0) -> bytes:
    """``data`` with a new first IFD appended at its end; out-of-line values keep their offsets, the old IFD is unused."""
    body = bytearray(data) + b"\0" * (len(data) % 2)
    at = len(body)
    body += struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    body += struct.pack("<I", next_ifd)
    body[4:8] = struct.pack("<I", at)
    return bytes(body)


def with_entry(data: bytes, entry: Entry) -> bytes:
    """One more IFD entry, in tag order."""
    entries, _ = ifd_of(data)
    return with_ifd(data, sorted(entries + [entry], key=lambda e: e[0]))


def assert_decodes_like_rasterio(data: bytes) -> Optional[np.ndarray]:
    """decode_geotiff gives rasterio's array (dtype included), or both fail."""
    try:
        expected = read_rasterio(data)
    except Exception:  # noqa: BLE001 - whatever GDAL refuses, we must refuse too
        with pytest.raises(RasterError, match="patch S2A_"):
            decode_geotiff(data, WHERE)
        return None
    decoded = decode_geotiff(data, WHERE)
    assert decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)
    return decoded


def test_duplicated_sample_format_is_read_as_gdal_reads_it() -> None:
    """GDAL keeps the first of two SampleFormat entries (uint32); the fast path used the last and read float32."""
    data = real_layout_tiff(GROUP_OF_BAND["VV"])
    entries, _ = ifd_of(data)
    entries = [e for e in entries if e[0] != 339]
    duplicated = with_ifd(data, sorted(entries + [(339, 3, 1, 1), (339, 3, 1, 3)], key=lambda e: e[0]))
    assert raster._decode_fast(duplicated, WHERE) is None
    decoded = assert_decodes_like_rasterio(duplicated)
    assert decoded.dtype == np.uint32


@pytest.mark.parametrize(
    "tag, value",
    [(256, 60), (257, 1), (258, 8), (278, 120), (259, 1), (262, 1)],
    ids=["width", "height", "bits", "rows-per-strip", "compression-same-value", "photometric-same-value"],
)
def test_any_duplicated_tag_falls_back(tag: int, value: int) -> None:
    data = real_layout_tiff(GROUP_OF_BAND["B02"])
    entries, _ = ifd_of(data)
    first = next(i for i, e in enumerate(entries) if e[0] == tag)
    duplicated = with_ifd(data, entries[: first + 1] + [(tag, 3, 1, value)] + entries[first + 1 :])
    assert raster._decode_fast(duplicated, WHERE) is None
    assert_decodes_like_rasterio(duplicated)


def test_tags_out_of_order_fall_back() -> None:
    data = real_layout_tiff(GROUP_OF_BAND["B02"])
    entries, _ = ifd_of(data)
    shuffled = with_ifd(data, [entries[1], entries[0]] + entries[2:])
    assert raster._decode_fast(shuffled, WHERE) is None
    assert_decodes_like_rasterio(shuffled)


@pytest.mark.parametrize(
    "entry",
    [
        (274, 3, 1, 3),  # Orientation: rotated 180 degrees
        (266, 3, 1, 2),  # FillOrder: bits reversed (GDAL reads other pixels)
        (317, 3, 1, 2),  # Predictor without compression
        (338, 3, 1, 0),  # ExtraSamples
        (254, 4, 1, 1),  # NewSubfileType: a reduced-resolution image
        (330, 4, 1, 8),  # SubIFDs
        (42112, 2, 4, 8),  # GDAL_METADATA
        (65000, 3, 1, 7),  # a private tag
    ],
    ids=["orientation", "fill-order", "predictor", "extra-samples", "new-subfile-type", "sub-ifds", "gdal-metadata",
         "private-tag"],
)
def test_tags_the_fast_path_does_not_interpret_fall_back(entry: Entry) -> None:
    data = with_entry(real_layout_tiff(GROUP_OF_BAND["B02"]), entry)
    assert raster._decode_fast(data, WHERE) is None
    assert_decodes_like_rasterio(data)


def test_harmless_tags_stay_on_the_fast_path(no_fallback: None) -> None:
    values = band_values(GROUP_OF_BAND["B02"])
    data = real_layout_tiff(GROUP_OF_BAND["B02"], values)
    for entry in [(254, 4, 1, 0), (274, 3, 1, 1), (296, 3, 1, 2), (305, 2, 4, 8), (33432, 2, 4, 8)]:
        data = with_entry(data, entry)
    np.testing.assert_array_equal(decode_geotiff(data, WHERE), values)


def test_a_second_ifd_falls_back() -> None:
    data = real_layout_tiff(GROUP_OF_BAND["B02"])
    entries, _ = ifd_of(data)
    two = with_ifd(data, entries, next_ifd=struct.unpack_from("<I", data, 4)[0])
    assert raster._decode_fast(two, WHERE) is None
    assert_decodes_like_rasterio(two)


def _with_strip_table(data: bytes, tag: int, values: Sequence[int], count: Optional[int] = None) -> bytes:
    """``data`` with the StripOffsets or StripByteCounts array replaced by ``values``, appended at the end."""
    entries, _ = ifd_of(data)
    at = len(data) + len(data) % 2
    data = data + b"\0" * (len(data) % 2) + struct.pack(f"<{len(values)}I", *values)
    entries = [(t, 4, len(values) if count is None else count, at) if t == tag else (t, ty, c, v) for t, ty, c, v in entries]
    return with_ifd(data, entries)


@pytest.mark.parametrize(
    "tag, values, count",
    [
        (279, [8160, 8161, 8160, 4320], None),  # one strip a byte too long
        (279, [8160, 8160, 8160, 4321], None),  # the last strip too long, but not a whole strip
        (279, [8160, 8160, 8160, 4320], 3),  # fewer byte counts than strips
        (273, [0, 1000, 9000, 17000], None),  # offset 0 means "not written" to GDAL
    ],
    ids=["long-strip", "long-last-strip", "count-mismatch", "zero-offset"],
)
def test_inconsistent_strip_tables_fall_back(tag: int, values: List[int], count: Optional[int]) -> None:
    data = real_layout_tiff(GROUP_OF_BAND["B02"])
    changed = _with_strip_table(data, tag, values, count)
    assert raster._decode_fast(changed, WHERE) is None
    assert_decodes_like_rasterio(changed)


def test_a_padded_last_strip_stays_on_the_fast_path(no_fallback: None) -> None:
    """Some writers pad the last strip to a whole one; its byte count then covers rows that are not in the image."""
    values = band_values(GROUP_OF_BAND["B02"])
    data = real_layout_tiff(GROUP_OF_BAND["B02"], values) + bytes(16 * 240)
    padded = _with_strip_table(data, 279, [8160, 8160, 8160, 8160])
    np.testing.assert_array_equal(decode_geotiff(padded, WHERE), values)
    np.testing.assert_array_equal(read_rasterio(padded), values)


#: tags worth writing into a mutated entry: every tag the fast path reads, some it must refuse, and junk
_FUZZ_TAGS = [0, 254, 256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 284, 317, 322, 330, 338, 339,
              33550, 34735, 42112, 42113, 65535]
_FUZZ_BASES: Dict[str, bytes] = {}


def _fuzz_base(group: BandGroup) -> bytes:
    if group.name not in _FUZZ_BASES:
        _FUZZ_BASES[group.name] = real_layout_tiff(group, band_values(group, seed=5))
    return _FUZZ_BASES[group.name]


@st.composite
def mutated_tiffs(draw) -> bytes:
    """A real-layout band file whose header (IFD, strip tables, GeoTIFF tags) got 1-4 targeted edits."""
    data = bytearray(_fuzz_base(draw(st.sampled_from(BAND_GROUPS))))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    entries, _ = ifd_of(bytes(data))
    pixels_at = min(v for t, _, _, v in entries if t == 273)  # StripOffsets[0] or the offsets array
    header_end = max(ifd + 2 + 12 * n + 4, pixels_at)
    for _ in range(draw(st.integers(1, 4))):
        at = ifd + 2 + 12 * draw(st.integers(0, n - 1))
        edit = draw(st.sampled_from(["byte", "tag", "type", "count", "value", "duplicate", "next-ifd"]))
        if edit == "byte":
            data[draw(st.integers(0, header_end - 1))] = draw(st.integers(0, 255))
        elif edit == "tag":
            struct.pack_into("<H", data, at, draw(st.sampled_from(_FUZZ_TAGS) | st.integers(0, 65535)))
        elif edit == "type":
            struct.pack_into("<H", data, at + 2, draw(st.integers(0, 13) | st.just(16)))
        elif edit == "count":
            struct.pack_into("<I", data, at + 4, draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 9]) | st.integers(0, 2**32 - 1)))
        elif edit == "value":
            value = st.sampled_from([0, 1, 2, 3, 8, 16, 17, 20, 32, 34, 60, 119, 120, 121, len(data)])
            struct.pack_into("<I", data, at + 8, draw(value | st.integers(0, len(data)) | st.integers(0, 2**32 - 1)))
        elif edit == "duplicate":  # another entry's tag with this entry's value: which one wins?
            other = ifd + 2 + 12 * draw(st.integers(0, n - 1))
            data[at : at + 2] = data[other : other + 2]
        else:
            struct.pack_into("<I", data, ifd + 2 + 12 * n, draw(st.sampled_from([0, 8, ifd]) | st.integers(0, len(data))))
    return bytes(data)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(mutated_tiffs())
def test_fast_path_agrees_with_rasterio_on_mutated_headers(data: bytes) -> None:
    """The fast path returns rasterio's exact array, declines, or raises RasterError; never other pixels.

    One allowance: rasterio also decodes the CRS name (GeoAsciiParams) and
    fails when it is not UTF-8; the pixels do not depend on it.
    """
    try:
        fast = raster._decode_fast(data, WHERE)
    except RasterError as err:
        assert str(err).startswith(WHERE)
        return
    if fast is None:
        return  # decode_geotiff hands the file to rasterio
    try:
        expected = raster._decode_rasterio(data, WHERE)
    except RasterError as err:
        assert isinstance(err.__cause__, UnicodeDecodeError), f"the fast path decoded a file GDAL refuses: {err}"
        return
    assert (fast.dtype, fast.shape) == (expected.dtype, expected.shape)
    assert fast.tobytes() == expected.tobytes()


def test_max_band_file_bytes_is_far_above_the_real_files() -> None:
    for group in BAND_GROUPS:
        real = len(real_layout_tiff(group))
        for band in group.bands:
            limit = raster.max_band_file_bytes(band)
            assert limit == 2 * group.size**2 * np.dtype(group.dtype).itemsize + 65_536
            assert real < limit < 4 * real + 65_536
    assert raster.max_band_file_bytes("B02") == 123_136
    assert raster.max_band_file_bytes("VV") == 180_736
    with pytest.raises(ValueError, match="unknown band 'B10'"):
        raster.max_band_file_bytes("B10")


def test_a_huge_image_in_the_fallback_is_refused_before_it_is_read() -> None:
    """A 1 kB header may claim a 100,000 x 100,000 image: rasterio would allocate 20 GB for it."""
    data = handmade_tiff(np.zeros((4, 4), np.uint16), 4)
    entries, _ = ifd_of(data)
    huge = with_ifd(data, [(t, 4, 1, 100_000) if t in (256, 257) else (t, ty, c, v) for t, ty, c, v in entries]
                    + [(65000, 3, 1, 1)])
    with pytest.raises(RasterError, match=r"a 100000x100000 uint16 image \(20000000000 bytes decoded\) is far larger"):
        decode_geotiff(huge, WHERE)


# --------------------------------------------------------------------------- #
# decode_geotiff: errors
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "data",
    [b"", b"II", b"hello, world", b"\x89PNG\r\n\x1a\n" + bytes(64), b"<html>not found</html>"],
    ids=["empty", "two-bytes", "text", "png", "html"],
)
def test_not_a_tiff(data: bytes) -> None:
    with pytest.raises(RasterError, match="not a TIFF") as info:
        decode_geotiff(data, WHERE)
    message = str(info.value)
    assert WHERE in message
    assert f"({len(data)} bytes; they do not start with a TIFF header)" in message
    if len(data) > 2:
        assert repr(data[:16]) not in message and data[2:8].decode("latin-1") not in message


def test_not_a_tiff_message_never_quotes_the_file() -> None:
    """A band path linked to /etc/passwd must not put the password file into logs and issues."""
    passwd = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    with pytest.raises(RasterError) as info:
        decode_geotiff(passwd, WHERE)
    assert str(info.value) == f"{WHERE}: not a TIFF file ({len(passwd)} bytes; they do not start with a TIFF header)"
    assert "root" not in str(info.value)


def test_png_is_not_decoded_even_though_gdal_could() -> None:
    with MemoryFile() as memfile:
        with memfile.open(
            driver="PNG", width=4, height=4, count=1, dtype="uint8", transform=Affine(10, 0, 0, 0, -10, 0)
        ) as dataset:
            dataset.write(np.ones((1, 4, 4), np.uint8))
        png = memfile.read()
    with pytest.raises(RasterError, match="not a TIFF"):
        decode_geotiff(png, WHERE)


@pytest.mark.parametrize("keep", [5, 8, 20, 200, 1000, 20_000, 29_195], ids=lambda n: f"first-{n}-bytes")
def test_truncated_uncompressed_file(keep: int) -> None:
    data = real_layout_tiff(GROUP_OF_BAND["B02"])[:keep]
    with pytest.raises(RasterError) as info:
        decode_geotiff(data, WHERE)
    assert WHERE in str(info.value)
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_compressed_file(fraction: float) -> None:
    values = np.random.default_rng(4).integers(0, 10_000, (120, 120)).astype(np.uint16)
    data = write_geotiff(values, blockysize=34, compress="deflate", predictor=2)
    with pytest.raises(RasterError, match="patch S2A_"):
        decode_geotiff(data[: int(len(data) * fraction)], WHERE)


@pytest.mark.parametrize("byte_counts", [[30, 30, 29, 30], [30, 30, 0, 30]], ids=["short", "sparse"])
def test_strips_with_too_few_bytes_are_left_to_gdal(byte_counts: List[int]) -> None:
    """GDAL reads a short strip anyway and fills a sparse (0-byte) one with nodata."""
    values = np.arange(60, dtype=np.uint16).reshape(12, 5) + 1
    data = handmade_tiff(values, 3, byte_counts=byte_counts)
    assert raster._decode_fast(data, WHERE) is None
    np.testing.assert_array_equal(decode_geotiff(data, WHERE), read_rasterio(data))


@pytest.mark.parametrize("interleave", ["band", "pixel"])
def test_multi_band_file(interleave: str) -> None:
    values = np.arange(2 * 20 * 20, dtype=np.uint16).reshape(2, 20, 20)
    data = write_geotiff(values, interleave=interleave)
    assert raster._decode_fast(data) is None
    with pytest.raises(RasterError, match="2 bands") as info:
        decode_geotiff(data, WHERE)
    assert WHERE in str(info.value)


def test_error_without_where_still_reads_well() -> None:
    with pytest.raises(RasterError, match="GeoTIFF data: not a TIFF"):
        decode_geotiff(b"nope")


# --------------------------------------------------------------------------- #
# check_band
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "band, array, found",
    [
        ("B02", np.zeros((120, 120), np.float32), "float32"),
        ("B02", np.zeros((60, 60), np.uint16), "(60, 60)"),
        ("B05", np.zeros((120, 120), np.uint16), "(120, 120)"),
        ("B01", np.zeros((1, 20, 20), np.uint16), "(1, 20, 20)"),
        ("VV", np.zeros((120, 120), np.uint16), "uint16"),
    ],
)
def test_check_band_rejects(band: str, array: np.ndarray, found: str) -> None:
    group = GROUP_OF_BAND[band]
    with pytest.raises(RasterError) as info:
        check_band(array, band, WHERE)
    message = str(info.value)
    for part in (WHERE, f"band {band}", f"{group.size}x{group.size}", group.dtype, found):
        assert part in message


def test_check_band_unknown_band() -> None:
    with pytest.raises(ValueError, match="unknown band 'B10'"):
        check_band(np.zeros((120, 120), np.uint16), "B10")


# --------------------------------------------------------------------------- #
# Resampling: independent plain-Python references of torch's formulas
# --------------------------------------------------------------------------- #


def reference_nearest(a: np.ndarray, out: int) -> np.ndarray:
    """PyTorch legacy nearest: src = min(floor(dst * scale), in - 1), scale = in / out in float32."""
    rows = a.astype(np.float32).tolist()
    n_in = a.shape[0]
    scale = np.float32(n_in) / np.float32(out)
    source = [min(int(math.floor(np.float32(i) * scale)), n_in - 1) for i in range(out)]
    result = [[rows[source[y]][source[x]] for x in range(out)] for y in range(out)]
    return np.array(result, dtype=np.float32)


def _corner_aligned(i: int, n_in: int, out: int):
    """align_corners=True: source coordinate i * (in - 1) / (out - 1), split into floor and fraction."""
    real = i * (n_in - 1) / (out - 1) if out > 1 else 0.0
    base = min(int(math.floor(real)), n_in - 1)
    return base, min(max(real - base, 0.0), 1.0)


def reference_bilinear(a: np.ndarray, out: int) -> np.ndarray:
    rows = a.astype(np.float64).tolist()
    n = a.shape[0]
    result = np.empty((out, out))
    for y in range(out):
        y0, ly = _corner_aligned(y, n, out)
        y1 = min(y0 + 1, n - 1)
        for x in range(out):
            x0, lx = _corner_aligned(x, n, out)
            x1 = min(x0 + 1, n - 1)
            top = (1 - lx) * rows[y0][x0] + lx * rows[y0][x1]
            bottom = (1 - lx) * rows[y1][x0] + lx * rows[y1][x1]
            result[y, x] = (1 - ly) * top + ly * bottom
    return result


def _keys_cubic(d: float, a: float = -0.75) -> float:
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def reference_bicubic(a: np.ndarray, out: int) -> np.ndarray:
    rows = a.astype(np.float64).tolist()
    n = a.shape[0]
    taps = [_corner_aligned(i, n, out) for i in range(out)]
    result = np.empty((out, out))
    for y in range(out):
        y0, ty = taps[y]
        for x in range(out):
            x0, tx = taps[x]
            total = 0.0
            for j in range(4):
                row = rows[min(max(y0 - 1 + j, 0), n - 1)]
                wy = _keys_cubic(ty - (j - 1))
                for k in range(4):
                    total += wy * _keys_cubic(tx - (k - 1)) * row[min(max(x0 - 1 + k, 0), n - 1)]
            result[y, x] = total
    return result


REFERENCES = {"nearest": reference_nearest, "bilinear": reference_bilinear, "bicubic": reference_bicubic}


def assert_matches_reference(a: np.ndarray, out: int, mode: str, got: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == (out, out)
    if a.shape == (out, out):
        np.testing.assert_array_equal(got, a.astype(np.float32))  # the publisher only casts
        return
    expected = REFERENCES[mode](a, out)
    if mode == "nearest":
        np.testing.assert_array_equal(got, expected)
    else:
        # torch computes source coordinates (i * scale, up to ~out with float32
        # ulps of ~1e-5) and the cubic weights in float32, so values drift by
        # up to ~1e-5 of the data range from the float64 reference. Any formula
        # error (e.g. align_corners=False) is off by a good fraction of it.
        scale = float(np.max(np.abs(a.astype(np.float64)))) or 1.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=3e-5 * scale)


SIZE_PAIRS = [(20, 120), (60, 120), (120, 120), (120, 128), (60, 128), (20, 7)]


@pytest.mark.parametrize("mode", RESAMPLE_MODES)
@pytest.mark.parametrize("n_in, out", SIZE_PAIRS, ids=[f"{i}to{o}" for i, o in SIZE_PAIRS])
def test_resample_matches_reference(n_in: int, out: int, mode: str) -> None:
    a = np.random.default_rng(n_in * 1000 + out).integers(0, 10_000, (n_in, n_in)).astype(np.uint16)
    assert_matches_reference(a, out, mode, resample(a, out, mode))


@pytest.mark.parametrize("n_in, factor", [(60, 2), (20, 6), (7, 3)])
def test_integer_nearest_upsampling_is_pixel_replication(n_in: int, factor: int) -> None:
    a = np.random.default_rng(5).integers(0, 10_000, (n_in, n_in)).astype(np.uint16)
    expected = np.repeat(np.repeat(a, factor, axis=0), factor, axis=1).astype(np.float32)
    np.testing.assert_array_equal(resample(a, n_in * factor), expected)


def test_non_square_input() -> None:
    a = np.random.default_rng(6).normal(size=(30, 40)).astype(np.float32)
    got = resample(a, 60)
    rows = np.floor(np.arange(60, dtype=np.float32) * np.float32(30 / 60)).astype(int)
    cols = np.floor(np.arange(60, dtype=np.float32) * (np.float32(40) / np.float32(60))).astype(int)
    np.testing.assert_array_equal(got, a[np.ix_(rows, cols)])


@settings(max_examples=40, deadline=None)
@given(
    n_in=st.integers(1, 40),
    out=st.integers(1, 48),
    mode=st.sampled_from(RESAMPLE_MODES),
    float_input=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_resample_property(n_in: int, out: int, mode: str, float_input: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if float_input:
        a = rng.normal(-12, 5, (n_in, n_in)).astype(np.float32)
    else:
        a = rng.integers(0, 65_536, (n_in, n_in)).astype(np.uint16)
    assert_matches_reference(a, out, mode, resample(a, out, mode))


def band_arrays(seed: int = 7) -> Dict[str, np.ndarray]:
    return {band: band_values(group, seed) for band, group in GROUP_OF_BAND.items()}


@pytest.mark.parametrize("img_size", [120, 128, 64])
@pytest.mark.parametrize("mode", RESAMPLE_MODES)
def test_stack_image(img_size: int, mode: str) -> None:
    arrays = band_arrays()
    bands = BAND_COMBINATIONS["S1S2-10m20m"]
    image = stack_image(arrays, bands, img_size, mode)
    assert image.shape == (len(bands), img_size, img_size) and image.dtype == np.float32
    for channel, band in enumerate(bands):
        np.testing.assert_array_equal(image[channel], resample(arrays[band], img_size, mode))
    if img_size == 120:
        np.testing.assert_array_equal(image[0], arrays["VV"])  # native 120 px bands are untouched
        np.testing.assert_array_equal(image[2], arrays["B02"].astype(np.float32))


@pytest.mark.parametrize("img_size", [120, 128, 64, 240])
@pytest.mark.parametrize("mode", RESAMPLE_MODES)
@pytest.mark.parametrize("combination", sorted(BAND_COMBINATIONS))
def test_stacking_whole_groups_gives_the_band_by_band_image(combination: str, mode: str, img_size: int) -> None:
    """A cache's ``bands=`` image is resampled run by run of a group's bands: bit-identical to band by band."""
    arrays = band_arrays()
    groups = {g.name: np.stack([arrays[b] for b in g.bands]) for g in BAND_GROUPS}
    bands = BAND_COMBINATIONS[combination]
    image = stack_groups(groups, bands, img_size, mode)
    assert image.dtype == np.float32 and image.shape == (len(bands), img_size, img_size)
    np.testing.assert_array_equal(image, stack_image(arrays, bands, img_size, mode))
    batch = np.full((len(bands), 2, img_size, img_size), np.nan, dtype=np.float32)
    slot = batch[:, 1]  # a non-contiguous view, like a slot of a batch being filled
    assert np.shares_memory(stack_groups(groups, bands, img_size, mode, out=slot), batch)
    np.testing.assert_array_equal(batch[:, 1], image)
    assert np.isnan(batch[:, 0]).all()


def test_group_runs_of_the_publishers_combinations() -> None:
    from bentxt.imagery.raster import _group_runs

    assert _group_runs(BAND_COMBINATIONS["S1S2-10m20m"]) == (
        ("s1", 0, 2, 0), ("s2_10m", 0, 3, 2), ("s2_20m", 0, 3, 5), ("s2_10m", 3, 1, 8), ("s2_20m", 3, 3, 9))
    assert _group_runs(("B04", "B03", "B02")) == (("s2_10m", 2, 1, 0), ("s2_10m", 1, 1, 1), ("s2_10m", 0, 1, 2))
    with pytest.raises(ValueError, match="no array for band group 's1'"):
        stack_groups({"s2_10m": np.zeros((4, 120, 120), np.uint16)}, ("B02", "VV"), 120)
    with pytest.raises(ValueError, match=r"unknown band\(s\) \['B10'\]"):
        stack_groups({"s2_10m": np.zeros((4, 120, 120), np.uint16)}, ("B02", "B10"), 120)
    with pytest.raises(ValueError, match=r"got shape \(1, 60, 60\) for an output of shape \(2, 120, 120\)"):
        stack_groups({"s2_20m": np.zeros((1, 60, 60), np.uint16)}, ("B05", "B06"), 120)  # a group array too short


def test_stack_image_default_is_nearest_replication() -> None:
    arrays = band_arrays()
    image = stack_image(arrays, ("B05", "B01", "B04"), 120)
    np.testing.assert_array_equal(image[0], np.kron(arrays["B05"], np.ones((2, 2))).astype(np.float32))
    np.testing.assert_array_equal(image[1], np.kron(arrays["B01"], np.ones((6, 6))).astype(np.float32))
    np.testing.assert_array_equal(image[2], arrays["B04"])


@pytest.mark.parametrize("img_size", [0, -120, 1.5, 120.0, "120", True, None])
def test_stack_image_rejects_bad_img_size(img_size: object) -> None:
    with pytest.raises(ValueError, match="img_size"):
        stack_image(band_arrays(), ("B02",), img_size)  # type: ignore[arg-type]


def test_bad_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match="'nearest', 'bilinear', 'bicubic'"):
        stack_image(band_arrays(), ("B02",), 120, mode="area")
    with pytest.raises(ValueError, match="nearest-exact"):
        resample(np.zeros((60, 60)), 120, mode="nearest-exact")


def test_stack_image_missing_band() -> None:
    with pytest.raises(ValueError, match="'B03'"):
        stack_image({"B02": np.zeros((120, 120), np.uint16)}, ("B02", "B03"), 120)


def test_fma_is_correctly_rounded() -> None:
    """The float32 FMA emulation, including a case where float64 double rounding is wrong."""
    f32 = np.float32
    a, b, c = f32(2.0**-12 * (1 + 2.0**-23)), f32(2.0**-12 * (1 - 2.0**-23)), f32(1 + 2.0**-23)
    naive = np.float32(np.float64(a) * np.float64(b) + np.float64(c))
    assert naive != c  # exact a*b + c is just below c + half an ulp: rounds to c
    assert raster._fma(np.array([a]), np.array([b]), np.array([c]))[0] == c

    rng = np.random.default_rng(8)
    x, y = rng.normal(size=500).astype(f32), rng.normal(size=500).astype(f32)
    z = (rng.normal(size=500) * 10.0 ** rng.integers(-8, 8, 500)).astype(f32)
    got = raster._fma(x, y, z)
    for xi, yi, zi, gi in zip(x, y, z, got):
        exact = Fraction(float(xi)) * Fraction(float(yi)) + Fraction(float(zi))
        below = f32(float(exact))
        neighbours = [below, np.nextafter(below, f32(np.inf)), np.nextafter(below, f32(-np.inf))]
        best = min(neighbours, key=lambda v: (abs(Fraction(float(v)) - exact), int(np.array(v).view(np.int32)) & 1))
        assert gi == best


# --------------------------------------------------------------------------- #
# Resampling: torch itself, when installed
# --------------------------------------------------------------------------- #


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed; compared with the plain-Python references only")


@pytest.mark.parametrize("mode", RESAMPLE_MODES)
@pytest.mark.parametrize("n_in, out", SIZE_PAIRS + [(2, 5), (33, 64), (60, 63), (7, 200), (5, 1)])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_resample_matches_torch(n_in: int, out: int, mode: str, dtype: str) -> None:
    torch = _torch()
    rng = np.random.default_rng(n_in + 7 * out)
    a = (rng.integers(0, 10_000, (n_in, n_in)) if dtype == "uint16" else rng.normal(-12, 5, (n_in, n_in))).astype(dtype)
    x = torch.from_numpy(a.astype(np.float32))[None, None]
    if (n_in, n_in) == (out, out):
        expected = x[0, 0].numpy()
    else:
        align = True if mode in ("bilinear", "bicubic") else None
        expected = torch.nn.functional.interpolate(x, (out, out), mode=mode, align_corners=align)[0, 0].numpy()
    got = resample(a, out, mode)
    fma_build = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    if mode == "nearest" or fma_build:
        # Verified bit-exact with torch 2.13 CPU (AVX2 and AVX512 kernels).
        np.testing.assert_array_equal(got, expected)
    else:  # torch built without FMA rounds differently (see raster._fma)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(a).max() or 1))


@pytest.mark.parametrize("img_size, mode", [(120, "nearest"), (128, "nearest"), (120, "bilinear"), (100, "bicubic")])
def test_stack_image_matches_publisher_stack_and_interpolate(img_size: int, mode: str) -> None:
    torch = _torch()
    import torch.nn.functional as F

    arrays = band_arrays()
    bands = BAND_COMBINATIONS["all"]
    tensors = []
    for band in bands:  # stack_and_interpolate of ben_txt_datamodule.py (docs/release.md#publishers-loader)
        x = torch.from_numpy(arrays[band].astype(np.float32))
        if x.shape != (img_size, img_size):
            align = True if mode in ("bilinear", "bicubic") else None
            x = F.interpolate(x[None, None], (img_size, img_size), mode=mode, align_corners=align)[0, 0]
        tensors.append(x)
    expected = torch.stack(tensors).numpy()
    got = stack_image(arrays, bands, img_size, mode)
    if mode == "nearest" or torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        np.testing.assert_array_equal(got, expected)
    else:  # torch built without FMA rounds differently (see raster._fma)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("group", BAND_GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("layout", [{}, {"compress": "deflate"}, {"tiled": True, "blockxsize": 16, "blockysize": 16}])
def test_decoding_straight_into_a_slot_equals_check_band_of_decode(group, layout):
    """The imagery writer's path (no intermediate array) gives what check_band(decode_geotiff(...)) gives."""
    band = group.bands[0]
    values = band_values(group)
    data = write_geotiff(values, **layout)
    out = np.zeros((group.size, group.size), dtype=group.dtype)
    raster.decode_band_into(data, band, out, where="here")
    assert np.array_equal(out, check_band(decode_geotiff(data), band)) and np.array_equal(out, values)


def test_decoding_into_a_slot_rejects_what_check_band_rejects():
    group = GROUP_OF_BAND["B02"]
    out = np.zeros((group.size, group.size), dtype=group.dtype)
    wrong_size = write_geotiff(np.zeros((60, 60), dtype=np.uint16))
    with pytest.raises(RasterError, match=r"here: band B02 should be 120x120 uint16, found shape \(60, 60\)"):
        raster.decode_band_into(wrong_size, "B02", out, where="here")
    wrong_dtype = write_geotiff(np.zeros((120, 120), dtype=np.float32))
    with pytest.raises(RasterError, match=r"band B02 should be 120x120 uint16, found shape \(120, 120\) dtype float32"):
        raster.decode_band_into(wrong_dtype, "B02", out, where="here")
    big_endian = np.zeros((120, 120), dtype=">u2") + 7
    raster.decode_band_into(write_geotiff(big_endian.astype(np.uint16)), "B02", out)
    assert (out == 7).all()
