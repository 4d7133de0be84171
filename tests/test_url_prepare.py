"""Preparing from archive URLs: each archive is read once, as it downloads, straight into the cache.

No copy of the archives is left in the download folder (unless
``keep_archives=True``), the rows are those prepared from local paths, a
dropped connection resumes with a Range request, and a checksum that does not
match the record fails the preparation without leaving a cache a later run
would take for complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

import bigearthnet_txt as bt
from bentxt.imagery import archives
from bentxt import sources
from http_server import serve_directory
from test_sources import assert_same_datasets

FILES = {"annotations": "BigEarthNet.txt.parquet", "s1": "BigEarthNet-S1.tar.zst", "s2": "BigEarthNet-S2.tar.zst"}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(archives, "HTTP_RETRY_BACKOFF", 0.001)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def from_urls(url: str, cache: Path, config: str = "s1s2-all", **options) -> bt.BigEarthNetTxt:
    files = {k: f"{url}/{name}" for k, name in FILES.items()}
    return bt.BigEarthNetTxt(config_name=config, data_files=files, cache_dir=str(cache), **options)


def archive_gets(log):
    return [(path, rng) for method, path, rng in log if method == "GET" and path.endswith(".tar.zst")]


def as_release(fixture, monkeypatch, url: str, md5_of=None, size_of=None):
    """Record the served fixture files as the release (their URLs, sizes and md5s, unless overridden)."""
    real = {k: dict(v) for k, v in sources.release().items()}
    for key, name in FILES.items():
        data = (fixture.root / name).read_bytes()
        real[key].update(url=f"{url}/{name}", num_bytes=(size_of or {}).get(key, len(data)), sha256=None,
                         md5=(md5_of or {}).get(key, hashlib.md5(data).hexdigest()))
    monkeypatch.setattr(sources, "release", lambda: real)
    monkeypatch.setattr(sources, "recorded_infos", lambda: {})  # the release's split sizes are not the fixture's
    return real


@pytest.fixture(scope="module")
def local(fixture_data, tmp_path_factory):
    """s1s2-all prepared from the local files: the reference rows, time and cache size."""
    cache = tmp_path_factory.mktemp("local")
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root), cache_dir=str(cache))
    start = time.perf_counter()
    builder.download_and_prepare()
    return builder, builder.as_dataset(), time.perf_counter() - start


def test_urls_are_read_in_place_with_the_same_rows_and_no_archive_copy(fixture_data, local, tmp_path, caplog):
    reference_builder, reference, local_seconds = local
    with serve_directory(str(fixture_data.root)) as (url, log):
        builder = from_urls(url, tmp_path / "hf")
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
            start = time.perf_counter()
            builder.download_and_prepare()
            seconds = time.perf_counter() - start
    ds = builder.as_dataset()
    assert set(ds) == set(reference)
    for split in reference:
        assert_same_datasets(ds[split], reference[split])
    # each archive fetched once, by one GET from byte 0: read as it downloads, never copied first
    assert sorted(archive_gets(log)) == [("/BigEarthNet-S1.tar.zst", ""), ("/BigEarthNet-S2.tar.zst", "")]
    assert "BigEarthNet-S2.tar.zst read from its URL as it downloads" in caplog.text
    everything = folder_bytes(tmp_path / "hf")
    prepared = everything - folder_bytes(tmp_path / "hf" / "downloads")  # the dataset's folders and its imagery store
    assert folder_bytes(Path(builder._output_dir)) > 0
    archive_bytes = sum((fixture_data.root / FILES[s]).stat().st_size for s in ("s1", "s2"))
    assert everything <= 1.1 * prepared, (everything, prepared, archive_bytes)
    copies = [p for p in (tmp_path / "hf" / "downloads").rglob("*") if p.is_file() and p.stat().st_size in
              {(fixture_data.root / FILES[s]).stat().st_size for s in ("s1", "s2")}]
    assert copies == []
    print(f"from URLs {seconds:.2f} s, from local paths {local_seconds:.2f} s; HF cache {everything / 1e6:.2f} MB, "
          f"prepared cache {prepared / 1e6:.2f} MB, archives {archive_bytes / 1e6:.2f} MB")
    assert seconds < 1.5 * local_seconds + 2.0  # (+2 s: the server, a busy shared machine)


def test_keep_archives_copies_them_into_the_download_folder(fixture_data, local, tmp_path):
    _, reference, _ = local
    with serve_directory(str(fixture_data.root)) as (url, log):
        builder = from_urls(url, tmp_path / "hf", config="s2-all-bench", keep_archives=True)
        builder.download_and_prepare()
    assert builder.as_dataset()["bench"]["ID"] == reference["bench"]["ID"]  # (its features differ from s1s2's)
    size = (fixture_data.root / FILES["s2"]).stat().st_size
    assert [p for p in (tmp_path / "hf" / "downloads").rglob("*") if p.is_file() and p.stat().st_size == size]
    assert builder.config.options() == {}  # not part of the cache key: the same cache either way


def test_a_dropped_connection_mid_archive_resumes_and_completes(fixture_data, local, tmp_path, monkeypatch, caplog):
    _, reference, _ = local
    with serve_directory(str(fixture_data.root), drop_after=150_000, drops=4) as (url, log):
        as_release(fixture_data, monkeypatch, url)  # the recorded URLs and md5s: checked across the resumes
        builder = bt.BigEarthNetTxt(config_name="s1s2-all", cache_dir=str(tmp_path / "hf"))
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
            builder.download_and_prepare(num_proc=2)
    assert "its md5 is checked on the fly" in caplog.text
    for split in reference:
        assert_same_datasets(builder.as_dataset()[split], reference[split])
    resumed = [rng for _, rng in archive_gets(log) if rng]
    assert len(resumed) == 4 and all(rng.startswith("bytes=") for rng in resumed)


def test_a_wrong_checksum_fails_and_leaves_no_cache_taken_for_complete(fixture_data, tmp_path, monkeypatch):
    with serve_directory(str(fixture_data.root)) as (url, log):
        real = as_release(fixture_data, monkeypatch, url, md5_of={"s2": "0" * 32})
        found = hashlib.md5((fixture_data.root / FILES["s2"]).read_bytes()).hexdigest()
        builder = bt.BigEarthNetTxt(config_name="s1s2-all", cache_dir=str(tmp_path / "hf"))  # the "release" URLs
        assert builder.config.data_dir is None and builder.config.data_files is None
        with pytest.raises(sources.ChecksumError, match=rf"BigEarthNet-S2.tar.zst: md5 {found}, expected 0{{32}}"):
            builder.download_and_prepare(num_proc=2)
        assert not os.path.exists(builder._output_dir)
        assert not [p for p in (tmp_path / "hf").rglob("*.arrow")]  # nothing written is left
        with pytest.raises(Exception):
            builder.as_dataset()
        # a later run with the right record prepares from scratch, and the result is complete
        real["s2"]["md5"] = found
        again = bt.BigEarthNetTxt(config_name="s1s2-all", cache_dir=str(tmp_path / "hf"))
        again.download_and_prepare()
        assert sum(again.as_dataset()[s].num_rows for s in bt.SPLITS) == fixture_data.table.num_rows
        # a size the server announces that differs from the record fails at the first bytes
        real["s1"]["num_bytes"] += 1
        log.clear()
        third = bt.BigEarthNetTxt(config_name="s1-all", cache_dir=str(tmp_path / "hf3"))
        with pytest.raises(sources.ChecksumError, match=r"BigEarthNet-S1.tar.zst: size \d+ bytes, expected \d+ bytes"):
            third.download_and_prepare()
        assert not os.path.exists(third._output_dir)


def test_no_checks_reads_a_release_url_without_comparing(fixture_data, tmp_path, monkeypatch):
    with serve_directory(str(fixture_data.root)) as (url, log):
        as_release(fixture_data, monkeypatch, url, md5_of={"s2": "0" * 32})
        builder = bt.BigEarthNetTxt(config_name="s2-all-bench", cache_dir=str(tmp_path / "hf"))
        builder.download_and_prepare(verification_mode="no_checks")
    assert builder.as_dataset()["bench"].num_rows > 0


def test_all_checks_compares_any_archive_url_with_the_record_as_it_is_read(fixture_data, tmp_path, monkeypatch):
    with serve_directory(str(fixture_data.root)) as (url, log):
        as_release(fixture_data, monkeypatch, "http://elsewhere.invalid", md5_of={"s2": "1" * 32})
        files = sources.download(
            {"annotations": f"{url}/{FILES['annotations']}", "s2": sources.ArchiveSource((f"{url}/{FILES['s2']}",))},
            _NoDownloads(), verification_mode="all_checks",
        )
        assert files["s2"].paths == (f"{url}/{FILES['s2']}",) and files["s2"].checksums[0].digest == "1" * 32
        with pytest.raises(sources.ChecksumError, match=r"md5 [0-9a-f]{32}, expected 1{32}"):
            list(files["s2"].patches("s2", ("B02",)))
        basic = sources.download({"annotations": "x", "s2": sources.ArchiveSource((f"{url}/{FILES['s2']}",))},
                                 _NoDownloads(), verification_mode="basic_checks")
        assert basic["s2"].checksums == ()  # not the recorded URL: nothing to compare with by default


class _NoDownloads:
    """A download manager for the unit tests above: the parquet is 'downloaded' to itself, archives never."""

    def download(self, path):
        if isinstance(path, list):
            raise AssertionError(f"archives must not be downloaded: {path}")
        return path


def test_an_archive_url_is_never_fetched_to_ask_whether_it_is_a_folder(fixture_data, tmp_path):
    """fsspec's HTTP isdir GETs the whole body (54-63 GB into memory for a release archive)."""
    assert sources.is_archive_url("https://zenodo.org/records/10891137/files/BigEarthNet-S1.tar.zst?download=1")
    assert sources.is_archive_url("http://h/BigEarthNet-S2.tar.gzab") and not sources.is_archive_url("http://h/exports/")
    assert not sources.is_archive_url("/data/BigEarthNet-S2.tar.zst")
    with serve_directory(str(fixture_data.root)) as (url, log):
        builder = from_urls(url, tmp_path / "hf")  # resolves the sources and computes the cache key
        assert type(sources.detect(f"{url}/{FILES['s2']}", "s2")) is sources.ArchiveSource
        assert builder.config.name == "s1s2-all" and archive_gets(log) == []


def test_streaming_s1s2_from_archives_says_what_it_reads_before_the_first_example(fixture_data, tmp_path, caplog):
    builder = bt.BigEarthNetTxt(config_name="s1s2-vqa-bench", data_dir=str(fixture_data.root), cache_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        first = next(iter(builder.as_streaming_dataset(split="bench")))
    assert first["s1"].shape[0] == 2
    size = (fixture_data.root / FILES["s1"]).stat().st_size / 1e9
    pairs = len({p.s1_name for p in fixture_data.patches if p.split == "bench" and p.in_archives})
    assert (f"streaming s1s2-vqa-bench split bench: before the first example, all of archive BigEarthNet-S1.tar.zst "
            f"({size:.1f} GB) is read and the bands of its {pairs} pair(s) of the split are spilled") in caplog.text
    assert "Faster routes: a prepared cache" in caplog.text and "an LMDB as image_source" in caplog.text
