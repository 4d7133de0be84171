"""The text side at full scale: a 9,553,962-row stand-in for BigEarthNet.txt.parquet.

``generate(path)`` writes a parquet with the release's 13-column schema, its
row count and patch count, and realistic value distributions
(docs/release.md#counts): 464,044 image pairs with 14-39 rows each (bench 1-67, mean
13.89), one caption per pair except 112 bench pairs, IDs consecutive per pair
in (type, category) order like the real rows, the type / category /
split / answer proportions of the release, captions of ~700 characters that
are all different, other inputs of 60-250 characters from paraphrased
templates, boxes and points on the 0.01 grid, S1/S2 names that agree on tile
and grid cell (S2 zero-padded, S1 not) with different timestamps, and the rows
of one pair scattered through the file with consecutive IDs. Everything is
built with numpy / pyarrow vectorised ops (about a minute on 2 cores).

``measure(path, config)`` times what ``bigearthnet_txt.select_annotations``
does (``read_selection`` + ``group_by_patch`` + ``check_patch_pairs`` +
``check_pair_names``) and is meant to run in a child process
(``benchmarks.common.run_child``) so its peak RSS is its own.
``measure_pandas`` is the publisher's text side for the same selection:
``pd.read_parquet`` of the whole file plus ``isin`` filters. ``hf_layout``
rewrites the file as ``datasets`` writes Parquet (~100 MB row groups, page
index), and ``measure_stream_start`` times what a stream of one split does
before its first archive read (``benchmarks/textside.py`` runs them all).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

N_PATCHES = 464_044
N_ROWS = 9_553_962
N_CAPTIONS = 463_932
#: split -> (patches, rows, min rows per patch, max rows per patch)
SPLITS: Dict[str, Tuple[int, int, int, int]] = {
    "train": (229_114, 4_674_281, 14, 39),
    "validation": (118_095, 2_454_690, 14, 37),
    "test": (115_753, 2_409_962, 14, 38),
    "bench": (1_082, 15_029, 1, 67),
}
#: (type, category) -> rows, from the per-type and per-category totals of docs/release.md#value-sets
COMBOS: Dict[Tuple[str, str], int] = {}
_FOUR = {"presence": 1_391_053, "area": 1_390_845, "count": 1_390_730, "adjacency": 1_222_128}
_BINARY = 3_625_160
_binary_left = _BINARY
for _i, (_cat, _n) in enumerate(_FOUR.items()):
    _b = _binary_left if _i == len(_FOUR) - 1 else round(_n * _BINARY / sum(_FOUR.values()))
    _binary_left -= _b
    COMBOS[("binary", _cat)] = _b
    COMBOS[("mcq", _cat)] = _n - _b
COMBOS.update({
    ("mcq", "relative pos"): 99_015,
    ("mcq", "country"): 463_274,
    ("mcq", "season"): 463_662,
    ("mcq", "climate zone"): 463_637,
    ("bounding box", "point"): 1_143_883,
    ("bounding box", "reference"): 1_061_803,
})
assert sum(COMBOS.values()) + N_CAPTIONS == N_ROWS
assert sum(v for (t, _), v in COMBOS.items() if t == "mcq") == 3_259_184

#: BigEarthNet v2.0 metadata country counts (proportions only)
COUNTRIES = {"Finland": 155_227, "Portugal": 89_792, "Serbia": 73_385, "Lithuania": 48_365, "Ireland": 48_326,
             "Austria": 43_797, "Belgium": 11_196, "Switzerland": 4_874, "Luxembourg": 3_460, "Kosovo": 1_616}
CLIMATE_ZONES = {
    "Temperate, no dry season, warm summer": 160_000, "Cold, no dry season, warm summer": 120_000,
    "Cold, no dry season, cold summer": 70_000, "Temperate, dry summer, hot summer": 50_000,
    "Temperate, dry summer, warm summer": 40_000, "Temperate, no dry season, hot summer": 23_000,
    "Cold, dry summer, warm summer": 639, "Arid, steppe, cold": 627, "Cold, no dry season, hot summer": 46,
    "Polar, tundra": 6,
}
SEASON_OF_MONTH = {
    m: s for s, ms in (("Winter", (12, 1, 2)), ("Spring", (3, 4, 5)), ("Summer", (6, 7, 8)), ("Fall", (9, 10, 11))) for m in ms
}
CLASSES = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns", "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)
DIRECTIONS = (
    "to the right", "to the top-right", "to the top", "to the top-left",
    "to the left", "to the bottom-left", "to the bottom", "to the bottom-right",
)
SCHEMA = pa.schema([
    ("ID", pa.int64()), ("s1_name", pa.string()), ("patch_id", pa.string()), ("input", pa.string()), ("output", pa.string()),
    ("type", pa.string()), ("category", pa.string()), ("split", pa.string()), ("latitude", pa.float64()),
    ("longitude", pa.float64()), ("country", pa.string()), ("season", pa.string()), ("climate_zone", pa.string()),
])
#: ``01``-grid coordinates with minimal float repr (``0.0``, ``0.01`` … ``1.0``)
GRID = pa.array([repr(k / 100) for k in range(101)])


def _lower(name: str) -> str:
    return name[0].lower() + name[1:]


def _rows_per_patch(rng: np.random.Generator, patches: int, rows: int, lo: int, hi: int) -> np.ndarray:
    """Counts in [lo, hi] summing exactly to ``rows``, spread around the mean."""
    mean = rows / patches
    counts = np.clip(np.rint(rng.normal(mean, max(2.0, (hi - lo) / 8), patches)), lo, hi).astype(np.int64)
    while (diff := rows - int(counts.sum())) != 0:
        room = np.flatnonzero(counts < hi) if diff > 0 else np.flatnonzero(counts > lo)
        pick = rng.choice(room, size=min(abs(diff), len(room)), replace=False)
        counts[pick] += 1 if diff > 0 else -1
    return counts


def _take(pool: Sequence[str], idx: np.ndarray) -> pa.Array:
    return pa.array(list(pool), pa.string()).take(pa.array(idx))


def _pick(rng: np.random.Generator, pool: Sequence[str], n: int) -> pa.Array:
    return _take(pool, rng.integers(0, len(pool), n))


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _mcq_pool(rng: np.random.Generator, questions: Sequence[str], options: Sequence[str], size: int) -> List[str]:
    out = []
    for _ in range(size):
        picks = rng.choice(len(options), 4, replace=False)
        text = ", ".join(f"{'abcd'[i]}) {options[p]}" for i, p in enumerate(picks))
        out.append(f"{questions[rng.integers(len(questions))]} {text}")
    return out


def _input_pools(rng: np.random.Generator) -> Dict[Tuple[str, str], List[str]]:
    """Paraphrased templates x class names, as in the release (several hundred to thousands each)."""
    low = [_lower(c) for c in CLASSES]
    pools: Dict[Tuple[str, str], List[str]] = {}
    pools[("binary", "presence")] = [q.format(c) for q in (
        "Do parts of the image correspond to {}?", "Is there any {} visible in the image?", "Can you spot {} in this image?",
        "Does the image show {}?", "Are there areas of {} in the scene?") for c in low]
    pools[("binary", "area")] = (
        [f"Would you say that {c} takes up between {lo}% and {lo + 10}% of the image?" for c in low for lo in range(0, 100, 10)]
        + [f"Is the area covered by {c} at least {m} m2?" for c in low for m in (0, 50_000, 100_000, 500_000, 1_000_000)]
        + [f"Does the image contain classes other than {c}?" for c in low])
    pools[("binary", "count")] = [q.format(n, c) for q in (
        "Does the image illustrate fewer than {} connected regions of {}?",
        "Are there exactly {} separate areas of {} in the image?",
        "Can you count more than {} distinct patches of {}?") for n in ("one", "two", "three", "four", "five") for c in low]
    pools[("binary", "adjacency")] = [q.format(a, b) for q in (
        "Would you identify any {} as lying right beside {}?", "Is {} directly adjacent to {}?",
        "Does {} share a border with {}?")
        for a in low for b in low if a != b]
    pools[("mcq", "presence")] = _mcq_pool(
        rng, ("Which of these classes is visible in the image?", "Which land cover class appears in the image?"), CLASSES, 4000)
    pools[("mcq", "area")] = [f"How much area do {c} occupy? " + ", ".join(f"{'abcd'[i]}) {b}" for i, b in enumerate(bins))
                              for c in low for bins in (("10 to 50%", "50 to 60%", "0 to 10%", "70 to 90%"),
                                                        ("60 to 70%", "0 to 10%", "90 to 100%", "10 to 50%"),
                                                        ("0 to 10%", "70 to 90%", "50 to 60%", "60 to 70%"))]
    pools[("mcq", "count")] = [f"Identify the number of continuous areas of {c}: a) {a}, b) {b}, c) {d}, d) {e}"
                               for c in low for a, b, d, e in (("0", "3", "2", "1"), ("4", "1", "0", "2"), ("2", "0", "1", "3"))]
    pairs = [f"{a} and {b}" for a in CLASSES for b in CLASSES if a < b]
    pools[("mcq", "adjacency")] = _mcq_pool(rng, ("Select the classes in contact:", "Which two classes share a border?"), pairs,
                                            4000)
    pools[("mcq", "relative pos")] = [
        f"What is the relative position of the {a} to the {b}? "
        + ", ".join(f"{'abcd'[i]}) {d}" for i, d in enumerate(rng.choice(DIRECTIONS, 4, replace=False)))
        for a in low for b in low if a != b]
    pools[("mcq", "country")] = _mcq_pool(
        rng, ("Which country does the satellite image capture?", "In which country was this satellite image taken?"),
        list(COUNTRIES), 400)
    pools[("mcq", "season")] = _mcq_pool(
        rng, ("In which of the following seasons was this satellite image captured?",
              "During which season was this image acquired?"),
        ("Winter", "Spring", "Summer", "Autumn"), 200)
    pools[("mcq", "climate zone")] = _mcq_pool(
        rng, ("Which climate zone is captured in the satellite image?",
              "What is the climate zone of the area shown in the image?"),
        list(CLIMATE_ZONES), 2000)
    pools[("bounding box", "reference")] = [q.format(c) for q in (
        "Identify a continuous patch of <ref>{}</ref>.", "Point out a patch of <ref>{}</ref> in the image.",
        "Locate a patch of <ref>{}</ref> present in the image.",
        "Identify the location of the <ref>largest connected region of {}</ref>.",
        "Find the <ref>smallest region of {}</ref> in the image.") for c in low]
    return pools


_POINT_TEMPLATES = (
    ("Generate a bounding box for the land cover class instance found at <point>(", ")</point> in the satellite image."),
    ("Provide a bounding box around the land cover class instance found at <point>(", ")</point> in the satellite image."),
    ("Create a bounding box for the land cover class instance at <point>(", ")</point> in the satellite image."),
    ("Output a bounding box for the land cover class instance located at <point>(", ")</point>."),
)
_CAPTION_INPUTS = (
    "Describe this satellite image, including the location, season, and observed land cover.",
    "Provide a detailed description of this satellite image, mentioning its location, season and land cover.",
    "Write a caption for this satellite image that covers where and when it was taken and what land cover it shows.",
)


def _caption_column(rng: np.random.Generator, n: int, country: pa.Array, season: pa.Array, zone: pa.Array) -> pa.Array:
    """Distinct captions of ~700 characters: 5-6 sentences with class names, areas and places."""
    low = [_lower(c) for c in CLASSES]
    places = ["in the upper-left part of the image", "in the lower-right part of the image", "in the centre of the image",
              "along the left side of the image", "in the upper part of the image", "along the right side of the image"]
    shapes = ["a single continuous area", "two separate areas", "three separate areas", "several scattered fragments"]
    intro = [("This satellite image, captured during the ", " season in ", ", showcases a diverse landscape within the \""),
             ("Captured during the ", " in ", ", this image shows an area that belongs to the \""),
             ("This ", " scene from ", " depicts terrain typical of the \"")]
    k = rng.integers(0, len(intro), n)
    season_l, zone_l = pc.utf8_lower(season), pc.utf8_lower(zone)
    parts = [_take([a for a, _, _ in intro], k), season_l, _take([b for _, b, _ in intro], k), country,
             _take([c for _, _, c in intro], k), zone_l, pa.scalar('" climate zone. The dominant feature is the ')]
    parts += [_pick(rng, low, n), pa.scalar(", covering approximately "),
              pc.cast(pa.array(rng.integers(20, 1400, n) * 1000), pa.string()), pa.scalar(" square meters, mainly "),
              _pick(rng, places, n), pa.scalar(". ")]
    for _ in range(2):
        parts += [_pick(rng, CLASSES, n), pa.scalar(" forms "), _pick(rng, shapes, n), pa.scalar(" of about "),
                  pc.cast(pa.array(rng.integers(5, 900, n) * 1000), pa.string()), pa.scalar(" square meters "),
                  _pick(rng, places, n), pa.scalar(". ")]
    parts += [pa.scalar("The "), _pick(rng, low, n), pa.scalar(" borders the "), _pick(rng, low, n),
              pa.scalar(" directly, and together the land cover types form a varied, patchwork-like mosaic. "),
              _pick(rng, ["Overall, the scene reflects the typical conditions of this region and season.",
                          "The arrangement of these areas gives a clear picture of how the land is used in this region.",
                          "Small settlements and roads are interspersed between the fields and forests."], n)]
    return _join(*parts)


def _names(rng: np.random.Generator, n: int) -> Tuple[pa.Array, pa.Array, np.ndarray]:
    """Unique S2 ``patch_id`` / S1 ``s1_name`` pairs (same tile and cell, other timestamps) and each pair's month."""
    letters = np.array(list("CDEFGHJKLMNPQRSTUVWXYZ"))
    tiles = set()
    while len(tiles) < 115:
        tiles.add(f"{rng.choice([29, 31, 32, 33, 34, 35, 36])}{rng.choice(list('STUVW'))}{''.join(rng.choice(letters, 2))}")
    tiles = sorted(tiles)
    cells = rng.choice(len(tiles) * 91 * 91, n, replace=False)
    tile_i, x, y = cells // (91 * 91), (cells // 91) % 91, cells % 91
    # acquisitions: ~4 S2 dates per tile, June 2017 - May 2018
    months = np.array([6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5])
    acq = rng.integers(0, 4, n)
    acq_key = tile_i * 4 + acq
    acq_month = months[rng.integers(0, 12, len(tiles) * 4)]
    acq_day = rng.integers(1, 29, len(tiles) * 4)
    s2_stamp = [f"{2017 + (m < 6)}{m:02d}{d:02d}T{h:02d}{mi:02d}{s:02d}" for m, d, h, mi, s in zip(
        acq_month, acq_day, rng.integers(9, 12, len(acq_month)), rng.integers(0, 60, len(acq_month)),
        rng.integers(0, 60, len(acq_month)))]
    s1_stamp = [f"{2017 + (m < 6)}{m:02d}{max(1, d - 1):02d}T{h:02d}{mi:02d}{s:02d}" for m, d, h, mi, s in zip(
        acq_month, acq_day, rng.integers(4, 18, len(acq_month)), rng.integers(0, 60, len(acq_month)),
        rng.integers(0, 60, len(acq_month)))]
    s2_head = [f"S2{'AB'[i % 2]}_MSIL2A_{st}_N9999_R{1 + i % 143:03d}_T{tiles[i // 4]}_" for i, st in enumerate(s2_stamp)]
    s1_head = [f"S1{'BA'[i % 2]}_IW_GRDH_1SDV_{st}_{tiles[i // 4]}_" for i, st in enumerate(s1_stamp)]
    xs, ys = pc.cast(pa.array(x), pa.string()), pc.cast(pa.array(y), pa.string())
    patch_id = _join(_take(s2_head, acq_key), pc.utf8_lpad(xs, 2, "0"), pa.scalar("_"), pc.utf8_lpad(ys, 2, "0"))
    s1_name = _join(_take(s1_head, acq_key), xs, pa.scalar("_"), ys)
    return patch_id, s1_name, acq_month[acq_key]


def generate(path: str, seed: int = 0, row_group_size: int = 1 << 20) -> dict:
    """Write the stand-in parquet to ``path``; returns sizes and timings."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    # ---- image pairs: split, rows, names, per-pair columns
    split_of = np.repeat(np.arange(4), [s[0] for s in SPLITS.values()])
    rng.shuffle(split_of)
    counts = np.zeros(N_PATCHES, dtype=np.int64)
    for k, (patches, rows, lo, hi) in enumerate(SPLITS.values()):
        counts[split_of == k] = _rows_per_patch(rng, patches, rows, lo, hi)
    has_caption = np.ones(N_PATCHES, dtype=bool)
    bench = np.flatnonzero(split_of == 3)
    has_caption[rng.choice(bench, N_PATCHES - N_CAPTIONS, replace=False)] = False
    patch_id, s1_name, month = _names(rng, N_PATCHES)
    country_p = np.array(list(COUNTRIES.values()), float)
    zone_p = np.array(list(CLIMATE_ZONES.values()), float)
    patch_cols = {
        "patch_id": patch_id,
        "s1_name": s1_name,
        "split": _take(list(SPLITS), split_of),
        "country": _take(list(COUNTRIES), rng.choice(len(COUNTRIES), N_PATCHES, p=country_p / country_p.sum())),
        "season": _take([SEASON_OF_MONTH[m] for m in range(1, 13)], month - 1),
        "climate_zone": _take(list(CLIMATE_ZONES), rng.choice(len(CLIMATE_ZONES), N_PATCHES, p=zone_p / zone_p.sum())),
        "latitude": pa.array(rng.uniform(36.9, 70.0, N_PATCHES)),
        "longitude": pa.array(rng.uniform(-10.5, 29.0, N_PATCHES)),
    }
    # ---- rows in pair order (the caption slot first; IDs are assigned below)
    row_patch = np.repeat(np.arange(N_PATCHES), counts)
    first = np.zeros(N_ROWS, dtype=bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    is_caption = first & has_caption[row_patch]
    assert int(is_caption.sum()) == N_CAPTIONS
    combo_names = list(COMBOS)
    combo = np.full(N_ROWS, -1, dtype=np.int64)
    labels = np.repeat(np.arange(len(combo_names)), list(COMBOS.values()))
    rng.shuffle(labels)
    combo[~is_caption] = labels
    del labels
    perm = rng.permutation(N_ROWS)  # the file's row order: a pair's rows end up scattered
    # IDs: consecutive per pair, ordered by (type, category) within the pair like the real rows
    # (docs/release.md#text-formats: binary adjacency, area, ..., bounding box, captioning, mcq ...)
    id_order = sorted([("captioning", "None")] + combo_names)
    rank = np.array([id_order.index(("captioning", "None"))] + [id_order.index(c) for c in combo_names], dtype=np.int64)
    by_id = np.argsort(row_patch * len(id_order) + rank[combo + 1], kind="stable")
    ids = np.empty(N_ROWS, dtype=np.int64)
    ids[by_id] = np.arange(1, N_ROWS + 1)
    del by_id
    columns: Dict[str, pa.Array] = {"ID": pa.array(ids)}
    rp = pa.array(row_patch)
    for name, values in patch_cols.items():
        columns[name] = values.take(rp)
    del rp
    types = ["captioning"] + [t for t, _ in combo_names]
    cats = ["None"] + [c for _, c in combo_names]
    columns["type"] = _take(types, combo + 1)
    columns["category"] = _take(cats, combo + 1)
    # ---- input and output, per kind of row
    pools = _input_pools(rng)
    kinds = [(-1, ("captioning", "None"))] + list(enumerate(combo_names))
    in_parts, out_parts, where_parts = [], [], []
    for k, (kind, category) in kinds:
        where = np.flatnonzero(combo == k)
        n = len(where)
        if kind == "captioning":
            rp = pa.array(row_patch[where])
            text_in = _pick(rng, _CAPTION_INPUTS, n)
            text_out = _caption_column(rng, n, patch_cols["country"].take(rp), patch_cols["season"].take(rp),
                                       patch_cols["climate_zone"].take(rp))
        elif category == "point":
            t = rng.integers(0, len(_POINT_TEMPLATES), n)
            text_in = _join(_take([a for a, _ in _POINT_TEMPLATES], t), GRID.take(pa.array(rng.integers(0, 101, n))),
                            pa.scalar(", "), GRID.take(pa.array(rng.integers(0, 101, n))),
                            _take([b for _, b in _POINT_TEMPLATES], t))
        else:
            text_in = _pick(rng, pools[(kind, category)], n)
        if kind == "binary":
            text_out = _take(["no", "yes"], (rng.random(n) < 1_769_711 / 3_625_160).astype(np.int64))
        elif kind == "mcq":
            text_out = _take(["a", "b", "c", "d"], rng.integers(0, 4, n))
        elif kind == "bounding box":
            x0, x1 = np.sort(rng.integers(0, 101, (2, n)), axis=0)
            y0, y1 = np.sort(rng.integers(0, 101, (2, n)), axis=0)
            text_out = _join(pa.scalar("["), GRID.take(pa.array(x0)), pa.scalar(" "), GRID.take(pa.array(y0)), pa.scalar(", "),
                             GRID.take(pa.array(x1)), pa.scalar(" "), GRID.take(pa.array(y1)), pa.scalar("]"))
        in_parts.append(text_in)
        out_parts.append(text_out)
        where_parts.append(where)
    # scatter the per-kind pieces back to row order with one take
    order = np.concatenate(where_parts)
    back = np.empty(N_ROWS, dtype=np.int64)
    back[order] = np.arange(N_ROWS)
    back_arr = pa.array(back)
    columns["input"] = pa.concat_arrays(in_parts).take(back_arr)
    columns["output"] = pa.concat_arrays(out_parts).take(back_arr)
    del in_parts, out_parts, back_arr
    gc.collect()
    t_build = time.perf_counter() - t0
    # ---- shuffle rows and write
    perm_arr = pa.array(perm)
    table = pa.table({f.name: columns.pop(f.name).take(perm_arr) for f in SCHEMA}, schema=SCHEMA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path) + ".tmp"
    pq.write_table(table, tmp, row_group_size=row_group_size, compression="snappy")
    Path(tmp).rename(path)
    info = {
        "rows": table.num_rows,
        "patches": N_PATCHES,
        "bytes": Path(path).stat().st_size,
        "row_groups": pq.ParquetFile(path).num_row_groups,
        "build_seconds": t_build,
        "seconds": time.perf_counter() - t0,
        "mean_input_chars": float(pc.mean(pc.utf8_length(table["input"])).as_py()),
        "mean_caption_chars": float(
            pc.mean(pc.utf8_length(table.filter(pc.equal(table["type"], "captioning"))["output"])).as_py()),
    }
    Path(str(path) + ".json").write_text(json.dumps(info, indent=1))
    return info


def ensure(path: str, seed: int = 0) -> dict:
    """The parquet at ``path``, generated once (a JSON note beside it records how)."""
    note = Path(str(path) + ".json")
    if Path(path).exists() and note.exists():
        return dict(json.loads(note.read_text()), cached=True)
    return generate(path, seed=seed)


# ----------------------------------------------------------------------------- measurements (run in a child process)


def measure(path: str, config: str, sort_by_key: bool = False) -> dict:
    """Time each step of ``select_annotations`` for a config (all its splits, as ``download_and_prepare`` reads them).

    ``sort_by_key`` passes ``sort_by=<key column>`` to ``read_selection`` (rows
    come back grouped, so ``group_by_patch`` has nothing to copy).
    """
    import bigearthnet_txt as bt
    from bentxt.join import preparing_memory_pool

    cfg = bt.BigEarthNetTxt.builder_configs[config]
    steps = {}
    kwargs = {"sort_by": cfg.key_column} if sort_by_key else {}
    with preparing_memory_pool():  # the Arrow pool download_and_prepare reads the texts with
        return _measure(path, cfg, kwargs, steps)


def _measure(path: str, cfg, kwargs: dict, steps: dict) -> dict:
    import pyarrow as pa

    from bentxt.text import annotations as ann

    t0 = time.perf_counter()
    table = ann.read_selection(path, cfg.selection(None), **kwargs)
    steps["read_selection"] = time.perf_counter() - t0
    t = time.perf_counter()
    index = ann.group_by_patch(table, cfg.key_column)
    del table
    steps["group_by_patch"] = time.perf_counter() - t
    t = time.perf_counter()
    ann.check_patch_pairs(index, path)
    steps["check_patch_pairs"] = time.perf_counter() - t
    t = time.perf_counter()
    ann.check_pair_names(index.table.take(pa.array(index.starts[:-1])), path)
    steps["check_pair_names"] = time.perf_counter() - t
    return {
        "seconds": time.perf_counter() - t0,
        "steps": steps,
        "rows": len(index.table),
        "patches": len(index),
        "table_mb": index.table.nbytes / 1e6,
        # live Arrow allocations at their peak; VmHWM also counts numpy arrays, the interpreter and pages
        # the allocator has freed but not yet returned
        "arrow_peak_mb": pa.default_memory_pool().max_memory() / 1e6,
    }


def measure_pandas(path: str, config: str) -> dict:
    """The publisher's text side: ``pd.read_parquet`` of the whole file, then ``isin`` filters (no grouping)."""
    import pandas as pd

    import bigearthnet_txt as bt

    cfg = bt.BigEarthNetTxt.builder_configs[config]
    t0 = time.perf_counter()
    data = pd.read_parquet(path)
    data = data[data["type"].isin(list(bt.TASKS[cfg.task]))].reset_index(drop=True)
    data = data[data["split"].isin(list(cfg.splits))].reset_index(drop=True)
    return {"seconds": time.perf_counter() - t0, "rows": len(data)}


def import_only() -> dict:
    import bigearthnet_txt  # noqa: F401

    return {}


def hf_layout(path: str, out: str) -> dict:
    """``path`` rewritten as ``datasets`` writes Parquet: ~100 MB row groups, a page index, content-defined pages.

    The release parquet's own row-group size and order are unknown (facts,
    section 3); this is the layout of a file written by ``Dataset.to_parquet``
    / ``push_to_hub`` (hf-datasets notes, section 5), rows in the same
    scattered order as ``path``.
    """
    note = Path(str(out) + ".json")
    if Path(out).exists() and note.exists():
        return dict(json.loads(note.read_text()), cached=True)
    table = pq.read_table(path)
    rows_per_group = max(1, table.num_rows * 100_000_000 // table.nbytes)
    tmp = str(out) + ".tmp"
    pq.write_table(table, tmp, row_group_size=rows_per_group, write_page_index=True,
                   use_content_defined_chunking=True, compression="snappy")
    Path(tmp).rename(out)
    info = {"rows": table.num_rows, "bytes": Path(out).stat().st_size, "row_groups": pq.ParquetFile(out).num_row_groups,
            "rows_per_group": rows_per_group}
    note.write_text(json.dumps(info, indent=1))
    return info


#: image pairs per block of the near order: ~3,400 rows, the span of the one pair whose rows are known
#: (docs/release.md#annotation-parquet)
NEAR_PAIRS_PER_BLOCK = 165


def near_layout(path: str, out: str, seed: int = 1) -> dict:
    """:func:`hf_layout` with a pair's rows near each other, as the release keeps the one pair known of it.

    docs/release.md#annotation-parquet gives one pair's 22 rows: consecutive IDs, at rows
    1,745,752-1,749,128 of the file, i.e. within ~3,400 rows but not
    together, and far from where their IDs would put them. Here the pairs
    are taken in ID order in blocks of :data:`NEAR_PAIRS_PER_BLOCK`, the
    blocks put in a random order and each block's rows shuffled: a pair's
    rows then span ~3,100 rows (median). Parquet then keeps the names as
    one dictionary page and a code per row in every row group, and the file
    comes out at ~433 MB, near the release's 466 MB (the scattered order:
    850 MB). The pairs' order in the file stays unrelated to their names.
    """
    note = Path(str(out) + ".json")
    if Path(out).exists() and note.exists():
        return dict(json.loads(note.read_text()), cached=True)
    table = pq.read_table(path)
    by_id = np.argsort(table["ID"].to_numpy(), kind="stable")
    codes = pc.dictionary_encode(table["patch_id"].take(pa.array(by_id))).combine_chunks().indices.to_numpy()
    new_pair = np.r_[True, codes[1:] != codes[:-1]]  # IDs are consecutive per pair
    pair = np.cumsum(new_pair) - 1
    rng = np.random.default_rng(seed)
    block = rng.permutation(int(pair[-1]) // NEAR_PAIRS_PER_BLOCK + 1)[pair // NEAR_PAIRS_PER_BLOCK]
    order = by_id[np.argsort(block + rng.random(len(by_id)), kind="stable")]
    rows_per_group = max(1, table.num_rows * 100_000_000 // table.nbytes)  # as hf_layout: datasets' ~100 MB groups
    table = table.take(pa.array(order))
    tmp = str(out) + ".tmp"
    pq.write_table(table, tmp, row_group_size=rows_per_group, write_page_index=True,
                   use_content_defined_chunking=True, compression="snappy")
    Path(tmp).rename(out)
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    at = where[by_id]
    starts = np.flatnonzero(new_pair)
    span = np.maximum.reduceat(at, starts) - np.minimum.reduceat(at, starts)
    info = {"rows": table.num_rows, "bytes": Path(out).stat().st_size, "row_groups": pq.ParquetFile(out).num_row_groups,
            "rows_per_group": rows_per_group, "median_pair_span_rows": int(np.median(span))}
    note.write_text(json.dumps(info, indent=1))
    return info


def measure_stream_start(path: str, config: str, split: str) -> dict:
    """One split's selection with its texts read at once: ``join.select_annotations`` for that split.

    What a stream of a large split does before it reads any imagery; a
    sparse one (a bench split) now gets its texts in the background
    (``annotations.StreamedTexts``), so for it this is the decoding work,
    not the wait (:func:`measure_first_example` is the wait). In Arrow's
    jemalloc pool, as ``join.streamed_examples`` selects.
    """
    import bigearthnet_txt as bt
    from bentxt import join

    cfg = bt.BigEarthNetTxt.builder_configs[config]
    t0, cpu0 = time.perf_counter(), os.times()
    with join.preparing_memory_pool():
        index = join.select_annotations(cfg, path, split, None)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds_since(cpu0), "rows": index.table.num_rows,
            "patches": len(index)}


def _cpu_seconds_since(before: os.times_result) -> float:
    """This process's CPU time (user + system, all its threads) since ``before``."""
    now = os.times()
    return now.user - before.user + now.system - before.system


def measure_first_example(data_dir: str, config: str, split: str, cache_dir: str) -> dict:
    """What a user waits for: a streamed split's first example, from ``data_dir``'s parquet and archives.

    The builder's whole streaming route (the splits present, the split's
    texts read and grouped, the archive read up to the split's first pair);
    ``data_dir``'s archives hold a few of the parquet's pairs, so the
    archive part is short and the text side dominates, as it does at
    release scale for a split whose pairs come early in the archive.
    """
    import importlib.util

    import datasets

    import bigearthnet_txt as bt

    if importlib.util.find_spec("torch"):  # as in a training script: else datasets' IterableDataset imports it (~2 s)
        import torch  # noqa: F401
    datasets.disable_progress_bars()
    shutil.rmtree(cache_dir, ignore_errors=True)
    t0, cpu0 = time.perf_counter(), os.times()
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir)
    example = next(iter(builder.as_streaming_dataset(split=split)))
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds_since(cpu0), "rows": 1,
            "patch_id": example["patch_id"]}


def measure_name_pass(path: str, config: str) -> dict:
    """The name pass that starts preparing a config on a new source: its pairs' names (``annotations.selected_names``).

    The imagery workers start on these names; in Arrow's jemalloc pool, as preparing runs it.
    """
    import bigearthnet_txt as bt
    from bentxt import join
    from bentxt.text import annotations as ann

    cfg = bt.BigEarthNetTxt.builder_configs[config]
    t0, cpu0 = time.perf_counter(), os.times()
    with join.preparing_memory_pool():
        names = ann.selected_names(path, cfg.selection(None), ["patch_id", "s1_name"])
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds_since(cpu0), "rows": len(names["patch_id"])}


def measure_prepare_texts(path: str, config: str, work: str, in_memory: bool = False) -> dict:
    """The whole text side of preparing a config: select, check, group, then the parsed texts file in pair order.

    What ``download_and_prepare`` does with the texts before it joins them to
    the imagery store (``join.plan_cache``: ``select_annotations(...,
    texts_later=True)`` then ``write_texts``). ``in_memory`` times the route
    before the texts were left in the parquet (the whole sorted table in
    memory, then parsed a chunk at a time), for an A/B in the same run.
    """
    import bigearthnet_txt as bt
    from bentxt import join
    from bentxt.join import preparing_memory_pool

    cfg = bt.BigEarthNetTxt.builder_configs[config]
    out = os.path.join(work, f"texts-{config}-{'memory' if in_memory else 'later'}.arrow")
    with preparing_memory_pool():
        t0 = time.perf_counter()
        index = join.select_annotations(cfg, path, None, None, texts_later=not in_memory)
        selected = time.perf_counter() - t0
        join.write_texts(cfg, index if not in_memory else index.table, out)
        seconds = time.perf_counter() - t0
    size = os.path.getsize(out)
    with pa.memory_map(out) as source:  # the whole selection, parsed
        reader = pa.ipc.open_file(source)
        written = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    assert written == len(index.table), (written, len(index.table))
    os.remove(out)
    return {"seconds": seconds, "select_seconds": selected, "write_seconds": seconds - selected, "rows": len(index.table),
            "patches": len(index), "texts_mb": size / 1e6}
