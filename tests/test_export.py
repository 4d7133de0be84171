"""The Parquet export: files, card, round trip through load_dataset (map-style and streaming), previews, sharding."""

from __future__ import annotations

import fnmatch
import io
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets.distributed import split_dataset_by_node
from PIL import Image

import bigearthnet_txt as bt
from bentxt import export as ex
from bentxt import preview
from bentxt.bands import BAND_COMBINATIONS, BAND_GROUPS
from make_fixtures import REAL_PATCH_ID, make_fixture
from test_builder import prepare

CONFIGS = ("s1s2-vqa", "s2-grounding", "s1-captioning")
SHARD = re.compile(r"^(train|validation|test|bench)-(\d{5})-of-(\d{5})\.parquet$")


@pytest.fixture(scope="module")
def exported(fixture_data, tmp_path_factory):
    """The three configs exported into one folder with export(), and the builder's prepared DatasetDicts."""
    root = tmp_path_factory.mktemp("export")
    cache = tmp_path_factory.mktemp("export-cache")
    for config in CONFIGS:
        assert ex.export(config, root, data_dir=str(fixture_data.root), cache_dir=str(cache), progress=False) == root
    prepared = {config: prepare(config, fixture_data, cache)[1] for config in CONFIGS}  # the same cache: no new work
    return root, prepared


def load(root: Path, config: str, tmp_path: Path, **kwargs):
    return datasets.load_dataset(str(root), config, cache_dir=str(tmp_path / "hf"), **kwargs)


def files_of(root: Path, config: str):
    return sorted((root / "data" / config).iterdir())


# ----------------------------------------------------------------------------- files and card


def test_card_lists_every_config_once_with_one_default(exported):
    root, prepared = exported
    text = (root / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in meta["configs"]] == list(CONFIGS)
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["s1s2-vqa"]
    assert meta["license"] == "cdla-permissive-1.0"
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert list(infos) == list(CONFIGS)
    for config in CONFIGS:
        splits = {s["name"]: s["num_examples"] for s in infos[config]["splits"]}
        assert splits == {split: part.num_rows for split, part in prepared[config].items()}
        assert infos[config]["download_size"] == sum(f.stat().st_size for f in files_of(root, config))
        entry = next(c for c in meta["configs"] if c["config_name"] == config)
        assert entry["data_files"] == [{"split": s, "path": f"data/{config}/{s}-*"} for s in prepared[config]]
    assert "BigEarthNet.txt" in text and "reBEN" in text and "CDLA-Permissive-1.0" in text and "## Usage" in text
    assert datasets.get_dataset_config_names(str(root)) == list(CONFIGS)
    assert datasets.load_dataset_builder(str(root)).config.name == "s1s2-vqa"


def test_files_are_per_split_cut_at_patches_with_small_row_groups_and_a_page_index(exported):
    root, prepared = exported
    for config in CONFIGS:
        seen_patches = set()
        files = files_of(root, config)
        by_split = {}
        for path in files:
            match = SHARD.match(path.name)
            assert match, path.name
            by_split.setdefault(match[1], []).append((int(match[2]), int(match[3])))
            pf = pq.ParquetFile(path)
            table = pf.read(columns=["split", "patch_id"])
            assert set(table["split"].to_pylist()) == {match[1]}  # a file holds one split
            patches = set(table["patch_id"].to_pylist())
            assert not patches & seen_patches  # a patch's rows are in one file
            seen_patches |= patches
            meta = pf.metadata
            assert b"huggingface" in meta.metadata and b"ARROW:schema" in meta.metadata
            for i in range(meta.num_row_groups):
                assert meta.row_group(i).total_byte_size <= ex.VIEWER_MAX_ROW_GROUP_BYTES
                assert pf.read_row_group(i).nbytes <= ex.MAX_ROW_GROUP_BYTES
                codecs = {meta.row_group(i).column(j).path_in_schema: meta.row_group(i).column(j).compression
                          for j in range(meta.num_columns)}
                assert {k: v for k, v in codecs.items() if k.startswith("preview.")} == {"preview.bytes": "UNCOMPRESSED", "preview.path": "UNCOMPRESSED"}
                assert {v for k, v in codecs.items() if not k.startswith("preview.")} == {"ZSTD"}
                for j in range(meta.num_columns):
                    chunk = meta.row_group(i).column(j)
                    # the offset index (page locations) is what page-pruned reads need; PNG bytes get no min/max column index
                    assert chunk.has_offset_index, chunk.path_in_schema
                    assert chunk.has_column_index or chunk.path_in_schema == "preview.bytes", chunk.path_in_schema
        for split, names in by_split.items():
            n = names[0][1]
            assert sorted(k for k, _ in names) == list(range(n)) and {m for _, m in names} == {n}
            patches = len(set(prepared[config][split]["patch_id"]))
            assert n == min(patches, 4)  # fixture splits have 1-2 patches: one file each


def test_row_groups_follow_the_byte_budget(exported, tmp_path):
    _, prepared = exported
    part = prepared["s2-grounding"]
    budget = 600_000
    ex.export_dataset(part, tmp_path, "s2-grounding", max_row_group_bytes=budget, min_shards=1, progress=False)
    plan = ex.plan_shards(part["test"], "patch_id", max_row_group_bytes=budget)
    assert plan.rows_per_group == int(budget // plan.bytes_per_row) >= 1
    path = tmp_path / "data" / "s2-grounding" / "test-00000-of-00001.parquet"  # min_shards=1: one file per split
    pf = pq.ParquetFile(path)
    rows = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    assert len(rows) > 1 and set(rows[:-1]) == {plan.rows_per_group} and sum(rows) == part["test"].num_rows
    assert all(pf.read_row_group(i).nbytes <= budget for i in range(len(rows)))


def test_reexport_replaces_shards_and_keeps_the_default(exported, tmp_path):
    root, prepared = exported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ex.export_dataset(prepared["s2-grounding"], copy, "s2-grounding", min_shards=1, progress=False)
    assert [p.name for p in files_of(copy, "s2-grounding")] == [
        f"{s}-00000-of-00001.parquet" for s in ("bench", "test", "train", "validation")
    ]
    meta = yaml.safe_load((copy / "README.md").read_text().split("---\n")[1])
    assert [c["config_name"] for c in meta["configs"]] == list(CONFIGS)
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["s1s2-vqa"]
    assert not any(p.name.startswith(".") for p in (copy / "data").iterdir())  # no staging folder left


def test_a_card_without_default_gets_one(tmp_path):
    """A card written by push_to_hub for a lone config has no `default` key (the KeyError of notes section 5)."""
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: other\n  data_files:\n  - split: train\n    path: other/train-*\n---\n"
    )
    info = datasets.DatasetInfo(features=datasets.Features({"a": datasets.Value("int64")}),
                                splits=datasets.SplitDict({"train": datasets.SplitInfo("train", 8, 1)}))
    ex.update_card(tmp_path, "s2-vqa", info)
    meta = yaml.safe_load((tmp_path / "README.md").read_text().split("---\n")[1])
    assert [(c["config_name"], c.get("default", False)) for c in meta["configs"]] == [("other", True), ("s2-vqa", False)]


def test_features_must_match_the_config(exported, tmp_path):
    _, prepared = exported
    with pytest.raises(ValueError, match="does not have the features of config 's2-vqa'"):
        ex.export_dataset(prepared["s1s2-vqa"], tmp_path, "s2-vqa", progress=False)


# ----------------------------------------------------------------------------- round trip


def assert_rows_equal(got: dict, want: dict, features: datasets.Features) -> None:
    assert set(got) == set(want) | {"preview"}
    for key, feature in features.items():
        if isinstance(feature, datasets.Array3D):
            array = np.asarray(got[key], dtype=feature.dtype)  # streaming gives lists: exact for uint16/float32
            assert array.shape == feature.shape and np.array_equal(array, want[key]), key
        else:
            assert got[key] == want[key], key


@pytest.mark.parametrize("config", CONFIGS)
def test_load_dataset_gives_the_builder_features_and_examples(config, exported, tmp_path):
    root, prepared = exported
    loaded = load(root, config, tmp_path)
    assert list(loaded) == list(prepared[config])
    for split, part in prepared[config].items():
        features = part.features
        plain = [k for k, f in features.items() if not isinstance(f, datasets.Array3D)]
        assert loaded[split].features == datasets.Features({"preview": datasets.Image(), **features})
        assert list(loaded[split].features) == ["preview", *features]
        got = loaded[split].with_format("numpy", dtype=None)
        want = part.with_format("numpy", dtype=None)
        assert got.num_rows == want.num_rows
        for i in range(want.num_rows):
            g, w = got[i], want[i]
            for key, feature in features.items():
                if isinstance(feature, datasets.Array3D):
                    assert g[key].dtype == np.dtype(feature.dtype) and np.array_equal(g[key], w[key]), key
        assert loaded[split].select_columns(plain).to_list() == part.select_columns(plain).to_list()


@pytest.mark.parametrize("config", CONFIGS)
def test_streaming_gives_the_builder_examples(config, exported, tmp_path):
    root, prepared = exported
    streamed = load(root, config, tmp_path, streaming=True)
    for split, part in prepared[config].items():
        assert streamed[split].num_shards == len(list((root / "data" / config).glob(f"{split}-*.parquet")))
        rows = list(streamed[split])
        assert len(rows) == part.num_rows
        want = part.with_format("numpy", dtype=None, columns=[k for k, f in part.features.items()
                                                              if isinstance(f, datasets.Array3D)], output_all_columns=True)
        for i, row in enumerate(rows):
            assert_rows_equal(row, want[i], part.features)


def test_streaming_bench_reads_only_the_bench_files(exported, tmp_path):
    root, prepared = exported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for path in (copy / "data" / "s1s2-vqa").iterdir():
        if not path.name.startswith("bench-"):
            path.write_bytes(b"not parquet")  # any read of another split's file would fail
    builder = datasets.load_dataset_builder(str(copy), "s1s2-vqa", cache_dir=str(tmp_path / "hf"))
    assert all(Path(f).name.startswith("bench-") for f in builder.config.data_files["bench"])
    bench = load(copy, "s1s2-vqa", tmp_path, split="bench", streaming=True)
    assert sorted(r["ID"] for r in bench) == sorted(prepared["s1s2-vqa"]["bench"]["ID"])
    with pytest.raises(Exception):
        list(load(copy, "s1s2-vqa", tmp_path, split="train", streaming=True))


# ----------------------------------------------------------------------------- previews


def test_previews_decode_and_show_the_box_and_point(exported, tmp_path):
    root, _ = exported
    test = load(root, "s2-grounding", tmp_path, split="test")
    row = test.filter(lambda r: r["ID"] == 27527)[0]  # real row: box [0.0 0.0, 0.93 0.45], point (0.35, 0.16)
    image = np.asarray(row["preview"].convert("RGB"))
    size = 120 * preview.SCALE
    assert image.shape == (size, size, 3) and image.std() > 10  # not blank
    left, top = math.floor(0.0 * size), math.floor(0.0 * size)
    right, bottom = math.ceil(0.93 * size) - 1, math.ceil(0.45 * size) - 1
    assert (left, top, right, bottom) == (0, 0, 223, 107) == preview.box_pixels(row["bbox"], size, size)
    box = np.asarray(preview.BOX_COLOUR, dtype=np.uint8)
    outline = np.concatenate([image[top, left:right + 1], image[bottom, left:right + 1],
                              image[top:bottom + 1, left], image[top:bottom + 1, right]])
    assert (outline == box).all()
    inside = image[top + 2 : bottom - 1, left + 2 : right - 1]
    assert (inside == box).all(axis=-1).mean() < 0.01  # only the outline is drawn
    col, row_ = math.floor(0.35 * size), math.floor(0.16 * size)
    assert (image[row_, col] == preview.POINT_COLOUR).all()
    assert (image[row_, col - preview.POINT_ARM] == preview.POINT_COLOUR).all()
    assert (image[row_ + preview.POINT_ARM, col] == preview.POINT_COLOUR).all()
    # other rows of the patch: the same quicklook without marks
    plain = test.filter(lambda r: r["patch_id"] == REAL_PATCH_ID and r["bbox"] is None)
    assert len(plain) == 0 or not (np.asarray(plain[0]["preview"].convert("RGB")) == box).all(axis=-1).any()


@pytest.mark.parametrize("config", ["s1s2-vqa", "s1-captioning"])
def test_previews_are_small_pngs_of_the_right_sensor(config, exported, fixture_data, tmp_path):
    root, prepared = exported
    part = load(root, config, tmp_path, split="test").cast_column("preview", datasets.Image(decode=False))
    sensor = preview.preview_sensor(bt.SENSORS[config.split("-")[0]])
    for i in range(part.num_rows):
        png = part[i]["preview"]["bytes"]
        assert png.startswith(b"\x89PNG") and len(png) < 40_000
    first = part[0]
    patch = fixture_data.patch(first["patch_id"])
    expected = preview.base_quicklook(
        {g.name: np.stack([patch.bands[b] for b in g.bands]) for g in BAND_GROUPS}, sensor
    )
    got = np.asarray(Image.open(io.BytesIO(first["preview"]["bytes"])).convert("RGB")).astype(int)
    assert np.abs(got - np.asarray(expected)).mean() < 8  # 254-colour palette of the same picture


def test_quicklook_channels_follow_the_band_declaration(fixture_data):
    patch = fixture_data.patch(REAL_PATCH_ID)
    groups = {g.name: np.stack([patch.bands[b] for b in g.bands]) for g in BAND_GROUPS}
    s2 = np.asarray(preview.base_quicklook(groups, "s2"))[:: preview.SCALE, :: preview.SCALE]
    for channel, band in enumerate(BAND_COMBINATIONS["RGB"]):  # R, G, B = B04, B03, B02
        assert np.array_equal(s2[..., channel], preview.stretch(patch.bands[band], 0))
    s1 = np.asarray(preview.quicklook(groups, "s1"))[:: preview.SCALE, :: preview.SCALE]
    vv, vh = patch.bands["VV"], patch.bands["VH"]
    assert np.array_equal(s1[..., 0], preview.stretch(vv)) and np.array_equal(s1[..., 1], preview.stretch(vh))
    assert np.array_equal(s1[..., 2], preview.stretch(vv.astype(np.float64) - vh))
    # a resampled ``image`` stack with the RGB bands gives the same picture
    stack = {"image": np.stack([patch.bands[b].astype(np.float32) for b in BAND_COMBINATIONS["RGB"]])}
    assert np.array_equal(np.asarray(preview.quicklook(stack, "s1s2", image_bands=BAND_COMBINATIONS["RGB"])),
                          np.asarray(preview.quicklook(groups, "s1s2")))


def test_stretch_ignores_nodata_and_flat_bands():
    band = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)
    band[0, :5] = 0
    out = preview.stretch(band, nodata=0)
    assert out.dtype == np.uint8 and (out[0, :5] == 0).all() and out.max() == 255 and out[out > 0].min() <= 3
    assert (preview.stretch(np.full((4, 4), 7.0)) == 128).all()
    assert (preview.stretch(np.zeros((4, 4)), nodata=0) == 0).all()


# ----------------------------------------------------------------------------- distributed reading


def test_split_dataset_by_node_gives_disjoint_complete_parts(exported, tmp_path):
    root, prepared = exported
    stream = load(root, "s1s2-vqa", tmp_path, split="train", streaming=True).select_columns(["ID"])
    parts = [[r["ID"] for r in split_dataset_by_node(stream, rank=rank, world_size=4)] for rank in range(4)]
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) and sorted(flat) == sorted(prepared["s1s2-vqa"]["train"]["ID"])


def test_ranks_get_whole_files_when_the_count_allows(tmp_path):
    """With enough patches a split has a multiple of 4 files, and each of 4 ranks reads its own files."""
    fx = make_fixture(tmp_path / "fx", seed=0, n_extra_patches=24)
    _, ds = prepare("s2-binary-train", fx, tmp_path / "cache")
    ex.export_dataset(ds, tmp_path / "out", "s2-binary-train", progress=False)
    stream = load(tmp_path / "out", "s2-binary-train", tmp_path, split="train", streaming=True)
    assert stream.num_shards % 4 == 0 and stream.num_shards >= 4
    parts = [split_dataset_by_node(stream, rank=rank, world_size=4) for rank in range(4)]
    assert [p.num_shards for p in parts] == [stream.num_shards // 4] * 4  # whole files, not every 4th row
    ids = [r["ID"] for p in parts for r in p.select_columns(["ID"])]
    assert len(ids) == len(set(ids)) == ds["train"].num_rows


def test_dataloader_workers_read_every_example_once(exported, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install .[torch])")
    root, prepared = exported
    stream = load(root, "s1s2-vqa", tmp_path, split="train", streaming=True).select_columns(["ID"])
    assert stream.num_shards >= 2  # each worker needs a file
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    ids = [int(r["ID"]) for r in loader]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(prepared["s1s2-vqa"]["train"]["ID"])


# ----------------------------------------------------------------------------- upload and CLI


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"url": f"https://huggingface.co/datasets/{repo_id}"})()

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(exported, monkeypatch):
    root, _ = exported
    FakeHfApi.calls = []
    monkeypatch.setattr(ex, "HfApi", FakeHfApi)
    url = ex.push_to_hub(root, "org/ben-txt", token="t0k", private=True)
    assert url == "https://huggingface.co/datasets/org/ben-txt"
    (_, init), (_, create), (_, upload) = FakeHfApi.calls
    assert init == {"token": "t0k"}
    assert create == {"repo_id": "org/ben-txt", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "org/ben-txt" and upload["repo_type"] == "dataset" and upload["folder_path"] == str(root)
    local = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    sent = {f for f in local if any(fnmatch.fnmatch(f, pat) for pat in upload["allow_patterns"])}
    assert sent == local and "README.md" in sent  # the folder as it is
    assert sorted(upload["delete_patterns"]) == sorted(f"data/{c}/*.parquet" for c in CONFIGS)


def test_cli_export_writes_a_loadable_folder(fixture_data, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "bigearthnet_txt", "export", "s2-vqa", "--data-dir", str(fixture_data.root),
         "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert "s2-vqa" in result.stdout and "%|" not in result.stderr  # --quiet: no progress bars
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert [(c["config_name"], c.get("default")) for c in meta["configs"]] == [("s2-vqa", True)]
    assert {p.name.split("-")[0] for p in files_of(out, "s2-vqa")} == {"train", "validation", "test", "bench"}


def test_numpy_batches_stream_exact_arrays(exported, tmp_path):
    root, prepared = exported
    part = prepared["s1s2-vqa"]["test"]
    stream = load(root, "s1s2-vqa", tmp_path, split="test", streaming=True)
    batches = list(ex.numpy_batches(stream, batch_size=7, columns=["ID", "s2_20m", "s1"]))
    want = part.with_format("numpy", dtype=None)[:]
    assert [list(b) for b in batches[:1]] == [["ID", "s2_20m", "s1"]]
    for key in ("s2_20m", "s1"):
        got = np.concatenate([b[key] for b in batches])
        assert got.dtype == want[key].dtype and np.array_equal(got, want[key]), key
    assert [i for b in batches for i in b["ID"]] == part["ID"]


def test_patch_layout_exports_one_row_per_image_pair(fixture_data, tmp_path):
    _, ds = prepare("s2-grounding-test", fixture_data, tmp_path / "cache", layout="patch")
    with pytest.raises(ValueError, match="layout='annotation'"):
        ex.export_dataset(ds, tmp_path / "out", "s2-grounding-test", progress=False)
    ex.export_dataset(ds, tmp_path / "out", "s2-grounding-test", name="patches", layout="patch", progress=False)
    loaded = load(tmp_path / "out", "patches", tmp_path, split="test")
    assert loaded.features == ex.export_features(ds["test"].features)
    assert loaded.remove_columns("preview").to_list() == ds["test"].to_list()
    box = np.asarray(preview.BOX_COLOUR, dtype=np.uint8)
    for row in loaded:  # one picture per patch, no marks (a patch has several boxes)
        assert not (np.asarray(row["preview"].convert("RGB")) == box).all(axis=-1).any()


def test_num_proc_writes_the_same_files(exported, tmp_path):
    root, prepared = exported
    ex.export_dataset(prepared["s2-grounding"], tmp_path, "s2-grounding", num_proc=2, progress=False)
    for a, b in zip(files_of(root, "s2-grounding"), files_of(tmp_path, "s2-grounding")):
        assert a.name == b.name and pq.read_table(a).equals(pq.read_table(b))
