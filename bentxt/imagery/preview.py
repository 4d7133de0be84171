"""Quicklook pictures of a patch, for the dataset viewer's ``preview`` column.

The viewer renders ``Array3D`` cells as truncated nested number lists, never as
pictures (docs/datasets-notes.md#numpy-format), so the export adds one small PNG per
image pair to its ``imagery-*`` config, re-used by every text row of the pair in
its ``browse`` config (grounding rows of small splits get a copy with the row's
box and point drawn). The bands come from ``bentxt.bands``:

- S2 (``s2`` and ``s1s2`` configs): true colour, R/G/B = ``BAND_COMBINATIONS["RGB"]``
  (B04/B03/B02).
- S1 (``s1`` configs): false colour, R = VV, G = VH, B = VV - VH (the bands
  are in dB, so the difference is the log of the VV/VH ratio: blue where
  cross-polarised volume scattering is weak next to VV, e.g. bare soil and
  built-up areas; forest, with strong VH, turns green).

Each channel gets its own 2-98 percentile stretch over the valid pixels (S2
nodata 0 and non-finite values are ignored), so a dark or hazy patch still
shows structure. The 120 px picture is enlarged with nearest neighbour by
``SCALE`` so that a 1 px box outline stays thin relative to the pixels.

Coordinates follow the annotation convention (docs/release.md#boxes-and-points): boxes are
``(x0, y0, x1, y1)`` in 0-1, origin top-left, x = column; points ``(x, y)``.
"""

from __future__ import annotations

import io
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from bentxt.bands import BAND_COMBINATIONS, GROUP_OF_BAND, NODATA, SENSOR_BANDS

#: enlargement of the 120 px quicklook (nearest neighbour)
SCALE = 2
#: percentiles of the per-channel stretch
STRETCH_PERCENTILES = (2.0, 98.0)
#: outline of a grounding box and the cross of a point: saturated colours that
#: a percentile-stretched scene rarely shows over a whole line
BOX_COLOUR: Tuple[int, int, int] = (255, 0, 255)
POINT_COLOUR: Tuple[int, int, int] = (0, 255, 255)
#: colours kept exact by the palette PNG (the scene gets the remaining entries)
MARK_COLOURS: Tuple[Tuple[int, int, int], ...] = (BOX_COLOUR, POINT_COLOUR)
#: half length of the point's cross arms, in output pixels
POINT_ARM = 3

#: bands shown per sensor: S2 true colour, S1 VV/VH (plus their difference)
QUICKLOOK_BANDS: Dict[str, Tuple[str, ...]] = {"s2": BAND_COMBINATIONS["RGB"], "s1": SENSOR_BANDS["s1"]}


def preview_sensor(sensors: str | Sequence[str]) -> str:
    """The sensor a config's quicklook shows (``"s1s2"`` or ``("s1", "s2")`` -> ``"s2"``).

    S2 whenever it is read: true colour is what readers recognise at a glance.
    """
    return "s2" if "s2" in sensors else "s1"


def band_planes(
    example: Mapping[str, Any], bands: Sequence[str], image_bands: Optional[Sequence[str]] = None
) -> Dict[str, np.ndarray]:
    """Each band's 2-D plane, from the native groups (``s2_10m``, ``s1``, ...) or from an ``image`` stack.

    ``image`` rows (configs with ``bands=``) carry no band names, so the caller
    passes the config's band order; a band the stack lacks is left out.
    """
    planes: Dict[str, np.ndarray] = {}
    for band in bands:
        group = GROUP_OF_BAND[band]
        if example.get(group.name) is not None:
            planes[band] = np.asarray(example[group.name])[group.bands.index(band)]
        elif "image" in example and image_bands is not None and band in image_bands:
            planes[band] = np.asarray(example["image"])[list(image_bands).index(band)]
    return planes


def stretch(plane: np.ndarray, nodata: Optional[float] = None) -> np.ndarray:
    """Percentile stretch to uint8; invalid pixels become 0 and do not move the percentiles."""
    values = np.asarray(plane, dtype=np.float64)
    valid = np.isfinite(values)
    if nodata is not None:
        valid &= values != nodata
    if not valid.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = np.percentile(values[valid], STRETCH_PERCENTILES)
    if high <= low:  # a flat band: show it mid-grey rather than dividing by zero
        return np.where(valid, 128, 0).astype(np.uint8)
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    return np.where(valid, np.rint(scaled), 0).astype(np.uint8)


def _channels(planes: Dict[str, np.ndarray], sensor: str) -> Tuple[np.ndarray, ...]:
    wanted = QUICKLOOK_BANDS[sensor]
    if all(b in planes for b in wanted):
        if sensor == "s2":
            return tuple(stretch(planes[b], NODATA["s2"]) for b in wanted)
        vv, vh = (np.asarray(planes[b], dtype=np.float64) for b in wanted)
        return stretch(vv), stretch(vh), stretch(vv - vh)
    # an ``image`` stack without the quicklook bands: grey from its first band
    grey = stretch(next(iter(planes.values())), NODATA.get(sensor))
    return grey, grey, grey


def base_quicklook(
    example: Mapping[str, Any], sensor: str, image_bands: Optional[Sequence[str]] = None, scale: int = SCALE
) -> Image.Image:
    """The patch's quicklook without annotations (shared by all rows of a patch), enlarged ``scale`` times.

    The export stores it at ``scale=1`` (native 120 px, ~4x smaller PNGs than 240 px) and enlarges a copy only where
    it draws a box or point (:func:`enlarge`).
    """
    if sensor not in QUICKLOOK_BANDS:
        raise ValueError(f"sensor={sensor!r}: a quicklook shows one of {sorted(QUICKLOOK_BANDS)}")
    planes = band_planes(example, QUICKLOOK_BANDS[sensor], image_bands)
    if not planes and "image" in example:
        first = np.asarray(example["image"])[0]
        planes = {"image": first}
    if not planes:
        raise ValueError(
            f"no {sensor} bands to draw: the example has none of the groups "
            f"{sorted({GROUP_OF_BAND[b].name for b in QUICKLOOK_BANDS[sensor]})} nor an 'image' stack"
        )
    rgb = np.stack(_channels(planes, sensor), axis=-1)
    return enlarge(Image.fromarray(rgb), scale)  # (H, W, 3) uint8 -> RGB


def enlarge(image: Image.Image, scale: int = SCALE) -> Image.Image:
    """Nearest-neighbour enlargement, so that a 1 px outline drawn afterwards stays thin next to the pixels."""
    if scale <= 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def mark(value: object) -> Optional[Tuple[float, ...]]:
    """A box or point as a tuple of floats, or None where the row has none.

    Rows without a box/point carry NaN-filled values (``config.NO_BOX`` /
    ``NO_POINT``, never null); None (older rows, hand-made examples) counts as
    absent too. Lists, numpy arrays and torch tensors are accepted.
    """
    if value is None:
        return None
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        return None
    return tuple(float(v) for v in values)


def box_pixels(bbox: Sequence[float], width: int, height: int) -> Tuple[int, int, int, int]:
    """Inclusive pixel bounds (left, top, right, bottom) of a 0-1 box at a picture size.

    Box edges are pixel edges: the box covers the pixels whose area lies inside
    it, so the outline is drawn on its outermost pixels. The epsilon absorbs
    float noise in values like 0.35 * 240.
    """
    x0, y0, x1, y1 = bbox
    left = min(max(math.floor(x0 * width + 1e-6), 0), width - 1)
    top = min(max(math.floor(y0 * height + 1e-6), 0), height - 1)
    right = min(max(math.ceil(x1 * width - 1e-6) - 1, left), width - 1)
    bottom = min(max(math.ceil(y1 * height - 1e-6) - 1, top), height - 1)
    return left, top, right, bottom


def point_pixel(point: Sequence[float], width: int, height: int) -> Tuple[int, int]:
    """The pixel (column, row) that contains a 0-1 point."""
    x, y = point
    return min(max(math.floor(x * width), 0), width - 1), min(max(math.floor(y * height), 0), height - 1)


def annotate(
    image: Image.Image, bbox: Optional[Sequence[float]] = None, point: Optional[Sequence[float]] = None
) -> Image.Image:
    """A copy with the box outline (1 px) and the point's cross drawn on it; NaN-filled (absent) marks are not drawn."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    bbox, point = mark(bbox), mark(point)
    if bbox is not None:
        draw.rectangle(box_pixels(bbox, *image.size), outline=BOX_COLOUR, width=1)
    if point is not None:
        col, row = point_pixel(point, *image.size)
        draw.line([(col - POINT_ARM, row), (col + POINT_ARM, row)], fill=POINT_COLOUR, width=1)
        draw.line([(col, row - POINT_ARM), (col, row + POINT_ARM)], fill=POINT_COLOUR, width=1)
    return image


def quicklook(
    example: Mapping[str, Any], sensor: str, image_bands: Optional[Sequence[str]] = None
) -> Image.Image:
    """uint8 RGB picture of an example's patch, with its ``bbox``/``point`` (grounding rows) drawn on it.

    A NaN-filled box or point (rows of other types) is absent: nothing is drawn.

    ``sensor`` is ``"s2"`` (true colour) or ``"s1"`` (VV/VH false colour); a
    config's ``"s1s2"`` maps to ``"s2"``. ``image_bands`` is the band order of an
    ``image`` stack (configs with ``bands=``); native groups need none.
    """
    sensor = preview_sensor(sensor)
    return annotate(base_quicklook(example, sensor, image_bands), example.get("bbox"), example.get("point"))


def to_png(image: Image.Image) -> bytes:
    """Palette PNG bytes of a quicklook, ~2x smaller than RGB.

    Every row of an export stores its picture (Parquet cannot share cells), so size counts:
    on noisy synthetic patches an RGB PNG at 240 px is ~47 kB, a 256-colour
    one ~25 kB (real scenes compress better). The scene is quantised to the
    free palette entries; box and point pixels get reserved entries, so the
    drawn marks keep their exact colours.
    """
    rgb = np.asarray(image.convert("RGB"))
    scene_colours = 256 - len(MARK_COLOURS)
    quantised = image.convert("RGB").quantize(scene_colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette = (quantised.getpalette() or [])[: 3 * scene_colours]
    palette += [0] * (3 * scene_colours - len(palette))
    indices = np.asarray(quantised).copy()
    for k, colour in enumerate(MARK_COLOURS):
        indices[(rgb == colour).all(axis=-1)] = scene_colours + k
        palette += list(colour)
    out = Image.fromarray(indices)
    out.putpalette(palette)  # an "L" image with a palette becomes "P"
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()
