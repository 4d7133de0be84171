"""Configs and features: what a selection is and what its examples look like. No I/O here.

A config is ``<sensor>-<task>[-<split>]`` plus keyword options (filters, tag
replacement, ``bands=``, ``layout``, sources). The features come in two
storages of the same values: *streamed* examples carry their bands as
``Array3D``; a *prepared* cache stores each pair's bands once
(``bentxt.cache.store``) and its rows carry :class:`PairBands` references
that decode to the same arrays.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import datasets

from bentxt.text import annotations as ann
from bentxt.text import grammar as text
from bentxt.bands import DEFAULT_IMG_SIZE, GROUP_OF_BAND, groups_for_sensors, resolve_bands
from bentxt.cache.pair_bands import PairBands
from bentxt.imagery import geo
from bentxt.imagery.layout import NAME_COLUMN
from bentxt.metadata import VERSION
from bentxt.imagery.raster import check_resample_options

SENSORS: Dict[str, Tuple[str, ...]] = {"s1": ("s1",), "s2": ("s2",), "s1s2": ("s1", "s2")}
TASKS: Dict[str, Tuple[str, ...]] = {
    "all": ann.TYPES,
    "vqa": ("binary", "mcq"),
    "binary": ("binary",),
    "mcq": ("mcq",),
    "captioning": ("captioning",),
    "grounding": ("bounding box",),
}
SPLITS: Tuple[str, ...] = ann.SPLITS
LAYOUTS: Tuple[str, ...] = ("annotation", "patch")

#: what a text has where its type has no box, point or options: fixed-size values, never null, so that numpy/torch
#: batches and torch's default collate work on every column (``bentxt.join.text_columns`` fills them)
NO_BOX = (float("nan"),) * 4
NO_POINT = (float("nan"),) * 2
NO_OPTIONS = ("",) * 4


@dataclass
class BigEarthNetTxtConfig(datasets.BuilderConfig):
    """One sensor x task [x split] selection plus the publisher loader's options.

    Filters (``categories``, ``countries``, ``seasons``, ``climate_zones``) are
    checked against the values present in the parquet. ``point_token`` /
    ``ref_token`` replace the ``<point>``/``<ref>`` tags like the publisher's
    loader (None keeps the tags). ``bands`` (a list or ``RGB``, ``S2-10m20m``,
    ``S1S2-10m20m``, ``all``) replaces the native band groups by one float32
    ``image`` resampled to ``img_size`` like the publisher's loader.
    ``skip_missing`` / ``skip_invalid`` skip (and count) image pairs absent
    from the imagery / with undecodable band files instead of failing.
    ``image_source`` names where the imagery is (a path, or ``{"s1": ..,
    "s2": ..}``): ``.tar.zst`` archives, extracted folders, an LMDB or an export.
    ``keep_archives``: archives at URLs are read once as they download, with no
    copy kept; True copies them into the download folder first (``bentxt.sources.download``).
    ``store_all_pairs``: whether a pass over an archive stores every pair it
    holds in the source's imagery store (``bentxt.cache.store``), not only the
    selected ones; None: yes for archives read from URLs (no second download
    for a later config), no for local files (``bentxt.join.keeps_every_pair``).
    """

    sensor: str = "s1s2"
    task: str = "all"
    split: Optional[str] = None
    categories: Optional[Sequence[str]] = None
    countries: Optional[Sequence[str]] = None
    seasons: Optional[Sequence[str]] = None
    climate_zones: Optional[Sequence[str]] = None
    point_token: Optional[Sequence[str]] = None
    ref_token: Optional[Sequence[str]] = None
    bands: Optional[Union[str, Sequence[str]]] = None
    img_size: int = DEFAULT_IMG_SIZE
    resample: str = "nearest"
    layout: str = "annotation"
    skip_missing: bool = False
    skip_invalid: bool = False
    image_source: Optional[object] = None
    keep_archives: bool = False
    store_all_pairs: Optional[bool] = None

    @property
    def sensors(self) -> Tuple[str, ...]:
        return SENSORS[self.sensor]

    @property
    def splits(self) -> Tuple[str, ...]:
        return (self.split,) if self.split else SPLITS

    @property
    def key_sensor(self) -> str:
        """The sensor whose source drives the order of examples: S2 unless only S1 is read."""
        return "s1" if self.sensors == ("s1",) else "s2"

    @property
    def key_column(self) -> str:
        return NAME_COLUMN[self.key_sensor]

    @property
    def image_bands(self) -> Optional[Tuple[str, ...]]:
        return None if self.bands is None else resolve_bands(self.bands)

    @property
    def filters(self) -> Dict[str, Optional[Tuple[str, ...]]]:
        return {option: getattr(self, option) for option in ann.FILTER_COLUMNS}

    def wanted_bands(self) -> Dict[str, Tuple[str, ...]]:
        """Per sensor, the bands read from the imagery: the requested ones, else every native band."""
        wanted = self.image_bands or tuple(b for g in groups_for_sensors(self.sensors) for b in g.bands)
        return {s: tuple(b for b in wanted if GROUP_OF_BAND[b].sensor == s) for s in self.sensors}

    def stored_groups(self, sensor: str):
        """The native groups of a sensor that its imagery store keeps: all of them (the store serves every config)."""
        return groups_for_sensors((sensor,))

    def selection(self, split: Optional[str] = None) -> ann.Selection:
        filters = tuple((ann.FILTER_COLUMNS[o], tuple(v)) for o, v in self.filters.items() if v is not None)
        return ann.Selection(types=TASKS[self.task], splits=(split,) if split else self.splits, filters=filters)

    def validate(self) -> None:
        """Reject option values early, before any download, with the valid choices in the message."""
        choices = {"sensor": SENSORS, "task": TASKS, "layout": LAYOUTS}
        for option, valid in choices.items():
            if getattr(self, option) not in valid:
                raise ValueError(f"{option}={getattr(self, option)!r} is not valid; choose one of {list(valid)}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not valid; choose one of {list(SPLITS)}")
        for option in ann.FILTER_COLUMNS:
            value = getattr(self, option)
            if isinstance(value, str):
                setattr(self, option, (value,))
            elif value is not None:
                setattr(self, option, tuple(value))
        for option in ("point_token", "ref_token"):
            value = getattr(self, option)
            if value is not None:
                text.check_token(value, option)
                setattr(self, option, tuple(value))
        if self.bands is not None:
            bands = resolve_bands(self.bands)
            foreign = [b for b in bands if GROUP_OF_BAND[b].sensor not in self.sensors]
            if foreign:
                raise ValueError(
                    f"bands {foreign} are not read by config sensor {self.sensor!r}; use an s1s2-* config "
                    f"or bands from {[b for g in groups_for_sensors(self.sensors) for b in g.bands]}"
                )
        check_resample_options(self.img_size, self.resample)  # checked even when unused: a typo is still a typo

    def options(self) -> Dict[str, object]:
        """The keyword options that differ from the named config's defaults and change the data (what makes a variant).

        Where the files are (``data_dir``, ``data_files``, ``image_source``) is
        keyed by their resolved paths instead (``bentxt.cache.folders``); ``img_size`` and
        ``resample`` only matter with ``bands``.
        """
        base = CONFIGS.get(self.name)
        out = {}
        ignored = {"name", "version", "data_dir", "data_files", "description", "image_source", "keep_archives", "store_all_pairs"}
        if self.bands is None:
            ignored |= {"img_size", "resample"}
        for f in fields(BigEarthNetTxtConfig):
            if f.name in ignored or base is None:
                continue
            value = getattr(self, f.name)
            if value != getattr(base, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def make_configs() -> List[BigEarthNetTxtConfig]:
    configs = []
    for sensor in SENSORS:
        for task in TASKS:
            for split in (None,) + SPLITS:
                name = f"{sensor}-{task}" + (f"-{split}" if split else "")
                description = f"{sensor} bands, {task} texts" + (f", {split} split only" if split else "")
                configs.append(BigEarthNetTxtConfig(
                    name=name, version=datasets.Version(VERSION), sensor=sensor, task=task, split=split, description=description,
                ))
    return configs


CONFIGS: Dict[str, BigEarthNetTxtConfig] = {c.name: c for c in make_configs()}
#: no default: the largest config (s1s2-all, ~135 GB) must never be picked by leaving the name out (issue 20)
DEFAULT_CONFIG_NAME = None
#: builder options that are not config fields (the CLI offers them too)
CONFIG_OPTIONS: Tuple[str, ...] = tuple(
    f.name for f in fields(BigEarthNetTxtConfig) if f.name not in ("name", "version", "data_dir", "data_files", "description")
)


def config_name_error(name: str) -> str:
    close = difflib.get_close_matches(name, list(CONFIGS), n=3, cutoff=0.5)
    return (
        f"Unknown config {name!r}. Config names are <sensor>-<task>[-<split>] with sensor in {list(SENSORS)}, "
        f"task in {list(TASKS)}, split in {list(SPLITS)}" + (f". Did you mean {close}?" if close else ".")
    )


def missing_config_error() -> str:
    """What ``datasets`` says for other multi-config datasets, with the names as a grammar (there are 90)."""
    return (
        f"Config name is missing: pick one of the {len(CONFIGS)} configs <sensor>-<task>[-<split>] with sensor in "
        f"{list(SENSORS)}, task in {list(TASKS)}, split in {list(SPLITS)}, e.g. "
        f"load_dataset('bigearthnet_txt', 's2-captioning-bench'); `bigearthnet-txt info` lists them with their sizes "
        f"(s1s2-all, the whole release, takes ~135 GB)"
    )


def unknown_option_error(option: str) -> str:
    """An unknown keyword option, with the closest ones (``country=`` -> ``countries``)."""
    close = difflib.get_close_matches(option, list(CONFIG_OPTIONS) + ["data_dir", "data_files"], n=3, cutoff=0.6)
    hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{option!r} is not an option of a bigearthnet_txt config. {hint}Options: {list(CONFIG_OPTIONS)}"


def check_builder_request(config_name: Optional[str], config_kwargs: Dict[str, object]) -> None:
    """The builder's arguments before ``datasets`` makes a config of them: a name, and keywords a config has.

    ``datasets`` would pick a default for a missing name (or build an unnamed
    config from the keywords), and answer a mistyped keyword with its dump
    of the whole config.
    """
    if config_name is None:
        raise ValueError(missing_config_error())
    known = {f.name for f in fields(BigEarthNetTxtConfig)}
    for option in config_kwargs:
        if option not in known:
            raise ValueError(unknown_option_error(option))


def resolve_config(config: Union[str, BigEarthNetTxtConfig, None], **options) -> BigEarthNetTxtConfig:
    """A config object from a name (or a config) plus keyword options, validated: the one place names resolve."""
    if config is None:
        raise ValueError(missing_config_error())
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(config_name_error(config))
        config = CONFIGS[config]
    config = copy.deepcopy(config)
    for option, value in options.items():
        if option not in CONFIG_OPTIONS and option not in ("data_dir", "data_files"):
            raise ValueError(unknown_option_error(option))
        setattr(config, option, value)
    config.validate()
    return config


# ----------------------------------------------------------------------------- features


def text_features() -> Dict[str, datasets.features.FeatureType]:
    """One annotation: the parquet's per-text columns plus the parsed structure (fixed sizes, never null)."""
    return {
        "ID": datasets.Value("int64"),
        "input": datasets.Value("string"),
        "output": datasets.Value("string"),
        "type": datasets.Value("string"),
        "category": datasets.Value("string"),
        "bbox": datasets.List(datasets.Value("float64"), length=4),
        "point": datasets.List(datasets.Value("float64"), length=2),
        "options": datasets.List(datasets.Value("string"), length=4),
    }


def image_features(config: BigEarthNetTxtConfig, storage: str = "cache") -> Dict[str, datasets.features.FeatureType]:
    """Native band groups, or one resampled float32 ``image`` with ``bands=``.

    ``storage="stream"``: ``Array3D`` values in each example. ``storage="cache"``:
    :class:`PairBands` references of the same shape and dtype (pixels once per pair).
    """
    if storage not in ("cache", "stream"):
        raise ValueError(f"storage={storage!r}; choose 'cache' or 'stream'")
    if config.image_bands is not None:
        shape = (len(config.image_bands), config.img_size, config.img_size)
        if storage == "stream":
            return {"image": datasets.Array3D(shape, "float32")}
        return {"image": PairBands(shape, "float32", config.image_bands, config.img_size, config.resample)}
    if storage == "stream":
        return {g.name: datasets.Array3D(g.shape, g.dtype) for g in groups_for_sensors(config.sensors)}
    return {g.name: PairBands(g.shape, g.dtype, g.bands) for g in groups_for_sensors(config.sensors)}


def features_for(config: BigEarthNetTxtConfig, storage: str = "cache") -> datasets.Features:
    patch = {c: datasets.Value(_value_dtype(c)) for c in ann.PATCH_COLUMNS}
    images = {**image_features(config, storage), **geo.geo_features(config.sensors)}  # the bands, then the map grids
    if config.layout == "patch":
        return datasets.Features({**patch, "annotations": datasets.List(text_features()), **images})
    ordered = {c: (text_features().get(c) or patch[c]) for c in ann.COLUMNS}
    extra = {k: v for k, v in text_features().items() if k not in ordered}
    return datasets.Features({**ordered, **extra, **images})


def _value_dtype(column: str) -> str:
    return {"int64": "int64", "double": "float64"}.get(str(ann.COLUMNS[column]), "string")


def image_bytes_per_pair(config: BigEarthNetTxtConfig) -> int:
    """Bytes of pixels the cache keeps per image pair (the native groups holding a wanted band)."""
    return sum(g.nbytes for s in config.sensors for g in config.stored_groups(s))


def estimate_cache_bytes(config: BigEarthNetTxtConfig, rows: int, patches: int, text_bytes: int) -> int:
    """Pixels once per pair (+2 % Arrow list offsets), texts, ~170 B of other columns and references per text."""
    return int(patches * image_bytes_per_pair(config) * 1.02 + text_bytes + rows * 170)
