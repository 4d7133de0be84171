"""What ``read_selection`` reads: the rules' columns of every row, the others only where a selected row is.

Both ways of reading the other columns (one pass for a sparse selection,
bulky columns placed in sorted order for a large one) give the same table,
equal to filtering the whole file; a file sorted by split lets a bench
selection skip the other row groups' names and texts entirely.
"""

from __future__ import annotations

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


def spy_reads(monkeypatch):
    calls = []
    original = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        calls.append((i, tuple(columns or ())))
        return original(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    return calls


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


def test_a_file_sorted_by_split_reads_names_and_texts_of_the_bench_row_groups_only(fixture_data, tmp_path, monkeypatch):
    whole = pq.read_table(fixture_data.parquet)
    order = pc.sort_indices(whole, [("split", "ascending"), ("ID", "ascending")])
    path = tmp_path / "by_split.parquet"
    pq.write_table(whole.take(order), path, row_group_size=16)
    meta = pq.ParquetFile(path).metadata
    split_of = pq.read_table(path, columns=["split"])["split"].to_numpy(zero_copy_only=False)
    bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    with_bench = {g for g in range(meta.num_row_groups) if (split_of[bounds[g]:bounds[g + 1]] == "bench").any()}
    assert 0 < len(with_bench) < meta.num_row_groups
    calls = spy_reads(monkeypatch)
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
