"""bentxt/cache/folders.py: one cache folder per selection and inputs, rebuilt when an input changes; spill folders cleaned up."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq

import bigearthnet_txt as bt
from bentxt.cache import folders as cache
from bentxt.config import resolve_config

REPO = Path(__file__).resolve().parents[1]
RELEASE = ("BigEarthNet.txt.parquet", "BigEarthNet-S1.tar.zst", "BigEarthNet-S2.tar.zst")
CONFIG = "s2-captioning-bench"


def folder_of(ds) -> str:
    return os.path.dirname(ds.cache_files[0]["filename"])


def spill_root(cache_dir) -> Path:
    return Path(cache.spill_root(str(cache_dir)))


# ----------------------------------------------------------------------------- the config id


def test_the_config_id_names_the_config_its_selection_and_its_inputs(fixture_data, tmp_path):
    config = resolve_config(CONFIG, data_dir=str(fixture_data.root))
    config_id = cache.config_id(config)
    assert re.fullmatch(rf"{CONFIG}-[0-9a-f]{{12}}-[0-9a-f]{{12}}", config_id), config_id
    name, selection, inputs = config_id.rsplit("-", 2)
    # another selection of the same files: another selection hash, the same inputs hash
    other = cache.config_id(resolve_config(CONFIG, data_dir=str(fixture_data.root), countries=["Portugal"]))
    assert other.rsplit("-", 2)[1] != selection and other.rsplit("-", 2)[2] == inputs
    # the same files elsewhere: their locations are part of the selection, so another cache
    copy = tmp_path / "copy"
    copy.mkdir()
    for name_ in RELEASE:
        shutil.copy(fixture_data.root / name_, copy / name_)
    moved = cache.config_id(resolve_config(CONFIG, data_dir=str(copy)))
    assert moved != config_id
    # a file that is not an input does not count: the id never depends on a folder listing
    (Path(copy) / "notes.csv").write_text("a,b\n")
    assert cache.config_id(resolve_config(CONFIG, data_dir=str(copy))) == moved


def test_one_cache_for_one_selection_whatever_the_route(fixture_data, tmp_path, monkeypatch):
    """load_dataset with a relative, an absolute or a symlinked data_dir, and the class: one folder."""
    caches = tmp_path / "caches"
    link = tmp_path / "link"
    os.symlink(fixture_data.root, link)
    monkeypatch.chdir(fixture_data.root.parent)
    relative = os.path.relpath(fixture_data.root)
    assert not os.path.isabs(relative)
    folders = []
    for data_dir in (relative, str(fixture_data.root), str(link), str(link) + "/"):
        ds = datasets.load_dataset("bigearthnet_txt", CONFIG, data_dir=data_dir, cache_dir=str(caches))
        folders.append(folder_of(ds["bench"]))
    builder = bt.BigEarthNetTxt(config_name=CONFIG, data_dir=relative, cache_dir=str(caches))
    builder.download_and_prepare()
    folders.append(folder_of(builder.as_dataset(split="bench")))
    folders.append(builder.cache_dir)
    assert len(set(folders)) == 1, folders
    # nothing else was prepared: one text cache, and one imagery store for the one source
    assert sorted(os.listdir(caches / "bigearthnet_txt")) == sorted([Path(folders[0]).parents[1].name, "imagery"])
    assert len(os.listdir(caches / "bigearthnet_txt" / "imagery")) == 1
    inputs = json.loads((Path(folders[0]) / cache.INPUTS_FILE).read_text())
    assert inputs["selection"]["files"]["annotations"] == os.path.realpath(fixture_data.parquet)
    assert set(inputs["inputs"]) == {"annotations", "s2"}


def test_a_changed_parquet_gives_a_new_cache_and_says_why(fixture_data, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("BigEarthNet.txt.parquet", "BigEarthNet-S2.tar.zst"):
        shutil.copy(fixture_data.root / name, data / name)
    kwargs = {"data_dir": str(data), "cache_dir": str(tmp_path / "c")}
    first = datasets.load_dataset("bigearthnet_txt", "s2-captioning", **kwargs)
    n_captions = sum(1 for t in fixture_data.table["type"].to_pylist() if t == "captioning")
    assert sum(p.num_rows for p in first.values()) == n_captions
    table = fixture_data.table
    dropped = next(r["ID"] for r in table.to_pylist() if r["type"] == "captioning" and r["split"] == "train")
    pq.write_table(table.filter([i != dropped for i in table["ID"].to_pylist()]), data / "BigEarthNet.txt.parquet")
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        second = datasets.load_dataset("bigearthnet_txt", "s2-captioning", **kwargs)
    assert sum(p.num_rows for p in second.values()) == n_captions - 1
    assert dropped not in second["train"]["ID"]
    assert folder_of(second["train"]) != folder_of(first["train"])
    old_id, new_id = (Path(folder_of(d["train"])).parents[1].name for d in (first, second))
    assert old_id.rsplit("-", 1)[0] == new_id.rsplit("-", 1)[0]  # same selection, other inputs
    line = next(r.getMessage() for r in caplog.records if "changed since the cache" in r.getMessage())
    assert "config s2-captioning: input(s) annotations changed" in line and old_id in line
    # the first cache is still what it was (nothing was overwritten)
    assert sum(p.num_rows for p in first.values()) == n_captions


def test_the_cache_id_never_lists_the_data_dir(fixture_data, tmp_path):
    """100,000 band files beside the release files: the builder is there at once (no glob, no walk)."""
    big = tmp_path / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"S2A_{i:06d}_B02.tif", os.O_CREAT | os.O_WRONLY, 0o644))
    for name in RELEASE:
        os.symlink(fixture_data.root / name, big / name)
    start = time.perf_counter()
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s1s2-vqa", data_dir=str(big), cache_dir=str(tmp_path / "c"))
    elapsed = time.perf_counter() - start
    assert elapsed < 2, elapsed
    assert type(builder).__name__ == "BigEarthNetTxt" and builder.config.data_dir == str(big)
    assert re.fullmatch(r"s1s2-vqa-[0-9a-f]{12}-[0-9a-f]{12}", Path(builder.cache_dir).parents[1].name)


# ----------------------------------------------------------------------------- interrupted runs


def test_start_clean_empties_only_an_incomplete_folder(tmp_path):
    incomplete = tmp_path / "abc.incomplete"
    (incomplete / "imagery").mkdir(parents=True)
    (incomplete / "imagery" / "s2-00000.arrow").write_bytes(b"x")
    (incomplete / "bigearthnet_txt-train-00001-of-00002.arrow").write_bytes(b"x")
    cache.start_clean(str(incomplete))
    assert list(incomplete.iterdir()) == []
    done = tmp_path / "abc"
    done.mkdir()
    (done / "keep.arrow").write_bytes(b"x")
    cache.start_clean(str(done))
    cache.start_clean(str(tmp_path / "missing.incomplete"))
    assert (done / "keep.arrow").exists()


# ----------------------------------------------------------------------------- streaming's spill folders


def test_a_streamed_s1s2_run_leaves_the_spill_folder_empty(fixture_data, tmp_path):
    it = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa", data_dir=str(fixture_data.root), streaming=True,
                               split="validation", cache_dir=str(tmp_path))
    rows = iter(it)
    first = next(rows)
    spill = spill_root(tmp_path)
    assert spill == tmp_path / "bigearthnet_txt" / ".spill"
    # while streaming, S1 is spilled into a folder of this process
    (folder,) = spill.iterdir()
    assert folder.name.startswith(f"{os.getpid()}-") and list(folder.rglob("s1-*.arrow"))
    n = 1 + sum(1 for _ in rows)
    assert n == sum(1 for r in fixture_data.table.to_pylist() if r["split"] == "validation" and r["type"] in ("binary", "mcq"))
    assert first["s1"].shape == (2, 120, 120)
    assert list(spill.iterdir()) == []


def test_a_spill_folder_of_a_dead_process_is_removed_by_the_next_run(fixture_data, tmp_path):
    spill = spill_root(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead.pid, alive.pid):
            (spill / f"{pid}-0" / "imagery").mkdir(parents=True)
            (spill / f"{pid}-0" / "imagery" / "s1-00000.arrow").write_bytes(b"\0" * 1000)
        it = datasets.load_dataset("bigearthnet_txt", "s1s2-binary-bench", data_dir=str(fixture_data.root),
                                   streaming=True, split="bench", cache_dir=str(tmp_path))
        assert sum(1 for _ in it) > 0
        assert sorted(p.name for p in spill.iterdir()) == [f"{alive.pid}-0"]  # a running process keeps its folder
    finally:
        alive.kill()
        alive.wait()
    cache.remove_orphans(str(spill))
    assert list(spill.iterdir()) == []


_STREAM = """
import sys, time
sys.path.insert(0, {repo!r})
import datasets, bigearthnet_txt
datasets.disable_progress_bars()
it = datasets.load_dataset("bigearthnet_txt", "s1s2-all", data_dir={data!r}, streaming=True, split="train", cache_dir={cache!r})
for example in it:
    print("streaming", flush=True)
    time.sleep(120)
"""


def test_sigterm_during_streaming_leaves_no_spill_folder(fixture_data, tmp_path):
    code = _STREAM.format(repo=str(REPO), data=str(fixture_data.root), cache=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "streaming", proc.stderr.read()[-3000:]
        spill = spill_root(tmp_path)
        (folder,) = spill.iterdir()  # the S1 side is spilled while the stream runs
        assert folder.name.startswith(f"{proc.pid}-") and list(folder.rglob("*.arrow"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert list(spill.iterdir()) == []


def test_a_relative_and_an_absolute_image_source_share_one_cache(fixture_data, tmp_path, monkeypatch):
    from bentxt.cache import folders as cache_module
    from bentxt.config import resolve_config

    monkeypatch.chdir(fixture_data.root.parent)
    relative = os.path.relpath(fixture_data.s2_archive)
    a = resolve_config("s2-vqa", data_dir=str(fixture_data.root), image_source=relative)
    b = resolve_config("s2-vqa", data_dir=str(fixture_data.root), image_source=str(fixture_data.s2_archive))
    assert cache_module.config_id(a) == cache_module.config_id(b)
