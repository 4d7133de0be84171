"""bentxt/imagery/readers.py: one way to read a patch's bands per form of the imagery, and one way to fail."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from bentxt import bands as B
from bentxt.imagery.layout import band_path
from bentxt.imagery.raster import RasterError, max_band_file_bytes
from bentxt.imagery.readers import FolderReader, LmdbReader, band_array, decode_patch, iter_export_patches

S2_BANDS = tuple(b for g in B.BAND_GROUPS if g.sensor == "s2" for b in g.bands)
S1_BANDS = ("VV", "VH")
WANTED = {"s1": S1_BANDS, "s2": S2_BANDS}


def _patch(fixture):
    return next(p for p in fixture.patches if p.in_archives)


# ----------------------------------------------------------------------------- decoding


def test_decode_patch_checks_every_wanted_band(fixture_data, extracted):
    patch = _patch(fixture_data)
    data = FolderReader(str(extracted), WANTED).read("s2", patch.patch_id)
    arrays = decode_patch(data, S2_BANDS, patch.patch_id, "folder x")
    assert set(arrays) == set(S2_BANDS)
    for band in S2_BANDS:
        assert arrays[band].dtype == np.uint16 and np.array_equal(arrays[band], patch.bands[band])
    # arrays are accepted as they are (LMDB, exports), and checked the same way
    assert np.array_equal(band_array(patch.bands["B05"], "B05", "here"), patch.bands["B05"])
    with pytest.raises(RasterError, match=r"band B05 should be 60x60 uint16, found shape \(120, 120\)"):
        band_array(patch.bands["B02"], "B05", "here")
    with pytest.raises(RasterError, match=rf"patch {patch.patch_id} band B03 \(in folder x\): the band file is missing"):
        decode_patch({b: v for b, v in data.items() if b != "B03"}, S2_BANDS, patch.patch_id, "folder x")
    with pytest.raises(RasterError, match=r"band B02 \(in LMDB y\): the band file is missing"):
        decode_patch(None, S2_BANDS, patch.patch_id, "LMDB y")


# ----------------------------------------------------------------------------- extracted folders


def test_folder_reader_reads_by_path(fixture_data, extracted):
    reader = FolderReader(str(extracted), WANTED)
    patch = _patch(fixture_data)
    s1 = reader.read("s1", patch.s1_name)
    assert set(s1) == set(S1_BANDS)
    assert all(isinstance(v, bytes) for v in s1.values())
    assert np.array_equal(decode_patch(s1, S1_BANDS, patch.s1_name, "x")["VH"], patch.bands["VH"])
    assert reader.has("s2", patch.patch_id) and reader.has("s1", patch.s1_name)
    absent = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"
    assert reader.read("s2", absent) is None and not reader.has("s2", absent)
    only_rgb = FolderReader(str(extracted), {"s2": ("B04", "B03", "B02")})
    assert set(only_rgb.read("s2", patch.patch_id)) == {"B04", "B03", "B02"}  # only what was asked for


def test_folder_reader_refuses_names_links_and_oversized_files(fixture_data, extracted, tmp_path):
    reader = FolderReader(str(extracted), WANTED)
    for bad in ("../../etc/passwd", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39/../x", ""):
        with pytest.raises(ValueError, match="is not a BigEarthNet v2.0 S2 patch name"):
            reader.read("s2", bad)
    patch = _patch(fixture_data)
    root = tmp_path / "tree"
    shutil.copytree(extracted / "BigEarthNet-S2", root / "BigEarthNet-S2", symlinks=True)
    b02 = root / band_path("s2", patch.patch_id, "B02")
    b02.unlink()
    os.symlink(extracted / band_path("s2", patch.patch_id, "B02"), b02)
    reader = FolderReader(str(root), WANTED)
    with pytest.raises(RasterError, match=r"band B02 .*not a regular file"):
        reader.read("s2", patch.patch_id)
    b02.unlink()
    b02.write_bytes(b"\0" * (max_band_file_bytes("B02") + 1))
    with pytest.raises(RasterError,
                       match=rf"band B02 .*{max_band_file_bytes('B02') + 1} bytes, more than a B02 band file can hold"):
        reader.read("s2", patch.patch_id)
    b02.unlink()  # a missing band file: read leaves it out, decoding names it
    data = reader.read("s2", patch.patch_id)
    assert "B02" not in data and "B03" in data
    with pytest.raises(RasterError, match="band B02 .*the band file is missing"):
        decode_patch(data, S2_BANDS, patch.patch_id, "folder tree")


# ----------------------------------------------------------------------------- LMDB


def test_lmdb_reader_reads_arrays_and_shares_one_environment(fixture_data, fixture_lmdb):
    patch = _patch(fixture_data)
    a, b = LmdbReader(str(fixture_lmdb)), LmdbReader(str(fixture_lmdb))
    try:
        assert a.env is b.env  # py-lmdb refuses a second open of one path in a process
        s2 = a.read("s2", patch.patch_id)
        assert set(s2) == set(S2_BANDS) and all(isinstance(v, np.ndarray) for v in s2.values())
        assert np.array_equal(decode_patch(s2, S2_BANDS, patch.patch_id, "LMDB")["B8A"], patch.bands["B8A"])
        s1 = b.read("s1", patch.s1_name)
        assert s1["VV"].dtype == np.float32 and np.array_equal(s1["VV"], patch.bands["VV"])
        assert a.has("s1", patch.s1_name) and not a.has("s2", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99")
        assert a.read("s2", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99") is None
    finally:
        a.close()
    key = b._key
    assert key in LmdbReader._open  # b still uses it
    b.close()
    assert key not in LmdbReader._open


def test_a_value_that_is_not_safetensors_names_the_record(fixture_data, fixture_lmdb, tmp_path):
    import lmdb

    copy = tmp_path / "lmdb"
    shutil.copytree(fixture_lmdb, copy)
    patch = _patch(fixture_data)
    env = lmdb.open(str(copy), map_size=1 << 26, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(patch.patch_id.encode(), b"not a safetensors record")
    env.close()
    reader = LmdbReader(str(copy))
    try:
        with pytest.raises(RasterError,
                           match=rf"patch {patch.patch_id} in LMDB .*: the value \(24 bytes\) is not a safetensors record"):
            reader.read("s2", patch.patch_id)
    finally:
        reader.close()


# ----------------------------------------------------------------------------- exports


@pytest.fixture(scope="module")
def s2_export(fixture_data, tmp_path_factory):
    from bentxt.export.writer import export

    out = tmp_path_factory.mktemp("readers_export")
    return export("s2-all", str(out / "export"), data_dir=str(fixture_data.root), cache_dir=str(out / "cache"),
                  rows_per_group=7, progress=False)


def test_export_patches_are_the_release_arrays_once_each(s2_export, fixture_data):
    seen = []
    for name, data in iter_export_patches(str(s2_export), "s2"):
        patch = fixture_data.patch(name)
        arrays = decode_patch(data, S2_BANDS, name, "export")
        assert all(np.array_equal(arrays[b], patch.bands[b]) for b in S2_BANDS)
        seen.append(name)
    assert len(seen) == len(set(seen)) == len([p for p in fixture_data.patches if p.in_archives])
    with pytest.raises(ValueError, match=r"has no config with the native s1 band groups \['s1'\]"):
        list(iter_export_patches(str(s2_export), "s1"))
