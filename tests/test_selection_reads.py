"""What ``read_selection`` reads: the rules' columns of every row, the others only where a selected row is.

Both ways of reading the other columns (one pass for a sparse selection,
bulky columns placed in sorted order for a large one) give the same table,
equal to filtering the whole file; a file sorted by split lets a bench
selection skip the other row groups' names and texts entirely.
"""

from __future__ import annotations

import os
import signal
import threading
import types

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bentxt.text import annotations as ann

SELECTIONS = {
    "all": ann.Selection(),
    "bench": ann.Selection(splits=("bench",)),
    "vqa-test": ann.Selection(types=("binary", "mcq"), splits=("test",)),
    "captions-austria": ann.Selection(types=("captioning",), filters=(("country", ("Austria",)),)),
}


def plain(table: pa.Table) -> pa.Table:
    return pa.table({c: ann._decoded(ann._one_array(table[c])) for c in table.column_names})


@pytest.mark.parametrize("name", list(SELECTIONS))
@pytest.mark.parametrize("sort_by", [None, "patch_id", "s1_name"])
def test_sparse_and_dense_reads_give_the_same_table(fixture_data, monkeypatch, name, sort_by):
    selection = SELECTIONS[name]
    tables = []
    for share in (0.0, 1.0):  # 0: every selection read as a large one; 1: every one as a sparse one
        monkeypatch.setattr(ann, "SPARSE_SHARE", share)
        tables.append(ann.read_selection(str(fixture_data.parquet), selection, sort_by=sort_by))
    dense, sparse = tables
    assert dense.schema == sparse.schema and dense.num_rows == sparse.num_rows > 0
    assert plain(dense).equals(plain(sparse))
    # and both equal the whole file filtered (then sorted by (key, ID) like group_by_patch)
    whole = pq.read_table(fixture_data.parquet)
    expected = whole.filter(pa.array(selection.mask(whole)))
    if sort_by is not None:
        expected = expected.sort_by([(sort_by, "ascending"), ("ID", "ascending")])
    assert plain(dense).equals(expected.select(dense.column_names))


def test_a_file_sorted_by_split_reads_names_and_texts_of_the_bench_row_groups_only(fixture_data, tmp_path, row_group_reads):
    whole = pq.read_table(fixture_data.parquet)
    order = pc.sort_indices(whole, [("split", "ascending"), ("ID", "ascending")])
    path = tmp_path / "by_split.parquet"
    pq.write_table(whole.take(order), path, row_group_size=16)
    meta = pq.ParquetFile(path).metadata
    split_of = pq.read_table(path, columns=["split"])["split"].to_numpy(zero_copy_only=False)
    bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    with_bench = {g for g in range(meta.num_row_groups) if (split_of[bounds[g]:bounds[g + 1]] == "bench").any()}
    assert 0 < len(with_bench) < meta.num_row_groups
    calls = row_group_reads
    table = ann.read_selection(str(path), SELECTIONS["bench"], sort_by="patch_id")
    ruled = ("ID", "category", "split", "type")
    assert {i for i, columns in calls if columns == ruled} == set(range(meta.num_row_groups))  # the rules: every row
    assert {i for i, columns in calls if columns != ruled} == with_bench
    assert "input" in {c for _, columns in calls for c in columns}  # one pass: texts read with the names
    assert table.num_rows == int((split_of == "bench").sum())


def test_duplicate_ids_counted_or_sorted_agree():
    rng = np.random.default_rng(1)
    dense = rng.permutation(np.arange(1, 5001))
    dense[[3, 40, 41]] = dense[[7, 7, 900]]
    spread = dense * 10**6  # beyond the dense range: the sorted way
    for ids in (dense, spread):
        chunks = np.array_split(ids, 7)
        expected = np.unique(ids[np.unique(ids, return_counts=True)[1][np.searchsorted(np.unique(ids), ids)] > 1])
        found = ann.duplicate_ids(chunks)
        assert found.dtype == np.int64 and found.tolist() == expected.tolist() and len(found) == 2
    assert ann.duplicate_ids([np.array([], dtype=np.int64)]).tolist() == []


def test_the_radix_sort_of_pair_codes_and_ids_is_numpys_stable_argsort():
    rng = np.random.default_rng(2)
    for n, codes_high, ids_high in ((50_000, 3_000, 10**6), (1_000, 5, 40), (7, 1, 3)):
        codes = rng.integers(0, codes_high, n)
        ids = rng.integers(0, ids_high, n)  # repeated (code, ID) keys too: the order must be stable
        keys = (codes << int(ids_high).bit_length()) | ids
        found = ann._radix_argsort(keys, int(codes_high).bit_length() + int(ids_high).bit_length())
        assert found.tolist() == np.argsort(keys, kind="stable").tolist()
    order = ann._sort_order(pa.array(["b", "a", "b", "a"]).dictionary_encode(), pa.array([4, 9, 1, 2]))
    assert order.to_pylist() == [3, 1, 2, 0]


def test_duplicate_ids_marked_first_give_the_counted_answer():
    """No repeat: decided by the marks alone; a repeat (anywhere, any integer type) gives the exact IDs, ascending."""
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(7, 3007, dtype=np.int64))
    chunks = [ids[:0], *np.array_split(ids, 5), ids[:0]]  # empty chunks too
    assert ann.duplicate_ids(chunks).dtype == np.int64 and ann.duplicate_ids(chunks).tolist() == []
    assert ann.duplicate_ids(ids).tolist() == []
    repeated = ids.copy()
    repeated[[10, 2000]] = repeated[[2999, 5]]  # one repeat in the same chunk as its first, one across chunks
    expected = sorted({int(repeated[2999]), int(repeated[5])})
    assert ann.duplicate_ids(np.array_split(repeated, 5)).tolist() == expected
    assert ann.duplicate_ids(repeated).tolist() == expected
    # as many marks as IDs needs distinct IDs: a missing ID beside a repeated one is still a repeat
    gap = np.array([5, 6, 6, 8], dtype=np.int64)
    assert ann.duplicate_ids([gap[:2], gap[2:]]).tolist() == [6]
    # narrow and unsigned types: the differences to the lowest ID do not wrap
    assert ann.duplicate_ids([np.array([-100, 100, 27], dtype=np.int8), np.array([27], dtype=np.int8)]).tolist() == [27]
    assert ann.duplicate_ids([np.array([-100, 100, 27], dtype=np.int8)]).tolist() == []
    top = np.array([2**40 + 1, 2**40 + 3, 2**40 + 2], dtype=np.uint64)
    assert ann.duplicate_ids([top]).tolist() == []
    assert ann.duplicate_ids([top, top[:1]]).tolist() == [2**40 + 1]
    assert ann.duplicate_ids([top.astype(np.uint16) - np.uint16(2**16 - 5), top.astype(np.uint16)]).tolist() == []


@pytest.fixture()
def many_groups(fixture_data, tmp_path):
    """The fixture with 16-row groups, and masks keeping some rows of some groups (one group entirely)."""
    path = tmp_path / "groups.parquet"
    pq.write_table(pq.read_table(fixture_data.parquet), path, row_group_size=16)
    meta = pq.ParquetFile(path).metadata
    rng = np.random.default_rng(4)
    masks = [rng.random(meta.row_group(g).num_rows) < 0.3 for g in range(meta.num_row_groups)]
    masks[1][:] = False
    masks[2][:] = True
    assert meta.num_row_groups > 4
    return path, masks


def test_row_groups_read_on_threads_equal_the_serial_read(many_groups, monkeypatch):
    path, masks = many_groups
    f, pf = ann.open_parquet(str(path), read_dictionary=ann._FEW_VALUES)
    columns = ["patch_id", "country", "latitude", "input"]
    whole = pq.read_table(path, columns=columns, read_dictionary=ann._FEW_VALUES)
    expected = whole.filter(pa.array(np.concatenate(masks)))
    opened = []
    original = ann.open_parquet
    monkeypatch.setattr(ann, "open_parquet", lambda *a, **k: opened.append(k) or original(*a, **k))
    monkeypatch.setattr(ann, "usable_cores", lambda: 2)
    with f:
        serial = ann._read_selected(pf, columns, masks, "x")
        assert not opened
        threaded = ann._read_selected(pf, columns, masks, "x", urlpath=str(path))
        assert 1 <= len(opened) <= 2  # one handle per thread, opened like pf (dictionary columns as dictionaries)
        chunks = ann._read_selected_chunks(pf, "output", masks, "x", urlpath=str(path), threads=3)
        assert 2 <= len(opened) <= 5
    assert all(sorted(k["read_dictionary"]) == sorted(ann._FEW_VALUES) for k in opened)
    for c in columns:
        assert serial[c].type == threaded[c].type == expected[c].type
        assert serial[c].equals(ann._one_array(expected[c])) and threaded[c].equals(serial[c])
    assert len(chunks) == sum(1 for m in masks if m.any())
    assert pa.concat_arrays(chunks).equals(ann._one_array(pq.read_table(path, columns=["output"])["output"].filter(
        pa.array(np.concatenate(masks)))))


def test_row_groups_decoded_at_once_follow_the_cores_and_the_footer_sizes(many_groups, monkeypatch):
    path, masks = many_groups
    f, pf = ann.open_parquet(str(path), read_dictionary=ann._FEW_VALUES)
    columns = ["patch_id", "input"]
    largest = max(sum(pf.metadata.row_group(g).column(pf.schema_arrow.get_field_index(c)).total_uncompressed_size
                      for c in columns) for g in range(pf.num_row_groups))
    for cores, budget, expected in ((6, 1 << 30, 6), (32, 1 << 30, 8), (1, 1 << 30, 2), (6, 3 * largest + 1, 3),
                                    (6, largest - 1, 2)):
        monkeypatch.setattr(ann, "usable_cores", lambda: cores)
        monkeypatch.setattr(ann, "_DECODE_BUDGET", budget)
        assert ann.decode_threads(pf, columns) == expected, (cores, budget)
    # six at once: six handles at most, the same rows in the same order as one after the other
    monkeypatch.setattr(ann, "usable_cores", lambda: 6)
    monkeypatch.setattr(ann, "_DECODE_BUDGET", 1 << 30)
    opened, asked = [], []
    original, original_map = ann.open_parquet, ann._map_row_groups
    monkeypatch.setattr(ann, "open_parquet", lambda *a, **k: opened.append(k) or original(*a, **k))
    monkeypatch.setattr(ann, "_map_row_groups", lambda *a: asked.append(a[5]) or original_map(*a))
    with f:
        serial = ann._read_selected(pf, columns, masks, "x")
        threaded = ann._read_selected(pf, columns, masks, "x", urlpath=str(path))
    assert asked == [6, 6] and 1 <= len(opened) <= 6
    assert all(threaded[c].equals(serial[c]) for c in columns)
    # a bench selection (read as a sparse one): its first pass and its one read of the other columns, six at once
    monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)
    asked.clear()
    bench = ann.read_selection(str(path), SELECTIONS["bench"])
    assert asked == [6, 6]
    monkeypatch.setattr(ann, "usable_cores", lambda: 2)
    assert plain(bench).equals(plain(ann.read_selection(str(path), SELECTIONS["bench"]))) and bench.num_rows > 0
    assert asked[2:] == [2, 2]


@pytest.mark.parametrize("merge_every", [1, 3, 100])
def test_distinct_values_merged_every_few_row_groups_equal_the_whole_file(many_groups, monkeypatch, merge_every):
    path, _ = many_groups
    monkeypatch.setattr(ann, "_DISTINCT_MERGE_EVERY", merge_every)
    whole = pq.read_table(path)
    for name in ("vqa-test", "captions-austria", "all"):
        selection = SELECTIONS[name]
        chosen = whole.filter(pa.array(selection.mask(whole)))
        got = ann.selected_names(str(path), selection, ["patch_id", "s1_name", "split"])
        assert got == {c: sorted(set(chosen[c].to_pylist())) for c in ("patch_id", "s1_name", "split")}, name
        assert len(got["patch_id"]) > 1
    assert ann.splits_present(str(path), ann.Selection(splits=("bench", "test"))) == ["bench", "test"]
    captions = set(whole.filter(pc.equal(whole["type"], "captioning"))["country"].to_pylist())
    assert ann.distinct_values(str(path), ["country"], ("captioning",)) == {"country": sorted(captions)}


def test_the_splits_present_of_a_one_split_selection_read_nothing(fixture_data, tmp_path, monkeypatch):
    whole = pq.read_table(fixture_data.parquet)
    no_bench = tmp_path / "no_bench.parquet"
    pq.write_table(whole.filter(pc.not_equal(whole["split"], "bench")), no_bench)
    # several splits: the ones with rows, in the selection's order
    assert ann.splits_present(str(no_bench), ann.Selection(splits=("bench", "test", "train"))) == ["test", "train"]
    monkeypatch.setattr(ann, "open_parquet", lambda *a, **k: pytest.fail("a one-split selection opened the parquet"))
    # one split: kept without reading (iterating it says which option emptied it, see test_builder)
    assert ann.splits_present(str(no_bench), ann.Selection(splits=("bench",))) == ["bench"]


def test_usable_cores_follow_a_cgroup_quota(tmp_path, monkeypatch):
    v2, v1_quota, v1_period = tmp_path / "cpu.max", tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us"
    monkeypatch.setattr(ann, "_CGROUP_CPU_MAX", str(v2))
    monkeypatch.setattr(ann, "_CGROUP_V1_QUOTA", (str(v1_quota), str(v1_period)))
    monkeypatch.setattr(ann.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)  # not on macOS
    assert ann.usable_cores() == 16  # no cgroup files: the affinity
    v1_period.write_text("100000\n")
    for text, cores in (("-1\n", 16), ("400000\n", 4), ("20000\n", 1), ("9900000\n", 16)):  # cgroup v1
        v1_quota.write_text(text)
        assert ann.usable_cores() == cores, text
    for text, cores in (("max 100000\n", 16), ("300000 100000\n", 3), ("50000 100000\n", 1)):  # v2 wins over v1
        v2.write_text(text)
        assert ann.usable_cores() == cores, text
    v2.write_text("garbage")  # unreadable v2: v1's quota, still 9.9 cores' worth
    assert ann.usable_cores() == 16


def test_a_cgroup_file_with_a_zero_period_is_an_unknown_quota(tmp_path, monkeypatch):
    v2, v1_quota, v1_period = tmp_path / "cpu.max", tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us"
    monkeypatch.setattr(ann, "_CGROUP_CPU_MAX", str(v2))
    monkeypatch.setattr(ann, "_CGROUP_V1_QUOTA", (str(v1_quota), str(v1_period)))
    monkeypatch.setattr(ann.os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    v1_quota.write_text("200000\n")
    v1_period.write_text("0\n")
    assert ann.usable_cores() == 6
    v2.write_text("200000 0\n")
    assert ann.usable_cores() == 6
    monkeypatch.delattr(ann.os, "sched_getaffinity")  # macOS, Windows: the CPU count
    monkeypatch.setattr(ann.os, "cpu_count", lambda: 3)
    assert ann.usable_cores() == 3


def test_column_sizes_come_from_the_parquet_leaf_column_of_that_name(fixture_data, tmp_path):
    """A nested column before the release's columns holds several Parquet columns: Arrow's field index is not one."""
    whole = pq.read_table(fixture_data.parquet)
    extra = pa.array([{"a": "x" * 200, "b": 1}] * whole.num_rows)
    path = tmp_path / "nested_first.parquet"
    pq.write_table(whole.add_column(0, "extra", extra), path, row_group_size=40, use_dictionary=False)
    f, pf = ann.open_parquet(str(path), read_dictionary=ann._FEW_VALUES)
    with f:
        meta = pf.metadata
        leaves = [meta.schema.column(j).path for j in range(meta.num_columns)]
        for c in ("ID", "patch_id", "input", "climate_zone"):
            expected = [meta.row_group(g).column(leaves.index(c)).total_uncompressed_size
                        for g in range(meta.num_row_groups)]
            assert ann._column_bytes(pf, c).tolist() == expected, c


def test_distinct_values_of_many_small_row_groups_are_hashed_a_bounded_number_of_times(fixture_data, tmp_path,
                                                                                      monkeypatch):
    """Merging every few row groups re-hashed all values found so far: quadratic in the row groups."""
    whole = pq.read_table(fixture_data.parquet)
    tiled = pa.concat_tables([whole] * 12)
    names = pa.array([f"P{i:05d}" for i in range(tiled.num_rows)])  # every row its own name
    tiled = tiled.set_column(tiled.schema.get_field_index("patch_id"), "patch_id", names)
    tiled = tiled.set_column(tiled.schema.get_field_index("ID"), "ID", pa.array(np.arange(tiled.num_rows)))
    path = tmp_path / "small_groups.parquet"
    pq.write_table(tiled, path, row_group_size=8)
    assert pq.ParquetFile(path).metadata.num_row_groups > 100
    hashed = []
    unique = pc.unique
    monkeypatch.setattr(pc, "unique", lambda values: hashed.append(len(values)) or unique(values))
    got = ann.selected_names(str(path), ann.Selection(), ["patch_id"])
    assert got == {"patch_id": sorted(names.to_pylist())}
    assert sum(hashed) <= 4 * tiled.num_rows, (sum(hashed), tiled.num_rows)


def test_a_null_found_on_threads_names_the_first_row_as_the_serial_read_does(many_groups, tmp_path):
    """Without footer null counts, the row groups are checked as decoded; the error is the first in file order."""
    path, masks = many_groups
    table = pq.read_table(path)
    bounds = np.cumsum([0] + [len(m) for m in masks])
    late, early = int(bounds[5]) + 1, int(bounds[3]) + 2  # a null in group 5 and one in group 3
    masks[3][2] = masks[5][1] = True
    patch = table["patch_id"].to_pylist()
    patch[late] = patch[early] = None
    bad = tmp_path / "nulls.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("patch_id"), "patch_id", pa.array(patch, pa.string())),
                   bad, row_group_size=16, write_statistics=False)
    row = table["ID"][early].as_py()
    f, pf = ann.open_parquet(str(bad), read_dictionary=ann._FEW_VALUES)
    with f:
        for urlpath in (None, str(bad)):
            with pytest.raises(ann.AnnotationFileError, match=rf"^x: row ID {row} has a null 'patch_id'; the release"):
                ann._read_selected(pf, ["s1_name", "patch_id"], masks, "x", urlpath=urlpath)
            with pytest.raises(ann.AnnotationFileError, match=rf"^x: row ID {row} has a null 'patch_id'; the release"):
                ann._read_selected_chunks(pf, "patch_id", masks, "x", urlpath=urlpath)


@pytest.mark.parametrize("key,other", [("patch_id", "s1_name"), ("s1_name", "patch_id")])
@pytest.mark.parametrize("threads", [1, 2])
def test_pair_names_hashed_once_equal_the_plain_names(many_groups, row_group_reads, key, other, threads):
    """The key is hashed once; the other name takes the key's codes: same values, a sorted dictionary each."""
    path, masks = many_groups
    f, pf = ann.open_parquet(str(path), read_dictionary=ann._FEW_VALUES)
    with f:
        got = ann._read_pair_names(pf, key, [other], masks, "x", urlpath=str(path), threads=threads)
    plain_names = pq.read_table(path, columns=[key, other]).filter(pa.array(np.concatenate(masks)))
    for column in (key, other):
        assert pa.types.is_dictionary(got[column].type) and ann._is_normalized(got[column].dictionary)
        assert got[column].to_pylist() == plain_names[column].to_pylist()
    # the other name is never hashed: one value per pair, its codes a renumbering of the key's
    pairs = set(zip(got[key].indices.to_pylist(), got[other].indices.to_pylist()))
    assert len(got[other].dictionary) == len(got[key].dictionary) == len(pairs) == len({k for k, _ in pairs})
    groups = sorted(g for g, m in enumerate(masks) if m.any())
    # the key once, the other name twice (its values, then the check), only row groups holding a selected row
    assert sorted(row_group_reads) == sorted([(g, (key,)) for g in groups] + 2 * [(g, (other,)) for g in groups])


def test_a_pair_whose_rows_disagree_on_its_s1_name_is_reported_as_when_read_whole(fixture_data, tmp_path, monkeypatch):
    """The derived S1 codes only hold when every row agrees: otherwise the names are hashed and the row is named."""
    from bentxt import join
    from bentxt.config import resolve_config

    table = pq.read_table(fixture_data.parquet)
    s1 = table["s1_name"].to_pylist()
    pair = table["patch_id"][40].as_py()
    rows = [i for i, p in enumerate(table["patch_id"].to_pylist()) if p == pair]
    assert len(rows) > 1
    s1[rows[-1]] = s1[rows[-1]] + "_0"  # one row of the pair names another S1 patch
    path = str(tmp_path / "two-s1.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("s1_name"), "s1_name", pa.array(s1)), path,
                   row_group_size=16)
    hashed = []
    original = ann._hashed_names
    monkeypatch.setattr(ann, "_hashed_names", lambda *a, **k: hashed.append(a[1]) or original(*a, **k))
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    messages = []
    for later in (True, False):
        with pytest.raises(ann.AnnotationFileError, match=rf"gives s1_name='[^']+' for image pair {pair}, but row ID") as e:
            join.select_annotations(config, path, None, None, texts_later=later)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and hashed == ["patch_id", "s1_name"]  # the S1 name hashed as the fallback


def test_sort_order_distinct_keys_by_quicksort_repeated_keys_stable():
    rng = np.random.default_rng(5)
    codes = pa.array(rng.integers(0, 300, 20_000).astype(np.int32))
    ids = rng.permutation(20_000)
    order = ann._sort_order(codes, pa.array(ids)).to_numpy()
    assert order.tolist() == np.lexsort((ids, codes.to_numpy())).tolist()
    repeated = ids % 50  # (code, ID) repeats: the stable order, equal keys in row order
    order = ann._sort_order(codes, pa.array(repeated)).to_numpy()
    assert order.tolist() == np.lexsort((repeated, codes.to_numpy())).tolist()
    assert not ann._strictly_increasing(np.array([1, 3, 3]), np.arange(3))
    assert ann._strictly_increasing(np.array([3, 1, 2]), np.array([1, 2, 0]), slice_rows=1)


@pytest.mark.parametrize("chunked", [False, True])
def test_names_hashed_on_threads_equal_one_hash(monkeypatch, chunked):
    monkeypatch.setattr(ann, "_THREADED_HASH_ROWS", 10)
    rng = np.random.default_rng(6)
    values = pa.array([f"S2B_{i:04d}" for i in rng.integers(0, 400, 5_000)])
    column = pa.chunked_array([values.slice(a, 700) for a in range(0, 5_000, 700)]) if chunked else values
    for threads in (1, 2, 3):
        got = ann.sorted_dictionary(column, threads=threads)
        assert got.to_pylist() == values.to_pylist() and ann._is_normalized(got.dictionary)
        assert got.indices.type == pa.int16()


def test_pair_keys_of_a_dictionary_column_are_plain_strings():
    table = pa.table({"patch_id": pa.array(["b", "a", "b"]).dictionary_encode(), "ID": [3, 1, 2]})
    index = ann.group_by_patch(table, "patch_id")
    assert index.keys == ["a", "b"] and index.first("patch_id") == ["a", "b"]
    assert all(type(k) is str for k in index.keys)


@pytest.mark.parametrize("stored", [("patch_id", "s1_name"), ("patch_id",), ("s1_name",)])
@pytest.mark.parametrize("config_name", ["s1s2-all", "s1-all", "s1s2-all-bench", "s1-all-bench"])
def test_pair_names_stored_as_dictionaries_are_read_as_when_read_whole(fixture_data, tmp_path, monkeypatch, stored,
                                                                      config_name):
    """A file written from categoricals: each row group's dictionary holds the unselected rows' names too."""
    from bentxt import join
    from bentxt.config import resolve_config

    monkeypatch.setattr(ann, "SPARSE_SHARE", 0.0)  # the bench selection read as a large one
    table = pq.read_table(fixture_data.parquet)
    for column in stored:
        table = table.set_column(table.schema.get_field_index(column), column, table[column].dictionary_encode())
    path = str(tmp_path / "categorical.parquet")
    pq.write_table(table, path, row_group_size=16)
    assert all(pa.types.is_dictionary(pq.ParquetFile(path).schema_arrow.field(c).type) for c in stored)
    config = resolve_config(config_name, data_dir=str(fixture_data.root))
    later, whole = (join.select_annotations(config, path, None, None, texts_later=t) for t in (True, False))
    assert later.keys == whole.keys and later.starts.tolist() == whole.starts.tolist()
    got = plain(later.table)
    assert got.equals(plain(whole.table).select(got.column_names))
    key = config.key_column
    expected = pq.read_table(fixture_data.parquet)
    expected = expected.filter(pa.array(config.selection(None).mask(expected)))
    expected = expected.sort_by([(key, "ascending"), ("ID", "ascending")])
    assert got.equals(expected.select(got.column_names))


@pytest.mark.parametrize("share", ["none", "sparse", "dense", "all"])
def test_selected_rows_of_a_row_group_decoded_in_batches_equal_the_filtered_row_group(many_groups, monkeypatch, share):
    """A sparsely selected row group is decoded a batch at a time (memory), with the same rows as one filter."""
    path, _ = many_groups
    pf = pq.ParquetFile(path)
    batched = []
    original = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, *a, **k: batched.append(k) or original(self, *a, **k))
    columns = ["ID", "input", "output"]
    rng = np.random.default_rng(7)
    sparse = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        mask = {"none": np.zeros(n, bool), "sparse": rng.random(n) < 0.2, "dense": rng.random(n) < 0.8,
                "all": np.ones(n, bool)}[share]
        mask[-1] = share != "none"  # a kept row in the last, short batch
        sparse += bool(mask.mean() < ann._BATCHED_DECODE_SHARE)
        got = ann._read_rows(pf, g, columns, mask, "x", batch_rows=5)  # 16-row groups: 4 batches, the last of 1 row
        assert got.equals(ann._read_rows(pf, g, columns, mask, "x"))  # whole row groups, filtered
        expected = pf.read_row_group(g, columns=columns).filter(pa.array(mask))
        assert got.schema == expected.schema and got.equals(expected)
    assert len(batched) == sparse and (sparse > 0) == (share in ("none", "sparse"))


def test_a_null_in_an_unselected_row_of_a_batched_row_group_is_still_reported(fixture_data, tmp_path, monkeypatch):
    """Without footer null counts the decoded rows are the check: a batch is checked before it is filtered."""
    table = pq.read_table(fixture_data.parquet)
    output = table["output"].to_pylist()
    output[21] = None  # row group 1 (16 rows each), its 6th row: the second batch
    bad = tmp_path / "null-unselected.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("output"), "output", pa.array(output, pa.string())), bad,
                   row_group_size=16, write_statistics=False)
    mask = np.zeros(16, dtype=bool)
    mask[0] = True  # sparse: decoded in batches; the null row is not selected
    pf = pq.ParquetFile(bad)
    with pytest.raises(ann.AnnotationFileError, match=rf"^x: row ID {table['ID'][21].as_py()} has a null 'output'"):
        ann._read_rows(pf, 1, ["ID", "output"], mask, "x", batch_rows=4)


@pytest.fixture
def pairs_together(fixture_data, tmp_path):
    """The fixture with each pair's rows next to each other (as the release keeps them near) in 32-row groups."""
    whole = pq.read_table(fixture_data.parquet)
    rng = np.random.default_rng(3)
    pair_rank = {name: r for r, name in enumerate(rng.permutation(sorted(set(whole["patch_id"].to_pylist()))))}
    key = pa.array([pair_rank[name] * 1000 + r for r, name in enumerate(whole["patch_id"].to_pylist())])
    path = tmp_path / "pairs_together.parquet"
    pq.write_table(whole.take(pc.sort_indices(key)), path, row_group_size=32)
    return str(path)


def test_names_are_read_as_dictionaries_only_where_every_row_group_keeps_them_so(fixture_data, pairs_together, tmp_path):
    assert ann.dictionary_encoded_names(pq.ParquetFile(pairs_together)) == ["patch_id", "s1_name"]
    # the fixture as generated: a few rows a row group, nearly every name once (plain is as small)
    assert ann.dictionary_encoded_names(pq.ParquetFile(fixture_data.parquet)) == []
    table = pq.read_table(pairs_together)
    no_stats = tmp_path / "no_stats.parquet"  # no min/max: the plain size is unknown, so plain strings
    pq.write_table(table, no_stats, row_group_size=32, write_statistics=False)
    assert ann.dictionary_encoded_names(pq.ParquetFile(no_stats)) == []
    # a dictionary page that overflows falls back to plain pages: one such row group makes the column plain
    first = table["patch_id"][0]
    one_pair = table.filter(pc.equal(table["patch_id"], first))
    others = table.filter(pc.not_equal(table["patch_id"], first)).slice(0, 40)
    assert len(set(others["patch_id"].to_pylist())) >= 3
    for name, parts in (("one_pair", [one_pair]), ("overflow", [one_pair, others])):
        with pq.ParquetWriter(tmp_path / f"{name}.parquet", table.schema, dictionary_pagesize_limit=120,
                              write_batch_size=4, data_page_size=100) as writer:  # checked every 4 rows
            for part in parts:
                writer.write_table(part)  # one row group each
    assert ann.dictionary_encoded_names(pq.ParquetFile(tmp_path / "one_pair.parquet")) == ["patch_id", "s1_name"]
    assert ann.dictionary_encoded_names(pq.ParquetFile(tmp_path / "overflow.parquet")) == []
    only_key = tmp_path / "only_key.parquet"  # s1_name written without a dictionary
    pq.write_table(table, only_key, row_group_size=32, use_dictionary=["patch_id"])
    assert ann.dictionary_encoded_names(pq.ParquetFile(only_key)) == ["patch_id"]
    categorical = tmp_path / "categorical.parquet"  # stored as a dictionary: read as one anyway, not listed
    pq.write_table(table.set_column(table.schema.get_field_index("s1_name"), "s1_name",
                                    table["s1_name"].dictionary_encode()), categorical, row_group_size=32)
    assert ann.dictionary_encoded_names(pq.ParquetFile(categorical)) == ["patch_id"]


@pytest.mark.parametrize("share", [0.0, 1.0])  # every selection read as a large one / as a sparse one
@pytest.mark.parametrize("config_name", ["s1s2-all", "s2-vqa", "s1-captioning", "s1s2-all-bench", "s1-all-bench"])
def test_names_read_as_dictionaries_select_what_plain_names_select(pairs_together, monkeypatch, share, config_name):
    """Each row group's dictionary also holds unselected rows' names: none may reach the index, none may be lost."""
    from bentxt import join
    from bentxt.config import resolve_config

    monkeypatch.setattr(ann, "SPARSE_SHARE", share)
    monkeypatch.setattr(ann, "usable_cores", lambda: 2)
    config = resolve_config(config_name, data_dir="unused")
    opened = []
    original = ann.open_parquet
    monkeypatch.setattr(ann, "open_parquet", lambda *a, **k: opened.append(k) or original(*a, **k))
    as_dictionaries = [join.select_annotations(config, pairs_together, None, None, texts_later=t) for t in (True, False)]
    assert [k.get("names_as_dictionaries") for k in opened if "names_as_dictionaries" in k] == [True, True]
    threads = [k for k in opened if k.get("read_dictionary") and "names_as_dictionaries" not in k]  # opened like pf
    assert threads and all({"patch_id", "s1_name"} <= set(k["read_dictionary"]) for k in threads)
    names = ann._pair_names
    monkeypatch.setattr(ann, "_pair_names", lambda chunks: names(chunks) if not calls.append(chunks) else None)
    calls: list = []
    join.select_annotations(config, pairs_together, None, None)
    assert calls and all(pa.types.is_dictionary(c.type) for chunks in calls for c in chunks)  # the route under test
    monkeypatch.setattr(ann, "dictionary_encoded_names", lambda pf: [])
    as_strings = join.select_annotations(config, pairs_together, None, None)
    for index in as_dictionaries:
        assert index.keys == as_strings.keys and index.starts.tolist() == as_strings.starts.tolist()
        got = plain(index.table)
        assert got.equals(plain(as_strings.table).select(got.column_names))
        for c in ("patch_id", "s1_name"):  # one dictionary value per pair, every one used
            column = ann._one_array(index.table[c])
            assert len(column.dictionary) == len(index.keys)
            assert np.unique(column.indices.to_numpy()).tolist() == list(range(len(index.keys)))
    expected = pq.read_table(pairs_together)
    expected = expected.filter(pa.array(config.selection(None).mask(expected)))
    key = config.key_column
    expected = expected.sort_by([(key, "ascending"), ("ID", "ascending")])
    got = plain(as_dictionaries[0].table)
    assert got.num_rows > 0 and got.equals(expected.select(got.column_names))


def test_selected_names_from_dictionaries_are_the_selected_rows_names(pairs_together):
    whole = pq.read_table(pairs_together)
    for selection in SELECTIONS.values():
        expected = whole.filter(pa.array(selection.mask(whole)))
        got = ann.selected_names(pairs_together, selection, ["patch_id", "s1_name", "split"])
        assert got == {c: sorted(set(expected[c].to_pylist())) for c in ("patch_id", "s1_name", "split")}
        assert got["patch_id"]


def test_dictionary_chunks_become_one_dictionary_of_the_names_used():
    a = pa.DictionaryArray.from_arrays(pa.array([2, 2, 0], pa.int32()), pa.array(["c", "x", "a"]))
    b = pa.DictionaryArray.from_arrays(pa.array([1, 1, 1, 1], pa.int32()), pa.array(["y", "c", "z"]))
    [merged] = ann._pair_names([a, b])
    assert sorted(merged.dictionary.to_pylist()) == ["a", "c"]  # x, y, z: no row left uses them
    assert merged.dictionary_decode().to_pylist() == ["a", "a", "c", "c", "c", "c", "c"]
    # fewer rows than dictionary values (a sparse selection): the rows decoded, to be hashed as plain names
    few = [a.slice(0, 1), b.slice(0, 1)]
    assert [c.to_pylist() for c in ann._pair_names(few)] == [["a"], ["c"]]
    assert all(c.type == pa.string() for c in ann._pair_names(few))
    with_null = pa.DictionaryArray.from_arrays(pa.array([0, None, 0, 0, 0], pa.int32()), pa.array(["q"]))
    assert [c.to_pylist() for c in ann._pair_names([with_null])] == [["q", None, "q", "q", "q"]]
    plain_chunks = [pa.array(["a"]), pa.array(["b"])]
    assert ann._pair_names(plain_chunks) is plain_chunks


def test_names_arrow_cannot_read_as_a_dictionary_stay_plain(pairs_together, tmp_path):
    """A writer may fall back from a dictionary to DELTA_BYTE_ARRAY pages (Parquet v2 writers: parquet-mr, arrow-rs),
    which Arrow does not read into a dictionary: a chunk listing such an encoding keeps its column plain."""
    table = pq.read_table(pairs_together)
    delta = tmp_path / "delta.parquet"  # pyarrow writes DELTA pages only without a dictionary page
    pq.write_table(table, delta, row_group_size=32, use_dictionary=False, column_encoding={"patch_id": "DELTA_BYTE_ARRAY"})
    with pytest.raises(OSError, match="Not yet implemented"):  # what reading such pages as a dictionary does
        pq.ParquetFile(delta, read_dictionary=["patch_id"]).read(columns=["patch_id"])
    real = pq.ParquetFile(pairs_together)
    j = ann._leaf_column(real, "patch_id")

    class Fallback:  # patch_id's chunk of row group 1 as such a writer's footer lists it: DELTA_BYTE_ARRAY pages too
        def __init__(self, chunk):
            self.chunk, self.encodings = chunk, (*chunk.encodings, "DELTA_BYTE_ARRAY")

        def __getattr__(self, name):
            return getattr(self.chunk, name)

    def row_group(g):
        meta = real.metadata.row_group(g)
        return types.SimpleNamespace(column=lambda k: Fallback(meta.column(k)) if (g, k) == (1, j) else meta.column(k))

    footer = types.SimpleNamespace(num_columns=real.metadata.num_columns, schema=real.metadata.schema, row_group=row_group)
    fallback = types.SimpleNamespace(metadata=footer, schema_arrow=real.schema_arrow, num_row_groups=real.num_row_groups)
    assert ann.dictionary_encoded_names(real) == ["patch_id", "s1_name"]
    assert ann.dictionary_encoded_names(fallback) == ["s1_name"]


def _streamed(path, selection, monkeypatch, sort_by="patch_id"):
    monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)  # every selection streams its texts
    table, texts = ann.read_streamed_selection(str(path), selection, sort_by)
    assert isinstance(texts, ann.StreamedTexts) and texts.columns == ["input", "output"]
    assert "input" not in table.column_names and "output" not in table.column_names
    return ann.group_by_patch(table, sort_by, texts)


@pytest.mark.parametrize("route", ["from the row groups", "once all are in order"])
@pytest.mark.parametrize("name", list(SELECTIONS))
def test_streamed_texts_give_each_pair_its_own_rows_asked_in_any_order(many_groups, monkeypatch, name, route):
    path, _ = many_groups
    selection = SELECTIONS[name]
    eager = ann.group_by_patch(ann.read_selection(str(path), selection, sort_by="patch_id"), "patch_id")
    if route == "from the row groups":  # never put in order: every pair taken from its row groups
        monkeypatch.setattr(ann.StreamedTexts, "_put_in_order", lambda self: None)
    index = _streamed(path, selection, monkeypatch)
    texts = index.streamed
    assert texts is not None and index.keys == eager.keys and len(index.keys) >= 2
    try:
        if route == "once all are in order":
            for thread in texts._threads:
                thread.join(10)
            assert plain(texts.whole()).equals(plain(eager.table.select(["input", "output"])))
        for i in np.random.default_rng(5).permutation(len(index.keys)):  # row groups asked for out of their order
            got, expected = plain(index.rows(int(i))), plain(eager.rows(int(i)))
            assert got.column_names == expected.column_names and got.equals(expected)
        assert index._joined == (route == "once all are in order")  # then each pair is a slice of one table
        assert plain(texts.rows(0, len(index.table))).equals(plain(eager.table.select(["input", "output"])))
    finally:
        texts.close()
    assert not any(t.is_alive() for t in texts._threads)


def _until(done) -> None:
    """Wait (polling) until ``done()``: another thread has got that far."""
    while not done():
        threading.Event().wait(0.01)


@pytest.fixture
def held_decoder(monkeypatch):
    """One decoding thread, held on its first row group of texts until ``release`` is set; ``order``: the row groups it took."""
    monkeypatch.setattr(ann, "decode_threads", lambda pf, columns: 1)
    held = types.SimpleNamespace(release=threading.Event(), order=[])
    read = ann._read_rows

    def slow_read(handle, g, columns, *args, **kwargs):
        if columns == ["input", "output"]:
            held.order.append(g)
            held.release.wait(10)
        return read(handle, g, columns, *args, **kwargs)

    monkeypatch.setattr(ann, "_read_rows", slow_read)
    yield held
    held.release.set()


def test_streamed_texts_decode_the_row_groups_asked_for_first(many_groups, monkeypatch, held_decoder):
    path, _ = many_groups
    order = held_decoder.order  # the first row group holds the decoder until the last pair is asked for
    index = _streamed(path, ann.Selection(), monkeypatch)
    texts = index.streamed
    try:
        last = len(index.keys) - 1
        wanted = set(texts._group[index.starts[last]:index.starts[last + 1]].tolist())
        _until(lambda: order)  # the decoder holds its first row group
        line = list(texts._queue)  # the order the others would come in
        after = wanted - {order[0]}
        assert after and not after <= set(line[:len(after)])  # not next in line on their own: the test can fail

        def release_once_asked():  # not before rows() has asked, however slow the machine
            _until(lambda: texts._asked)
            held_decoder.release.set()

        threading.Thread(target=release_once_asked, daemon=True).start()
        assert index.rows(last).num_rows == index.starts[last + 1] - index.starts[last]
        assert set(order[1:1 + len(after)]) == after  # decoded right after the one under way
        assert order[1 + len(after):] == [g for g in line if g not in after][:len(order) - 1 - len(after)]
    finally:
        held_decoder.release.set()
        texts.close()


def test_a_row_group_that_fails_to_decode_fails_the_next_rows_call(many_groups, monkeypatch):
    path, _ = many_groups
    read = ann._read_rows
    index = None

    def failing(handle, g, columns, *args, **kwargs):
        if columns == ["input", "output"] and g == failing.group:
            raise ann.AnnotationFileError(f"groups.parquet: row group {g} is broken")
        return read(handle, g, columns, *args, **kwargs)

    failing.group = pq.ParquetFile(path).num_row_groups - 1  # the last: not the first pair's
    monkeypatch.setattr(ann, "_read_rows", failing)
    index = _streamed(path, ann.Selection(), monkeypatch)
    try:
        for thread in index.streamed._threads:
            thread.join(10)
        with pytest.raises(ann.AnnotationFileError, match=f"row group {failing.group} is broken"):
            index.rows(0)
    finally:
        index.streamed.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a forked child")
def test_rows_no_thread_will_decode_fail_instead_of_waiting_forever(many_groups, monkeypatch, held_decoder):
    """A pair asked in a forked child (the decoding threads stay in the parent), or awaited while another thread closes."""
    path, _ = many_groups
    busy = held_decoder.order  # the one decoder holds its first row group
    index = _streamed(path, ann.Selection(), monkeypatch)
    texts = index.streamed
    try:
        _until(lambda: busy)
        waiting = next(i for i in range(len(index.keys))  # a pair none of whose row groups is under way
                       if busy[0] not in texts._group[index.starts[i]:index.starts[i + 1]])
        pid = os.fork()
        if pid == 0:  # the child: no thread of its own decodes
            try:
                index.rows(waiting)
                code = 1
            except RuntimeError as err:
                code = 0 if "forked" in str(err) else 2
            except BaseException:
                code = 3
            os._exit(code)
        for _ in range(500):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            threading.Event().wait(0.01)
        else:  # waiting forever
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
        assert status is not None and os.waitstatus_to_exitcode(status) == 0
        outcome: list = []

        def ask():
            try:
                outcome.append(index.rows(waiting))
            except RuntimeError as err:
                outcome.append(str(err))

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        _until(lambda: texts._asked)  # asked for under the lock, then waiting
        closer = threading.Thread(target=texts.close, daemon=True)
        closer.start()
        _until(lambda: texts._stop)
        held_decoder.release.set()  # the decoder finishes its row group and stops: the pair's row groups never come
        closer.join(10)
        asker.join(10)
        assert not closer.is_alive() and not asker.is_alive() and len(outcome) == 1
        assert isinstance(outcome[0], str) and "closed" in outcome[0]
    finally:
        held_decoder.release.set()
        texts.close()


def test_streamed_texts_left_open_are_closed_at_exit(many_groups, monkeypatch):
    """A daemon thread still inside Arrow when the interpreter ends can abort it: exit closes what a stream left open."""
    path, _ = many_groups
    index = _streamed(path, ann.Selection(), monkeypatch)
    texts = index.streamed
    assert texts in ann._LIVE_TEXTS
    ann._close_live_texts()  # what atexit runs
    assert texts._stop and not any(t.is_alive() for t in texts._threads) and texts not in ann._LIVE_TEXTS
    closed = _streamed(path, ann.Selection(), monkeypatch).streamed
    closed.close()
    assert closed not in ann._LIVE_TEXTS
