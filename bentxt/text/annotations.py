"""The BigEarthNet.txt annotation parquet: schema check, selection, grouping by patch.

9.55 M rows share 464,044 image pairs (~20.6 rows each) and a patch's rows are
scattered through the file, so the join reads only the needed columns, filters
row group by row group, sorts once by (patch, ID) and keeps one
``patch -> row range`` entry per image pair. No Python object per row is ever
built for rows that are not yielded.

Memory and time at full scale (``benchmarks/run.py --only text``): the string
columns that repeat per image pair or per kind of row (``DICTIONARY_COLUMNS``)
come back dictionary-encoded (1-4 bytes a row instead of 6-50), so sorting and
the per-pair checks work on integer codes. With ``read_selection(...,
sort_by=key)`` only the key is hashed and the bulky ``input`` / ``output``
columns are read after the row order is known, the largest one straight into
its sorted place, so ``group_by_patch`` has nothing left to copy and the peak
stays near the size of the result (s1s2-all: ~15 s, < 3 GB; see the README).

The release's rules are checked for every row of the file, before any filter
could drop a row silently (:func:`read_selection` lists what they cost): the
file has rows; no column holds a null; ``type``, ``category`` and ``split``
take known values; an ``ID`` occurs once (rows repeated exactly are dropped
with a logged count, repeated IDs with other content are an error). Errors
name the file and the row ``ID``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import shutil
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.download.download_config import DownloadConfig
from datasets.utils.file_utils import xopen

from bentxt.errors import BigEarthNetTxtError
from bentxt.imagery.layout import EXAMPLE_NAME, PATCH_NAME_PATTERN, display_name

logger = logging.getLogger("bigearthnet_txt")

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

#: categories per type (docs/release.md#value-sets; captioning's category is the literal string "None")
CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "binary": ("presence", "area", "count", "adjacency"),
    "mcq": ("presence", "area", "count", "adjacency", "relative pos", "country", "season", "climate zone"),
    "bounding box": ("point", "reference"),
    "captioning": ("None",),
}
SPLITS: Tuple[str, ...] = ("train", "validation", "test", "bench")

#: columns with a closed set of values: how messages name the set, and the set
_KNOWN: Dict[str, Tuple[str, Tuple[str, ...]]] = {"type": ("known types", TYPES), "split": ("valid splits", SPLITS)}

#: columns a user may filter on (publisher loader's filters), config keyword -> column
FILTER_COLUMNS: Dict[str, str] = {
    "categories": "category",
    "countries": "country",
    "seasons": "season",
    "climate_zones": "climate_zone",
}

#: per-patch columns: equal on every row of one image pair
PATCH_COLUMNS: Tuple[str, ...] = ("patch_id", "s1_name", "split", "latitude", "longitude", "country", "season", "climate_zone")

#: string columns returned dictionary-encoded by ``read_selection``: one value per image pair or a handful of values
DICTIONARY_COLUMNS: Tuple[str, ...] = ("s1_name", "patch_id", "type", "category", "split", "country", "season", "climate_zone")

#: the bulk of the bytes (~1.5 GB of 2 GB at full scale): read last, one column at a time
_HEAVY_COLUMNS: Tuple[str, ...] = ("input", "output")

#: the per-pair names: ~55 bytes a row as plain strings, one value per image pair
_NAME_COLUMNS: Tuple[str, ...] = ("patch_id", "s1_name")


class AnnotationFileError(BigEarthNetTxtError, ValueError):
    """The parquet does not have the release's shape; the message names the file and column or ID."""


class FilterValueError(BigEarthNetTxtError, ValueError):
    """A filter option names a value the annotations do not have (a wrong option value: CLI exit status 2)."""


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
        if pa.types.is_dictionary(found):  # read with read_dictionary: the values carry the type
            found = found.value_type
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

    def columns(self) -> List[str]:
        return ["type", "split"] + [c for c, _ in self.filters]

    def mask(self, table: pa.Table) -> np.ndarray:
        """The rows :meth:`expression` selects, as a numpy bool array (nulls are not selected)."""
        keep = np.ones(len(table), dtype=bool)
        for column, values in (("type", self.types), ("split", self.splits), *self.filters):
            keep &= _isin(table[column], values)
        return keep


def open_parquet(
    urlpath: str, download_config: Optional[DownloadConfig] = None, read_dictionary: Optional[Sequence[str]] = None,
    names_as_dictionaries: bool = False,
):
    """Open the parquet through fsspec so local paths, http(s):// and hf:// all work.

    ``read_dictionary`` names string columns to read as ``dictionary<int32, string>``;
    ``names_as_dictionaries`` adds the pair names where the file keeps them
    dictionary-encoded (:func:`dictionary_encoded_names`).
    """
    if "://" not in urlpath and "::" not in urlpath and os.path.isfile(urlpath):
        # a local file: Arrow reads it itself (through a Python file object: ~3x slower); not memory-mapped,
        # which would count the ~0.4 GB of the release's parquet that is read in the process's resident memory
        f = pa.OSFile(urlpath, "rb")
    else:
        f = xopen(urlpath, "rb", download_config=download_config)
    try:
        pf = pq.ParquetFile(f)
    except Exception as err:  # pyarrow raises ArrowInvalid for non-parquet bytes
        f.close()
        raise AnnotationFileError(f"{display_name(urlpath)} is not a readable parquet file: {err}") from err
    try:
        check_schema(pf.schema_arrow, display_name(urlpath))
        if pf.metadata.num_rows == 0:  # would select nothing, and give an empty dataset without a word
            raise AnnotationFileError(
                f"{display_name(urlpath)} has no rows; BigEarthNet.txt.parquet has 9,553,962 annotations"
            )
    except AnnotationFileError:
        f.close()
        raise
    read_dictionary = list(read_dictionary or []) + (dictionary_encoded_names(pf) if names_as_dictionaries else [])
    if read_dictionary:  # the same file and footer, string columns read as dictionaries
        pf = pq.ParquetFile(f, metadata=pf.metadata, read_dictionary=read_dictionary)
    return f, pf


#: a name column's chunks at most this share of its values' size as plain strings: dictionary-encoded throughout
_DICTIONARY_SHARE = 0.5


def dictionary_encoded_names(pf: pq.ParquetFile) -> List[str]:
    """The pair-name columns that every row group keeps as a dictionary page and codes, judged from the footer.

    A file whose pairs' rows lie near each other (the release's one known
    pair: 22 rows within ~3,400, docs/release.md#annotation-parquet) holds
    ~13,000 names per 270,000-row group; Parquet then stores each name once
    and a code per row, and reading the codes costs ~0.1 CPU-s for all
    9.55 M rows instead of ~0.6-0.8 s for plain strings. When a dictionary
    page overflows (a pair's rows scattered through the file), Parquet falls
    back to plain pages, which Arrow would then hash back into a dictionary:
    ~3x slower than plain. The footer lists a chunk's encodings but not
    which pages use them, so a chunk counts as dictionary-encoded when it
    holds at most half the bytes of its values as plain strings (length from
    its min/max statistics); a fallback chunk holds nearly all of them. A
    wrong guess costs time, never values (:func:`_pair_names` cuts away the
    unselected rows' names). A chunk listing an encoding Arrow cannot decode
    into a dictionary never counts: Parquet v2 writers (parquet-mr,
    arrow-rs) fall back to DELTA_BYTE_ARRAY pages, small enough to pass the
    size test, which Arrow then refuses to read as a dictionary ("not yet
    implemented").
    """
    names = []
    for column in _NAME_COLUMNS:
        j = _leaf_column(pf, column)
        if j is None or pa.types.is_dictionary(pf.schema_arrow.field(column).type):
            continue  # not in the file, or stored as a dictionary already (read as one anyway)
        chunks = [pf.metadata.row_group(g).column(j) for g in range(pf.num_row_groups)]
        if all(_dictionary_encoded(chunk) for chunk in chunks if chunk.num_values):
            names.append(column)
    return names


#: the encodings whose pages Arrow decodes into a dictionary: the dictionary's, its codes', levels, plain fallback
_DICTIONARY_READABLE = frozenset({"PLAIN_DICTIONARY", "RLE_DICTIONARY", "PLAIN", "RLE", "BIT_PACKED"})


def _dictionary_encoded(chunk) -> bool:
    stats = chunk.statistics
    if not chunk.has_dictionary_page or not set(chunk.encodings) <= _DICTIONARY_READABLE:
        return False  # no dictionary, or pages Arrow could not read as one
    if stats is None or not stats.has_min_max:
        return False
    shortest = min(len(v.encode() if isinstance(v, str) else v) for v in (stats.min, stats.max))
    return chunk.total_uncompressed_size <= _DICTIONARY_SHARE * chunk.num_values * (4 + shortest)  # 4: a plain length



def _row_groups(pf: pq.ParquetFile, what: str) -> Sequence[int]:
    """Row-group indices behind a progress bar (the release parquet is 466 MB); quiet with datasets' bars off."""
    from datasets.utils import tqdm

    return tqdm(range(pf.num_row_groups), desc=what, unit=" row groups", leave=False)


def distinct_values(
    urlpath: str, columns: Sequence[str], types: Sequence[str], download_config: Optional[DownloadConfig] = None
) -> Dict[str, List[str]]:
    """Values present in ``columns`` among rows of ``types`` (for validating user filters).

    A null is left out: the selection's own checks then name its row.
    """
    label = f"Checking filter values in {display_name(urlpath).rsplit('/', 1)[-1]}"
    return _distinct(urlpath, columns, ["type"], lambda rg: pc.is_in(rg["type"], pa.array(list(types))),
                     download_config, label)


def selected_names(urlpath: str, selection: Selection, columns: Sequence[str],
                   download_config: Optional[DownloadConfig] = None) -> Dict[str, List[str]]:
    """The distinct values of ``columns`` (pair names) among the selected rows, sorted.

    A quick first pass (a few columns, no checks, no texts): the imagery
    workers start on these names while :func:`read_selection` reads and checks
    everything. Rows it would reject are not left out here; that only makes
    the imagery pass keep a pair nobody uses, never miss one.
    """
    return _distinct(urlpath, columns, selection.columns(), lambda rg: pa.array(selection.mask(rg)), download_config)


def splits_present(urlpath: str, selection: Selection, download_config: Optional[DownloadConfig] = None,
                   scope: Optional[str] = None) -> List[str]:
    """The selection's splits that have rows, in its order; the others are logged as left out.

    For streaming, where ``datasets`` would otherwise list a split that has
    no rows (a parquet holding only the test split) and iterating it would
    raise ``EmptySelectionError``; the prepared route leaves such a split out
    the same way. Reads only the selection's columns (``type``, ``split``,
    filters). When no split has rows, all are kept: iterating one then says
    which option emptied the selection. So a selection of one split (every
    ``*-bench`` config) reads nothing here: 0.2 s of a bench stream's start
    from a disk at full scale, 0.8-1.0 s over HTTP.
    """
    if len(selection.splits) == 1:
        return list(selection.splits)
    present = set(selected_names(urlpath, selection, ["split"], download_config)["split"])
    kept = [split for split in selection.splits if split in present]
    if not kept:
        return list(selection.splits)
    for split in selection.splits:
        if split not in present:
            logger.info("%s: split %s has no rows in this selection and is left out", scope or display_name(urlpath), split)
    return kept


def _distinct(urlpath: str, columns: Sequence[str], filter_columns: Sequence[str], keep: Callable[[pa.Table], pa.Array],
              download_config: Optional[DownloadConfig], progress: Optional[str] = None) -> Dict[str, List[str]]:
    """The distinct values of ``columns`` among the rows ``keep`` marks, sorted, nulls left out, row group by row group.

    The few-valued columns are read as dictionaries: a streamed split's
    ``type`` and ``split`` of 9.55 M rows in ~0.1 s instead of ~0.8 s. The
    values stay Arrow arrays, merged as they pile up, and become Python
    objects once: a row group holds ~200,000 distinct pair names, and
    turning each row group's into Python strings held the GIL for most of
    the name pass that starts preparing (~6 of its 10-12 s at full scale).
    """
    f, pf = open_parquet(urlpath, download_config, read_dictionary=_FEW_VALUES, names_as_dictionaries=True)
    read = sorted(set(columns) | set(filter_columns))

    def distinct(handle: pq.ParquetFile, g: int) -> Dict[str, pa.Array]:
        rg = handle.read_row_group(g, columns=read)
        mask = keep(rg)
        return {c: _decoded(pc.unique(rg[c].filter(mask))) for c in columns}

    parts: Dict[str, List[pa.Array]] = {c: [] for c in columns}
    # values merged so far, and found since: a merge waits until the new ones are as many (each value hashed
    # a bounded number of times: merging every few row groups re-hashed everything found so far each time,
    # quadratic in the row groups of a file written in small ones)
    merged, found = dict.fromkeys(columns, 0), dict.fromkeys(columns, 0)
    with f:
        groups = _row_groups(pf, progress) if progress else range(pf.num_row_groups)
        for values in _map_row_groups(pf, groups, distinct, urlpath, download_config, decode_threads(pf, read)):
            for c in columns:
                parts[c].append(values[c])
                found[c] += len(values[c])
                if len(parts[c]) > _DISTINCT_MERGE_EVERY and found[c] >= merged[c]:
                    parts[c] = [pc.unique(pa.chunked_array(parts[c]))]
                    merged[c], found[c] = len(parts[c][0]), 0
    return {c: sorted(pc.drop_null(pc.unique(pa.chunked_array(v))).to_pylist()) if v else [] for c, v in parts.items()}


#: row groups' distinct values held before they are merged into one array, at least (:func:`_distinct`)
_DISTINCT_MERGE_EVERY = 8


def read_selection(
    urlpath: str,
    selection: Selection,
    columns: Optional[Sequence[str]] = None,
    download_config: Optional[DownloadConfig] = None,
    sort_by: Optional[str] = None,
) -> pa.Table:
    """The selected rows (see :func:`_read_selection`); every column in memory."""
    return _read_selection(urlpath, selection, columns, download_config, sort_by)[0]


def read_sorted_selection(
    urlpath: str, selection: Selection, sort_by: str, download_config: Optional[DownloadConfig] = None
) -> Tuple[pa.Table, "SortedTexts"]:
    """The selected rows sorted by ``(sort_by, ID)``, without ``input`` / ``output``, and how to write those later.

    For preparing: the bulky texts (~1.5 GB of 2 GB at full scale) never sit
    in memory; :meth:`SortedTexts.write` decodes them row group by row group,
    parses each block and places it in the same sorted order in an Arrow file.
    Checks and errors are :func:`read_selection`'s.
    """
    table, later = _read_selection(urlpath, selection, None, download_config, sort_by, defer=True)
    assert isinstance(later, SortedTexts)
    return table, later


def read_streamed_selection(
    urlpath: str, selection: Selection, sort_by: str, download_config: Optional[DownloadConfig] = None
) -> Tuple[pa.Table, Optional["StreamedTexts"]]:
    """The selected rows sorted by ``(sort_by, ID)``; a sparse selection's ``input`` / ``output`` come later.

    For streaming: a sparse selection (a ``*-bench`` split) gets its bulky
    columns from :class:`StreamedTexts`, decoded in the background in the
    order the stream needs them, so the first example waits for its own
    pair's row groups only. A larger one reads them here, as
    :func:`read_selection` does (None). Checks and errors are :func:`read_selection`'s.
    """
    table, later = _read_selection(urlpath, selection, None, download_config, sort_by, stream=True)
    assert later is None or isinstance(later, StreamedTexts)
    return table, later


def _read_selection(
    urlpath: str,
    selection: Selection,
    columns: Optional[Sequence[str]] = None,
    download_config: Optional[DownloadConfig] = None,
    sort_by: Optional[str] = None,
    defer: bool = False,
    stream: bool = False,
) -> Tuple[pa.Table, Union["SortedTexts", "StreamedTexts", None]]:
    """The selected rows, read row group by row group so peak memory follows the selection, not the file.

    Columns in ``DICTIONARY_COLUMNS`` come back dictionary-encoded with a
    sorted dictionary of distinct values (so the indices order like the
    strings), the others with their file types. Rows are in file order (every
    column one chunk), or sorted by ``(sort_by, ID)`` exactly as
    :func:`group_by_patch` sorts them, which then has nothing left to do. When
    sorting, only the key is hashed (on two threads), the other per-pair names
    follow its codes (preparing: :func:`_read_pair_names`), and the bulky ``input`` / ``output`` columns are read
    after the order is known: the smaller whole, then reordered; the largest
    row group by row group on two threads straight into its sorted place
    (:func:`_read_in_order`), so no unsorted copy of it ever exists and the
    peak stays near the size of the result.

    The release's rules hold for every row of the file, not only the selected
    ones, and are checked before filtering, on what is read anyway (cost at
    full scale, 9.55 M rows, on a good file):

    - at least one row (:func:`open_parquet`, from the footer: free);
    - no nulls (:func:`check_nulls`): Arrow keeps a null count per decoded
      column, so the columns read cost nothing. The first pass reads only
      the rules' columns (``ID``, ``type``, ``category``, ``split``) and the
      filters' of every row (a row group per usable core at a time,
      :func:`decode_threads`; errors in file order); the other columns (pair names, coordinates,
      ``input`` / ``output``) are read only in row groups that hold a
      selected row, and are checked from the footer's per-row-group null
      counts (free; a row group reported to hold nulls is read, its ``ID``
      and that column only, to name the row). A file written without
      statistics gets those columns checked as they are read, i.e. in every
      row group that holds a selected row;
    - ``type``, ``split`` and the type's ``category`` known
      (:func:`check_types`, :func:`check_splits`, :func:`check_categories`):
      decided on dictionary codes, microseconds per row group;
    - unique ``ID`` (:func:`duplicate_ids`): the IDs of all rows are kept
      (8 bytes a row: 76 MB) and counted once (~0.1-0.3 s, one more 76 MB
      for the counts). Only when an ID repeats are the row groups holding it
      read again, all 13 columns, one at a time, keeping the repeated rows
      only: rows equal in all 13 columns to an earlier row are dropped with a
      logged count, other repeats are an error naming the ID
      (:func:`_drop_identical_duplicates`).
    """
    columns = list(columns or COLUMNS)
    if defer and sort_by is None:
        raise ValueError("defer=True needs sort_by: the bulky columns are written later in that order")
    if defer and stream:
        raise ValueError("defer=True (texts written later) and stream=True (texts decoded as a stream goes) exclude each other")
    if sort_by is not None and sort_by not in columns:
        raise ValueError(f"sort_by={sort_by!r} is not among the columns read {columns}")
    f, pf = open_parquet(urlpath, download_config, read_dictionary=_FEW_VALUES, names_as_dictionaries=True)
    where = display_name(urlpath)
    light = sorted(
        (set(columns) - set(_HEAVY_COLUMNS)) | {"ID", "type", "category", "split"} | set(selection.columns())
    )
    heavy = [c for c in columns if c in _HEAVY_COLUMNS]
    # every row: the columns of the rules and of the selection (a few bytes a row, dictionary-encoded);
    # the other light columns (the pair names: ~110 bytes a row) only in row groups that hold a selected row
    ruled = sorted({"ID", "type", "category", "split"} | set(selection.columns()))
    rest = [c for c in light if c not in ruled]
    masks: List[np.ndarray] = []
    parts: Dict[str, list] = {c: [] for c in ruled}
    ids: List[np.ndarray] = []  # every row's ID, for the duplicate check (8 bytes a row)
    first_rows = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])

    def rule(handle: pq.ParquetFile, g: int) -> Tuple[np.ndarray, np.ndarray, Optional[pa.Table]]:
        rg = handle.read_row_group(g, columns=ruled)
        # the rules, before filtering (which would drop such rows silently)
        check_nulls(rg, where, first_row=int(first_rows[g]))
        _check_unread_nulls(handle, g, ruled, where, int(first_rows[g]))
        check_types(rg, where)
        check_splits(rg, where)
        check_categories(rg, where)
        keep = selection.mask(rg)
        chosen = None if not keep.any() else rg if keep.all() else rg.filter(pa.array(keep))
        return _one_array(rg["ID"]).to_numpy(), keep, chosen

    with f:
        bar = _row_groups(pf, f"Reading {where.rsplit('/', 1)[-1]}")
        for row_ids, keep, chosen in _map_row_groups(pf, bar, rule, urlpath, download_config, decode_threads(pf, ruled)):
            ids.append(row_ids)
            masks.append(keep)
            if chosen is not None:
                for c in ruled:
                    parts[c].extend(chosen[c].chunks)
            del chosen
        kept = _drop_identical_duplicates(pf, ids, masks, where)  # updates masks; None: nothing dropped
        del ids
        if defer:  # the bulky columns stay in the file until SortedTexts.write
            columns = [c for c in columns if c not in _HEAVY_COLUMNS]
            heavy = []
        if not any(m.any() for m in masks):
            empty = pa.schema([(c, COLUMNS[c]) for c in columns]).empty_table()
            return empty, (SortedTexts(urlpath, download_config, masks, np.zeros(0, np.int32), where) if defer else None)
        table = {c: _concat(parts.pop(c)) for c in ruled}
        if kept is not None:
            keep_selected = pa.array(kept)
            table = {c: v.filter(keep_selected) for c, v in table.items()}
            del keep_selected, kept
        # the other columns, selected rows only (masks are final now); a sparse selection (bench: 0.16 % of
        # the rows) reads its bulky columns in the same pass: the sorted placement below pays off for large ones
        streamed: List[str] = []
        if _is_sparse(masks) and stream and sort_by is not None:  # the texts come after the order, in the background
            table.update(_read_selected(pf, rest, masks, where, urlpath, download_config))
            streamed, heavy = heavy, []
        elif _is_sparse(masks):
            table.update(_read_selected(pf, rest + heavy, masks, where, urlpath, download_config))
            light, heavy = light + heavy, []
        elif defer and sort_by in _NAME_COLUMNS:  # preparing: the key hashed once, the other names never
            names = [c for c in rest if c in _NAME_COLUMNS and c != sort_by]
            table.update(_read_pair_names(pf, sort_by, names, masks, where, urlpath, download_config))
            table.update(_read_selected(pf, [c for c in rest if c not in names and c != sort_by], masks, where, urlpath,
                                        download_config))
        else:
            table.update(_read_selected(pf, rest, masks, where, urlpath, download_config))
        if sort_by is None:
            # every per-pair name costs a hash per row: two at a time (Arrow releases the GIL)
            encode = [c for c in light if c in DICTIONARY_COLUMNS]
            with ThreadPoolExecutor(max_workers=2) as pool:
                for c, encoded in zip(encode, pool.map(sorted_dictionary, [table[c] for c in encode])):
                    table[c] = encoded
            for c in heavy:
                table[c] = _concat(_read_selected_chunks(pf, c, masks, where, urlpath, download_config))
            return pa.table({c: table[c] for c in columns}).replace_schema_metadata(pf.schema_arrow.metadata), None
        # sorted: hash only the key; the other names follow its pair codes
        by_pair = sort_by in DICTIONARY_COLUMNS
        if by_pair:
            table[sort_by] = sorted_dictionary(table[sort_by], threads=2)
        order = _sort_order(table[sort_by], table["ID"])
        pairs = _codes(table[sort_by]) if by_pair else None
        for c in light:
            if c in DICTIONARY_COLUMNS and c != sort_by:
                table[c] = _encode_by_pair(table[c], pairs)
        del pairs
        if order is not None:
            for c in light:
                table[c] = table[c].take(order)
        # smaller bulky columns first, read whole and reordered (fast; a second copy of a small column
        # fits beside what is read so far); the largest last, straight into its sorted place
        heavy.sort(key=lambda c: int(_column_bytes(pf, c).sum()))
        for c in heavy[:-1]:
            column = _concat(_read_selected_chunks(pf, c, masks, where, urlpath, download_config))
            table[c] = column if order is None else column.take(order)
            del column
    later: Union[SortedTexts, StreamedTexts, None] = None
    if heavy or defer or streamed:
        n = len(table["ID"])
        source = (order.to_numpy() if order is not None else np.arange(n)).astype(np.int32 if n < 2**31 else np.int64)
        del order
        if defer:
            later = SortedTexts(urlpath, download_config, masks, source, where)
        elif streamed:
            later = StreamedTexts(urlpath, download_config, masks, source, where, streamed, decode_threads(pf, streamed))
            columns = [c for c in columns if c not in streamed]
        else:
            table[heavy[-1]] = _read_in_order(urlpath, download_config, heavy[-1], masks, source, slice_rows=_SLICE_ROWS,
                                              where=where)
    return pa.table({c: table[c] for c in columns}).replace_schema_metadata(pf.schema_arrow.metadata), later


def _leaf_column(pf: pq.ParquetFile, column: str) -> Optional[int]:
    """A column's position among Parquet's leaf columns (not Arrow's fields: a nested column before it holds several)."""
    return next((k for k in range(pf.metadata.num_columns) if pf.metadata.schema.column(k).path == column), None)


def _column_bytes(pf: pq.ParquetFile, column: str) -> np.ndarray:
    """A column's uncompressed size in each row group, from the footer."""
    j = _leaf_column(pf, column)
    assert j is not None, column
    return np.array([pf.metadata.row_group(g).column(j).total_uncompressed_size for g in range(pf.num_row_groups)],
                    dtype=np.int64)


def _row_group_bytes(pf: pq.ParquetFile, columns: Sequence[str]) -> np.ndarray:
    """Some columns' uncompressed size together in each row group, from the footer."""
    return sum((_column_bytes(pf, c) for c in columns), np.zeros(pf.num_row_groups, dtype=np.int64))


#: output rows per chunk of a bulky column read in sorted order (~100 MB of ``input`` at full scale)
_SLICE_ROWS = 1 << 20
#: texts in a row group (uncompressed ``input`` + ``output``) up to which :meth:`SortedTexts.write` decodes two
#: row groups at a time: a ``datasets``-written file's ~100 MB row groups hold ~40 MB, a 1 Mi-row group ~150 MB
_TWO_DECODES_BYTES = 64 << 20
#: parse batches per slice of :meth:`SortedTexts.write` (300,000 rows: ~45 MB of the average raw text, ~0.25 GB of
#: long captions; a slice is in memory twice while it is put in order)
_SPILL_SLICE_BATCHES = 3


def _read_in_order(
    urlpath: str,
    download_config: Optional[DownloadConfig],
    column: str,
    masks: List[np.ndarray],
    source: np.ndarray,
    slice_rows: int = 1 << 20,
    threads: int = 2,
    where: Optional[str] = None,
) -> Union[pa.Array, pa.ChunkedArray]:
    """The selected rows of one column in the order ``source`` (output row -> selected row in file order).

    Output rows are cut into slices of ``slice_rows``. Each row group is
    decoded once (``threads`` at a time, each thread with its own file handle)
    and immediately split into one small piece per slice: its rows that land
    in that slice, in output order. A slice is then its pieces concatenated and
    permuted, after which they are freed. At any time the column exists about
    once (pieces + finished slices) plus the row groups being decoded, never as
    a whole unsorted copy. Null-free strings are assembled into one array
    (offsets from the pieces' lengths, data copied in a slice at a time);
    anything else comes back as one chunk per slice. A null in a decoded row
    group is an error naming the row ID (``where`` names the file).
    """
    where = where or display_name(urlpath)
    n = len(source)
    bounds, groups, n_slices, width, by_bucket, edges = _slice_buckets(masks, source, slice_rows)

    def decode(handle: pq.ParquetFile, g: int) -> Dict[Tuple[int, int], pa.Array]:
        col = _one_array(_read_rows(handle, g, [column], masks[g], where)[column])
        out = {}
        for k in range(n_slices):
            a, b = edges[k * width + g], edges[k * width + g + 1]
            if b > a:
                out[(k, g)] = col.take(pa.array(source[by_bucket[a:b]] - bounds[g]))
        return out

    pieces: Dict[Tuple[int, int], pa.Array] = {}
    for part in _map_row_groups(None, groups, decode, urlpath, download_config, threads):
        pieces.update(part)
    # one string array: its offsets are known from the pieces' lengths; the data buffer is filled a
    # slice at a time while the pieces are freed (untouched pages of np.empty cost no memory)
    string = all(pa.types.is_string(p.type) and p.null_count == 0 for p in pieces.values())
    if string:
        lengths = np.zeros(n + 1, dtype=np.int32)
        for (k, g), piece in pieces.items():
            a, b = edges[k * width + g], edges[k * width + g + 1]
            lengths[by_bucket[a:b] + 1] = pc.binary_length(piece).to_numpy()
        total = int(lengths.sum(dtype=np.int64))
        string = total < 2**31  # else several chunks (int32 offsets)
    if string:
        offsets = np.cumsum(lengths, out=lengths)  # in place: lengths become the int32 offsets
        del lengths
        data = np.empty(total, dtype=np.uint8)
    chunks = []
    for k in range(n_slices):
        got = [pieces.pop((k, g)) for g in groups if (k, g) in pieces]
        joined = _concat(got)
        del got
        part = joined.take(_slice_order(by_bucket, edges, k, width, slice_rows))
        del joined
        if string:
            a, b = k * slice_rows, k * slice_rows + len(part)
            own = np.frombuffer(part.buffers()[1], dtype=np.int32)[part.offset : part.offset + len(part) + 1]
            data[offsets[a] : offsets[b]] = np.frombuffer(part.buffers()[2], dtype=np.uint8)[own[0] : own[-1]]
        else:
            chunks.append(part)
        del part
        pa.default_memory_pool().release_unused()
    if string:
        return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.chunked_array(chunks)


def _slice_buckets(masks: List[np.ndarray], source: np.ndarray, slice_rows: int):
    """Where each output row comes from, grouped by (output slice, row group).

    ``source``: output row -> selected row in file order. Returns ``bounds``
    (first selected row of each row group), the row groups holding selected
    rows, the number of slices, the number of row groups, ``by_bucket`` (output
    rows ordered by (slice, row group), output order kept within each) and
    ``edges`` (where each (slice, row group) bucket starts in ``by_bucket``).
    """
    n = len(source)
    small = np.int32 if n < 2**31 else np.int64  # index arrays: 4 bytes a row at full scale
    counts = np.array([int(m.sum()) for m in masks], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    groups = [g for g in range(len(masks)) if counts[g]]
    n_slices = max(1, -(-n // slice_rows))
    width = len(masks)
    bucket = (np.arange(n, dtype=small) // slice_rows) * width + (np.searchsorted(bounds, source, side="right") - 1).astype(small)
    if n_slices * width <= np.iinfo(np.uint16).max:  # numpy's stable sort of 16-bit keys is a radix sort: O(n)
        bucket = bucket.astype(np.uint16)
    by_bucket = np.argsort(bucket, kind="stable").astype(small)
    edges = np.searchsorted(bucket[by_bucket], np.arange(n_slices * width + 1))
    return bounds, groups, n_slices, width, by_bucket, edges


def _slice_order(by_bucket: np.ndarray, edges: np.ndarray, k: int, width: int, slice_rows: int) -> pa.Array:
    """Indices putting slice ``k``'s pieces (concatenated in row-group order) into output order."""
    placed = by_bucket[edges[k * width] : edges[(k + 1) * width]] - k * slice_rows  # output position of each joined row
    inverse = np.empty(len(placed), dtype=np.int64)
    inverse[placed] = np.arange(len(placed))
    return pa.array(inverse)


#: what :meth:`SortedTexts.write` decodes for its ``parse`` callback: the texts and what parsing them needs
PARSE_COLUMNS: Tuple[str, ...] = ("ID", "type", "category", "input", "output")


class SortedTexts:
    """The bulky columns of a sorted selection, left in the parquet until :meth:`write` places them, parsed, in order.

    Made by :func:`read_sorted_selection`. ``source`` maps each output row
    (the sorted light table's row) to its selected row in file order; the
    masks say which rows of each row group are selected.
    """

    def __init__(self, urlpath: str, download_config: Optional[DownloadConfig], masks: List[np.ndarray],
                 source: np.ndarray, where: str):
        self.urlpath, self.download_config, self.masks, self.source, self.where = urlpath, download_config, masks, source, where
        self._sizes: Optional[List[int]] = None

    def __len__(self) -> int:
        return len(self.source)

    def text_bytes(self) -> int:
        """``input`` + ``output`` bytes of the selected rows, estimated from the footer (for the size estimate)."""
        return int(sum(size * mask.sum() / len(mask) for size, mask in zip(self._group_text_bytes(), self.masks)
                       if len(mask) and mask.any()))

    def _group_text_bytes(self) -> List[int]:
        """``input`` + ``output`` bytes of each whole row group, from the footer (read once: over HTTP it is requests)."""
        if self._sizes is None:
            f, pf = open_parquet(self.urlpath, self.download_config)
            with f:
                rows = np.array([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)], dtype=np.int64)
                # PLAIN strings: a 4-byte length before each value
                sizes = _row_group_bytes(pf, _HEAVY_COLUMNS) - 4 * len(_HEAVY_COLUMNS) * rows
            self._sizes = np.maximum(sizes, 0).tolist()
        return self._sizes

    def write(self, path: str, parse: Callable[[pa.Table], Mapping[str, pa.Array]], extra: pa.Table,
              stopped: Callable[[], bool] = lambda: False, slice_rows: Optional[int] = None, batch_rows: int = 100_000,
              threads: int = 2) -> None:
        """An Arrow file of ``extra``'s columns (already sorted) and the parsed texts, in the sorted order.

        Two steps, ``threads`` at a time (Arrow and the parser's bulk
        expressions release the GIL):

        1. each row group holding selected rows is decoded once
           (``PARSE_COLUMNS``), and its selected rows are cut into one piece per
           output slice of ``slice_rows``, appended to that slice's Arrow stream
           in a folder beside ``path``;
        2. each slice is read back and put in order, and its batches of
           ``batch_rows`` are parsed by ``parse`` (rows -> columns) and
           appended to ``path`` with their rows of ``extra``. Then the slice's
           stream is deleted.

        Memory: a few row groups, then one slice of raw texts twice (as
        spilled and in order) and a few parsed batches. A slice is
        ``_SPILL_SLICE_BATCHES`` parse batches unless ``slice_rows`` is
        given: slices of 1 Mi rows held a config's 463,932 captions (~0.4 GB
        of long texts) in one slice, and a second config peaked at 1.55-1.9
        GB instead of 1.3-1.4 GB; smaller slices cost ~10 % more time here.
        Disk: the raw texts once, beside the file being written. ``stopped()``
        is asked between row groups and batches (a failed imagery pass stops
        this). A null text is an error naming the row ID.
        """
        n = len(self.source)
        if n == 0:  # nothing selected: the caller has said which option emptied the selection
            return
        if extra.num_rows != n:
            raise ValueError(f"extra has {extra.num_rows} rows, the selection {n}")
        slice_rows = slice_rows or _SPILL_SLICE_BATCHES * batch_rows
        bounds, groups, n_slices, width, by_bucket, edges = _slice_buckets(self.masks, self.source, slice_rows)
        # row groups of ~1 Mi rows (pyarrow's default) hold ~150 MB of texts: decoded whole, one at a time
        # (s1s2-all's text side peaks at 1.5-1.6 GB instead of 1.9-2.1 GB, 2-5 s slower); ~100 MB row groups, and
        # sparse selections (decoded in batches, their selected texts only held), keep two decoders
        sizes, shares = self._group_text_bytes(), [m.mean() if len(m) else 0.0 for m in self.masks]
        held = [sizes[g] * (shares[g] if shares[g] < _BATCHED_DECODE_SHARE else 1.0) for g in groups]
        decoders = threads if max(held) <= _TWO_DECODES_BYTES else 1
        spill = path + ".slices"
        os.makedirs(spill, exist_ok=True)

        def cut(handle: pq.ParquetFile, g: int) -> Dict[int, pa.Table]:
            rows = _read_rows(handle, g, PARSE_COLUMNS, self.masks[g], self.where, batch_rows=_DECODE_BATCH_ROWS)
            pieces = {}
            for k in range(n_slices):
                a, b = edges[k * width + g], edges[k * width + g + 1]
                if b > a:
                    pieces[k] = rows.take(pa.array(self.source[by_bucket[a:b]] - bounds[g]))
            return pieces

        writers: Dict[int, Any] = {}
        out = None
        try:
            for pieces in _map_row_groups(None, groups, cut, self.urlpath, self.download_config, decoders, stopped=stopped):
                for k, piece in pieces.items():
                    if k not in writers:
                        writers[k] = pa.ipc.new_stream(os.path.join(spill, f"{k}.arrow"), piece.schema)
                    writers[k].write_table(piece)
            if stopped():
                return
            for writer in writers.values():
                writer.close()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for k in range(n_slices):
                    name = os.path.join(spill, f"{k}.arrow")
                    with pa.memory_map(name) as source:
                        rows = pa.ipc.open_stream(source).read_all().take(_slice_order(by_bucket, edges, k, width, slice_rows))
                    os.remove(name)
                    first = k * slice_rows
                    batches = [rows.slice(a, batch_rows) for a in range(0, rows.num_rows, batch_rows)]
                    del rows
                    for j, parsed in enumerate(_bounded_map(pool, lambda batch: dict(parse(batch)), batches, threads, stopped)):
                        texts = extra.slice(first + j * batch_rows, len(next(iter(parsed.values()))))
                        table = pa.table({**{c: texts[c] for c in texts.column_names}, **parsed})
                        if out is None:
                            out = pa.ipc.new_file(path, table.schema)
                        out.write_table(table)
                    if stopped():
                        return
                    del batches
                    pa.default_memory_pool().release_unused()
        finally:
            for writer in writers.values():
                with contextlib.suppress(Exception):
                    writer.close()
            if out is not None:
                out.close()
            shutil.rmtree(spill, ignore_errors=True)


class StreamedTexts:
    """A sparse selection's bulky columns, decoded in the background, the row groups a stream asks for first.

    Made by :func:`read_streamed_selection`. A bench stream keeps 0.16 % of
    the rows, yet whole row groups of ``input`` / ``output`` are most of what
    it decodes (~2 of its 3-5 CPU-seconds at full scale). So they are decoded
    on ``threads`` threads of their own (each with its own handle, as in
    :func:`_map_row_groups`) while the stream reads its first imagery, and
    :meth:`rows` waits only for the row groups of the rows asked for, which
    are decoded next: the first pair's rows lie in one or two of them when a
    pair's rows are near each other. The others follow in the order the
    sorted rows reach them. Once all are decoded, the last thread puts them
    in sorted order once, and each later call is a slice: taking a pair's
    rows from its row groups costs ~0.1-0.25 ms, ~20-30 s over a stream of
    100,000-200,000 pairs. A decoding error is raised by the next
    :meth:`rows` call, whichever row group it came from; nulls were checked
    from the footer before. Memory: the selected rows' texts (a sparse
    selection: at most 1/8 of the rows), about twice that while they are
    put in order. A wait no thread would end is an error too: closed
    meanwhile by another thread, or in a process forked after the threads
    started (they stay in the parent). ``source`` maps each output row to
    its selected row in file order, as in :class:`SortedTexts`.
    """

    def __init__(self, urlpath: str, download_config: Optional[DownloadConfig], masks: List[np.ndarray],
                 source: np.ndarray, where: str, columns: Sequence[str], threads: int):
        self.columns = list(columns)
        self._urlpath, self._download_config, self._masks, self._where = urlpath, download_config, masks, where
        bounds = np.cumsum([0] + [int(m.sum()) for m in masks])
        self._source = source
        self._group = (np.searchsorted(bounds, source, side="right") - 1).astype(np.int64)
        self._local = source - bounds[self._group]
        groups, first = np.unique(self._group, return_index=True)
        self._queue = collections.deque(int(g) for g in groups[np.argsort(first)])  # the order sorted rows reach them
        self._groups = len(groups)
        self._asked: collections.deque = collections.deque()  # rows() waits for these: decoded first
        self._started: set = set()
        self._done: Dict[int, pa.Table] = {}
        self._sorted: Optional[pa.Table] = None  # all of them in output order, once every row group is decoded
        self._error: Optional[BaseException] = None
        self._stop = False
        self._changed = threading.Condition()
        self._pid = os.getpid()  # a process forked from this one has none of the threads
        self._threads = [threading.Thread(target=self._decode, name="bentxt-streamed-texts", daemon=True)
                         for _ in range(max(1, min(threads, self._groups)))]
        _LIVE_TEXTS.add(self)
        for thread in self._threads:
            thread.start()

    def _next_group(self) -> Optional[int]:
        for queue in (self._asked, self._queue):
            while queue:
                g = queue.popleft()
                if g not in self._started:
                    self._started.add(g)
                    return g
        return None

    def _decode(self) -> None:
        f = None
        try:
            f, pf = open_parquet(self._urlpath, self._download_config)
            while True:
                with self._changed:
                    g = None if self._stop or self._error is not None else self._next_group()
                if g is None:
                    break
                rows = _read_rows(pf, g, self.columns, self._masks[g], self._where)
                table = pa.table({c: _decoded(_one_array(rows[c])) for c in self.columns})
                with self._changed:
                    self._done[g] = table
                    last = len(self._done) == self._groups and not self._stop
                    self._changed.notify_all()
                if last:  # this thread decoded the last row group: no other touches ``_done`` any more
                    self._put_in_order()
        except BaseException as err:  # raised in the stream by the next rows()
            with self._changed:
                if self._error is None:
                    self._error = err
                self._changed.notify_all()
        finally:
            if f is not None:
                f.close()

    def _put_in_order(self) -> None:
        groups = sorted(self._done)  # ascending: all selected rows in file order, which ``source`` indexes
        at = pa.array(self._source)
        table = pa.table({c: pa.chunked_array([self._done[g][c] for g in groups], self._done[groups[0]].schema.field(c).type)
                          .take(at) for c in self.columns})
        with self._changed:
            self._sorted, self._done = table, {}
            self._changed.notify_all()

    def whole(self) -> Optional[pa.Table]:
        """Every output row's bulky columns, in order, once all are decoded (else None)."""
        with self._changed:
            return self._sorted

    def rows(self, a: int, b: int) -> pa.Table:
        """The bulky columns of output rows ``a`` to ``b``, once their row groups are decoded."""
        group = self._group[a:b]
        needed = np.unique(group)
        if os.getpid() != self._pid:  # checked before the lock, which a thread of the parent may have held
            raise RuntimeError(f"streamed texts read in process {os.getpid()}, forked from process {self._pid} whose "
                               f"threads decode them: iterate the stream in the process that started it")
        with self._changed:
            if self._stop:
                raise RuntimeError("internal error: streamed texts read after close()")
            self._asked.extend(int(g) for g in needed if int(g) not in self._started)
            while True:
                if self._error is not None:
                    raise self._error
                if self._sorted is not None:
                    return self._sorted.slice(a, b - a)
                if all(int(g) in self._done for g in needed):
                    tables = [self._done[int(g)] for g in needed]
                    break
                if self._stop:  # closed by another thread meanwhile: these row groups will never be decoded
                    raise RuntimeError("internal error: streamed texts closed while rows were awaited")
                self._changed.wait()
        # each row group's rows taken from it alone: a take over all of them at once would first copy them into
        # one array (~25 ms for 12 row groups of 100,000 texts)
        local = self._local[a:b]
        at = [np.flatnonzero(group == g) for g in needed]
        parts = pa.concat_tables([table.take(pa.array(local[k])) for table, k in zip(tables, at)])
        return parts.take(pa.array(np.argsort(np.concatenate(at), kind="stable")))

    def close(self) -> None:
        """Stop decoding (a stream that ends early); row groups being decoded finish first."""
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():  # a stream finalised on one of its own threads
                thread.join()
        _LIVE_TEXTS.discard(self)


#: streamed texts whose threads may still decode: closed at exit, since a daemon thread still inside Arrow when the
#: interpreter ends can abort it ("terminate called without an active exception")
_LIVE_TEXTS: "weakref.WeakSet[StreamedTexts]" = weakref.WeakSet()


@atexit.register
def _close_live_texts() -> None:
    for texts in list(_LIVE_TEXTS):
        texts.close()


#: when preparing, a row group of texts whose selected share is below this is decoded in batches of
#: ``_DECODE_BATCH_ROWS`` and filtered batch by batch (:func:`_read_rows`)
_BATCHED_DECODE_SHARE = 0.5
_DECODE_BATCH_ROWS = 1 << 16


def _read_rows(handle: pq.ParquetFile, g: int, columns: Sequence[str], mask: np.ndarray, where: str,
               batch_rows: Optional[int] = None) -> pa.Table:
    """The selected rows of one row group; a null in any row decoded (selected or not) is an error naming its ID.

    The null check is the footer's when it has null counts (``read_selection``
    reported those); otherwise it is this one. With ``batch_rows``, a
    sparsely selected row group is decoded that many rows at a time and each
    batch filtered at once (for the texts when preparing): a 1 Mi-row group
    of texts is ~150 MB decoded, of which a caption config keeps 5 %, and two
    threads decoding whole row groups set the peak of a second config's texts
    (1.6-1.8 GB instead of 1.2-1.4 GB). Not for the other reads: it decodes
    ~10 % slower (a bench stream start, 2.5-2.9 s instead of 2.3-2.7 s).
    """
    columns = list(columns)

    def checked(part):
        for c in columns:
            if part.column(c).null_count:
                _report_nulls(handle, g, c, where)
        return part

    if mask.all():
        return checked(handle.read_row_group(g, columns=columns))
    if batch_rows is None or mask.mean() >= _BATCHED_DECODE_SHARE:
        return checked(handle.read_row_group(g, columns=columns)).filter(pa.array(mask))
    parts, start = [], 0
    for batch in handle.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns, use_threads=False):
        keep = mask[start : start + batch.num_rows]
        start += batch.num_rows
        checked(batch)
        if keep.any():
            parts.append(batch.filter(pa.array(keep)))
    if not parts:
        return handle.schema_arrow.empty_table().select(columns)
    return pa.Table.from_batches(parts).combine_chunks()


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, window: int,
                 stopped: Callable[[], bool]) -> Iterable:
    """``fn`` over ``items`` on ``pool``, results in order, at most ``window + 1`` in flight (results never pile up).

    Stops submitting when ``stopped()``; what is in flight is then cancelled or awaited.
    """
    pending: List[Any] = []
    try:
        for item in items:
            if stopped():
                return
            pending.append(pool.submit(fn, item))
            if len(pending) > window:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        for future in pending:
            future.cancel()


#: read dictionary-encoded straight from the parquet (a handful of values: cheap for the reader)
_FEW_VALUES: Tuple[str, ...] = ("type", "category", "split", "country", "season", "climate_zone")


#: a selection keeping at most this share of the rows reads all its columns in one pass (:func:`_is_sparse`)
SPARSE_SHARE = 1 / 8


def _is_sparse(masks: List[np.ndarray]) -> bool:
    """Few rows selected: every column decoded once per row group and filtered at once costs little memory."""
    total = sum(len(m) for m in masks)
    return sum(int(m.sum()) for m in masks) <= total * SPARSE_SHARE


def _read_selected(pf: pq.ParquetFile, columns: Sequence[str], masks: List[np.ndarray], where: str,
                   urlpath: Optional[str] = None, download_config: Optional[DownloadConfig] = None,
                   threads: Optional[int] = None) -> Dict[str, pa.Array]:
    """Some columns' selected rows, one read per row group that holds any (a null is an error naming the row ID).

    With ``urlpath`` (the file ``pf`` reads), row groups are decoded ``threads``
    at a time (:func:`decode_threads` by default), each thread with its own
    handle (:func:`_map_row_groups`).
    """
    if not columns:
        return {}
    columns = list(columns)
    threads = threads or decode_threads(pf, columns)

    def read(handle: pq.ParquetFile, i: int) -> pa.Table:
        return _read_rows(handle, i, columns, masks[i], where)

    parts: Dict[str, list] = {c: [] for c in columns}
    for chosen in _map_row_groups(pf, _groups_with_rows(masks), read, urlpath, download_config, threads):
        for c in columns:
            parts[c].extend(chosen[c].chunks)
        del chosen
    return {c: _concat(_pair_names(parts.pop(c)) if c in _NAME_COLUMNS else parts.pop(c)) for c in columns}


def _read_pair_names(pf: pq.ParquetFile, key: str, others: Sequence[str], masks: List[np.ndarray], where: str,
                     urlpath: Optional[str] = None, download_config: Optional[DownloadConfig] = None,
                     threads: int = 2) -> Dict[str, pa.Array]:
    """The selected rows' pair names, dictionary-encoded by pair: ``key`` hashed once, ``others`` never hashed.

    A pair's rows are scattered, so a row group holds nearly as many distinct
    names as rows (206,001 in 270,479 at full scale): encoding row groups
    apart and merging their dictionaries hashed every name twice (5.5 of 15 s
    of the s1s2-all text side). Here the key is decoded plain (~0.5 GB at full
    scale, the only plain copy) and hashed once, one half of the file per
    thread. Every other name (one value per pair, e.g. ``s1_name``) takes the
    key's codes as its indices: one pass on threads takes each pair's value
    from one of its rows, a second checks every row against it. A column that
    disagrees anywhere is hashed like the key instead (a broken file), so
    :func:`check_patch_pairs` names the row.
    """
    out = {key: _hashed_names(pf, key, masks, where, urlpath, download_config, threads)}
    if not others:
        return out
    codes = out[key].indices.to_numpy()
    some_row = np.empty(len(out[key].dictionary), dtype=np.int64)
    some_row[codes] = np.arange(len(codes))  # one row of each pair (whichever write wins)
    groups = _groups_with_rows(masks)
    starts = np.cumsum([0] + [int(masks[g].sum()) for g in groups])
    span = {g: (int(starts[i]), int(starts[i + 1])) for i, g in enumerate(groups)}  # among all selected rows

    def decode(handle: pq.ParquetFile, g: int) -> Dict[str, pa.Array]:
        rows = _read_rows(handle, g, others, masks[g], where)
        return {c: _decoded(_one_array(rows[c])) for c in others}

    def values_of_pairs(handle: pq.ParquetFile, g: int) -> Dict[str, Tuple[np.ndarray, pa.Array]]:
        a, b = span[g]
        rows = np.flatnonzero(some_row[codes[a:b]] == np.arange(a, b))
        return {c: (codes[a:b][rows], column.take(pa.array(rows))) for c, column in decode(handle, g).items()}

    def agrees(handle: pq.ParquetFile, g: int) -> Dict[str, bool]:
        mine = pa.array(codes[slice(*span[g])])
        return {c: pc.all(pc.equal(column, per_pair[c].take(mine))).as_py() for c, column in decode(handle, g).items()}

    found: Dict[str, list] = {c: [] for c in others}
    for part in _map_row_groups(pf, groups, values_of_pairs, urlpath, download_config, threads):
        for c in others:
            found[c].append(part[c])
    per_pair = {}
    for c in others:
        pairs = np.concatenate([p for p, _ in found[c]])
        assert len(pairs) == len(some_row), "one value per pair"  # every dictionary value of a fresh hash is used
        per_pair[c] = _concat([v for _, v in found[c]]).take(pa.array(np.argsort(pairs)))
    del found
    same = dict.fromkeys(others, True)
    for part in _map_row_groups(pf, groups, agrees, urlpath, download_config, threads):
        same = {c: same[c] and part[c] for c in others}
    indices = out[key].indices
    for c in others:
        out[c] = (sorted_dictionary(pa.DictionaryArray.from_arrays(indices, per_pair[c])) if same[c]
                  else _hashed_names(pf, c, masks, where, urlpath, download_config, threads))
    return out


def _hashed_names(pf: pq.ParquetFile, column: str, masks: List[np.ndarray], where: str, urlpath: Optional[str],
                  download_config: Optional[DownloadConfig], threads: int) -> pa.DictionaryArray:
    """A name column's selected rows hashed once (:func:`sorted_dictionary`), its chunks never combined.

    A name read as a dictionary (:func:`dictionary_encoded_names`, or a file
    written from categoricals) is not hashed row by row: :func:`_pair_names`.
    """
    names = _pair_names(_read_selected_chunks(pf, column, masks, where, urlpath, download_config, threads))
    return sorted_dictionary(pa.chunked_array(names, None if names else pa.string()), threads=threads)


def _pair_names(chunks: list) -> list:
    """A name column's selected rows from row-group chunks: plain chunks, or one dictionary array of the names used.

    Chunks read as dictionaries each carry their row group's dictionary,
    which also holds the unselected rows' names: codes no selected row uses,
    so no row would give their pair's value, and grouping expects none. With
    more rows than dictionary values (a large selection of a file that keeps
    a pair's rows together) the dictionaries are unified (each distinct name
    of a row group hashed once: ~470,000 for the release instead of 9.55 M
    rows) and cut to the names used; otherwise the few rows are decoded, to
    be hashed like plain strings. Plain chunks stay chunks (never one ~0.5 GB copy).
    """
    if not any(pa.types.is_dictionary(c.type) for c in chunks):
        return chunks
    rows, values = sum(len(c) for c in chunks), sum(len(c.dictionary) for c in chunks)
    if rows <= values or any(c.null_count for c in chunks):
        return [_decoded(c) for c in chunks]
    unified = pa.chunked_array(chunks).unify_dictionaries()
    dictionary = unified.chunk(0).dictionary
    indices = np.concatenate([c.indices.to_numpy() for c in unified.chunks])
    used = np.bincount(indices, minlength=len(dictionary)) > 0
    code: np.ndarray = (np.cumsum(used) - 1).astype(_index_dtype(int(used.sum())))
    return [pa.DictionaryArray.from_arrays(pa.array(code[indices]), dictionary.filter(pa.array(used)))]


def _read_selected_chunks(pf: pq.ParquetFile, column: str, masks: List[np.ndarray], where: str = "annotation parquet",
                          urlpath: Optional[str] = None, download_config: Optional[DownloadConfig] = None,
                          threads: Optional[int] = None) -> list:
    """One column's selected rows, one chunk per row group (a null is an error naming the row ID).

    With ``urlpath``, row groups are decoded ``threads`` at a time, as in :func:`_read_selected`.
    """
    threads = threads or decode_threads(pf, [column])

    def read(handle: pq.ParquetFile, i: int) -> list:
        return _read_rows(handle, i, [column], masks[i], where)[column].chunks

    chunks = []
    for part in _map_row_groups(pf, _groups_with_rows(masks), read, urlpath, download_config, threads):
        chunks.extend(part)
    return chunks


def _encode_by_pair(column, pairs: Optional[np.ndarray], slice_rows: int = 1 << 20) -> pa.Array:
    """Dictionary-encode a per-pair column without hashing it, from the pair codes of the key.

    When every row carries its pair's value (checked against one row of the
    pair, a slice at a time), the dictionary is one value per pair and the
    indices are the pair codes. Otherwise, or with nulls, it falls back to
    :func:`sorted_dictionary` (and ``check_patch_pairs`` reports the row).
    """
    array = _one_array(column)
    if pairs is None or array.null_count or pa.types.is_dictionary(array.type) or len(array) == 0:
        return sorted_dictionary(array)
    first = np.full(int(pairs.max()) + 1, -1, dtype=np.int64)
    first[pairs] = np.arange(len(pairs))  # some row of each pair (whichever write wins)
    if (first < 0).any():
        return sorted_dictionary(array)
    for a in range(0, len(array), slice_rows):
        b = min(a + slice_rows, len(array))
        same = pc.equal(array.slice(a, b - a), array.take(pa.array(first[pairs[a:b]])))
        if not pc.all(same).as_py():
            return sorted_dictionary(array)
    values = array.take(pa.array(first))
    return sorted_dictionary(pa.DictionaryArray.from_arrays(pa.array(pairs.astype(np.int32)), values))


def _concat(chunks: list) -> pa.Array:
    """One array from row-group chunks (dictionary chunks get one unified dictionary)."""
    return chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)


def _one_array(column) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def sorted_dictionary(column, threads: int = 1) -> pa.Array:
    """``column`` dictionary-encoded with its distinct values in ascending order (nulls stay null).

    Equal strings get equal indices and the indices order like the strings,
    so sorting, grouping and comparing work on integers; the indices are the
    narrowest signed type that fits. Encoding a plain column hashes every value
    once (~0.3 us a row); a per-pair name would otherwise cost ~50 bytes a row.
    """
    if not pa.types.is_dictionary(column.type):
        array = _hash_encode(column, threads)
    else:
        array = _one_array(column)
    dictionary = array.dictionary
    width = pa.from_numpy_dtype(_index_dtype(len(dictionary)))
    if array.indices.type == width and _is_normalized(dictionary):  # the common case, ~100x cheaper than hashing
        return array
    if dictionary.null_count or len(pc.unique(dictionary)) != len(dictionary):  # rare: merge duplicates first
        values = pc.unique(dictionary.drop_null())
        indices = pc.index_in(dictionary, value_set=values).take(array.indices)
        array = pa.DictionaryArray.from_arrays(indices, values)
        dictionary = values
    width = pa.from_numpy_dtype(_index_dtype(len(dictionary)))
    if _is_normalized(dictionary) and array.indices.type == width:
        return array
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), dtype=width.to_pandas_dtype())
    rank[order] = np.arange(len(order))
    if array.null_count:
        indices = pa.array(rank).take(array.indices)
    else:
        indices = pa.array(rank[array.indices.to_numpy()])
    return pa.DictionaryArray.from_arrays(indices, dictionary.take(pa.array(order)))


#: fewer rows are hashed on one thread (:func:`_hash_encode`)
_THREADED_HASH_ROWS = 1 << 20


def _hash_encode(column, threads: int) -> pa.DictionaryArray:
    """``dictionary_encode`` on ``threads`` runs of rows; chunks are never combined (a plain copy is ~0.5 GB at full scale).

    Each run is hashed once on its thread; concatenating the runs unifies their dictionaries.
    """
    pieces = list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]
    n = sum(len(p) for p in pieces)
    if threads < 2 or n < _THREADED_HASH_ROWS:
        return pc.dictionary_encode(_one_array(column))
    if len(pieces) < threads:  # cut one array into slices
        array = _one_array(column)
        cuts = np.linspace(0, n, threads + 1).astype(int)
        runs = [[array.slice(a, b - a)] for a, b in zip(cuts, cuts[1:])]
    else:  # runs of whole chunks, about equal in rows
        ends = np.searchsorted(np.cumsum([len(p) for p in pieces]), np.linspace(0, n, threads + 1)[1:-1]) + 1
        bounds = [0, *ends.tolist(), len(pieces)]
        runs = [pieces[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(lambda run: pc.dictionary_encode(pa.chunked_array(run, column.type)).combine_chunks(), runs))
    return _concat(parts)


def _index_dtype(size: int) -> type:
    return np.int8 if size <= 127 else np.int16 if size <= 32767 else np.int32


def _is_normalized(dictionary: pa.Array) -> bool:
    """Strictly ascending and null-free (so distinct): the indices are order-preserving codes."""
    if dictionary.null_count:
        return False
    if len(dictionary) < 2:
        return True
    return bool(pc.all(pc.less(dictionary.slice(0, len(dictionary) - 1), dictionary.slice(1))).as_py())


def _isin(column, values: Sequence[str]) -> np.ndarray:
    """``column`` in ``values`` as numpy bools; dictionary columns are tested per dictionary value."""
    array = _one_array(column)
    value_set = pa.array(list(values), pa.string())
    if pa.types.is_dictionary(array.type) and array.null_count == 0:
        hit = pc.is_in(array.dictionary, value_set=value_set.cast(array.dictionary.type)).fill_null(False)
        return hit.to_numpy(zero_copy_only=False)[array.indices.to_numpy()]
    value_set = value_set.cast(array.type) if _is_string(array.type) else value_set
    return pc.is_in(array, value_set=value_set).fill_null(False).to_numpy(zero_copy_only=False)


def _codes(column) -> Optional[np.ndarray]:
    """Integer codes that order like the values (equal values, equal codes); None if there are nulls."""
    array = _one_array(column)
    if array.null_count:
        return None
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
        return array.to_numpy()
    if not (pa.types.is_dictionary(array.type) or _is_string(array.type) or pa.types.is_binary(array.type)
            or pa.types.is_large_binary(array.type)):
        return None
    array = sorted_dictionary(array)
    if array.null_count:
        return None
    return array.indices.to_numpy()


def _sort_order(key, ids, codes: Optional[np.ndarray] = None) -> Optional[pa.Array]:
    """Indices sorting rows by (key, ID) ascending, stable; None when the rows are sorted already.

    ``codes`` are the key's :func:`_codes` when the caller has them already.
    """
    codes = _codes(key) if codes is None else codes
    id_values = _codes(ids)
    if codes is None or id_values is None:  # nulls: Arrow's sort puts them last
        table = pa.table({"k": _decoded(_one_array(key)), "i": _one_array(ids)})
        return pc.sort_indices(table, [("k", "ascending"), ("i", "ascending")])
    if len(codes) < 2 or _is_sorted(codes, id_values):
        return None
    low, high = int(id_values.min()), int(id_values.max())
    key_bits = max(1, int(codes.max())).bit_length()
    if id_values.dtype.kind in "iu" and high - low < (1 << (63 - key_bits)):
        # one stable integer sort of (code, ID) packed into an int64, in as few bits as they need
        id_bits = max(1, high - low).bit_length()
        packed = (codes.astype(np.int64) << id_bits) | (id_values.astype(np.int64) - low)
        # distinct keys (unique IDs, as read_selection leaves them) need no stable sort: numpy's vectorised
        # quicksort is ~1.8x faster than the radix sort at full scale; a repeated (key, ID) takes the stable one
        order = np.argsort(packed)
        if not _strictly_increasing(packed, order):
            order = _radix_argsort(packed, key_bits + id_bits)
        return pa.array(order)
    return pa.array(np.lexsort((id_values, codes)))


def _radix_argsort(keys: np.ndarray, bits: int) -> np.ndarray:
    """A stable argsort of non-negative int64 keys below ``2**bits``: 16-bit digits, least significant first.

    numpy sorts 16-bit integers stably by radix (O(n)), so three passes sort
    the release's 43-bit (pair code, ID) keys ~1.7x faster than one introsort of the int64s.
    """
    order = None
    for shift in range(0, bits, 16):
        digits = ((keys if order is None else keys[order]) >> shift) & 0xFFFF
        step = np.argsort(digits.astype(np.uint16), kind="stable")
        order = step if order is None else order[step]
    assert order is not None  # bits > 0: at least one pass
    return order


def _strictly_increasing(values: np.ndarray, order: np.ndarray, slice_rows: int = 1 << 20) -> bool:
    """``values[order]`` strictly ascending? A slice at a time, so no sorted copy of ``values`` exists."""
    for a in range(0, len(order) - 1, slice_rows):
        taken = values[order[a : a + slice_rows + 1]]
        if not (taken[1:] > taken[:-1]).all():
            return False
    return True


def _is_sorted(codes: np.ndarray, id_values: np.ndarray, slice_rows: int = 1 << 20) -> bool:
    """Rows ascending by (code, ID)? Checked a slice at a time to keep the temporaries small."""
    for a in range(0, len(codes) - 1, slice_rows):
        b = min(a + slice_rows, len(codes) - 1)
        up, down = codes[a + 1 : b + 1], codes[a:b]
        if (up < down).any() or ((up == down) & (id_values[a + 1 : b + 1] < id_values[a:b])).any():
            return False
    return True


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _pylist(column) -> list:
    """Python values; a dictionary column decoded first (its ``to_pylist`` is ~20x slower: 1 s for the 464,044 pair names)."""
    return _decoded(_one_array(column)).to_pylist()


def _used_values(column) -> Optional[List[str]]:
    """Distinct values of a null-free dictionary column, from its codes (None: not dictionary / has nulls)."""
    array = _one_array(column)
    if not pa.types.is_dictionary(array.type) or array.null_count:
        return None
    used = np.bincount(array.indices.to_numpy(), minlength=len(array.dictionary)) > 0
    return array.dictionary.filter(pa.array(used)).to_pylist()


def check_nulls(table: pa.Table, where: str, first_row: int = 0) -> None:
    """A null in any column is an error naming the row ID and the column (the release has none).

    Free on a good table: Arrow keeps every column's null count. ``ID`` is
    checked first (a row without one is named by its position in the file,
    ``first_row`` being the table's first).
    """
    for column in sorted(table.column_names, key=lambda c: c != "ID"):
        if table[column].null_count:
            r = int(pc.indices_nonzero(pc.is_null(_one_array(table[column])))[0].as_py())
            if column == "ID":
                raise AnnotationFileError(
                    f"{where}: row {first_row + r} of the file has a null 'ID' (rows counted from 0); the release has no nulls"
                )
            hint = f"; {_KNOWN[column][0]} are {list(_KNOWN[column][1])}" if column in _KNOWN else "; the release has no nulls"
            raise AnnotationFileError(f"{where}: row ID {table['ID'][r].as_py()} has a null {column!r}{hint}")


def _check_unread_nulls(pf: pq.ParquetFile, group: int, read: Sequence[str], where: str, first_row: int) -> None:
    """Nulls in the columns not read, from the footer's null counts (free; no statistics: nothing to check)."""
    meta = pf.metadata.row_group(group)
    for j in range(meta.num_columns):
        chunk = meta.column(j)
        if chunk.path_in_schema in COLUMNS and chunk.path_in_schema not in read:
            stats = chunk.statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                _report_nulls(pf, group, chunk.path_in_schema, where, first_row)


def _report_nulls(pf: pq.ParquetFile, group: int, column: str, where: str, first_row: Optional[int] = None) -> None:
    """Read ``ID`` and ``column`` of one row group to name the row holding a null (an error path)."""
    if first_row is None:
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(group))
    check_nulls(pf.read_row_group(group, columns=sorted({"ID", column})), where, first_row=first_row)


def _check_known(table: pa.Table, column: str, where: str) -> None:
    """A null or unknown value in a closed-set column is an error naming the first offending ID and the set."""
    label, allowed = _KNOWN[column]
    used = _used_values(table[column])
    if used is not None and set(used) <= set(allowed):
        return
    bad = np.flatnonzero(~_isin(table[column], allowed))
    if len(bad):
        r = int(bad[0])
        value = table[column][r].as_py()
        what = f"a null {column!r}" if value is None else f"unknown {column} {value!r}"
        raise AnnotationFileError(f"{where}: row ID {table['ID'][r].as_py()} has {what}; {label} are {list(allowed)}")


def check_types(table: pa.Table, where: str) -> None:
    """Unknown ``type`` values are an error naming the first offending ID (not a silently dropped row)."""
    _check_known(table, "type", where)


def check_splits(table: pa.Table, where: str) -> None:
    """A null or unknown ``split`` is an error naming the first offending ID and the valid splits.

    Checked on every row before filtering, like ``type``: filtering by split
    would otherwise drop such a row without a word.
    """
    _check_known(table, "split", where)


def duplicate_ids(ids: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """The IDs that occur more than once, ascending, from one array or a list of chunks (one per row group).

    IDs in a dense range (the release's) are first marked in one bool per
    possible ID, chunk by chunk (no copy of the IDs): as many marks as IDs
    means none repeats (~0.05 s at full scale, 9.55 M IDs: 10 MB of marks).
    Only otherwise are they counted (``np.bincount``, one int64 per possible
    ID); IDs outside a dense range are sorted once and neighbours compared.
    """
    chunks = [ids] if isinstance(ids, np.ndarray) else list(ids)
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    n = sum(len(c) for c in chunks)
    if all(c.dtype.kind in "iu" for c in chunks):
        low, high = min(int(c.min()) for c in chunks), max(int(c.max()) for c in chunks)
        if high - low < 4 * n and _all_distinct(chunks, low, high - low + 1, n):
            return np.zeros(0, dtype=np.int64)
    values = np.concatenate(chunks)  # a copy (the chunks may be views of Arrow buffers): changed in place
    if values.dtype.kind in "iu" and values.dtype.itemsize < 8:
        values = values.astype(np.int64)  # a narrow type's differences to the lowest ID could wrap
    low, high = int(values.min()), int(values.max())
    if values.dtype.kind in "iu" and high - low < 4 * len(values):
        # IDs in a dense range (the release: 1..9,553,962): one count per possible ID, ~20x faster than sorting
        counts = np.bincount(np.subtract(values, low, out=values).astype(np.int64, copy=False))
        del values
        return (np.flatnonzero(counts > 1) + low).astype(np.int64)
    values.sort()
    repeated = values[1:][values[1:] == values[:-1]]
    del values
    return np.unique(repeated)


def _drop_identical_duplicates(
    pf: pq.ParquetFile, ids: List[np.ndarray], masks: List[np.ndarray], where: str
) -> Optional[np.ndarray]:
    """Resolve repeated IDs: drop rows equal to an earlier row in all 13 columns, reject the others.

    ``ids`` and ``masks`` are per row group (every row's ID, selected rows).
    With no repeated ID (the release) this is one sort (:func:`duplicate_ids`)
    and returns None. Otherwise the row groups holding a repeated ID are read
    again, all columns, one at a time, keeping only those rows; within each ID
    the rows are compared with its first in file order. Any difference is an
    error naming the ID, the column and the two rows' positions; otherwise the
    later copies are dropped from ``masks`` (in place), their number is
    logged, and the result says which of the rows selected so far (in file
    order) are kept.
    """
    repeated = duplicate_ids(ids)
    if not len(repeated):
        return None
    starts = np.concatenate([[0], np.cumsum([len(c) for c in ids])]).astype(np.int64)
    rows, positions = [], []
    for g, group_ids in enumerate(ids):
        local = np.flatnonzero(np.isin(group_ids, repeated))
        if len(local):
            part = pf.read_row_group(g).take(pa.array(local))
            rows.append(pa.table({c: _decoded(_one_array(part[c])) for c in COLUMNS}))
            positions.append(local + starts[g])
            del part
    table = pa.concat_tables(rows)
    del rows
    position = np.concatenate(positions)
    id_values = table["ID"].to_numpy()
    order = np.lexsort((position, id_values))
    table, id_values, position = table.take(pa.array(order)), id_values[order], position[order]
    first = np.flatnonzero(np.concatenate([[True], id_values[1:] != id_values[:-1]]))
    sizes = np.diff(np.concatenate([first, [len(id_values)]]))
    lead = np.repeat(first, sizes)  # each row's first row of its ID
    for column in COLUMNS:
        values = _one_array(table[column])
        differ = np.flatnonzero(~_same_values(values, values.take(pa.array(lead))))
        if len(differ):
            r = int(differ[0])
            k = int(sizes[np.searchsorted(first, r, side="right") - 1])
            raise AnnotationFileError(
                f"{where}: ID {id_values[r]} occurs in {k} rows that differ in {column!r}: "
                f"{_excerpt(values[int(lead[r])].as_py())} in row {position[lead[r]]} of the file, "
                f"{_excerpt(values[r].as_py())} in row {position[r]} (rows counted from 0); IDs must be unique"
            )
    later = np.ones(len(id_values), dtype=bool)
    later[first] = False
    drop = position[later]
    logger.warning(
        "%s: dropped %d row(s) that repeat an earlier row exactly (same ID, all %d columns equal)",
        where, len(drop), len(COLUMNS),
    )
    keep = np.ones(int(starts[-1]), dtype=bool)
    keep[drop] = False
    kept_selected = []
    for g, mask in enumerate(masks):
        group_keep = keep[starts[g] : starts[g + 1]]
        kept_selected.append(group_keep[mask])
        mask &= group_keep
    return np.concatenate(kept_selected) if kept_selected else np.zeros(0, dtype=bool)


def _same_values(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise equality as numpy bools; two nulls, or two NaNs, count as equal."""
    same = pc.equal(a, b).fill_null(False)
    same = pc.or_(same, pc.and_(pc.is_null(a), pc.is_null(b)))
    if pa.types.is_floating(a.type):
        same = pc.or_(same, pc.and_(pc.is_nan(a), pc.is_nan(b)).fill_null(False))
    return same.to_numpy(zero_copy_only=False)


def _excerpt(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_categories(table: pa.Table, where: str) -> None:
    """A category outside its type's set is an error naming the first offending ID."""
    if _known_combinations(table):
        return
    for kind, allowed in CATEGORIES.items():
        rows = table.filter(pc.equal(table["type"], kind))
        bad = rows.filter(pc.invert(pc.is_in(rows["category"], pa.array(list(allowed)))))
        if len(bad):
            row = bad.slice(0, 1).to_pylist()[0]
            raise AnnotationFileError(
                f"{where}: row ID {row['ID']} has category {row['category']!r}, unknown for type {kind!r}; "
                f"known categories are {list(allowed)}"
            )


def _known_combinations(table: pa.Table) -> bool:
    """True when every (type, category) pair is allowed, decided on dictionary codes; False: look closer."""
    kinds, categories = _one_array(table["type"]), _one_array(table["category"])
    if not (pa.types.is_dictionary(kinds.type) and pa.types.is_dictionary(categories.type)):
        return False
    if kinds.null_count or categories.null_count:
        return False
    width = len(categories.dictionary)
    pairs = kinds.indices.to_numpy().astype(np.int64) * width + categories.indices.to_numpy()
    used = np.flatnonzero(np.bincount(pairs, minlength=len(kinds.dictionary) * width))
    kind_names, category_names = kinds.dictionary.to_pylist(), categories.dictionary.to_pylist()
    for pair in used:
        kind, category = kind_names[pair // width], category_names[pair % width]
        if kind in CATEGORIES and category not in CATEGORIES[kind]:
            return False
    return True


#: whole names (RE2: ``$`` is the end of the text): junk before or after a valid name is refused here, with the row
_S2_NAME = f"^{PATCH_NAME_PATTERN['s2']}$"
_S1_NAME = f"^{PATCH_NAME_PATTERN['s1']}$"


def check_pair_names(table: pa.Table, where: str) -> None:
    """``patch_id`` and ``s1_name`` must be whole release names, naming the same tile and grid cell.

    The two names differ in date, time and zero padding (``_05_43`` vs
    ``_5_43``), but after ``int()`` tile and grid numbers agree for every real
    pair (docs/release.md#patch-names): a row that breaks this joins the wrong S1 patch.
    """
    if len(table) == 0:
        return
    s2 = pc.extract_regex(_decoded(_one_array(table["patch_id"])), _S2_NAME)
    s1 = pc.extract_regex(_decoded(_one_array(table["s1_name"])), _S1_NAME)
    for column, parsed, kind in (("patch_id", s2, "Sentinel-2"), ("s1_name", s1, "Sentinel-1")):
        bad = pc.indices_nonzero(pc.is_null(parsed))
        if len(bad):
            r = int(bad[0].as_py())
            raise AnnotationFileError(
                f"{where}: row ID {table['ID'][r].as_py()}: {column} {table[column][r].as_py()!r} is not a {kind} patch "
                f"name (the whole value must be one, e.g. {EXAMPLE_NAME['s2' if column == 'patch_id' else 's1']})"
            )
    same = pc.equal(pc.struct_field(s2, "tile"), pc.struct_field(s1, "tile"))
    for axis in ("x", "y"):
        same = pc.and_(same, pc.equal(pc.cast(pc.struct_field(s2, axis), pa.int64()),
                                      pc.cast(pc.struct_field(s1, axis), pa.int64())))
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
    texts: Optional[SortedTexts] = None  # the bulky columns, not in ``table`` (``read_sorted_selection``)
    streamed: Optional[StreamedTexts] = None  # the same, decoded as a stream goes (``read_streamed_selection``)
    _joined: bool = field(default=False, init=False, repr=False)  # ``streamed``'s columns are in ``table`` now

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, i: int) -> pa.Table:
        """Pair ``i``'s rows, with their texts (waiting for them when they are streamed)."""
        a, b = int(self.starts[i]), int(self.starts[i + 1])
        if self.streamed is not None and not self._joined:
            whole = self.streamed.whole()
            if whole is None:
                return _with_texts(self.table.slice(a, b - a), self.streamed.rows(a, b))
            # every text decoded: joined to the table once, so each later pair is a slice (joining a pair's
            # columns costs ~60 us, ~10 s over a stream of 160,000 pairs)
            self.table, self._joined = _with_texts(self.table, whole), True
        return self.table.slice(a, b - a)

    def first(self, column: str) -> list:
        """The per-pair value of ``column`` (taken from each pair's first row)."""
        return _pylist(self.table[column].take(pa.array(self.starts[:-1])))

    def position(self) -> Dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def _with_texts(rows: pa.Table, texts: pa.Table) -> pa.Table:
    """``rows`` with ``texts``' columns, in the order of :data:`COLUMNS` (as an eager read has them)."""
    columns = {**{c: rows[c] for c in rows.column_names}, **{c: texts[c] for c in texts.column_names}}
    return pa.table({c: columns[c] for c in COLUMNS if c in columns}).replace_schema_metadata(rows.schema.metadata)


def group_by_patch(table: pa.Table, key: str, texts: Union[SortedTexts, StreamedTexts, None] = None) -> PatchIndex:
    """Sort once by (key, ID) and find the run boundaries on integer codes.

    A table that is sorted already (``read_selection(..., sort_by=key)``) is
    kept as it is (no copy); otherwise it is reordered, one copy of the table.
    ``texts``: the bulky columns still to be written or streamed in this
    table's order (``read_sorted_selection``, ``read_streamed_selection``),
    so the table must be sorted already.
    """
    def index(keys: List[str], starts: np.ndarray) -> PatchIndex:
        if isinstance(texts, StreamedTexts):
            return PatchIndex(table, keys, starts, streamed=texts)
        return PatchIndex(table, keys, starts, texts)

    if len(table) == 0:
        return index([], np.zeros(1, dtype=np.int64))
    codes = _codes(table[key])
    order = _sort_order(table[key], table["ID"], codes)
    if order is not None and texts is not None:
        raise RuntimeError("internal error: a table read with its texts deferred must come sorted by (key, ID)")
    if order is not None:
        table = pa.Table.from_arrays([_one_array(column).take(order) for column in table.columns], schema=table.schema)
        codes = None if codes is None else codes[order.to_numpy()]
    else:  # sorted already: no copy; only chunked dictionaries get one dictionary each (IPC files need that)
        for i, column in enumerate(table.columns):
            if column.num_chunks > 1 and pa.types.is_dictionary(column.type):
                table = table.set_column(i, table.field(i), pa.chunked_array([column.combine_chunks()]))
    col = _one_array(table[key])
    if codes is None:
        change = pc.not_equal(col.slice(1), col.slice(0, len(col) - 1))
        inner = pc.indices_nonzero(change).to_numpy() + 1
    else:
        inner = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate([[0], inner, [len(table)]]).astype(np.int64)
    return index(_pylist(col.take(pa.array(starts[:-1]))), starts)


def check_patch_pairs(index: PatchIndex, where: str) -> None:
    """Every row of an image pair must agree on the pair's columns (e.g. one ``s1_name`` per ``patch_id``)."""
    t = index.table
    if len(t) == 0:
        return
    check_coordinates(t, where)
    first_row = np.repeat(index.starts[:-1].astype(np.int32 if len(t) < 2**31 else np.int64), np.diff(index.starts))
    for column in PATCH_COLUMNS:
        values = _codes(t[column])
        if values is not None:
            hit = np.flatnonzero(values != values[first_row])
        else:  # nulls: compare with Arrow (a null never counts as a difference)
            first = t[column].take(pa.array(first_row))
            hit = pc.indices_nonzero(pc.invert(pc.equal(t[column], first))).to_numpy()
        if len(hit):
            r = int(hit[0])
            i = int(np.searchsorted(index.starts, r, side="right") - 1)
            raise AnnotationFileError(
                f"{where}: row ID {t['ID'][r].as_py()} gives {column}={t[column][r].as_py()!r} for image pair "
                f"{index.keys[i]}, but row ID {t['ID'][int(index.starts[i])].as_py()} gives "
                f"{t[column][int(index.starts[i])].as_py()!r}"
            )


#: the valid range of each coordinate column
COORDINATE_RANGES: Dict[str, Tuple[float, float]] = {"latitude": (-90.0, 90.0), "longitude": (-180.0, 180.0)}


def check_coordinates(table: pa.Table, where: str) -> None:
    """NaN, infinite or out-of-range coordinates are one error naming the row ID (the release has none).

    Checked before rows are compared per pair: a NaN is unequal to itself,
    and the pair check would report "latitude=nan, but ... gives nan".
    """
    for column, (low, high) in COORDINATE_RANGES.items():
        if column not in table.column_names:
            continue
        values = _one_array(table[column])
        ok = pc.and_kleene(pc.is_finite(values), pc.and_kleene(pc.greater_equal(values, low), pc.less_equal(values, high)))
        bad = pc.indices_nonzero(pc.invert(ok.fill_null(True)))
        if len(bad):
            r = int(bad[0].as_py())
            raise AnnotationFileError(
                f"{where}: row ID {table['ID'][r].as_py()} has {column}={values[r].as_py()}; coordinates must be finite "
                f"numbers, {column} from {low:g} to {high:g} ({len(bad)} row(s) break this)"
            )


def check_filter_values(requested: Mapping[str, Optional[Iterable[str]]], present: Mapping[str, List[str]]) -> None:
    """A filter value not in the data would silently select nothing: reject it and list the valid values."""
    for option, values in requested.items():
        if values is None:
            continue
        column = FILTER_COLUMNS[option]
        unknown = [v for v in values if v not in present[column]]
        if unknown:
            raise FilterValueError(
                f"{option}={list(values)}: {unknown} not found in column {column!r} of the annotations "
                f"(for the selected task types). Valid values: {present[column]}"
            )


def _all_distinct(chunks: Sequence[np.ndarray], low: int, size: int, n: int) -> bool:
    """True when the ``n`` integer IDs in ``chunks`` (all in ``low .. low + size - 1``) are distinct: one mark per ID."""
    mark = np.zeros(size, dtype=bool)
    for c in chunks:
        mark[(c if c.dtype == np.uint64 else c.astype(np.int64, copy=False)) - low] = True  # int8 differences could wrap
    return int(np.count_nonzero(mark)) == n


def _groups_with_rows(masks: List[np.ndarray]) -> List[int]:
    """The row groups holding a selected row."""
    return [i for i, keep in enumerate(masks) if keep.any()]


#: decoded bytes of row groups that one read may hold at once (:func:`decode_threads`)
_DECODE_BUDGET = 512 << 20
#: row groups decoded at once, at most (past this, memory bandwidth, not cores, bounds the decoding)
_MAX_DECODE_THREADS = 8
#: a container's CPU quota (``docker --cpus``): cgroup v2's "<quota|max> <period>" file, or v1's two files
_CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
_CGROUP_V1_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, or its cgroup's CPU quota if lower."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cpu_quota()
    return cores if quota is None else max(1, min(cores, int(quota)))


def _cpu_quota() -> Optional[float]:
    """Cores' worth of CPU time the cgroup allows, None when unlimited or unknown."""
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
        with open(_CGROUP_CPU_MAX) as v2:
            quota, period = v2.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
        quota_us, period_us = (_read_number(path) for path in _CGROUP_V1_QUOTA)
        return None if quota_us < 0 else quota_us / period_us
    return None


def _read_number(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def decode_threads(pf: pq.ParquetFile, columns: Sequence[str]) -> int:
    """Row groups of ``columns`` to decode at once: one per core, as many as fit :data:`_DECODE_BUDGET`, at least 2.

    pyarrow decodes whole column chunks (it cannot skip rows inside a row
    group; snappy decompression is about half of it): a bench stream start
    decodes ~2.4 GB of names and texts to keep 0.16 % of the rows, 4-6
    CPU-seconds at full scale, so its wall time is that over the cores used. Each thread holds
    one decoded row group, so the largest one (from the footer) bounds the
    count: ~70 MB of a ``datasets``-written file's names and texts, ~280 MB
    of pyarrow's 1 Mi-row groups.
    """
    fit = _DECODE_BUDGET // max(int(_row_group_bytes(pf, columns).max(initial=0)), 1)
    return max(2, min(usable_cores(), _MAX_DECODE_THREADS, fit))


def _map_row_groups(pf: Optional[pq.ParquetFile], groups: Sequence[int], read: Callable[[pq.ParquetFile, int], Any],
                    urlpath: Optional[str], download_config: Optional[DownloadConfig], threads: int,
                    read_dictionary: Optional[Sequence[str]] = None,
                    stopped: Callable[[], bool] = lambda: False) -> Iterator[Any]:
    """``read(handle, g)`` for each row group ``g`` of ``groups``, results in that order.

    The one way row groups are decoded on threads here. Without ``urlpath``
    (or with one thread, or one row group), one after the other on ``pf``.
    Otherwise ``threads`` at a time (Arrow releases the GIL while decoding),
    each thread with its own handle on ``urlpath``, opened like ``pf`` (the
    same columns read as dictionaries; ``read_dictionary`` when there is no
    ``pf``): a ``ParquetFile`` is not safe to read from two threads at once
    (its pre-buffered ranges are shared). At most ``threads + 1`` results
    wait for the caller, so decoded row groups never pile up. A failing row
    group raises when its turn comes, so the error is the one a serial read
    would raise first; row groups not started yet are then skipped, as they
    are once ``stopped()``.
    """
    if pf is not None:
        read_dictionary = [f.name for f in pf.schema_arrow if pa.types.is_dictionary(f.type)]
    if urlpath is None or threads < 2 or len(groups) < 2:
        own = None
        if pf is None:
            assert urlpath is not None, "a ParquetFile or its urlpath"
            own, pf = open_parquet(urlpath, download_config, read_dictionary=read_dictionary or None)
        try:
            for g in groups:
                if stopped():
                    return
                yield read(pf, g)
        finally:
            if own is not None:
                own.close()
        return
    local = threading.local()
    opened: list = []
    lock = threading.Lock()

    def run(g: int):
        if not hasattr(local, "pf"):
            local.f, local.pf = open_parquet(urlpath, download_config, read_dictionary=read_dictionary or None)
            with lock:
                opened.append(local.f)
        return read(local.pf, g)

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from _bounded_map(pool, run, groups, threads, stopped)
    finally:
        for handle in opened:
            handle.close()
