"""BigEarthNet.txt: Sentinel-1/2 image pairs joined with 9.55 M texts, as a `datasets` builder.

    import bigearthnet_txt, datasets
    ds = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa")          # prepare an Arrow cache
    it = datasets.load_dataset("bigearthnet_txt", "s2-captioning", streaming=True)

Configs are ``<sensor>-<task>[-<split>]``. Each example is one text annotation
joined with the native-resolution bands of its patch (``layout="patch"``: one
example per image pair with its annotations as a list). The readers live in
``bentxt/``: ``archives`` (.tar.zst), ``raster`` (GeoTIFF), ``annotations``
(parquet), ``store`` (staging shards), ``sources`` (where the files are).
"""

from __future__ import annotations

import io
import itertools
import logging
from contextlib import closing
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter, ParquetWriter
from datasets.builder import DatasetGenerationError
from datasets.download.streaming_download_manager import StreamingDownloadManager

from bentxt import annotations as ann
from bentxt import archives, imagery, raster, sources, store, text
from bentxt.bands import DEFAULT_IMG_SIZE, GROUP_OF_BAND, SENSOR_BANDS, groups_for_sensors, resolve_bands
from bentxt.layout import NAME_COLUMN
from bentxt.collate import Collate, collate  # torch is imported only when called
from bentxt.plot import plot  # matplotlib is imported only when called
from bentxt.registration import register
from bentxt.transforms import (
    BAND_MEAN,
    BAND_STD,
    GROUP_MEAN,
    GROUP_STD,
    INVERSE,
    OPS,
    GeometricAugment,
    Normalize,
    OrientationTextError,
    apply_op,
    band_stats,
    normalize,
    orientation_text,
    transform_bbox,
    transform_image,
    transform_point,
)

__all__ = [
    "BigEarthNetTxt", "BigEarthNetTxtConfig", "features_for", "estimate_cache_bytes", "register",
    "SENSORS", "TASKS", "SPLITS", "LAYOUTS", "MissingPatchError",
    "plot", "collate", "Collate", "normalize", "Normalize", "GeometricAugment", "OrientationTextError",
    "BAND_MEAN", "BAND_STD", "GROUP_MEAN", "GROUP_STD", "OPS", "INVERSE", "band_stats", "apply_op",
    "orientation_text", "transform_bbox", "transform_image", "transform_point",
]

logger = logging.getLogger("bigearthnet_txt")
if not logger.handlers:  # the cache-size estimate and the join report should reach the user by default
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("bigearthnet_txt: %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)

_DESCRIPTION = (
    "BigEarthNet.txt: 464,044 co-registered Sentinel-1 SAR / Sentinel-2 multispectral patches over Europe "
    "(BigEarthNet v2.0) with 9.55 M texts: captions, binary and multiple-choice VQA, referring expressions "
    "with bounding boxes, and a manually verified `bench` split."
)
_HOMEPAGE = "https://txt.bigearth.net"
_LICENSE = "cdla-permissive-1.0"
_CITATION = """\
@article{bigearthnet_txt,
  title   = {BigEarthNet.txt: A Large-Scale Multi-Sensor Image-Text Dataset and Benchmark for Earth Observation},
  journal = {arXiv preprint arXiv:2603.29630},
  year    = {2026}
}
@inproceedings{clasen2025reben,
  title     = {reBEN: Refined BigEarthNet Dataset for Remote Sensing Image Analysis},
  author    = {Clasen, Kai Norman and Hackel, Leonard and Burgert, Tom and Sumbul, Gencer and Demir, Beg{\\"u}m and Markl, Volker},
  booktitle = {IEEE International Geoscience and Remote Sensing Symposium (IGARSS)},
  year      = {2025}
}
"""

# ----------------------------------------------------------------------------- configs

VERSION = datasets.Version("1.0.0")
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
    from the archives / with undecodable band files instead of failing.
    ``image_source`` names where the imagery is (a path, or ``{"s1": ..,
    "s2": ..}``): ``.tar.zst`` archives, extracted folders or an LMDB.
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
    bands: Optional[object] = None
    img_size: int = DEFAULT_IMG_SIZE
    resample: str = "nearest"
    layout: str = "annotation"
    skip_missing: bool = False
    skip_invalid: bool = False
    image_source: Optional[object] = None

    @property
    def sensors(self) -> Tuple[str, ...]:
        return SENSORS[self.sensor]

    @property
    def splits(self) -> Tuple[str, ...]:
        return (self.split,) if self.split else SPLITS

    @property
    def key_sensor(self) -> str:
        """The sensor whose archive drives generation order: S2 unless only S1 is read."""
        return "s1" if self.sensors == ("s1",) else "s2"

    @property
    def key_column(self) -> str:
        return NAME_COLUMN[self.key_sensor]

    @property
    def image_bands(self) -> Optional[Tuple[str, ...]]:
        return None if self.bands is None else resolve_bands(self.bands)

    def selection(self, split: Optional[str] = None) -> ann.Selection:
        filters = tuple(
            (column, tuple(getattr(self, option)))
            for option, column in ann.FILTER_COLUMNS.items()
            if getattr(self, option) is not None
        )
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
            raster.check_resample_options(self.img_size, self.resample)


def _make_configs() -> List[BigEarthNetTxtConfig]:
    configs = []
    for sensor in SENSORS:
        for task in TASKS:
            for split in (None,) + SPLITS:
                name = f"{sensor}-{task}" + (f"-{split}" if split else "")
                description = f"{sensor} bands, {task} texts" + (f", {split} split only" if split else "")
                configs.append(
                    BigEarthNetTxtConfig(name=name, version=VERSION, sensor=sensor, task=task, split=split, description=description)
                )
    return configs


# ----------------------------------------------------------------------------- features


def _box(n: int) -> datasets.List:
    return datasets.List(datasets.Value("float64"), length=n)


def image_features(config: BigEarthNetTxtConfig) -> Dict[str, datasets.features.FeatureType]:
    """Native band groups as Array3D, or one resampled float32 ``image`` when ``bands`` is set."""
    if config.image_bands is not None:
        return {"image": datasets.Array3D((len(config.image_bands), config.img_size, config.img_size), "float32")}
    return {g.name: datasets.Array3D(g.shape, g.dtype) for g in groups_for_sensors(config.sensors)}


def text_features() -> Dict[str, datasets.features.FeatureType]:
    """One annotation: the parquet's per-text columns plus the parsed structure."""
    return {
        "ID": datasets.Value("int64"),
        "input": datasets.Value("string"),
        "output": datasets.Value("string"),
        "type": datasets.Value("string"),
        "category": datasets.Value("string"),
        "bbox": _box(4),
        "point": _box(2),
        "options": datasets.List(datasets.Value("string")),
    }


def features_for(config: BigEarthNetTxtConfig) -> datasets.Features:
    patch = {c: datasets.Value(_value_dtype(c)) for c in ann.PATCH_COLUMNS}
    if config.layout == "patch":
        return datasets.Features({**patch, "annotations": datasets.List(text_features()), **image_features(config)})
    ordered = {c: (text_features().get(c) or patch[c]) for c in ann.COLUMNS}
    extra = {k: v for k, v in text_features().items() if k not in ordered}
    return datasets.Features({**ordered, **extra, **image_features(config)})


def _value_dtype(column: str) -> str:
    return {"int64": "int64", "double": "float64"}.get(str(ann.COLUMNS[column]), "string")


# ----------------------------------------------------------------------------- builder


class BigEarthNetTxt(datasets.GeneratorBasedBuilder):
    """Joins BigEarthNet.txt annotations with BigEarthNet v2.0 Sentinel-1/2 bands."""

    VERSION = VERSION
    BUILDER_CONFIG_CLASS = BigEarthNetTxtConfig
    BUILDER_CONFIGS = _make_configs()
    DEFAULT_CONFIG_NAME = "s1s2-all"
    # ~20 rows of ~350 kB per patch: keep a writer batch well below the 1000-row default (~460 MB)
    DEFAULT_WRITER_BATCH_SIZE = 64

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        if isinstance(config_name, str) and config_name not in self.builder_configs:
            raise ValueError(config_name_error(config_name))
        return super()._create_builder_config(config_name, custom_features, config_id, **config_kwargs)

    def _info(self) -> datasets.DatasetInfo:
        self.config.validate()
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=features_for(self.config),
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    # --- splits

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._verification_mode = verification_mode
        self._staging_dir = start_clean(self._output_dir)
        try:
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        finally:
            shutil.rmtree(self._staging_dir, ignore_errors=True)

    def _make_split_generators_kwargs(self, prepare_split_kwargs):
        return {"num_proc": prepare_split_kwargs.get("num_proc")}

    def _split_generators(self, dl_manager, num_proc: Optional[int] = None) -> List[datasets.SplitGenerator]:
        files = sources.resolve(self.config, self.config.sensors)
        if isinstance(dl_manager, StreamingDownloadManager):
            return [
                datasets.SplitGenerator(
                    name=split,
                    gen_kwargs={"mode": "stream", "files": files, "split": split, "dlc": dl_manager.download_config},
                )
                for split in self.config.splits
            ]
        files = sources.download(files, dl_manager)
        sources.verify(files, getattr(self, "_verification_mode", None))
        plan = stage(self.config, files, self._staging_dir, num_shards=max(1, num_proc or 1), dlc=dl_manager.download_config)
        self._expect_release_split_sizes(files, plan)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"mode": "store", "root": plan.root, "shards": shards, "files": files})
            for split, shards in plan.shards.items()
        ]

    def _expect_release_split_sizes(self, files, plan) -> None:
        """Expected split sizes: the recorded release sizes when they apply, else the staging plan's counts.

        ``datasets`` checks them after generation (``verification_mode``), and
        the "Generating" progress bars get a total and an ETA from them.
        Skipping invalid patches makes the plan's counts an upper bound only.
        """
        expected = sources.expected_split_sizes(self.config, files)
        if expected is None and not self.config.skip_invalid:
            expected = datasets.SplitDict()
            for split, count in plan.examples.items():
                expected.add(datasets.SplitInfo(name=split, num_examples=count))
        if expected is not None:
            self.info.splits = expected

    # --- writing

    def _prepare_split_single(self, gen_kwargs, fpath, file_format, max_shard_size, split_info, job_id):
        """``datasets``' per-job write loop (same protocol, 5.2), one writer batch at a time.

        ``datasets`` turns every example's arrays into Arrow lists one by one
        and encodes every example through Python; our examples come out of
        the generator already in their declared types, so a batch's arrays
        are stacked once and handed to the writer as ndarrays (one Arrow
        conversion per column per batch). Shards still roll over at
        ``max_shard_size``, checked between batches as ``datasets`` does.
        """
        writer_class = ParquetWriter if file_format == "parquet" else ArrowWriter
        batch_size = self._writer_batch_size or datasets.config.DEFAULT_MAX_BATCH_SIZE
        arrays = [k for k, f in self.info.features.items() if isinstance(f, datasets.Array3D)]
        shard_id, shard_lengths, total_examples, total_bytes = 0, [], 0, 0

        def open_writer():
            path = fpath.replace("SSSSS", f"{shard_id:05d}").replace("JJJJJ", f"{job_id:05d}")
            return writer_class(
                features=self.info.features, path=path, writer_batch_size=batch_size,
                storage_options=self._fs.storage_options, embed_local_files=file_format == "parquet",
            )

        writer = open_writer()
        progress, last_update = 0, time.time()
        try:
            examples = self._generate_examples(**gen_kwargs)
            while batch := list(itertools.islice(examples, batch_size)):
                if max_shard_size is not None and writer._num_bytes > max_shard_size:
                    num_examples, num_bytes = writer.finalize()
                    writer.close()
                    shard_lengths.append(num_examples)
                    total_examples, total_bytes, shard_id = total_examples + num_examples, total_bytes + num_bytes, shard_id + 1
                    writer = open_writer()
                columns = {k: [example[k] for _, example in batch] for k in batch[0][1]}
                for k in arrays:
                    columns[k] = np.stack(columns[k])
                writer.write_batch(columns)
                progress += len(batch)
                if time.time() > last_update + datasets.config.PBAR_REFRESH_TIME_INTERVAL:
                    yield job_id, False, progress
                    progress, last_update = 0, time.time()
            num_examples, num_bytes = writer.finalize()
        except Exception as err:
            raise DatasetGenerationError("An error occurred while generating the dataset") from err
        finally:
            writer.close()
        yield job_id, False, progress
        shard_lengths.append(num_examples)
        total_examples, total_bytes = total_examples + num_examples, total_bytes + num_bytes
        yield job_id, True, (total_examples, total_bytes, writer._features, shard_id + 1, shard_lengths, 1, [total_examples])

    # --- examples

    def _generate_examples(self, mode: str, **kwargs) -> Iterator[Tuple[object, dict]]:
        if mode == "store":
            for shard in kwargs["shards"]:
                yield from self._examples_from_store(kwargs["root"], shard, kwargs["files"])
        else:
            yield from self._examples_streamed(kwargs["files"], kwargs["split"], kwargs["dlc"])

    def _wanted_bands(self) -> Dict[str, Tuple[str, ...]]:
        wanted = self.config.image_bands or tuple(b for g in groups_for_sensors(self.config.sensors) for b in g.bands)
        return {s: tuple(b for b in wanted if GROUP_OF_BAND[b].sensor == s) for s in self.config.sensors}

    def _examples_from_store(self, root: str, shard: str, files: dict):
        """A prepared shard: rows from the store, bands from the store (archives) or read by patch (folders, LMDB)."""
        invalid = InvalidReport(f"shard {shard}")
        readers = {s: imagery.open_reader(files[s], self._wanted_bands()) for s in self.config.sensors if not files[s].sequential}
        with store.StoreShard(root, shard) as staged:
            sensors = {s: readers.get(s, staged) for s in self.config.sensors}
            index = ann.group_by_patch(staged.rows(), self.config.key_column)
            for i in range(len(index)):
                rows = index.rows(i)
                images = self._images(sensors, rows, files, invalid)
                if images is not None:
                    yield from self._examples(rows, images)
        for reader in readers.values():
            reader.close()
        invalid.finish()

    def _examples_streamed(self, files: dict, split: str, dlc) -> Iterator[Tuple[object, dict]]:
        """Stream one split in the driving sensor's order, reading each patch once.

        The driving sensor (S2, or S1 for ``s1-*``) is read front to back if it
        is an archive, or by patch in key order if it is a folder or LMDB. For
        ``s1s2`` the other sensor is read by patch too; an S1 *archive* is first
        spilled to a temporary local store, because the two archives are
        sorted differently and a merge would have to buffer nearly all of it.
        """
        index = select_annotations(self.config, files["annotations"], split, dlc)
        key_sensor = self.config.key_sensor
        report, invalid = JoinReport(f"split {split}"), InvalidReport(f"split {split}")
        pair_names = {sensor: index.first(NAME_COLUMN[sensor]) for sensor in self.config.sensors}
        spill_dir, readers = tempfile.mkdtemp(prefix="bigearthnet_txt-s1-spill-"), {}
        try:
            for sensor in self.config.sensors:
                if sensor == key_sensor and files[sensor].sequential:
                    continue
                if files[sensor].sequential:
                    readers[sensor] = spill(files[sensor], sensor, set(pair_names[sensor]), spill_dir, dlc)
                else:
                    readers[sensor] = imagery.open_reader(files[sensor], self._wanted_bands())
            other = [s for s in self.config.sensors if s != key_sensor]
            for i, name, band_files in self._driving_patches(files[key_sensor], key_sensor, index, readers, dlc, report):
                rows = index.rows(i)
                if other and not readers[other[0]].has(other[0], pair_names[other[0]][i]):
                    report.missing(index.keys[i], f"{other[0]} source {files[other[0]].name}")
                    continue
                images = self._images({**readers, key_sensor: InHand(band_files)}, rows, files, invalid)
                if images is not None:
                    yield from self._examples(rows, images)
            report.finish(self.config.skip_missing)
            invalid.finish()
        finally:
            for reader in readers.values():
                reader.close()
            shutil.rmtree(spill_dir, ignore_errors=True)

    def _driving_patches(self, source, sensor, index, readers, dlc, report):
        """``(row-range index, patch name, band data)`` in the driving source's own order; misses go to the report."""
        seen = np.zeros(len(index), dtype=bool)
        if source.sequential:
            position = index.position()
            for name, band_files in iter_patches(source, sensor, dlc):
                i = position.get(name)
                if i is None:
                    report.archive_only += 1
                    continue
                seen[i] = True
                yield i, name, band_files
        else:
            reader = readers[sensor]
            for i, name in enumerate(index.keys):
                band_files = reader.read(sensor, name)
                if band_files is not None:
                    seen[i] = True
                    yield i, name, band_files
        for i in np.flatnonzero(~seen):
            if not report.is_missing(index.keys[i]):
                report.missing(index.keys[i], f"{sensor} source {source.name}")

    def _images(self, readers: dict, rows: pa.Table, files: dict, invalid: "InvalidReport") -> Optional[Dict[str, np.ndarray]]:
        """Decode the patch's bands once (all its annotations share them); None = skipped as invalid.

        ``readers[sensor].read(sensor, patch name)`` gives GeoTIFF bytes per band
        (archives, folders) or decoded arrays (LMDB); both are checked the same way.
        """
        try:
            return self._decode_patch(readers, rows, files)
        except raster.RasterError as err:
            if not self.config.skip_invalid:
                raise
            invalid.add(str(err))
            return None

    def _decode_patch(self, readers: dict, rows: pa.Table, files: dict) -> Dict[str, np.ndarray]:
        names = {sensor: rows[column][0].as_py() for sensor, column in NAME_COLUMN.items()}
        arrays: Dict[str, np.ndarray] = {}
        for sensor, wanted in self._wanted_bands().items():
            data = readers[sensor].read(sensor, names[sensor]) or {}
            for band in wanted:
                where = f"patch {names[sensor]} band {band} (in {files[sensor].name})"
                if band not in data:
                    raise raster.RasterError(f"{where}: the band file is missing")
                arrays[band] = raster.check_band(_as_array(data[band], where), band, where=where)
        if self.config.image_bands is not None:
            return {"image": raster.stack_image(arrays, self.config.image_bands, self.config.img_size, self.config.resample)}
        return {g.name: np.stack([arrays[b] for b in g.bands]) for g in groups_for_sensors(self.config.sensors)}

    def _examples(self, rows: pa.Table, images: Dict[str, np.ndarray]) -> Iterator[Tuple[object, dict]]:
        columns = rows.to_pydict()
        texts = [self._annotation(columns, j) for j in range(len(rows))]
        if self.config.layout == "patch":
            patch = {c: columns[c][0] for c in ann.PATCH_COLUMNS}
            yield patch[self.config.key_column], {**patch, "annotations": texts, **images}
            return
        for j, annotation in enumerate(texts):
            example = {c: columns[c][j] for c in ann.PATCH_COLUMNS}
            example.update(annotation)
            example.update(images)
            yield annotation["ID"], example

    def _annotation(self, columns: dict, j: int) -> dict:
        row_id, kind, prompt, answer = columns["ID"][j], columns["type"][j], columns["input"][j], columns["output"][j]
        parsed = {k: list(v) if isinstance(v, tuple) else v for k, v in text.parse_row(kind, prompt, answer, row_id).items()}
        category = columns["category"][j]
        return {
            "ID": row_id,
            "input": text.replace_tokens(prompt, self.config.point_token, self.config.ref_token),
            "output": answer,
            "type": kind,
            "category": None if category == "None" else category,
            **parsed,
        }


# ----------------------------------------------------------------------------- the join


@dataclass
class JoinReport:
    """Counts of patches that are in the text but not the archives, or the other way round."""

    split: str
    archive_only: int = 0

    def __post_init__(self):
        self._missing: Dict[str, str] = {}

    def missing(self, key: str, where: str) -> None:
        self._missing[key] = where

    def is_missing(self, key: str) -> bool:
        return key in self._missing

    @property
    def missing_count(self) -> int:
        return len(self._missing)

    def finish(self, skip_missing: bool) -> None:
        if self._missing and not skip_missing:
            first = ", ".join(f"{k} (not in the {w})" for k, w in list(self._missing.items())[:5])
            raise MissingPatchError(
                f"{self.split}: {len(self._missing)} image pair(s) with annotations are missing from the "
                f"archives, e.g. {first}. Pass skip_missing=True to skip them (they are counted in the report)."
            )
        logger.info(
            "%s: %d image pair(s) with annotations missing from the archives%s; %d archive patch(es) "
            "outside this selection (other splits, filtered out, or without texts)",
            self.split, len(self._missing), " (skipped)" if self._missing else "", self.archive_only,
        )
        if self._missing:
            logger.warning("%s: skipped %d image pair(s) missing from the archives", self.split, len(self._missing))


class MissingPatchError(ValueError):
    """A requested image pair is not in the archives."""


class InvalidReport:
    """Patches skipped with ``skip_invalid=True``: each is logged, and the count at the end."""

    def __init__(self, scope: str):
        self.scope, self.count = scope, 0

    def add(self, reason: str) -> None:
        self.count += 1
        logger.warning("%s: skipped an image pair: %s", self.scope, reason)

    def finish(self) -> None:
        if self.count:
            logger.warning("%s: skipped %d image pair(s) with invalid band files (skip_invalid=True)", self.scope, self.count)


def select_annotations(config: BigEarthNetTxtConfig, urlpath: str, split: Optional[str], dlc) -> ann.PatchIndex:
    """Read, check and group the config's rows; filter values are validated against the data first."""
    requested = {option: getattr(config, option) for option in ann.FILTER_COLUMNS}
    if any(v is not None for v in requested.values()):
        present = ann.distinct_values(urlpath, list(ann.FILTER_COLUMNS.values()), TASKS[config.task], dlc)
        ann.check_filter_values(requested, present)
    # sorted while reading: the bulky text columns are placed straight into sorted order (< 3 GB for s1s2-all)
    table = ann.read_selection(urlpath, config.selection(split), download_config=dlc, sort_by=config.key_column)
    where = sources.display_name(urlpath)
    index = ann.group_by_patch(table, config.key_column)
    ann.check_patch_pairs(index, where)
    ann.check_pair_names(index.table.select(["ID", "patch_id", "s1_name"]).take(pa.array(index.starts[:-1])), where)
    return index


def iter_patches(source: imagery.ImageSource, sensor: str, dlc):
    """Patches of a sequential source, archive after archive (an archive's parts read as one stream)."""
    if source.kind == "export":
        yield from imagery.iter_export_patches(source.paths[0], sensor, dlc)
        return
    for parts in source.archives:
        yield from archives.iter_archive_patches(parts, sensor, dlc)


def _as_array(value, where: str) -> np.ndarray:
    """Band data as read: an array (LMDB, export), a staged .npy (export), or GeoTIFF bytes (archives, folders)."""
    if isinstance(value, np.ndarray):
        return value
    if bytes(value[:6]) == b"\x93NUMPY":
        return np.load(io.BytesIO(value), allow_pickle=False)
    return raster.decode_geotiff(value, where=where)


class InHand:
    """The reader interface over band data already read (the driving archive's current patch)."""

    def __init__(self, data):
        self.data = data

    def read(self, sensor: str, name: str):
        return self.data


def spill(source: imagery.ImageSource, sensor: str, needed: set, root: str, dlc) -> store.StoreShard:
    """Copy the band files the selection needs into a local store (bounded memory for the s1s2 join)."""
    writer = store.StoreWriter(root)
    writer.open_shard(sensor)
    for name, band_files in iter_patches(source, sensor, dlc):
        if name in needed:
            writer.add(sensor, sensor, name, band_files)
    writer.close(write_index=False)
    return store.StoreShard(root, sensor, index=writer.index[sensor])


@dataclass
class StagingPlan:
    root: str
    shards: Dict[str, List[str]]  # split -> shard names
    examples: Dict[str, int] = None  # split -> examples the split will have


def stage(config: BigEarthNetTxtConfig, files: dict, root: str, num_shards: int, dlc) -> StagingPlan:
    """One sequential pass per archive: copy the selected patches into per-split shard files.

    Shards are contiguous runs of image pairs in archive order, so the prepared
    dataset has the same order as the streamed one whatever ``num_proc`` is.
    """
    index = select_annotations(config, files["annotations"], None, dlc)
    key_sensor = config.key_sensor
    pair_split = np.array(index.first("split"), dtype=object)
    pair_shard = np.full(len(index), -1, dtype=np.int64)  # per image pair: position in `names`
    names: List[str] = []
    plan = StagingPlan(root, {})
    for split in config.splits:
        members = np.flatnonzero(pair_split == split)
        if not len(members):  # datasets cannot load a split with no data: leave it out, and say so
            logger.info("config %s: split %s has no rows in this selection and is left out", config.name, split)
            continue
        n = min(num_shards, len(members))
        plan.shards[split] = [f"{split}-{k:05d}-of-{n:05d}" for k in range(n)]
        pair_shard[members] = len(names) + np.arange(len(members)) * n // len(members)
        names += plan.shards[split]
    shard_of = {key: names[j] for key, j in zip(index.keys, pair_shard) if j >= 0}
    _log_estimate(config, index)

    writer = store.StoreWriter(root)
    for name in names:
        writer.open_shard(name)
    report = JoinReport(f"config {config.name}")
    present = {sensor: set() for sensor in config.sensors}
    pair_names = {sensor: index.first(column) for sensor, column in NAME_COLUMN.items()}
    s1_to_key = dict(zip(pair_names["s1"], index.keys))
    for sensor in config.sensors:
        source = files[sensor]
        if not source.sequential:  # folders, LMDB: read by patch later; only check presence now
            with closing(imagery.open_reader(source, {sensor: SENSOR_BANDS[sensor]})) as reader:
                present[sensor] = {name for name in pair_names[sensor] if reader.has(sensor, name)}
            continue
        for name, band_files in iter_patches(source, sensor, dlc):
            key = name if sensor == key_sensor else s1_to_key.get(name)
            if key not in shard_of:
                report.archive_only += sensor == key_sensor
                continue
            writer.add(shard_of[key], sensor, name, band_files)
            present[sensor].add(name)

    keep = np.ones(len(index.table), dtype=bool)
    for i, key in enumerate(index.keys):
        absent = [s for s in config.sensors if pair_names[s][i] not in present[s]]
        if absent:
            report.missing(key, f"{absent[0]} source {files[absent[0]].name}")
            keep[index.starts[i] : index.starts[i + 1]] = False
    report.finish(config.skip_missing)

    kept_pairs = keep[index.starts[:-1]] if len(index) else np.zeros(0, dtype=bool)
    per_pair = np.diff(index.starts) if config.layout == "annotation" else np.ones(len(index), dtype=np.int64)
    plan.examples = {split: int(per_pair[kept_pairs & (pair_split == split)].sum()) for split in plan.shards}
    row_shard = np.repeat(pair_shard, np.diff(index.starts))
    for j, name in enumerate(names):
        writer.write_rows(name, index.table.filter(pa.array(keep & (row_shard == j))))
    writer.close()
    return plan


def _log_estimate(config: BigEarthNetTxtConfig, index: ann.PatchIndex) -> None:
    """Tell the user, before the long pass, how large the Arrow cache will be."""
    rows, patches = len(index.table), len(index)
    text_bytes = int(sum(pa.compute.sum(pa.compute.binary_length(index.table[c])).as_py() or 0 for c in ("input", "output")))
    total = estimate_cache_bytes(config, rows, patches, text_bytes)
    logger.info(
        "config %s (layout=%s): %d annotations on %d image pairs; estimated Arrow cache size %.2f GB",
        config.name, config.layout, rows, patches, total / 1e9,
    )


def estimate_cache_bytes(config: BigEarthNetTxtConfig, rows: int, patches: int, text_bytes: int) -> int:
    """Images once per example (per patch with layout="patch"), +2% Arrow list offsets, texts, ~120 B of columns per row."""
    image_bytes = sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in image_features(config).values())
    copies = patches if config.layout == "patch" else rows
    return int(copies * image_bytes * 1.02 + text_bytes + rows * 120)


def config_name_error(name: str) -> str:
    import difflib

    valid = [c.name for c in BigEarthNetTxt.BUILDER_CONFIGS]
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    return (
        f"Unknown config {name!r}. Config names are <sensor>-<task>[-<split>] with sensor in {list(SENSORS)}, "
        f"task in {list(TASKS)}, split in {list(SPLITS)}"
        + (f". Did you mean {close}?" if close else ".")
    )


def start_clean(output_dir: str) -> str:
    """Remove what an interrupted run left behind and return a fresh staging folder.

    ``datasets`` writes into ``<cache>.incomplete`` and renames it only when every
    split is done, so a killed run is never taken for a finished one; but it
    reuses that folder, and a killed run's shard files (other names when
    ``num_proc`` changed) would ride along. The staging folder sits beside the
    cache (same disk) under a fixed name, so a rerun removes the old one.
    """
    import os

    if "://" in output_dir:  # remote cache: stage in the local temp dir
        return tempfile.mkdtemp(prefix="bigearthnet_txt-staging-")
    if output_dir.endswith(".incomplete") and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    staging = output_dir.rstrip("/") + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    return staging


register()

if __name__ == "__main__":
    import sys

    from bentxt.cli import main

    sys.exit(main())
