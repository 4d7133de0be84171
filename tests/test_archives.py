"""Tests for bentxt.imagery.archives' tar reader: hostile headers, bounded memory, and agreement with ``tarfile``.

Archives are written by ``tarfile`` and then edited byte by byte
(tests/tar_fuzz_helpers.py); every header edit recomputes the checksum so it
reaches the field checks instead of stopping at the checksum.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bentxt.imagery import archives
from bentxt.imagery.archives import ArchiveError, iter_archive_patches, iter_tar
from bentxt.imagery.layout import band_path, reference_map_path
from bentxt.imagery.raster import RasterError, max_band_file_bytes
from bentxt.imagery.readers import BadBand, decode_patch
from tar_fuzz_helpers import (
    BLOCK,
    end_of_archive,
    header,
    header_regions,
    member,
    pax_member,
    set_field,
    tar_bytes,
    tarfile_files,
    time_limit,
    with_checksum,
    write_tar_zst_with_zeros,
)

REPO = Path(__file__).resolve().parents[1]
PATCH = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
NEXT_PATCH = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_58"
S1_PATCH = "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_26_57"
#: a first member that is fine, so errors must point past it: its header is at 0, the next one at 1024
FIRST = member("first.txt", b"hello")


def read(tmp_path: Path, data: bytes, name: str = "broken.tar") -> List[Tuple[str, bytes]]:
    path = tmp_path / name
    path.write_bytes(data)
    with time_limit(10):
        return list(iter_tar([str(path)]))


def assert_archive_error(tmp_path: Path, data: bytes, *fragments: str) -> str:
    with pytest.raises(ArchiveError) as info:
        read(tmp_path, data)
    message = str(info.value)
    assert "broken.tar" in message
    for fragment in fragments:
        assert fragment in message
    return message


# --------------------------------------------------------------------------- header fields


@pytest.mark.parametrize(
    "records, problem",
    [
        (b"0 path=x\n", "has length 0, which does not fit"),
        (b"-5 path=x\n", "has no valid length"),
        (b"abc path=x\n", "has no valid length"),
        (b"x5 path=x\n", "has no valid length"),
        (b"99 path=x\n", "has length 99, which does not fit its header of 10 bytes"),
        (b"2 path=x\n", "has length 2, which does not fit"),
        (b"4 path=x\n", "is not <length> <key>=<value>\\n"),
        (b"9 path=x!", "is not <length> <key>=<value>\\n"),
        (b"9 pathxx\n", "is not <length> <key>=<value>\\n"),
        (b"11 path=ab\n2", "at byte 11 of its header has no valid length"),
    ],
    ids=["zero", "negative", "not-a-number", "junk-before-digits", "past-the-data", "shorter-than-its-text",
         "cut-inside-its-key", "no-newline", "no-equals", "trailing-junk"],
)
def test_a_bad_pax_record_is_an_archive_error_not_a_hang(tmp_path: Path, records: bytes, problem: str) -> None:
    """A record length of 0 used to spin forever at 100 % CPU; a non-numeric one escaped as a bare ValueError."""
    data = FIRST + pax_member(records) + member("second.txt", b"x") + end_of_archive()
    assert_archive_error(tmp_path, data, problem, "after member first.txt", "(tar header at byte 1024 ")


@pytest.mark.parametrize(
    "field, start, end",
    [("mode", 100, 108), ("uid", 108, 116), ("gid", 116, 124), ("size", 124, 136), ("mtime", 136, 148),
     ("devmajor", 329, 337), ("devminor", 337, 345)],
)
@pytest.mark.parametrize("garbage", [b"12x4567\0", b"-000001\0", b"+000001\0", b"0_00001\0", b"1 2\0\0\0\0\0"],
                         ids=["letter", "minus", "plus", "underscore", "inner-space"])
def test_a_non_numeric_header_field_is_an_archive_error(
    tmp_path: Path, field: str, start: int, end: int, garbage: bytes
) -> None:
    second = set_field(header("second.txt", 1), start, end, garbage.ljust(end - start, b"\0"))
    data = FIRST + second + b"x".ljust(BLOCK, b"\0") + end_of_archive()
    assert_archive_error(tmp_path, data, f"the {field} field of a tar header is not a number", "(tar header at byte 1024 ")


def test_a_non_numeric_checksum_is_an_archive_error(tmp_path: Path) -> None:
    second = bytearray(header("second.txt", 1))
    second[148:156] = b"0x1234\0 "
    data = FIRST + bytes(second) + b"x".ljust(BLOCK, b"\0") + end_of_archive()
    assert_archive_error(tmp_path, data, "the checksum field of a tar header is not a number", "(tar header at byte 1024 ")


@pytest.mark.parametrize(
    "size_field, problem",
    [
        (b"\x80" + (2**80).to_bytes(11, "big"), f"declares {2**80} bytes, more than any member could have"),
        (b"\x80" + (2**40 + 1).to_bytes(11, "big"), f"declares {2**40 + 1} bytes"),
        (b"\xff" * 12, "declares a negative size (-1)"),
    ],
    ids=["2**80", "just-over-1-TiB", "negative"],
)
def test_an_impossible_base256_size_is_an_archive_error(tmp_path: Path, size_field: bytes, problem: str) -> None:
    """A GNU base-256 size of 2**80 used to escape as a bare OverflowError."""
    second = set_field(header("second.txt", 0), 124, 136, size_field)
    assert_archive_error(tmp_path, FIRST + second + end_of_archive(), problem, "(tar header at byte 1024 ")


def test_a_large_base256_size_within_bounds_is_read(tmp_path: Path) -> None:
    """GNU tar writes sizes >= 8 GiB in base-256; the same encoding of a small size reads normally."""
    second = set_field(header("second.txt", 3), 124, 136, b"\x80" + (3).to_bytes(11, "big"))
    data = FIRST + second + b"abc".ljust(BLOCK, b"\0") + end_of_archive()
    assert read(tmp_path, data) == [("first.txt", b"hello"), ("second.txt", b"abc")]


def test_the_fast_byte_sum_is_exactly_sum_for_any_block() -> None:
    """The header checksum is computed from two Adler-32 halves: exact for every 512-byte block."""
    import random

    rng = random.Random(0)
    blocks = [bytes(512), b"\xff" * 512, b"\x80" * 256 + b"\xff" * 256]
    blocks += [bytes(rng.getrandbits(8) for _ in range(512)) for _ in range(300)]
    for block in blocks:
        assert archives._byte_sum(block) == sum(block)


def test_a_repeated_long_name_header_is_checked_once_and_a_damaged_copy_is_refused(tmp_path: Path, monkeypatch) -> None:
    """The release repeats one GNU long-name header per name length: it is checked once, by its exact bytes."""
    names = ["a" * 150, "b" * 150, "c" * 150]  # one name length: three identical ././@LongLink headers
    data = tar_bytes([(name, name[:1].encode()) for name in names])
    checked = []
    real_check = archives._check_header
    monkeypatch.setattr(archives, "_check_header", lambda block: checked.append(block[156:157]) or real_check(block))
    assert read(tmp_path, data) == [(name, name[:1].encode()) for name in names] == tarfile_files(data)[0]
    assert checked.count(b"L") == 1 and checked.count(b"0") == 3
    third_long_name = header_regions(data)[2][0]
    damaged = bytearray(data)
    damaged[third_long_name + 140] ^= 1  # a digit of its mtime: still a number, only the checksum can tell
    assert_archive_error(tmp_path, bytes(damaged), "checksum mismatch", f"after member {names[1]}",
                         f"(tar header at byte {third_long_name} ")


def test_a_checksum_mismatch_names_the_archive_and_offset(tmp_path: Path) -> None:
    second = bytearray(header("second.txt", 1))
    second[0] ^= 1
    data = FIRST + bytes(second) + b"x".ljust(BLOCK, b"\0") + end_of_archive()
    assert_archive_error(tmp_path, data, "checksum mismatch", "after member first.txt", "(tar header at byte 1024 ")


def test_a_truncated_member_names_its_header_offset(tmp_path: Path) -> None:
    data = FIRST + member("second.txt", b"y" * 2000)[: BLOCK + 700]
    assert_archive_error(tmp_path, data, "unexpected end of data", "(tar header at byte 1024 ")


@pytest.mark.parametrize(
    "middle, problem",
    [
        (member("././@LongLink", b"a" * 200 + b"\0", b"L") + member("././@LongLink", b"b\0", b"L"), "two long names"),
        (member("././@LongLink", b"a\0", b"L") + pax_member(b"10 path=b\n"), "two long names"),
        (pax_member(b"10 path=a\n") + member("././@LongLink", b"b\0", b"L"), "two long names"),
        (pax_member(b"9 size=1\n") + pax_member(b"9 size=1\n"), "two pax sizes"),
        (member("././@LongLink", b"no-terminating-nul", b"L"), "not NUL-terminated"),
        (pax_member(b"10 path=a\n", b"g"), "a global pax header sets a path or size"),
        (pax_member(b"26 GNU.sparse.map=0,1,2,3\n"), "GNU sparse file"),
        (member("././@LongLink", b"x" * (2 << 20), b"L"), "an extended tar header of 2097152 bytes"),
    ],
    ids=["two-L", "L-then-pax", "pax-then-L", "two-pax-sizes", "L-without-nul", "global-path", "pax-sparse", "huge-L"],
)
def test_extended_headers_that_tarfile_could_read_otherwise_are_refused(
    tmp_path: Path, middle: bytes, problem: str
) -> None:
    data = FIRST + middle + member("second.txt", b"x") + end_of_archive()
    assert_archive_error(tmp_path, data, problem)


@pytest.mark.parametrize(
    "second, problem",
    [
        (member("adir", b"data", b"5"), "the link, device or directory adir/ declares 4 bytes"),
        (member("old-style-dir/", b"data", b"\0"), "the link, device or directory old-style-dir/ declares 4 bytes"),
        (set_field(header("alink", 0, b"2"), 124, 136, b"00000000010\0"), "declares 8 bytes"),
        (member("sparse", b"data", b"S"), "a GNU sparse file"),
        (member("trailing/", b"data", b"0"), "a file member named 'trailing/'"),
        (pax_member(b"8 path=\n") + member("second", b"x"), "a file member named ''"),
        (member("././@LongLink", b"a\0", b"L"), "ends after an extended header"),
    ],
    ids=["directory-with-data", "v7-directory-with-data", "symlink-with-size", "gnu-sparse", "file-named-like-a-dir",
         "empty-pax-path", "extended-header-at-the-end"],
)
def test_ambiguous_members_are_refused(tmp_path: Path, second: bytes, problem: str) -> None:
    assert_archive_error(tmp_path, FIRST + second + end_of_archive(), problem)


def test_nonzero_bytes_in_a_gnu_headers_prefix_field_are_refused(tmp_path: Path) -> None:
    """tarfile takes them as a name prefix, GNU tar as access times: neither reading can be trusted."""
    second = bytearray(header("second.txt", 1))
    second[345:357] = b"14715677540\0"  # an atime, as GNU tar --atime-preserve would write
    data = FIRST + with_checksum(bytes(second)) + b"x".ljust(BLOCK, b"\0") + end_of_archive()
    assert tarfile_files(data)[0][1][0] == "14715677540/second.txt"
    assert_archive_error(tmp_path, data, "a non-POSIX tar header has data in its name prefix field")


def test_long_names_pax_paths_sizes_and_ustar_prefixes_are_read_like_tarfile(tmp_path: Path) -> None:
    long = "d/" * 80 + "file.tif"
    expected = {
        tarfile.GNU_FORMAT: [(long, b"gnu"), ("ünïcode", b"u")],
        tarfile.PAX_FORMAT: [(long, b"gnu"), ("ünïcode", b"u")],
        tarfile.USTAR_FORMAT: [(long, b"gnu")],
    }
    for fmt, members in expected.items():
        data = tar_bytes(members, fmt, pax={"comment": "global"} if fmt == tarfile.PAX_FORMAT else None)
        assert read(tmp_path, data) == members == tarfile_files(data)[0]
    sized = pax_member(b"9 size=3\n") + set_field(header("sized", 0), 124, 136, b"00000000000\0") + b"abc".ljust(BLOCK, b"\0")
    assert read(tmp_path, sized + end_of_archive()) == [("sized", b"abc")] == tarfile_files(sized + end_of_archive())[0]


# --------------------------------------------------------------------------- bounded memory


class _RecordingStream(io.RawIOBase):
    """A byte stream that remembers the largest single read asked of it."""

    def __init__(self, data: bytes):
        self._data, self.largest = io.BytesIO(data), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.largest = max(self.largest, len(buffer))
        return self._data.readinto(buffer)

    def read(self, n: int = -1) -> bytes:
        self.largest = max(self.largest, n)
        return self._data.read(n)


def test_unwanted_members_are_skipped_in_chunks_not_read_whole(tmp_path: Path) -> None:
    big = 8 * archives.SKIP_CHUNK_BYTES
    data = member("keep-1", b"a") + member("stray.bin", bytes(big)) + member("keep-2", b"b") + end_of_archive()
    stream = _RecordingStream(data)
    got = list(archives._read_tar(stream, "x.tar", wanted=lambda name: name.startswith("keep")))
    assert got == [("keep-1", b"a"), ("keep-2", b"b")]
    assert stream.largest <= archives.SKIP_CHUNK_BYTES

    (tmp_path / "x.tar").write_bytes(data)
    assert list(iter_tar([str(tmp_path / "x.tar")], wanted=lambda name: name == "keep-2")) == [("keep-2", b"b")]


def test_a_band_file_larger_than_its_band_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 1 MiB B02 member is skipped in pieces, never held in memory; the patch carries the reason instead."""
    name = band_path("s2", PATCH, "B02")
    raw = member(band_path("s2", PATCH, "B01"), b"b01") + member(name, bytes(1 << 20)) + end_of_archive()
    path = tmp_path / "BigEarthNet-S2.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    [(patch, bands)] = list(iter_archive_patches(str(path), "s2", progress=False))
    assert patch == PATCH and bands["B01"] == b"b01" and isinstance(bands["B02"], BadBand)
    assert bands["B02"] == (f"member {name} has 1048576 bytes, more than a file of its kind can need "
                            f"({max_band_file_bytes('B02')} bytes); refused unread (tar header at byte 3072)")
    # decoding it is a RasterError naming patch, band and archive: skip_invalid skips it like a bad file in a folder
    with pytest.raises(RasterError, match=rf"^patch {PATCH} band B02 \(in a.tar.zst\): member {name} has 1048576"):
        decode_patch(bands, ("B02",), PATCH, "a.tar.zst")


def test_a_band_member_twice_in_an_archive_is_ambiguous(tmp_path: Path) -> None:
    """The last copy used to win silently; the README calls ambiguous members errors."""
    name = band_path("s2", PATCH, "B02")
    path = tmp_path / "dup.tar"
    path.write_bytes(member(name, b"one") + member(name, b"two") + end_of_archive())
    [(patch, bands)] = list(iter_archive_patches(str(path), "s2", progress=False))
    assert isinstance(bands["B02"], BadBand)
    with pytest.raises(RasterError, match=rf"band B02 \(in dup.tar\): member {name} occurs more than once in archive "
                                          rf"{path}; which copy is meant is ambiguous"):
        decode_patch(bands, ("B02",), PATCH, "dup.tar")


def test_archive_patches_hold_only_band_files_of_their_sensor(tmp_path: Path) -> None:
    members = [
        (band_path("s1", S1_PATCH, "VV"), b"vv"),
        (band_path("s2", PATCH, "B01"), b"b01"),
        (band_path("s2", PATCH, "B02"), b"b02"),
        (band_path("s2", PATCH, "B10"), b"not a band of the release" * 10_000),
        (f"BigEarthNet-S2/{PATCH[:-6]}/{PATCH}/{PATCH}_B02.npy", b"npy"),
        (band_path("s2", NEXT_PATCH, "B8A"), b"b8a"),
        (reference_map_path(PATCH), b"map"),
        ("BigEarthNet-S2/stray.bin", bytes(3 * archives.SKIP_CHUNK_BYTES)),
    ]
    path = tmp_path / "mixed.tar"
    path.write_bytes(tar_bytes(members))
    patches = list(iter_archive_patches(str(path), "s2", progress=False))
    assert patches == [(PATCH, {"B01": b"b01", "B02": b"b02"}), (NEXT_PATCH, {"B8A": b"b8a"})]
    assert list(iter_archive_patches(str(path), "s1", progress=False)) == [(S1_PATCH, {"VV": b"vv"})]


@pytest.fixture(scope="module")
def archive_with_2gib_stray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stray") / "BigEarthNet-S2.tar.zst"
    write_tar_zst_with_zeros(
        path,
        before=[(band_path("s2", PATCH, band), band.encode() * 100) for band in ("B01", "B02")],
        zeros_name="BigEarthNet-S2/stray.bin",
        zeros_size=2 << 30,
        after=[(band_path("s2", NEXT_PATCH, "B02"), b"next")],
    )
    return path


def test_peak_memory_with_a_2_gib_stray_member_stays_under_1_gb(
    archive_with_2gib_stray: Path, record_property
) -> None:
    """A 2 GiB stray member (compressed to ~66 kB) used to take 2.2 GB of RAM; now it is read 1 MiB at a time."""
    assert archive_with_2gib_stray.stat().st_size < 1 << 20
    script = textwrap.dedent(
        f"""
        import json, resource, time
        from bentxt.imagery.archives import iter_archive_patches
        start = time.perf_counter()
        patches = [(name, sorted(bands))
                   for name, bands in iter_archive_patches({str(archive_with_2gib_stray)!r}, "s2", progress=False)]
        seconds = time.perf_counter() - start
        print(json.dumps(dict(patches=patches, seconds=seconds, peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
        """
    )
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    record_property("peak_rss_mib", report["peak_kib"] // 1024)
    record_property("read_seconds", round(report["seconds"], 2))
    print(f"2 GiB stray member: peak RSS {report['peak_kib'] // 1024} MiB, read in {report['seconds']:.2f} s "
          f"({time.perf_counter() - started:.2f} s with interpreter start)")
    assert report["patches"] == [[PATCH, ["B01", "B02"]], [NEXT_PATCH, ["B02"]]]
    assert report["peak_kib"] < 1_000_000  # under 1 GB; reading the member whole would be over 2 GB


# --------------------------------------------------------------------------- differential fuzz against tarfile

#: single bytes that turn one header field into another plausible one
_TOKENS = b"0178 -+\0\x80\xffxXLKgS5/=\n"


@st.composite
def small_tars(draw) -> bytes:
    """Small valid tars as ``tarfile`` writes them: GNU long names, pax headers (also global), ustar prefixes."""
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT]))
    members = []
    for i in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 9)) == 0:
            members.append((f"dir{i}/", b""))
            continue
        length = draw(st.sampled_from([1, 40, 99, 100, 101, 150, 250]))
        stem = draw(st.sampled_from(["n", "é", "d/"]))
        name = (f"{i}" + stem * length)[:length].rstrip("/") or f"{i}"
        members.append((name, bytes([i + 65]) * draw(st.sampled_from([0, 1, 100, 511, 512, 513]))))
    pax = {"comment": "fuzz"} if fmt == tarfile.PAX_FORMAT and draw(st.booleans()) else None
    try:
        return tar_bytes(members, fmt, pax)
    except ValueError:  # a name ustar cannot split
        return tar_bytes(members, tarfile.GNU_FORMAT)


@st.composite
def mutated_tars(draw) -> bytes:
    """A small tar with 1-3 bytes of its headers (or extended-header data) changed, checksums often fixed up."""
    data = bytearray(draw(small_tars()))
    regions = header_regions(bytes(data))
    for _ in range(draw(st.integers(1, 3))):
        start, end = draw(st.sampled_from(regions))
        pos = draw(st.integers(start, end - 1))
        data[pos] = draw(st.one_of(st.sampled_from(list(_TOKENS)), st.integers(0, 255)))
        if draw(st.integers(0, 4)):  # mostly: so the change reaches the field checks
            block = start + (pos - start) // BLOCK * BLOCK
            data[block : block + BLOCK] = with_checksum(bytes(data[block : block + BLOCK]))
    return bytes(data)


def _ours(data: bytes) -> Tuple[List[Tuple[str, bytes]], Optional[ArchiveError]]:
    """Our reader's files, and its ArchiveError if any; any other exception (or a hang) fails the test."""
    files: List[Tuple[str, bytes]] = []
    try:
        with time_limit(5):
            for item in archives._read_tar(io.BufferedReader(io.BytesIO(data)), "fuzz.tar"):
                files.append(item)
    except ArchiveError as err:
        assert "fuzz.tar" in str(err) and "tar header at byte" in str(err)
        return files, err
    return files, None


@settings(derandomize=True, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_tars())
def test_reader_agrees_with_tarfile_or_refuses(data: bytes) -> None:
    """Whatever we accept, tarfile reads the same way: same files, same bytes. Otherwise an ArchiveError.

    tarfile is more lenient (it ends silently at a bad header after the
    first), which is fine; we must never accept something and read other
    names or bytes than it does, nor accept what it fails on.
    """
    theirs, their_error = tarfile_files(data)
    ours, our_error = _ours(data)
    common = min(len(ours), len(theirs))
    assert ours[:common] == theirs[:common]
    if our_error is None:
        assert their_error is None, f"we read {[n for n, _ in ours]} where tarfile fails with {their_error!r}"
        assert ours == theirs


def test_unmutated_tars_read_exactly_like_tarfile() -> None:
    """The fuzz test's inputs before mutation: nothing may be refused there."""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        members = [("a", b""), ("b" * 50 + "/" + "b" * 99, b"x" * 513), ("dir/", b""), ("d/" * 60 + "é", b"y")]
        data = tar_bytes(members, fmt)
        files, error = tarfile_files(data)
        assert error is None and len(files) == 3
        assert _ours(data) == (files, None)


def test_zstd_runs_without_its_async_io_thread_where_it_has_the_option(tmp_path: Path, monkeypatch) -> None:
    """``--no-asyncio`` is passed only to a zstd whose help lists it (older ones would refuse the option)."""
    import shutil

    old = tmp_path / "old" / "zstd"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho 'Usage: zstd [OPTIONS...]'\n")
    old.chmod(0o755)
    assert archives._zstd_options(str(old)) == ()
    assert archives._zstd_options(str(tmp_path / "missing-zstd")) == ()
    real = shutil.which("zstd")
    if real is None:
        pytest.skip("no zstd command")
    new = tmp_path / "new" / "zstd"
    new.parent.mkdir()
    new.write_text("#!/bin/sh\necho ' --[no-]asyncio  Use asynchronous IO.' >&2\n")  # help on stderr
    new.chmod(0o755)
    assert archives._zstd_options(str(new)) == ("--no-asyncio",)
    found = subprocess.run([real, "-H"], capture_output=True)
    assert archives._zstd_options(real) == (("--no-asyncio",) if b"--[no-]asyncio" in found.stdout + found.stderr else ())
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(archives.subprocess, "Popen", lambda args, **kw: started.append(args) or real_popen(args, **kw))
    payload = tar_bytes([("x.txt", b"hello")])
    path = tmp_path / "x.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(payload))
    monkeypatch.setenv("BENTXT_ZSTD_PROCESS", "1")
    assert list(iter_tar([str(path)])) == [("x.txt", b"hello")]
    assert started == [[real, "-dcq", *archives._zstd_options(real)]]


@pytest.mark.parametrize("process", ["1", "0"])
def test_both_decompressors_read_the_same_and_report_damage(fixture_data, tmp_path, monkeypatch, process):
    """``zstd -dc`` in a child process (when the command exists) and in-process ``zstandard`` are interchangeable."""
    monkeypatch.setenv("BENTXT_ZSTD_PROCESS", process)
    archive = str(fixture_data.s2_archive)
    with monkeypatch.context() as m:
        m.setenv("BENTXT_ZSTD_PROCESS", "0")
        expected = list(archives.iter_tar([archive]))
    assert list(archives.iter_tar([archive])) == expected
    cut = tmp_path / "cut.tar.zst"
    data = Path(archive).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(archives.ArchiveError,
                       match=r"cut.tar.zst is damaged or truncated after member BigEarthNet-S2/\S+_B\w+\.tif: "):
        list(archives.iter_tar([str(cut)]))
