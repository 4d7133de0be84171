"""dataset_infos/: generated from the code, and used by verification_mode."""

from __future__ import annotations

import hashlib

import datasets
import pytest
from datasets.utils.info_utils import NonMatchingSplitsSizesError

import bigearthnet_txt as bt
from bentxt.tools import infos
from bentxt import sources
from bentxt.config import CONFIGS, features_for
from bentxt.cache.pair_bands import PairBands


def test_dataset_infos_json_is_up_to_date_with_the_code():
    assert infos.main(["--check"]) == 0, "run: python -m bentxt.tools.infos"
    recorded = sources.recorded_infos()
    assert set(recorded) == {c.name for c in bt.BigEarthNetTxt.BUILDER_CONFIGS} == set(CONFIGS)
    for config in bt.BigEarthNetTxt.BUILDER_CONFIGS:
        features = datasets.Features.from_dict(recorded[config.name]["features"])
        assert features == features_for(config, storage="cache")  # what a prepared dataset has
    assert isinstance(datasets.Features.from_dict(recorded["s1s2-vqa"]["features"])["s2_10m"], PairBands)
    assert recorded["s1s2-all"]["splits"]["bench"]["num_examples"] == 15029
    assert recorded["s2-all-train"]["splits"] == {"train": {"name": "train", "num_examples": 4674281}}
    assert recorded["s2-vqa"]["splits"] == {}  # per-task sizes are not published: nothing is claimed
    urls = recorded["s1-captioning"]["download_checksums"]
    assert sorted(u.split("/")[-1] for u in urls) == ["BigEarthNet-S1.tar.zst?download=1", "BigEarthNet.txt.parquet"]


def _as_release(fixture, monkeypatch, md5_of=None):
    """Pretend the fixture files are the release: record their sizes and (unless overridden) md5s."""
    real = {k: dict(v) for k, v in sources.release().items()}
    for key, path in (("annotations", fixture.parquet), ("s1", fixture.s1_archive), ("s2", fixture.s2_archive)):
        data = open(path, "rb").read()
        real[key].update(num_bytes=len(data), sha256=None, md5=(md5_of or {}).get(key, hashlib.md5(data).hexdigest()))
    monkeypatch.setattr(sources, "release", lambda: real)
    monkeypatch.setattr(sources, "recorded_infos", lambda: {})  # the release's split sizes are not the fixture's
    return real


def _builder(fixture, tmp_path, config="s1s2-all"):
    return bt.BigEarthNetTxt(config_name=config, data_dir=str(fixture.root), cache_dir=str(tmp_path))


def test_all_checks_compares_sizes_with_the_recorded_release(fixture_data, tmp_path):
    with pytest.raises(sources.ChecksumError, match=r"BigEarthNet.txt.parquet: size \d+ bytes, expected 466819745 bytes"):
        _builder(fixture_data, tmp_path).download_and_prepare(verification_mode="all_checks")
    _builder(fixture_data, tmp_path / "basic").download_and_prepare()  # basic checks do not hash 118 GB


def test_all_checks_names_expected_and_found_checksums(fixture_data, tmp_path, monkeypatch):
    real = _as_release(fixture_data, monkeypatch, md5_of={"s2": "0" * 32})
    found = hashlib.md5(open(fixture_data.s2_archive, "rb").read()).hexdigest()
    with pytest.raises(sources.ChecksumError, match=rf"BigEarthNet-S2.tar.zst: md5 {found}, expected 0{{32}}"):
        _builder(fixture_data, tmp_path).download_and_prepare(verification_mode="all_checks")
    real["s2"]["md5"] = found
    _builder(fixture_data, tmp_path / "ok").download_and_prepare(verification_mode="all_checks")


def test_recorded_split_sizes_are_verified_for_the_release_parquet(fixture_data, tmp_path, monkeypatch):
    _as_release(fixture_data, monkeypatch)
    counts = {s: sum(1 for r in fixture_data.table["split"].to_pylist() if r == s) for s in bt.SPLITS}
    recorded = {"s1s2-all": {"splits": {s: {"name": s, "num_examples": n} for s, n in counts.items()}}}
    monkeypatch.setattr(sources, "recorded_infos", lambda: recorded)
    b = _builder(fixture_data, tmp_path / "a")
    b.download_and_prepare()
    assert {s: b.info.splits[s].num_examples for s in bt.SPLITS} == counts
    recorded["s1s2-all"]["splits"]["bench"]["num_examples"] += 1
    with pytest.raises(NonMatchingSplitsSizesError):
        _builder(fixture_data, tmp_path / "b").download_and_prepare()
    _builder(fixture_data, tmp_path / "c").download_and_prepare(verification_mode="no_checks")
    # filtered selections make no claim about sizes
    b = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root), cache_dir=str(tmp_path / "d"),
                          countries=["Austria"])
    b.download_and_prepare()
