"""Streaming over HTTP from a server that drops connections mid-archive.

The archive stream resumes with ``Range: bytes=<pos>-`` and the examples come
out exactly as from local files; a server that keeps failing at one spot, or
that ignores Range, ends in a clear ArchiveError instead of a hang or garbage.
"""

from __future__ import annotations

import logging
import re
import time

import pytest
from datasets import DownloadConfig

import bigearthnet_txt as bt
from bentxt.imagery import archives
from http_server import serve_directory
from test_builder import assert_same_examples, prepare

FILES = {"annotations": "BigEarthNet.txt.parquet", "s1": "BigEarthNet-S1.tar.zst", "s2": "BigEarthNet-S2.tar.zst"}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(archives, "HTTP_RETRY_BACKOFF", 0.001)


def stream(config, url, cache, split):
    files = {k: f"{url}/{name}" for k, name in FILES.items()}
    return bt.BigEarthNetTxt(config_name=config, data_files=files, cache_dir=str(cache)).as_streaming_dataset(split=split)


def archive_gets(log):
    return [(path, rng) for method, path, rng in log if method == "GET" and path.endswith(".tar.zst")]


def error_chain(err):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def resume_offsets(log, path):
    return [int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) for p, rng in archive_gets(log) if p == path and rng]


# ----------------------------------------------------------------------------- the stream itself


@pytest.mark.parametrize("drops", [-1, 3])
def test_resumable_stream_returns_exactly_the_file_bytes(drops, fixture_data, caplog):
    expected = fixture_data.s2_archive.read_bytes()
    with serve_directory(str(fixture_data.root), drop_after=100_000, drops=drops) as (url, log):
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
            with archives.ResumableHTTPStream(f"{url}/BigEarthNet-S2.tar.zst") as raw:
                chunks = iter(lambda: raw.read(7_777), b"")  # odd sizes: drops fall inside reads
                assert b"".join(chunks) == expected
                assert raw.pos == raw.size == len(expected)
    offsets = list(range(100_000, len(expected), 100_000))
    offsets = offsets[:drops] if drops > 0 else offsets
    assert resume_offsets(log, "/BigEarthNet-S2.tar.zst") == offsets  # each resume starts where the drop was
    assert "BigEarthNet-S2.tar.zst: connection lost at byte 100000 of" in caplog.text
    assert f"Range: bytes={offsets[-1]}-" in caplog.text


class _CutAfter:
    """A response body that ends early without an error, as from a proxy that closes cleanly."""

    def __init__(self, file, limit):
        self._file, self._left = file, limit

    def read(self, n):
        data = self._file.read(min(n, self._left))
        self._left -= len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_a_body_shorter_than_its_content_length_counts_as_a_drop(fixture_data):
    expected = fixture_data.s1_archive.read_bytes()
    with serve_directory(str(fixture_data.root)) as (url, log):
        raw = archives.ResumableHTTPStream(f"{url}/BigEarthNet-S1.tar.zst")
        real_open = raw._open

        def open_and_cut_the_first_response():
            first = raw.pos == 0
            real_open()
            if first:
                raw._file = _CutAfter(raw._file, 50_000)

        raw._open = open_and_cut_the_first_response
        with raw:
            assert raw.read() == expected
    assert resume_offsets(log, "/BigEarthNet-S1.tar.zst") == [50_000]


def test_download_config_storage_options_are_used_when_resuming(fixture_data):
    local = [name for name, _ in archives.iter_tar_zst(str(fixture_data.s1_archive))]
    dlc = DownloadConfig(storage_options={"http": {"headers": {"User-Agent": "bentxt-test"}}})
    with serve_directory(str(fixture_data.root), drop_after=250_000) as (url, log):
        remote = [name for name, _ in archives.iter_tar_zst(f"{url}/BigEarthNet-S1.tar.zst", dlc)]
    assert remote == local
    assert resume_offsets(log, "/BigEarthNet-S1.tar.zst") == [250_000, 500_000, 750_000]
    assert {r.headers["User-Agent"] for r in log if r[1].endswith(".tar.zst")} == {"bentxt-test"}


# ----------------------------------------------------------------------------- through the builder


@pytest.mark.parametrize("config,split,read", [("s2-all-test", "test", ["s2"]), ("s1s2-vqa-bench", "bench", ["s1", "s2"])])
def test_streaming_survives_dropped_connections(config, split, read, fixture_data, tmp_path):
    _, ds = prepare(config, fixture_data, tmp_path / "local")
    with serve_directory(str(fixture_data.root), drop_after=100_000) as (url, log):  # every response cut after 100 kB
        streamed = list(stream(config, url, tmp_path / "http", split))
    assert_same_examples(streamed, ds[split])
    ids = [ex["ID"] for ex in streamed]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(ds[split]["ID"])
    for archive in (FILES[sensor] for sensor in read):
        size = (fixture_data.root / archive).stat().st_size
        # resumed at increasing offsets, each where the previous response was cut: no byte fetched twice
        assert resume_offsets(log, f"/{archive}") == list(range(100_000, size, 100_000)), archive


def test_a_connection_that_keeps_dropping_gives_up_with_a_clear_error(fixture_data, tmp_path, caplog):
    start = time.monotonic()
    with serve_directory(str(fixture_data.root), drop_at=300_000) as (url, log):
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"), pytest.raises(Exception) as info:
            list(stream("s2-all-test", url, tmp_path, "test"))
    assert time.monotonic() - start < 5
    err = next(e for e in error_chain(info.value) if isinstance(e, archives.ArchiveError))
    message = str(err)
    assert "BigEarthNet-S2.tar.zst" in message and "stopped at byte 300000 of" in message
    assert f"gave up after {archives.HTTP_MAX_RETRIES} retries" in message
    assert re.search(r"the last member read completely is BigEarthNet-S2/\S+_B\w+\.tif", message), message
    assert resume_offsets(log, "/BigEarthNet-S2.tar.zst") == [300_000] * archives.HTTP_MAX_RETRIES
    assert caplog.text.count("connection lost at byte 300000") == archives.HTTP_MAX_RETRIES


def test_a_server_that_ignores_range_cannot_be_resumed(fixture_data, tmp_path):
    with serve_directory(str(fixture_data.root), drop_after=300_000, honour_range=False) as (url, log):
        with pytest.raises(Exception) as info:
            list(stream("s2-all-test", url, tmp_path, "test"))
    err = next(e for e in error_chain(info.value) if isinstance(e, archives.ArchiveError))
    assert "BigEarthNet-S2.tar.zst" in str(err) and "does not support resuming" in str(err)
    assert "byte 300000" in str(err) and "HTTP 200 without Content-Range" in str(err)
    assert resume_offsets(log, "/BigEarthNet-S2.tar.zst") == [300_000]  # no retry: it could only fail again


# ----------------------------------------------------------------------------- issue 20: a stalled server


def test_a_stalled_server_is_reported_and_resumed_after_the_timeout(fixture_data, caplog):
    """aiohttp's default gave 300 s of silence per stalled attempt; now BENTXT_HTTP_TIMEOUT (here 0.5 s) and a warning."""
    import http.server
    import threading

    data = fixture_data.s2_archive.read_bytes()
    released = threading.Event()
    gets = []

    class Stalling(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self):
            start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
            gets.append(start)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if len(gets) == 1:  # the first answer sends 50 kB, then nothing, without closing
                self.wfile.write(data[:50_000])
                self.wfile.flush()
                released.wait(60)
                return
            self.wfile.write(data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/BigEarthNet-S2.tar.zst"
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
            with archives.ResumableHTTPStream(url, timeout=0.5) as raw:
                assert b"".join(iter(lambda: raw.read(1 << 16), b"")) == data
        assert time.monotonic() - started < 50  # well before the stalled answer would have ended (60 s)
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert gets[0] == 0 and gets[1] > 0  # resumed where the stall began
    assert re.search(r"Archive http://127\.0\.0\.1:\d+/BigEarthNet-S2\.tar\.zst: no data for 0 s at byte \d+ of "
                     rf"{len(data)} \(a stalled server or connection\); reconnecting \[1/5\] \(BENTXT_HTTP_TIMEOUT",
                     caplog.text), caplog.text
    assert archives.HTTP_STALL_TIMEOUT == 60.0  # the default, unless BENTXT_HTTP_TIMEOUT says otherwise
