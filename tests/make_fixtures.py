"""Tiny BigEarthNet.txt + BigEarthNet v2.0 data in the exact released format.

The builder must never meet the real 120 GB archives in tests, so this module
writes stand-ins that are byte-for-byte faithful where it matters (docs/release.md,
all sections): per-band GeoTIFFs with the released creation options, GNU tar
members in sorted order inside one monolithic zstd stream, and an annotation
parquet with the 13-column schema whose rows are scattered across row groups.
Everything is synthetic except the one real patch whose 18 rows docs/release.md#text-formats quotes;
its reference map is drawn so that those real boxes, counts and areas hold.

Public API (kept stable, other tests depend on it)::

    make_fixture(out_dir, *, seed=0, n_extra_patches=0, archive_only=(),
                 text_only=(), sample=False) -> Fixture
    write_lmdb(fixture, path, *, reference_maps=True) -> Path
    Fixture(root, s2_archive, s1_archive, maps_archive, parquet, patches, table, seed, sample)
        .patch(patch_id) -> FixturePatch     .archives -> {"s2", "s1", "reference_maps": Path}
        .archived_patches / .text_patches    (patches present in the archives / with rows)
    FixturePatch(patch_id, s1_name, split, tile, rows, country, season, climate_zone,
                 latitude, longitude, epsg, ul, in_archives, has_caption)
        .bands -> {band: ndarray}  (all 14 bands, native dtype/shape, the exact values written)
        .reference_map -> ndarray  (uint16 CLC codes, 120x120)
        .transform(resolution_m) -> Affine      .member_paths() -> {band|"reference_map": path}
    REAL_PATCH_ID, REAL_S1_NAME, REAL_ROWS, REAL_CAPTION: the real rows of docs/release.md#text-formats.

``archive_only`` / ``text_only`` take either an int (that many *additional*
generated patches in that role) or a sequence of patch ids already in the
fixture (which are moved to that role). Archive-only patches are in all three
archives but have no parquet rows; text-only patches have rows but no member in
any archive.

CLI: ``python tests/make_fixtures.py OUT_DIR [--seed N] [--sample] [--extra N] [--lmdb]``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.warp
import zstandard
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # running as a script puts only tests/ on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from bentxt.bands import DEFAULT_IMG_SIZE, GROUP_OF_BAND, NODATA, SENSOR_BANDS, BandGroup, groups_for_sensors  # noqa: E402
from bentxt.text.annotations import COLUMNS  # noqa: E402
from bentxt.imagery.layout import band_path, reference_map_path  # noqa: E402

# --------------------------------------------------------------------------- format constants

#: release file names of the annotation parquet and the S1/S2 archives, as recorded for the builder
_RELEASE = json.loads((REPO_ROOT / "dataset_infos" / "sources.json").read_text())
PARQUET_NAME: str = _RELEASE["annotations"]["file_name"]
ARCHIVE_NAME: Dict[str, str] = {sensor: _RELEASE[sensor]["file_name"] for sensor in ("s1", "s2")}

#: GNU tar --mtime="2024-01-01 00:00:00" of the release pipeline (docs/release.md#tar-layout), as UTC
TAR_MTIME = 1_704_067_200
ZSTD_LEVEL = 6
MAPS_ARCHIVE_NAME = "Reference_Maps.tar.zst"
MAP_DTYPE = np.dtype("uint16")
MAP_NODATA = 0
SYNTHETIC_METADATA = {b"synthetic": b"true", b"generator": b"tests/make_fixtures.py"}
SYNTHETIC_MD = "SYNTHETIC.md"

#: the annotation parquet's 13 columns, in file order (docs/release.md#annotation-parquet), as the reader declares them
PARQUET_SCHEMA = pa.schema(list(COLUMNS.items()))


# --------------------------------------------------------------------------- vocabulary

#: 19-class nomenclature -> CLC level-3 codes (docs/release.md#clc-classes), in the original class order
CLC_CLASSES: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("Urban fabric", (111, 112)),
    ("Industrial or commercial units", (121,)),
    ("Arable land", (211, 212, 213)),
    ("Permanent crops", (221, 222, 223, 241)),
    ("Pastures", (231,)),
    ("Complex cultivation patterns", (242,)),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", (243,)),
    ("Agro-forestry areas", (244,)),
    ("Broad-leaved forest", (311,)),
    ("Coniferous forest", (312,)),
    ("Mixed forest", (313,)),
    ("Natural grassland and sparsely vegetated areas", (321, 333)),
    ("Moors, heathland and sclerophyllous vegetation", (322, 323)),
    ("Transitional woodland, shrub", (324,)),
    ("Beaches, dunes, sands", (331,)),
    ("Inland wetlands", (411, 412)),
    ("Coastal wetlands", (421, 422)),
    ("Inland waters", (511, 512)),
    ("Marine waters", (521, 522, 523)),
)
CLASS_NAMES: Tuple[str, ...] = tuple(name for name, _ in CLC_CLASSES)
CLASS_OF_CODE: Dict[int, str] = {code: name for name, codes in CLC_CLASSES for code in codes}

COUNTRIES = ("Austria", "Belgium", "Finland", "Ireland", "Kosovo", "Lithuania", "Luxembourg", "Portugal", "Serbia", "Switzerland")
#: the ``season`` column follows the publisher's docstring (Fall); the MCQ options say Autumn
#: (docs/release.md#value-sets)
SEASON_OF_MONTH = {
    m: s for s, ms in (("Winter", (12, 1, 2)), ("Spring", (3, 4, 5)), ("Summer", (6, 7, 8)), ("Fall", (9, 10, 11))) for m in ms
}
SEASON_OPTION = {"Winter": "Winter", "Spring": "Spring", "Summer": "Summer", "Fall": "Autumn"}
CLIMATE_ZONES = (
    "Temperate, no dry season, warm summer",
    "Temperate, no dry season, hot summer",
    "Temperate, dry summer, hot summer",
    "Temperate, dry summer, warm summer",
    "Cold, no dry season, warm summer",
    "Cold, no dry season, cold summer",
    "Cold, dry summer, warm summer",
    "Arid, steppe, cold",
)
AREA_BINS = ((0, 10), (10, 50), (50, 60), (60, 70), (70, 90), (90, 100))
DIRECTIONS = (
    "to the right", "to the top-right", "to the top", "to the top-left",
    "to the left", "to the bottom-left", "to the bottom", "to the bottom-right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")

# --------------------------------------------------------------------------- tiles and patches


@dataclass(frozen=True)
class Acquisition:
    """One S2 tile acquisition paired with the S1 scene its patches were matched to."""

    s2_prefix: str  # "S2A_MSIL2A_20170613T101031_N9999_R022" (tile and grid appended)
    s1_prefix: str  # "S1A_IW_GRDH_1SDV_20170613T165043"

    @property
    def month(self) -> int:
        return int(self.s2_prefix.split("_")[2][4:6])


@dataclass(frozen=True)
class Tile:
    name: str  # MGRS tile without the leading T, e.g. "33UUP"
    epsg: int
    ul: Tuple[int, int]  # upper-left corner of the tile's 1,200 m patch grid (UTM metres)
    country: str
    climate_zones: Tuple[str, ...]
    codes: Tuple[int, ...]  # CLC codes that plausibly occur here
    acquisitions: Tuple[Acquisition, ...]


TILES: Dict[str, Tile] = {
    t.name: t
    for t in (
        Tile(
            "33UUP", 32633, (300_000, 5_400_000), "Austria",
            ("Temperate, no dry season, warm summer", "Cold, no dry season, warm summer"),
            (112, 211, 231, 242, 311, 312, 313, 512),
            (
                Acquisition("S2A_MSIL2A_20170613T101031_N9999_R022", "S1A_IW_GRDH_1SDV_20170613T165043"),
                Acquisition("S2A_MSIL2A_20170613T101031_N9999_R022", "S1B_IW_GRDH_1SDV_20170612T165809"),
                Acquisition("S2B_MSIL2A_20170818T100029_N9999_R122", "S1A_IW_GRDH_1SDV_20170819T165051"),
            ),
        ),
        Tile(
            "29SND", 32629, (500_000, 4_400_000), "Portugal",
            ("Temperate, dry summer, hot summer", "Temperate, dry summer, warm summer"),
            (211, 221, 223, 243, 244, 311, 312, 323, 324, 512),
            (
                Acquisition("S2B_MSIL2A_20171002T112109_N9999_R037", "S1B_IW_GRDH_1SDV_20171003T183531"),
                Acquisition("S2A_MSIL2A_20180228T112111_N9999_R037", "S1A_IW_GRDH_1SDV_20180301T183449"),
            ),
        ),
        Tile(
            "35VNL", 32635, (500_000, 7_100_000), "Finland",
            ("Cold, no dry season, cold summer", "Cold, no dry season, warm summer"),
            (211, 231, 312, 313, 324, 412, 512),
            (
                Acquisition("S2B_MSIL2A_20180525T094029_N9999_R036", "S1B_IW_GRDH_1SDV_20180524T043110"),
                Acquisition("S2A_MSIL2A_20170824T094031_N9999_R036", "S1A_IW_GRDH_1SDV_20170825T154337"),
            ),
        ),
    )
}
GRID_CELLS = 91  # a 109.8 km tile holds 91 whole 1,200 m patches per side

#: a rectangle of one CLC code: rows r0:r1, cols c0:c1 (half-open, 10 m pixels)
Rect = Tuple[int, int, int, int, int]


@dataclass(frozen=True)
class _Spec:
    """Everything that defines a patch; arrays and rows are derived from it deterministically."""

    tile: Tile
    acquisition: Acquisition
    x: int
    y: int
    split: str
    climate_zone: str
    rects: Tuple[Rect, ...]
    has_caption: bool = True
    real_rows: bool = False  # carry REAL_ROWS instead of generated rows
    max_rows: int = 25

    @property
    def patch_id(self) -> str:
        return f"{self.acquisition.s2_prefix}_T{self.tile.name}_{self.x:02d}_{self.y:02d}"

    @property
    def s1_name(self) -> str:
        return f"{self.acquisition.s1_prefix}_{self.tile.name}_{self.x}_{self.y}"

    @property
    def season(self) -> str:
        return SEASON_OF_MONTH[self.acquisition.month]

    @property
    def ul(self) -> Tuple[int, int]:
        return self.tile.ul[0] + 1200 * self.x, self.tile.ul[1] - 1200 * self.y


# The real patch (docs/release.md#text-formats). Its map is drawn so that the real answers hold:
# broad-leaved forest 5,860 px = 586,000 m2 (40.7 %), one arable region with box
# [0.0 0.0, 0.93 0.45], one inland-water region [0.0 0.37, 1.0 1.0] touching the
# forest, forest extent [0.0 0.0, 1.0 0.94], and both real points inside their region.
REAL_PATCH_ID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39"
REAL_S1_NAME = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"
_REAL_MAP: Tuple[Rect, ...] = (
    (0, 45, 0, 111, 211), (45, 54, 0, 89, 211),
    (0, 45, 111, 120, 311), (45, 54, 89, 112, 311), (54, 88, 0, 112, 311), (88, 112, 0, 60, 311),
    (112, 120, 0, 120, 512), (88, 112, 60, 120, 512), (45, 88, 112, 120, 512),
)
REAL_CAPTION = (
    'This satellite image, captured during the summer season in Austria, showcases a diverse landscape within the '
    '"temperate, no dry season, warm summer" climate zone. The dominant feature is the broad-leaved forest, covering '
    "approximately 586,000 square meters, which stretches across the centre of the scene and reaches the right edge. "
    "A single continuous area of arable land, spanning about 579,600 square meters, occupies most of the upper part "
    "of the image. Inland waters, covering roughly 274,400 square meters, run along the right side and the bottom of "
    "the image and border the forest directly, giving the scene a calm, well-watered character."
)
#: (ID, type, category, input, output) exactly as in docs/release.md#text-formats
#: (4 of the patch's 22 IDs were never published)
REAL_ROWS: Tuple[Tuple[int, str, str, str, str], ...] = (
    (27519, "binary", "adjacency", "Would you identify any broad-leaved forest as lying right beside inland waters?", "yes"),
    (27521, "binary", "area", "Does the image contain classes other than inland waters?", "yes"),
    (27522, "binary", "area", "Would you say that arable lands take up between 60% and 70% of the image?", "no"),
    (27523, "binary", "count", "Does the image illustrate fewer than three connected regions of inland waters?", "yes"),
    (27525, "binary", "presence", "Do parts of the image correspond to inland waters?", "yes"),
    (27527, "bounding box", "point",
     "Generate a bounding box for the land cover class instance found at <point>(0.35, 0.16)</point> in the satellite image.",
     "[0.0 0.0, 0.93 0.45]"),
    (27529, "bounding box", "point",
     "Provide a bounding box around the land cover class instance found at <point>(0.64, 0.79)</point> in the satellite image.",
     "[0.0 0.37, 1.0 1.0]"),
    (27530, "bounding box", "reference", "Identify a continuous patch of <ref>broad-leaved forest</ref>.", "[0.0 0.0, 1.0 0.94]"),
    (27531, "bounding box", "reference", "Point out a patch of <ref>inland waters</ref> in the image.", "[0.0 0.37, 1.0 1.0]"),
    (27532, "bounding box", "reference", "Locate a patch of <ref>arable land</ref> present in the image.",
     "[0.0 0.0, 0.93 0.45]"),
    (27533, "captioning", "None", "Describe this satellite image, including the location, season, and observed land cover.",
     REAL_CAPTION),
    (27534, "mcq", "adjacency",
     "Select the classes in contact: a) Arable land and Natural grassland and sparsely vegetated areas, "
     "b) Inland waters and Pastures, c) Arable land and Broad-leaved forest, d) Agro-forestry areas and Permanent crops", "c"),
    (27535, "mcq", "area",
     "How much area do broad-leaved forests occupy? a) 10 to 50%, b) 50 to 60%, c) 0 to 10%, d) 70 to 90%", "a"),
    (27536, "mcq", "climate zone",
     "Which climate zone is captured in the satellite image? a) Cold, dry summer, warm summer, "
     "b) Cold, no dry season, warm summer, c) Temperate, no dry season, warm summer, d) Temperate, no dry season, hot summer",
     "c"),
    (27537, "mcq", "count", "Identify the number of continuous areas of arable land: a) 0, b) 3, c) 2, d) 1", "d"),
    (27538, "mcq", "country",
     "Which country does the satellite image capture? a) Kosovo, b) Ireland, c) Switzerland, d) Austria", "d"),
    (27539, "mcq", "presence",
     "Which of these classes is visible in the image? a) Land principally occupied by agriculture, with significant areas "
     "of natural vegetation, b) Arable land, c) Agro-forestry areas, d) Coniferous forest", "b"),
    (27540, "mcq", "season",
     "In which of the following seasons was this satellite image captured? a) Winter, b) Spring, c) Summer, d) Autumn", "c"),
)
_REAL_LOCATION = (48.31398981125651, 13.297826045662056)  # latitude, longitude as published

#: (tile, acquisition index, x, y, split, climate zone index, required codes or fixed map, leaves, has caption)
_DEFAULT_PATCHES: Tuple[tuple, ...] = (
    ("33UUP", 0, 61, 39, "test", 0, _REAL_MAP, 0, True),
    ("33UUP", 1, 26, 57, "test", 0, (211, 311, 313, 231), 6, True),  # labels of the real v2.0 metadata row
    ("33UUP", 2, 5, 43, "train", 1, (231, 312, 112), 5, True),
    ("29SND", 0, 9, 5, "train", 0, (223, 244, 323), 5, True),
    ("29SND", 0, 10, 5, "validation", 0, (211, 243, 512), 4, True),  # S1 _10_5 sorts before _9_5
    ("29SND", 1, 73, 88, "bench", 1, (221, 311, 324), 4, True),
    ("35VNL", 0, 0, 12, "bench", 0, (312, 412, 512), 4, False),  # bench patch without a caption
    ("35VNL", 1, 47, 8, "validation", 1, (211, 313, 324, 512), 6, True),
)
_SPLIT_WEIGHTS = (("train", 0.49), ("validation", 0.25), ("test", 0.24), ("bench", 0.02))


def _rng(seed: int, key: str, stream: int) -> np.random.Generator:
    """Per-patch, per-purpose streams, so adding patches never changes existing ones."""
    return np.random.default_rng([seed, zlib.crc32(key.encode()), stream])


def _partition(rng: np.random.Generator, leaves: int, min_side: int = 16) -> List[Tuple[int, int, int, int]]:
    """Guillotine-split the patch into rectangles; regions stay contiguous and boxes exact."""
    n = DEFAULT_IMG_SIZE
    parts = [(0, n, 0, n)]
    while len(parts) < leaves:
        parts.sort(key=lambda p: (-(p[1] - p[0]) * (p[3] - p[2]), p))
        for i, (r0, r1, c0, c1) in enumerate(parts):
            axes = [a for a, side in (("row", r1 - r0), ("col", c1 - c0)) if side >= 2 * min_side]
            if axes:
                break
        else:
            break
        axis = axes[int(rng.integers(len(axes)))]
        r0, r1, c0, c1 = parts.pop(i)
        if axis == "row":
            cut = int(rng.integers(r0 + min_side, r1 - min_side + 1))
            parts += [(r0, cut, c0, c1), (cut, r1, c0, c1)]
        else:
            cut = int(rng.integers(c0 + min_side, c1 - min_side + 1))
            parts += [(r0, r1, c0, cut), (r0, r1, cut, c1)]
    return sorted(parts)


def _random_map(rng: np.random.Generator, codes: Sequence[int], leaves: int) -> Tuple[Rect, ...]:
    parts = _partition(rng, max(leaves, len(codes)))
    assigned = list(codes) + [int(c) for c in rng.choice(codes, len(parts) - len(codes))]
    rng.shuffle(assigned)
    return tuple((*p, int(c)) for p, c in zip(parts, assigned))


def _pick_codes(rng: np.random.Generator, palette: Sequence[int]) -> List[int]:
    """2-4 codes of distinct classes, so every generated patch has something to compare."""
    by_class: Dict[str, List[int]] = {}
    for code in palette:
        by_class.setdefault(CLASS_OF_CODE[code], []).append(code)
    classes = sorted(by_class)
    chosen = rng.choice(len(classes), size=int(rng.integers(2, 5)), replace=False)
    return [int(rng.choice(by_class[classes[i]])) for i in sorted(chosen)]


def _default_specs(seed: int) -> List[_Spec]:
    specs = []
    for tile_name, acq, x, y, split, zone, codes, leaves, caption in _DEFAULT_PATCHES:
        tile = TILES[tile_name]
        key = f"{tile_name}_{acq}_{x}_{y}"
        rects = codes if leaves == 0 else _random_map(_rng(seed, key, 0), codes, leaves)
        specs.append(
            _Spec(tile, tile.acquisitions[acq], x, y, split, tile.climate_zones[zone], rects,
                  has_caption=caption, real_rows=leaves == 0, max_rows=8 if not caption else 25)
        )
    return specs


def _extra_specs(seed: int, count: int, taken: Iterable[Tuple[str, int, int]], tag: str) -> List[_Spec]:
    """Generated patches spread over the tiles and their acquisitions, on free grid cells."""
    used = set(taken)
    rng = np.random.default_rng([seed, zlib.crc32(tag.encode())])
    tiles = list(TILES.values())
    free: Dict[str, Iterator[Tuple[int, int]]] = {
        t.name: iter([(int(c) % GRID_CELLS, int(c) // GRID_CELLS) for c in rng.permutation(GRID_CELLS * GRID_CELLS)])
        for t in tiles
    }
    names, weights = zip(*_SPLIT_WEIGHTS)
    specs = []
    for i in range(count):
        tile = tiles[i % len(tiles)]
        for x, y in free[tile.name]:
            if (tile.name, x, y) not in used:
                break
        else:
            raise ValueError(f"tile {tile.name} has no free grid cell left for {count} extra patches")
        used.add((tile.name, x, y))
        acq = tile.acquisitions[(i // len(tiles)) % len(tile.acquisitions)]
        prng = _rng(seed, f"{tag}{i}", 0)
        rects = _random_map(prng, _pick_codes(prng, tile.codes), int(prng.integers(3, 7)))
        split = str(rng.choice(names, p=weights))
        zone = tile.climate_zones[int(rng.integers(len(tile.climate_zones)))]
        specs.append(_Spec(tile, acq, x, y, split, zone, rects, has_caption=bool(rng.random() > 0.02)))
    return specs


# --------------------------------------------------------------------------- map geometry


@dataclass(frozen=True)
class _Region:
    """One 4-connected region of a class; rects never overlap, so counts are exact."""

    name: str
    rects: Tuple[Rect, ...]

    @property
    def pixels(self) -> int:
        return sum((r[1] - r[0]) * (r[3] - r[2]) for r in self.rects)

    @property
    def extent(self) -> Tuple[int, int, int, int]:
        return (min(r[0] for r in self.rects), max(r[1] for r in self.rects),
                min(r[2] for r in self.rects), max(r[3] for r in self.rects))


def _touch(a: Rect, b: Rect) -> bool:
    """Edge contact of positive length (4-connectivity), not corner contact."""
    rows = min(a[1], b[1]) - max(a[0], b[0])
    cols = min(a[3], b[3]) - max(a[2], b[2])
    return (rows > 0 and (a[3] == b[2] or b[3] == a[2])) or (cols > 0 and (a[1] == b[0] or b[1] == a[0]))


@dataclass(frozen=True)
class _MapStats:
    regions: Tuple[_Region, ...]
    area: Dict[str, int]  # class -> pixels
    centroid: Dict[str, Tuple[float, float]]  # class -> (row, col)
    adjacent: frozenset  # frozenset({a, b}) of classes in edge contact

    @classmethod
    def of(cls, rects: Sequence[Rect]) -> "_MapStats":
        parent = list(range(len(rects)))

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        adjacent = set()
        for i, a in enumerate(rects):
            for j in range(i + 1, len(rects)):
                b = rects[j]
                if _touch(a, b):
                    na, nb = CLASS_OF_CODE[a[4]], CLASS_OF_CODE[b[4]]
                    if na == nb:
                        parent[root(i)] = root(j)
                    else:
                        adjacent.add(frozenset((na, nb)))
        groups: Dict[int, List[Rect]] = {}
        for i, r in enumerate(rects):
            groups.setdefault(root(i), []).append(r)
        regions = tuple(sorted((_Region(CLASS_OF_CODE[g[0][4]], tuple(g)) for g in groups.values()),
                               key=lambda r: (r.name, r.extent)))
        area: Dict[str, int] = {}
        moment: Dict[str, Tuple[float, float]] = {}
        for r0, r1, c0, c1, code in rects:
            name, px = CLASS_OF_CODE[code], (r1 - r0) * (c1 - c0)
            area[name] = area.get(name, 0) + px
            mr, mc = moment.get(name, (0.0, 0.0))
            moment[name] = (mr + px * (r0 + r1) / 2, mc + px * (c0 + c1) / 2)
        centroid = {n: (m[0] / area[n], m[1] / area[n]) for n, m in moment.items()}
        return cls(regions, area, centroid, frozenset(adjacent))

    def count(self, name: str) -> int:
        return sum(r.name == name for r in self.regions)

    @property
    def present(self) -> List[str]:
        return sorted(self.area, key=lambda n: (-self.area[n], n))


def _rasterize(rects: Sequence[Rect]) -> np.ndarray:
    out = np.zeros((DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE), MAP_DTYPE)
    for r0, r1, c0, c1, code in rects:
        out[r0:r1, c0:c1] = code
    assert out.all(), "map rectangles must cover the patch (released maps have no unlabelled pixels)"
    return out


def _coord(k: int) -> float:
    """A 0.01-grid value in minimal float repr (``0.0``, ``0.37``, ``1.0``)."""
    return k / 100


def box_of(extent: Tuple[int, int, int, int]) -> str:
    """Output string of a region: pixel-edge bounds / 120, lower rounded down, upper up."""
    r0, r1, c0, c1 = extent
    n = DEFAULT_IMG_SIZE
    x0, y0 = (100 * c0) // n, (100 * r0) // n
    x1, y1 = -((-100 * c1) // n), -((-100 * r1) // n)
    return f"[{_coord(x0)} {_coord(y0)}, {_coord(x1)} {_coord(y1)}]"


def point_of(row: int, col: int) -> str:
    """Prompt coordinates of a pixel centre, rounded to the 0.01 grid (no ties exist at 120 px)."""
    n = DEFAULT_IMG_SIZE
    return f"({_coord(round(100 * (col + 0.5) / n))}, {_coord(round(100 * (row + 0.5) / n))})"


# --------------------------------------------------------------------------- pixels

#: L2A reflectance x 10,000 per surface type, plausible Sentinel-2 spectra (band -> value)
_SPECTRA: Dict[str, Dict[str, int]] = {
    "water": dict(B01=320, B02=260, B03=310, B04=190, B05=170, B06=150, B07=140, B08=120, B8A=110, B09=80, B11=60, B12=40),
    "forest": dict(B01=250, B02=290, B03=520, B04=300, B05=820, B06=2200, B07=2700, B08=2900, B8A=3000, B09=2900,
                   B11=1400, B12=620),
    "crop": dict(B01=420, B02=510, B03=760, B04=720, B05=1100, B06=1900, B07=2200, B08=2400, B8A=2500, B09=2400,
                 B11=2100, B12=1300),
    "built": dict(B01=720, B02=820, B03=930, B04=1010, B05=1180, B06=1400, B07=1510, B08=1600, B8A=1650, B09=1500,
                  B11=1900, B12=1650),
    "open": dict(B01=520, B02=610, B03=820, B04=910, B05=1230, B06=1520, B07=1700, B08=1800, B8A=1900, B09=1800,
                 B11=2300, B12=1700),
}
assert all(set(s) == set(SENSOR_BANDS["s2"]) for s in _SPECTRA.values())
#: backscatter in dB per surface type: (VV, VH)
_BACKSCATTER: Dict[str, Tuple[float, float]] = {
    "water": (-21.0, -28.0), "forest": (-8.0, -14.0), "crop": (-11.0, -18.0), "built": (-4.0, -12.0), "open": (-13.0, -21.0),
}
_SURFACE_OF_CODE: Dict[int, str] = {
    code: ("built" if code < 200 else "crop" if code < 300 else "forest" if code in (311, 312, 313, 324)
           else "water" if code >= 500 else "open")
    for code in CLASS_OF_CODE
}
_SURFACES = tuple(_SPECTRA)
_LO_RES = 5  # the smooth field is a bilinear upsampling of a 5x5 random grid


def _upsampler(n: int) -> np.ndarray:
    pos = np.arange(n) * (_LO_RES - 1) / (n - 1)
    return np.clip(1 - np.abs(pos[:, None] - np.arange(_LO_RES)[None, :]), 0, None)


_UP = _upsampler(DEFAULT_IMG_SIZE)


def _smooth(rng: np.random.Generator) -> np.ndarray:
    return _UP @ rng.uniform(-1, 1, (_LO_RES, _LO_RES)) @ _UP.T


def _block_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Average f x f blocks of the leading two axes (f = 1 is a no-op)."""
    f = a.shape[0] // size
    return a if f == 1 else a.reshape(size, f, size, f, *a.shape[2:]).mean(axis=(1, 3))


def _surface_index(rects: Sequence[Rect]) -> np.ndarray:
    out = np.empty((DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE), np.intp)
    for r0, r1, c0, c1, code in rects:
        out[r0:r1, c0:c1] = _SURFACES.index(_SURFACE_OF_CODE[code])
    return out


def _s2_bands(seed: int, spec: _Spec) -> Dict[str, np.ndarray]:
    """Field-wise spectra under smooth illumination, averaged onto each band's native grid, plus noise.

    Computed per band group (not per band) because benchmark fixtures generate
    thousands of patches.
    """
    rng = _rng(seed, spec.patch_id, 2)
    surface = _surface_index(spec.rects)
    shade = 1 + 0.15 * _smooth(rng)
    fractions = {DEFAULT_IMG_SIZE: np.eye(len(_SURFACES))[surface]}  # surface shares per pixel, coarsened stepwise
    bands = {}
    for group in groups_for_sensors(("s2",)):
        fractions[group.size] = _block_mean(fractions[min(n for n in fractions if n >= group.size)], group.size)
        spectra = np.array([[_SPECTRA[s][b] for b in group.bands] for s in _SURFACES], np.float64)
        level = (fractions[group.size] @ spectra) * _block_mean(shade, group.size)[..., None]
        level += rng.standard_normal(level.shape, np.float32) * (0.04 * level + 6)
        values = np.clip(np.rint(level), 35, 10_000).astype(group.dtype)
        bands.update({b: np.ascontiguousarray(values[..., i]) for i, b in enumerate(group.bands)})
    return {b: bands[b] for b in SENSOR_BANDS["s2"]}


def _s1_bands(seed: int, spec: _Spec) -> Dict[str, np.ndarray]:
    """Backscatter in dB with speckle-like noise; VH stays well below VV as in real scenes."""
    rng = _rng(seed, spec.s1_name, 1)
    surface = _surface_index(spec.rects)
    relief = 1.5 * _smooth(rng)
    limits = {"VV": (-25.0, 10.0), "VH": (-35.0, 2.0)}
    bands = {}
    for i, band in enumerate(SENSOR_BANDS["s1"]):
        group = GROUP_OF_BAND[band]
        level = np.array([_BACKSCATTER[s][i] for s in _SURFACES])[surface] + relief
        level += 1.6 * rng.standard_normal(level.shape, np.float32)
        bands[band] = np.clip(level, *limits[band]).astype(group.dtype)
    return bands


# --------------------------------------------------------------------------- GeoTIFF encoding


def rows_per_strip(width: int, dtype: Union[str, np.dtype]) -> int:
    """GDAL's default strip height (8 KiB strips): 34 / 60 / 20 / 17 rows for the released files."""
    return max(1, 8192 // (width * np.dtype(dtype).itemsize))


def encode_geotiff(array: np.ndarray, epsg: int, transform: Affine, nodata: Optional[float],
                   compress: Optional[str] = None) -> bytes:
    """One single-band striped GeoTIFF as the release wrote it (docs/release.md#geotiff-properties)."""
    height, width = array.shape
    options: Dict[str, object] = dict(tiled=False, blockysize=min(height, rows_per_strip(width, array.dtype)), compress="none")
    if compress == "deflate":
        options.update(compress="deflate", predictor=2)
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff", width=width, height=height, count=1, dtype=array.dtype, crs=CRS.from_epsg(epsg),
            transform=transform, nodata=nodata, photometric="minisblack", **options,
        ) as ds:
            ds.write(array, 1)
        return mem.read()


class _UncompressedEncoder:
    """Uncompressed files differ only in tiepoint and pixels: reuse rasterio's header.

    Encoding ~30,000 files through GDAL would dominate benchmark fixtures, so the
    header of each (group, CRS) is taken once from rasterio, its tiepoint is
    patched, and the first file of every kind is checked byte-for-byte against a
    full rasterio encode.
    """

    def __init__(self) -> None:
        self._templates: Dict[Tuple[str, int], Tuple[bytes, int]] = {}

    def encode(self, group: BandGroup, array: np.ndarray, epsg: int, transform: Affine) -> bytes:
        nodata = NODATA[group.sensor]
        key = (group.name, epsg)
        if key not in self._templates:
            reference = encode_geotiff(array, epsg, transform, nodata)
            header_len, tiepoint_at = _tiff_layout(reference)
            assert header_len + array.nbytes == len(reference), "strips are not contiguous after the header"
            self._templates[key] = (reference[:header_len], tiepoint_at)
            out = self._splice(key, array, transform)
            assert out == reference, f"template encoding of {group.name} deviates from rasterio"
            return out
        return self._splice(key, array, transform)

    def _splice(self, key: Tuple[str, int], array: np.ndarray, transform: Affine) -> bytes:
        header, at = self._templates[key]
        tiepoint = struct.pack("<dd", transform.c, transform.f)
        data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        return b"".join((header[: at + 24], tiepoint, header[at + 40 :], data))


def _tiff_layout(tiff: bytes) -> Tuple[int, int]:
    """(first strip offset, offset of the ModelTiepoint doubles) of a classic little-endian TIFF."""
    assert tiff[:4] == b"II*\x00", "expected a classic little-endian TIFF"
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (entries,) = struct.unpack_from("<H", tiff, ifd)
    found: Dict[int, Tuple[int, int, int]] = {}
    for i in range(entries):
        tag, typ, count, value = struct.unpack_from("<HHII", tiff, ifd + 2 + 12 * i)
        found[tag] = (typ, count, value)
    typ, count, value = found[273]  # StripOffsets
    first_strip = value if count == 1 else struct.unpack_from("<I" if typ == 4 else "<H", tiff, value)[0]
    typ, count, value = found[33922]  # ModelTiepointTag: 6 doubles, X/Y at index 3/4
    assert (typ, count) == (12, 6)
    return first_strip, value


# --------------------------------------------------------------------------- archives


def write_tar_zst(path: Path, members: Iterable[Tuple[str, bytes]]) -> None:
    """GNU tar of sorted file members, compressed as one zstd frame without a seek table.

    Members must arrive sorted (checked) so generation can stream them instead
    of holding every file in memory.
    """
    previous = ""
    with open(path, "wb") as fh:
        # threads=-1 is zstd's multi-threaded mode like the release's `zstd -6 --threads=0`;
        # its output does not depend on the number of workers, so it stays deterministic
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=-1)
        with compressor.stream_writer(fh, closefd=False) as zfh:
            with tarfile.open(fileobj=zfh, mode="w|", format=tarfile.GNU_FORMAT) as tar:
                for name, data in members:
                    assert name > previous, f"tar members out of order: {previous!r} then {name!r}"
                    previous = name
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))


# --------------------------------------------------------------------------- public records


@dataclass(eq=False)
class FixturePatch:
    """One S1/S2 pair as written; arrays are regenerated on first access and then cached."""

    patch_id: str
    s1_name: str
    split: str
    tile: str
    rows: int
    country: str
    season: str
    climate_zone: str
    latitude: float
    longitude: float
    epsg: int
    ul: Tuple[int, int]
    in_archives: bool
    has_caption: bool
    _spec: _Spec = field(repr=False)
    _seed: int = field(repr=False)
    _cache: Dict[str, object] = field(default_factory=dict, repr=False)

    @property
    def bands(self) -> Dict[str, np.ndarray]:
        """All 14 bands (S2 and S1 names are disjoint) at native size and dtype, read-only."""
        if "bands" not in self._cache:
            bands = {**_s2_bands(self._seed, self._spec), **_s1_bands(self._seed, self._spec)}
            for a in bands.values():
                a.flags.writeable = False
            self._cache["bands"] = bands
        return self._cache["bands"]  # type: ignore[return-value]

    @property
    def reference_map(self) -> np.ndarray:
        if "map" not in self._cache:
            a = _rasterize(self._spec.rects)
            a.flags.writeable = False
            self._cache["map"] = a
        return self._cache["map"]  # type: ignore[return-value]

    @property
    def labels(self) -> List[str]:
        """19-class names present in the reference map, like metadata.parquet ``labels``."""
        return sorted({CLASS_OF_CODE[r[4]] for r in self._spec.rects})

    def transform(self, resolution_m: int = 10) -> Affine:
        return Affine(resolution_m, 0.0, self.ul[0], 0.0, -resolution_m, self.ul[1])

    def member_paths(self) -> Dict[str, str]:
        """Archive member of every band, plus ``"reference_map"``."""
        paths = {b: band_path("s2", self.patch_id, b) for b in SENSOR_BANDS["s2"]}
        paths.update({b: band_path("s1", self.s1_name, b) for b in SENSOR_BANDS["s1"]})
        paths["reference_map"] = reference_map_path(self.patch_id)
        return paths


@dataclass(eq=False)
class Fixture:
    root: Path
    s2_archive: Path
    s1_archive: Path
    maps_archive: Path
    parquet: Path
    patches: List[FixturePatch]
    table: pa.Table
    seed: int
    sample: bool = False

    def patch(self, patch_id: str) -> FixturePatch:
        for p in self.patches:
            if p.patch_id == patch_id:
                return p
        raise KeyError(patch_id)

    @property
    def archives(self) -> Dict[str, Path]:
        return {"s2": self.s2_archive, "s1": self.s1_archive, "reference_maps": self.maps_archive}

    @property
    def archived_patches(self) -> List[FixturePatch]:
        return [p for p in self.patches if p.in_archives]

    @property
    def text_patches(self) -> List[FixturePatch]:
        return [p for p in self.patches if p.rows > 0]


# --------------------------------------------------------------------------- annotation text

Row = Tuple[str, str, str, str]  # type, category, input, output


def _lower(name: str) -> str:
    return name[0].lower() + name[1:]


def _mcq(rnd: random.Random, question: str, correct: str, distractors: Sequence[str]) -> Tuple[str, str]:
    options = [correct, *distractors[:3]]
    assert len(set(options)) == 4, options
    rnd.shuffle(options)
    text = ", ".join(f"{'abcd'[i]}) {o}" for i, o in enumerate(options))
    return f"{question} {text}", "abcd"[options.index(correct)]


def _where(row: float, col: float) -> str:
    v = "upper" if row < 40 else "lower" if row >= 80 else ""
    h = "left" if col < 40 else "right" if col >= 80 else ""
    if not v and not h:
        return "in the centre of the image"
    if v and h:
        return f"in the {v}-{h} part of the image"
    return f"in the {v} part of the image" if v else f"along the {h} side of the image"


def _direction(a: Tuple[float, float], b: Tuple[float, float]) -> Optional[str]:
    """Direction of centroid a seen from b (x = column, y = row downwards); None if too close to call."""
    dy, dx = a[0] - b[0], a[1] - b[1]
    if math.hypot(dx, dy) < 8:
        return None
    angle = math.degrees(math.atan2(-dy, dx)) % 360
    sector = int(((angle + 22.5) % 360) // 45)
    if abs(((angle + 22.5) % 45) - 22.5) > 17:  # within 5 degrees of a sector border
        return None
    return DIRECTIONS[sector]


def _caption(rnd: random.Random, spec: _Spec, stats: _MapStats) -> str:
    season, zone = spec.season.lower(), spec.climate_zone.lower()
    country = spec.tile.country
    first, *others = stats.present
    intro = rnd.choice(
        (
            f'This satellite image, captured during the {season} season in {country}, showcases a diverse landscape '
            f'within the "{zone}" climate zone.',
            f'Captured in {country} during the {season}, this image shows an area that belongs to the "{zone}" climate zone.',
            f'This {season} scene from {country} depicts terrain typical of the "{zone}" climate zone.',
        )
    )
    sentences = [
        intro,
        f"The dominant feature is the {_lower(first)}, covering approximately {100 * stats.area[first]:,} square meters, "
        f"{_where(*stats.centroid[first]).replace('in the', 'mainly in the', 1)}.",
    ]
    for name in others[:3]:
        n = stats.count(name)
        shape = "a single continuous area" if n == 1 else f"{NUMBER_WORDS[min(n, 5)]} separate areas"
        sentences.append(
            rnd.choice(
                (
                    f"{name} forms {shape} of about {100 * stats.area[name]:,} square meters {_where(*stats.centroid[name])}.",
                    f"Roughly {100 * stats.area[name]:,} square meters are covered by {_lower(name)}, "
                    f"which appears as {shape} {_where(*stats.centroid[name])}.",
                )
            )
        )
    pairs = sorted(tuple(sorted(p)) for p in stats.adjacent)
    if pairs:
        a, b = rnd.choice(pairs)
        sentences.append(f"The {_lower(a)} borders the {_lower(b)} directly, "
                         f"and together the land cover types form a varied, patchwork-like mosaic.")
    sentences.append(
        rnd.choice(
            (
                f"Overall, the scene reflects the typical {season} conditions of this part of {country}.",
                "The arrangement of these areas gives a clear picture of how the land is used in this region.",
            )
        )
    )
    return " ".join(sentences)


def _generated_rows(rnd: random.Random, spec: _Spec, stats: _MapStats) -> List[Row]:
    """Rows of every type and category, answered from the patch's reference map."""
    present = stats.present
    absent = [n for n in CLASS_NAMES if n not in stats.area]
    rows: List[Row] = []

    # binary: each category once, presence and area twice, yes/no mixed
    for _ in range(2):
        target = rnd.choice(present) if rnd.random() < 0.5 else rnd.choice(absent)
        q = rnd.choice(("Do parts of the image correspond to {}?", "Is there any {} visible in the image?",
                        "Can you spot {} in this image?"))
        rows.append(("binary", "presence", q.format(_lower(target)), "yes" if target in stats.area else "no"))
    name = rnd.choice(present)
    pct = 100 * stats.area[name] / DEFAULT_IMG_SIZE**2
    lo = rnd.choice((int(pct) // 10 * 10, rnd.randrange(0, 100, 10)))
    rows.append(("binary", "area", f"Would you say that {_lower(name)} takes up between {lo}% and {lo + 10}% of the image?",
                 "yes" if lo <= pct < lo + 10 else "no"))
    if rnd.random() < 0.5:
        rows.append(("binary", "area", f"Does the image contain classes other than {_lower(name)}?",
                     "yes" if len(present) > 1 else "no"))
    else:
        m2 = rnd.choice((0, 50_000, 100_000, 500_000, 1_000_000))
        rows.append(("binary", "area", f"Is the area covered by {_lower(name)} at least {m2} m2?",
                     "yes" if 100 * stats.area[name] >= m2 else "no"))
    name = rnd.choice(present + absent[:1])
    k = rnd.randint(1, 3)
    if rnd.random() < 0.5:
        rows.append(("binary", "count",
                     f"Does the image illustrate fewer than {NUMBER_WORDS[k + 1]} connected regions of {_lower(name)}?",
                     "yes" if stats.count(name) < k + 1 else "no"))
    else:
        rows.append(("binary", "count", f"Are there exactly {NUMBER_WORDS[k]} separate areas of {_lower(name)} in the image?",
                     "yes" if stats.count(name) == k else "no"))
    a, b = rnd.sample(present, 2) if len(present) > 1 else (present[0], rnd.choice(absent))
    q = rnd.choice(("Would you identify any {} as lying right beside {}?", "Is {} directly adjacent to {}?",
                    "Does {} share a border with {}?"))
    rows.append(("binary", "adjacency", q.format(_lower(a), _lower(b)), "yes" if frozenset((a, b)) in stats.adjacent else "no"))

    # mcq
    q, ans = _mcq(rnd, "Which of these classes is visible in the image?", rnd.choice(present), rnd.sample(absent, 3))
    rows.append(("mcq", "presence", q, ans))
    name = rnd.choice(present)
    pct = 100 * stats.area[name] / DEFAULT_IMG_SIZE**2
    bins = [f"{lo} to {hi}%" for lo, hi in AREA_BINS]
    right = next(f"{lo} to {hi}%" for lo, hi in AREA_BINS if lo <= pct < hi or hi == 100)
    q, ans = _mcq(rnd, f"How much area do {_lower(name)} occupy?", right, rnd.sample([x for x in bins if x != right], 3))
    rows.append(("mcq", "area", q, ans))
    name = rnd.choice(present)
    n = stats.count(name)
    q, ans = _mcq(rnd, f"Identify the number of continuous areas of {_lower(name)}:", str(n),
                  rnd.sample([str(i) for i in range(5) if i != n], 3))
    rows.append(("mcq", "count", q, ans))
    touching = sorted(tuple(sorted(p)) for p in stats.adjacent)
    if touching:
        pair = rnd.choice(touching)
        others = set()
        while len(others) < 3:
            x, y = sorted(rnd.sample(CLASS_NAMES, 2))
            if frozenset((x, y)) not in stats.adjacent:
                others.add(f"{x} and {y}")
        q, ans = _mcq(rnd, "Select the classes in contact:", f"{pair[0]} and {pair[1]}", sorted(others))
        rows.append(("mcq", "adjacency", q, ans))
    for a, b in rnd.sample([(a, b) for a in present for b in present if a != b], min(4, len(present) * (len(present) - 1))):
        direction = _direction(stats.centroid[a], stats.centroid[b])
        if direction:
            q, ans = _mcq(rnd, f"What is the relative position of the {_lower(a)} to the {_lower(b)}?", direction,
                          rnd.sample([d for d in DIRECTIONS if d != direction], 3))
            rows.append(("mcq", "relative pos", q, ans))
            break
    q = rnd.choice(("Which country does the satellite image capture?", "In which country was this satellite image taken?"))
    other_countries = [c for c in COUNTRIES if c != spec.tile.country]
    rows.append(("mcq", "country", *_mcq(rnd, q, spec.tile.country, rnd.sample(other_countries, 3))))
    q = rnd.choice(("In which of the following seasons was this satellite image captured?",
                    "During which season was this image acquired?"))
    season = SEASON_OPTION[spec.season]
    rows.append(("mcq", "season", *_mcq(rnd, q, season, rnd.sample([s for s in SEASON_OPTION.values() if s != season], 3))))
    q = rnd.choice(("Which climate zone is captured in the satellite image?",
                    "What is the climate zone of the area shown in the image?"))
    other_zones = [z for z in CLIMATE_ZONES if z != spec.climate_zone]
    rows.append(("mcq", "climate zone", *_mcq(rnd, q, spec.climate_zone, rnd.sample(other_zones, 3))))

    # bounding boxes: a point inside a region, or a class named by reference
    for region in rnd.sample(stats.regions, min(2, len(stats.regions))):
        r0, r1, c0, c1, _ = rnd.choice(region.rects)
        at = point_of(rnd.randrange(r0, r1), rnd.randrange(c0, c1))
        q = rnd.choice(
            (
                "Generate a bounding box for the land cover class instance found at <point>{}</point> in the satellite image.",
                "Provide a bounding box around the land cover class instance found at <point>{}</point> in the satellite image.",
                "Create a bounding box for the land cover class instance at <point>{}</point> in the satellite image.",
                "Output a bounding box for the land cover class instance located at <point>{}</point>.",
            )
        )
        rows.append(("bounding box", "point", q.format(at), box_of(region.extent)))
    for name in rnd.sample(present, min(2, len(present))):
        regions = [r for r in stats.regions if r.name == name]
        if len(regions) == 1:
            q = rnd.choice(("Identify a continuous patch of <ref>{}</ref>.", "Point out a patch of <ref>{}</ref> in the image.",
                            "Locate a patch of <ref>{}</ref> present in the image."))
            rows.append(("bounding box", "reference", q.format(_lower(name)), box_of(regions[0].extent)))
        else:
            largest = max(regions, key=lambda r: (r.pixels, r.extent))
            if sum(r.pixels == largest.pixels for r in regions) == 1:
                rows.append(("bounding box", "reference",
                             f"Identify the location of the <ref>largest connected region of {_lower(name)}</ref>.",
                             box_of(largest.extent)))

    if spec.has_caption:
        rows.append(("captioning", "None",
                     "Describe this satellite image, including the location, season, and observed land cover.",
                     _caption(rnd, spec, stats)))
    if len(rows) > spec.max_rows:
        rows = rnd.sample(rows, spec.max_rows)
    return rows


# --------------------------------------------------------------------------- assembly


def _latlon(specs: Sequence[_Spec]) -> List[Tuple[float, float]]:
    """Patch centres in WGS 84; for 33UUP_61_39 this reproduces the published values exactly."""
    out: List[Optional[Tuple[float, float]]] = [None] * len(specs)
    for epsg in sorted({s.tile.epsg for s in specs}):
        idx = [i for i, s in enumerate(specs) if s.tile.epsg == epsg]
        xs = [specs[i].ul[0] + 600 for i in idx]
        ys = [specs[i].ul[1] - 600 for i in idx]
        lons, lats = rasterio.warp.transform(CRS.from_epsg(epsg), CRS.from_epsg(4326), xs, ys)
        for i, lat, lon in zip(idx, lats, lons):
            out[i] = (float(lat), float(lon))
    return out  # type: ignore[return-value]


def _resolve_role(value: Union[int, Sequence[str]], specs: List[_Spec], seed: int, tag: str) -> Tuple[List[_Spec], set]:
    """int -> that many new generated patches; names -> existing patches."""
    if isinstance(value, int):
        taken = [(s.tile.name, s.x, s.y) for s in specs]
        new = _extra_specs(seed, value, taken, tag)
        return new, {s.patch_id for s in new}
    names = set(value)
    unknown = names - {s.patch_id for s in specs}
    if unknown:
        raise ValueError(f"{tag}: unknown patch ids {sorted(unknown)}")
    return [], names


def make_fixture(
    out_dir: Union[str, Path],
    *,
    seed: int = 0,
    n_extra_patches: int = 0,
    archive_only: Union[int, Sequence[str]] = (),
    text_only: Union[int, Sequence[str]] = (),
    sample: bool = False,
) -> Fixture:
    """Write the three archives and the parquet into out_dir (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = _default_specs(seed)
    specs += _extra_specs(seed, n_extra_patches, [(s.tile.name, s.x, s.y) for s in specs], "extra")
    new, archive_only_ids = _resolve_role(archive_only, specs, seed, "archive_only")
    specs += new
    new, text_only_ids = _resolve_role(text_only, specs, seed, "text_only")
    specs += new
    if archive_only_ids & text_only_ids:
        raise ValueError(f"patches cannot be archive-only and text-only: {sorted(archive_only_ids & text_only_ids)}")
    assert len({s.patch_id for s in specs}) == len(specs) and len({s.s1_name for s in specs}) == len(specs)

    # parquet rows: IDs consecutive per patch, rows grouped by type/category as in the real file
    locations = _latlon(specs)
    records: List[tuple] = []
    row_counts: Dict[str, int] = {}
    next_id = 1000
    real_ids = range(REAL_ROWS[0][0], REAL_ROWS[-1][0] + 1)
    for spec, (lat, lon) in zip(specs, locations):
        if spec.patch_id in archive_only_ids:
            row_counts[spec.patch_id] = 0
            continue
        if spec.real_rows:
            lat, lon = _REAL_LOCATION
            rows = [(i, *rest) for i, *rest in REAL_ROWS]
        else:
            generated = sorted(_generated_rows(random.Random(f"{seed}:{spec.patch_id}"), spec, _MapStats.of(spec.rects)),
                               key=lambda r: (r[0], r[1]))
            if next_id < real_ids.stop and next_id + len(generated) > real_ids.start:
                next_id = real_ids.stop
            rows = [(next_id + i, *r) for i, r in enumerate(generated)]
            next_id += len(generated)
        row_counts[spec.patch_id] = len(rows)
        for id_, typ, category, text, answer in rows:
            records.append((id_, spec.s1_name, spec.patch_id, text, answer, typ, category, spec.split, lat, lon,
                            spec.tile.country, spec.season, spec.climate_zone))
    order = np.random.default_rng([seed, 7]).permutation(len(records))
    columns = list(zip(*(records[i] for i in order)))
    table = pa.table({f.name: pa.array(list(c), f.type) for f, c in zip(PARQUET_SCHEMA, columns)}, schema=PARQUET_SCHEMA)
    table = table.replace_schema_metadata(SYNTHETIC_METADATA)
    parquet_path = out / PARQUET_NAME
    pq.write_table(table, parquet_path, row_group_size=max(16, len(records) // 7))

    patches = [
        FixturePatch(
            s.patch_id, s.s1_name, s.split, s.tile.name, row_counts[s.patch_id], s.tile.country, s.season, s.climate_zone,
            *(_REAL_LOCATION if s.real_rows else loc), s.tile.epsg, s.ul, s.patch_id not in text_only_ids, s.has_caption, s, seed,
        )
        for s, loc in zip(specs, locations)
    ]
    archived = [p for p in patches if p.in_archives]
    encoder = _UncompressedEncoder()
    n_default = len(_DEFAULT_PATCHES)
    keep = {p.patch_id for p in patches[:n_default]}  # small: cache their arrays for tests

    def band_members(sensor: str) -> Iterator[Tuple[str, bytes]]:
        name_of = (lambda p: p.patch_id) if sensor == "s2" else (lambda p: p.s1_name)
        make = _s2_bands if sensor == "s2" else _s1_bands
        for p in sorted(archived, key=lambda p: band_path(sensor, name_of(p), "")):
            arrays = {b: p.bands[b] for b in SENSOR_BANDS[sensor]} if p.patch_id in keep else make(seed, p._spec)
            for member, band in sorted((band_path(sensor, name_of(p), b), b) for b in SENSOR_BANDS[sensor]):
                group = GROUP_OF_BAND[band]
                yield member, encoder.encode(group, arrays[band], p.epsg, p.transform(group.resolution_m))

    def map_members() -> Iterator[Tuple[str, bytes]]:
        for p in sorted(archived, key=lambda p: reference_map_path(p.patch_id)):
            array = p.reference_map if p.patch_id in keep else _rasterize(p._spec.rects)
            yield reference_map_path(p.patch_id), encode_geotiff(array, p.epsg, p.transform(10), MAP_NODATA, compress="deflate")

    paths = {"s2": out / ARCHIVE_NAME["s2"], "s1": out / ARCHIVE_NAME["s1"], "reference_maps": out / MAPS_ARCHIVE_NAME}
    write_tar_zst(paths["s2"], band_members("s2"))
    write_tar_zst(paths["s1"], band_members("s1"))
    write_tar_zst(paths["reference_maps"], map_members())
    if sample:
        (out / SYNTHETIC_MD).write_text(_synthetic_note(seed))
    return Fixture(out, paths["s2"], paths["s1"], paths["reference_maps"], parquet_path, patches, table, seed, sample)


def _synthetic_note(seed: int) -> str:
    return f"""# Synthetic sample data

Every file in this folder is **synthetic**. None of it is BigEarthNet imagery or
BigEarthNet.txt annotation; it only has the same *format*, so the builder can be
tried without downloading the real data.

- `BigEarthNet-S2.tar.zst`, `BigEarthNet-S1.tar.zst`, `Reference_Maps.tar.zst`: GNU tar
  archives in one zstd stream, laid out like the BigEarthNet v2.0 release; the GeoTIFF
  pixel values are random fields with plausible ranges.
- `BigEarthNet.txt.parquet`: the 13-column annotation schema; its schema metadata carries
  `synthetic: true`. The 18 rows of patch `{REAL_PATCH_ID}` are real rows quoted from the
  public dataset viewer (BigEarthNet.txt, CDLA-Permissive-1.0; its caption is completed
  synthetically); all other text is generated.

Generated by `tests/make_fixtures.py` with:

    python tests/make_fixtures.py bentxt/sample --sample --seed {seed}

The same seed gives byte-identical files.
"""


# --------------------------------------------------------------------------- LMDB


def write_lmdb(fixture: Fixture, path: Union[str, Path], *, reference_maps: bool = True) -> Path:
    """A rico-hdl style LMDB: key = patch name, value = safetensors of native band arrays."""
    import lmdb
    from safetensors.numpy import save

    records: Dict[str, bytes] = {}
    for p in fixture.archived_patches:
        # rico-hdl's writer order (irrelevant to readers): S2 band groups as declared, S1 sorted
        s2 = [b for g in groups_for_sensors(("s2",)) for b in g.bands]
        records[p.patch_id] = save({b: np.ascontiguousarray(p.bands[b]) for b in s2})
        records[p.s1_name] = save({b: np.ascontiguousarray(p.bands[b]) for b in sorted(SENSOR_BANDS["s1"])})
        if reference_maps:
            records[f"{p.patch_id}_reference_map"] = save({"Data": np.ascontiguousarray(p.reference_map)})
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    map_size = 2 * sum(len(v) + 8192 for v in records.values()) + (1 << 20)
    env = lmdb.open(str(target), map_size=map_size, subdir=True)
    try:
        keys = sorted(records)
        for start in range(0, len(keys), 512):  # rico-hdl commits 512 puts per transaction
            with env.begin(write=True) as txn:
                for key in keys[start : start + 512]:
                    assert txn.put(key.encode("utf-8"), records[key], overwrite=False), key
    finally:
        env.close()
    return target


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", action="store_true", help="write SYNTHETIC.md (the sample shipped in bentxt/sample/)")
    parser.add_argument("--extra", type=int, default=0, metavar="N", help="add N generated patches")
    parser.add_argument("--lmdb", action="store_true", help="also write a rico-hdl style LMDB to OUT_DIR/Encoded-BigEarthNet")
    args = parser.parse_args(argv)
    fx = make_fixture(args.out_dir, seed=args.seed, n_extra_patches=args.extra, sample=args.sample)
    if args.lmdb:
        write_lmdb(fx, args.out_dir / "Encoded-BigEarthNet")
    for f in sorted(args.out_dir.iterdir()):
        if f.is_file():
            print(f"{f.stat().st_size:>12,}  {f.name}")
    print(f"{len(fx.patches)} patches, {fx.table.num_rows} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
