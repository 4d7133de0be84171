"""The one declaration of BigEarthNet v2.0 bands.

Every feature, reader, fixture and test derives band names, sizes, dtypes and
file layout from the tables here, so a band is described in exactly one place.
Values follow the released GeoTIFFs (docs/release.md#geotiff-properties) and the
publisher's loader (docs/release.md#publishers-loader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class BandGroup:
    """Bands that share sensor, pixel size and dtype, stored together as one Array3D."""

    name: str  # feature name, e.g. "s2_10m"
    sensor: str  # "s1" or "s2"
    bands: Tuple[str, ...]  # order of the Array3D's first axis
    size: int  # native pixels per side
    dtype: str  # native numpy dtype of the GeoTIFF
    resolution_m: int  # ground sampling distance

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (len(self.bands), self.size, self.size)

    @property
    def nbytes(self) -> int:
        """Bytes of one pair's values of this group."""
        return len(self.bands) * self.size * self.size * np.dtype(self.dtype).itemsize


BAND_GROUPS: Tuple[BandGroup, ...] = (
    BandGroup("s2_10m", "s2", ("B02", "B03", "B04", "B08"), 120, "uint16", 10),
    BandGroup("s2_20m", "s2", ("B05", "B06", "B07", "B8A", "B11", "B12"), 60, "uint16", 20),
    BandGroup("s2_60m", "s2", ("B01", "B09"), 20, "uint16", 60),
    BandGroup("s1", "s1", ("VV", "VH"), 120, "float32", 10),
)

SENSORS: Tuple[str, ...] = ("s1", "s2")

#: band name -> its group
GROUP_OF_BAND: Dict[str, BandGroup] = {b: g for g in BAND_GROUPS for b in g.bands}

#: the publisher's band order per sensor (ben_txt_datamodule.py)
SENSOR_BANDS: Dict[str, Tuple[str, ...]] = {
    "s1": ("VV", "VH"),
    "s2": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
}
assert {s: set(b) for s, b in SENSOR_BANDS.items()} == {
    s: {b for g in BAND_GROUPS if g.sensor == s for b in g.bands} for s in SENSORS
}

#: named band combinations of the publisher's loader
BAND_COMBINATIONS: Dict[str, Tuple[str, ...]] = {
    "RGB": ("B04", "B03", "B02"),
    "S2-10m20m": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    "S1S2-10m20m": ("VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    "all": SENSOR_BANDS["s1"] + SENSOR_BANDS["s2"],
}

#: the size every band is resampled to by default (the 10 m grid)
DEFAULT_IMG_SIZE = 120

#: TIFF nodata tag per sensor in the released files (S1 files carry none)
NODATA: Dict[str, float | None] = {"s2": 0, "s1": None}

#: Publisher's per-band normalisation statistics (train split, nearest to 120 px;
#: identical to ConfigILM BENv2_utils "120_nearest").
MEAN: Dict[str, float] = {
    "B01": 361.0767822265625, "B02": 438.3720703125, "B03": 614.0556640625, "B04": 588.4096069335938,
    "B05": 942.8433227539062, "B06": 1769.931640625, "B07": 2049.551513671875, "B08": 2193.2919921875,
    "B8A": 2235.556640625, "B09": 2241.455322265625, "B11": 1568.226806640625, "B12": 997.7324829101562,
    "VV": -12.643863677978516, "VH": -19.352558135986328,
}
STD: Dict[str, float] = {
    "B01": 575.0687255859375, "B02": 607.02685546875, "B03": 603.2968139648438, "B04": 684.56884765625,
    "B05": 738.4326782226562, "B06": 1100.4560546875, "B07": 1275.805419921875, "B08": 1369.3717041015625,
    "B8A": 1356.5440673828125, "B09": 1316.393310546875, "B11": 1070.1612548828125, "B12": 813.5276489257812,
    "VV": 5.133493900299072, "VH": 5.590505599975586,
}


def groups_for_sensors(sensors: Tuple[str, ...]) -> Tuple[BandGroup, ...]:
    """The band groups a sensor selection reads, in declaration order."""
    return tuple(g for g in BAND_GROUPS if g.sensor in sensors)


def resolve_bands(bands: str | Sequence[str]) -> Tuple[str, ...]:
    """A combination name or an explicit band list -> validated band tuple.

    Unlike the publisher's loader (which fails later with a KeyError), unknown
    names are rejected here with the list of valid ones.
    """
    if isinstance(bands, str):
        if bands in BAND_COMBINATIONS:
            return BAND_COMBINATIONS[bands]
        if bands in GROUP_OF_BAND:
            return (bands,)
        raise ValueError(
            f"Unknown band combination {bands!r}: use one of {sorted(BAND_COMBINATIONS)} "
            f"or a list of band names from {list(BAND_COMBINATIONS['all'])}"
        )
    bands = tuple(bands)
    unknown = [b for b in bands if b not in GROUP_OF_BAND]
    if unknown:
        raise ValueError(f"Unknown band name(s) {unknown}: valid bands are {list(BAND_COMBINATIONS['all'])}")
    if not bands:
        raise ValueError("bands must name at least one band")
    if len(set(bands)) != len(bands):
        raise ValueError(f"bands lists a band twice: {list(bands)}")
    return bands


def native_dtype(band: str) -> np.dtype:
    return np.dtype(GROUP_OF_BAND[band].dtype)
