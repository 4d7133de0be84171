"""bentxt/cache/pair_bands.py: text rows referencing their pair's pixels in a store, and the datasets API on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from test_builder import prepare
from bentxt import bands as B
from bentxt.cache import store
from bentxt.cache.pair_bands import PairBands, attach, portable

REPO = Path(__file__).resolve().parents[1]
S2_GROUPS = [g for g in B.BAND_GROUPS if g.sensor == "s2"]
S1 = B.BAND_GROUPS[3]


@pytest.fixture(scope="module")
def vqa(fixture_data, tmp_path_factory):
    """s1s2-vqa prepared: (builder, DatasetDict)."""
    return prepare("s1s2-vqa", fixture_data, tmp_path_factory.mktemp("vqa"))


def native(fixture, patch_id, group):
    patch = fixture.patch(str(patch_id))
    return np.stack([patch.bands[b] for b in group.bands])


# ----------------------------------------------------------------------------- the feature


def test_pair_bands_encodes_references_and_inline_arrays():
    feature = PairBands(S1.shape, S1.dtype, S1.bands)
    assert feature() == PairBands.pa_type
    assert feature.encode_example({"s1": 3, "s2": None, "s1_store": "s1-abc.0123"}) == {
        "s1": 3, "s2": None, "s1_store": "s1-abc.0123", "s2_store": None, "bytes": None}
    array = np.arange(np.prod(S1.shape), dtype=np.float32).reshape(S1.shape)
    encoded = feature.encode_example(array)
    assert encoded["s1"] is None and len(encoded["bytes"]) == array.nbytes
    decoded = feature.decode_example(encoded)
    assert decoded.dtype == np.float32 and np.array_equal(decoded, array)
    with pytest.raises(ValueError, match=r"must have shape \(2, 120, 120\), got \(2, 60, 60\)"):
        feature.encode_example(np.zeros((2, 60, 60), np.float32))
    uint = PairBands(S2_GROUPS[0].shape, "uint16", S2_GROUPS[0].bands)
    with pytest.raises(ValueError, match="must be uint16, got float64"):
        uint.encode_example(np.zeros(S2_GROUPS[0].shape, np.float64))
    assert feature.sensors == ("s1",) and uint.sensors == ("s2",)
    assert PairBands((3, 8, 8), "float32", ("VV", "B02", "B03"), 8, "nearest").sensors == ("s1", "s2")


def test_a_row_names_its_store_and_a_bare_arrow_file_finds_it(vqa, fixture_data):
    """The rows carry their store: a text file opened without the builder still decodes, in this process."""
    builder, ds = vqa
    table = ds["bench"].data.table
    storage = table.column("s1").combine_chunks()
    references = set(storage.field("s1_store").to_pylist())
    assert len(references) == 1 and store.split_reference(references.pop())[0].startswith("s1-")
    assert storage.field("s2_store").null_count == len(storage)  # a column names only the stores it reads
    s2 = table.column("s2_10m").combine_chunks()
    assert len(set(s2.field("s2_store").to_pylist())) == 1 and s2.field("s1").null_count == len(s2)
    bare = datasets.Dataset.from_file(ds["bench"].cache_files[0]["filename"])  # not through the builder
    assert isinstance(bare.features["s1"], PairBands)
    assert np.array_equal(bare[0]["s1"], native(fixture_data, bare[0]["patch_id"], S1))


def test_a_store_that_cannot_be_found_is_an_error_naming_it(vqa, tmp_path, monkeypatch):
    """Another process (no known stores) with the default root elsewhere: an error naming the store and the fixes."""
    builder, ds = vqa
    bare = datasets.Dataset.from_file(ds["bench"].cache_files[0]["filename"])
    monkeypatch.setattr(store, "_KNOWN", {})
    monkeypatch.setattr(store, "_OPEN", {})
    monkeypatch.setattr(store, "default_root", lambda cache_root=None: str(tmp_path))
    monkeypatch.delenv(store.STORES_ENV, raising=False)
    with pytest.raises(store.StoreError, match=r"imagery store 's[12]-[0-9a-f]{12}', which was not found .*BENTXT_STORES.*"
                                               r"bentxt.cache.store.register.*portable"):
        bare[0]
    # told where the stores are (moved there), it reads them again
    from bentxt.cache import folders as cache

    monkeypatch.setenv(store.STORES_ENV, os.path.dirname(cache.store_paths(builder.cache_dir)[0]))
    assert np.array_equal(bare[0]["s1"], ds["bench"][0]["s1"])


def test_attach_reaches_dataset_dicts_and_nested_features(vqa):
    from bentxt.cache import folders as cache

    builder, ds = vqa
    paths = cache.store_paths(builder.cache_dir)
    hints = {p: store.ImageryStore(p).reference for p in paths}
    assert len(hints) == 2
    features = datasets.Features({"a": {"b": PairBands(S1.shape, S1.dtype, S1.bands)},
                                  "c": datasets.List({"d": PairBands(S1.shape, S1.dtype, S1.bands)})})
    attach(features, paths + ["/no/such/store"])  # a store that is gone is no hint
    assert features["a"]["b"].stores == features["c"].feature["d"].stores == hints
    dd = datasets.DatasetDict({k: datasets.Dataset.from_file(v.cache_files[0]["filename"]) for k, v in ds.items()})
    attach(dd, paths)
    assert all(part.info.features["s2_10m"].stores == hints for part in dd.values())
    assert np.array_equal(dd["train"][0]["s2_10m"], ds["train"][0]["s2_10m"])


def test_store_hints_are_not_part_of_equality_and_travel_with_pickles(monkeypatch):
    import pickle

    a, b = PairBands(S1.shape, S1.dtype, S1.bands), PairBands(S1.shape, S1.dtype, S1.bands, stores={"/x": "s1-x.1"})
    assert a == b
    monkeypatch.setitem(store._KNOWN, "/somewhere/s1-feedfacefeedface", "s1-feedfacefeedface.0a1b")
    copy = pickle.loads(pickle.dumps(a))  # what a DataLoader worker or a map process receives
    assert copy.stores["/somewhere/s1-feedfacefeedface"] == "s1-feedfacefeedface.0a1b" and copy == a


def test_portable_gives_plain_array3d_columns_with_the_same_values(vqa, tmp_path):
    _, ds = vqa
    part = ds["test"].select(range(5))
    plain = portable(part)
    assert all(isinstance(plain.features[c], datasets.Array3D) for c in ("s1", "s2_10m", "s2_20m", "s2_60m"))
    got, want = plain.with_format("numpy", dtype=None)[:], part.with_format("numpy")[:]
    for c in ("s1", "s2_10m", "s2_60m"):
        assert got[c].dtype == want[c].dtype and np.array_equal(got[c], want[c])
    plain.save_to_disk(str(tmp_path / "plain"))
    script = f"""
import datasets, numpy as np, sys
ds = datasets.load_from_disk({str(tmp_path / 'plain')!r}).with_format("numpy", dtype=None)
assert "bentxt" not in sys.modules and "bigearthnet_txt" not in sys.modules
print(ds[:]["s2_10m"].dtype, ds[:]["s2_10m"].shape, int(ds[:]["s2_10m"].sum()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["uint16", "(5,", "4,", "120,", "120)", str(int(want["s2_10m"].sum()))]


# ----------------------------------------------------------------------------- the datasets API on a prepared config


def test_indexing_slicing_and_batches_give_numpy_arrays(vqa, fixture_data):
    _, ds = vqa
    test = ds["test"]
    ex = test[0]
    assert isinstance(ex["s2_10m"], np.ndarray) and ex["s2_10m"].dtype == np.uint16 and ex["s2_10m"].shape == (4, 120, 120)
    assert ex["s1"].dtype == np.float32
    assert np.array_equal(ex["s2_10m"], native(fixture_data, ex["patch_id"], S2_GROUPS[0]))
    batch = test[1:4]
    assert len(batch["s1"]) == 3 and all(isinstance(a, np.ndarray) for a in batch["s1"])
    for pid, a in zip(batch["patch_id"], batch["s1"]):
        assert np.array_equal(a, native(fixture_data, pid, S1))
    assert np.array_equal(test[-1]["s2_60m"], native(fixture_data, test[-1]["patch_id"], S2_GROUPS[2]))
    column = test["s2_20m"]
    assert np.array_equal(column[2], native(fixture_data, test[2]["patch_id"], S2_GROUPS[1]))
    seen = 0
    for batch in test.iter(batch_size=5):
        assert len(batch["ID"]) == len(batch["s2_10m"]) <= 5
        for pid, a in zip(batch["patch_id"], batch["s2_10m"]):
            assert a.dtype == np.uint16 and np.array_equal(a, native(fixture_data, pid, S2_GROUPS[0]))
        seen += len(batch["ID"])
    assert seen == test.num_rows


def test_select_shuffle_filter_and_split_keep_rows_with_their_pixels(vqa, fixture_data):
    _, ds = vqa
    train = ds["train"]
    picked = train.select([5, 0, 3])
    assert list(picked["ID"]) == [train[5]["ID"], train[0]["ID"], train[3]["ID"]]
    assert np.array_equal(picked[0]["s1"], train[5]["s1"])
    shuffled = train.shuffle(seed=0)
    assert sorted(shuffled["ID"]) == sorted(train["ID"]) and list(shuffled["ID"]) != list(train["ID"])
    for i in range(shuffled.num_rows):
        row = shuffled[i]
        assert np.array_equal(row["s2_10m"], native(fixture_data, row["patch_id"], S2_GROUPS[0]))
    mcq = train.filter(lambda r: r["type"] == "mcq")
    assert set(mcq["type"]) == {"mcq"} and mcq.num_rows == sum(1 for t in train["type"] if t == "mcq") > 0
    assert np.array_equal(mcq[0]["s1"], native(fixture_data, mcq[0]["patch_id"], S1))
    by_pixels = train.filter(lambda r: r["s2_60m"].mean() > 0)  # the filter function sees the decoded arrays
    assert by_pixels.num_rows == train.num_rows
    parts = train.train_test_split(test_size=0.25, seed=0)
    assert parts["train"].num_rows + parts["test"].num_rows == train.num_rows
    assert sorted(list(parts["train"]["ID"]) + list(parts["test"]["ID"])) == sorted(train["ID"])
    row = parts["test"][0]
    assert np.array_equal(row["s2_20m"], native(fixture_data, row["patch_id"], S2_GROUPS[1]))


@pytest.mark.parametrize("num_proc", [None, 2])
def test_map_sees_arrays_and_keeps_the_references(num_proc, vqa, fixture_data):
    _, ds = vqa
    test = ds["test"]

    def add(row):
        return {"mean_vv": float(row["s1"][0].mean()), "n_words": len(row["input"].split())}

    mapped = test.map(add, num_proc=num_proc)
    # a band column the function read is written back by datasets: it stays PairBands, its pixels now inline;
    # columns it did not read stay references into the stores
    assert all(isinstance(mapped.features[c], PairBands) for c in ("s1", "s2_10m", "s2_20m", "s2_60m"))
    storage = {c: mapped.data.table.column(c).combine_chunks() for c in ("s1", "s2_10m")}
    assert storage["s1"].field("bytes").null_count == 0 and storage["s2_10m"].field("bytes").null_count == mapped.num_rows
    assert mapped.with_format("numpy")[:4]["s1"].dtype == np.float32
    for i in range(mapped.num_rows):
        row = mapped[i]
        pixels = native(fixture_data, row["patch_id"], S1)
        assert row["mean_vv"] == pytest.approx(float(pixels[0].mean()))
        assert np.array_equal(row["s1"], pixels)
    batched = test.map(lambda b: {"sum": [int(a.sum()) for a in b["s2_60m"]]}, batched=True, batch_size=4, num_proc=num_proc)
    assert batched["sum"][3] == int(native(fixture_data, test[3]["patch_id"], S2_GROUPS[2]).sum())
    # a function returning new arrays for a band column: checked and stored in the column's dtype
    brighter = test.map(lambda r: {"s2_10m": r["s2_10m"] + 1}, num_proc=num_proc)
    assert isinstance(brighter.features["s2_10m"], PairBands)
    got = brighter.with_format("numpy")[:]["s2_10m"]
    assert got.dtype == np.uint16 and np.array_equal(got, test.with_format("numpy")[:]["s2_10m"] + 1)


def test_save_to_disk_moved_folder_loads_in_a_fresh_process(vqa, tmp_path):
    _, ds = vqa
    part = ds["test"].select(range(6))
    saved, moved = tmp_path / "saved", tmp_path / "elsewhere" / "moved"
    part.save_to_disk(str(saved))
    moved.parent.mkdir()
    shutil.move(str(saved), str(moved))
    expected = {c: np.stack([part[i][c] for i in range(part.num_rows)]) for c in ("s2_10m", "s2_20m", "s2_60m", "s1")}
    np.savez(tmp_path / "expected.npz", ids=np.array(part["ID"]), **expected)
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np, datasets
import bigearthnet_txt  # registers the PairBands feature
ds = datasets.load_from_disk({str(moved)!r})
want = np.load({str(tmp_path / 'expected.npz')!r})
assert list(ds["ID"]) == want["ids"].tolist()
for c in ("s2_10m", "s2_20m", "s2_60m", "s1"):
    got = np.stack([ds[i][c] for i in range(ds.num_rows)])
    assert got.dtype == want[c].dtype and np.array_equal(got, want[c]), c
    assert ds.with_format("numpy")[:][c].dtype == want[c].dtype
print("ok", ds.num_rows)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok 6")
    # the saved folder embeds the pixels: it does not point into the cache
    saved_bytes = sum(f.stat().st_size for f in moved.glob("*.arrow"))
    assert saved_bytes >= sum(a.nbytes for a in expected.values())


