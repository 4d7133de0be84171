"""The benchmarks' preconditions: same images as the publisher's reader, and a smoke run of benchmarks/run.py.

Also the text side: the faster ``read_selection`` / ``group_by_patch`` (dictionary
codes, ``sort_by``) must give exactly what a plain Arrow filter + sort gives.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bentxt import annotations as ann  # noqa: E402
from benchmarks import reading  # noqa: E402
from benchmarks.publisher_reference import BENTxTDataset, write_lmdb_from_archives  # noqa: E402


@pytest.mark.parametrize("bands", ["S1S2-10m20m", "all"])
def test_reference_reader_and_our_cache_give_identical_examples(fixture_data, fixture_lmdb, tmp_path, bands):
    reading.prepare(str(fixture_data.root), str(tmp_path / "cache"), bands)
    ours, ref, ref_to_ours = reading.open_both(str(fixture_data.root), str(tmp_path / "cache"), str(fixture_lmdb), bands)
    assert len(ref) == fixture_data.table.num_rows
    assert reading.check_identical(ours, ref, ref_to_ours, n=len(ref)) == len(ref)  # every row, bit for bit


def test_reference_reader_is_the_publisher_path(fixture_data, fixture_lmdb):
    """Spot checks of the re-implementation itself: band order, nearest upsampling, float32, tag stripping."""
    ref = BENTxTDataset(str(fixture_lmdb), str(fixture_data.parquet), bands="S1S2-10m20m")
    j = int(np.flatnonzero(ref.text_data["input"].str.contains("<point>").to_numpy())[0])
    item = ref[j]
    patch = fixture_data.patch(ref.text_data["patch_id"][j])
    image = item["image_input"].numpy()
    assert image.dtype == np.float32 and image.shape == (12, 120, 120)
    assert np.array_equal(image[0], patch.bands["VV"]) and np.array_equal(image[2], patch.bands["B02"].astype(np.float32))
    b05 = patch.bands["B05"].astype(np.float32)  # 60 px -> 120 px: legacy nearest is 2x2 pixel replication
    assert np.array_equal(image[5], np.repeat(np.repeat(b05, 2, axis=0), 2, axis=1))
    assert "<point>" not in item["text_input"] and "</point>" not in item["text_input"]
    assert item["reference_output"] == ref.text_data["output"][j]


def test_lmdb_from_archives_matches_the_fixture_lmdb(fixture_data, fixture_lmdb, tmp_path):
    import lmdb
    from safetensors.numpy import load

    pairs = {p.patch_id: p.s1_name for p in fixture_data.archived_patches[:3]}
    ours = write_lmdb_from_archives(str(fixture_data.s2_archive), str(fixture_data.s1_archive), str(tmp_path / "lmdb"),
                                    pairs, pairs.values())
    a, b = lmdb.open(str(ours), readonly=True, lock=False), lmdb.open(str(fixture_lmdb), readonly=True, lock=False)
    with a.begin() as ta, b.begin() as tb:
        for key in [*pairs, *pairs.values()]:
            mine, theirs = load(bytes(ta.get(key.encode()))), load(bytes(tb.get(key.encode())))
            assert mine.keys() == theirs.keys()
            for band in mine:
                assert mine[band].dtype == theirs[band].dtype and np.array_equal(mine[band], theirs[band])


def test_run_smoke(tmp_path):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--patches", "20", "--only", "write",
                          "--work", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.perf_counter() - t < 60
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["measurement", "ours"] and "met?" in lines[0]
    assert any(line.startswith("4. write Array3D rows") for line in lines)
    assert "| measurement | ours | baseline | ratio | target | met? |" in out.stdout


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


def test_sorted_selection_writes_to_ipc_like_the_staging_store(fixture_data, tmp_path, monkeypatch):
    from bentxt import store

    monkeypatch.setattr(ann, "_SLICE_ROWS", 13)
    table = ann.read_selection(str(fixture_data.parquet), ann.Selection(), sort_by="patch_id")
    assert table["input"].num_chunks == 1  # assembled from 13-row slices
    index = ann.group_by_patch(table, "patch_id")
    assert index.table["input"].chunk(0).buffers() == table["input"].chunk(0).buffers()  # grouping a sorted table copies nothing
    writer = store.StoreWriter(str(tmp_path))
    writer.open_shard("s")
    writer.write_rows("s", index.table.filter(pa.array(np.arange(len(index.table)) % 2 == 0)))
    writer.close()
    back = store.StoreShard(str(tmp_path), "s").rows()
    assert back.to_pylist() == index.table.filter(pa.array(np.arange(len(index.table)) % 2 == 0)).to_pylist()


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
