"""bentxt/cache/formatting.py: formats keep the bands' dtypes; iteration, distribution and DataLoaders over the default
columns."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets.distributed import split_dataset_by_node

import bigearthnet_txt as bt
from bentxt import bands as B
from bentxt.cache.pair_bands import PairBands
from bentxt.text import annotations as ann

GROUPS = {g.name: g for g in B.BAND_GROUPS}


@pytest.fixture(scope="module")
def prepared(fixture_data, tmp_path_factory):
    """s1s2-all prepared: its test split mixes grounding rows with every other type."""
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root),
                                cache_dir=str(tmp_path_factory.mktemp("fmt")))
    builder.download_and_prepare()
    return builder.as_dataset()


def native(fixture, patch_id, column):
    patch = fixture.patch(str(patch_id))
    return np.stack([patch.bands[b] for b in GROUPS[column].bands])


def test_the_default_format_gives_numpy_arrays(prepared, fixture_data):
    test = prepared["test"]
    ex = test[0]
    for column, group in GROUPS.items():
        assert type(ex[column]) is np.ndarray
        assert ex[column].dtype == np.dtype(group.dtype) and ex[column].shape == group.shape
        assert np.array_equal(ex[column], native(fixture_data, ex["patch_id"], column))
    assert isinstance(ex["ID"], int) and isinstance(ex["input"], str) and isinstance(ex["bbox"], list)


def test_numpy_keeps_band_dtypes_on_batches_mixing_every_type(prepared, fixture_data):
    test = prepared["test"].with_format("numpy")
    assert set(prepared["test"]["type"]) == {"binary", "mcq", "captioning", "bounding box"}
    batch = test[:]  # one batch over every row: grounding rows beside rows without a box
    n = test.num_rows
    for column, group in GROUPS.items():
        assert batch[column].dtype == np.dtype(group.dtype) and batch[column].shape == (n, *group.shape)
    for i, pid in enumerate(batch["patch_id"]):
        assert np.array_equal(batch["s2_10m"][i], native(fixture_data, pid, "s2_10m"))
        assert np.array_equal(batch["s1"][i], native(fixture_data, pid, "s1"))
    assert batch["bbox"].dtype.kind == "f" and batch["bbox"].shape == (n, 4)
    assert batch["point"].shape == (n, 2) and batch["options"].shape == (n, 4)
    grounding = batch["type"] == "bounding box"
    assert grounding.any() and (~grounding).any()
    assert not np.isnan(batch["bbox"][grounding]).any() and np.isnan(batch["bbox"][~grounding]).all()
    assert batch["ID"].dtype == np.int64
    row = test[3]
    assert row["s2_20m"].dtype == np.uint16 and row["s2_20m"].shape == GROUPS["s2_20m"].shape
    # one column at a time, the same
    column = test["s2_60m"][:]
    assert column.dtype == np.uint16 and np.array_equal(column, batch["s2_60m"])


def test_an_explicit_dtype_still_wins(prepared):
    test = prepared["test"]
    assert test.with_format("numpy", dtype=np.float32)[:2]["s2_10m"].dtype == np.float32
    assert test.with_format("numpy", dtype=None)[:2]["s2_10m"].dtype == np.uint16
    assert test.with_format("torch", dtype=torch.float64)[:2]["s2_10m"].dtype == torch.float64


def test_torch_gives_int32_for_uint16_and_keeps_float32(prepared, fixture_data):
    test = prepared["test"].with_format("torch")
    batch = test[:5]
    for column, group in GROUPS.items():
        expected = torch.int32 if group.dtype == "uint16" else torch.float32
        assert batch[column].dtype == expected and tuple(batch[column].shape) == (5, *group.shape)
    for i, pid in enumerate(batch["patch_id"]):
        assert np.array_equal(batch["s2_10m"][i].numpy(), native(fixture_data, pid, "s2_10m").astype(np.int32))
        assert np.array_equal(batch["s1"][i].numpy(), native(fixture_data, pid, "s1"))
    assert test[0]["s2_60m"].dtype == torch.int32 and test["s2_20m"][:].dtype == torch.int32
    assert batch["bbox"].dtype == torch.float32 and batch["ID"].dtype == torch.int64


def test_arrow_format_gives_the_stored_references(prepared):
    table = prepared["test"].with_format("arrow")[:3]
    assert isinstance(table, pa.Table) and table.num_rows == 3
    assert table.schema.field("s2_10m").type == PairBands.pa_type
    # a band column refers to its own sensor's row in that sensor's store, and carries no pixels
    for column, sensor, other in (("s2_10m", "s2", "s1"), ("s1", "s1", "s2")):
        for ref in table[column].to_pylist():
            assert ref["bytes"] is None and ref[other] is None and ref[f"{other}_store"] is None
            assert ref[sensor] >= 0 and ref[f"{sensor}_store"].startswith(f"{sensor}-")


def test_other_datasets_are_formatted_as_datasets_does(prepared):
    plain = datasets.Dataset.from_dict(
        {"a": [np.ones((1, 2, 2), np.uint16)], "b": [1.5]},
        features=datasets.Features({"a": datasets.Array3D((1, 2, 2), "uint16"), "b": datasets.Value("float64")}),
    )
    assert plain.with_format("numpy")[:]["a"].dtype == np.int64  # datasets' default
    assert plain.with_format("torch")[:]["a"].dtype == torch.int64
    assert prepared["test"].with_format("numpy")[:2]["latitude"].dtype == plain.with_format("numpy")[:]["b"].dtype


def test_to_iterable_dataset_and_split_by_node(prepared, fixture_data):
    test = prepared["test"]
    iterable = test.to_iterable_dataset(num_shards=2)
    rows = list(iterable)
    assert [r["ID"] for r in rows] == list(test["ID"])
    assert rows[0]["s2_10m"].dtype == np.uint16
    assert np.array_equal(rows[0]["s2_10m"], native(fixture_data, rows[0]["patch_id"], "s2_10m"))
    parts = [split_dataset_by_node(test, rank=r, world_size=2) for r in range(2)]
    ids = [list(p["ID"]) for p in parts]
    assert not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == sorted(test["ID"])
    assert np.array_equal(parts[1][0]["s1"], native(fixture_data, parts[1][0]["patch_id"], "s1"))
    streamed_parts = [list(split_dataset_by_node(iterable, rank=r, world_size=2)) for r in range(2)]
    ids = [[r["ID"] for r in p] for p in streamed_parts]
    assert all(ids) and not set(ids[0]) & set(ids[1]) and sorted(ids[0] + ids[1]) == sorted(test["ID"])


def _check_loader_batches(batches, fixture_data, expected_ids, uint_dtypes):
    seen = []
    for batch in batches:
        for key, value in batch.items():
            assert value is not None, key
            if isinstance(value, list):
                assert not any(v is None for v in value), key
        for column, group in GROUPS.items():
            assert batch[column].dtype in (uint_dtypes if group.dtype == "uint16" else (torch.float32,)), column
        for i, pid in enumerate(batch["patch_id"]):
            for column in GROUPS:
                assert np.array_equal(batch[column][i].numpy(), native(fixture_data, pid, column)), column
        assert batch["bbox"].shape[1:] == (4,) and batch["point"].shape[1:] == (2,)
        assert len(batch["options"]) == 4  # default collate transposes the 4 strings
        seen += batch["ID"].tolist()
    assert sorted(seen) == sorted(expected_ids)


def test_a_dataloader_with_two_workers_over_the_default_columns_of_a_prepared_config(prepared, fixture_data):
    test = prepared["test"]
    loader = torch.utils.data.DataLoader(test.with_format("torch"), batch_size=8, num_workers=2, shuffle=True)
    _check_loader_batches(loader, fixture_data, list(test["ID"]), (torch.int32,))


@pytest.mark.parametrize("background", [False, True])
def test_a_dataloader_with_two_workers_over_a_streamed_config(fixture_data, tmp_path, monkeypatch, background):
    if background:  # each worker decodes its split's texts on threads of its own (the workers are forked)
        monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)
    streamed = datasets.load_dataset("bigearthnet_txt", "s1s2-all", data_dir=str(fixture_data.root), streaming=True,
                                     split="test", cache_dir=str(tmp_path))
    assert all(isinstance(streamed.features[c], datasets.Array3D) for c in GROUPS)
    loader = torch.utils.data.DataLoader(streamed.with_format("torch"), batch_size=8, num_workers=2)
    expected = [r["ID"] for r in fixture_data.table.to_pylist() if r["split"] == "test"]
    # streamed Array3D columns are formatted by datasets itself (integers as int64)
    _check_loader_batches(loader, fixture_data, expected, (torch.int32, torch.int64))


def test_nan_marks_what_a_row_does_not_have_in_torch_too(prepared):
    batch = prepared["test"].with_format("torch", columns=["type", "bbox", "point"])[:]
    for kind, box, point in zip(batch["type"], batch["bbox"], batch["point"]):
        assert torch.isnan(box).all().item() == (kind != "bounding box")
        if kind != "bounding box":
            assert torch.isnan(point).all()
    assert math.isnan(float(batch["bbox"][[t != "bounding box" for t in batch["type"]].index(True)][0]))


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    return type(a) is type(b) and (a == b or (a != a and b != b))


@pytest.mark.parametrize("fmt,kwargs", [("numpy", {}), ("numpy", {"dtype": None}), ("torch", {})])
def test_fast_row_and_column_paths_give_what_datasets_gives(prepared, fmt, kwargs):
    """Our one-row extraction and flat tensorize must equal datasets' generic path on every non-band column."""
    from datasets.formatting.np_formatter import NumpyFormatter
    from datasets.formatting.torch_formatter import TorchFormatter

    from bentxt.cache.formatting import FastNumpyArrowExtractor, extract_one_row

    part = prepared["train"]
    bands = [k for k, f in part.features.items() if isinstance(f, PairBands)]
    texts = part.remove_columns(bands)
    generic_cls = NumpyFormatter if fmt == "numpy" else TorchFormatter
    generic = generic_cls(features=texts.features, **kwargs)
    ours = part.with_format(fmt, **kwargs)
    for i in range(part.num_rows):  # every type of row: binary, mcq, captions, grounding
        table = texts.data.slice(i, 1).table if hasattr(texts.data, "table") else texts.data.slice(i, 1)
        expected = generic.format_row(table)
        got = ours[i]
        for column, value in expected.items():
            if fmt == "torch" and isinstance(value, torch.Tensor):
                assert isinstance(got[column], torch.Tensor) and got[column].dtype == value.dtype
                assert torch.equal(torch.nan_to_num(got[column]), torch.nan_to_num(value)), column
            else:
                assert _same(got[column], value), (column, got[column], value)
        row = extract_one_row(table)
        generic_row = generic.numpy_arrow_extractor().extract_row(table)
        fast_row = FastNumpyArrowExtractor().extract_row(table)
        for column in generic_row:
            assert _same(row[column], generic_row[column]) and _same(fast_row[column], generic_row[column]), column


def test_streamed_and_exported_bands_keep_their_dtype_too(fixture_data, tmp_path):
    """Array3D band columns of our streamed rows: numpy keeps uint16, torch gives int32, rows and batches."""
    it = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa", data_dir=str(fixture_data.root), split="test",
                               streaming=True, cache_dir=str(tmp_path))
    row = next(iter(it.with_format("numpy")))
    assert row["s2_10m"].dtype == np.uint16 and row["s1"].dtype == np.float32
    batch = next(iter(it.with_format("numpy").iter(batch_size=3)))
    assert batch["s2_10m"].dtype == np.uint16 and batch["s2_10m"].shape == (3, 4, 120, 120)
    tensors = next(iter(it.with_format("torch").iter(batch_size=3)))
    assert tensors["s2_10m"].dtype == torch.int32 and tensors["s1"].dtype == torch.float32
