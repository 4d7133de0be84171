"""bentxt/imagery_table.py: each pair's pixels once per cache, ``PairBands`` references, and the datasets API on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from test_builder import prepare
from bentxt import bands as B
from bentxt.archives import iter_archive_patches
from bentxt.imagery_table import (
    IMAGERY_DIR,
    ImageryTables,
    ImageryWriter,
    PairBands,
    array3d,
    array3d_values,
    attach,
    imagery_features,
    open_tables,
)

REPO = Path(__file__).resolve().parents[1]
S2_GROUPS = [g for g in B.BAND_GROUPS if g.sensor == "s2"]
S1 = B.BAND_GROUPS[3]


@pytest.fixture(scope="module")
def vqa(fixture_data, tmp_path_factory):
    """s1s2-vqa prepared: (builder, DatasetDict)."""
    return prepare("s1s2-vqa", fixture_data, tmp_path_factory.mktemp("vqa"))


@pytest.fixture(scope="module")
def vqa_patch(fixture_data, tmp_path_factory):
    return prepare("s1s2-vqa", fixture_data, tmp_path_factory.mktemp("vqa_patch"), layout="patch")


def native(fixture, patch_id, group):
    patch = fixture.patch(str(patch_id))
    return np.stack([patch.bands[b] for b in group.bands])


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def vqa_pairs(fixture):
    rows = [r for r in fixture.table.to_pylist() if r["type"] in ("binary", "mcq")]
    return {r["patch_id"]: r["s1_name"] for r in rows}


# ----------------------------------------------------------------------------- pixels once


def test_the_imagery_tables_hold_one_row_per_pair_in_source_order(vqa, fixture_data):
    builder, ds = vqa
    tables = ImageryTables(builder.cache_dir)
    pairs = vqa_pairs(fixture_data)
    s2, s1 = tables.names("s2"), tables.names("s1")
    assert len(s2) == len(set(s2)) == len(pairs) and set(s2) == set(pairs)
    assert len(s1) == len(set(s1)) == len(pairs) and set(s1) == set(pairs.values())
    # each sensor in its own archive's order (S1 and S2 are sorted differently)
    archive_order = {s: [n for n, _ in iter_archive_patches([str(a)], s, progress=False)]
                     for s, a in (("s2", fixture_data.s2_archive), ("s1", fixture_data.s1_archive))}
    assert s2 == [n for n in archive_order["s2"] if n in set(s2)]
    assert s1 == [n for n in archive_order["s1"] if n in set(s1)]
    # every text row points at its own pair's rows: the reference decodes to the pair's bands
    total = 0
    for split, part in ds.items():
        storage = part.data.table.column("s2_10m").combine_chunks()
        assert storage.type == PairBands.pa_type and storage.field("bytes").null_count == len(storage)
        s2_rows = storage.field("s2").to_pylist()
        s1_rows = storage.field("s1").to_pylist()
        for patch_id, s1_name, r2, r1 in zip(part["patch_id"], part["s1_name"], s2_rows, s1_rows):
            assert s2[r2] == patch_id and s1[r1] == s1_name
        total += part.num_rows
        assert len(set(s2_rows)) == len(set(part["patch_id"])) < part.num_rows  # many texts share a pair's row
    assert total == len([r for r in fixture_data.table.to_pylist() if r["type"] in ("binary", "mcq")])


def test_a_split_config_stores_only_its_pairs(fixture_data, tmp_path):
    builder, ds = prepare("s2-captioning-bench", fixture_data, tmp_path)
    bench = {p.patch_id for p in fixture_data.patches if p.split == "bench" and p.has_caption}
    names = ImageryTables(builder.cache_dir).names("s2")
    assert set(names) == bench and len(names) == len(bench) == ds["bench"].num_rows
    assert not ImageryTables(builder.cache_dir).files("s1")  # an s2 config reads no S1


def test_the_cache_costs_the_imagery_once_plus_a_small_text_part(vqa, vqa_patch, fixture_data, tmp_path):
    """Issue 13's acceptance on the fixture: the per-text cache is <= 1.15 x (patch-layout imagery + parquet)."""
    parquet = os.path.getsize(fixture_data.parquet)
    patch_imagery = folder_bytes(os.path.join(vqa_patch[0].cache_dir, IMAGERY_DIR))
    per_text = folder_bytes(vqa[0].cache_dir)
    texts = len([r for r in fixture_data.table.to_pylist() if r["type"] in ("binary", "mcq")])
    pairs = len(vqa_pairs(fixture_data))
    assert patch_imagery >= pairs * 275_200  # the pixels are in there, once per pair
    assert patch_imagery < pairs * 275_200 * 1.05
    assert per_text <= 1.15 * (patch_imagery + parquet), (per_text, patch_imagery, parquet)
    assert per_text < 0.2 * texts * 275_200  # a copy per text would be ~10x this fixture's cache
    # bands= configs keep the native groups once and compute the image on access
    banded, _ = prepare("s1s2-vqa", fixture_data, tmp_path, bands="S1S2-10m20m", img_size=120)
    assert folder_bytes(banded.cache_dir) <= 1.15 * (patch_imagery + parquet)


def test_an_imagery_table_is_a_plain_datasets_arrow_file(vqa, fixture_data):
    builder, ds = vqa
    tables = ImageryTables(builder.cache_dir)
    (s2_file,) = tables.files("s2")
    table = datasets.Dataset.from_file(s2_file)
    assert table.features == imagery_features(S2_GROUPS)
    assert isinstance(table.features["s2_10m"], datasets.Array3D)
    assert table.num_rows == len(vqa_pairs(fixture_data))
    row = table.with_format("numpy", dtype=None)[0]  # a plain Array3D table: datasets' own formatting
    for group in S2_GROUPS:
        assert row[group.name].dtype == np.dtype(group.dtype)
        assert np.array_equal(row[group.name], native(fixture_data, row["name"], group))
        assert np.array_equal(tables.take("s2", group, 0), row[group.name])
    # a text row's reference decodes to exactly what the Array3D column of the table gives
    test = ds["test"]
    i = tables.names("s2").index(test[0]["patch_id"])
    assert np.array_equal(test[0]["s2_20m"], table.with_format("numpy", dtype=None)[i]["s2_20m"])


# ----------------------------------------------------------------------------- the feature


def test_pair_bands_encodes_references_and_inline_arrays():
    feature = PairBands(S1.shape, S1.dtype, S1.bands)
    assert feature() == PairBands.pa_type
    assert feature.encode_example({"s1": 3, "s2": None}) == {"s1": 3, "s2": None, "bytes": None}
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


def test_a_reference_needs_the_cache_folder(vqa):
    builder, ds = vqa
    text_file = ds["bench"].cache_files[0]["filename"]
    bare = datasets.Dataset.from_file(text_file)  # not through the builder: the folder is unknown
    assert isinstance(bare.features["s1"], PairBands)
    with pytest.raises(ValueError, match=r"the cache folder is unknown: use bentxt.imagery_table.attach"):
        bare[0]
    attach(bare, builder.cache_dir)
    assert np.array_equal(bare[0]["s1"], ds["bench"][0]["s1"])


def test_a_cache_moved_with_its_folder_keeps_working(vqa, tmp_path):
    builder, ds = vqa
    moved = tmp_path / "moved"
    shutil.copytree(builder.cache_dir, moved)
    name = os.path.basename(ds["test"].cache_files[0]["filename"])
    copy = attach(datasets.Dataset.from_file(str(moved / name)), str(moved))
    for i in (0, copy.num_rows - 1):
        for column in ("s2_10m", "s2_60m", "s1"):
            assert np.array_equal(copy[i][column], ds["test"][i][column])
    shutil.rmtree(moved / IMAGERY_DIR)
    copy = attach(datasets.Dataset.from_file(str(moved / name)), str(moved))
    with pytest.raises(FileNotFoundError, match=r"the imagery tables of this dataset are missing.*save_to_disk"):
        copy[0]


def test_attach_reaches_dataset_dicts_and_nested_features(vqa_patch):
    builder, ds = vqa_patch
    features = datasets.Features({"a": {"b": PairBands(S1.shape, S1.dtype, S1.bands)},
                                  "c": datasets.List({"d": PairBands(S1.shape, S1.dtype, S1.bands)})})
    attach(features, "/some/where")
    assert features["a"]["b"].root == features["c"].feature["d"].root == "/some/where"
    dd = datasets.DatasetDict({k: datasets.Dataset.from_file(v.cache_files[0]["filename"]) for k, v in ds.items()})
    attach(dd, builder.cache_dir)
    assert all(part.features["s2_10m"].root == builder.cache_dir for part in dd.values())
    assert np.array_equal(dd["train"][0]["s2_10m"], ds["train"][0]["s2_10m"])


def test_root_is_not_part_of_equality():
    a, b = PairBands(S1.shape, S1.dtype, S1.bands), PairBands(S1.shape, S1.dtype, S1.bands)
    b.root = "/x"
    assert a == b


def test_out_of_range_rows_and_a_missing_folder_are_clear_errors(vqa, tmp_path):
    builder, _ = vqa
    tables = open_tables(builder.cache_dir)
    assert open_tables(builder.cache_dir) is tables  # one per process and folder
    n = len(tables.names("s1"))
    with pytest.raises(IndexError, match=rf"imagery row {n} of s1 is outside .* \({n} rows\)"):
        tables.take("s1", S1, n)
    with pytest.raises(FileNotFoundError, match=r"no folder .*imagery"):
        open_tables(str(tmp_path))


# ----------------------------------------------------------------------------- writing


def test_array3d_round_trips_without_python_lists():
    stack = np.random.default_rng(0).integers(0, 10_000, (5, *S2_GROUPS[1].shape)).astype(np.uint16)
    feature = datasets.Array3D(S2_GROUPS[1].shape, "uint16")
    column = array3d(stack, feature)
    assert column.type == feature()
    assert np.array_equal(array3d_values(column, S2_GROUPS[1].shape), stack)
    # the same values datasets itself decodes from the column
    table = pa.table({"x": column})
    decoded = datasets.Dataset(table).cast(datasets.Features({"x": feature})).with_format("numpy")[:]["x"]
    assert np.array_equal(decoded, stack)


def test_imagery_writer_batches_and_numbers_rows(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "s2-00000.arrow"
    writer = ImageryWriter(str(path), S2_GROUPS, batch_rows=3)
    written = {}
    for k in range(7):  # two full batches and a partial one
        name = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00"
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        assert writer.add(name, arrays) == k
        written[name] = arrays
    assert writer.close() == 7
    table = datasets.Dataset.from_file(str(path)).with_format("numpy")
    assert list(table["name"]) == list(written)
    for i, (name, arrays) in enumerate(written.items()):
        for g in S2_GROUPS:
            assert np.array_equal(table[i][g.name], np.stack([arrays[b] for b in g.bands]))
    tables = ImageryTables(str(tmp_path.parent / tmp_path.name))
    os.makedirs(tmp_path / IMAGERY_DIR)
    shutil.move(str(path), tmp_path / IMAGERY_DIR / path.name)
    shutil.copy(tmp_path / IMAGERY_DIR / path.name, tmp_path / IMAGERY_DIR / "s2-00001.arrow")
    # rows are numbered across a sensor's files in name order
    assert tables.names("s2") == list(written) * 2
    last = list(written.values())[-1]
    assert np.array_equal(tables.take("s2", S2_GROUPS[2], 13), np.stack([last[b] for b in S2_GROUPS[2].bands]))


def test_full_batches_are_decoded_in_place_and_written_without_a_copy(tmp_path):
    """After the first batch, bands are decoded into the file's write buffer; a failed last patch leaves no trace."""
    rng = np.random.default_rng(3)
    path = tmp_path / "s2-00000.arrow"
    writer = ImageryWriter(str(path), S2_GROUPS, batch_rows=4)
    written = []
    for k in range(13):  # batches 2 and 3 in place, a last one of 1 row from the writer's own buffers
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        writer.add(f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00", arrays)
        written.append(arrays)
    for slot in writer.slots().values():  # a 14th patch starts decoding, then fails: never committed
        slot[...] = 7
    pixels_per_row = sum(len(g.bands) * g.size * g.size * 2 for g in S2_GROUPS)
    assert writer.close() == 13
    assert writer._sink.placed_bytes == 2 * 4 * pixels_per_row
    table = datasets.Dataset.from_file(str(path)).with_format("numpy")
    assert table.num_rows == 13
    for i in (0, 3, 4, 11, 12):
        for g in S2_GROUPS:
            assert np.array_equal(table[i][g.name], np.stack([written[i][b] for b in g.bands]))


def test_a_write_over_bands_waiting_in_place_is_refused(tmp_path):
    from bentxt.imagery_table import DirectFile

    sink = DirectFile(str(tmp_path / "out.bin"), buffer_bytes=1 << 16)
    region = sink.reserve(300, [(100, 50)])
    region[100:150] = b"p" * 50
    sink.write(b"h" * 100)  # up to the piece: fine
    with pytest.raises(RuntimeError, match="would overwrite decoded bands"):
        sink.write(b"x" * 60)
    sink.release()
    sink.write(b"y" * 60)
    sink.close()
    assert (tmp_path / "out.bin").read_bytes() == b"h" * 100 + b"y" * 60


def test_reading_a_row_maps_the_batches_and_copies_nothing(tmp_path):
    """A group's rows are views over the memory map: joining a file's batches would copy the whole group.

    (The release's S2 imagery file holds 549,488 rows: 63 GB of 10 m bands.)
    """
    rng = np.random.default_rng(2)
    os.makedirs(tmp_path / IMAGERY_DIR)
    writer = ImageryWriter(str(tmp_path / IMAGERY_DIR / "s2-00000.arrow"), S2_GROUPS, batch_rows=4)
    written = []
    for k in range(30):  # seven full batches and a partial one
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        writer.add(f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00", arrays)
        written.append(arrays)
    writer.close()
    tables = ImageryTables(str(tmp_path))
    before = pa.total_allocated_bytes()
    starts, views = tables.group("s2", S2_GROUPS[0])
    rows = [tables.take("s2", S2_GROUPS[0], row) for row in (0, 3, 4, 17, 29)]
    assert pa.total_allocated_bytes() - before < 4096  # no batch was copied out of the map
    assert list(starts) == list(range(0, 29, 4)) + [30] and len(views) == 8
    for row, value in zip((0, 3, 4, 17, 29), rows):
        assert np.array_equal(value, np.stack([written[row][b] for b in S2_GROUPS[0].bands]))
    with pytest.raises(IndexError, match="imagery row 30 of s2"):
        tables.take("s2", S2_GROUPS[0], 30)


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
    # columns it did not read stay references into the imagery tables
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


@pytest.mark.parametrize("folder", ["tmp", "shm"])
def test_direct_file_writes_exactly_the_bytes_given(tmp_path, folder):
    """O_DIRECT with aligned blocks, double buffering and a truncated tail; tmpfs (no O_DIRECT) falls back."""
    import os

    from bentxt.imagery_table import DirectFile

    if folder == "shm":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm")
        import tempfile

        tmp_path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (1, 4095, 4097, 70_000, 3, 200_000, 12_345)]
    path = tmp_path / "out.bin"
    sink = DirectFile(str(path), buffer_bytes=1 << 16)
    for piece in pieces:
        assert sink.write(piece) == len(piece)
    sink.close()
    assert path.read_bytes() == b"".join(pieces)
    if folder == "shm":
        import shutil

        shutil.rmtree(tmp_path)
