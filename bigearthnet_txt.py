"""BigEarthNet.txt: Sentinel-1/2 image pairs joined with 9.55 M texts, as a `datasets` builder.

    import bigearthnet_txt, datasets
    ds = datasets.load_dataset("bigearthnet_txt", "s1s2-vqa")          # prepare an Arrow cache
    it = datasets.load_dataset("bigearthnet_txt", "s2-captioning", streaming=True)

Configs are ``<sensor>-<task>[-<split>]`` (``bentxt/config.py``). Each example is
one text joined with its image pair's bands (``layout="patch"``: one example
per pair, its texts in a list). Prepared configs keep their texts in
``datasets``' cache folders and each pair's pixels once per source, in an
imagery store shared by every config of that source (``bentxt/cache/store.py``;
rows point into it through ``bentxt/cache/pair_bands.py``); the join is
``bentxt/join.py``; where the files come from is ``bentxt/sources.py``. This
file only wires them into ``datasets``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, List, Optional, Tuple

import datasets
import pyarrow as pa
from datasets.data_files import DataFilesDict, DataFilesList
from datasets.download.streaming_download_manager import StreamingDownloadManager
from datasets.utils.py_utils import convert_file_size_to_int

from bentxt.text import annotations as ann
from bentxt.cache import folders as cache
from bentxt import compat
from bentxt import config as cfg
from bentxt import join
from bentxt.cache import lifetime
from bentxt import metadata
from bentxt import sources
from bentxt.cache import store
from bentxt.config import BigEarthNetTxtConfig, features_for
from bentxt.cache.pair_bands import attach
from bentxt.registration import code_hash, register

logger = logging.getLogger("bigearthnet_txt")
TEXTS_FILE = ".texts.arrow"  # the parsed selection while preparing; removed when preparing ends
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


class BigEarthNetTxt(compat.TableBuilder):
    """Joins BigEarthNet.txt annotations with BigEarthNet v2.0 Sentinel-1/2 bands."""

    VERSION = datasets.Version(metadata.VERSION)
    BUILDER_CONFIG_CLASS = BigEarthNetTxtConfig
    BUILDER_CONFIGS = list(cfg.CONFIGS.values())
    DEFAULT_CONFIG_NAME = cfg.DEFAULT_CONFIG_NAME
    # Text rows are ~200 bytes: record batches of 10,000 (2 MB) instead of datasets' 1,000 cut the writer's
    # per-batch work (a write per buffer) 10x; preparing the texts after the imagery pass is serial time.
    DEFAULT_WRITER_BATCH_SIZE = 10_000
    SPLIT_GENERATOR_OPTIONS = ("num_proc", "max_shard_size")

    def __init__(self, *args, data_files=None, hash: Optional[str] = None, **kwargs):
        # Named files are used as given: ``datasets`` would glob them (a folder of 7.7 M files takes hours).
        if data_files is not None and not isinstance(data_files, DataFilesDict):
            data_files = _named_files(data_files)
        # A shared, prepared cache on a read-only mount opens for reading: datasets would fail creating lock files.
        root = os.path.expanduser(str(kwargs.get("cache_dir") or datasets.config.HF_DATASETS_CACHE))
        self._read_only = cache.is_read_only(root)
        with compat.builder_without_file_locks() if self._read_only else contextlib.nullcontext():
            # The same hash as load_dataset's, so the class, the CLI and load_dataset share one cache folder.
            super().__init__(*args, data_files=data_files, hash=hash or code_hash(), **kwargs)

    def check_config_request(self, config_name, options) -> None:
        cfg.check_builder_request(config_name, options)  # no name, a mistyped keyword: say which
        if isinstance(config_name, str) and config_name not in cfg.CONFIGS:
            raise ValueError(cfg.config_name_error(config_name))

    def config_cache_id(self, config, config_id) -> str:
        config.validate()
        return config_id or cache.config_id(config)  # one folder per selection, whatever the route

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
        if self._read_only:
            if not os.path.exists(os.path.join(self.output_dir, datasets.config.DATASET_INFO_FILENAME)):
                raise cache.ReadOnlyCacheError(
                    f"the cache {self.cache_root} is read-only and holds no prepared {self.config.name} with these "
                    f"options ({self.output_dir}): prepare it where the cache can be written, or pass cache_dir= "
                    f"(--cache-dir) a writable folder")
            with compat.builder_without_file_locks():
                return super().download_and_prepare(*args, **kwargs)
        cache.explain_rebuild(self.output_dir, self.config)
        cache.drop_if_stores_changed(self.output_dir)  # its rows would name a store that is gone or was rebuilt
        return super().download_and_prepare(*args, **kwargs)

    @contextlib.contextmanager
    def preparing(self, verification_mode) -> Iterator[None]:
        """Clean leftovers first; record inputs and stores once every split is written; never keep the texts file."""
        self._verification_mode = verification_mode
        cache.start_clean(self.output_dir)
        try:
            with join.preparing_memory_pool(), lifetime.children_die_with_this_process():
                yield
            cache.write_inputs(self.output_dir, self.config)
            cache.write_stores(self.output_dir, self._plan.stores, self._plan.store_paths, self._plan.references)
        finally:
            if os.path.exists(os.path.join(self.output_dir, TEXTS_FILE)):
                os.remove(os.path.join(self.output_dir, TEXTS_FILE))

    def _split_generators(self, dl_manager, num_proc: Optional[int] = None,
                          max_shard_size=None) -> List[datasets.SplitGenerator]:
        files = sources.resolve(self.config, self.config.sensors)
        if isinstance(dl_manager, StreamingDownloadManager):
            spill = cache.spill_root(self.cache_root)
            return [
                datasets.SplitGenerator(split, {"files": files, "split": split, "dlc": dl_manager.download_config,
                                                "spill": spill})
                for split in ann.splits_present(files["annotations"], self.config.selection(), dl_manager.download_config,
                                                f"config {self.config.name}")  # a split with no rows is left out
            ]
        verification = getattr(self, "_verification_mode", None)
        files = sources.download(files, dl_manager, self.config.keep_archives, verification)
        sources.verify(files, verification)
        shard_bytes = convert_file_size_to_int(max_shard_size or datasets.config.MAX_SHARD_SIZE)
        plan = self._plan = join.plan_cache(
            self.config, files, store.default_root(self.cache_root), os.path.join(self.output_dir, TEXTS_FILE),
            max(1, num_proc or 1), dl_manager.download_config, shard_bytes)
        batch = self.writer_batch_size or datasets.config.DEFAULT_MAX_BATCH_SIZE
        rows_per_table = max(1, min(batch, shard_bytes // join.TEXT_ROW_BYTES))  # datasets rolls shards between tables
        expected = sources.expected_split_sizes(self.config, files)
        if expected is None and not self.config.skip_invalid:  # the "Generating" bars get a total, datasets a check
            expected = datasets.SplitDict({s: datasets.SplitInfo(name=s, num_examples=n) for s, n in plan.examples.items()})
        if expected is not None:
            self.info.splits = expected
        return [
            datasets.SplitGenerator(split, {"texts": plan.texts, "starts": plan.starts, "rows": plan.rows,
                                            "references": plan.references, "grids": plan.grids, "pairs": pairs,
                                            "rows_per_table": rows_per_table})
            for split, pairs in plan.shards.items()
        ]

    def _generate_examples(self, files, split, dlc, spill) -> Iterator[Tuple[object, dict]]:
        """Streaming: one example per text (or per pair), bands as arrays."""
        with cache.spill_dir(spill) as folder:
            yield from join.streamed_examples(self.config, files, split, dlc, folder)

    def _generate_tables(self, texts, starts, rows, references, grids, pairs,
                         rows_per_table) -> Iterator[Tuple[object, "pa.Table"]]:
        """Preparing: the texts of a shard's pairs as tables, their bands as references into the source's stores."""
        for shard in pairs:
            tables = join.cached_tables(self.config, self.info.features, texts, starts, rows, references, grids, shard,
                                        rows_per_table)
            for k, table in enumerate(tables):
                yield (int(shard[0]), k), table

    # --- reading

    def loaded(self, read, split) -> datasets.Dataset:
        """A split is checked against what was written (not found bad mid-training) and told where its stores are."""
        folder = self.local_output_dir
        try:
            ds = read()
        except (OSError, pa.ArrowInvalid) as err:  # a truncated or emptied text shard
            raise cache.DamagedCacheError(cache.damaged(folder, str(split), str(err))) from None
        recorded = self.info.splits.get(str(split)) if self.info.splits else None
        if recorded is not None and recorded.num_examples != ds.num_rows:
            raise cache.DamagedCacheError(cache.damaged(
                folder, str(split), f"{ds.num_rows} rows where {recorded.num_examples} were written"))
        return attach(ds, cache.store_paths(folder))

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

    from bentxt.tools.cli import main

    sys.exit(main())
