"""Decode BigEarthNet GeoTIFF bands and resample them like the publisher's loader.

Decoding. Every S2 and S1 band of BigEarthNet v2.0 is a tiny, single-band,
uncompressed, striped, little-endian classic TIFF (docs/release.md#geotiff-properties). For
those, ``rasterio`` spends almost all of its ~0.7 ms per file opening a GDAL
dataset; the pixels themselves are a few contiguous strips that
``np.frombuffer`` can view directly. :func:`decode_geotiff` therefore parses the
header and first IFD itself (a few µs per band) and only falls back to rasterio
for layouts it does not recognise (compression, predictor, tiles, BigTIFF,
several samples, ...), e.g. the DEFLATE-compressed reference maps. Both paths return exactly
``rasterio.open(...).read(1)``: the fast path handles only layouts whose pixel
bytes are stored verbatim, and declines anything it does not fully understand
(a tag outside its allow-list, a tag given twice, strip tables that do not add
up, a second IFD). A differential fuzz test holds it to rasterio's result.

Resampling. :func:`stack_image` reproduces ``stack_and_interpolate`` of the
publisher's ``ben_txt_datamodule.py`` (docs/release.md#publishers-loader) without torch:
each band that is not already ``img_size`` square goes through
``F.interpolate(x[None, None].float(), (img_size, img_size), mode=...,
align_corners=True for bilinear/bicubic)``. The index and weight formulas below
follow ATen's CPU kernels (``UpSample.h`` / ``cpu/UpSampleKernel.cpp``) step by
step in float32, including where torch's compiled loops fuse multiply-adds,
so the result is bit-identical to torch's x86-64 CPU build (see :func:`resample`).
"""

from __future__ import annotations

import struct
import warnings
from functools import lru_cache
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from bentxt.bands import GROUP_OF_BAND
from bentxt.errors import BigEarthNetTxtError

__all__ = [
    "RasterError",
    "RESAMPLE_MODES",
    "decode_geotiff",
    "check_band",
    "max_band_file_bytes",
    "resample",
    "stack_groups",
    "stack_image",
    "check_resample_options",
]


class RasterError(BigEarthNetTxtError, ValueError):
    """A band file that cannot be decoded, or decodes to the wrong shape or dtype."""


# --------------------------------------------------------------------------- #
# GeoTIFF decoding
# --------------------------------------------------------------------------- #

#: a header may claim any size; the largest band decodes to 57,600 bytes
MAX_DECODED_BYTES = 1 << 28

_TIFF_LE = b"II*\x00"
_TIFF_BE = b"MM\x00*"
_BIGTIFF_MAGICS = (b"II+\x00", b"MM\x00+")

# Baseline TIFF tags the fast path looks at.
_NEW_SUBFILE_TYPE = 254
_IMAGE_WIDTH = 256
_IMAGE_LENGTH = 257
_BITS_PER_SAMPLE = 258
_COMPRESSION = 259
_PHOTOMETRIC = 262
_FILL_ORDER = 266
_STRIP_OFFSETS = 273
_ORIENTATION = 274
_SAMPLES_PER_PIXEL = 277
_ROWS_PER_STRIP = 278
_STRIP_BYTE_COUNTS = 279
_PLANAR_CONFIG = 284
_PREDICTOR = 317
_SAMPLE_FORMAT = 339

#: tags whose value changes how pixels are stored -> the one value the fast path
#: reads verbatim (also the TIFF default, so a missing tag is fine)
_REQUIRED_VALUES = {
    _NEW_SUBFILE_TYPE: 0,  # a full-resolution image, not an overview or mask
    _COMPRESSION: 1,
    _PHOTOMETRIC: 1,  # MinIsBlack
    _FILL_ORDER: 1,
    _ORIENTATION: 1,  # row 0 at the top, column 0 at the left
    _SAMPLES_PER_PIXEL: 1,
    _PLANAR_CONFIG: 1,
    _PREDICTOR: 1,
}
#: tags that never change what ``read(1)`` returns: descriptive baseline tags,
#: GeoTIFF georeferencing and GDAL's nodata. Any other tag (tiles, ExtraSamples,
#: SubIFDs, colour maps, GDAL_METADATA, private tags, ...) sends a file to rasterio.
_HARMLESS_TAGS = frozenset(
    {
        # names, dates, resolution, ranges
        269, 270, 271, 272, 280, 281, 282, 283, 285, 296, 305, 306, 315, 316, 340, 341,
        33432,  # Copyright
        33550, 33922, 34264, 34735, 34736, 34737,  # GeoTIFF
        42113,  # GDAL_NODATA (read(1) returns the stored values either way)
    }
)
_KNOWN_TAGS = _HARMLESS_TAGS | set(_REQUIRED_VALUES) | {
    _IMAGE_WIDTH, _IMAGE_LENGTH, _BITS_PER_SAMPLE, _STRIP_OFFSETS, _ROWS_PER_STRIP, _STRIP_BYTE_COUNTS, _SAMPLE_FORMAT
}

#: TIFF field type -> (struct format of one value, its size): BYTE, SHORT, LONG
_FIELD = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4)}

#: (SampleFormat, BitsPerSample) -> numpy dtype character; anything else falls back
_SAMPLE_DTYPE = {
    (1, 8): "u1",
    (1, 16): "u2",
    (2, 16): "i2",
    (1, 32): "u4",
    (2, 32): "i4",
    (3, 32): "f4",
    (3, 64): "f8",
}
#: (byte order, dtype character) -> (dtype in the file, native dtype of the result)
_DTYPES = {
    (order, kind): (np.dtype(order + kind), np.dtype(order + kind).newbyteorder("="))
    for order in "<>"
    for kind in _SAMPLE_DTYPE.values()
}


@lru_cache(maxsize=64)
def _ifd_struct(order: str, n_entries: int) -> struct.Struct:
    """Unpacks all 12-byte IFD entries at once as (tag, type, count, value-or-offset)."""
    return struct.Struct(order + "HHII" * n_entries)


def _byte_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``data`` indexed by byte, so slicing and len() count bytes."""
    if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
        return data.cast("B")
    return data


def _source(where: str) -> str:
    return where or "GeoTIFF data"


def _truncated(where: str, what: str, end: int, size: int) -> RasterError:
    return RasterError(
        f"{_source(where)}: truncated or corrupt TIFF: {what} ends at byte {end} "
        f"but the data has only {size} bytes"
    )


def _inline_value(order: str, field_type: int, count: int, value: int) -> int:
    """The single value held in an entry's 4-byte value field (read as a LONG), or -1.

    Smaller types are left-justified in that field, so in big-endian files they
    sit in the high-order bytes of the LONG. -1 (never a valid value of the
    tags looked at) stands for "several values or an unexpected type", which
    makes the fast path decline.
    """
    if count != 1:
        return -1
    if field_type == 4:
        return value
    if field_type == 3:
        return value & 0xFFFF if order == "<" else value >> 16
    if field_type == 1:
        return value & 0xFF if order == "<" else value >> 24
    return -1


def _tag_array(
    data: bytes | bytearray | memoryview,
    order: str,
    entry: Tuple[int, int, int],
    where: str,
    tag: int,
) -> Tuple[Optional[Tuple[int, ...]], Optional[Tuple[int, bytes]]]:
    """All values of one IFD entry, plus (offset, raw bytes) when they are stored out of line.

    The values are None for field types the fast path does not read.
    """
    field_type, count, value = entry
    field = _FIELD.get(field_type)
    if field is None or count == 0:
        return None, None
    fmt, item_size = field
    if item_size * count <= 4:
        return struct.unpack_from(f"{order}{count}{fmt}", struct.pack(order + "I", value)), None
    end = value + item_size * count
    if end > len(data):
        raise _truncated(where, f"the values of tag {tag}", end, len(data))
    raw = bytes(data[value:end])
    return struct.unpack(f"{order}{count}{fmt}", raw), (value, raw)


class _StripLayout(NamedTuple):
    """Where the pixels of a fast-path TIFF are, derived from its first IFD."""

    file_dtype: np.dtype
    native_dtype: np.dtype
    height: int
    width: int
    rows_per_strip: int
    offsets: Tuple[int, ...]
    contiguous: bool
    #: out-of-line StripOffsets / StripByteCounts arrays as (file offset, bytes):
    #: a cached layout applies to another file only if these bytes match too
    arrays: Tuple[Tuple[int, bytes], ...]


#: byte order -> raw IFD bytes -> layout. Band files written alike (same
#: writer, size and dtype) have byte-identical IFDs, so after the first file of
#: each kind decoding is a dict look-up, two short compares and one copy (~3-5 µs
#: instead of ~10 µs for a full parse). Refusals are not cached: one may come
#: from strip tables outside the IFD bytes, and must not stick to the next
#: file with the same IFD.
_LAYOUTS: Dict[str, Dict[bytes, _StripLayout]] = {"<": {}, ">": {}}
_LAYOUTS_MAX = 256


def _parse_layout(
    data: bytes | bytearray | memoryview, order: str, flat: Tuple[int, ...], next_ifd: int, where: str
) -> Optional[_StripLayout]:
    """The strip layout described by the unpacked IFD entries, or None to decline.

    Declines whatever it does not fully understand, since a wrong guess is a
    silently wrong pixel: tags out of order or repeated (libtiff keeps the
    first of a repeated tag), a tag outside the allow-list above, a second IFD,
    and strip tables that do not describe exactly the image's rows.
    """
    tags, types, counts, values = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
    if next_ifd != 0 or any(a >= b for a, b in zip(tags, tags[1:])) or not _KNOWN_TAGS.issuperset(tags):
        return None
    single = {
        tag: _inline_value(order, field_type, count, value)
        for tag, field_type, count, value in zip(tags, types, counts, values)
    }
    get = single.get
    if (
        _STRIP_OFFSETS not in single
        or _STRIP_BYTE_COUNTS not in single
        or any(get(tag, required) != required for tag, required in _REQUIRED_VALUES.items())
    ):
        return None
    kind = _SAMPLE_DTYPE.get((get(_SAMPLE_FORMAT, 1), get(_BITS_PER_SAMPLE, 1)))
    width, height = get(_IMAGE_WIDTH, -1), get(_IMAGE_LENGTH, -1)
    rows_per_strip = min(get(_ROWS_PER_STRIP, height), height)
    if kind is None or width <= 0 or height <= 0 or rows_per_strip <= 0:
        return None
    entries = dict(zip(tags, zip(types, counts, values)))
    n_strips = -(-height // rows_per_strip)
    if entries[_STRIP_OFFSETS][1] != n_strips or entries[_STRIP_BYTE_COUNTS][1] != n_strips:
        return None  # checked before reading them: a wrong count is GDAL's to interpret, not a truncation
    offsets, offsets_raw = _tag_array(data, order, entries[_STRIP_OFFSETS], where, _STRIP_OFFSETS)
    byte_counts, counts_raw = _tag_array(data, order, entries[_STRIP_BYTE_COUNTS], where, _STRIP_BYTE_COUNTS)
    if offsets is None or byte_counts is None:
        return None

    file_dtype, native_dtype = _DTYPES[order, kind]
    row_bytes = width * file_dtype.itemsize
    strip_bytes = rows_per_strip * row_bytes
    for i, byte_count in enumerate(byte_counts):
        # Exactly the strip's rows (the last strip may be padded to a full one).
        # GDAL fills sparse (0-byte) strips with nodata, reads short ones anyway
        # and may cap long ones; leave all such oddities to it.
        rows = min(rows_per_strip, height - i * rows_per_strip)
        if byte_count != rows * row_bytes and not (i == n_strips - 1 and byte_count == strip_bytes):
            return None
    if 0 in offsets:  # offset 0 means "not written" to GDAL
        return None
    first = offsets[0]
    contiguous = offsets == tuple(range(first, first + n_strips * strip_bytes, strip_bytes))
    arrays = tuple(raw for raw in (offsets_raw, counts_raw) if raw is not None)
    return _StripLayout(file_dtype, native_dtype, height, width, rows_per_strip, offsets, contiguous, arrays)


def _decode_fast(data: bytes | bytearray | memoryview, where: str = "", copy: bool = True) -> Optional[np.ndarray]:
    """Decode a single-band, uncompressed, striped classic TIFF without GDAL.

    Returns None (so the caller falls back to rasterio) for any layout it does
    not handle, including data that is not a classic TIFF. Raises RasterError
    only when the file is certainly broken, i.e. the IFD, a tag's values or a
    strip lie past the end of the data, so a truncated download is reported
    instead of returning garbage (GDAL fails on those too).
    """
    data = _byte_view(data)
    magic = data[:4]
    if magic == _TIFF_LE:
        order = "<"
    elif magic == _TIFF_BE:
        order = ">"
    else:
        return None
    size = len(data)
    if size < 8:
        raise _truncated(where, "the TIFF header", 8, size)
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    if ifd < 8:
        raise RasterError(f"{_source(where)}: corrupt TIFF: first IFD offset is {ifd}")
    if ifd + 2 > size:
        raise _truncated(where, "the first IFD", ifd + 2, size)
    (n_entries,) = struct.unpack_from(order + "H", data, ifd)
    ifd_end = ifd + 2 + 12 * n_entries + 4  # the entries, then the next IFD's offset
    if ifd_end > size:
        raise _truncated(where, "the first IFD", ifd_end, size)

    cache = _LAYOUTS[order]
    key = bytes(data[ifd + 2 : ifd_end])
    layout = cache.get(key)
    if layout is None or any(data[pos : pos + len(raw)] != raw for pos, raw in layout.arrays):
        flat = _ifd_struct(order, n_entries).unpack_from(key)
        (next_ifd,) = struct.unpack_from(order + "I", key, len(key) - 4)
        layout = _parse_layout(data, order, flat, next_ifd, where)
        if layout is None:
            cache.pop(key, None)
            return None
        if len(cache) >= _LAYOUTS_MAX:
            cache.clear()
        cache[key] = layout

    height, width, rows_per_strip = layout.height, layout.width, layout.rows_per_strip
    row_bytes = width * layout.file_dtype.itemsize
    first = layout.offsets[0]
    if layout.contiguous and first + height * row_bytes <= size:
        # The real files: contiguous strips, one view over all of them. The copy
        # makes the result writable and native-endian and lets the input go.
        view = np.frombuffer(data, dtype=layout.file_dtype, count=height * width, offset=first)
        return view.reshape(height, width).astype(layout.native_dtype) if copy else view.reshape(height, width)

    for i, offset in enumerate(layout.offsets):
        end = offset + min(rows_per_strip, height - i * rows_per_strip) * row_bytes
        if end > size:
            raise _truncated(where, f"strip {i} of {len(layout.offsets)}", end, size)
    if height * row_bytes > size:  # strips that overlap: leave the memory this needs to GDAL's checks
        return None
    array = np.empty((height, width), dtype=layout.native_dtype)
    for i, offset in enumerate(layout.offsets):
        rows = min(rows_per_strip, height - i * rows_per_strip)
        strip = np.frombuffer(data, dtype=layout.file_dtype, count=rows * width, offset=offset)
        array[i * rows_per_strip : i * rows_per_strip + rows] = strip.reshape(rows, width)
    return array


def _decode_rasterio(data: bytes | bytearray | memoryview, where: str) -> np.ndarray:
    """The general decoder: whatever GDAL can read from an in-memory TIFF."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(bytes(data)) as memfile, memfile.open() as dataset:
                if dataset.count != 1:
                    raise RasterError(
                        f"{_source(where)}: expected a single-band GeoTIFF, "
                        f"found {dataset.count} bands ({', '.join(dataset.dtypes)})"
                    )
                pixel_bytes = dataset.width * dataset.height * np.dtype(dataset.dtypes[0]).itemsize
                if pixel_bytes > MAX_DECODED_BYTES:
                    raise RasterError(
                        f"{_source(where)}: a {dataset.width}x{dataset.height} {dataset.dtypes[0]} image "
                        f"({pixel_bytes} bytes decoded) is far larger than any band; not decoded"
                    )
                return dataset.read(1)
    except RasterError:
        raise
    except (RasterioError, OSError, ValueError) as exc:
        # rasterio's read errors say "see previous exception": put that one in the message.
        detail = f"{exc} ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
        raise RasterError(f"{_source(where)}: cannot decode TIFF ({len(data)} bytes): {detail}") from exc


def decode_geotiff(data: bytes | bytearray | memoryview, where: str = "") -> np.ndarray:
    """The 2-D array of a single-band GeoTIFF, as ``rasterio`` ``read(1)`` returns it.

    ``where`` names the source in error messages (e.g. "patch S2A_..._26_57 band
    B02 in BigEarthNet-S2.tar.zst"), since a bad member deep inside a 60 GB
    archive is otherwise impossible to find. The result is always a fresh,
    writable array in native byte order that does not reference ``data``.
    Raises RasterError for data that is not a TIFF, truncated or corrupt files
    and files with more than one band.
    """
    data = _byte_view(data)
    array = _decode_fast(data, where)
    if array is not None:
        return array
    if bytes(data[:4]) not in (_TIFF_LE, _TIFF_BE) + _BIGTIFF_MAGICS:
        # Checked here rather than left to GDAL, which would happily decode a PNG.
        # The bytes themselves stay out of the message: they may be anything (a
        # linked /etc/passwd, a token), and messages end up in logs and issues.
        raise RasterError(
            f"{_source(where)}: not a TIFF file ({len(data)} bytes; they do not start with a TIFF header)"
        )
    return _decode_rasterio(data, where)


def decode_band_into(data: bytes | bytearray | memoryview, band: str, out: np.ndarray, where: str = "") -> None:
    """Decode one band straight into ``out`` (a slot of a batch being filled), checked like ``check_band``.

    The release's files take the fast path as a view over ``data``, copied
    once into ``out`` (converting the byte order if needed); anything else is
    decoded and checked as usual, so the result and the errors are those of
    ``check_band(decode_geotiff(data))``.
    """
    view = _decode_fast(data, where, copy=False)
    if view is not None and view.shape == out.shape and (
        view.dtype == out.dtype or view.dtype.newbyteorder("=") == out.dtype.newbyteorder("=")
    ):
        out[...] = view
        return
    decoded = view.astype(view.dtype.newbyteorder("=")) if view is not None else decode_geotiff(data, where)
    out[...] = check_band(decoded, band, where=where)


def max_band_file_bytes(band: str) -> int:
    """The largest file that can hold ``band``: twice its raw pixels plus 64 KiB of headers.

    A real band file is its raw pixels plus a few hundred bytes of tags
    (docs/release.md#geotiff-properties), so anything larger is not a band of the release;
    readers refuse it before reading it, which keeps memory independent of
    what a damaged or hostile source holds.
    """
    group = GROUP_OF_BAND.get(band)
    if group is None:
        raise ValueError(f"unknown band {band!r}: valid bands are {sorted(GROUP_OF_BAND)}")
    return 2 * group.size * group.size * np.dtype(group.dtype).itemsize + 64 * 1024


def check_band(array: np.ndarray, band: str, where: str = "") -> np.ndarray:
    """Reject a decoded band whose shape or dtype differs from the release's.

    A file from the wrong band, a re-exported patch or a different product
    would otherwise be silently resampled into a plausible-looking image.
    Returns ``array`` unchanged so the call can be chained.
    """
    group = GROUP_OF_BAND.get(band)
    if group is None:
        raise ValueError(f"unknown band {band!r}: valid bands are {sorted(GROUP_OF_BAND)}")
    expected_shape = (group.size, group.size)
    expected_dtype = np.dtype(group.dtype)
    if array.shape != expected_shape or array.dtype != expected_dtype:
        raise RasterError(
            f"{_source(where)}: band {band} should be {expected_shape[0]}x{expected_shape[1]} "
            f"{expected_dtype}, found shape {array.shape} dtype {array.dtype}"
        )
    return array


# --------------------------------------------------------------------------- #
# Resampling (torch.nn.functional.interpolate semantics, CPU, float32)
# --------------------------------------------------------------------------- #

#: modes of the publisher's ``upsample_mode`` that are reproduced here
RESAMPLE_MODES: Tuple[str, ...] = ("nearest", "bilinear", "bicubic")

#: ATen picks its channels-last bilinear kernel (different rounding order)
#: when output height + width is at most this (``_use_vectorized_kernel_cond_2d``).
_SMALL_OUTPUT_SUM = 128

_CUBIC_A = np.float32(-0.75)


def _check_size(size: object, name: str) -> int:
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"{name} must be a positive int, got {size!r}")
    return int(size)


def _check_mode(mode: str) -> None:
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"unknown resampling mode {mode!r}: use one of {list(RESAMPLE_MODES)}")


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@lru_cache(maxsize=None)
def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index of PyTorch's legacy ``nearest``.

    ATen computes ``min(floor(float32(i) * (float32(in) / out)), in - 1)`` in
    float32, which is not always ``floor(i * in / out)`` in exact arithmetic;
    reproducing the float32 steps keeps non-integer ratios (120 -> 128)
    bit-identical.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.intp)
    return _frozen(np.minimum(index, in_size - 1))


@lru_cache(maxsize=None)
def _repeat_factor(in_size: int, out_size: int) -> int:
    """k when legacy nearest from in_size to out_size is plain k-fold repetition, else 0."""
    if out_size % in_size:
        return 0
    k = out_size // in_size
    expected = np.arange(out_size) // k
    return k if np.array_equal(_nearest_index(in_size, out_size), expected) else 0


@lru_cache(maxsize=None)
def _linear_weights(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda0, lambda1) of ATen's ``compute_source_index_and_lambda``, align_corners=True."""
    if in_size == out_size:
        index = np.arange(out_size)
        return tuple(  # type: ignore[return-value]
            _frozen(a) for a in (index, index.copy(), np.ones(out_size, np.float32), np.zeros(out_size, np.float32))
        )
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    real = np.arange(out_size, dtype=np.float32) * scale
    i0 = np.minimum(np.floor(real).astype(np.intp), in_size - 1)
    lambda1 = np.clip(real - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    lambda0 = np.float32(1) - lambda1
    return tuple(_frozen(a) for a in (i0, i1, lambda0, lambda1))  # type: ignore[return-value]


#: float64 bits below float32 precision, and their value exactly halfway
_LOW_BITS = np.int64((1 << 29) - 1)
_HALFWAY = np.int64(1 << 28)
_TINY = 2.0**-125  # below this float32 results lose precision (subnormals)


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add ``a * b + c`` with a single, correct rounding.

    ATen's CPU kernels are compiled for AVX2/AVX512 with FMA contraction, so
    torch fuses most ``x * w + acc`` steps of its interpolation loops; numpy
    has no fma ufunc. The product of two float32 is exact in float64 and the
    float64 sum is off by less than half a float64 ulp, so rounding that sum
    to float32 is already the correctly rounded fma except when it lands
    exactly halfway between two float32 (or in the subnormal range). Only
    those rare elements are redone with the TwoSum error term.
    """
    a, b, c = np.broadcast_arrays(a, b, c)
    product = a.astype(np.float64) * b
    total = product + c
    result = total.astype(np.float32)
    suspect = ((total.view(np.int64) & _LOW_BITS) == _HALFWAY) | ((np.abs(total) < _TINY) & (total != 0))
    if suspect.any():
        p, s, c64 = product[suspect], total[suspect], c[suspect].astype(np.float64)
        c_part = s - p
        error = (p - (s - c_part)) + (c64 - c_part)
        # Round to odd: an inexact float64 sum moves to its odd neighbour on the
        # exact value's side, after which rounding to float32 is correct.
        inexact_even = (error != 0) & ((s.view(np.int64) & 1) == 0)
        s = np.where(inexact_even, np.nextafter(s, np.where(error > 0, np.inf, -np.inf)), s)
        result[suspect] = s.astype(np.float32)
    return result


def _sum_of_products(terms: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``t0*w0 + t1*w1 + ...`` evaluated the way ATen's compiled loops round it.

    Measured against torch 2.13 (x86-64 CPU wheel): the first addition is
    ``fma(t0, w0, t1 * w1)`` and every further term is ``fma(tk, wk, acc)``.
    """
    (t0, w0), (t1, w1) = terms[0], terms[1]
    acc = _fma(t0, w0, t1 * w1)
    for t, w in terms[2:]:
        acc = _fma(t, w, acc)
    return acc


def _cubic_near(x: np.ndarray) -> np.ndarray:
    """ATen ``cubic_convolution1``, ((A + 2) * x - (A + 3)) * x * x + 1, rounded as torch does."""
    a = _CUBIC_A
    return _fma(a + np.float32(2), x, -(a + np.float32(3))) * x * x + np.float32(1)


def _cubic_far(x: np.ndarray) -> np.ndarray:
    """ATen ``cubic_convolution2``, ((A * x - 5A) * x + 8A) * x - 4A, rounded as torch does."""
    a = _CUBIC_A
    return _fma(_fma(a, x, -(np.float32(5) * a)), x, np.float32(8) * a) * x - np.float32(4) * a


@lru_cache(maxsize=None)
def _cubic_weights(in_size: int, out_size: int) -> Tuple[Tuple[np.ndarray, ...], Tuple[np.ndarray, ...]]:
    """Four clamped source indices and four weights per output index (ATen ``HelperInterpCubic``)."""
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    real = np.arange(out_size, dtype=np.float32) * scale
    base = np.minimum(np.floor(real).astype(np.intp), in_size - 1)
    t = np.clip(real - base.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    one = np.float32(1)
    weights = (_cubic_far(t + one), _cubic_near(t), _cubic_near(one - t), _cubic_far((one - t) + one))
    indices = tuple(np.clip(base + j - 1, 0, in_size - 1) for j in range(4))
    return tuple(_frozen(i) for i in indices), tuple(_frozen(w.astype(np.float32)) for w in weights)


def _bilinear(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    y0, y1, wy0, wy1 = _linear_weights(src.shape[0], out_h)
    x0, x1, wx0, wx1 = _linear_weights(src.shape[1], out_w)
    wy0, wy1 = wy0[:, None], wy1[:, None]
    if out_h + out_w <= _SMALL_OUTPUT_SUM:
        # cpu_upsample_linear_channels_last: i00*w00 + i01*w01 + i10*w10 + i11*w11
        r0, r1 = src[y0], src[y1]
        return _sum_of_products(
            [(r0[:, x0], wy0 * wx0), (r0[:, x1], wy0 * wx1), (r1[:, x0], wy1 * wx0), (r1[:, x1], wy1 * wx1)]
        )
    # upsample_generic_Nd_kernel_impl: separable, rows first, then columns
    rows = _sum_of_products([(src[:, x0], wx0), (src[:, x1], wx1)])
    return _sum_of_products([(rows[y0], wy0), (rows[y1], wy1)])


def _bicubic(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    (ys, wys), (xs, wxs) = _cubic_weights(src.shape[0], out_h), _cubic_weights(src.shape[1], out_w)
    rows = _sum_of_products([(src[:, x], wx) for x, wx in zip(xs, wxs)])
    return _sum_of_products([(rows[y], wy[:, None]) for y, wy in zip(ys, wys)])


def _resample_into(dst: np.ndarray, src: np.ndarray, mode: str) -> None:
    """Write ``src`` resampled to ``dst``'s last two dimensions into ``dst`` (a float32 array or view).

    2-D (one band) or 3-D (C, H, W): channels are resampled independently, so
    a run of a group's bands is one call, the same values as band by band.
    """
    if src.ndim not in (2, 3) or src.ndim != dst.ndim or src.shape[:-2] != dst.shape[:-2]:
        raise ValueError(f"expected a 2-D band array (or C bands for C output channels), got shape {src.shape} "
                         f"for an output of shape {dst.shape}")
    (in_h, in_w), (out_h, out_w) = src.shape[-2:], dst.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        dst[...] = src  # the publisher only casts bands already at img_size
        return
    if mode == "nearest":
        k_h, k_w = _repeat_factor(in_h, out_h), _repeat_factor(in_w, out_w)
        if k_h and k_w and k_w <= 3:
            # Pixel replication by a small factor (the 20 m bands at 120 px):
            # cast once, then one strided copy per (row, column) phase
            # (~1/3 faster than np.repeat plus a broadcast).
            phases = dst.reshape(*src.shape[:-2], in_h, k_h, in_w, k_w)
            values = src.astype(dst.dtype, copy=False)
            for row in range(k_h):
                for column in range(k_w):
                    phases[..., row, :, column] = values
        elif k_h and k_w:
            # Larger factors: repeating columns first and then broadcasting
            # whole rows keeps numpy's inner loops long: ~4x faster than one
            # 4-D broadcast or a 2-D fancy index.
            wide = np.repeat(src, k_w, axis=-1)
            dst.reshape(*src.shape[:-2], in_h, k_h, out_w)[...] = wide[..., None, :]
        else:
            wide = src.take(_nearest_index(in_w, out_w), axis=-1)
            dst[...] = wide.take(_nearest_index(in_h, out_h), axis=-2)
        return
    if src.ndim == 3:
        for channel in range(src.shape[0]):
            _resample_into(dst[channel], src[channel], mode)
        return
    src32 = src.astype(np.float32, copy=False)
    dst[...] = _bilinear(src32, out_h, out_w) if mode == "bilinear" else _bicubic(src32, out_h, out_w)


def resample(array: np.ndarray, size: int, mode: str = "nearest") -> np.ndarray:
    """One band as float32 (size, size), like the publisher's per-band ``F.interpolate``.

    ``nearest`` is PyTorch's legacy nearest (not ``nearest-exact``): pure
    indexing, bit-identical to every torch build. ``bilinear`` and ``bicubic``
    use align_corners=True and reproduce ATen's float32 coordinates, weights
    and fused multiply-adds; that is bit-identical to torch 2.13's x86-64 CPU
    kernels (AVX2 and AVX512 dispatch, checked in the tests when torch is
    installed). A torch running its non-FMA kernels (``ATEN_CPU_CAPABILITY=default``,
    other CPUs or compilers) rounds differently: up to ~1e-5 of the data range.
    An array already (size, size) is only cast to float32, as the publisher does.
    """
    size = _check_size(size, "size")
    _check_mode(mode)
    out = np.empty((size, size), dtype=np.float32)
    _resample_into(out, np.asarray(array), mode)
    return out


def stack_image(
    arrays: Mapping[str, np.ndarray], bands: Sequence[str], img_size: int, mode: str = "nearest",
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """float32 (C, img_size, img_size) in ``bands`` order: ``stack_and_interpolate`` without torch.

    Runs once per example, so nearest upsampling by an integer factor (the
    20 m and 60 m bands at the default 120 px) is a few strided copies
    straight into the output, and all index/weight tables are cached per size
    pair. A prepared cache uses :func:`stack_groups` (the same values).
    """
    img_size = _check_size(img_size, "img_size")
    _check_mode(mode)
    if out is None:  # ``out``: a (C, img_size, img_size) float32 slot, e.g. in a batch being filled
        out = np.empty((len(bands), img_size, img_size), dtype=np.float32)
    for channel, band in enumerate(bands):
        try:
            src = arrays[band]
        except KeyError:
            raise ValueError(f"no array for band {band!r}; have {sorted(arrays)}") from None
        _resample_into(out[channel], src, mode)
    return out


@lru_cache(maxsize=64)
def _group_runs(bands: Tuple[str, ...]) -> Tuple[Tuple[str, int, int, int], ...]:
    """(group, first plane, planes, first channel) per run of ``bands`` that are consecutive planes of one group."""
    runs: List[list] = []
    for channel, band in enumerate(bands):
        group = GROUP_OF_BAND[band]
        plane = group.bands.index(band)
        if runs and runs[-1][0] == group.name and runs[-1][1] + runs[-1][2] == plane:
            runs[-1][2] += 1
        else:
            runs.append([group.name, plane, 1, channel])
    return tuple((str(name), int(plane), int(planes), int(channel)) for name, plane, planes, channel in runs)


def stack_groups(
    groups: Mapping[str, np.ndarray], bands: Sequence[str], img_size: int, mode: str = "nearest",
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """:func:`stack_image` from whole band groups (group name -> (C, H, W) array), bit-identical to it.

    A prepared cache stores each group as one array, and ``bands=`` orders
    mostly keep a group's bands together (``S1S2-10m20m``: 5 runs for 12
    bands), so each run is resampled in one call instead of band by band.
    """
    img_size = _check_size(img_size, "img_size")
    _check_mode(mode)
    bands = tuple(bands)
    if out is None:
        out = np.empty((len(bands), img_size, img_size), dtype=np.float32)
    unknown = [band for band in bands if band not in GROUP_OF_BAND]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; bands are {sorted(GROUP_OF_BAND)}")
    for group, plane, count, channel in _group_runs(bands):
        if group not in groups:
            raise ValueError(f"no array for band group {group!r}; have {sorted(groups)}")
        _resample_into(out[channel : channel + count], groups[group][plane : plane + count], mode)
    return out


def check_resample_options(img_size: object, mode: str) -> None:
    """Validate ``img_size`` and ``resample`` when a config is made, before any data is read."""
    _check_size(img_size, "img_size")
    _check_mode(mode)
