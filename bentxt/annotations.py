"""The BigEarthNet.txt annotation parquet: schema check, selection, grouping by patch.

9.55 M rows share 464,044 image pairs (~20.6 rows each) and a patch's rows are
scattered through the file, so the join reads only the needed columns, filters
row group by row group with Arrow compute, sorts once by (patch, ID) and keeps
one ``patch -> row range`` entry per image pair. No Python object per row is
ever built for rows that are not yielded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import xopen

#: the 13 columns of BigEarthNet.txt.parquet with their real Arrow types
COLUMNS: Dict[str, pa.DataType] = {
    "ID": pa.int64(),
    "s1_name": pa.string(),
    "patch_id": pa.string(),
    "input": pa.string(),
    "output": pa.string(),
    "type": pa.string(),
    "category": pa.string(),
    "split": pa.string(),
    "latitude": pa.float64(),
    "longitude": pa.float64(),
    "country": pa.string(),
    "season": pa.string(),
    "climate_zone": pa.string(),
}

TYPES: Tuple[str, ...] = ("binary", "mcq", "captioning", "bounding box")

#: categories per type (facts file, section 4; captioning's category is the literal string "None")
CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "binary": ("presence", "area", "count", "adjacency"),
    "mcq": ("presence", "area", "count", "adjacency", "relative pos", "country", "season", "climate zone"),
    "bounding box": ("point", "reference"),
    "captioning": ("None",),
}
SPLITS: Tuple[str, ...] = ("train", "validation", "test", "bench")

#: columns a user may filter on (publisher loader's filters), config keyword -> column
FILTER_COLUMNS: Dict[str, str] = {
    "categories": "category",
    "countries": "country",
    "seasons": "season",
    "climate_zones": "climate_zone",
}

#: per-patch columns: equal on every row of one image pair
PATCH_COLUMNS: Tuple[str, ...] = ("patch_id", "s1_name", "split", "latitude", "longitude", "country", "season", "climate_zone")


class AnnotationFileError(ValueError):
    """The parquet does not have the release's shape; the message names the file and column or ID."""


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def check_schema(schema: pa.Schema, where: str) -> None:
    """Reject a parquet that lacks a column or stores one with another type."""
    names = set(schema.names)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise AnnotationFileError(
            f"{where}: missing column(s) {missing}; BigEarthNet.txt.parquet has the columns {list(COLUMNS)}"
        )
    for name, expected in COLUMNS.items():
        found = schema.field(name).type
        ok = _is_string(found) if _is_string(expected) else found == expected
        if not ok:
            raise AnnotationFileError(f"{where}: column {name!r} has type {found}, expected {expected}")


@dataclass(frozen=True)
class Selection:
    """Which rows a config asks for. ``None`` in a filter means no restriction."""

    types: Tuple[str, ...] = TYPES
    splits: Tuple[str, ...] = SPLITS
    filters: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # ((column, allowed values), ...)

    def expression(self) -> pc.Expression:
        expr = pc.field("type").isin(list(self.types)) & pc.field("split").isin(list(self.splits))
        for column, values in self.filters:
            expr = expr & pc.field(column).isin(list(values))
        return expr


def open_parquet(urlpath: str, download_config: Optional[DownloadConfig] = None):
    """Open the parquet through fsspec so local paths, http(s):// and hf:// all work."""
    f = xopen(urlpath, "rb", download_config=download_config)
    try:
        pf = pq.ParquetFile(f)
    except Exception as err:  # pyarrow raises ArrowInvalid for non-parquet bytes
        f.close()
        raise AnnotationFileError(f"{_display(urlpath)} is not a readable parquet file: {err}") from err
    check_schema(pf.schema_arrow, _display(urlpath))
    return f, pf


def _display(urlpath: str) -> str:
    return urlpath.split("::")[-1]


def distinct_values(
    urlpath: str, columns: Sequence[str], types: Sequence[str], download_config: Optional[DownloadConfig] = None
) -> Dict[str, List[str]]:
    """Values present in ``columns`` among rows of ``types`` (for validating user filters)."""
    f, pf = open_parquet(urlpath, download_config)
    with f:
        seen: Dict[str, set] = {c: set() for c in columns}
        for i in range(pf.num_row_groups):
            rg = pf.read_row_group(i, columns=sorted(set(columns) | {"type"}))
            rg = rg.filter(pc.is_in(rg["type"], pa.array(list(types))))
            for c in columns:
                seen[c].update(pc.unique(rg[c]).to_pylist())
    return {c: sorted(v) for c, v in seen.items()}


def read_selection(
    urlpath: str,
    selection: Selection,
    columns: Optional[Sequence[str]] = None,
    download_config: Optional[DownloadConfig] = None,
) -> pa.Table:
    """The selected rows, read row group by row group so peak memory follows the selection, not the file."""
    f, pf = open_parquet(urlpath, download_config)
    columns = list(columns or COLUMNS)
    expr = selection.expression()
    needed = sorted(set(columns) | {"ID", "type", "category", "split"} | {c for c, _ in selection.filters})
    parts = []
    with f:
        for i in range(pf.num_row_groups):
            rg = pf.read_row_group(i, columns=needed)
            check_types(rg, _display(urlpath))  # before filtering, which would drop such rows silently
            check_categories(rg, _display(urlpath))
            parts.append(rg.filter(expr).select(columns))
    table = pa.concat_tables(parts) if parts else pa.schema([(c, COLUMNS[c]) for c in columns]).empty_table()
    return table.combine_chunks()


def check_types(table: pa.Table, where: str) -> None:
    """Unknown ``type`` values are an error naming the first offending ID (not a silently dropped row)."""
    bad = table.filter(pc.invert(pc.is_in(table["type"], pa.array(list(TYPES)))))
    if len(bad):
        row = bad.slice(0, 1).to_pylist()[0]
        raise AnnotationFileError(
            f"{where}: row ID {row['ID']} has unknown type {row['type']!r}; known types are {list(TYPES)}"
        )


def check_categories(table: pa.Table, where: str) -> None:
    """A category outside its type's set is an error naming the first offending ID."""
    for kind, allowed in CATEGORIES.items():
        rows = table.filter(pc.equal(table["type"], kind))
        bad = rows.filter(pc.invert(pc.is_in(rows["category"], pa.array(list(allowed)))))
        if len(bad):
            row = bad.slice(0, 1).to_pylist()[0]
            raise AnnotationFileError(
                f"{where}: row ID {row['ID']} has category {row['category']!r}, unknown for type {kind!r}; "
                f"known categories are {list(allowed)}"
            )


_S2_NAME = r"_T(?P<tile>[0-9A-Z]{5})_(?P<x>\d+)_(?P<y>\d+)$"
_S1_NAME = r"_(?P<tile>[0-9A-Z]{5})_(?P<x>\d+)_(?P<y>\d+)$"


def check_pair_names(table: pa.Table, where: str) -> None:
    """``patch_id`` and ``s1_name`` of a row must name the same tile and grid cell.

    The two names differ in date, time and zero padding (``_05_43`` vs
    ``_5_43``), but after ``int()`` tile and grid numbers agree for every real
    pair (facts, section 7): a row that breaks this joins the wrong S1 patch.
    """
    if len(table) == 0:
        return
    s2 = pc.extract_regex(table["patch_id"], _S2_NAME)
    s1 = pc.extract_regex(table["s1_name"], _S1_NAME)
    for column, parsed, kind in (("patch_id", s2, "Sentinel-2"), ("s1_name", s1, "Sentinel-1")):
        bad = pc.indices_nonzero(pc.is_null(parsed))
        if len(bad):
            r = int(bad[0].as_py())
            raise AnnotationFileError(
                f"{where}: row ID {table['ID'][r].as_py()}: {column} {table[column][r].as_py()!r} is not a {kind} patch name"
            )
    same = pc.equal(pc.struct_field(s2, "tile"), pc.struct_field(s1, "tile"))
    for axis in ("x", "y"):
        same = pc.and_(same, pc.equal(pc.cast(pc.struct_field(s2, axis), pa.int64()), pc.cast(pc.struct_field(s1, axis), pa.int64())))
    bad = pc.indices_nonzero(pc.invert(same))
    if len(bad):
        r = int(bad[0].as_py())
        raise AnnotationFileError(
            f"{where}: row ID {table['ID'][r].as_py()} pairs patch_id {table['patch_id'][r].as_py()} with s1_name "
            f"{table['s1_name'][r].as_py()}, which is another tile or grid cell"
        )


@dataclass
class PatchIndex:
    """Rows sorted by (key, ID) plus the row range of every image pair."""

    table: pa.Table
    keys: List[str]  # image-pair keys in sort order
    starts: np.ndarray  # int64, len(keys) + 1 boundaries

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, i: int) -> pa.Table:
        return self.table.slice(int(self.starts[i]), int(self.starts[i + 1] - self.starts[i]))

    def first(self, column: str) -> list:
        """The per-pair value of ``column`` (taken from each pair's first row)."""
        return self.table[column].take(pa.array(self.starts[:-1])).to_pylist()

    def position(self) -> Dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def group_by_patch(table: pa.Table, key: str) -> PatchIndex:
    """Sort once by (key, ID) and find the run boundaries with vectorised compute."""
    if len(table) == 0:
        return PatchIndex(table, [], np.zeros(1, dtype=np.int64))
    table = table.take(pc.sort_indices(table, [(key, "ascending"), ("ID", "ascending")])).combine_chunks()
    col = table[key].combine_chunks()
    change = pc.not_equal(col.slice(1), col.slice(0, len(col) - 1))
    starts = np.concatenate([[0], pc.indices_nonzero(change).to_numpy() + 1, [len(table)]]).astype(np.int64)
    keys = col.take(pa.array(starts[:-1])).to_pylist()
    return PatchIndex(table, keys, starts)


def check_patch_pairs(index: PatchIndex, where: str) -> None:
    """Every row of an image pair must agree on the pair's columns (e.g. one ``s1_name`` per ``patch_id``)."""
    t = index.table
    if len(t) == 0:
        return
    starts = pa.array(index.starts[:-1])
    row_patch = np.repeat(np.arange(len(index)), np.diff(index.starts))
    for column in PATCH_COLUMNS:
        first = t[column].take(starts).take(pa.array(row_patch))
        differs = pc.invert(pc.equal(t[column], first))
        hit = pc.indices_nonzero(differs)
        if len(hit):
            r = int(hit[0].as_py())
            i = int(row_patch[r])
            raise AnnotationFileError(
                f"{where}: row ID {t['ID'][r].as_py()} gives {column}={t[column][r].as_py()!r} for image pair "
                f"{index.keys[i]}, but row ID {t['ID'][int(index.starts[i])].as_py()} gives "
                f"{t[column][int(index.starts[i])].as_py()!r}"
            )


def check_filter_values(requested: Mapping[str, Optional[Iterable[str]]], present: Mapping[str, List[str]]) -> None:
    """A filter value not in the data would silently select nothing: reject it and list the valid values."""
    for option, values in requested.items():
        if values is None:
            continue
        column = FILTER_COLUMNS[option]
        unknown = [v for v in values if v not in present[column]]
        if unknown:
            raise ValueError(
                f"{option}={list(values)}: {unknown} not found in column {column!r} of the annotations "
                f"(for the selected task types). Valid values: {present[column]}"
            )
