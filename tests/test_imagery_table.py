"""bentxt/cache/imagery_table.py: the imagery file format (one row per pair), written in place and read memory-mapped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from bentxt import bands as B
from bentxt.cache.imagery_table import ImageryFileError, ImageryTables, ImageryWriter, array3d, array3d_values, imagery_features

S2_GROUPS = [g for g in B.BAND_GROUPS if g.sensor == "s2"]


# ----------------------------------------------------------------------------- writing


def test_array3d_round_trips_without_python_lists():
    stack = np.random.default_rng(0).integers(0, 10_000, (5, *S2_GROUPS[1].shape)).astype(np.uint16)
    feature = datasets.Array3D(S2_GROUPS[1].shape, "uint16")
    column = array3d(stack, feature)
    assert column.type == feature()
    assert np.array_equal(array3d_values(column, S2_GROUPS[1].shape), stack)
    # the same values datasets itself decodes from the column
    table = pa.table({"x": column})
    decoded = datasets.Dataset(table).cast(datasets.Features({"x": feature})).with_format("numpy")[:]["x"]
    assert np.array_equal(decoded, stack)


def test_imagery_writer_batches_and_numbers_rows(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "s2-00000.arrow"
    writer = ImageryWriter(str(path), S2_GROUPS, batch_rows=3)
    written = {}
    for k in range(7):  # two full batches and a partial one
        name = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00"
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        assert writer.add(name, arrays) == k
        written[name] = arrays
    assert writer.close() == 7
    table = datasets.Dataset.from_file(str(path)).with_format("numpy")
    assert list(table["name"]) == list(written)
    for i, (name, arrays) in enumerate(written.items()):
        for g in S2_GROUPS:
            assert np.array_equal(table[i][g.name], np.stack([arrays[b] for b in g.bands]))
    shutil.copy(path, tmp_path / "s2-00001.arrow")
    tables = ImageryTables({"s2": [str(path), str(tmp_path / "s2-00001.arrow")]})
    # rows are numbered across a sensor's files in the order given
    assert tables.names("s2") == list(written) * 2
    assert tables.num_rows("s2") == 14 and list(tables.positions("s2")) == [-1] * 14
    last = list(written.values())[-1]
    assert np.array_equal(tables.take("s2", S2_GROUPS[2], 13), np.stack([last[b] for b in S2_GROUPS[2].bands]))


def test_full_batches_are_decoded_in_place_and_written_without_a_copy(tmp_path):
    """After the first batch, bands are decoded into the file's write buffer; a failed last patch leaves no trace."""
    rng = np.random.default_rng(3)
    path = tmp_path / "s2-00000.arrow"
    writer = ImageryWriter(str(path), S2_GROUPS, batch_rows=4)
    written = []
    for k in range(13):  # batches 2 and 3 in place, a last one of 1 row from the writer's own buffers
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        writer.add(f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00", arrays)
        written.append(arrays)
    for slot in writer.slots().values():  # a 14th patch starts decoding, then fails: never committed
        slot[...] = 7
    pixels_per_row = sum(len(g.bands) * g.size * g.size * 2 for g in S2_GROUPS)
    assert writer.close() == 13
    assert writer._sink.placed_bytes == 2 * 4 * pixels_per_row
    table = datasets.Dataset.from_file(str(path)).with_format("numpy")
    assert table.num_rows == 13
    for i in (0, 3, 4, 11, 12):
        for g in S2_GROUPS:
            assert np.array_equal(table[i][g.name], np.stack([written[i][b] for b in g.bands]))


def test_a_write_over_bands_waiting_in_place_is_refused(tmp_path):
    from bentxt.cache.imagery_table import DirectFile

    sink = DirectFile(str(tmp_path / "out.bin"), buffer_bytes=1 << 16)
    region = sink.reserve(300, [(100, 50)])
    region[100:150] = b"p" * 50
    sink.write(b"h" * 100)  # up to the piece: fine
    with pytest.raises(RuntimeError, match="would overwrite decoded bands"):
        sink.write(b"x" * 60)
    sink.release()
    sink.write(b"y" * 60)
    sink.close()
    assert (tmp_path / "out.bin").read_bytes() == b"h" * 100 + b"y" * 60


def test_reading_a_row_maps_the_batches_and_copies_nothing(tmp_path):
    """A group's rows are views over the memory map: joining a file's batches would copy the whole group.

    (The release's S2 imagery file holds 549,488 rows: 63 GB of 10 m bands.)
    """
    rng = np.random.default_rng(2)
    writer = ImageryWriter(str(tmp_path / "s2-00000.arrow"), S2_GROUPS, batch_rows=4)
    written = []
    for k in range(30):  # seven full batches and a partial one
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        writer.add(f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00", arrays)
        written.append(arrays)
    writer.close()
    tables = ImageryTables.in_folder(str(tmp_path))
    before = pa.total_allocated_bytes()
    starts, views = tables.group("s2", S2_GROUPS[0])
    rows = [tables.take("s2", S2_GROUPS[0], row) for row in (0, 3, 4, 17, 29)]
    assert pa.total_allocated_bytes() - before < 4096  # no batch was copied out of the map
    assert list(starts) == list(range(0, 29, 4)) + [30] and len(views) == 8
    for row, value in zip((0, 3, 4, 17, 29), rows):
        assert np.array_equal(value, np.stack([written[row][b] for b in S2_GROUPS[0].bands]))
    with pytest.raises(IndexError, match="imagery row 30 of s2"):
        tables.take("s2", S2_GROUPS[0], 30)


@pytest.mark.parametrize("folder", ["tmp", "shm"])
def test_direct_file_writes_exactly_the_bytes_given(tmp_path, folder):
    """O_DIRECT with aligned blocks, double buffering and a truncated tail; tmpfs (no O_DIRECT) falls back."""
    import os

    from bentxt.cache.imagery_table import DirectFile

    if folder == "shm":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm")
        import tempfile

        tmp_path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    rng = np.random.default_rng(0)
    pieces = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (1, 4095, 4097, 70_000, 3, 200_000, 12_345)]
    path = tmp_path / "out.bin"
    sink = DirectFile(str(path), buffer_bytes=1 << 16)
    for piece in pieces:
        assert sink.write(piece) == len(piece)
    sink.close()
    assert path.read_bytes() == b"".join(pieces)
    if folder == "shm":
        import shutil

        shutil.rmtree(tmp_path)


def _write_rows(path, n, seed=0, positions=None):
    rng = np.random.default_rng(seed)
    writer = ImageryWriter(str(path), S2_GROUPS, batch_rows=4)
    written = []
    for k in range(n):
        arrays = {b: rng.integers(0, 60_000, (g.size, g.size)).astype(np.uint16) for g in S2_GROUPS for b in g.bands}
        writer.add(f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_00", arrays,
                   -1 if positions is None else positions[k])
        written.append(arrays)
    writer.close()
    return written


def test_an_imagery_file_is_a_plain_datasets_arrow_file_with_names_and_positions(tmp_path):
    path = tmp_path / "s2-00000.arrow"
    written = _write_rows(path, 6, positions=[10, 11, 12, 40, 41, (1 << 32) + 3])
    table = datasets.Dataset.from_file(str(path))
    assert table.features == imagery_features(S2_GROUPS)
    assert isinstance(table.features["s2_10m"], datasets.Array3D) and list(table.features)[-2:] == ["name", "position"]
    row = table.with_format("numpy", dtype=None)[5]  # datasets' own formatting reads it
    assert row["s2_20m"].dtype == np.uint16
    assert np.array_equal(row["s2_20m"], np.stack([written[5][b] for b in S2_GROUPS[1].bands]))
    assert ImageryTables({"s2": [str(path)]}).positions("s2").tolist() == [10, 11, 12, 40, 41, (1 << 32) + 3]


@pytest.mark.parametrize("damage", ["truncated", "emptied", "fewer rows than recorded"])
def test_a_damaged_imagery_file_is_an_error_naming_it(tmp_path, damage):
    """Found when the file is first read, not as a wrong row or an Arrow error naming no file mid-training."""
    path = tmp_path / "s2-00000.arrow"
    _write_rows(path, 10)
    expected = 10
    if damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "emptied":
        os.truncate(path, 0)
    else:
        expected = 12
    tables = ImageryTables({"s2": [str(path)]}, expected_rows={"s2": [expected]})
    with pytest.raises(ImageryFileError, match=rf"the imagery file {path} .*(damaged or truncated)"):
        tables.take("s2", S2_GROUPS[0], 0)
