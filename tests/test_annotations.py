"""Unit tests of ``bentxt/text/annotations.py``: selection, grouping, and the parquet rules.

The faster ``read_selection`` / ``group_by_patch`` (dictionary codes, ``sort_by``) must
give exactly what a plain Arrow filter + sort gives, and every rule of the release file
(known type and split, no nulls, unique IDs, at least one row) holds for every row of
the file, with errors that name the file and the row ``ID``.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bentxt.text import annotations as ann
from make_fixtures import PARQUET_NAME, PARQUET_SCHEMA, SYNTHETIC_METADATA


# ----------------------------------------------------------------------------- the text side


def naive_index(path, selection, key):
    """The straightforward way: filter with Arrow, sort by (key, ID), cut at key changes."""
    table = pq.read_table(path).filter(selection.expression())
    table = table.take(pc.sort_indices(table, [(key, "ascending"), ("ID", "ascending")]))
    col = table[key].to_pylist()
    if not col:
        return table, [], [0]
    starts = [0] + [i for i in range(1, len(col)) if col[i] != col[i - 1]] + [len(col)]
    return table, [col[s] for s in starts[:-1]], starts


SELECTIONS = {
    "all": ann.Selection(),
    "vqa": ann.Selection(types=("binary", "mcq")),
    "bench captions": ann.Selection(types=("captioning",), splits=("bench",)),
    "filtered": ann.Selection(filters=(("country", ("Austria", "Finland", "Portugal")),)),
    "nothing": ann.Selection(splits=("nonexistent",)),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
@pytest.mark.parametrize("key", ["patch_id", "s1_name"])
@pytest.mark.parametrize("sort_by", [False, True])
def test_selection_and_grouping_match_a_plain_arrow_sort(fixture_data, name, key, sort_by, monkeypatch):
    monkeypatch.setattr(ann, "_SLICE_ROWS", 13)  # several chunks per bulky column, as at full scale
    selection = SELECTIONS[name]
    table = ann.read_selection(str(fixture_data.parquet), selection, sort_by=key if sort_by else None)
    index = ann.group_by_patch(table, key)
    expected, keys, starts = naive_index(str(fixture_data.parquet), selection, key)
    assert index.keys == keys and index.starts.tolist() == starts
    assert index.table.column_names == list(ann.COLUMNS)
    assert index.table.to_pylist() == expected.to_pylist()
    for column in ann.DICTIONARY_COLUMNS:
        if len(index.table):
            assert pa.types.is_dictionary(index.table[column].type)
    ann.check_patch_pairs(index, "x")


@pytest.mark.parametrize("slice_rows", [1, 7, 50, 1 << 20])
def test_bulky_columns_are_read_straight_into_sorted_order(fixture_data, slice_rows):
    path = str(fixture_data.parquet)
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups > 1
    selection = SELECTIONS["vqa"]
    masks = [selection.mask(pf.read_row_group(g, columns=["type", "split"])) for g in range(pf.num_row_groups)]
    selected = pq.read_table(path, columns=["input"]).filter(pa.array(np.concatenate(masks)))["input"]
    source = np.random.default_rng(slice_rows).permutation(len(selected))
    got = ann._read_in_order(path, None, "input", masks, source, slice_rows=slice_rows)
    assert got.to_pylist() == selected.take(pa.array(source)).to_pylist()
    got.validate(full=True)


def test_sorted_selection_writes_to_an_ipc_file_like_the_cache(fixture_data, tmp_path, monkeypatch):
    """The grouped table goes to an Arrow IPC file as it is (``join.plan_cache``): one dictionary per column."""
    monkeypatch.setattr(ann, "_SLICE_ROWS", 13)
    table = ann.read_selection(str(fixture_data.parquet), ann.Selection(), sort_by="patch_id")
    assert table["input"].num_chunks == 1  # assembled from 13-row slices
    index = ann.group_by_patch(table, "patch_id")
    assert index.table["input"].chunk(0).buffers() == table["input"].chunk(0).buffers()  # grouping a sorted table copies nothing
    path = tmp_path / "texts.arrow"
    half = index.table.filter(pa.array(np.arange(len(index.table)) % 2 == 0))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, half.schema) as writer:
        writer.write_table(half)
    with pa.memory_map(str(path)) as source:
        back = pa.ipc.open_file(source).read_all()
    assert back.to_pylist() == half.to_pylist()


def test_grouping_plain_and_nullable_tables_like_before():
    """Tables built elsewhere (plain strings, nulls, repeated IDs) group exactly as a stable Arrow sort does."""
    rng = np.random.default_rng(0)
    keys = rng.choice(["b", "a", "c", None, "aa"], 200).tolist()
    ids = rng.integers(0, 20, 200).tolist()
    table = pa.table({"patch_id": keys, "ID": ids, "x": list(range(200))})
    index = ann.group_by_patch(table, "patch_id")
    expected = table.take(pc.sort_indices(table, [("patch_id", "ascending"), ("ID", "ascending")]))
    assert index.table.to_pylist() == expected.to_pylist()
    no_nulls = table.filter(pc.is_valid(table["patch_id"]))
    index = ann.group_by_patch(no_nulls, "patch_id")
    expected = no_nulls.take(pc.sort_indices(no_nulls, [("patch_id", "ascending"), ("ID", "ascending")]))
    assert index.table.to_pylist() == expected.to_pylist()
    assert index.keys == sorted(set(k for k in keys if k is not None))


def test_sorted_dictionary_orders_and_merges_values():
    array = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 0, None], pa.int32()), pa.array(["z", "a", "z"]))
    encoded = ann.sorted_dictionary(array)
    assert encoded.dictionary.to_pylist() == ["a", "z"] and encoded.to_pylist() == ["z", "a", "z", "z", None]
    assert encoded.indices.type == pa.int8()
    many = ann.sorted_dictionary(pa.array([f"{i:06d}" for i in range(40_000, 0, -1)]))
    assert many.indices.type == pa.int32() and many.indices[0].as_py() == 39_999


def test_patch_pair_errors_still_name_the_rows(fixture_data):
    t = fixture_data.table
    bad = t.set_column(t.schema.get_field_index("country"), "country",
                       pc.if_else(pc.equal(t["ID"], t["ID"][5]), pa.scalar("Atlantis"), t["country"]))
    index = ann.group_by_patch(bad, "patch_id")
    with pytest.raises(ann.AnnotationFileError, match=r"row ID \d+ gives country='[A-Za-z]+' for image pair S2"):
        ann.check_patch_pairs(index, "x")


# ----------------------------------------------------------------------------- the parquet rules are total (issue 10, item 7)

#: a real row of the fixture (binary / area, split "test", the real patch's 18 rows)
ROW = 27522

#: ways of reading: the whole file in file order or sorted, and selections that do not contain ROW
READS = {
    "all, file order": dict(selection=ann.Selection()),
    "all, sorted": dict(selection=ann.Selection(), sort_by="patch_id"),
    "test split only": dict(selection=ann.Selection(splits=("test",)), sort_by="s1_name"),
    "other rows only": dict(selection=ann.Selection(types=("captioning",), splits=("train",)), sort_by="patch_id"),
    "few columns": dict(selection=ann.Selection(types=("mcq",)), columns=["ID", "patch_id", "split"]),
}


def write(tmp_path: Path, table: pa.Table, **kwargs) -> str:
    """``table`` as a release-named parquet with small row groups (as the fixture writes it)."""
    kwargs.setdefault("row_group_size", 16)
    path = tmp_path / PARQUET_NAME
    pq.write_table(table.cast(PARQUET_SCHEMA).replace_schema_metadata(SYNTHETIC_METADATA), path, **kwargs)
    return str(path)


def set_row(table: pa.Table, row_id: int, **values) -> pa.Table:
    """``table`` with the given columns of row ``row_id`` replaced (None: null)."""
    hit = pc.equal(table["ID"], row_id)
    for column, value in values.items():
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.field(i), pc.if_else(hit, pa.scalar(value, table.field(i).type), table[column]))
    return table


def only_id(table: pa.Table, row_id: int) -> pa.Table:
    return table.filter(pc.equal(table["ID"], row_id))


def chain(excinfo) -> str:
    """``datasets`` may wrap errors raised while preparing: the message that matters is in the chain."""
    messages, err = [], excinfo.value
    while err is not None:
        messages.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(messages)


FILE = re.escape(PARQUET_NAME)


@pytest.mark.parametrize("value", ["Test", "bench ", "", None])
@pytest.mark.parametrize("read", list(READS))
def test_unknown_or_null_split_is_an_error_naming_the_id(fixture_data, tmp_path, value, read):
    """Checked for every row before filtering, like ``type``: not silently dropped when filtering by split."""
    path = write(tmp_path, set_row(fixture_data.table, ROW, split=value))
    valid = re.escape(str(list(ann.SPLITS)))
    with pytest.raises(ann.AnnotationFileError,
                       match=rf"{FILE}: row ID {ROW} has (a null 'split'|unknown split .*); valid splits are {valid}"):
        ann.read_selection(path, **READS[read])


@pytest.mark.parametrize("column", [c for c in ann.COLUMNS if c != "ID"])
@pytest.mark.parametrize("read", ["all, file order", "all, sorted", "other rows only", "few columns"])
def test_null_fields_are_errors_naming_the_id_and_column(fixture_data, tmp_path, column, read):
    """Every row, every column: the columns read are checked as read; the others by the row groups' null counts."""
    path = write(tmp_path, set_row(fixture_data.table, ROW, **{column: None}))
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE}: row ID {ROW} has a null {column!r}"):
        ann.read_selection(path, **READS[read])


@pytest.mark.parametrize("column", ["input", "output"])
@pytest.mark.parametrize("sort_by", [None, "patch_id"])
def test_null_text_in_a_selected_row_is_an_error_without_parquet_statistics(fixture_data, tmp_path, column, sort_by, monkeypatch):
    """Without null counts in the footer, the bulky columns are checked while they are read (selected rows)."""
    monkeypatch.setattr(ann, "_SLICE_ROWS", 13)
    path = write(tmp_path, set_row(fixture_data.table, ROW, **{column: None}), write_statistics=False)
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE}: row ID {ROW} has a null {column!r}"):
        ann.read_selection(path, ann.Selection(types=("binary",)), sort_by=sort_by)


def test_null_id_is_an_error_naming_the_file_row(fixture_data, tmp_path):
    t = fixture_data.table
    ids = pa.array([None if i == 20 else v for i, v in enumerate(t["ID"].to_pylist())], pa.int64())
    path = write(tmp_path, t.set_column(0, "ID", ids))
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE}: row 20 of the file has a null 'ID'"):
        ann.read_selection(path, ann.Selection())


@pytest.mark.parametrize("read", list(READS))
def test_identical_duplicate_rows_are_dropped_with_a_logged_count(fixture_data, tmp_path, read, caplog):
    t = fixture_data.table
    copies = t.take([0, 0, 50, 100])  # one row three times, two rows twice; in later row groups than the originals
    (tmp_path / "clean").mkdir()
    (tmp_path / "dup").mkdir()
    clean = write(tmp_path / "clean", t)
    doubled = write(tmp_path / "dup", pa.concat_tables([t, copies]))
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        got = ann.read_selection(doubled, **READS[read])
    assert got.to_pylist() == ann.read_selection(clean, **READS[read]).to_pylist()
    assert re.search(rf"{FILE}: dropped 4 row\(s\) that repeat an earlier row exactly", caplog.text), caplog.text


@pytest.mark.parametrize("change", [{"output": "yes"}, {"input": "Is there any water?"}, {"split": "train"}, {"latitude": 0.5}])
@pytest.mark.parametrize("read", ["all, sorted", "other rows only", "few columns"])
def test_conflicting_duplicate_ids_are_an_error_naming_the_id(fixture_data, tmp_path, change, read):
    """Also when the differing column is not read, or the rows are not selected."""
    t = fixture_data.table
    path = write(tmp_path, pa.concat_tables([t, set_row(only_id(t, ROW), ROW, **change)]))
    (column,) = change
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE}: ID {ROW} occurs in 2 rows that differ in {column!r}"):
        ann.read_selection(path, **READS[read])


def test_empty_parquet_is_an_error_naming_the_file(fixture_data, tmp_path):
    path = write(tmp_path, fixture_data.table.slice(0, 0))
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE} has no rows"):
        ann.read_selection(path, ann.Selection())
    with pytest.raises(ann.AnnotationFileError, match=rf"{FILE} has no rows"):
        ann.distinct_values(path, ["country"], ann.TYPES)


@pytest.mark.parametrize(
    "case,expected",
    [
        ("empty", rf"{FILE} has no rows"),
        ("split Test", rf"row ID {ROW} has unknown split 'Test'"),
        ("null input", rf"row ID {ROW} has a null 'input'"),
        ("conflicting duplicate", rf"ID {ROW} occurs in 2 rows that differ in 'output'"),
        ("null country, filtered by country", rf"row ID {ROW} has a null 'country'"),
    ],
)
def test_builder_reports_bad_parquet_rows(fixture_data, tmp_path, case, expected):
    """The symptoms of issue 10 through the builder: empty DatasetDict, silently dropped row, bare TypeError."""
    import bigearthnet_txt as bt

    data = tmp_path / "data"
    data.mkdir()
    for archive in (fixture_data.s1_archive, fixture_data.s2_archive):
        shutil.copy(archive, data / Path(archive).name)
    t = fixture_data.table
    bad = {
        "empty": lambda: t.slice(0, 0),
        "split Test": lambda: set_row(t, ROW, split="Test"),
        "null input": lambda: set_row(t, ROW, input=None),
        "conflicting duplicate": lambda: pa.concat_tables([t, set_row(only_id(t, ROW), ROW, output="yes")]),
        "null country, filtered by country": lambda: set_row(t, ROW, country=None),
    }[case]()
    write(data, bad, row_group_size=40)
    options = {"countries": [t["country"][0].as_py()]} if "filtered" in case else {}
    builder = bt.BigEarthNetTxt(config_name="s2-all-test", data_dir=str(data), cache_dir=str(tmp_path / "cache"),
                                **options)
    with pytest.raises(Exception) as excinfo:
        builder.download_and_prepare()
    assert re.search(expected, chain(excinfo)), chain(excinfo)


def test_rules_read_no_extra_columns_from_a_good_file(fixture_data, row_group_reads):
    """On a good file the checks use what the selection reads anyway: no row group is decoded twice."""
    calls = row_group_reads
    ann.read_selection(str(fixture_data.parquet), ann.Selection(), sort_by="patch_id")
    groups = pq.ParquetFile(fixture_data.parquet).num_row_groups
    ruled = ("ID", "category", "split", "type")  # every row: the rules' columns; then the others, each once
    rest = tuple(sorted(set(ann.COLUMNS) - set(ruled) - {"input", "output"}))
    for g in range(groups):
        reads = sorted(columns for i, columns in calls if i == g)
        assert reads == sorted([ruled, rest, ("input",), ("output",)]), reads
    calls.clear()  # preparing: texts left in the file, not decoded while selecting; the S1 name read twice, not hashed
    ann.read_sorted_selection(str(fixture_data.parquet), ann.Selection(), "patch_id")
    others = tuple(c for c in rest if c not in ("patch_id", "s1_name"))
    for g in range(groups):
        assert sorted(columns for i, columns in calls if i == g) == sorted(
            [ruled, ("patch_id",), ("s1_name",), ("s1_name",), others])


def test_duplicate_id_check_on_one_column_only_names_repeated_ids():
    chunks = [np.array([5, 3, 9]), np.array([], dtype=np.int64), np.array([3, 7, 9, 9])]
    assert ann.duplicate_ids(chunks).tolist() == [3, 9]
    assert ann.duplicate_ids([np.arange(10)]).tolist() == []
    assert ann.duplicate_ids([]).tolist() == []


@pytest.mark.parametrize("order", ["shuffled", "sorted", "reversed"])
def test_duplicate_id_check_is_cheap_at_full_scale(order):
    """9,553,962 int64 IDs in row-group-sized chunks, as the reader collects them: < 2 s (measured ~0.1-0.4 s)."""
    n = 9_553_962
    ids = np.arange(27_000, 27_000 + n, dtype=np.int64)
    if order == "shuffled":
        ids = np.random.default_rng(0).permutation(ids)
    elif order == "reversed":
        ids = ids[::-1].copy()
    chunks = np.array_split(ids, 74)  # ~129k rows a row group
    t = time.perf_counter()
    found = ann.duplicate_ids(chunks)
    elapsed = time.perf_counter() - t
    print(f"duplicate-ID check, {n:,} {order} IDs: {elapsed:.3f} s")
    assert len(found) == 0
    assert elapsed < 2.0
    chunks[40] = chunks[40].copy()
    chunks[40][7] = chunks[3][100]
    assert ann.duplicate_ids(chunks).tolist() == [int(chunks[3][100])]


# ----------------------------------------------------------------------------- issue 20: coordinates, whole names, empty splits

REAL_PATCH = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39"


def pair_rows(table: pa.Table, patch_id: str) -> pa.Array:
    return pc.equal(table["patch_id"], patch_id)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 91.0])
def test_non_finite_or_out_of_range_coordinates_are_one_clear_error(fixture_data, value):
    """All rows of a pair at NaN used to read "row ID 27519 gives latitude=nan ..., but row ID 27519 gives nan"."""
    t = fixture_data.table
    i = t.schema.get_field_index("latitude")
    bad = t.set_column(i, t.field(i), pc.if_else(pair_rows(t, REAL_PATCH), pa.scalar(value, pa.float64()), t["latitude"]))
    index = ann.group_by_patch(bad, "patch_id")
    with pytest.raises(ann.AnnotationFileError) as excinfo:
        ann.check_patch_pairs(index, "BigEarthNet.txt.parquet")
    message = str(excinfo.value)
    assert re.fullmatch(rf"BigEarthNet\.txt\.parquet: row ID 275\d\d has latitude={value}; coordinates must be finite "
                        r"numbers, latitude from -90 to 90 \(18 row\(s\) break this\)", message), message
    assert "but row ID" not in message


@pytest.mark.parametrize("column,value", [
    ("patch_id", "junk" + REAL_PATCH),
    ("patch_id", "../" + REAL_PATCH),
    ("patch_id", REAL_PATCH + "\n"),
    ("s1_name", "x/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"),
])
def test_names_must_be_whole_release_names(fixture_data, tmp_path, column, value):
    """Junk before a valid name passed the parquet check, then failed (folders) or went "missing" (archives, LMDB)."""
    t = fixture_data.table
    old = REAL_PATCH if column == "patch_id" else "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"
    i = t.schema.get_field_index(column)
    bad = t.set_column(i, t.field(i), pc.if_else(pc.equal(t[column], old), pa.scalar(value), t[column]))
    index = ann.group_by_patch(bad, "patch_id")
    firsts = index.table.select(["ID", "patch_id", "s1_name"]).take(pa.array(index.starts[:-1]))
    with pytest.raises(ann.AnnotationFileError, match=rf"^f\.parquet: row ID 275\d\d: {column} {re.escape(repr(value))} "
                                                      r"is not a Sentinel-[12] patch name \(the whole value must be one"):
        ann.check_pair_names(firsts, "f.parquet")
