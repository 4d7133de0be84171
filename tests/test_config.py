"""bentxt/config.py: configs, option checks, features in both storages, the cache estimate. No I/O."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest

import bigearthnet_txt as bt
from bentxt.text import annotations as ann
from bentxt import bands as B
from bentxt import config as cfg
from bentxt.config import CONFIGS, NO_BOX, NO_OPTIONS, NO_POINT, estimate_cache_bytes, features_for, resolve_config
from bentxt.cache.pair_bands import PairBands

SENSOR_GROUPS = {s: [g for g in B.BAND_GROUPS if g.sensor in cfg.SENSORS[s]] for s in cfg.SENSORS}


# ----------------------------------------------------------------------------- configs


def test_configs_are_generated_from_the_declared_lists():
    names = [c.name for c in bt.BigEarthNetTxt.BUILDER_CONFIGS]
    assert names == list(CONFIGS)
    assert len(names) == len(set(names)) == len(cfg.SENSORS) * len(cfg.TASKS) * (1 + len(cfg.SPLITS)) == 90
    assert {"s1s2-vqa", "s2-captioning", "s1-grounding-bench", "s1s2-all-train"} <= set(names)
    config = bt.BigEarthNetTxt.builder_configs["s1-mcq-validation"]
    assert (config.sensors, config.task, config.splits) == (("s1",), "mcq", ("validation",))
    assert bt.BigEarthNetTxt.DEFAULT_CONFIG_NAME is cfg.DEFAULT_CONFIG_NAME is None  # no silent s1s2-all (issue 20)
    # the builder module re-exports the declared lists
    assert (bt.SENSORS, bt.TASKS, bt.SPLITS, bt.LAYOUTS) == (cfg.SENSORS, cfg.TASKS, cfg.SPLITS, cfg.LAYOUTS)
    assert bt.estimate_cache_bytes is cfg.estimate_cache_bytes


@pytest.mark.parametrize(
    "name,key_sensor,key_column,sensors",
    [("s1-vqa", "s1", "s1_name", ("s1",)), ("s2-vqa", "s2", "patch_id", ("s2",)), ("s1s2-vqa", "s2", "patch_id", ("s1", "s2"))],
)
def test_the_driving_sensor_is_s2_unless_only_s1_is_read(name, key_sensor, key_column, sensors):
    config = CONFIGS[name]
    assert (config.key_sensor, config.key_column, config.sensors) == (key_sensor, key_column, sensors)


def test_selection_carries_types_splits_and_filters():
    config = resolve_config("s2-vqa-bench", countries="Portugal", seasons=["Winter", "Fall"])
    selection = config.selection()
    assert selection.types == ("binary", "mcq") and selection.splits == ("bench",)
    assert dict(selection.filters) == {"country": ("Portugal",), "season": ("Winter", "Fall")}
    assert config.selection("test").splits == ("test",)
    assert resolve_config("s1s2-all").selection().splits == cfg.SPLITS


def test_resolve_config_copies_and_validates():
    config = resolve_config("s2-mcq", countries=["Austria"], point_token=["", ""])
    assert config.countries == ("Austria",) and config.point_token == ("", "")
    assert CONFIGS["s2-mcq"].countries is None  # the named config is never modified
    assert resolve_config(config) is not config and resolve_config(config).countries == ("Austria",)
    assert config.options() == {"countries": ["Austria"], "point_token": ["", ""]}
    assert resolve_config("s2-mcq").options() == {}
    with pytest.raises(ValueError, match=r"'colour' is not an option of a bigearthnet_txt config. Options: \[.*'countries'"):
        resolve_config("s2-mcq", colour="red")


def test_option_errors_name_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config 's2-vqaa'.*<sensor>-<task>\[-<split>\].*Did you mean.*'s2-vqa'"):
        resolve_config("s2-vqaa")
    with pytest.raises(ValueError, match=r"Unknown band name\(s\) \['B10'\]"):
        resolve_config("s2-all", bands=["B02", "B10"])
    with pytest.raises(ValueError, match=r"bands \['VV'\] are not read by config sensor 's2'"):
        resolve_config("s2-all", bands=["B02", "VV"])
    with pytest.raises(ValueError, match="img_size"):
        resolve_config("s2-all", bands="RGB", img_size=0)
    with pytest.raises(ValueError, match=r"layout='rows' is not valid; choose one of \['annotation', 'patch'\]"):
        resolve_config("s2-all", layout="rows")
    with pytest.raises(ValueError, match="point_token"):
        resolve_config("s2-all", point_token="ab")
    # the builder class checks the same way, before any file is looked at
    kw = {"data_dir": str(tmp_path / "nowhere"), "cache_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"Unknown config 's2-vqaa'.*Did you mean.*'s2-vqa'"):
        bt.BigEarthNetTxt(config_name="s2-vqaa", **kw)
    with pytest.raises(ValueError, match=r"bands \['VV'\] are not read by config sensor 's2'"):
        bt.BigEarthNetTxt(config_name="s2-all", bands=["B02", "VV"], **kw)
    with pytest.raises(ValueError, match="layout='rows'"):
        bt.BigEarthNetTxt(config_name="s2-all", layout="rows", **kw)


def test_wanted_bands_and_stored_groups():
    native = resolve_config("s1s2-all")
    assert native.wanted_bands() == {"s1": ("VV", "VH"), "s2": tuple(b for g in SENSOR_GROUPS["s2"] for b in g.bands)}
    assert [g.name for g in native.stored_groups("s2")] == ["s2_10m", "s2_20m", "s2_60m"]
    rgb = resolve_config("s2-all", bands="RGB")
    assert rgb.image_bands == ("B04", "B03", "B02") and rgb.wanted_bands() == {"s2": ("B04", "B03", "B02")}
    assert [g.name for g in rgb.stored_groups("s2")] == ["s2_10m", "s2_20m", "s2_60m"]  # the store serves every config
    mixed = resolve_config("s1s2-all", bands=["B01", "VH", "B8A"])
    assert mixed.wanted_bands() == {"s1": ("VH",), "s2": ("B01", "B8A")}
    assert [g.name for g in mixed.stored_groups("s2")] == ["s2_10m", "s2_20m", "s2_60m"]
    assert [g.name for g in mixed.stored_groups("s1")] == ["s1"]


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("sensor", list(cfg.SENSORS))
def test_features_derive_from_the_band_declaration(sensor):
    config = CONFIGS[f"{sensor}-all"]
    cached, streamed = features_for(config, storage="cache"), features_for(config, storage="stream")
    assert list(cached) == list(streamed) and features_for(config) == cached
    assert {k: v for k, v in streamed.items() if isinstance(v, datasets.Array3D)} == {
        g.name: datasets.Array3D(g.shape, g.dtype) for g in SENSOR_GROUPS[sensor]
    }
    references = {k: v for k, v in cached.items() if isinstance(v, PairBands)}
    assert list(references) == [g.name for g in SENSOR_GROUPS[sensor]]
    for g in SENSOR_GROUPS[sensor]:  # a reference declares the shape and dtype of what it decodes to
        assert (references[g.name].shape, references[g.name].dtype, references[g.name].bands) == (g.shape, g.dtype, g.bands)
        assert references[g.name].img_size is None
    assert cached["ID"] == datasets.Value("int64") and cached["latitude"] == datasets.Value("float64")
    assert list(cached)[:13] == list(ann.COLUMNS)
    # fixed-size lists: never null, so numpy/torch batches and torch's default collate work
    assert cached["bbox"] == datasets.List(datasets.Value("float64"), length=4)
    assert cached["point"] == datasets.List(datasets.Value("float64"), length=2)
    assert cached["options"] == datasets.List(datasets.Value("string"), length=4)
    assert cached["category"] == datasets.Value("string")
    with pytest.raises(ValueError, match="storage='disk'"):
        features_for(config, storage="disk")


def test_bands_configs_have_one_float32_image():
    config = resolve_config("s1s2-binary", bands="S1S2-10m20m", img_size=64, resample="bilinear")
    cached, streamed = features_for(config, "cache"), features_for(config, "stream")
    n = len(B.resolve_bands("S1S2-10m20m"))
    assert streamed["image"] == datasets.Array3D((n, 64, 64), "float32")
    assert cached["image"] == PairBands((n, 64, 64), "float32", B.resolve_bands("S1S2-10m20m"), 64, "bilinear")
    assert not any(g.name in cached for g in B.BAND_GROUPS)


def test_patch_layout_features_hold_the_texts_in_a_list():
    features = features_for(resolve_config("s2-grounding", layout="patch"))
    assert list(features)[: len(ann.PATCH_COLUMNS)] == list(ann.PATCH_COLUMNS)
    annotations = features["annotations"]
    assert isinstance(annotations, datasets.List)
    assert set(annotations.feature) == {"ID", "input", "output", "type", "category", "bbox", "point", "options"}
    assert "ID" not in features and "input" not in features
    assert isinstance(features["s2_10m"], PairBands)


def test_features_round_trip_through_their_dict():
    """dataset_info.json and the export's card store features as dicts: a PairBands must come back equal."""
    for name in ("s1s2-vqa", "s2-all"):
        features = features_for(CONFIGS[name])
        assert datasets.Features.from_dict(features.to_dict()) == features
    banded = features_for(resolve_config("s2-all", bands="RGB", img_size=32))
    assert datasets.Features.from_dict(banded.to_dict()) == banded


def test_the_none_values_are_fixed_size():
    assert len(NO_BOX) == 4 and all(math.isnan(x) for x in NO_BOX)
    assert len(NO_POINT) == 2 and all(math.isnan(x) for x in NO_POINT)
    assert NO_OPTIONS == ("", "", "", "")


# ----------------------------------------------------------------------------- the cache estimate


def test_image_bytes_per_pair_are_the_native_groups():
    assert cfg.image_bytes_per_pair(CONFIGS["s1-all"]) == 115_200
    assert cfg.image_bytes_per_pair(CONFIGS["s2-all"]) == 160_000
    assert cfg.image_bytes_per_pair(CONFIGS["s1s2-all"]) == 275_200
    # bands= reads the source's store, which keeps every native group (the image is computed on access)
    assert cfg.image_bytes_per_pair(resolve_config("s2-all", bands="RGB")) == 160_000


def test_estimate_counts_pixels_once_per_pair():
    config = CONFIGS["s1s2-vqa"]
    one = estimate_cache_bytes(config, rows=20, patches=1, text_bytes=1000)
    assert one == int(275_200 * 1.02 + 1000 + 20 * 170)
    # more texts on the same pairs cost text bytes only, never pixels
    assert estimate_cache_bytes(config, rows=40, patches=1, text_bytes=2000) - one == 1000 + 20 * 170
    for layout in cfg.LAYOUTS:  # both layouts store pixels once per pair
        assert estimate_cache_bytes(resolve_config("s1s2-vqa", layout=layout), 20, 1, 1000) == one
    # the release: s1s2-all is ~130 GB of pixels, not the 2.7 TB of a copy per text
    total = estimate_cache_bytes(CONFIGS["s1s2-all"], rows=9_553_962, patches=464_044, text_bytes=9_553_962 * 150)
    assert 125e9 < total < 140e9
    assert np.isclose(total / 1e9, (464_044 * 275_200 * 1.02 + 9_553_962 * 320) / 1e9)


def test_readme_lists_the_channel_order_of_every_band_preset():
    from pathlib import Path

    from bentxt.bands import BAND_COMBINATIONS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, bands in BAND_COMBINATIONS.items():
        assert f"| `{name}` | {len(bands)} | {', '.join(bands)} |" in readme, name


def test_img_size_and_resample_are_checked_even_without_bands_and_do_not_key_the_cache():
    with pytest.raises(ValueError, match="img_size"):
        resolve_config("s2-vqa", img_size=0)
    with pytest.raises(ValueError, match="unknown resampling mode 'cubic-ish'"):
        resolve_config("s2-vqa", resample="cubic-ish")
    assert resolve_config("s2-vqa", img_size=64).options() == {}  # unused without bands=
    assert resolve_config("s2-vqa", bands="RGB", img_size=64).options() == {"bands": "RGB", "img_size": 64}


# ----------------------------------------------------------------------------- issue 20: no silent default, did you mean


def test_a_missing_config_name_is_an_error_listing_the_configs(fixture_data, tmp_path):
    """Leaving the name out used to pick s1s2-all, the largest config (~135 GB at release scale)."""
    expected = (r"^Config name is missing: pick one of the 90 configs <sensor>-<task>\[-<split>\] with sensor in "
                r"\['s1', 's2', 's1s2'\], task in \[.*\], split in \[.*\], e.g\. load_dataset\('bigearthnet_txt', "
                r"'s2-captioning-bench'\).*~135 GB")
    with pytest.raises(ValueError, match=expected):
        bt.BigEarthNetTxt(cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=expected):  # keywords alone do not make a config either
        bt.BigEarthNetTxt(data_dir=str(fixture_data.root), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=expected):
        resolve_config(None)


@pytest.mark.parametrize("typo,suggestion", [("country", "'countries'"), ("skip_invalids", "'skip_invalid'"),
                                             ("datadir", "'data_dir'"), ("img_sizes", "'img_size'")])
def test_a_mistyped_keyword_gets_a_did_you_mean(tmp_path, typo, suggestion):
    """datasets answered ``country=`` with "BuilderConfig ... doesn't have a 'country' key" and the whole config."""
    with pytest.raises(ValueError) as excinfo:
        bt.BigEarthNetTxt(config_name="s2-vqa", cache_dir=str(tmp_path), **{typo: ["Austria"]})
    message = str(excinfo.value)
    assert message.startswith(f"{typo!r} is not an option of a bigearthnet_txt config. Did you mean {suggestion}")
    assert "BuilderConfig" not in message and len(message) < 600
    with pytest.raises(ValueError, match=rf"Did you mean {suggestion}"):
        resolve_config("s2-vqa", **{typo: 1})
