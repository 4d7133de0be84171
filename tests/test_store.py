"""bentxt/cache/store.py: one imagery store per source, shared by every config, and rows that keep their own pixels.

Two sources are used throughout: the session fixture (seed 0) and a second one
(seed 1) with the SAME patch names and other pixels, so a row that read the
other source's store (or another pair's row) is caught. Every pixel is compared
with what rasterio reads from the archive's GeoTIFF.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

import bigearthnet_txt as bt
from bentxt import bands as B
from bentxt.cache import folders as cache
from bentxt import join
from bentxt.cache import store
from bentxt.imagery.archives import iter_tar_zst
from make_fixtures import make_fixture

REPO = Path(__file__).resolve().parents[1]
GROUPS = {g.name: g for g in B.BAND_GROUPS}
S2_COLUMNS = ("s2_10m", "s2_20m", "s2_60m")


def rasterio_bands(fixture) -> dict:
    """(patch name, band) -> the band as rasterio decodes it from the archives' GeoTIFF members."""
    import rasterio

    out = {}
    for archive in (fixture.s2_archive, fixture.s1_archive):
        for name, data in iter_tar_zst(str(archive)):
            if name.endswith(".tif"):
                patch, band = name.split("/")[-2], name.rsplit("_", 1)[1][: -len(".tif")]
                with rasterio.MemoryFile(data) as memory, memory.open() as src:
                    out[(patch, band)] = src.read(1)
    return out


def expected(reference: dict, row: dict, column: str) -> np.ndarray:
    group = GROUPS[column]
    name = row["s1_name"] if group.sensor == "s1" else row["patch_id"]
    return np.stack([reference[(name, b)] for b in group.bands])


def wrong_rows(ds, references, columns=S2_COLUMNS, source_column="source") -> int:
    """Rows whose pixels differ from their own source's GeoTIFFs (``source`` names the source of each row)."""
    bad = 0
    numpy = ds.with_format("numpy")
    for i in range(len(ds)):
        row = numpy[i]
        reference = references[str(row[source_column])]
        bad += any(not np.array_equal(row[c], expected(reference, row, c)) for c in columns)
    return bad


def prepare(name, data_dir, cache_dir, **kwargs):
    builder = bt.BigEarthNetTxt(config_name=name, data_dir=str(data_dir), cache_dir=str(cache_dir), **kwargs)
    builder.download_and_prepare(num_proc=kwargs.pop("num_proc", None))
    return builder, builder.as_dataset()


def tagged(ds, source: str):
    return ds.add_column("source", [source] * len(ds))


def store_folders(cache_dir, sensor="s2"):
    return sorted(glob.glob(str(Path(cache_dir) / "bigearthnet_txt" / "imagery" / f"{sensor}-*")))


@pytest.fixture(scope="module")
def other_source(tmp_path_factory):
    """A second download: the same patch names, other pixels."""
    return make_fixture(tmp_path_factory.mktemp("other_source"), seed=1)


@pytest.fixture(scope="module")
def references(fixture_data, other_source):
    return {"a": rasterio_bands(fixture_data), "b": rasterio_bands(other_source)}


@pytest.fixture(scope="module")
def four(fixture_data, tmp_path_factory):
    """Four configs of one source prepared into one cache_dir: {name: (builder, DatasetDict)}, cache_dir."""
    cache_dir = tmp_path_factory.mktemp("four")
    configs = ("s2-vqa", "s2-captioning", "s2-grounding", "s2-vqa-validation")
    return {name: prepare(name, fixture_data.root, cache_dir) for name in configs}, cache_dir


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# ----------------------------------------------------------------------------- one store per source


def test_four_configs_of_one_source_share_one_store_with_each_pair_once(four, fixture_data):
    prepared, cache_dir = four
    (folder,) = store_folders(cache_dir)
    assert not store_folders(cache_dir, "s1")  # s2 configs read no S1
    s2 = store.ImageryStore(folder)
    names = s2.tables.names("s2")
    pairs = {p.patch_id for p in fixture_data.patches if p.in_archives}
    assert len(names) == len(set(names)) == len(pairs) and set(names) == pairs
    assert s2.manifest["passes"] == 1  # the first config read the archive; the others found their pairs stored
    # disk: four text caches + one store <= 1.25 x (one copy of the pixels + the parquet)
    pixels = len(pairs) * sum(int(np.prod(g.shape)) * 2 for g in B.BAND_GROUPS if g.sensor == "s2")
    total = folder_bytes(Path(cache_dir) / "bigearthnet_txt")
    assert total <= 1.25 * (pixels + os.path.getsize(fixture_data.parquet)), (total, pixels)
    for builder, _ in prepared.values():
        recorded = json.loads((Path(builder.cache_dir) / cache.STORES_FILE).read_text())
        assert recorded == {"s2": {"reference": s2.reference, "path": folder, "passes": sorted(s2.pass_ranges())}}


def test_a_second_config_reads_no_archive(four, fixture_data, monkeypatch):
    """Pairs already stored cost nothing: the archive is not opened again."""
    _, cache_dir = four
    from bentxt import sources

    def no_archive(*args, **kwargs):
        raise AssertionError("the archive (or the parquet for names) was read again")

    monkeypatch.setattr(sources.ArchiveSource, "patches", no_archive)
    monkeypatch.setattr(join.ann, "selected_names", no_archive)  # nor the names-only pass over the parquet
    _, ds = prepare("s2-vqa-test", fixture_data.root, cache_dir)
    assert ds["test"].num_rows > 0


def test_a_config_needing_more_pairs_adds_only_those_in_source_order(fixture_data, tmp_path):
    """-validation after -train: a second pass adds the validation pairs; the rows follow the archive's order."""
    prepare("s2-all-train", fixture_data.root, tmp_path)
    (folder,) = store_folders(tmp_path)
    first = store.ImageryStore(folder).num_rows
    _, ds = prepare("s2-all-validation", fixture_data.root, tmp_path)
    s2 = store.ImageryStore(folder)
    train = {p.patch_id for p in fixture_data.patches if p.split == "train" and p.in_archives}
    validation = {p.patch_id for p in fixture_data.patches if p.split == "validation" and p.in_archives}
    assert first == len(train) and s2.num_rows == len(train) + len(validation) and s2.manifest["passes"] == 2
    assert len(s2.manifest["shards"]) == 2
    # prepared rows in streaming's order, although the store holds them pass by pass
    streamed = datasets.load_dataset("bigearthnet_txt", "s2-all-validation", data_dir=str(fixture_data.root),
                                     streaming=True, split="validation")
    assert list(ds["validation"]["ID"]) == [ex["ID"] for ex in streamed]


# ----------------------------------------------------------------------------- rows keep their own pixels


def test_concatenated_and_interleaved_configs_and_sources_keep_their_own_pixels(four, other_source, references, tmp_path):
    prepared, _ = four
    _, other = prepare("s2-vqa", other_source.root, tmp_path / "other")  # another source, another cache_dir
    _, other_captions = prepare("s2-captioning", other_source.root, tmp_path / "other")
    parts = [tagged(prepared["s2-vqa"][1]["train"], "a"), tagged(prepared["s2-captioning"][1]["train"], "a"),
             tagged(prepared["s2-vqa-validation"][1]["validation"], "a"), tagged(other["test"], "b"),
             tagged(other_captions["bench"], "b"), tagged(prepared["s2-grounding"][1]["test"], "a")]
    combined = datasets.concatenate_datasets(parts)
    assert len(combined) == sum(len(p) for p in parts)
    assert wrong_rows(combined, references) == 0
    mixed = datasets.interleave_datasets(parts, seed=0, probabilities=[1 / 6] * 6, stopping_strategy="all_exhausted")
    assert len(mixed) > len(parts[0]) and wrong_rows(mixed, references) == 0
    shuffled = combined.shuffle(seed=1).select(range(40)).filter(lambda r: r["type"] != "mcq")
    assert wrong_rows(shuffled, references) == 0
    mapped = combined.map(lambda r: {"n": len(r["input"])}, num_proc=2)
    assert wrong_rows(mapped, references) == 0
    both = datasets.DatasetDict({"a": parts[0], "b": parts[3]})
    assert all(wrong_rows(part, references) == 0 for part in both.values())


def test_a_concatenation_saved_and_loaded_in_a_fresh_process_keeps_its_pixels(four, other_source, references, tmp_path):
    prepared, _ = four
    _, other = prepare("s2-vqa", other_source.root, tmp_path / "other")
    combined = datasets.concatenate_datasets([tagged(prepared["s2-vqa"][1]["train"], "a"), tagged(other["train"], "b"),
                                              tagged(prepared["s2-captioning"][1]["test"], "a")])
    combined.save_to_disk(str(tmp_path / "saved"))
    combined.to_parquet(str(tmp_path / "combined.parquet"))
    want = {c: np.stack([expected(references[combined[i]["source"]], combined[i], c) for i in range(len(combined))])
            for c in S2_COLUMNS}
    np.savez(tmp_path / "want.npz", **want)
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import numpy as np, datasets
import bentxt.cache.pair_bands  # registers the PairBands feature; no store is known to this process
want = np.load({str(tmp_path / 'want.npz')!r})
saved = datasets.load_from_disk({str(tmp_path / 'saved')!r}).with_format("numpy")
parquet = datasets.Dataset.from_parquet({str(tmp_path / 'combined.parquet')!r}).with_format("numpy")
for ds in (saved, parquet):
    for c in {S2_COLUMNS!r}:
        got = ds[:][c]
        assert got.dtype == want[c].dtype and np.array_equal(got, want[c]), c
print("ok", len(saved), len(parquet))
"""
    env = {**os.environ, store.STORES_ENV: str(tmp_path / "nowhere")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(len(combined)), str(len(combined))]


def test_push_embedding_puts_each_rows_own_pixels_in_it(four, other_source, references, tmp_path):
    """What push_to_hub and to_parquet call: embed_table_storage, across configs and sources."""
    from datasets.table import embed_table_storage

    prepared, _ = four
    _, other = prepare("s2-vqa", other_source.root, tmp_path / "other")
    combined = datasets.concatenate_datasets([tagged(other["validation"], "b"), tagged(prepared["s2-vqa"][1]["validation"], "a")])
    table = embed_table_storage(combined.with_format("arrow")[:])
    storage = table["s2_60m"].combine_chunks()
    assert storage.field("bytes").null_count == 0 and storage.field("s2").null_count == len(storage)
    for i, raw in enumerate(storage.field("bytes").to_pylist()):
        row = combined[i]
        assert np.array_equal(np.frombuffer(raw, np.uint16).reshape(2, 20, 20),
                              expected(references[row["source"]], row, "s2_60m"))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_each_rows_own_pixels(four, other_source, references, tmp_path, context):
    import torch

    prepared, _ = four
    _, other = prepare("s2-vqa", other_source.root, tmp_path / "other")
    combined = datasets.concatenate_datasets([tagged(prepared["s2-vqa"][1]["test"], "a"), tagged(other["test"], "b")])
    loader = torch.utils.data.DataLoader(combined.with_format("torch"), batch_size=8, num_workers=2,
                                         multiprocessing_context=context)
    seen = 0
    for batch in loader:
        for k in range(len(batch["ID"])):
            row = {"patch_id": batch["patch_id"][k], "s1_name": batch["s1_name"][k]}
            got = batch["s2_10m"][k].numpy()
            assert np.array_equal(got, expected(references[batch["source"][k]], row, "s2_10m").astype(got.dtype))
            seen += 1
    assert seen == len(combined)


# ----------------------------------------------------------------------------- appending safely


_PREPARE = """
import sys
sys.path.insert(0, {root!r})
import datasets, bigearthnet_txt as bt
datasets.disable_progress_bars()
b = bt.BigEarthNetTxt(config_name=sys.argv[1], data_dir=sys.argv[2], cache_dir=sys.argv[3])
b.download_and_prepare(num_proc=2)
ds = b.as_dataset()
print("rows", sum(len(d) for d in ds.values()))
"""


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("larger"), seed=5, n_extra_patches=120)


def _start(config, data, cache_dir):
    code = _PREPARE.format(root=str(REPO))
    return subprocess.Popen([sys.executable, "-c", code, config, str(data), str(cache_dir)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_preparing_two_configs_of_one_source_both_succeed(larger, tmp_path):
    procs = [_start("s1s2-vqa", larger.root, tmp_path), _start("s1s2-captioning", larger.root, tmp_path)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    pairs = [p for p in larger.patches if p.in_archives]
    for sensor, column in (("s2", "patch_id"), ("s1", "s1_name")):
        (folder,) = store_folders(tmp_path, sensor)
        names = store.ImageryStore(folder).tables.names(sensor)
        assert sorted(names) == sorted(getattr(p, column) for p in pairs)  # each pair once, though two wanted it
    reference = rasterio_bands(larger)
    for config in ("s1s2-vqa", "s1s2-captioning"):
        builder = bt.BigEarthNetTxt(config_name=config, data_dir=str(larger.root), cache_dir=str(tmp_path))
        part = builder.as_dataset(split="train")
        numpy = part.with_format("numpy")
        for i in range(0, len(part), 7):
            row = numpy[i]
            for c in ("s1", "s2_20m"):
                assert np.array_equal(row[c], expected(reference, row, c))


def test_a_pass_killed_while_adding_pairs_leaves_the_store_as_it_was(larger, tmp_path):
    prepare("s2-all-bench", larger.root, tmp_path)  # the store exists with the bench pairs
    (folder,) = store_folders(tmp_path)
    before = store.ImageryStore(folder).manifest
    proc = _start("s2-all", larger.root, tmp_path)

    def adding() -> bool:  # the pass has started writing its files
        return bool(glob.glob(os.path.join(folder, ".adding-*", "*.arrow")))

    deadline = time.monotonic() + 120
    while not adding() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert proc.poll() is None, "the pass finished before the kill point; make the fixture larger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = store.ImageryStore(folder)
    assert after.manifest == before  # nothing of the killed pass counts
    store.ImageryStore(folder).check()
    _, ds = prepare("s2-all", larger.root, tmp_path)  # the next pass removes what the killed one left
    entries = set(os.listdir(folder))
    assert not [e for e in entries if e.startswith(".adding-")]
    final = store.ImageryStore(folder)
    assert entries == {store.MANIFEST, store.LOCK} | set(final.committed_files())
    assert sorted(final.tables.names("s2")) == sorted(p.patch_id for p in larger.patches if p.in_archives)
    assert sum(len(d) for d in ds.values()) == sum(1 for p in larger.patches if p.in_archives for _ in range(p.rows))


# ----------------------------------------------------------------------------- sharding


def test_max_shard_size_gives_several_files_for_texts_and_imagery(fixture_data, references, tmp_path):
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root), cache_dir=str(tmp_path))
    builder.download_and_prepare(num_proc=2, max_shard_size="2KB")
    ds = builder.as_dataset()
    for split in ds:
        files = glob.glob(os.path.join(builder.cache_dir, f"bigearthnet_txt-{split}*.arrow"))
        assert len(files) > 1 and len(files) == len(builder.info.splits[split].shard_lengths or files), split
    for sensor in ("s1", "s2"):
        (folder,) = store_folders(tmp_path, sensor)
        assert len(store.ImageryStore(folder).manifest_files()) > 1
    combined = datasets.concatenate_datasets([tagged(ds[s], "a") for s in ds])
    assert wrong_rows(combined, references, columns=("s1",) + S2_COLUMNS) == 0


# ----------------------------------------------------------------------------- a store gone, rebuilt or damaged


def test_a_rebuilt_store_is_never_read_by_rows_of_the_old_one(fixture_data, tmp_path):
    import shutil

    builder, ds = prepare("s2-vqa-test", fixture_data.root, tmp_path)
    old_rows = ds["test"]
    (folder,) = store_folders(tmp_path)
    shutil.rmtree(folder)
    store.forget()
    prepare("s2-captioning-train", fixture_data.root, tmp_path)  # builds the store again: other rows, other generation
    with pytest.raises(store.StoreError, match=r"of these rows was built again since they were prepared "
                                               r".*Prepare the config\(s\) of these rows again"):
        old_rows[0]
    # the config itself is prepared again on its next load (its cache named the old generation)
    _, again = prepare("s2-vqa-test", fixture_data.root, tmp_path)
    fresh = again["test"].with_format("numpy")[0]
    patch = fixture_data.patch(fresh["patch_id"])
    assert np.array_equal(fresh["s2_10m"], np.stack([patch.bands[b] for b in GROUPS["s2_10m"].bands]))


def test_a_damaged_store_is_an_error_naming_the_file(fixture_data, tmp_path):
    builder, ds = prepare("s2-vqa-bench", fixture_data.root, tmp_path)
    (folder,) = store_folders(tmp_path)
    (shard,) = store.ImageryStore(folder).manifest_files()
    os.truncate(os.path.join(folder, shard), 1000)
    store.forget()
    with pytest.raises(store.StoreError, match=rf"the imagery store file {folder}/{shard} has 1000 bytes.*Remove the folder"):
        prepare("s2-vqa-bench", fixture_data.root, tmp_path)
    with pytest.raises(store.StoreError, match=rf"{shard} has 1000 bytes"):
        ds["bench"][0]


# ----------------------------------------------------------------------------- the policy for URLs


def test_a_pass_from_a_url_keeps_every_pair_of_the_archive():
    from bentxt.sources import ArchiveSource, FolderSource

    assert join.keeps_every_pair(ArchiveSource(("https://example.org/BigEarthNet-S2.tar.zst",)), None)
    assert not join.keeps_every_pair(ArchiveSource(("/data/BigEarthNet-S2.tar.zst",)), None)
    assert join.keeps_every_pair(ArchiveSource(("/data/BigEarthNet-S2.tar.zst",)), True)
    assert not join.keeps_every_pair(ArchiveSource(("https://example.org/BigEarthNet-S2.tar.zst",)), False)
    assert not join.keeps_every_pair(FolderSource(("/data/BigEarthNet-S2",)), True)  # read by name: nothing else to keep


def test_store_all_pairs_keeps_the_whole_archive_for_later_configs(fixture_data, tmp_path):
    prepare("s2-captioning-bench", fixture_data.root, tmp_path, store_all_pairs=True)
    (folder,) = store_folders(tmp_path)
    assert sorted(store.ImageryStore(folder).tables.names("s2")) == sorted(p.patch_id for p in fixture_data.patches
                                                                           if p.in_archives)


# ----------------------------------------------------------------------------- what earlier passes found


def test_pairs_found_invalid_are_remembered_for_later_configs(fixture_data, tmp_path):
    """skip_invalid skips and records a bad pair; a later config without it fails at once, naming the pair."""
    from bentxt.imagery.raster import RasterError
    from test_faults import RELEASE_FILES, copy_data, rewrite_archive

    data = copy_data(fixture_data, tmp_path / "data")
    bad = next(p for p in fixture_data.patches if p.in_archives and p.split == "train")
    rewrite_archive(data / RELEASE_FILES["s2"], lambda name, content: (
        name, b"<html>Not Found</html>" if name.endswith(f"{bad.patch_id}_B03.tif") else content))
    _, ds = prepare("s2-vqa", data, tmp_path / "c", skip_invalid=True)
    assert bad.patch_id not in set(ds["train"]["patch_id"]) | set(ds["test"]["patch_id"]) | set(ds["validation"]["patch_id"])
    (folder,) = store_folders(tmp_path / "c")
    assert bad.patch_id in store.ImageryStore(folder).invalid()
    with pytest.raises(RasterError, match=rf"{bad.patch_id}.*found when this pair was first read.*skip_invalid=True"):
        prepare("s2-captioning", data, tmp_path / "c")


def test_a_full_disk_is_refused_before_the_pass_with_the_space_needed(fixture_data, tmp_path, monkeypatch):
    from bentxt.cache import diskspace

    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 1000)
    with pytest.raises(diskspace.DiskFullError, match=r"config s2-vqa: adding 8 image pairs to the imagery store.*"):
        prepare("s2-vqa", fixture_data.root, tmp_path)
    (folder,) = store_folders(tmp_path)
    assert store.ImageryStore(folder).num_rows == 0


# ----------------------------------------------------------------------------- a shared, read-only cache


_READ_ONLY = """
import sys
sys.path.insert(0, {root!r})
import datasets, numpy as np, bigearthnet_txt as bt
datasets.disable_progress_bars()
ds = datasets.load_dataset("bigearthnet_txt", "s2-vqa-bench", data_dir=sys.argv[1], cache_dir=sys.argv[2])
print("rows", ds["bench"].num_rows, int(ds["bench"].with_format("numpy")[:]["s2_10m"].sum()))
try:
    datasets.load_dataset("bigearthnet_txt", "s2-captioning-bench", data_dir=sys.argv[1], cache_dir=sys.argv[2])
except bt.cache.ReadOnlyCacheError as err:
    print("refused", err)
"""


def test_a_prepared_cache_on_a_read_only_mount_opens_for_reading(fixture_data, tmp_path):
    """A shared cache mounted read-only: datasets' lock files cannot be created, but nothing needs writing."""
    cache_dir, mount = tmp_path / "cache", tmp_path / "mounted"
    _, ds = prepare("s2-vqa-bench", fixture_data.root, cache_dir)
    total = int(ds["bench"].with_format("numpy")[:]["s2_10m"].sum())
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(cache_dir), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need root")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only")
        code = _READ_ONLY.format(root=str(REPO))
        out = subprocess.run([sys.executable, "-c", code, str(fixture_data.root), str(mount)], capture_output=True,
                             text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        assert lines[0] == f"rows {ds['bench'].num_rows} {total}"
        assert lines[1].startswith(f"refused the cache {mount} is read-only and holds no prepared s2-captioning-bench")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_text_shard_is_an_error_naming_the_cache_when_loaded(fixture_data, tmp_path, damage):
    builder, _ = prepare("s2-vqa", fixture_data.root, tmp_path)
    (path,) = glob.glob(os.path.join(builder.cache_dir, "bigearthnet_txt-train*.arrow"))
    os.truncate(path, os.path.getsize(path) // 2 if damage == "truncated" else 0)
    fresh = bt.BigEarthNetTxt(config_name="s2-vqa", data_dir=str(fixture_data.root), cache_dir=str(tmp_path))
    with pytest.raises(cache.DamagedCacheError, match=rf"the prepared cache {builder.cache_dir} is damaged \(split "
                                                      rf"train: .*\)\. Remove that folder and load the config again"):
        fresh.as_dataset(split="train")
    import shutil

    shutil.rmtree(builder.cache_dir)  # what the message says: prepared again, the store kept
    (folder,) = store_folders(tmp_path)
    passes = store.ImageryStore(folder).manifest["passes"]
    _, again = prepare("s2-vqa", fixture_data.root, tmp_path)
    assert again["train"].num_rows > 0 and store.ImageryStore(folder).manifest["passes"] == passes


# ----------------------------------------------------------------------------- copies, moves and rebuilds (review)


def test_two_copies_of_a_store_that_grew_apart_never_serve_each_others_rows(fixture_data, tmp_path, references):
    """A copied cache: both copies share the store's generation; rows name the pass that added them, too."""
    import shutil

    prepare("s2-captioning-train", fixture_data.root, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    _, in_a = prepare("s2-captioning-validation", fixture_data.root, tmp_path / "a")
    _, in_b = prepare("s2-captioning-test", fixture_data.root, tmp_path / "b")
    (a,), (b,) = store_folders(tmp_path / "a"), store_folders(tmp_path / "b")
    assert store.ImageryStore(a).reference == store.ImageryStore(b).reference  # the same store, copied
    assert store.ImageryStore(a).tables.names("s2")[-1] != store.ImageryStore(b).tables.names("s2")[-1]
    both = datasets.concatenate_datasets([tagged(in_a["validation"], "a"), tagged(in_b["test"], "a")])
    assert wrong_rows(both, references) == 0
    store.forget()  # as a fresh process would find them: each row in the copy that holds its pass
    assert wrong_rows(both, references) == 0


def test_a_store_rebuilt_while_rows_of_it_are_in_use_is_an_error(fixture_data, tmp_path):
    import shutil

    _, train = prepare("s2-captioning-train", fixture_data.root, tmp_path)
    train["train"].with_format("numpy")[0]  # this process has the store open
    _, validation = prepare("s2-captioning-validation", fixture_data.root, tmp_path)  # appended, not read yet
    (folder,) = store_folders(tmp_path)
    shutil.rmtree(folder)
    prepare("s2-captioning-test", fixture_data.root, tmp_path)  # built again: other pairs under the same rows
    with pytest.raises(store.StoreError, match="built again"):
        validation["validation"].with_format("numpy")[0]


def test_a_moved_store_is_found_through_bentxt_stores_and_not_built_again(fixture_data, tmp_path, monkeypatch):
    import shutil

    prepare("s2-vqa-bench", fixture_data.root, tmp_path / "cache")
    (folder,) = store_folders(tmp_path / "cache")
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(folder, moved / os.path.basename(folder))
    store.forget()
    monkeypatch.setattr(store, "_KNOWN", {})
    monkeypatch.setenv(store.STORES_ENV, str(moved))
    builder, ds = prepare("s2-vqa-bench", fixture_data.root, tmp_path / "cache")  # kept: its store was found
    assert not store_folders(tmp_path / "cache")  # not built again in the cache
    _, more = prepare("s2-captioning-bench", fixture_data.root, tmp_path / "cache")  # a new config uses it too
    assert not store_folders(tmp_path / "cache") and len(os.listdir(moved)) == 1
    patch = fixture_data.patch(more["bench"][0]["patch_id"])
    assert np.array_equal(more["bench"].with_format("numpy")[0]["s2_10m"],
                          np.stack([patch.bands[b] for b in GROUPS["s2_10m"].bands]))


def test_to_parquet_keeps_references_and_portable_makes_a_self_contained_file(fixture_data, tmp_path):
    _, ds = prepare("s2-vqa-bench", fixture_data.root, tmp_path / "cache")
    ds["bench"].to_parquet(str(tmp_path / "refs.parquet"))
    bentxt_portable = __import__("bentxt").portable
    bentxt_portable(ds["bench"]).to_parquet(str(tmp_path / "plain.parquet"))
    import pyarrow.parquet as pq

    refs = pq.read_table(tmp_path / "refs.parquet").column("s2_10m").combine_chunks()
    assert refs.field("bytes").null_count == len(refs)  # references, as the README says: the store must stay
    plain = datasets.Dataset.from_parquet(str(tmp_path / "plain.parquet")).with_format("numpy", dtype=None)
    assert isinstance(plain.features["s2_10m"], datasets.Array3D)
    assert np.array_equal(plain[:]["s2_10m"], ds["bench"].with_format("numpy")[:]["s2_10m"])


def test_store_all_pairs_does_not_store_a_pair_twice(fixture_data, tmp_path):
    prepare("s2-captioning-bench", fixture_data.root, tmp_path)
    prepare("s2-vqa", fixture_data.root, tmp_path, store_all_pairs=True)
    (folder,) = store_folders(tmp_path)
    names = store.ImageryStore(folder).tables.names("s2")
    assert len(names) == len(set(names)) == len([p for p in fixture_data.patches if p.in_archives])


def test_what_a_store_holds_is_read_from_its_index_not_its_shards(fixture_data, tmp_path, monkeypatch):
    """A later config learns the store's names and order from the passes' small index files: on a cold disk, reading
    every batch's names back from the shards costs a random read each (minutes at release scale)."""
    from bentxt.cache.imagery_table import ImageryTables

    prepare("s2-all-train", fixture_data.root, tmp_path)
    prepare("s2-all-validation", fixture_data.root, tmp_path)
    (folder,) = store_folders(tmp_path)
    expected = store.ImageryStore(folder).tables.names("s2")

    def no_shards(self, sensor):
        raise AssertionError("the shards were read")

    monkeypatch.setattr(ImageryTables, "_read", no_shards)
    s2 = store.ImageryStore(folder)
    assert list(s2.rows()) == expected and len(s2.positions()) == len(expected)
    (index, *_) = sorted(f for f in s2.committed_files() if f.endswith(".index.arrow"))
    os.truncate(os.path.join(folder, index), 10)
    with pytest.raises(store.StoreError, match=rf"{index} has 10 bytes"):
        store.ImageryStore(folder).check()


def test_a_new_store_in_a_relative_cache_dir_is_not_called_an_old_one(fixture_data, tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        prepare("s2-vqa-bench", fixture_data.root, "rel")
    assert "earlier version" not in caplog.text and len(store_folders(tmp_path / "rel")) == 1
