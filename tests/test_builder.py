"""The builder end to end on generated fixtures: values, join, shards, streaming, name resolution.

Unit tests of the modules behind it live in their own files (``test_config.py``,
``test_join.py``, ``test_imagery_table.py``, ``test_cache.py``, ...). Helpers
here (``prepare``, ``assert_same_examples``) are shared by other end-to-end files.
"""

from __future__ import annotations

import glob
import logging
import math
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import bigearthnet_txt as bt
from bentxt import bands as B
from bentxt import sources
from bentxt.text import annotations as ann
from bentxt.text import grammar as text
from bentxt.cache.pair_bands import PairBands
from make_fixtures import REAL_PATCH_ID
from publisher_loader import stack_and_interpolate

SENSOR_GROUPS = {s: [g for g in B.BAND_GROUPS if g.sensor in bt.SENSORS[s]] for s in bt.SENSORS}


def prepare(config, fixture, cache, num_proc=None, **kwargs):
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=str(fixture.root), cache_dir=str(cache), **kwargs)
    builder.download_and_prepare(num_proc=num_proc)
    return builder, builder.as_dataset()


def expected_rows(fixture, types=None, split=None):
    t = fixture.table
    if types is not None:
        t = t.filter(pc.is_in(t["type"], pa.array(list(types))))
    if split is not None:
        t = t.filter(pc.equal(t["split"], split))
    return t


@pytest.fixture(scope="module")
def s1s2_all(fixture_data, tmp_path_factory):
    return prepare("s1s2-all", fixture_data, tmp_path_factory.mktemp("cache"))


# ----------------------------------------------------------------------------- comparing examples


def same_value(a, b) -> bool:
    """Equal as data: arrays exactly (dtype of arrays included), NaN equal to NaN, numpy scalars as Python values."""
    a, b = _plain(a), _plain(b)
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if _records(a) or _records(b):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        x, y = np.asarray(a), np.asarray(b)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype.kind in "fiu" and a.dtype != b.dtype:
            return False
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            return bool(np.array_equal(x.astype(np.float64), y.astype(np.float64), equal_nan=True))
        return x.tolist() == y.tolist()
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _records(value) -> bool:
    return isinstance(value, (list, np.ndarray)) and len(value) > 0 and isinstance(value[0], dict)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    return v


def assert_same_examples(streamed, prepared):
    """Streamed examples (dicts with Array3D arrays) against a prepared split: same rows, order, values, dtypes."""
    prepared = prepared.with_format("numpy", dtype=None)
    assert len(streamed) == prepared.num_rows
    for i, s in enumerate(streamed):
        p = prepared[i]
        assert set(s) == set(p)
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == p[k].dtype and np.array_equal(v, p[k]), k
            else:
                assert same_value(v, p[k]), (i, k, v, p[k])


# ----------------------------------------------------------------------------- values


def test_all_splits_hold_every_row_with_exact_bands(s1s2_all, fixture_data):
    _, ds = s1s2_all
    assert set(ds) == {"train", "validation", "test", "bench"}
    for split, part in ds.items():
        rows = expected_rows(fixture_data, split=split)
        assert part.num_rows == len(rows)
        assert sorted(part["ID"]) == sorted(rows["ID"].to_pylist())
        assert all(isinstance(part.features[g.name], PairBands) for g in B.BAND_GROUPS)
    part = ds["test"].with_format("numpy", dtype=None)
    by_id = {r["ID"]: r for r in fixture_data.table.to_pylist()}
    for i in range(part.num_rows):
        ex = part[i]
        patch = fixture_data.patch(str(ex["patch_id"]))
        row = by_id[int(ex["ID"])]
        assert str(ex["s1_name"]) == patch.s1_name == row["s1_name"]
        for column in ("input", "output", "type", "category", "split", "country", "season", "climate_zone"):
            assert str(ex[column]) == row[column]
        assert float(ex["latitude"]) == row["latitude"] and float(ex["longitude"]) == row["longitude"]
        for group in B.BAND_GROUPS:
            assert ex[group.name].dtype == np.dtype(group.dtype) and ex[group.name].shape == group.shape
            assert np.array_equal(ex[group.name], np.stack([patch.bands[b] for b in group.bands]))


def test_category_stays_literal_and_parsed_fields_are_fixed_size(s1s2_all):
    """Captions keep the parquet's literal "None" category; box/point/options are never null (NaN / "" instead)."""
    _, ds = s1s2_all
    test = {r["ID"]: r for r in ds["test"]}
    assert test[27533]["type"] == "captioning" and test[27533]["category"] == "None"
    assert test[27527]["bbox"] == [0.0, 0.0, 0.93, 0.45] and test[27527]["point"] == [0.35, 0.16]
    assert test[27530]["bbox"] == [0.0, 0.0, 1.0, 0.94] and len(test[27530]["point"]) == 2
    assert all(math.isnan(x) for x in test[27530]["point"])  # a reference prompt has no point
    assert test[27536]["options"][2] == "Temperate, no dry season, warm summer"
    assert all(math.isnan(x) for x in test[27536]["bbox"])
    assert test[27519]["options"] == ["", "", "", ""] and test[27519]["output"] == "yes"
    for r in test.values():
        assert not any(v is None for v in r.values())
        assert len(r["bbox"]) == 4 and len(r["point"]) == 2 and len(r["options"]) == 4
        assert (not any(math.isnan(x) for x in r["bbox"])) == (r["type"] == "bounding box")
        assert (r["options"] != ["", "", "", ""]) == (r["type"] == "mcq")


@pytest.mark.parametrize("task", list(bt.TASKS))
def test_task_configs_select_their_types(task, fixture_data, tmp_path):
    _, ds = prepare(f"s2-{task}-test", fixture_data, tmp_path)
    assert list(ds) == ["test"]
    rows = expected_rows(fixture_data, bt.TASKS[task], "test")
    assert sorted(ds["test"]["ID"]) == sorted(rows["ID"].to_pylist())
    assert set(ds["test"]["type"]) == set(bt.TASKS[task])
    assert "s1" not in ds["test"].features and "s2_10m" in ds["test"].features


def test_s1_config_reads_only_s1_in_s1_archive_order(fixture_data, tmp_path):
    _, ds = prepare("s1-binary", fixture_data, tmp_path)
    assert [k for k in ds["train"].features if k.startswith("s")] == ["s1_name", "split", "season", "s1", "s1_epsg",
                                                                       "s1_transform", "s1_bounds"]
    part = ds["train"].with_format("numpy", dtype=None)
    names = [str(n) for n in part["s1_name"]]
    assert names == sorted(names)  # S1 archive order: `_10_5` before `_9_5`
    for i in range(part.num_rows):
        patch = fixture_data.patch(str(part[i]["patch_id"]))
        assert np.array_equal(part[i]["s1"], np.stack([patch.bands["VV"], patch.bands["VH"]]))
        assert part[i]["s1"].dtype == np.float32


def test_filters_select_rows_and_reject_unknown_values(fixture_data, tmp_path):
    countries = sorted({p.country for p in fixture_data.patches})[:1]
    _, ds = prepare("s2-mcq", fixture_data, tmp_path / "a", countries=countries, categories=["count", "season"])
    got = [r for part in ds.values() for r in part]
    t = fixture_data.table.to_pylist()
    want = [r["ID"] for r in t if r["type"] == "mcq" and r["country"] in countries and r["category"] in ("count", "season")]
    assert got and sorted(r["ID"] for r in got) == sorted(want)
    with pytest.raises(ValueError, match=r"seasons=\['Monsoon'\].*Valid values: \[.*'Summer'"):
        prepare("s2-mcq", fixture_data, tmp_path / "b", seasons=["Monsoon"])
    with pytest.raises(ValueError, match=r"categories.*'point'.*not found.*Valid values"):
        prepare("s2-vqa", fixture_data, tmp_path / "c", categories=["point"])


def test_token_replacement_like_the_publisher(fixture_data, tmp_path):
    kept = {r["ID"]: r["input"] for r in prepare("s2-grounding-test", fixture_data, tmp_path / "a")[1]["test"]}
    assert kept[27527].startswith(
        "Generate a bounding box for the land cover class instance found at <point>(0.35, 0.16)</point>"
    )
    stripped = {
        r["ID"]: r["input"]
        for r in prepare("s2-grounding-test", fixture_data, tmp_path / "b", point_token=["", ""], ref_token=["[", "]"])[1]["test"]
    }
    assert "found at (0.35, 0.16) in the satellite" in stripped[27527]
    assert stripped[27530] == "Identify a continuous patch of [broad-leaved forest]."
    with pytest.raises(ValueError, match="point_token"):
        bt.BigEarthNetTxt(config_name="s2-all", data_dir=str(fixture_data.root), cache_dir=str(tmp_path), point_token="ab")


def test_patch_layout_groups_annotations_per_image_pair(s1s2_all, fixture_data, tmp_path):
    _, by_patch = prepare("s1s2-all", fixture_data, tmp_path, layout="patch")
    _, by_row = s1s2_all
    for split in by_row:
        assert by_patch[split].num_rows == len(set(by_row[split]["patch_id"]))
        flat = [a for ex in by_patch[split] for a in ex["annotations"]]
        assert [a["ID"] for a in flat] == list(by_row[split]["ID"])  # same order, same rows
        assert [a["category"] for a in flat] == list(by_row[split]["category"])
    ex = by_patch["test"].with_format("numpy", dtype=None)[0]
    patch = fixture_data.patch(str(ex["patch_id"]))
    assert np.array_equal(ex["s2_20m"], np.stack([patch.bands[b] for b in B.BAND_GROUPS[1].bands]))
    assert len(ex["annotations"]) == len([r for r in fixture_data.table.to_pylist() if r["patch_id"] == patch.patch_id])


@pytest.mark.parametrize(
    "bands,img_size,mode",
    [("S1S2-10m20m", 120, "nearest"), ("RGB", 120, "nearest"), (["B01", "VH", "B8A"], 128, "nearest"), ("all", 64, "bilinear")],
)
def test_band_selection_matches_the_publisher_stacking(bands, img_size, mode, fixture_data, tmp_path):
    _, ds = prepare("s1s2-binary-bench", fixture_data, tmp_path, bands=bands, img_size=img_size, resample=mode)
    names = B.resolve_bands(bands)
    feature = ds["bench"].features["image"]
    assert isinstance(feature, PairBands)
    assert (feature.shape, feature.dtype) == ((len(names), img_size, img_size), "float32")
    assert not any(g.name in ds["bench"].features for g in B.BAND_GROUPS)
    part = ds["bench"].with_format("numpy", dtype=None)
    for pid in sorted(set(part["patch_id"])):
        i = list(part["patch_id"]).index(pid)
        expected = stack_and_interpolate(fixture_data.patch(str(pid)).bands, names, img_size, mode)
        got = part[i]["image"]
        assert got.dtype == np.float32 and got.shape == expected.shape
        if mode == "nearest":
            assert np.array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_data_dir_missing_a_file_says_which_and_where(fixture_data, tmp_path):
    os.symlink(fixture_data.parquet, tmp_path / "BigEarthNet.txt.parquet")
    os.symlink(fixture_data.s2_archive, tmp_path / "BigEarthNet-S2.tar.zst")
    with pytest.raises(ValueError, match=r"has no BigEarthNet-S1.tar.zst.*zenodo.org/records/10891137"):
        b = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
        b.download_and_prepare()
    _, ds = prepare("s2-captioning", type("F", (), {"root": tmp_path})(), tmp_path / "c2")  # s2 configs need no S1
    assert sum(p.num_rows for p in ds.values()) == len(expected_rows(fixture_data, ["captioning"]))


# ----------------------------------------------------------------------------- the join


def test_missing_and_extra_patches_are_counted_and_reported(tmp_path, caplog):
    from make_fixtures import make_fixture

    fx = make_fixture(tmp_path / "fx", seed=3, archive_only=1, text_only=1)
    missing = next(p for p in fx.patches if not p.in_archives)
    with pytest.raises(bt.MissingPatchError,
                       match=rf"1 image pair\(s\) with texts are missing from the imagery.*{missing.patch_id}"):
        prepare(f"s1s2-all-{missing.split}", fx, tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        _, ds = prepare(f"s1s2-all-{missing.split}", fx, tmp_path / "b", skip_missing=True)
    assert missing.patch_id not in set(ds[missing.split]["patch_id"])
    assert "1 missing from the imagery (skipped)" in caplog.text
    extra = len([p for p in fx.patches if p.in_archives]) - len(
        {p.patch_id for p in fx.patches if p.split == missing.split and p.in_archives}
    )
    assert f"{extra} imagery patch(es) outside this selection" in caplog.text
    assert ds[missing.split].num_rows == len(expected_rows(fx, split=missing.split)) - missing.rows
    # streaming reports at the end of the split
    builder = bt.BigEarthNetTxt(config_name=f"s2-all-{missing.split}", data_dir=str(fx.root), cache_dir=str(tmp_path / "c"))
    with pytest.raises(bt.MissingPatchError, match=missing.patch_id):
        list(builder.as_streaming_dataset(split=missing.split))


def test_estimated_cache_size_is_logged_before_preparation(fixture_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        prepare("s1s2-vqa", fixture_data, tmp_path, layout="patch")
    messages = [r.getMessage() for r in caplog.records]
    line = next(m for m in messages if "estimated Arrow cache size" in m)
    n_vqa = len(expected_rows(fixture_data, ["binary", "mcq"]))
    assert f"{n_vqa} annotations on 8 image pairs" in line and "layout=patch" in line
    assert messages.index(line) < next(i for i, m in enumerate(messages) if "image pair(s) joined" in m)


def test_an_empty_selection_says_which_option_emptied_it(fixture_data, tmp_path):
    country = next(p.country for p in fixture_data.patches if p.split == "test")
    assert country not in {p.country for p in fixture_data.patches if p.split == "bench"}
    with pytest.raises(bt.EmptySelectionError,
                       match=rf"selects no text: no row has task 'all'.*splits \['bench'\] and countries=\['{country}'\]"):
        prepare("s2-all-bench", fixture_data, tmp_path, countries=[country])


# ----------------------------------------------------------------------------- shards


def test_num_proc_writes_shards_in_parallel_with_the_same_content(s1s2_all, fixture_data, tmp_path, monkeypatch):
    from bentxt import join

    monkeypatch.setattr(join, "TEXTS_PER_PROCESS", 1)  # the fixture's splits are far below the real threshold
    builder, ds = prepare("s1s2-all", fixture_data, tmp_path, num_proc=2)
    for split in ("train", "validation", "test", "bench"):
        files = sorted(glob.glob(os.path.join(builder.cache_dir, f"bigearthnet_txt-{split}-*-of-*.arrow")))
        assert len(files) == 2, files
        assert list(ds[split]["ID"]) == list(s1s2_all[1][split]["ID"])  # same order as with one process
        a, b = (d.with_format("numpy", columns=["s2_10m", "s1"])[:] for d in (ds[split], s1s2_all[1][split]))
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert builder.info.splits["train"].shard_lengths and sum(builder.info.splits["train"].shard_lengths) == ds["train"].num_rows


def test_max_shard_size_is_honoured(fixture_data, tmp_path):
    builder = bt.BigEarthNetTxt(config_name="s2-all-test", data_dir=str(fixture_data.root), cache_dir=str(tmp_path),
                                writer_batch_size=4)
    builder.download_and_prepare(max_shard_size=4_000)  # text rows are small now: pixels live in the imagery tables
    files = glob.glob(os.path.join(builder.cache_dir, "bigearthnet_txt-test-*.arrow"))
    assert len(files) >= 2, files
    ds = builder.as_dataset(split="test")
    assert ds.num_rows == len(expected_rows(fixture_data, split="test"))
    assert sorted(ds["ID"]) == sorted(expected_rows(fixture_data, split="test")["ID"].to_pylist())


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("config,layout", [("s1s2-all", "annotation"), ("s1-vqa", "annotation"), ("s2-grounding", "patch")])
def test_streamed_examples_equal_prepared_ones(config, layout, fixture_data, tmp_path):
    builder, ds = prepare(config, fixture_data, tmp_path, layout=layout)
    streaming = builder.as_streaming_dataset()
    for split in ds:
        streamed = list(streaming[split])
        groups = SENSOR_GROUPS[config.split("-")[0]]
        assert streamed and all(isinstance(streaming[split].features[g.name], datasets.Array3D) for g in groups)
        assert_same_examples(streamed, ds[split])


@pytest.mark.parametrize("config,layout", [("s1s2-all", "annotation"), ("s2-grounding", "patch")])
def test_texts_streamed_in_the_background_give_the_prepared_examples(config, layout, fixture_data, tmp_path, monkeypatch):
    """A sparse selection (a bench split at full scale) streams its texts as they are decoded: every split here."""
    builder, ds = prepare(config, fixture_data, tmp_path, layout=layout)
    monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)
    made = []
    original = ann.StreamedTexts.__init__
    monkeypatch.setattr(ann.StreamedTexts, "__init__", lambda self, *a, **k: made.append(self) or original(self, *a, **k))
    streaming = builder.as_streaming_dataset()
    for split in ds:
        assert_same_examples(list(streaming[split]), ds[split])
    assert len(made) == len(ds) and not any(t.is_alive() for texts in made for t in texts._threads)


@pytest.mark.parametrize("background", [False, True])
def test_streaming_over_http_reads_the_archives_as_a_stream(fixture_data, tmp_path, monkeypatch, background):
    from http_server import serve_directory

    _, ds = prepare("s1s2-vqa-bench", fixture_data, tmp_path)
    if background:  # the texts decoded on threads that open the parquet over HTTP too
        monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)
    with serve_directory(str(fixture_data.root)) as (url, log):
        names = [("annotations", "BigEarthNet.txt.parquet"), ("s1", "BigEarthNet-S1.tar.zst"), ("s2", "BigEarthNet-S2.tar.zst")]
        files = {k: f"{url}/{n}" for k, n in names}
        it = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa-bench", data_files=files, split="bench", streaming=True,
                                   cache_dir=str(tmp_path / "c"))
        assert_same_examples(list(it), ds["bench"])
    archive_gets = [r for r in log if r[0] == "GET" and r[1].endswith(".tar.zst")]
    assert archive_gets and all(r[2] in ("", "bytes=0-") for r in archive_gets)  # read front to back, never seeked


# ----------------------------------------------------------------------------- name resolution


def test_load_dataset_by_name_never_globs_the_working_directory(fixture_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.csv").write_text("a,b\n1,2\n")
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s2-vqa")
    assert not builder.config.data_files and type(builder).__name__ == "BigEarthNetTxt"
    assert sources.resolve(builder.config, ("s2",))["s2"] == sources.ArchiveSource((sources.release()["s2"]["url"],))
    assert "s1s2-vqa" in datasets.get_dataset_config_names("bigearthnet_txt")
    ds = datasets.load_dataset("bigearthnet_txt", "s2-binary-train", data_dir=str(fixture_data.root),
                               cache_dir=str(tmp_path / "c"))
    assert ds["train"].num_rows == len(expected_rows(fixture_data, ["binary"], "train"))
    it = datasets.load_dataset("bigearthnet_txt", "s2-binary-train", data_dir=str(fixture_data.root), streaming=True,
                               split="train")
    assert sorted(r["ID"] for r in it) == sorted(ds["train"]["ID"])


def test_real_patch_is_joined_to_its_s1_partner_through_s1_name(s1s2_all, fixture_data):
    _, ds = s1s2_all
    test = ds["test"].filter(lambda r: r["patch_id"] == REAL_PATCH_ID)
    assert set(test["s1_name"]) == {"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"}
    assert sorted(test["ID"]) == sorted(r["ID"] for r in fixture_data.table.to_pylist() if r["patch_id"] == REAL_PATCH_ID)
    assert text.parse_bbox(test.filter(lambda r: r["ID"] == 27531)["output"][0], 27531) == (0.0, 0.37, 1.0, 1.0)
    patch = fixture_data.patch(REAL_PATCH_ID)
    assert np.array_equal(test[0]["s1"], np.stack([patch.bands["VV"], patch.bands["VH"]]))


@pytest.mark.parametrize("sensor", list(bt.SENSORS))
@pytest.mark.parametrize("task", list(bt.TASKS))
def test_every_config_family_prepares_its_rows_and_sensors(sensor, task, fixture_data, tmp_path):
    _, ds = prepare(f"{sensor}-{task}-bench", fixture_data, tmp_path)
    rows = expected_rows(fixture_data, bt.TASKS[task], "bench")
    got = ds["bench"] if "bench" in ds else None
    assert (got.num_rows if got is not None else 0) == len(rows)
    if got is not None:
        arrays = sorted(k for k, f in got.features.items() if isinstance(f, PairBands))
        assert arrays == sorted(g.name for g in SENSOR_GROUPS[sensor])
        assert sorted(got["ID"]) == sorted(rows["ID"].to_pylist())
        first = got[0]
        patch = fixture_data.patch(first["patch_id"])
        for g in SENSOR_GROUPS[sensor]:
            assert np.array_equal(first[g.name], np.stack([patch.bands[b] for b in g.bands]))


def test_prepare_from_http_urls_reads_the_downloaded_archives(fixture_data, tmp_path):
    """Non-streaming: remote archives land in the download cache under a hash, without their extension."""
    from http_server import serve_directory

    _, local = prepare("s1s2-vqa-bench", fixture_data, tmp_path / "local")
    with serve_directory(str(fixture_data.root)) as (url, _log):
        names = [("annotations", "BigEarthNet.txt.parquet"), ("s1", "BigEarthNet-S1.tar.zst"), ("s2", "BigEarthNet-S2.tar.zst")]
        files = {k: f"{url}/{n}" for k, n in names}
        builder = bt.BigEarthNetTxt(config_name="s1s2-vqa-bench", data_files=files, cache_dir=str(tmp_path / "remote"))
        builder.download_and_prepare()
    downloaded = glob.glob(str(tmp_path / "remote" / "downloads" / "*"))
    assert downloaded and not any(p.endswith(".zst") for p in downloaded)
    remote = builder.as_dataset()["bench"]
    assert_same_examples([remote[i] for i in range(remote.num_rows)], local["bench"])


def test_any_fsspec_protocol_works_like_hf(fixture_data, tmp_path):
    """hf:// goes through fsspec like any other protocol; memory:// exercises that path offline."""
    import fsspec

    memory = fsspec.filesystem("memory")
    names = {"annotations": "BigEarthNet.txt.parquet", "s1": "BigEarthNet-S1.tar.zst", "s2": "BigEarthNet-S2.tar.zst"}
    for name in names.values():
        memory.pipe(f"/ben-{tmp_path.name}/{name}", (fixture_data.root / name).read_bytes())
    files = {k: f"memory://ben-{tmp_path.name}/{n}" for k, n in names.items()}
    _, local = prepare("s1s2-grounding-test", fixture_data, tmp_path / "local")
    builder = bt.BigEarthNetTxt(config_name="s1s2-grounding-test", data_files=files, cache_dir=str(tmp_path / "mem"))
    assert_same_examples(list(builder.as_streaming_dataset(split="test")), local["test"])
    builder.download_and_prepare()
    assert list(builder.as_dataset()["test"]["ID"]) == list(local["test"]["ID"])
