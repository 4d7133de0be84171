"""Every form of the imagery gives the same examples: archives, extracted folders, a rico-hdl LMDB, mixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import bigearthnet_txt as bt
from bentxt import sources
from bentxt.cache.pair_bands import PairBands
from bentxt.imagery.readers import iter_export_patches
from bentxt.sources import ArchiveSource, ExportSource, FolderSource, LmdbSource, detect
from test_builder import assert_same_examples, prepare, same_value


@pytest.fixture(scope="module")
def with_lmdb(fixture_data, fixture_lmdb, tmp_path_factory) -> Path:
    """The publisher's recommended layout: the parquet beside Encoded-BigEarthNet/."""
    root = tmp_path_factory.mktemp("lmdb_dir")
    os.symlink(fixture_lmdb, root / "Encoded-BigEarthNet")
    os.symlink(fixture_data.parquet, root / "BigEarthNet.txt.parquet")
    return root


@pytest.fixture(scope="module")
def from_archives(fixture_data, tmp_path_factory):
    return {
        layout: prepare("s1s2-all", fixture_data, tmp_path_factory.mktemp(f"arch-{layout}"), layout=layout)[1]
        for layout in ("annotation", "patch")
    }


def _dir(path):
    return type("Data", (), {"root": path})()


def test_data_dir_forms_are_detected(extracted, with_lmdb, fixture_data):
    config = bt.BigEarthNetTxt.builder_configs["s1s2-all"]
    for root, cls, kind, sequential in ((extracted, FolderSource, "folder", False), (with_lmdb, LmdbSource, "LMDB", False),
                                        (fixture_data.root, ArchiveSource, "archive", True)):
        config = type(config)(name="s1s2-all", data_dir=str(root))
        files = sources.resolve(config, ("s1", "s2"))
        assert type(files["s1"]) is type(files["s2"]) is cls
        assert files["s1"].kind == files["s2"].kind == kind and files["s2"].sequential is sequential
    assert detect(str(extracted / "BigEarthNet-S2"), "s2") == FolderSource((str(extracted),))
    assert detect(str(extracted), "s1") == FolderSource((str(extracted),))
    assert type(detect(str(with_lmdb / "Encoded-BigEarthNet"), "s1")) is LmdbSource
    assert detect(str(fixture_data.s2_archive), "s2") == ArchiveSource((str(fixture_data.s2_archive),))
    assert FolderSource((str(extracted),)).name == f"folder {extracted.name}"
    with pytest.raises(sources.SourceError, match="does not exist"):
        detect(str(extracted / "nowhere"), "s2")
    with pytest.raises(sources.SourceError, match=r"neither an extracted BigEarthNet-S2/ tree.*LMDB folder.*export"):
        detect(str(extracted / "BigEarthNet-S1"), "s2")


@pytest.mark.parametrize("layout", ["annotation", "patch"])
@pytest.mark.parametrize("form", ["folders", "lmdb"])
def test_each_form_prepares_the_same_examples_as_the_archives(form, layout, extracted, with_lmdb, from_archives, tmp_path):
    root = extracted if form == "folders" else with_lmdb
    builder, ds = prepare("s1s2-all", _dir(root), tmp_path, num_proc=2, layout=layout)
    reference = from_archives[layout]
    assert set(ds) == set(reference)
    array_only = ("s1", "s2") if form == "lmdb" else ()
    for split in reference:
        assert_same_datasets(ds[split], reference[split], array_only)
        streamed = list(builder.as_streaming_dataset(split=split))
        assert_same_examples([without(e, from_names(array_only)) for e in streamed],
                             reference[split].remove_columns(from_names(array_only)))


def without(example: dict, columns) -> dict:
    return {k: v for k, v in example.items() if k not in columns}


GRID_VALUES = ("_transform", "_bounds")


def from_names(sensors):
    """Columns an array-only source (LMDB, export) cannot give: the name fixes the EPSG code, not the tile's corner."""
    return [f"{s}{suffix}" for s in sensors for suffix in GRID_VALUES]


def assert_grids_unknown(ds, reference, sensors):
    """EPSG codes as from the GeoTIFFs; transform and bounds NaN (said, never guessed)."""
    for s in sensors:
        assert list(ds[f"{s}_epsg"]) == list(reference[f"{s}_epsg"])
        for column in (f"{s}{suffix}" for suffix in GRID_VALUES):
            assert np.isnan(np.asarray(ds[column], dtype=float)).all(), column


def assert_same_datasets(a, b, array_only=()):
    """Same features, same rows in the same order: texts as Python values (NaN == NaN), arrays exactly.

    ``array_only``: sensors read from a source of arrays (their grids come from the names)."""
    if array_only:
        assert_grids_unknown(a, b, array_only)
        a, b = a.remove_columns(from_names(array_only)), b.remove_columns(from_names(array_only))
    assert a.features == b.features and a.num_rows == b.num_rows
    arrays = [k for k, f in a.features.items() if isinstance(f, PairBands)]
    assert arrays
    for column in a.column_names:
        if column in arrays:
            x, y = (d.with_format("numpy", columns=[column], dtype=None)[:][column] for d in (a, b))
            assert x.dtype == y.dtype and (x == y).all(), column
        else:
            x, y = list(a[column]), list(b[column])
            assert len(x) == len(y) and all(same_value(p, q) for p, q in zip(x, y)), column


def test_sources_mix_per_sensor(extracted, fixture_data, fixture_lmdb, from_archives, tmp_path):
    files = {"annotations": str(fixture_data.parquet), "s2": str(fixture_data.s2_archive)}
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_files=files, image_source={"s1": str(extracted / "BigEarthNet-S1")},
                                cache_dir=str(tmp_path / "a"))
    builder.download_and_prepare()
    assert_same_datasets(builder.as_dataset()["bench"], from_archives["annotation"]["bench"])
    sources = {"s2": str(fixture_lmdb), "s1": str(fixture_data.s1_archive)}
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root), image_source=sources,
                                cache_dir=str(tmp_path / "b"))
    streamed = list(builder.as_streaming_dataset(split="train"))
    assert all(np.isnan(e["s2_transform"]).all() and not np.isnan(e["s1_transform"]).any() for e in streamed)
    assert_same_examples([without(e, from_names(["s2"])) for e in streamed],
                         from_archives["annotation"]["train"].remove_columns(from_names(["s2"])))
    builder = bt.BigEarthNetTxt(config_name="s2-vqa", data_dir=str(fixture_data.root), image_source=str(fixture_lmdb),
                                cache_dir=str(tmp_path / "c"))
    assert builder.config.image_source == str(fixture_lmdb)


def test_a_patch_missing_from_a_folder_is_reported(extracted, fixture_data, tmp_path):
    import shutil

    root = tmp_path / "partial"
    shutil.copytree(extracted, root, symlinks=True)
    victim = next(p for p in fixture_data.patches if p.split == "validation")
    shutil.rmtree(root / "BigEarthNet-S1" / "_".join(victim.s1_name.split("_")[:-3]) / victim.s1_name)
    with pytest.raises(bt.MissingPatchError, match=rf"{victim.patch_id} \(not in folder partial\)"):
        prepare("s1s2-all-validation", _dir(root), tmp_path / "c")
    builder = bt.BigEarthNetTxt(config_name="s1s2-all-validation", data_dir=str(root), cache_dir=str(tmp_path / "d"))
    with pytest.raises(bt.MissingPatchError, match=rf"{victim.patch_id} \(not in folder partial\)"):
        list(builder.as_streaming_dataset(split="validation"))
    _, ds = prepare("s1s2-all-validation", _dir(root), tmp_path / "e", skip_missing=True)
    assert victim.patch_id not in set(ds["validation"]["patch_id"])


@pytest.fixture(scope="module")
def torchgeo_parts(fixture_data, tmp_path_factory) -> Path:
    """torchgeo's Hub mirror: each archive as gzip tar split into .tar.gzaa / .tar.gzab parts."""
    import gzip

    import zstandard

    root = tmp_path_factory.mktemp("torchgeo")
    for archive, stem in ((fixture_data.s1_archive, "BigEarthNet-S1"), (fixture_data.s2_archive, "BigEarthNet-S2")):
        tar = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb")).read()
        packed = gzip.compress(tar, mtime=0)
        cut = len(packed) // 2
        (root / f"{stem}.tar.gzaa").write_bytes(packed[:cut])
        (root / f"{stem}.tar.gzab").write_bytes(packed[cut:])
    os.symlink(fixture_data.parquet, root / "BigEarthNet.txt.parquet")
    return root


def test_torchgeo_split_gzip_parts_stream_as_one_archive(torchgeo_parts, from_archives, tmp_path):
    config = type(bt.BigEarthNetTxt.builder_configs["s1s2-all"])(name="s1s2-all", data_dir=str(torchgeo_parts))
    files = sources.resolve(config, ("s1", "s2"))
    assert type(files["s2"]) is ArchiveSource
    assert [p.rsplit("/", 1)[-1] for p in files["s2"].paths] == ["BigEarthNet-S2.tar.gzaa", "BigEarthNet-S2.tar.gzab"]
    assert len(files["s2"].archives) == 1  # the parts form one archive
    builder, ds = prepare("s1s2-all", _dir(torchgeo_parts), tmp_path)
    for split in from_archives["annotation"]:
        assert_same_datasets(ds[split], from_archives["annotation"][split])
    assert_same_examples(list(builder.as_streaming_dataset(split="bench")), from_archives["annotation"]["bench"])


def test_a_missing_part_is_an_archive_error_naming_the_archive(torchgeo_parts, tmp_path):
    from bentxt.imagery.archives import ArchiveError, iter_tar

    with pytest.raises(ArchiveError, match=r"BigEarthNet-S2.tar.gzaa \(\+0 parts\)|BigEarthNet-S2.tar.gzaa is damaged"):
        list(iter_tar([str(torchgeo_parts / "BigEarthNet-S2.tar.gzaa")]))


def test_an_export_is_an_image_source_too(fixture_data, from_archives, tmp_path):
    """The packed export (patch layout) feeds any other config: its arrays are the release's, exactly."""
    from bentxt.export.writer import export

    root = export("s1s2-all", str(tmp_path / "export"), data_dir=str(fixture_data.root), layout="patch", name="s1s2-all-patch",
                  progress=False)
    assert detect(str(root), "s2") == ExportSource((str(root),)) and detect(str(root), "s2").kind == "export"
    builder = bt.BigEarthNetTxt(config_name="s1s2-all", data_dir=str(fixture_data.root), image_source=str(root),
                                cache_dir=str(tmp_path / "c"))
    builder.download_and_prepare(num_proc=2)
    for split, reference in from_archives["annotation"].items():
        assert_same_datasets(builder.as_dataset()[split], reference, array_only=("s1", "s2"))
    streamed = list(builder.as_streaming_dataset(split="test"))
    assert_same_examples([without(e, from_names(["s1", "s2"])) for e in streamed],
                         from_archives["annotation"]["test"].remove_columns(from_names(["s1", "s2"])))


def test_an_annotation_layout_export_yields_each_patch_once(fixture_data, tmp_path):
    """Rows of one patch straddle row groups in an annotation-layout export: each patch still comes once."""
    from bentxt.export.writer import export

    root = export("s2-all", str(tmp_path / "export"), data_dir=str(fixture_data.root), rows_per_group=7, progress=False)
    names = [name for name, _ in iter_export_patches(str(root), "s2")]
    assert len(names) == len(set(names)) == len([p for p in fixture_data.patches if p.in_archives])


# ----------------------------------------------------------------------------- choosing files (unit)


def _config(**options):
    from bentxt.config import resolve_config

    return resolve_config("s1s2-all", **options)


def test_split_parts_form_one_archive_and_single_files_their_own():
    source = ArchiveSource(("/d/BigEarthNet-S2.tar.gzab", "/d/BigEarthNet-S2.tar.gzaa", "/e/BigEarthNet-S2.tar.zst"))
    assert source.archives == (("/d/BigEarthNet-S2.tar.gzaa", "/d/BigEarthNet-S2.tar.gzab"), ("/e/BigEarthNet-S2.tar.zst",))
    assert source.name == "archive BigEarthNet-S2.tar.gzab, BigEarthNet-S2.tar.gzaa, BigEarthNet-S2.tar.zst"
    with pytest.raises(TypeError, match="is read front to back, not by patch"):
        source.open_reader({"s2": ("B02",)})


def test_files_are_chosen_option_first_then_data_files_then_data_dir_then_the_release(fixture_data, fixture_lmdb, extracted):
    release = sources.release()
    files = sources.resolve(_config(), ("s1", "s2"))  # nothing given: the recorded release URLs
    assert files["annotations"] == release["annotations"]["url"]
    assert files["s1"] == ArchiveSource((release["s1"]["url"],)) and files["s2"] == ArchiveSource((release["s2"]["url"],))
    files = sources.resolve(_config(data_dir=str(fixture_data.root)), ("s1", "s2"))
    assert files["annotations"] == str(fixture_data.parquet) and files["s2"] == ArchiveSource((str(fixture_data.s2_archive),))
    named = {"annotations": str(fixture_data.parquet), "s2": str(extracted)}
    files = sources.resolve(_config(data_dir=str(fixture_data.root), data_files=named), ("s1", "s2"))
    assert type(files["s2"]) is FolderSource and type(files["s1"]) is ArchiveSource  # s1 still from data_dir
    config = _config(data_dir=str(fixture_data.root), data_files=named, image_source={"s2": str(fixture_lmdb)})
    files = sources.resolve(config, ("s1", "s2"))
    assert type(files["s2"]) is LmdbSource
    with pytest.raises(sources.SourceError, match=r"image_source must be a path or a dict with keys 's1'/'s2'"):
        sources.resolve(_config(data_dir=str(fixture_data.root), image_source={"s3": str(fixture_lmdb)}), ("s1", "s2"))
    with pytest.raises(sources.SourceError, match=r"data_files\['annotations'\] must be one parquet file"):
        sources.resolve(_config(data_files={"annotations": [str(fixture_data.parquet)] * 2}), ("s1", "s2"))


def test_fingerprints_change_with_the_content_not_the_listing(fixture_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for path in (fixture_data.parquet, fixture_data.s2_archive):
        shutil.copy(path, data / path.name)
    config = _config(data_dir=str(data))
    before = sources.fingerprint(sources.resolve(config, ("s2",)))
    assert before["s2"][0] == "archive" and before["s2"][2][0][1] == fixture_data.s2_archive.stat().st_size
    (data / "notes.txt").write_text("not an input")
    assert sources.fingerprint(sources.resolve(config, ("s2",))) == before
    with open(data / "BigEarthNet.txt.parquet", "ab") as f:
        f.write(b"\0")
    after = sources.fingerprint(sources.resolve(config, ("s2",)))
    assert after["s2"] == before["s2"] and after["annotations"] != before["annotations"]


def test_recorded_split_sizes_apply_to_the_release_parquet_only(fixture_data):
    files = sources.resolve(_config(data_dir=str(fixture_data.root)), ("s1", "s2"))
    assert sources.expected_split_sizes(_config(data_dir=str(fixture_data.root)), files) is None  # not the release file
    assert sources.expected_split_sizes(_config(layout="patch"), files) is None
    assert sources.expected_split_sizes(_config(countries=["Austria"]), files) is None
