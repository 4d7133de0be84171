"""Packed Parquet export: a dataset folder the Hub, its viewer and ``load_dataset`` read without our code.

    from bentxt.export.writer import export, iter_examples, push_to_hub
    root = export("s2-vqa", "out/", data_dir="raw/")          # prepare, write Parquet + README
    export("s2-captioning", "out/", data_dir="raw/")          # a second task: its pixels are already there
    for example in iter_examples(root, "s2-vqa", "test"):     # per-text examples with their arrays
        ...
    push_to_hub(root, "org/BigEarthNet.txt")

An export folder holds three kinds of Hub configs (``README.md`` YAML ``configs:`` + ``dataset_info``,
files ``data/<config>/<split>-NNNNN-of-MMMMM.parquet``):

- ``<name>`` per exported config: the texts, the builder's columns without pixels (one row per text, or per
  pair with ``layout="patch"``);
- ``imagery-<sensors>`` (``imagery-s2``, ``imagery-s1``, ``imagery-s1s2``; a ``bands=`` variant gets its own):
  one row per image pair, a ``preview`` PNG, the 8 pair columns, the bands as exact ``Array3D``. It is shared by
  every texts config of that sensor set, so exporting every task stores each pair's pixels once. It holds the
  union of their pairs: a config whose pairs it already holds (in the same order) reuses it as it is; a config
  holding all of its pairs and more rewrites the split; anything else is refused (export the larger config first);
- ``browse`` (the default): every text of the folder's annotation-layout texts configs once (by ``ID``) with its
  pair's ``preview`` (an imagery config's PNG bytes, re-used, not re-encoded; the answer box or point drawn on
  grounding rows of small splits), sorted by pair, so zstd stores a pair's ~20 repeated previews about once however
  many tasks are exported. It is rebuilt, for the exported splits, from the texts configs on disk after each export.

A texts config lists its pairs (``patch_id``) in the order of its imagery config: join them on ``patch_id``
(``bentxt.export.reader``), or read them joined with :func:`iter_examples`. Each texts and browse file names its
imagery config in its Parquet metadata (``bentxt``).

Writing is one path for the local run and Ray (``bentxt/export/ray_engine.py``): :class:`ExportJob` decides what is written
(imagery reused or rewritten), the engine plans :class:`FileSpec` s per split from :meth:`ExportJob.pairs` (local:
:func:`plan_shards`; Ray: per tile run), :func:`write_file` writes one of them, :meth:`ExportJob.finish` checks the
staged files, swaps them in and updates the card. Three phases: imagery, texts, browse (which reads the texts configs
and the previews on disk).

Sizes, against the viewer's limits (huggingface/dataset-viewer; see the README's export section for the sources):
row groups hold at most ``MAX_ROW_GROUP_BYTES`` = 16 MB of Arrow data (streaming memory grows with them) and every
column chunk has an offset index, far inside the 300 MB ``/rows`` scan (``rowsIndex.maxArrowDataInMemory``);
files hold at most ``MAX_SHARD_BYTES`` (``push_to_hub``'s default); a config directory at most 10,000 files; a
pair's rows never span two files; each split has at least ``min_shards`` files when it has that many pairs, a
multiple of ``min_shards`` where possible (``split_dataset_by_node`` hands whole files to ranks).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.arrow_writer import get_parquet_column_options
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from PIL import Image
from tqdm.auto import tqdm

from bentxt.text import annotations as ann
from bentxt import metadata
from bentxt.imagery import preview
from bentxt.config import BigEarthNetTxtConfig, features_for, resolve_config, text_features
from bentxt.export.reader import (DATA_DIR, META_KEY, PAIR_KEY, ImageryIndex, array_columns, config_files, export_url,
                          imagery_of,
                          open_root, pair_starts, pixel_bytes)
from bentxt.cache.imagery_table import array3d, array3d_values
from bentxt.cache.pair_bands import PairBands

logger = logging.getLogger("bigearthnet_txt")

# ----------------------------------------------------------------------------- limits and names

#: Arrow bytes per row group. The viewer would take up to 300 MB per scan, but streaming reads a whole row group and
#: the Parquet reader needs several times its size while decoding nested lists (measured on s1s2 rows: ~600 MB of
#: Arrow pool for 100 MB groups, ~110 MB for 10 MB groups), so groups are kept small.
MAX_ROW_GROUP_BYTES = 16_000_000
#: the viewer's /rows scan limit (``rowsIndex.maxArrowDataInMemory``, chart/env/prod.yaml): a row group above it
#: cannot be shown
VIEWER_MAX_ROW_GROUP_BYTES = 300_000_000
#: the viewer's first-rows response (``firstRows.maxBytes``, chart/env/prod.yaml): rows past it are dropped
VIEWER_FIRST_ROWS_BYTES = 200_000
#: configs the viewer starts on fast (the issue's figure; the card names the configs to open past it)
VIEWER_MAX_CONFIGS = 10
#: Arrow bytes per Parquet file: push_to_hub's default max_shard_size
MAX_SHARD_BYTES = 500_000_000
#: files per directory on the Hub
MAX_FILES_PER_DIRECTORY = 10_000
#: bytes a preview PNG adds to a row, for planning before any is drawn (measured 20-25 kB on noise, less on scenes)
PREVIEW_BYTES_ESTIMATE = 25_000
#: Arrow bytes of a pair's 8 pair columns in an imagery config, for planning
PAIR_COLUMN_BYTES = 300
#: a split with at most this many text rows gets the box/point drawn on its grounding rows' browse pictures
#: (one PNG per such row: cheap for bench's 15,029 rows, not for train's 4.7 M)
BROWSE_MARK_MAX_ROWS = 20_000

PREVIEW = "preview"
CARD = "README.md"
IMAGERY_PREFIX = "imagery-"
BROWSE = "browse"
#: the text columns a browse row shows beside its picture
BROWSE_COLUMNS = ("ID", "input", "output", "type", "category", "patch_id", "s1_name", "split")
#: imagery configs a browse row takes its picture from, best first: S2 true colour, then S1, then resampled stacks
PREVIEW_PREFERENCE = ("imagery-s2", "imagery-s1s2", "imagery-s1")
SPLIT_FILE = re.compile(r"^(?P<split>[a-z]+)-\d{5}-of-\d{5}\.parquet$")


def imagery_name(config) -> str:
    """The imagery config of a config: ``imagery-<sensor>``, or one per ``bands=`` / ``img_size`` / ``resample``."""
    if config.image_bands is None:
        return IMAGERY_PREFIX + config.sensor
    bands = config.bands if isinstance(config.bands, str) else "-".join(config.image_bands)
    return f"{IMAGERY_PREFIX}{config.sensor}-{bands.lower()}-{config.img_size}px-{config.resample}"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def export_features(features: datasets.Features) -> datasets.Features:
    """Features with the ``preview`` picture first, so the viewer shows it first."""
    return datasets.Features({PREVIEW: datasets.Image(), **features})


def imagery_features(stream: datasets.Features, images: Sequence[str]) -> datasets.Features:
    """An imagery config's columns: ``preview``, the pair columns, the band columns (``Array3D``)."""
    return export_features(datasets.Features({**{c: stream[c] for c in ann.PATCH_COLUMNS}, **{k: stream[k] for k in images}}))


def browse_features(stream: datasets.Features) -> datasets.Features:
    columns = {**text_features(), **stream}  # a patch-layout config has no per-text columns of its own
    return export_features(datasets.Features({c: columns[c] for c in BROWSE_COLUMNS}))


# ----------------------------------------------------------------------------- API


def export(
    config: str,
    output_dir: Union[str, Path],
    *,
    data_dir: Optional[str] = None,
    data_files: Optional[object] = None,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
    name: Optional[str] = None,
    min_shards: int = 4,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    inline_pixels: bool = False,
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """Prepare ``config`` (the same cache as ``load_dataset``), then write it into the export folder ``output_dir``.

    ``data_dir``/``data_files`` default to the release. ``config_kwargs`` (e.g. ``layout="patch"``,
    ``countries=[...]``) go to the builder; pass ``name`` to store such a variant under its own config name.
    Writes ``<name>``, its ``imagery-*`` config where needed, and rebuilds ``browse``. Returns the folder.
    """
    _refuse_inline(inline_pixels)
    builder = prepared(config, data_dir=data_dir, data_files=data_files, cache_dir=cache_dir, num_proc=num_proc,
                       progress=progress, **config_kwargs)
    return export_dataset(builder.as_dataset(), output_dir, builder.config, name=name, min_shards=min_shards,
                          max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group, num_proc=num_proc,
                          progress=progress)


def _refuse_inline(inline_pixels: bool) -> None:
    if inline_pixels:
        raise ValueError("inline_pixels=True is gone: every export now has a 'browse' config (the default) that shows "
                         "each text beside its pair's picture, and stores each pair's pixels once")


def export_dataset(
    dataset: datasets.DatasetDict,
    output_dir: Union[str, Path],
    config: object,
    *,
    name: Optional[str] = None,
    min_shards: int = 4,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
    inline_pixels: bool = False,
    num_proc: Optional[int] = None,
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """Write an already prepared ``DatasetDict`` of a config (a ``BigEarthNetTxtConfig`` or its name), locally.

    ``num_proc`` processes write the files (they are independent). See the module docstring for the layout.
    """
    _refuse_inline(inline_pixels)
    job = ExportJob.create(dataset, output_dir, config, name, min_shards, max_shard_bytes, **config_kwargs)
    limits = dict(min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                  max_row_group_bytes=max_row_group_bytes)
    for kind in job.phases():
        job = job.ready(kind)
        specs = job.plan(kind, **limits)
        write_files(job, specs, num_proc, progress)
        job.finish(kind, specs)
    return job.root


def prepared(config: str, *, num_proc: Optional[int] = None, progress: bool = True, **options):
    """The builder ``load_dataset`` would use (same cache folder), prepared: the first step of every export."""
    from bentxt.registration import builder_for

    builder = builder_for(config, **options)
    with datasets_progress(progress):
        builder.download_and_prepare(num_proc=num_proc)
    return builder


def checked_input(dataset, config, name: Optional[str], min_shards: int, max_shard_bytes: int, **config_kwargs):
    """``(config, name, cache features)`` of an export, after checking the dataset and the options against them."""
    config = resolve_config(config, **config_kwargs)
    name = name or config.name
    if name.startswith(IMAGERY_PREFIX) or name == BROWSE:
        raise ValueError(f"name={name!r}: {BROWSE!r} and names starting with {IMAGERY_PREFIX!r} are the export's own "
                         f"configs; choose another")
    expected = features_for(config, storage="cache")
    for split, part in dataset.items():
        if part.features != expected:
            raise ValueError(
                f"split {split!r} does not have the features of config {config.name!r} "
                f"(layout={config.layout!r}, bands={config.bands!r}); pass the options it was prepared with"
            )
    if min_shards < 1 or max_shard_bytes < 1:
        raise ValueError("min_shards and max_shard_bytes must be positive")
    return config, name, expected


# ----------------------------------------------------------------------------- the job: what is written


@dataclass(frozen=True)
class FileSpec:
    """One file to write: ``kind`` rows ``start:stop`` of a split (imagery: pairs; texts and browse: text rows)."""

    kind: str
    split: str
    path: str
    start: int
    stop: int
    rows_per_group: int


@dataclass(frozen=True)
class ExportJob:
    """Everything a writer needs, for any engine (the prepared splits pickle as references to the cache files)."""

    root: Path
    name: str
    config: BigEarthNetTxtConfig
    splits: Mapping[str, datasets.Dataset]
    images: Tuple[str, ...]
    starts: Mapping[str, np.ndarray]  # per split: each pair's first text row, then the row count
    features: Mapping[str, datasets.Features]  # per kind
    imagery: str  # the imagery config's name
    rewrite: Tuple[str, ...]  # the splits whose imagery is (re)written
    browse: bool
    browse_rows: Mapping[str, str] = field(default_factory=dict)  # per split: the sorted browse rows (Arrow IPC file)
    browse_starts: Mapping[str, np.ndarray] = field(default_factory=dict)
    previews: Mapping[str, Tuple[Tuple[str, ImageryIndex], ...]] = field(default_factory=dict)  # per split
    preview_rows: Mapping[str, np.ndarray] = field(default_factory=dict)  # per split: (imagery, row) per browse pair

    @classmethod
    def create(cls, dataset, output_dir, config, name, min_shards, max_shard_bytes, **config_kwargs) -> "ExportJob":
        config, name, expected = checked_input(dataset, config, name, min_shards, max_shard_bytes, **config_kwargs)
        splits = {split: part for split, part in dataset.items() if part.num_rows}
        images = tuple(k for k, f in expected.items() if isinstance(f, PairBands))
        stream = features_for(config, storage="stream")
        starts = {split: patch_starts(part, PAIR_KEY) for split, part in splits.items()}
        features = {
            "texts": datasets.Features({k: v for k, v in stream.items() if k not in images}),
            "imagery": imagery_features(stream, images),
            "browse": browse_features(stream),
        }
        root = Path(output_dir)
        imagery = imagery_name(config)
        keys = {split: _keys(part, starts[split]) for split, part in splits.items()}
        rewrite = _imagery_to_write(root, imagery, features["imagery"], keys)
        browse = config.layout == "annotation"
        return cls(root, name, config, splits, images, starts, features, imagery, rewrite, browse)

    def phases(self) -> List[str]:
        """What is written, in order: imagery (where needed), texts, then browse (from the texts and previews)."""
        return (["imagery"] if self.rewrite else []) + ["texts"] + (["browse"] if self.browse else [])

    def ready(self, kind: str) -> "ExportJob":
        """The job before writing ``kind``: for browse, its rows (every texts config's texts of the exported splits,
        once by ID, sorted by pair) staged as Arrow IPC files that every writer memory-maps, and where each pair's
        preview is. Sorting holds a split's texts in memory (~0.4 kB per text: ~2 GB for the release's train)."""
        if kind != "browse":
            return self
        fs, root = open_root(str(self.root))
        data, configs, _ = _load_card(self.root)
        names = [c["config_name"] for c in configs]
        texts = [n for n in names if kind_of(n) == "texts"]
        best = {n: i for i, n in enumerate(PREVIEW_PREFERENCE)}
        imagery = sorted((n for n in names if kind_of(n) == "imagery"), key=lambda n: (best.get(n, len(best)), n))
        self.prepare_staging(["browse"])
        rows, starts, previews, refs = {}, {}, {}, {}
        for split in self.splits:
            parts = []
            for name in texts:
                files = config_files(fs, root, name, split)
                if files and "input" in pq.read_schema(files[0]).names:  # annotation layout
                    parts += [pq.read_table(f, columns=[*BROWSE_COLUMNS, "bbox", "point"]) for f in files]
            table = pa.concat_tables(parts)
            _, first = np.unique(table["ID"].to_numpy(), return_index=True)  # a text once, whatever its configs
            table = table.take(pa.array(first)).sort_by([(PAIR_KEY, "ascending"), ("ID", "ascending")])
            path = self.staging("browse") / f".rows-{split}.arrow"
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            rows[split], starts[split] = str(path), pair_starts(table[PAIR_KEY])
            keys = table[PAIR_KEY].take(pa.array(starts[split][:-1])).to_pylist()
            previews[split] = tuple((n, ImageryIndex.load(fs, root, n, split)) for n in imagery)
            refs[split] = _preview_refs(keys, previews[split], split)
        return replace(self, browse_rows=rows, browse_starts=starts, previews=previews, preview_rows=refs)

    def pairs(self, kind: str, split: str) -> Tuple[np.ndarray, List[str]]:
        """``(row of each pair's first row then the count, pair keys)`` of the rows ``kind`` writes for a split."""
        if kind == "browse":
            starts = self.browse_starts[split]
            return starts, _browse_table(self.browse_rows[split])[PAIR_KEY].take(pa.array(starts[:-1])).to_pylist()
        keys = _keys(self.splits[split], self.starts[split])
        return (np.arange(len(keys) + 1, dtype=np.int64) if kind == "imagery" else self.starts[split]), keys

    def write_splits(self, kind: str) -> Tuple[str, ...]:
        return self.rewrite if kind == "imagery" else tuple(self.splits)

    def staging(self, kind: str) -> Path:
        """The hidden folder a kind's files are written to (never matched by the card's globs)."""
        return self.root / DATA_DIR / f".{self.config_name(kind)}.incomplete"

    def config_name(self, kind: str) -> str:
        return {"texts": self.name, "imagery": self.imagery, "browse": BROWSE}[kind]

    def bytes_per_row(self, kind: str, split: str) -> float:
        """Arrow bytes of a written row, for planning: texts without references; pixels + preview per pair."""
        if kind == "imagery":
            return pixel_bytes(self.features["imagery"], self.images) + PREVIEW_BYTES_ESTIMATE + PAIR_COLUMN_BYTES
        part = self.splits[split]
        texts = _arrow_bytes(part.remove_columns(list(self.images)) if self.images else part) / max(part.num_rows, 1)
        return max(texts, 1.0) + (PREVIEW_BYTES_ESTIMATE if kind == "browse" else 0)  # browse: a preview in each row

    def plan(self, kind: str, **limits) -> List[FileSpec]:
        """The local engine's files of a kind: each split balanced by rows at pair boundaries (:func:`plan_shards`)."""
        specs = []
        for split in self.write_splits(kind):
            plan = plan_shards(self.pairs(kind, split)[0], self.bytes_per_row(kind, split), **limits)
            specs += self.specs(kind, split, plan.bounds, plan.rows_per_group)
        return specs

    def specs(self, kind: str, split: str, bounds: Sequence[Tuple[int, int]], rows_per_group: int) -> List[FileSpec]:
        n = len(bounds)
        if n > MAX_FILES_PER_DIRECTORY:
            raise ValueError(f"config {self.config_name(kind)}: {n} files would exceed the Hub's "
                             f"{MAX_FILES_PER_DIRECTORY} files per directory; raise max_shard_bytes")
        return [FileSpec(kind, split, str(self.staging(kind) / shard_name(split, k, n)), int(a), int(b),
                         int(rows_per_group)) for k, (a, b) in enumerate(bounds)]

    def prepare_staging(self, kinds: Sequence[str]) -> None:
        """Empty staging folders (browse keeps the rows :meth:`ready` staged)."""
        for kind in kinds:
            if kind == "browse" and self.browse_rows:
                continue
            shutil.rmtree(self.staging(kind), ignore_errors=True)
            self.staging(kind).mkdir(parents=True)

    def finish(self, kind: str, specs: Sequence[FileSpec]) -> None:
        """Check that every planned file of ``kind`` is staged, keep the target's files of splits this export does not
        write (imagery, browse), swap the folder in, update the card."""
        staging, target = self.staging(kind), self.root / DATA_DIR / self.config_name(kind)
        planned = [Path(s.path).name for s in specs if s.kind == kind]
        missing = [p for p in planned if not (staging / p).exists()]
        if missing:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"the export is missing {len(missing)} written file(s) of {self.config_name(kind)}, "
                               f"e.g. {missing[:3]}: on a cluster, output_dir must be on storage every node shares")
        for temporary in staging.glob(".rows-*.arrow"):
            temporary.unlink()
        if kind != "texts" and target.is_dir():
            for old in target.glob("*.parquet"):
                match = SPLIT_FILE.match(old.name)
                if match and match["split"] not in self.write_splits(kind):
                    _link(old, staging / old.name)
        _swap(staging, target)
        update_card(self.root, self.config_name(kind), _info_from_files(target, self.features[kind]))


def _keys(part: datasets.Dataset, starts: np.ndarray) -> List[str]:
    """The pairs of a prepared split in its order (``patch_id`` of each pair's first row)."""
    column = part.with_format("arrow", columns=[PAIR_KEY])[:][PAIR_KEY]
    return column.take(pa.array(starts[:-1])).to_pylist()


def _imagery_to_write(root: Path, imagery: str, features: datasets.Features,
                      keys: Mapping[str, List[str]]) -> Tuple[str, ...]:
    """The splits whose imagery must be written: none where the folder's imagery holds the pairs in the same order,
    a split it lacks or whose pairs it holds only some of (in the same order); anything else is an error."""
    fs, inner = open_root(str(root))
    files = config_files(fs, inner, imagery)
    if files:
        with fs.open(files[0], "rb") as f:
            found = datasets.Features.from_arrow_schema(pq.read_schema(f))
        if found != features:
            raise ValueError(f"{root}/{DATA_DIR}/{imagery} holds other columns than this config writes (an export of "
                             f"another version?): remove that folder, or export into a new folder")
    rewrite = []
    for split, new in keys.items():
        old = list(ImageryIndex.load(fs, inner, imagery, split).keys) if files else []
        if old and _subsequence(new, old):
            continue
        if not _subsequence(old, new):
            raise ValueError(
                f"{imagery} ({split}) in {root} holds pairs this config lacks, and lacks some of its pairs (or lists "
                f"them in another order): export the config with all the pairs first (e.g. the -all task), or export "
                f"into another folder")
        rewrite.append(split)
    return tuple(rewrite)


def _preview_refs(keys: Sequence[str], sources: Sequence[Tuple[str, ImageryIndex]], split: str) -> np.ndarray:
    """``(imagery source, row)`` of each browse pair: the first source (best picture) that holds it."""
    refs = np.full((len(keys), 2), -1, dtype=np.int64)
    for s, (name, index) in enumerate(sources):
        position = {k: i for i, k in enumerate(index.keys)}
        for j, key in enumerate(keys):
            if refs[j, 0] < 0 and key in position:
                refs[j] = (s, position[key])
    if len(keys) and (refs[:, 0] < 0).any():
        missing = keys[int(np.flatnonzero(refs[:, 0] < 0)[0])]
        raise ValueError(f"pair {missing} ({split}) has texts in this export but no imagery config holds it")
    return refs


def _browse_table(path: str) -> pa.Table:
    """The staged browse rows of a split, memory-mapped (every writer process reads the same pages)."""
    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all()


def _subsequence(small: Sequence[str], big: Sequence[str]) -> bool:
    position = {k: i for i, k in enumerate(big)}
    found = [position.get(k, -1) for k in small]
    return all(i >= 0 for i in found) and all(a < b for a, b in zip(found, found[1:]))


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy of the bytes), or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _swap(staging: Path, target: Path) -> None:
    """Replace ``target`` by the complete ``staging`` folder (a re-export leaves no shard of an old count behind)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _info_from_files(folder: Path, features: datasets.Features) -> datasets.DatasetInfo:
    """Split infos from the files themselves (rows per file, uncompressed bytes): right for kept files too."""
    splits: Dict[str, List[Tuple[int, int]]] = {}
    for path in sorted(folder.glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        match = SPLIT_FILE.match(path.name)
        assert match is not None  # the export's parquet files are all shards named by shard_name
        splits.setdefault(match["split"], []).append((meta.num_rows, size))
    ordered = [s for s in ann.SPLITS if s in splits] + [s for s in splits if s not in ann.SPLITS]
    infos = [datasets.SplitInfo(name=s, num_bytes=sum(b for _, b in splits[s]), shard_lengths=[n for n, _ in splits[s]],
                                num_examples=sum(n for n, _ in splits[s])) for s in ordered]
    return datasets.DatasetInfo(
        features=features, splits=datasets.SplitDict({s.name: s for s in infos}),
        download_size=sum(f.stat().st_size for f in folder.glob("*.parquet")),
        dataset_size=sum(s.num_bytes for s in infos),
    )


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """Where a split is cut: row ranges per file, rows per row group."""

    bounds: Tuple[Tuple[int, int], ...]
    rows_per_group: int
    bytes_per_row: float


def patch_starts(part: datasets.Dataset, key_column: str) -> np.ndarray:
    """Row index of each pair's first row, then the row count; rows of a pair must be contiguous."""
    keys = part.with_format("arrow", columns=[key_column])[:][key_column].combine_chunks()
    starts = pair_starts(keys)
    if len(keys) and len(set(keys.to_pylist())) != len(starts) - 1:
        raise ValueError(f"the rows of a {key_column} are not contiguous: the split cannot be cut at patch boundaries")
    return starts


def plan_shards(
    starts: np.ndarray,
    bytes_per_row: float,
    min_shards: int = 4,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
) -> ShardPlan:
    """Cut rows into files of whole pairs (``starts``: each pair's first row, then the count), balanced by rows.

    ``bytes_per_row`` (Arrow bytes of a written row) sets the file count (``max_shard_bytes``) and the rows per row
    group (``max_row_group_bytes``, unless ``rows_per_group`` is given).
    """
    n_rows, n_patches = int(starts[-1]), len(starts) - 1
    if bytes_per_row <= 0:
        raise ValueError(f"bytes_per_row={bytes_per_row} must be positive")
    n_files = max(math.ceil(n_rows * bytes_per_row / max_shard_bytes), min_shards)
    n_files = max(1, min(math.ceil(n_files / min_shards) * min_shards, n_patches))  # a multiple of min_shards if possible
    cuts = [0]
    for k in range(1, n_files):
        target = k * n_rows / n_files
        j = int(np.searchsorted(starts, target))
        if j > 0 and target - starts[j - 1] <= starts[j] - target:
            j -= 1
        cuts.append(min(max(j, cuts[-1] + 1), n_patches - (n_files - k)))  # non-empty files, in order
    cuts.append(n_patches)
    bounds = tuple((int(starts[a]), int(starts[b])) for a, b in zip(cuts[:-1], cuts[1:]))
    if rows_per_group is None:
        rows_per_group = max(1, int(max_row_group_bytes // bytes_per_row))
    return ShardPlan(bounds, int(rows_per_group), float(bytes_per_row))


def _arrow_bytes(part: datasets.Dataset) -> float:
    """In-memory bytes of a split's rows (pro rata when an indices mapping selects part of the table)."""
    return part.data.nbytes * part.num_rows / max(part.data.num_rows, 1)


# ----------------------------------------------------------------------------- writing (every engine)


def write_files(job: ExportJob, specs: Sequence[FileSpec], num_proc: Optional[int], progress: bool) -> None:
    """Write every file on this machine, in ``num_proc`` processes when > 1 (files are independent).

    Workers are forked where the platform can (like ``datasets``' ``num_proc``; Arrow re-creates its thread pools
    after a fork), so callers need no ``if __name__ == "__main__"`` guard. Staging folders are removed on failure.
    """
    kinds = sorted({s.kind for s in specs})
    job.prepare_staging(kinds)
    try:
        with tqdm(total=len(specs), desc=f"export {job.name} ({', '.join(kinds)})", unit="files",
                  disable=not progress) as bar:
            if not num_proc or num_proc <= 1 or len(specs) <= 1:
                for spec in specs:
                    write_file(job, spec)
                    bar.update(1)
                return
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ProcessPoolExecutor(min(num_proc, len(specs)), mp_context=context) as pool:
                for future in as_completed([pool.submit(write_file, job, spec) for spec in specs]):
                    future.result()
                    bar.update(1)
    except BaseException:
        for kind in kinds:
            shutil.rmtree(job.staging(kind), ignore_errors=True)
        raise


def write_file(job: ExportJob, spec: FileSpec) -> str:
    """Write one planned file, a row group at a time (pixels decoded once per pair); returns its path."""
    features = job.features[spec.kind]
    part = job.splits[spec.split]
    texts = (part.remove_columns(list(job.images)) if job.images else part).with_format("arrow")
    if spec.kind == "browse":
        texts = _browse_table(job.browse_rows[spec.split])
    meta = {"kind": "texts", "imagery": job.imagery, "config": job.name} if spec.kind == "texts" else None
    with parquet_writer(features, Path(spec.path), meta, compress_images=spec.kind == "browse") as writer:
        for a in range(spec.start, spec.stop, spec.rows_per_group):
            b = min(a + spec.rows_per_group, spec.stop)
            if spec.kind == "texts":
                table = texts[a:b]
            elif spec.kind == "imagery":
                table = _imagery_rows(job, spec.split, texts, a, b)
            else:
                table = _browse_rows(job, spec.split, texts, a, b)
            writer.write_table(table.select(list(features)).cast(writer.schema))
    return spec.path


def _png_column(pngs: Sequence[bytes]) -> pa.StructArray:
    return pa.StructArray.from_arrays([pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())],
                                      names=["bytes", "path"])


def _imagery_rows(job: ExportJob, split: str, texts: datasets.Dataset, a: int, b: int) -> pa.Table:
    """Pairs ``a:b`` of a split: a preview, the pair columns (from each pair's first text row), the band arrays."""
    first = job.starts[split][a:b].tolist()
    table = texts.select(first)[:].select(list(ann.PATCH_COLUMNS))
    images = list(job.images)
    pixels = job.splits[split].select(first).with_format("numpy", columns=images)[:] if images else {}
    features = job.features["imagery"]
    for k in images:
        table = table.append_column(pa.field(k, features[k]()), array3d(pixels[k], features[k]))
    sensor = preview.preview_sensor(job.config.sensors)
    pngs = [preview.to_png(preview.base_quicklook({k: pixels[k][i] for k in images}, sensor, job.config.image_bands,
                                                 scale=1))
            for i in range(b - a)]
    return table.add_column(0, pa.field(PREVIEW, _png_column(pngs).type), _png_column(pngs))


def _browse_rows(job: ExportJob, split: str, rows: pa.Table, a: int, b: int) -> pa.Table:
    """Browse rows ``a:b`` with their pair's preview bytes read from an imagery config (not re-encoded); grounding rows
    of small splits get a copy enlarged with their box/point drawn (one PNG each)."""
    starts = job.browse_starts[split]
    p0, p1 = int(np.searchsorted(starts, a, side="right")) - 1, int(np.searchsorted(starts, b, side="left"))
    counts = np.minimum(starts[p0 + 1 : p1 + 1], b) - np.maximum(starts[p0:p1], a)  # rows of each pair in a:b
    fs, _ = open_root(str(job.root))
    refs = job.preview_rows[split][p0:p1]
    pngs: List[bytes] = [b""] * len(refs)
    for s, (_, index) in enumerate(job.previews[split]):
        mine = np.flatnonzero(refs[:, 0] == s)
        if len(mine):
            got = index.read(fs, refs[mine, 1], [PREVIEW])[PREVIEW].combine_chunks().field("bytes").to_pylist()
            for j, png in zip(mine, got):
                pngs[j] = png
    per_row = [png for png, n in zip(pngs, counts) for _ in range(int(n))]
    table = rows.slice(a, b - a)
    if starts[-1] <= BROWSE_MARK_MAX_ROWS:
        for i, (box, point) in enumerate(zip(table["bbox"].to_pylist(), table["point"].to_pylist())):
            if preview.mark(box) is not None or preview.mark(point) is not None:
                base = preview.enlarge(Image.open(io.BytesIO(per_row[i])).convert("RGB"))
                per_row[i] = preview.to_png(preview.annotate(base, box, point))
    column = _png_column(per_row)
    return table.select(list(BROWSE_COLUMNS)).add_column(0, pa.field(PREVIEW, column.type), column)


@contextlib.contextmanager
def parquet_writer(features: datasets.Features, path: Path, meta: Optional[dict] = None,
                   compress_images: bool = False) -> Iterator[pq.ParquetWriter]:
    """``Dataset.to_parquet``'s file, with zstd instead of snappy; one row group per write.

    Kept from ``datasets``: the ``huggingface`` schema metadata (restores ``Array3D`` and ``Image``), the page index,
    content-defined chunking (Xet dedup on the Hub). Changed: zstd (smaller and faster to decode than snappy on band
    arrays and texts), and for ``compress_images`` (browse rows: ~20 consecutive copies of a pair's preview) zstd on
    the PNG bytes too, which stores the repeats about once. ``meta`` goes into the ``bentxt`` key-value metadata.
    """
    schema = features.arrow_schema
    if meta is not None:
        schema = schema.with_metadata({**(schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    options = get_parquet_column_options(features, schema)
    options["compression"] = {leaf: "none" if c == "none" and not compress_images else "zstd"
                              for leaf, c in options["compression"].items()}
    cdc = datasets.config.DEFAULT_CDC_OPTIONS
    with pq.ParquetWriter(str(path), schema, use_content_defined_chunking=cdc, write_page_index=True, **options) as writer:
        yield writer
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})


def row_group_sizes(path: Union[str, Path]) -> List[Tuple[int, int]]:
    """(rows, uncompressed bytes) per row group: what a viewer scan reads."""
    meta = pq.ParquetFile(path).metadata
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


@contextlib.contextmanager
def datasets_progress(enabled: bool) -> Iterator[None]:
    """Turn the ``datasets`` progress bars off for a block (and back on only if they were on)."""
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    if not enabled and was_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- reading


def iter_examples(root: Union[str, Path], name: str, split: str, batch_size: int = 256,
                  **load_kwargs) -> Iterator[Dict[str, object]]:
    """Per-text examples of an export with their pair's arrays, streamed: the builder's streamed examples.

    The texts config's pairs are a subsequence of its imagery config's, in the same order, so one forward pass over
    each suffices (no index; memory of one batch of each). Arrays are numpy in their dtype; other values as the
    builder streams them (``bbox``/``point`` NaN-filled where a row has none). ``load_kwargs`` go to
    ``load_dataset`` (e.g. ``cache_dir``, ``token``).
    """
    fs, inner = open_root(export_url(root), load_kwargs.get("storage_options"))
    imagery = imagery_of(fs, inner, name)
    texts = datasets.load_dataset(str(root), name, split=split, streaming=True, **load_kwargs)
    pairs = datasets.load_dataset(str(root), imagery, split=split, streaming=True, **load_kwargs)
    images = list(array_columns(pairs.features))
    pair_batches = numpy_batches(pairs, batch_size, columns=[PAIR_KEY, *images])
    current, pixels, block, i = None, {}, None, 0
    for batch in texts.with_format("arrow").iter(batch_size=batch_size):
        for row in batch.to_pylist():
            while current != row[PAIR_KEY]:  # skip the imagery's pairs this config does not have
                if block is None or i == len(block[PAIR_KEY]):
                    block, i = next(pair_batches, None), 0
                    if block is None:
                        raise ValueError(f"export {root}: pair {row[PAIR_KEY]} of config {name} ({split}) is not in "
                                         f"{imagery}, or not in the same order")
                current, pixels, i = block[PAIR_KEY][i], {k: block[k][i] for k in images}, i + 1
            yield {**row, **pixels}


def numpy_batches(
    dataset: Union[datasets.Dataset, datasets.IterableDataset],
    batch_size: int = 64,
    columns: Optional[Sequence[str]] = None,
) -> Iterator[Dict[str, Any]]:
    """Batches of an export (map-style or streaming): ``Array3D`` columns as (B, C, H, W) arrays in their dtype.

    Streaming Parquet in the default python format turns every array into
    nested lists (~35x slower, docs/datasets-notes.md#numpy-format), and the numpy
    format of an ``IterableDataset`` casts uint16 to int64; Arrow batches
    flattened into numpy are zero-copy and exact. Other columns are lists.
    """
    features = dataset.features
    names = list(columns) if columns is not None else list(features)
    if columns is not None:
        dataset = dataset.select_columns(names)
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        batch: Dict[str, Any] = {}
        for name in names:
            feature = features[name]
            if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)):
                batch[name] = array3d_values(table[name], feature.shape).astype(feature.dtype, copy=False)
            else:
                batch[name] = table[name].to_pylist()
        yield batch


def push_to_hub(
    output_dir: Union[str, Path],
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: bool = False,
    commit_message: Optional[str] = None,
) -> str:
    """Upload an export folder to a dataset repo, as it is; returns the repo URL.

    Only the card and the Parquet files of the configs the card lists are
    sent; remote shards of those configs that the folder no longer has (an
    older shard count) are deleted in the same commit, other configs' files
    are left alone.
    """
    root = Path(output_dir)
    card = root / CARD
    if not card.exists():
        raise FileNotFoundError(f"{card} is missing: run export() into {root} first")
    configs = [c["config_name"] for c in DatasetCard.load(card).data.to_dict().get("configs") or []]
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    shards = [f"{DATA_DIR}/{c}/*.parquet" for c in configs]
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(root),
        allow_patterns=[CARD, *shards],
        delete_patterns=shards,
        commit_message=commit_message or f"Upload BigEarthNet.txt export ({', '.join(configs)})",
    )
    return str(getattr(repo, "url", None) or f"https://huggingface.co/datasets/{repo_id}")


# ----------------------------------------------------------------------------- dataset card


def _load_card(root: Path) -> Tuple[dict, List[dict], List[dict]]:
    path = root / CARD
    data = DatasetCard.load(path).data.to_dict() if path.exists() else {}
    infos = data.get("dataset_info") or []
    infos = infos if isinstance(infos, list) else [infos]
    return data, [dict(c) for c in data.get("configs") or []], [dict(i) for i in infos]


def update_card(root: Path, name: str, info: datasets.DatasetInfo) -> None:
    """Add or replace one config in the card's YAML, keeping the others; regenerate the text."""
    data, configs, infos = _load_card(root)
    entry = {"config_name": name, "data_files": [{"split": s, "path": f"{DATA_DIR}/{name}/{s}-*"} for s in info.splits]}
    old = next((c for c in configs if c["config_name"] == name), None)
    if old is not None:
        configs[configs.index(old)] = entry
    else:
        configs.append(entry)
    infos = [i for i in infos if i.get("config_name", "default") != name]
    infos.append(_card_info(name, info))
    _save_card(root, data, configs, infos)


def _card_info(name: str, info: datasets.DatasetInfo) -> dict:
    """One config's ``dataset_info`` entry of the card, in the Hub's YAML spelling (datasets' own public writer)."""
    card_data = DatasetCardData()
    DatasetInfosDict({name: info}).to_dataset_card_data(card_data)
    return dict(card_data["dataset_info"])


def remove_config(root: Union[str, Path], name: str) -> None:
    """Remove a config's files and its card entry (nothing happens if it is not there)."""
    root = Path(root)
    shutil.rmtree(root / DATA_DIR / name, ignore_errors=True)
    if not (root / CARD).exists():
        return
    data, configs, infos = _load_card(root)
    _save_card(root, data, [c for c in configs if c["config_name"] != name],
               [i for i in infos if i.get("config_name") != name])


def kind_of(name: str) -> str:
    """``browse``, ``imagery`` or ``texts``, from a config's name."""
    return "browse" if name == BROWSE else "imagery" if name.startswith(IMAGERY_PREFIX) else "texts"


def _save_card(root: Path, data: dict, configs: List[dict], infos: List[dict]) -> None:
    """Write the card: configs in the order browse, texts, imagery; exactly one default (``browse`` when there is
    one, else the first texts config; set up front, which avoids ``push_to_hub``'s ``KeyError: 'default'`` on a
    lone config without the key, docs/datasets-notes.md#hub-layout); infos in the configs' order; the text."""
    order = {"browse": 0, "texts": 1, "imagery": 2}
    configs = sorted(configs, key=lambda c: order[kind_of(c["config_name"])])  # stable: export order within a kind
    for c in configs:
        c.pop("default", None)
    if configs:
        configs[0]["default"] = True
    by_name = {i.get("config_name", "default"): i for i in infos}
    ordered_infos = [by_name[c["config_name"]] for c in configs if c["config_name"] in by_name]
    data = dict(data)
    data.update(
        license=metadata.LICENSE,  # the Hub's licence id, cdla-permissive-1.0
        pretty_name="BigEarthNet.txt",
        task_categories=data.get("task_categories") or [
            "image-to-text", "visual-question-answering", "zero-shot-object-detection",
        ],
        tags=data.get("tags") or ["remote-sensing", "earth-observation", "sentinel-1", "sentinel-2", "multispectral", "sar"],
        configs=configs,
        dataset_info=ordered_infos,
    )
    card_data = DatasetCardData(**data)
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_text(configs, ordered_infos)}").save(root / CARD)


def _what(info: Mapping) -> str:
    name = info.get("config_name", "")
    names = {f.get("name") for f in info.get("features") or []}
    if kind_of(name) == "browse":
        return "every text beside its pair's quicklook (for the viewer)"
    if kind_of(name) == "imagery":
        return "image pairs: preview + exact bands, shared by the texts configs of its sensors"
    return "image pairs' texts (patch layout), no pixels" if "annotations" in names else "texts, no pixels"


def card_text(configs: Sequence[dict], infos: Sequence[dict]) -> str:
    """The card's Markdown: what is here, how to load and join it, how the files are cut, licence, citation."""
    names = [c["config_name"] for c in configs]
    texts = [n for n in names if kind_of(n) == "texts"] or ["<config>"]
    imagery = [n for n in names if kind_of(n) == "imagery"] or ["imagery-s2"]
    rows = []
    for i in infos:
        splits = ", ".join(f"{s['name']} {s['num_examples']:,}" for s in i.get("splits") or [])
        rows.append(f"| `{i['config_name']}` | {_what(i)} | {splits} | {i.get('download_size', 0) / 1e6:,.1f} MB |")
    table = "\n".join(["| config | rows | rows per split | Parquet size |", "|---|---|---|---|", *rows])
    many = ""
    if len(names) > VIEWER_MAX_CONFIGS:
        many = (f"\n\nThis repository has {len(names)} configs, more than the {VIEWER_MAX_CONFIGS} the dataset viewer "
                f"starts on fast: open `{BROWSE}` (pictures with texts), then the texts config you need.")
    return f"""# BigEarthNet.txt (Parquet export)

{metadata.DESCRIPTION}

This repository holds configs of the `bigearthnet_txt` builder written as Parquet, so that `datasets` and the dataset
viewer read them with no custom code. About 20 texts share one image pair, so pixels are kept apart from the texts:

- `{BROWSE}` (the default, for looking): every text of the texts configs below once, with `input`, `output` and a
  `preview` image of its pair (S2 true colour, else S1 VV/VH/VV-VH false colour, 2-98 % stretch per channel), sorted
  by pair; on grounding rows of small splits (`bench`) the answer box (magenta) or point (cyan) is drawn.
- one config per exported task (e.g. `{texts[0]}`): the texts, no pixels; rows of a pair are consecutive.
- `imagery-<sensors>` (e.g. `{imagery[0]}`): one row per image pair, the bands as `Array3D` with the exact native
  values (S2 `uint16` reflectance x 10,000 at 10/20/60 m, S1 `float32` backscatter in dB), shared by every texts
  config of those sensors: each pair's pixels are stored once. A texts config lists its pairs in the order of its
  imagery config; join them on `patch_id`.

Rows without a box, point or options hold NaN-filled `bbox`/`point` and empty `options` strings, never nulls.
Project page: {metadata.HOMEPAGE}.{many}

{table}

## Usage

```python
from datasets import load_dataset

REPO = "<this repo id or the export folder>"
texts = load_dataset(REPO, "{texts[0]}", split="test")                      # one row per text, no pixels
pairs = load_dataset(REPO, "{imagery[0]}", split="test").with_format("numpy", dtype=None)  # uint16 kept
row_of = {{p: i for i, p in enumerate(pairs["patch_id"])}}
example = texts[0]
bands = pairs[row_of[example["patch_id"]]]   # the text's pair: s2_10m (4, 120, 120) uint16, ...

# per-text examples with their arrays, streamed in one pass (pip install bigearthnet-txt)
from bentxt.export.writer import iter_examples
for example in iter_examples(REPO, "{texts[0]}", "test"):
    ...

# several GPUs / DataLoader workers: each rank or worker gets whole files
from datasets.distributed import split_dataset_by_node
part = split_dataset_by_node(load_dataset(REPO, "{texts[0]}", split="train", streaming=True), rank=0, world_size=4)
```

## Files

`data/<config>/<split>-NNNNN-of-MMMMM.parquet`, separate files per split (streaming `bench` reads only the bench
files). A pair's rows never span two files. A split has at least `min_shards` files (4 by default) when it has that many pairs, \
and a multiple of it where possible, so
`split_dataset_by_node` and DataLoader workers get whole files. Files hold at most {MAX_SHARD_BYTES / 1e6:.0f} MB of
Arrow data and row groups at most {MAX_ROW_GROUP_BYTES / 1e6:.0f} MB (streaming memory grows with the row group), well
inside the dataset viewer's {VIEWER_MAX_ROW_GROUP_BYTES / 1e6:.0f} MB per `/rows` scan. Every column chunk has an
offset index, and the `huggingface` schema metadata restores `Array3D` and `Image`. Columns are zstd-compressed;
imagery PNG bytes are stored as they are.

## License

The data is released under the Community Data License Agreement – Permissive, Version 1.0
(CDLA-Permissive-1.0), like BigEarthNet v2.0 and BigEarthNet.txt. The quicklooks are derived from the same bands.

## Citation

```bibtex
{{citation}}
```
""".replace("{citation}", metadata.CITATION.strip())


__all__ = ["export", "export_dataset", "iter_examples", "numpy_batches", "push_to_hub", "ExportJob", "FileSpec",
           "write_file", "write_files", "plan_shards", "imagery_name", "BROWSE", "PREVIEW"]
