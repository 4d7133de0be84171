"""The Parquet export (bentxt/export/writer.py, bentxt/export/reader.py): texts configs, one imagery config per sensor set
shared by every task (pixels once per pair), the browse config (every text beside its picture, the default), the card,
round trips through plain ``datasets`` (map-style, streaming, a fresh process), iter_examples, the builder's export
image source, sharding, and the dataset viewer's limits."""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets.distributed import split_dataset_by_node
from PIL import Image

import bigearthnet_txt as bt
from test_builder import prepare
from bentxt.export import writer as ex
from bentxt.text import annotations as ann
from bentxt.imagery import preview
from bentxt.imagery import readers
from bentxt.bands import BAND_COMBINATIONS, BAND_GROUPS
from bentxt.config import features_for
from bentxt.cache.imagery_table import array3d
from bentxt.cache.pair_bands import PairBands
from make_fixtures import REAL_PATCH_ID, make_fixture

CONFIGS = ("s1s2-vqa", "s2-grounding", "s1-captioning")
IMAGERY = {"s1s2-vqa": "imagery-s1s2", "s2-grounding": "imagery-s2", "s1-captioning": "imagery-s1"}
NAMES = ["browse", *CONFIGS, "imagery-s1s2", "imagery-s2", "imagery-s1"]  # the card's order: browse, texts, imagery
SHARD = re.compile(r"^(train|validation|test|bench)-(\d{5})-of-(\d{5})\.parquet$")


@pytest.fixture(scope="module")
def exported(fixture_data, tmp_path_factory):
    """The three configs exported into one folder with export(), the builders and their prepared DatasetDicts."""
    root = tmp_path_factory.mktemp("export")
    cache = tmp_path_factory.mktemp("export-cache")
    for config in CONFIGS:
        assert ex.export(config, root, data_dir=str(fixture_data.root), cache_dir=str(cache), progress=False) == root
    built = {config: prepare(config, fixture_data, cache) for config in CONFIGS}  # the same cache: no new work
    return root, {c: ds for c, (_, ds) in built.items()}, {c: b for c, (b, _) in built.items()}


def load(root: Path, config: str, tmp_path: Path, **kwargs):
    return datasets.load_dataset(str(root), config, cache_dir=str(tmp_path / "hf"), **kwargs)


def files_of(root: Path, config: str):
    return sorted(p for p in (root / "data" / config).iterdir())


def folder_bytes(root: Path, config: str) -> int:
    return sum(f.stat().st_size for f in files_of(root, config))


def card(root: Path) -> dict:
    return yaml.safe_load((root / "README.md").read_text().split("---\n")[1])


def image_columns(part: datasets.Dataset):
    return [k for k, f in part.features.items() if isinstance(f, PairBands)]


def texts_of(part: datasets.Dataset) -> datasets.Dataset:
    return part.remove_columns(image_columns(part))


def pair_rows(part: datasets.Dataset) -> list:
    """Row index of each pair's first text, in the dataset's (the export's) pair order."""
    ids = part["patch_id"]
    return [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]


def same(a, b) -> bool:
    """Equality where NaN equals NaN (rows without a box hold NaN-filled ``bbox``/``point``), arrays exactly."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_rows(got: list, want: list) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.keys() == w.keys(), i
        for key in w:
            assert same(g[key], w[key]), (i, key, g[key], w[key])


# ----------------------------------------------------------------------------- files and card


def test_card_lists_browse_texts_and_one_imagery_per_sensor_set(exported):
    root, prepared, _ = exported
    meta = card(root)
    assert [c["config_name"] for c in meta["configs"]] == NAMES
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["browse"]
    assert len(NAMES) <= ex.VIEWER_MAX_CONFIGS and "more than the" not in (root / "README.md").read_text()
    assert meta["license"] == "cdla-permissive-1.0"
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    assert list(infos) == NAMES
    for config in CONFIGS:
        texts = {s["name"]: s["num_examples"] for s in infos[config]["splits"]}
        assert texts == {split: part.num_rows for split, part in prepared[config].items()}
        pairs = {s["name"]: s["num_examples"] for s in infos[IMAGERY[config]]["splits"]}
        assert pairs == {split: len(set(part["patch_id"])) for split, part in prepared[config].items()}
    for name in NAMES:
        assert infos[name]["download_size"] == folder_bytes(root, name)
        entry = next(c for c in meta["configs"] if c["config_name"] == name)
        assert entry["data_files"] == [{"split": s, "path": f"data/{name}/{s}-*"} for s in ann.SPLITS]
    browse = {s["name"]: s["num_examples"] for s in infos["browse"]["splits"]}  # every text once (by ID)
    assert browse == {s: len({i for c in CONFIGS for i in prepared[c][s]["ID"]}) for s in ann.SPLITS}
    text = (root / "README.md").read_text()
    assert "BigEarthNet.txt" in text and "reBEN" in text and "CDLA-Permissive-1.0" in text and "## Usage" in text
    assert '"imagery-s1s2"' in text and "iter_examples" in text and "row_of[example[\"patch_id\"]]" in text
    assert datasets.get_dataset_config_names(str(root)) == NAMES
    assert datasets.load_dataset_builder(str(root)).config.name == "browse"
    for config in CONFIGS:  # each texts file names its imagery config
        assert json.loads(pq.read_schema(files_of(root, config)[0]).metadata[b"bentxt"])["imagery"] == IMAGERY[config]


def viewer_checks(root: Path, config: str) -> dict:
    """Per file: name, one split, whole pairs, row groups within the limits, codecs, page index; returns pair order."""
    kind = ex.kind_of(config)
    seen, order, by_split = set(), {}, {}
    for path in files_of(root, config):
        match = SHARD.match(path.name)
        assert match, path.name
        by_split.setdefault(match[1], []).append((int(match[2]), int(match[3])))
        pf = pq.ParquetFile(path)
        table = pf.read(columns=["split", "patch_id"])
        assert set(table["split"].to_pylist()) == {match[1]}  # a file holds one split
        patches = table["patch_id"].to_pylist()
        runs = [p for i, p in enumerate(patches) if i == 0 or p != patches[i - 1]]
        assert len(runs) == len(set(runs)) and not set(runs) & seen  # a pair's rows are consecutive, in one file
        seen |= set(runs)
        order.setdefault(match[1], []).extend(runs)
        meta = pf.metadata
        assert b"huggingface" in meta.metadata and b"ARROW:schema" in meta.metadata
        for i in range(meta.num_row_groups):
            # the /rows scan reads whole pages of a row group: a row group must stay far below 300 MB
            assert meta.row_group(i).total_byte_size <= ex.VIEWER_MAX_ROW_GROUP_BYTES
            assert pf.read_row_group(i).nbytes <= ex.MAX_ROW_GROUP_BYTES
            codecs = {meta.row_group(i).column(j).path_in_schema: meta.row_group(i).column(j).compression
                      for j in range(meta.num_columns)}
            previews = {k: v for k, v in codecs.items() if k.startswith("preview.")}
            want = {"imagery": "UNCOMPRESSED", "browse": "ZSTD"}.get(kind)  # browse: zstd stores the repeats once
            assert previews == ({"preview.bytes": want, "preview.path": want} if want else {})
            assert {v for k, v in codecs.items() if not k.startswith("preview.")} == {"ZSTD"}
            for j in range(meta.num_columns):
                chunk = meta.row_group(i).column(j)
                assert chunk.has_offset_index, chunk.path_in_schema  # page locations: page-pruned /rows scans
    for split, names in by_split.items():
        n = names[0][1]
        assert sorted(k for k, _ in names) == list(range(n)) and {m for _, m in names} == {n}
        assert n == min(len(order[split]), 4)  # fixture splits have 1-2 pairs: one file per pair
    return order


def test_configs_are_cut_at_pairs_within_the_viewer_limits_and_texts_follow_their_imagery(exported):
    root, prepared, _ = exported
    orders = {name: viewer_checks(root, name) for name in NAMES}
    for config in CONFIGS:
        for split, part in prepared[config].items():
            assert orders[config][split] == [part["patch_id"][i] for i in pair_rows(part)]
            imagery = orders[IMAGERY[config]][split]
            positions = [imagery.index(p) for p in orders[config][split]]
            assert positions == sorted(positions)  # a subsequence, in the same order: one forward pass joins them
    for split in ann.SPLITS:
        assert orders["browse"][split] == sorted({p for c in CONFIGS for p in prepared[c][split]["patch_id"]})


def test_the_first_rows_response_fits_the_viewer(exported, tmp_path):
    """first-rows sends up to 100 rows within 200 kB; images go as asset URLs, the other cells as JSON."""
    root, _, _ = exported
    rows = load(root, "browse", tmp_path, split="train").cast_column("preview", datasets.Image(decode=False))
    cells = [{k: ({"src": "https://datasets-server.huggingface.co/assets/x/--/y/train/0/preview/image.png",
                   "height": 120, "width": 120} if k == "preview" else v) for k, v in row.items()}
             for row in rows.select(range(min(100, rows.num_rows)))]
    assert len(json.dumps({"rows": cells}).encode()) <= ex.VIEWER_FIRST_ROWS_BYTES
    for row in rows:
        assert row["input"] and row["output"] and row["preview"]["bytes"].startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- one pixel copy for every task


@pytest.fixture(scope="module")
def two_tasks(fixture_data, tmp_path_factory):
    """s2-vqa then s2-captioning exported into one folder (min_shards=1: see the size test), and the first's files."""
    root, cache = tmp_path_factory.mktemp("two-tasks"), tmp_path_factory.mktemp("two-tasks-cache")
    common = dict(data_dir=str(fixture_data.root), cache_dir=str(cache), min_shards=1, progress=False)
    ex.export("s2-vqa", root, **common)
    first = {p.name: p.stat().st_ino for p in files_of(root, "imagery-s2")}
    ex.export("s2-captioning", root, **common)
    builders = {c: prepare(c, fixture_data, cache)[0] for c in ("s2-vqa", "s2-captioning")}
    return root, first, builders


def test_two_tasks_in_one_folder_store_the_pixels_once(two_tasks, fixture_data, tmp_path):
    """<= 1.35 x (one zstd copy of the pixels + the source parquet); the old layout (an -imagery per task) was ~2.2 x.

    min_shards=1 because the fixture's splits have 1-2 pairs: each file's footer (~6 kB of schema metadata and page
    index) weighs as much as a pair's texts, which at release scale (~500 MB files) it does not."""
    root, first, builders = two_tasks
    assert {p.name: p.stat().st_ino for p in files_of(root, "imagery-s2")} == first  # reused as it is, not rewritten
    part = builders["s2-vqa"].as_dataset()
    stream = features_for(builders["s2-vqa"].config, storage="stream")
    pixels = 0
    for split, rows in part.items():
        images = image_columns(rows)
        arrays = rows.select(pair_rows(rows)).with_format("numpy", columns=images)[:]
        pq.write_table(pa.table({k: array3d(arrays[k], stream[k]) for k in images}), tmp_path / "p.parquet",
                       compression="zstd")
        pixels += (tmp_path / "p.parquet").stat().st_size
    reference = pixels + fixture_data.parquet.stat().st_size
    written = sum(folder_bytes(root, n) for n in ("browse", "s2-vqa", "s2-captioning", "imagery-s2"))
    assert written <= 1.35 * reference, written / reference
    assert 2 * folder_bytes(root, "imagery-s2") > 1.35 * reference  # the bound fails with a pixel copy per task
    assert [c["config_name"] for c in card(root)["configs"]] == ["browse", "s2-vqa", "s2-captioning", "imagery-s2"]


def test_a_fresh_process_with_only_datasets_reads_pictures_and_pixels_equal_to_rasterio(two_tasks, extracted, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    root, _, _ = two_tasks
    script = f"""
import json, sys, numpy as np, datasets
root = {str(root)!r}
browse = datasets.load_dataset(root, split="test", cache_dir={str(tmp_path / "hf")!r})   # the default config
image = browse[0]["preview"]
pairs = datasets.load_dataset(root, "imagery-s2", split="test", cache_dir={str(tmp_path / "hf")!r})
pairs = pairs.with_format("numpy", dtype=None)
row = {{p: i for i, p in enumerate(pairs["patch_id"])}}[browse[0]["patch_id"]]
np.save({str(tmp_path / "s2_10m.npy")!r}, pairs[row]["s2_10m"])
print(json.dumps({{"size": list(image.size), "mode": image.mode, "patch_id": browse[0]["patch_id"],
                  "input": browse[0]["input"], "output": browse[0]["output"],
                  "ours": sorted(m for m in sys.modules if m.split(".")[0] in ("bentxt", "bigearthnet_txt"))}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ours"] == [] and out["size"] == [120, 120] and out["input"] and out["output"]
    got = np.load(tmp_path / "s2_10m.npy")
    patch = out["patch_id"]
    tile = "_".join(patch.split("_")[:-2])
    for k, band in enumerate(("B02", "B03", "B04", "B08")):
        with rasterio.open(extracted / "BigEarthNet-S2" / tile / patch / f"{patch}_{band}.tif") as tif:
            want = tif.read(1)
        assert got.dtype == want.dtype == np.uint16 and np.array_equal(got[k], want), band


def test_imagery_is_rewritten_for_more_pairs_and_refused_for_other_pairs(exported, fixture_data, tmp_path):
    _, prepared, _ = exported
    bench = datasets.DatasetDict({"bench": prepared["s2-grounding"]["bench"]})
    ex.export_dataset(bench, tmp_path, "s2-grounding", name="bench-only", progress=False)
    assert {p.name.split("-")[0] for p in files_of(tmp_path, "imagery-s2")} == {"bench"}
    ex.export_dataset(prepared["s2-grounding"], tmp_path, "s2-grounding", progress=False)  # more pairs: rewritten
    assert {p.name.split("-")[0] for p in files_of(tmp_path, "imagery-s2")} == set(ann.SPLITS)
    ex.export_dataset(bench, tmp_path, "s2-grounding", name="bench-again", progress=False)  # fewer: reused
    assert {p.name.split("-")[0] for p in files_of(tmp_path, "imagery-s2")} == set(ann.SPLITS)
    for path in files_of(tmp_path, "imagery-s2"):  # other pairs in test: neither holds the other's
        if path.name.startswith("test-"):
            shutil.copy(files_of(tmp_path, "imagery-s2")[0], path)
    with pytest.raises(ValueError, match=r"imagery-s2 \(test\) .* holds pairs this config lacks"):
        ex.export_dataset(prepared["s2-grounding"], tmp_path, "s2-grounding", progress=False)
    assert not any(p.name.startswith(".") for p in (tmp_path / "data").iterdir())  # no staging folder left


def test_row_groups_follow_the_byte_budget(exported, tmp_path):
    _, prepared, _ = exported
    part = prepared["s2-grounding"]
    budget = 2_000  # a few text rows; less than one pair's pixels
    ex.export_dataset(part, tmp_path, "s2-grounding", max_row_group_bytes=budget, min_shards=1, progress=False)
    starts = ex.patch_starts(part["test"], "patch_id")
    texts_bytes = texts_of(part["test"]).data.nbytes / part["test"].num_rows
    plan = ex.plan_shards(starts, texts_bytes, min_shards=1, max_row_group_bytes=budget)
    assert plan.bounds == ((0, part["test"].num_rows),) and plan.rows_per_group == int(budget // texts_bytes) >= 1
    for name, rows, per_group in (("s2-grounding", part["test"].num_rows, plan.rows_per_group),
                                  ("imagery-s2", len(starts) - 1, 1)):
        path = tmp_path / "data" / name / "test-00000-of-00001.parquet"  # min_shards=1: one file per split
        pf = pq.ParquetFile(path)
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        assert sum(groups) == rows and len(groups) > 1 and set(groups[:-1]) == {per_group}, (name, groups)


def test_plan_shards_cuts_whole_pairs_into_a_multiple_of_min_shards():
    starts = np.array([0, 3, 5, 9, 10, 14, 20, 21, 25], dtype=np.int64)  # 8 pairs, 25 rows
    plan = ex.plan_shards(starts, 100.0, min_shards=4)
    assert len(plan.bounds) == 4 and plan.bounds[0][0] == 0 and plan.bounds[-1][1] == 25
    assert all(a in starts and b in starts and a < b for a, b in plan.bounds)
    assert all(b == c for (_, b), (c, _) in zip(plan.bounds, plan.bounds[1:]))
    big = ex.plan_shards(starts, 100.0, min_shards=2, max_shard_bytes=500)  # 2,500 bytes: 5 files -> 6
    assert len(big.bounds) == 6
    assert len(ex.plan_shards(starts[:3], 1.0, min_shards=4).bounds) == 2  # never more files than pairs
    pairs = ex.plan_shards(np.arange(9), 1000.0, min_shards=4)
    assert pairs.bounds == ((0, 2), (2, 4), (4, 6), (6, 8))


def test_reexport_replaces_shards_and_keeps_the_default(exported, tmp_path):
    root, prepared, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ex.export_dataset(prepared["s2-grounding"], copy, "s2-grounding", min_shards=1, progress=False)
    assert [p.name for p in files_of(copy, "s2-grounding")] == [
        f"{s}-00000-of-00001.parquet" for s in ("bench", "test", "train", "validation")]
    meta = card(copy)
    assert [c["config_name"] for c in meta["configs"]] == NAMES
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["browse"]
    assert not any(p.name.startswith(".") for p in (copy / "data").iterdir())  # no staging folder left


def test_a_card_without_default_gets_one(tmp_path):
    """A card written by push_to_hub for a lone config has no `default` key
    (the KeyError of docs/datasets-notes.md#hub-layout)."""
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: imagery-s2\n  data_files:\n  - split: train\n    path: other/train-*\n---\n"
    )
    info = datasets.DatasetInfo(features=datasets.Features({"a": datasets.Value("int64")}),
                                splits=datasets.SplitDict({"train": datasets.SplitInfo("train", 8, 1)}))
    ex.update_card(tmp_path, "s2-vqa", info)
    meta = card(tmp_path)
    assert [(c["config_name"], c.get("default", False)) for c in meta["configs"]] == [("s2-vqa", True), ("imagery-s2", False)]
    ex.remove_config(tmp_path, "s2-vqa")
    assert [(c["config_name"], c.get("default", False)) for c in card(tmp_path)["configs"]] == [("imagery-s2", True)]
    ex.remove_config(tmp_path, "imagery-s2")
    assert card(tmp_path)["configs"] == []


def test_a_card_past_the_viewers_config_count_names_the_configs_to_open(tmp_path):
    info = datasets.DatasetInfo(features=datasets.Features({"a": datasets.Value("int64")}),
                                splits=datasets.SplitDict({"train": datasets.SplitInfo("train", 8, 1)}))
    for name in ["browse", "imagery-s2", *(f"s2-task{k}" for k in range(ex.VIEWER_MAX_CONFIGS - 2))]:
        ex.update_card(tmp_path, name, info)
    assert "more than the" not in (tmp_path / "README.md").read_text()  # 10 configs: the viewer starts fast
    ex.update_card(tmp_path, "s2-task-extra", info)
    text = (tmp_path / "README.md").read_text()
    assert f"has {ex.VIEWER_MAX_CONFIGS + 1} configs, more than the {ex.VIEWER_MAX_CONFIGS}" in text
    assert "open `browse` (pictures with texts)" in text


def test_export_prepares_in_the_cache_of_load_dataset(exported, fixture_data):
    _, _, builders = exported
    cache = str(Path(builders["s1s2-vqa"].cache_dir).parents[3])
    named = datasets.load_dataset_builder("bigearthnet_txt", "s1s2-vqa", data_dir=str(fixture_data.root), cache_dir=cache)
    assert named.cache_dir == builders["s1s2-vqa"].cache_dir and os.path.isdir(named.cache_dir)


def test_features_names_and_options_are_checked(exported, tmp_path):
    _, prepared, _ = exported
    with pytest.raises(ValueError, match="does not have the features of config 's2-vqa'"):
        ex.export_dataset(prepared["s1s2-vqa"], tmp_path, "s2-vqa", progress=False)
    for name in ("imagery-mine", "browse"):
        with pytest.raises(ValueError, match="the export's own configs"):
            ex.export_dataset(prepared["s1s2-vqa"], tmp_path, "s1s2-vqa", name=name, progress=False)
    with pytest.raises(ValueError, match="inline_pixels=True is gone: every export now has a 'browse' config"):
        ex.export_dataset(prepared["s1s2-vqa"], tmp_path, "s1s2-vqa", inline_pixels=True, progress=False)


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("config", CONFIGS)
def test_load_dataset_gives_the_builder_text_columns(config, exported, tmp_path):
    root, prepared, builders = exported
    loaded = load(root, config, tmp_path)
    assert list(loaded) == list(prepared[config])
    stream = features_for(builders[config].config, storage="stream")
    for split, part in prepared[config].items():
        texts = texts_of(part)
        assert loaded[split].features == datasets.Features({k: v for k, v in stream.items() if k in texts.features})
        assert list(loaded[split].features) == list(texts.features)  # the builder's columns without the images
        assert_same_rows(loaded[split].to_list(), texts.to_list())
        no_box = [r for r in loaded[split]["bbox"] if all(math.isnan(v) for v in r)]
        assert len(no_box) == sum(t != "bounding box" for t in part["type"])  # NaN-filled, never null


@pytest.mark.parametrize("config", CONFIGS)
def test_imagery_config_has_one_row_per_pair_with_exact_arrays(config, exported, tmp_path):
    root, prepared, builders = exported
    pairs = load(root, IMAGERY[config], tmp_path)
    stream = features_for(builders[config].config, storage="stream")
    for split, part in prepared[config].items():
        images = image_columns(part)
        assert pairs[split].features == ex.imagery_features(stream, images)
        assert list(pairs[split].features) == ["preview", *ann.PATCH_COLUMNS, *images]
        first = part.select(pair_rows(part))
        assert pairs[split].num_rows == first.num_rows  # each config is the only one of its sensor set here
        assert pairs[split].select_columns(list(ann.PATCH_COLUMNS)).to_list() == \
            first.select_columns(list(ann.PATCH_COLUMNS)).to_list()
        got = pairs[split].with_format("numpy", columns=images, dtype=None)[:]
        want = first.with_format("numpy", columns=images)[:]
        for key in images:
            assert got[key].dtype == want[key].dtype == np.dtype(stream[key].dtype), key
            assert np.array_equal(got[key], want[key]), key


@pytest.mark.parametrize("config", CONFIGS)
def test_iter_examples_equal_the_builders_streamed_examples(config, exported, tmp_path):
    root, prepared, builders = exported
    for split in prepared[config]:
        want = list(builders[config].as_streaming_dataset(split=split))
        got = list(ex.iter_examples(root, config, split, batch_size=5, cache_dir=str(tmp_path / "hf")))
        assert [r["ID"] for r in got] == prepared[config][split]["ID"]  # the prepared order too
        assert_same_rows(got, want)


def test_iter_examples_skips_pairs_of_other_tasks_and_rejects_a_mismatch(two_tasks, exported, tmp_path):
    root, _, builders = two_tasks
    for split in ("bench", "test"):  # captioning lacks a bench pair that s2-vqa (the imagery's pairs) has
        want = list(builders["s2-captioning"].as_streaming_dataset(split=split))
        assert_same_rows(list(ex.iter_examples(root, "s2-captioning", split, cache_dir=str(tmp_path / "hf"))), want)
    copy = tmp_path / "copy"
    shutil.copytree(exported[0], copy)
    for path in files_of(copy, "imagery-s2"):  # the pairs of another split: nothing matches
        if path.name.startswith("test-"):
            shutil.copy(files_of(copy, "imagery-s2")[0], path)  # bench pairs
    with pytest.raises(ValueError, match="is not in imagery-s2"):
        list(ex.iter_examples(copy, "s2-grounding", "test", cache_dir=str(tmp_path / "hf")))


def test_streaming_bench_reads_only_the_bench_files(exported, tmp_path):
    root, prepared, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for name in ("s1s2-vqa", "imagery-s1s2"):
        for path in files_of(copy, name):
            if not path.name.startswith("bench-"):
                path.write_bytes(b"not parquet")  # any read of another split's file would fail
        builder = datasets.load_dataset_builder(str(copy), name, cache_dir=str(tmp_path / "hf"))
        assert all(Path(f).name.startswith("bench-") for f in builder.config.data_files["bench"])
    bench = load(copy, "s1s2-vqa", tmp_path, split="bench", streaming=True)
    assert sorted(r["ID"] for r in bench) == sorted(prepared["s1s2-vqa"]["bench"]["ID"])
    examples = list(ex.iter_examples(copy, "s1s2-vqa", "bench", cache_dir=str(tmp_path / "hf")))
    assert [r["ID"] for r in examples] == prepared["s1s2-vqa"]["bench"]["ID"]
    with pytest.raises(Exception):
        list(load(copy, "s1s2-vqa", tmp_path, split="train", streaming=True))


def test_the_imagery_config_is_an_image_source(exported, fixture_data):
    """readers.iter_export_patches reads an imagery config with the sensor's groups: every pair once, exact."""
    root, prepared, _ = exported
    names = []
    for name, bands in readers.iter_export_patches(str(root), "s2"):
        names.append(name)
        patch = fixture_data.patch(name)
        assert "B04" in bands and all(np.array_equal(bands[b], patch.bands[b]) for b in bands), name
    # imagery-s2 (fewest arrays with the S2 groups): the pairs of s2-grounding
    want = [p for part in prepared["s2-grounding"].values() for p in [part["patch_id"][i] for i in pair_rows(part)]]
    assert sorted(names) == sorted(want) and len(names) == len(set(names))
    s1 = dict(readers.iter_export_patches(str(root), "s1"))  # imagery-s1 (one group), keyed by s1_name
    assert set(s1) == set(p for part in prepared["s1-captioning"].values() for p in part["s1_name"])


# ----------------------------------------------------------------------------- the browse config


def test_browse_shows_every_text_with_its_pairs_preview_and_marks_small_grounding_splits(exported, tmp_path):
    root, prepared, _ = exported
    for split in ann.SPLITS:
        rows = load(root, "browse", tmp_path, split=split).cast_column("preview", datasets.Image(decode=False))
        assert list(rows.features) == ["preview", *ex.BROWSE_COLUMNS]
        texts = {}
        for config in CONFIGS:
            for row in prepared[config][split].select_columns(list(ex.BROWSE_COLUMNS) + ["bbox", "point"]):
                texts.setdefault(row["ID"], row)
        assert sorted(rows["ID"]) == sorted(texts)  # every text once, whichever configs have it
        keys = [(r["patch_id"], r["ID"]) for r in rows]
        assert keys == sorted(keys)  # sorted by pair: a pair's repeated preview is stored about once
        imagery = {}  # the picture of a pair: imagery-s2's bytes, else imagery-s1s2's, else imagery-s1's
        for name in ("imagery-s1", "imagery-s1s2", "imagery-s2"):
            part = load(root, name, tmp_path, split=split).cast_column("preview", datasets.Image(decode=False))
            imagery.update({r["patch_id"]: r["preview"]["bytes"] for r in part})
        for row in rows:
            want = texts[row["ID"]]
            assert {k: row[k] for k in ex.BROWSE_COLUMNS} == {k: want[k] for k in ex.BROWSE_COLUMNS}
            marked = preview.mark(want["bbox"]) is not None or preview.mark(want["point"]) is not None
            if not marked:
                assert row["preview"]["bytes"] == imagery[row["patch_id"]]  # re-used, not encoded again
                continue
            picture = np.asarray(Image.open(io.BytesIO(row["preview"]["bytes"])).convert("RGB"))
            assert picture.shape == (120 * preview.SCALE, 120 * preview.SCALE, 3)
            colour = preview.BOX_COLOUR if preview.mark(want["bbox"]) is not None else preview.POINT_COLOUR
            assert (picture == colour).all(axis=-1).any()


def test_browse_draws_the_real_box_and_point(exported, tmp_path):
    root, _, _ = exported
    rows = load(root, "browse", tmp_path, split="test")
    row = rows.filter(lambda r: r["ID"] == 27527)[0]  # real row: box [0.0 0.0, 0.93 0.45], point (0.35, 0.16)
    image = np.asarray(row["preview"].convert("RGB"))
    size = 120 * preview.SCALE
    left, top, right, bottom = 0, 0, math.ceil(0.93 * size) - 1, math.ceil(0.45 * size) - 1
    assert (left, top, right, bottom) == (0, 0, 223, 107) == preview.box_pixels([0.0, 0.0, 0.93, 0.45], size, size)
    box = np.asarray(preview.BOX_COLOUR, dtype=np.uint8)
    outline = np.concatenate([image[top, left:right + 1], image[bottom, left:right + 1],
                              image[top:bottom + 1, left], image[top:bottom + 1, right]])
    assert (outline == box).all()
    inside = image[top + 2 : bottom - 1, left + 2 : right - 1]
    assert (inside == box).all(axis=-1).mean() < 0.01  # only the outline is drawn
    col, row_ = math.floor(0.35 * size), math.floor(0.16 * size)
    assert (image[row_, col] == preview.POINT_COLOUR).all()
    assert (image[row_, col - preview.POINT_ARM] == preview.POINT_COLOUR).all()


@pytest.mark.parametrize("config", ["s1s2-vqa", "s1-captioning"])
def test_imagery_previews_are_small_pngs_of_the_right_sensor(config, exported, fixture_data, tmp_path):
    root, _, _ = exported
    part = load(root, IMAGERY[config], tmp_path, split="test").cast_column("preview", datasets.Image(decode=False))
    sensor = preview.preview_sensor(bt.SENSORS[config.split("-")[0]])
    box, point = np.asarray(preview.BOX_COLOUR, np.uint8), np.asarray(preview.POINT_COLOUR, np.uint8)
    for row in part:
        png = row["preview"]["bytes"]
        assert png.startswith(b"\x89PNG") and len(png) < 16_000  # native 120 px: noise stores ~14 kB
        patch = fixture_data.patch(row["patch_id"])
        expected = preview.base_quicklook(
            {g.name: np.stack([patch.bands[b] for b in g.bands]) for g in BAND_GROUPS}, sensor, scale=1
        )
        got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert got.shape == (120, 120, 3)
        assert np.abs(got.astype(int) - np.asarray(expected)).mean() < 8  # 254-colour palette of the same picture
        assert not (got == box).all(axis=-1).any() and not (got == point).all(axis=-1).any()  # a pair has no one mark


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


def test_quicklook_treats_nan_boxes_and_points_as_absent(fixture_data):
    patch = fixture_data.patch(REAL_PATCH_ID)
    groups = {g.name: np.stack([patch.bands[b] for b in g.bands]) for g in BAND_GROUPS}
    plain = np.asarray(preview.quicklook(groups, "s2"))
    nan = np.asarray(preview.quicklook({**groups, "bbox": [math.nan] * 4, "point": np.full(2, np.nan, np.float32)}, "s2"))
    assert np.array_equal(nan, plain)
    marked = np.asarray(preview.quicklook({**groups, "bbox": np.array([0.1, 0.1, 0.5, 0.5], np.float32),
                                           "point": [math.nan] * 2}, "s2"))
    assert (marked == preview.BOX_COLOUR).all(axis=-1).any() and not (marked == preview.POINT_COLOUR).all(axis=-1).any()
    assert preview.mark(None) is None and preview.mark([math.nan] * 4) is None and preview.mark([0.5, 0.25]) == (0.5, 0.25)


def test_stretch_ignores_nodata_and_flat_bands():
    band = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)
    band[0, :5] = 0
    out = preview.stretch(band, nodata=0)
    assert out.dtype == np.uint8 and (out[0, :5] == 0).all() and out.max() == 255 and out[out > 0].min() <= 3
    assert (preview.stretch(np.full((4, 4), 7.0)) == 128).all()
    assert (preview.stretch(np.zeros((4, 4)), nodata=0) == 0).all()


# ----------------------------------------------------------------------------- distributed reading


def test_split_dataset_by_node_gives_disjoint_complete_parts(exported, tmp_path):
    root, prepared, _ = exported
    for name, column, want in (("s1s2-vqa", "ID", prepared["s1s2-vqa"]["train"]["ID"]),
                               ("imagery-s1s2", "patch_id", sorted(set(prepared["s1s2-vqa"]["train"]["patch_id"])))):
        stream = load(root, name, tmp_path, split="train", streaming=True).select_columns([column])
        parts = [[r[column] for r in split_dataset_by_node(stream, rank=rank, world_size=2)] for rank in range(2)]
        assert all(parts) and not set(parts[0]) & set(parts[1])
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat)) and sorted(flat) == sorted(want)


def test_ranks_get_whole_files_when_the_count_allows(tmp_path):
    """With enough pairs a split has a multiple of 4 files in every config, and each of 4 ranks reads its own files."""
    fx = make_fixture(tmp_path / "fx", seed=0, n_extra_patches=24)
    _, ds = prepare("s2-binary-train", fx, tmp_path / "cache")
    ex.export_dataset(ds, tmp_path / "out", "s2-binary-train", progress=False)
    for name, column, rows in (("s2-binary-train", "ID", ds["train"].num_rows),
                               ("imagery-s2", "patch_id", len(set(ds["train"]["patch_id"]))),
                               ("browse", "ID", ds["train"].num_rows)):
        stream = load(tmp_path / "out", name, tmp_path, split="train", streaming=True)
        assert stream.num_shards % 4 == 0 and stream.num_shards >= 4
        parts = [split_dataset_by_node(stream, rank=rank, world_size=4) for rank in range(4)]
        assert [p.num_shards for p in parts] == [stream.num_shards // 4] * 4  # whole files, not every 4th row
        values = [r[column] for p in parts for r in p.select_columns([column])]
        assert len(values) == len(set(values)) == rows


def test_dataloader_workers_read_every_example_once(exported, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install .[torch])")
    root, prepared, _ = exported
    stream = load(root, "s1s2-vqa", tmp_path, split="train", streaming=True).select_columns(["ID", "bbox", "options"])
    assert stream.num_shards >= 2  # each worker needs a file
    loader = torch.utils.data.DataLoader(stream.with_format("torch"), batch_size=4, num_workers=2)
    batches = list(loader)  # the default collate: no None anywhere (NaN boxes, "" options)
    ids = [int(i) for b in batches for i in b["ID"]]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(prepared["s1s2-vqa"]["train"]["ID"])
    assert all(b["bbox"].shape[1:] == (4,) and b["bbox"].isnan().all() for b in batches)  # VQA rows have no box
    pairs = load(root, "imagery-s1s2", tmp_path, split="train", streaming=True).select_columns(["patch_id", "s2_10m", "s1"])
    loader = torch.utils.data.DataLoader(pairs.with_format("torch"), batch_size=None, num_workers=2)
    got = {r["patch_id"]: r for r in loader}
    assert sorted(got) == sorted(set(prepared["s1s2-vqa"]["train"]["patch_id"]))
    part = prepared["s1s2-vqa"]["train"]
    for i in pair_rows(part):
        want = part.with_format("numpy", columns=["s2_10m", "s1"])[i]
        row = got[part[i]["patch_id"]]
        assert np.array_equal(row["s2_10m"].numpy(), want["s2_10m"]) and np.array_equal(row["s1"].numpy(), want["s1"])


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
    root, _, _ = exported
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
    assert any(f.startswith("data/imagery-s1s2/") for f in sent) and any(f.startswith("data/browse/") for f in sent)
    assert sorted(upload["delete_patterns"]) == sorted(f"data/{n}/*.parquet" for n in NAMES)


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
    meta = card(out)
    assert [(c["config_name"], c.get("default")) for c in meta["configs"]] == \
        [("browse", True), ("s2-vqa", None), ("imagery-s2", None)]
    for name in ("browse", "s2-vqa", "imagery-s2"):
        assert {p.name.split("-")[0] for p in files_of(out, name)} == {"train", "validation", "test", "bench"}


def test_numpy_batches_stream_exact_arrays(exported, tmp_path):
    root, prepared, _ = exported
    part = prepared["s1s2-vqa"]["test"]
    stream = load(root, "imagery-s1s2", tmp_path, split="test", streaming=True)
    batches = list(ex.numpy_batches(stream, batch_size=1, columns=["patch_id", "s2_20m", "s1"]))
    want = part.select(pair_rows(part)).with_format("numpy", columns=["s2_20m", "s1"])[:]
    assert [list(b) for b in batches[:1]] == [["patch_id", "s2_20m", "s1"]]
    for key in ("s2_20m", "s1"):
        got = np.concatenate([b[key] for b in batches])
        assert got.dtype == want[key].dtype and np.array_equal(got, want[key]), key
    assert [i for b in batches for i in b["patch_id"]] == [part["patch_id"][i] for i in pair_rows(part)]


def test_patch_layout_exports_texts_and_imagery_and_no_browse_rows(fixture_data, tmp_path):
    builder, ds = prepare("s2-grounding-test", fixture_data, tmp_path / "cache", layout="patch")
    with pytest.raises(ValueError, match="layout='annotation'"):
        ex.export_dataset(ds, tmp_path / "out", "s2-grounding-test", progress=False)
    ex.export_dataset(ds, tmp_path / "out", "s2-grounding-test", name="patches", layout="patch", progress=False)
    assert [c["config_name"] for c in card(tmp_path / "out")["configs"]] == ["patches", "imagery-s2"]
    texts = load(tmp_path / "out", "patches", tmp_path, split="test")
    assert list(texts.features) == list(texts_of(ds["test"]).features) and "annotations" in texts.features
    assert_same_rows(texts.to_list(), texts_of(ds["test"]).to_list())
    pairs = load(tmp_path / "out", "imagery-s2", tmp_path, split="test")
    assert pairs["patch_id"] == ds["test"]["patch_id"]
    got = pairs.with_format("numpy", columns=["s2_10m"], dtype=None)[:]["s2_10m"]
    assert np.array_equal(got, ds["test"].with_format("numpy", columns=["s2_10m"])[:]["s2_10m"])
    assert_same_rows(list(ex.iter_examples(tmp_path / "out", "patches", "test", cache_dir=str(tmp_path / "hf"))),
                     list(builder.as_streaming_dataset(split="test")))


def test_num_proc_writes_the_same_files(exported, tmp_path):
    root, prepared, _ = exported
    ex.export_dataset(prepared["s2-grounding"], tmp_path, "s2-grounding", num_proc=2, progress=False)
    for name in ("s2-grounding", "imagery-s2"):
        ours, theirs = files_of(root, name), files_of(tmp_path, name)
        assert [p.name for p in ours] == [p.name for p in theirs]
        for a, b in zip(ours, theirs):
            assert a.read_bytes() == b.read_bytes(), (name, a.name)  # byte for byte (Table.equals fails on NaN)
