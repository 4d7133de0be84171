"""An independent re-statement of the publisher's reading path, for comparisons.

``ben_txt_datamodule.py`` (docs/release.md#publishers-loader) stacks the requested bands
in the requested order and resizes each band that is not ``img_size`` square
with ``torch.nn.functional.interpolate``: legacy ``nearest`` (source index
``floor(dst * in / out)``) or ``bilinear`` with ``align_corners=True``
(source coordinate ``dst * (in - 1) / (out - 1)``). This module spells those
formulas out pixel by pixel, deliberately sharing no code with
``bentxt.imagery.raster``, so a test comparing the two checks the rule, not itself.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def _nearest(band: np.ndarray, size: int) -> np.ndarray:
    h, w = band.shape
    out = np.empty((size, size), dtype=np.float32)
    scale_y, scale_x = np.float32(h) / np.float32(size), np.float32(w) / np.float32(size)
    for i in range(size):
        sy = min(int(math.floor(np.float32(i) * scale_y)), h - 1)
        for j in range(size):
            sx = min(int(math.floor(np.float32(j) * scale_x)), w - 1)
            out[i, j] = band[sy, sx]
    return out


def _bilinear(band: np.ndarray, size: int) -> np.ndarray:
    h, w = band.shape
    src = band.astype(np.float64)
    out = np.empty((size, size), dtype=np.float32)
    for i in range(size):
        y = i * (h - 1) / (size - 1) if size > 1 else 0.0
        y0 = int(math.floor(y))
        y1 = min(y0 + 1, h - 1)
        fy = y - y0
        for j in range(size):
            x = j * (w - 1) / (size - 1) if size > 1 else 0.0
            x0 = int(math.floor(x))
            x1 = min(x0 + 1, w - 1)
            fx = x - x0
            top = src[y0, x0] * (1 - fx) + src[y0, x1] * fx
            bottom = src[y1, x0] * (1 - fx) + src[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def stack_and_interpolate(
    arrays: Mapping[str, np.ndarray], bands: Sequence[str], img_size: int = 120, mode: str = "nearest"
) -> np.ndarray:
    """float32 (C, img_size, img_size), bands in the given order, as the publisher's loader returns."""
    out = []
    for band in bands:
        a = arrays[band]
        if a.shape == (img_size, img_size):
            out.append(a.astype(np.float32))
        elif mode == "nearest":
            out.append(_nearest(a, img_size))
        elif mode == "bilinear":
            out.append(_bilinear(a, img_size))
        else:
            raise ValueError(mode)
    return np.stack(out)
