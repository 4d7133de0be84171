"""BigEarthNet.txt: Sentinel-1/2 image pairs joined with 9.55 M texts, as a `datasets` builder.

    import bigearthnet_txt, datasets
    ds = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa")          # prepare an Arrow cache
    it = datasets.load_dataset("bigearthnet_txt", "s2-captioning", streaming=True)

Configs are ``<sensor>-<task>[-<split>]`` (``bentxt/config.py``). Each example is
one text joined with its image pair's bands (``layout="patch"``: one example
per pair, its texts in a list). A prepared cache stores each pair's pixels
once (``bentxt/imagery_table.py``); the join is ``bentxt/join.py``; where the
files come from is ``bentxt/sources.py``. This file only wires them into
``datasets``.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, List, Optional, Tuple

import datasets
import pyarrow as pa
from datasets.data_files import DataFilesDict, DataFilesList
from datasets.download.streaming_download_manager import StreamingDownloadManager

from bentxt import cache, config as cfg, join, metadata, sources
from bentxt.config import BigEarthNetTxtConfig, features_for
from bentxt.imagery_table import attach
from bentxt.registration import code_hash, register

logger = logging.getLogger("bigearthnet_txt")
if not logger.handlers:  # the cache-size estimate and the join report should reach the user by default
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("bigearthnet_txt: %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)

# the public names users reach through the builder module
SENSORS, TASKS, SPLITS, LAYOUTS = cfg.SENSORS, cfg.TASKS, cfg.SPLITS, cfg.LAYOUTS
MissingPatchError, EmptySelectionError = join.MissingPatchError, join.EmptySelectionError
estimate_cache_bytes = cfg.estimate_cache_bytes


class BigEarthNetTxt(datasets.GeneratorBasedBuilder):
    """Joins BigEarthNet.txt annotations with BigEarthNet v2.0 Sentinel-1/2 bands."""

    VERSION = datasets.Version(metadata.VERSION)
    BUILDER_CONFIG_CLASS = BigEarthNetTxtConfig
    BUILDER_CONFIGS = list(cfg.CONFIGS.values())
    DEFAULT_CONFIG_NAME = cfg.DEFAULT_CONFIG_NAME
    # Text rows are ~200 bytes: record batches of 10,000 (2 MB) instead of datasets' 1,000 cut the writer's
    # per-batch work (a write per buffer) 10x; preparing the texts after the imagery pass is serial time.
    DEFAULT_WRITER_BATCH_SIZE = 10_000

    def __init__(self, *args, data_files=None, hash: Optional[str] = None, **kwargs):
        # Named files are used as given: ``datasets`` would glob them (a folder of 7.7 M files takes hours).
        if data_files is not None and not isinstance(data_files, DataFilesDict):
            data_files = _named_files(data_files)
        # The same hash as load_dataset's, so the class, the CLI and load_dataset share one cache folder.
        super().__init__(*args, data_files=data_files, hash=hash or code_hash(), **kwargs)

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        if isinstance(config_name, str) and config_name not in cfg.CONFIGS:
            raise ValueError(cfg.config_name_error(config_name))
        builder_config, _ = super()._create_builder_config(config_name, custom_features, config_id, **config_kwargs)
        builder_config.validate()
        return builder_config, config_id or cache.config_id(builder_config)

    def _info(self) -> datasets.DatasetInfo:
        self.config.validate()
        return datasets.DatasetInfo(
            description=metadata.DESCRIPTION,
            features=features_for(self.config, storage="cache"),
            homepage=metadata.HOMEPAGE,
            license=metadata.LICENSE,
            citation=metadata.CITATION,
        )

    # --- preparing

    def download_and_prepare(self, *args, **kwargs):
        cache.explain_rebuild(self._output_dir, self.config)
        return super().download_and_prepare(*args, **kwargs)

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._verification_mode = verification_mode
        cache.start_clean(self._output_dir)
        try:
            with join.preparing_memory_pool():
                super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
            cache.write_inputs(self._output_dir, self.config)
        finally:
            if os.path.exists(os.path.join(self._output_dir, ".texts.arrow")):
                os.remove(os.path.join(self._output_dir, ".texts.arrow"))

    def _make_split_generators_kwargs(self, prepare_split_kwargs):
        return {"num_proc": prepare_split_kwargs.get("num_proc")}

    def _split_generators(self, dl_manager, num_proc: Optional[int] = None) -> List[datasets.SplitGenerator]:
        files = sources.resolve(self.config, self.config.sensors)
        if isinstance(dl_manager, StreamingDownloadManager):
            spill = cache.spill_root(self._cache_dir_root)
            return [
                datasets.SplitGenerator(split, {"files": files, "split": split, "dlc": dl_manager.download_config,
                                                "spill": spill})
                for split in self.config.splits
            ]
        files = sources.download(files, dl_manager)
        sources.verify(files, getattr(self, "_verification_mode", None))
        plan = join.plan_cache(self.config, files, self._output_dir, max(1, num_proc or 1), dl_manager.download_config)
        expected = sources.expected_split_sizes(self.config, files)
        if expected is None and not self.config.skip_invalid:  # the "Generating" bars get a total, datasets a check
            expected = datasets.SplitDict({s: datasets.SplitInfo(name=s, num_examples=n) for s, n in plan.examples.items()})
        if expected is not None:
            self.info.splits = expected
        return [
            datasets.SplitGenerator(split, {"texts": plan.texts, "starts": plan.starts, "rows": plan.rows, "pairs": pairs})
            for split, pairs in plan.shards.items()
        ]

    def _generate_examples(self, files, split, dlc, spill) -> Iterator[Tuple[object, dict]]:
        """Streaming: one example per text (or per pair), bands as arrays."""
        with cache.spill_dir(spill) as folder:
            yield from join.streamed_examples(self.config, files, split, dlc, folder)

    # Preparing writes Arrow tables through datasets' own table writer (ArrowBasedBuilder's loop, not a copy):
    # the per-example encoder costs ~465 us per text here, over an hour for the release's 9.55 M texts.
    _prepare_split = datasets.ArrowBasedBuilder._prepare_split
    _prepare_split_single = datasets.ArrowBasedBuilder._prepare_split_single

    def _generate_tables(self, texts, starts, rows, pairs) -> Iterator[Tuple[object, "pa.Table"]]:
        """Preparing: the texts of a shard's pairs as tables, their bands as references into the imagery tables."""
        for shard in pairs:
            tables = join.cached_tables(self.config, self.info.features, texts, starts, rows, shard,
                                        self._writer_batch_size or datasets.config.DEFAULT_MAX_BATCH_SIZE)
            for k, table in enumerate(tables):
                yield (int(shard[0]), k), table

    # --- reading

    def _as_dataset(self, split=datasets.Split.TRAIN, in_memory: bool = False) -> datasets.Dataset:
        return attach(super()._as_dataset(split, in_memory), self._fs._strip_protocol(self._output_dir))

    def as_streaming_dataset(self, split=None, base_path=None):
        """Streamed examples carry their bands as ``Array3D`` (nothing to point into)."""
        cached = self.info.features
        self.info.features = features_for(self.config, storage="stream")
        try:
            return super().as_streaming_dataset(split=split, base_path=base_path)
        finally:
            self.info.features = cached


def _named_files(data_files) -> DataFilesDict:
    """``{"annotations": path, "s1": path(s), "s2": path(s)}`` as a ``DataFilesDict``, without resolving patterns."""
    if isinstance(data_files, (str, list, tuple)):
        data_files = {"train": data_files}  # rejected with a clear message by sources.resolve
    out = DataFilesDict()
    for key, value in data_files.items():
        paths = [value] if isinstance(value, str) else [str(p) for p in value]
        out[key] = DataFilesList(paths, [()] * len(paths))
    return out


try:
    register()
except ImportError as _err:  # an unsupported datasets: the class above still works
    logger.warning("%s", _err)

if __name__ == "__main__":
    import sys

    from bentxt.cli import main

    sys.exit(main())
