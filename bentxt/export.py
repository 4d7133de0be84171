"""Packed Parquet export: a dataset folder the Hub and ``load_dataset`` read without our code.

    from bentxt.export import export, iter_examples, push_to_hub
    root = export("s1s2-vqa", "out/", data_dir="raw/")        # prepare, write Parquet + README
    export("s2-grounding", "out/", data_dir="raw/")           # a second config, merged into the same card
    for example in iter_examples(root, "s1s2-vqa", "test"):   # per-text examples with their arrays
        ...
    push_to_hub(root, "org/BigEarthNet.txt")

Each exported config is written as two Hub configs, so that no pixel is
stored once per text (~20 texts share an image pair: 20 copies would make the
full ``s1s2-vqa`` several TB):

- ``<name>``: the texts, one row per text (per pair with ``layout="patch"``),
  the builder's columns without the image columns;
- ``<name>-imagery``: one row per image pair, the 8 pair columns (``patch_id``,
  ``s1_name``, ``split``, location, season, climate zone), a ``preview``
  picture first, then the band columns as ``Array3D`` with the exact native
  values (or the resampled ``image`` for ``bands=``).

Both list the pairs in the same order (the builder's), split by split, and both
are cut at pair boundaries: :func:`iter_examples` merge-joins them in one pass
into exactly the builder's streamed examples. ``inline_pixels=True`` writes the
old single config instead (bands and a preview with the row's box/point in
every text row): only for small configs (``bench``) whose viewer page should
show each text beside its picture.

Layout: ``<out>/README.md`` (YAML ``configs:`` + ``dataset_info``) and
``<out>/data/<config>/<split>-NNNNN-of-MMMMM.parquet``. The Parquet builder of
``datasets`` reads it locally (``load_dataset(out, config)``) and on the Hub,
with ``streaming=True`` too, and restores ``Array3D`` and ``Image`` from the
``huggingface`` schema metadata.

Why the sizes are what they are (sources: hf-datasets-notes section 5 and
huggingface/dataset-viewer ``chart/env/prod.yaml``,
``services/worker/src/worker/config.py``,
``services/worker/src/worker/job_runners/config/parquet_and_info.py``):

- The viewer copies a Parquet repo as is only if the first row group of each
  of the first files is at most ``maxRowGroupByteSizeForCopy`` (uncompressed,
  300 MB in prod, 100 MB default), and ``/rows`` refuses scans above
  ``rowsIndex.maxArrowDataInMemory`` = 300 MB; pages are pruned with the page
  index. Row groups here hold at most ``MAX_ROW_GROUP_BYTES`` = 16 MB of Arrow
  data (streaming memory sets that, see the constant), every column chunk has
  an offset index (page locations; a column index too where values have a
  min/max), and each written file is checked against the 300 MB. A
  file is written one row group at a time, so writing needs memory for one
  row group, not one file.
- Shards hold at most ``MAX_SHARD_BYTES`` = 500 MB (``push_to_hub``'s
  default ``max_shard_size``), and a config directory at most 10,000 files
  (the Hub's per-directory limit).
- A pair's rows never span two files, and each split has at least
  ``min_shards`` files when it has that many pairs, rounded up to a multiple
  of ``min_shards``: ``split_dataset_by_node`` then hands whole files to ranks
  (world sizes dividing the count), and DataLoader workers each get files.
- The ``preview`` column is an ``Image`` (a PNG per image pair): the viewer
  shows thumbnails instead of truncated number lists (notes section 4).
- first-rows (200 kB per response, cells over 100 B truncated) needs nothing:
  images are served as URLs, arrays are truncated cells either way.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.arrow_writer import get_parquet_column_options
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from tqdm.auto import tqdm

from . import annotations as ann
from . import metadata, preview
from .config import features_for, resolve_config
from .imagery_table import PairBands, array3d, array3d_values

logger = logging.getLogger("bigearthnet_txt")

# ----------------------------------------------------------------------------- limits

#: Arrow bytes per row group. The viewer would take up to 100 MB (its default copy limit, also the
#: datasets default), but streaming reads a whole row group and the Parquet reader needs several
#: times its size while decoding nested lists (measured on s1s2 rows: ~600 MB of Arrow pool for
#: 100 MB groups, ~110 MB for 10 MB groups), so groups are kept small.
MAX_ROW_GROUP_BYTES = 16_000_000
#: above this, the viewer reconverts (first row group, uncompressed) or refuses a /rows scan
VIEWER_MAX_ROW_GROUP_BYTES = 300_000_000
#: Arrow bytes per Parquet file: push_to_hub's default max_shard_size
MAX_SHARD_BYTES = 500_000_000
#: files per directory on the Hub
MAX_FILES_PER_DIRECTORY = 10_000
#: bytes a preview PNG adds to a row, for planning before any is drawn (measured 20-25 kB on noise, less on scenes)
PREVIEW_BYTES_ESTIMATE = 25_000
#: Arrow bytes of a pair's 8 pair columns in the ``-imagery`` config, for planning
PAIR_COLUMN_BYTES = 300

PREVIEW = "preview"
DATA_DIR = "data"
CARD = "README.md"


# ----------------------------------------------------------------------------- API

#: the pairs' config beside a texts config: ``<name>-imagery``
IMAGERY_SUFFIX = "-imagery"


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
    """Prepare ``config`` (the same cache as ``load_dataset``), then write it as an export into ``output_dir``.

    ``data_dir``/``data_files`` default to the release. ``config_kwargs`` (e.g.
    ``layout="patch"``, ``countries=[...]``) go to the builder; pass ``name``
    to store such a variant under its own config name. Writes ``<name>`` and
    ``<name>-imagery`` (see :func:`export_dataset`). Returns the folder.
    """
    builder = prepared(config, data_dir=data_dir, data_files=data_files, cache_dir=cache_dir, num_proc=num_proc,
                       progress=progress, **config_kwargs)
    return export_dataset(
        builder.as_dataset(),
        output_dir,
        builder.config,
        name=name,
        min_shards=min_shards,
        max_shard_bytes=max_shard_bytes,
        rows_per_group=rows_per_group,
        inline_pixels=inline_pixels,
        num_proc=num_proc,
        progress=progress,
    )


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
    """Write an already prepared ``DatasetDict`` of a config (a ``BigEarthNetTxtConfig`` or its name).

    Two configs are written: ``<name>`` holds the texts (one row per text, or
    per pair with ``layout="patch"``) without pixels, and ``<name>-imagery``
    one row per image pair with its bands (``Array3D``) and a ``preview``
    picture, so pixels are stored once per pair here too. Both list the pairs
    in the same order; join them on ``patch_id`` (a pair's ``s1_name`` is as
    unique), or read them joined with :func:`iter_examples`.

    ``inline_pixels=True`` instead writes the bands and a preview (with the
    row's box/point drawn) into every text row of ``<name>``, ~20 copies per
    pair, and removes a ``<name>-imagery`` left by an earlier export: only for
    small configs, e.g. ``bench``, where the viewer should show each text
    beside its picture.
    """
    config, name, expected = checked_input(dataset, config, name, min_shards, max_shard_bytes, **config_kwargs)
    splits = {split: part for split, part in dataset.items() if part.num_rows}
    root = Path(output_dir)
    images = [k for k, f in expected.items() if isinstance(f, PairBands)]
    stream = features_for(config, storage="stream")
    pixels = _array_bytes(stream, images)
    plan = dict(min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                max_row_group_bytes=max_row_group_bytes)

    starts = {split: patch_starts(part, config.key_column) for split, part in splits.items()}
    if inline_pixels:
        features = export_features(stream)
        extra = pixels + PREVIEW_BYTES_ESTIMATE
    else:
        features = datasets.Features({k: v for k, v in stream.items() if k not in images})
        extra = 0
    texts_plans = {
        split: plan_shards(starts[split], _text_bytes(part, images) + extra, **plan) for split, part in splits.items()
    }
    _write_config(root, name, splits, texts_plans, features, config, "inline" if inline_pixels else "texts",
                  num_proc, progress)
    if inline_pixels:
        remove_config(root, name + IMAGERY_SUFFIX)
        return root
    pair_features = imagery_features(stream, images)
    pair_plans = {
        split: plan_shards(np.arange(len(starts[split]), dtype=np.int64), pixels + PREVIEW_BYTES_ESTIMATE + PAIR_COLUMN_BYTES,
                           row_starts=starts[split], **plan)
        for split in splits
    }
    _write_config(root, name + IMAGERY_SUFFIX, splits, pair_plans, pair_features, config, "imagery", num_proc, progress)
    return root


def prepared(config: str, *, num_proc: Optional[int] = None, progress: bool = True, **options):
    """The builder ``load_dataset`` would use (same cache folder), prepared: the first step of every export."""
    from .registration import builder_for

    builder = builder_for(config, **options)
    with datasets_progress(progress):
        builder.download_and_prepare(num_proc=num_proc)
    return builder


def checked_input(dataset, config, name: Optional[str], min_shards: int, max_shard_bytes: int, **config_kwargs):
    """``(config, name, cache features)`` of an export, after checking the dataset and the options against them."""
    config = resolve_config(config, **config_kwargs)
    name = name or config.name
    if name.endswith(IMAGERY_SUFFIX):
        raise ValueError(f"name={name!r}: names ending in {IMAGERY_SUFFIX!r} are the image pairs' configs; choose another")
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


def imagery_features(stream: datasets.Features, images: Sequence[str]) -> datasets.Features:
    """The ``-imagery`` config's columns: ``preview``, the pair columns, the band columns (``Array3D``)."""
    return export_features(datasets.Features({**{c: stream[c] for c in ann.PATCH_COLUMNS}, **{k: stream[k] for k in images}}))


def _array_bytes(features: datasets.Features, images: Sequence[str]) -> int:
    """Bytes of one pair's arrays as written (the streamed ``Array3D`` shapes: ``image`` for ``bands=``)."""
    return sum(int(np.prod(features[k].shape)) * np.dtype(features[k].dtype).itemsize for k in images)


def _text_bytes(part: datasets.Dataset, images: Sequence[str]) -> float:
    """Arrow bytes per row of the stored columns without the image references."""
    texts = part.remove_columns(list(images)) if images else part
    return max(_arrow_bytes(texts) / max(part.num_rows, 1), 1.0)


def _write_config(root: Path, name: str, splits: Mapping[str, datasets.Dataset], plans: Mapping[str, "ShardPlan"],
                  features: datasets.Features, config, kind: str, num_proc: Optional[int], progress: bool) -> None:
    """Write one Hub config's files into a hidden staging folder, swap it in, update the card."""
    n_files = sum(len(p.bounds) for p in plans.values())
    if n_files > MAX_FILES_PER_DIRECTORY:
        raise ValueError(
            f"config {name}: {n_files} files would exceed the Hub's {MAX_FILES_PER_DIRECTORY} files per directory; "
            f"raise max_shard_bytes"
        )
    staging = root / DATA_DIR / f".{name}.incomplete"  # hidden: never matched by the card's globs
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tasks = {split: shard_tasks(part, split, plans[split], staging, features, config, kind)
                 for split, part in splits.items()}
        sizes = write_shards([t for ts in tasks.values() for t in ts], num_proc, progress, f"{name} ({', '.join(splits)})")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    split_infos, k = [], 0
    for split in splits:
        n = len(tasks[split])
        lengths = [int(b - a) for a, b in plans[split].bounds]
        split_infos.append(datasets.SplitInfo(name=split, num_bytes=sum(sizes[k : k + n]), num_examples=sum(lengths),
                                              shard_lengths=lengths))
        k += n
    target = root / DATA_DIR / name
    shutil.rmtree(target, ignore_errors=True)  # a re-export must not leave shards of the old shard count behind
    staging.rename(target)
    info = datasets.DatasetInfo(
        features=features,
        splits=datasets.SplitDict({s.name: s for s in split_infos}),
        download_size=sum(f.stat().st_size for f in target.glob("*.parquet")),
        dataset_size=sum(s.num_bytes for s in split_infos),
    )
    update_card(root, name, info)


def remove_config(root: Union[str, Path], name: str) -> None:
    """Remove a config's files and its card entry (nothing happens if it is not there)."""
    root = Path(root)
    shutil.rmtree(root / DATA_DIR / name, ignore_errors=True)
    path = root / CARD
    if not path.exists():
        return
    data = DatasetCard.load(path).data.to_dict()
    configs = [dict(c) for c in data.get("configs") or []]
    if not any(c["config_name"] == name for c in configs):
        return
    configs = [c for c in configs if c["config_name"] != name]
    infos = data.get("dataset_info") or []
    infos = [dict(i) for i in (infos if isinstance(infos, list) else [infos]) if i.get("config_name") != name]
    _save_card(root, data, configs, infos)


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


# ----------------------------------------------------------------------------- reading


def numpy_batches(
    dataset: Union[datasets.Dataset, datasets.IterableDataset],
    batch_size: int = 64,
    columns: Optional[Sequence[str]] = None,
) -> Iterator[Dict[str, object]]:
    """Batches of an export (map-style or streaming): ``Array3D`` columns as (B, C, H, W) arrays in their dtype.

    Streaming Parquet in the default python format turns every array into
    nested lists (~35x slower, hf-datasets-notes section 4), and the numpy
    format of an ``IterableDataset`` casts uint16 to int64; Arrow batches
    flattened into numpy are zero-copy and exact. Other columns are lists.
    """
    features = dataset.features
    names = list(columns) if columns is not None else list(features)
    if columns is not None:
        dataset = dataset.select_columns(names)
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        batch: Dict[str, object] = {}
        for name in names:
            feature = features[name]
            if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)):
                batch[name] = array3d_values(table[name], feature.shape).astype(feature.dtype, copy=False)
            else:
                batch[name] = table[name].to_pylist()
        yield batch


#: the columns naming a pair in both configs of an export (either is unique per pair; both are compared)
PAIR_KEYS = ("patch_id", "s1_name")


def iter_examples(root: Union[str, Path], name: str, split: str, batch_size: int = 256,
                  **load_kwargs) -> Iterator[Dict[str, object]]:
    """Per-text examples of an export with their pair's arrays, streamed: the builder's streamed examples.

    ``<name>`` and ``<name>-imagery`` list the pairs in the same order, so one
    pass over each suffices (no index; memory of one batch of each). An
    ``inline_pixels`` export (no ``-imagery`` config) is read as it is, without
    its ``preview``. Arrays are numpy in their dtype; other values as the
    builder streams them (``bbox``/``point`` NaN-filled where a row has none).
    ``load_kwargs`` go to ``load_dataset`` (e.g. ``cache_dir``, ``token``).
    """
    texts = datasets.load_dataset(str(root), name, split=split, streaming=True, **load_kwargs)
    arrays = [k for k, f in texts.features.items() if isinstance(f, datasets.Array3D)]
    if arrays:  # inline: the texts hold their pixels
        columns = [k for k in texts.features if k != PREVIEW]
        for batch in numpy_batches(texts, batch_size, columns=columns):
            for i in range(len(batch[columns[0]])):
                yield {k: batch[k][i] for k in columns}
        return
    pairs = datasets.load_dataset(str(root), name + IMAGERY_SUFFIX, split=split, streaming=True, **load_kwargs)
    images = [k for k, f in pairs.features.items() if isinstance(f, datasets.Array3D)]
    pair_batches = numpy_batches(pairs, batch_size, columns=[*PAIR_KEYS, *images])
    current: Optional[Tuple[object, ...]] = None
    pixels: Dict[str, np.ndarray] = {}
    buffered: collections.deque = collections.deque()
    for batch in texts.with_format("arrow").iter(batch_size=batch_size):
        for row in batch.to_pylist():
            key = tuple(row[k] for k in PAIR_KEYS)
            while current != key:
                if not buffered:
                    block = next(pair_batches, None)
                    if block is None:
                        raise ValueError(f"export {root}: pair {key} of config {name} ({split}) is not in "
                                         f"{name}{IMAGERY_SUFFIX}, or not in the same order")
                    buffered.extend({k: block[k][i] for k in block} for i in range(len(block[PAIR_KEYS[0]])))
                entry = buffered.popleft()
                current, pixels = tuple(entry[k] for k in PAIR_KEYS), {k: entry[k] for k in images}
            yield {**row, **pixels}


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """Where a split is cut: row ranges per file, pair starts, rows per row group."""

    bounds: Tuple[Tuple[int, int], ...]
    patch_starts: np.ndarray  # row index where each pair begins, then the row count (of the texts)
    rows_per_group: int
    bytes_per_row: float


def patch_starts(part: datasets.Dataset, key_column: str) -> np.ndarray:
    """Row index of each pair's first row, then the row count; rows of a pair must be contiguous."""
    keys = part.with_format("arrow", columns=[key_column])[:][key_column].combine_chunks()
    n = len(keys)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    changed = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)
    if pc.count_distinct(keys).as_py() != len(starts) - 1:
        raise ValueError(f"the rows of a {key_column} are not contiguous: the split cannot be cut at patch boundaries")
    return starts


def plan_shards(
    starts: np.ndarray,
    bytes_per_row: float,
    min_shards: int = 4,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
    row_starts: Optional[np.ndarray] = None,
) -> ShardPlan:
    """Cut rows into files of whole pairs (``starts``: each pair's first row, then the count), balanced by rows.

    ``bytes_per_row`` (Arrow bytes of a written row) sets the file count
    (``max_shard_bytes``) and the rows per row group (``max_row_group_bytes``,
    unless ``rows_per_group`` is given). ``row_starts``: for a pairs file (one
    row per pair, ``starts`` = ``0..n``), the texts' pair starts, kept in the
    plan so the pairs' first text rows can be found in the prepared dataset.
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
    return ShardPlan(bounds, starts if row_starts is None else row_starts, int(rows_per_group), float(bytes_per_row))


def _arrow_bytes(part: datasets.Dataset) -> float:
    """In-memory bytes of a split's rows (pro rata when an indices mapping selects part of the table)."""
    return part.data.nbytes * part.num_rows / max(part.data.num_rows, 1)


# ----------------------------------------------------------------------------- writing


def export_features(features: datasets.Features) -> datasets.Features:
    """Features with the ``preview`` picture first, so the viewer shows it first."""
    return datasets.Features({PREVIEW: datasets.Image(), **features})


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


@dataclass(frozen=True)
class ShardTask:
    """One file to write: everything a worker process needs (the Dataset pickles as a file reference).

    ``kind``: ``"texts"`` (rows without pixels), ``"inline"`` (rows with their
    pair's pixels and a preview) or ``"imagery"`` (one row per pair; ``start``
    and ``stop`` count pairs, ``patch_starts`` are the texts' pair starts).
    """

    part: datasets.Dataset
    start: int
    stop: int
    patch_starts: np.ndarray
    config: object
    features: datasets.Features
    path: Path
    rows_per_group: int
    kind: str = "texts"


def shard_tasks(part: datasets.Dataset, split: str, plan: ShardPlan, directory: Path, features: datasets.Features,
                config, kind: str = "texts") -> List[ShardTask]:
    n = len(plan.bounds)
    return [
        ShardTask(part, start, stop, plan.patch_starts, config, features, directory / shard_name(split, k, n),
                  plan.rows_per_group, kind)
        for k, (start, stop) in enumerate(plan.bounds)
    ]


def write_shard(task: ShardTask, bar: Optional[tqdm] = None) -> int:
    """Write one file, a row group at a time (pixels decoded once per pair); returns its Arrow bytes."""
    images = [k for k, f in task.part.features.items() if isinstance(f, PairBands)]
    texts = task.part.remove_columns(images).with_format("arrow") if images else task.part.with_format("arrow")
    nbytes = 0
    with parquet_writer(task.features, task.path) as writer:
        for a in range(task.start, task.stop, task.rows_per_group):
            b = min(a + task.rows_per_group, task.stop)
            table = _rows(task, texts, images, a, b)
            writer.write_table(table.select(list(task.features)).cast(writer.schema))
            nbytes += table.nbytes
            if bar is not None:
                bar.update(b - a)
    _warn_if_too_big_for_viewer(task.path)
    return nbytes


def _rows(task: ShardTask, texts: datasets.Dataset, images: Sequence[str], a: int, b: int) -> pa.Table:
    """Rows ``a:b`` of a task's file as an Arrow table: texts, or pairs, with their pixels and previews."""
    starts = task.patch_starts
    if task.kind == "imagery":  # rows a:b are pairs a:b: each pair's first text row carries the pair columns
        first = starts[a:b]
        table = texts.select(first.tolist())[:].select(list(ann.PATCH_COLUMNS))
        pixels = _pair_pixels(task.part, images, first)
        marks = None
    else:
        table = texts[a:b]
        if task.kind == "texts":
            return table
        p0, p1 = int(np.searchsorted(starts, a, side="right")) - 1, int(np.searchsorted(starts, b, side="left"))
        counts = np.minimum(starts[p0 + 1 : p1 + 1], b) - np.maximum(starts[p0:p1], a)  # rows of each pair in a:b
        pixels = _pair_pixels(task.part, images, starts[p0:p1])
        present = [c for c in ("bbox", "point") if c in table.column_names]  # annotation layout only
        rows = table.select(present).to_pylist() if present else [{} for _ in range(table.num_rows)]
        marks = (counts, rows)
    for k in images:
        values = pixels[k] if marks is None else np.repeat(pixels[k], marks[0], axis=0)
        table = table.append_column(pa.field(k, task.features[k]()), array3d(values, task.features[k]))
    pngs = _previews(task.config, pixels, marks)
    column = pa.StructArray.from_arrays([pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())],
                                        names=["bytes", "path"])
    return table.add_column(0, pa.field(PREVIEW, column.type), column)


def _pair_pixels(part: datasets.Dataset, images: Sequence[str], first_rows: np.ndarray) -> Dict[str, np.ndarray]:
    """Band arrays (pairs, C, H, W) of the pairs whose first text rows are ``first_rows``, decoded once each."""
    if not len(first_rows):
        return {k: np.zeros((0, *part.features[k].shape), part.features[k].dtype) for k in images}
    rows = part.select(first_rows.tolist()).with_format("numpy", columns=list(images))[:]
    return {k: rows[k] for k in images}


def _previews(config, pixels: Mapping[str, np.ndarray], marks: Optional[Tuple[np.ndarray, List[dict]]]) -> List[bytes]:
    """One PNG per written row: a quicklook per pair; inline, with each text's box/point drawn (NaN: none)."""
    sensor = preview.preview_sensor(config.sensors)
    n_pairs = len(next(iter(pixels.values()))) if pixels else 0
    bases = [preview.base_quicklook({k: v[i] for k, v in pixels.items()}, sensor, config.image_bands) for i in range(n_pairs)]
    if marks is None:
        return [preview.to_png(base) for base in bases]
    counts, rows = marks
    out: List[bytes] = []
    for base, count in zip(bases, counts):
        plain: Optional[bytes] = None
        for row in rows[len(out) : len(out) + int(count)]:
            box, point = preview.mark(row.get("bbox")), preview.mark(row.get("point"))
            if box is None and point is None:
                plain = plain or preview.to_png(base)
                out.append(plain)
            else:
                out.append(preview.to_png(preview.annotate(base, box, point)))
    return out


def write_shards(tasks: Sequence[ShardTask], num_proc: Optional[int], progress: bool, label: str) -> List[int]:
    """Write every file, in ``num_proc`` processes when > 1 (files are independent); returns bytes per file.

    Workers are forked where the platform can (like ``datasets``' ``num_proc``;
    Arrow re-creates its thread pools after a fork), so callers need no
    ``if __name__ == "__main__"`` guard.
    """
    total = sum(t.stop - t.start for t in tasks)
    with tqdm(total=total, desc=f"export {label}", unit="rows", disable=not progress) as bar:
        if not num_proc or num_proc <= 1 or len(tasks) <= 1:
            return [write_shard(task, bar) for task in tasks]
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        sizes = [0] * len(tasks)
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(min(num_proc, len(tasks)), mp_context=context) as pool:
            futures = {pool.submit(write_shard, task): k for k, task in enumerate(tasks)}
            for future in as_completed(futures):
                k = futures[future]
                sizes[k] = future.result()
                bar.update(tasks[k].stop - tasks[k].start)
        return sizes


@contextlib.contextmanager
def parquet_writer(features: datasets.Features, path: Path) -> Iterator[pq.ParquetWriter]:
    """``Dataset.to_parquet``'s file, with zstd instead of snappy for the non-image columns; one row group per write.

    Kept from ``datasets``: the ``huggingface`` schema metadata (restores
    ``Array3D`` and ``Image``), the page index, content-defined chunking (Xet
    dedup on the Hub), uncompressed PLAIN PNG bytes. Changed: zstd (smaller and
    faster to decode than snappy on band arrays and texts).
    """
    schema = features.arrow_schema
    options = get_parquet_column_options(features, schema)
    options["compression"] = {leaf: "none" if c == "none" else "zstd" for leaf, c in options["compression"].items()}
    cdc = datasets.config.DEFAULT_CDC_OPTIONS
    with pq.ParquetWriter(str(path), schema, use_content_defined_chunking=cdc, write_page_index=True, **options) as writer:
        yield writer
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})


def write_parquet(table: pa.Table, features: datasets.Features, path: Path, rows_per_group: int) -> None:
    """A whole table as one file of :func:`parquet_writer`, ``rows_per_group`` rows per row group."""
    table = table.cast(features.arrow_schema)
    with parquet_writer(features, path) as writer:
        for offset in range(0, table.num_rows, rows_per_group):
            writer.write_table(table.slice(offset, rows_per_group))


def row_group_sizes(path: Union[str, Path]) -> List[Tuple[int, int]]:
    """(rows, uncompressed bytes) per row group: what the viewer's copy check reads."""
    meta = pq.ParquetFile(path).metadata
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


def _warn_if_too_big_for_viewer(path: Path) -> None:
    biggest = max((size for _, size in row_group_sizes(path)), default=0)
    if biggest > VIEWER_MAX_ROW_GROUP_BYTES:
        logger.warning("%s: a row group holds %.0f MB uncompressed, above the viewer's %.0f MB; pass a smaller "
                       "rows_per_group", path, biggest / 1e6, VIEWER_MAX_ROW_GROUP_BYTES / 1e6)


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


# ----------------------------------------------------------------------------- dataset card


def update_card(root: Path, name: str, info: datasets.DatasetInfo) -> None:
    """Add or replace one config in the card's YAML, keeping the others; regenerate the text.

    Exactly one config is ``default: true``: the one the card already names,
    else the first texts config (not an ``-imagery`` one). (Setting it up
    front avoids the ``KeyError: 'default'`` of ``push_to_hub`` on a lone
    config without the key, hf-datasets-notes section 5.)
    """
    path = root / CARD
    data = DatasetCard.load(path).data.to_dict() if path.exists() else {}
    configs: List[dict] = [dict(c) for c in data.get("configs") or []]
    infos = data.get("dataset_info") or []
    infos = [dict(i) for i in (infos if isinstance(infos, list) else [infos])]

    entry = {
        "config_name": name,
        "data_files": [{"split": split, "path": f"{DATA_DIR}/{name}/{split}-*"} for split in info.splits],
    }
    old = next((c for c in configs if c["config_name"] == name), None)
    if old is not None:
        entry["default"] = old.get("default", False)
        configs[configs.index(old)] = entry
    else:
        configs.append(entry)
    yaml_info = {"config_name": name, **info._to_yaml_dict()}
    infos = [i for i in infos if i.get("config_name", "default") != name] + [yaml_info]
    _save_card(root, data, configs, infos)


def _save_card(root: Path, data: dict, configs: List[dict], infos: List[dict]) -> None:
    """Write the card: one default config (see :func:`update_card`), infos in the configs' order, the text."""
    if configs and not any(c.get("default") for c in configs):
        texts = [c for c in configs if not c["config_name"].endswith(IMAGERY_SUFFIX)]
        (texts or configs)[0]["default"] = True
    for c in configs:
        if not c.get("default"):
            c.pop("default", None)
    by_name = {i.get("config_name", "default"): i for i in infos}
    ordered_infos = [by_name[c["config_name"]] for c in configs if c["config_name"] in by_name]
    data = dict(data)
    data.update(
        license=metadata.LICENSE,  # the Hub's licence id, cdla-permissive-1.0
        pretty_name="BigEarthNet.txt",
        task_categories=data.get("task_categories") or ["image-to-text", "visual-question-answering", "zero-shot-object-detection"],
        tags=data.get("tags") or ["remote-sensing", "earth-observation", "sentinel-1", "sentinel-2", "multispectral", "sar"],
        configs=configs,
        dataset_info=ordered_infos,
    )
    card_data = DatasetCardData(**data)
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_text(configs, ordered_infos)}").save(root / CARD)


def _kind(info: Mapping) -> str:
    """What a config of the card holds, from its name and columns."""
    names = {f.get("name") for f in info.get("features") or []}
    if info.get("config_name", "").endswith(IMAGERY_SUFFIX):
        return "image pairs: bands + preview"
    if PREVIEW in names:
        return "texts with their pixels (inline)"
    return "texts, no pixels" if "annotations" not in names else "image pairs' texts (patch layout), no pixels"


def card_text(configs: Sequence[dict], infos: Sequence[dict]) -> str:
    """The card's Markdown: what is here, how to load it, how the files are cut, licence, citation."""
    default = next((c["config_name"] for c in configs if c.get("default")),
                   configs[0]["config_name"] if configs else "<config>")
    names = {c["config_name"] for c in configs}
    rows = []
    for i in infos:
        splits = ", ".join(f"{s['name']} {s['num_examples']:,}" for s in i.get("splits") or [])
        rows.append(f"| `{i['config_name']}` | {_kind(i)} | {splits} | {i.get('download_size', 0) / 1e6:,.1f} MB |")
    table = "\n".join(["| config | rows | rows per split | Parquet size |", "|---|---|---|---|", *rows])
    imagery = default + IMAGERY_SUFFIX
    if imagery in names:
        usage = f"""```python
from datasets import load_dataset

REPO = "<this repo id or the export folder>"
texts = load_dataset(REPO, "{default}", split="train")               # one row per text, no pixels
pairs = load_dataset(REPO, "{imagery}", split="train")     # one row per image pair: bands + preview
pairs = pairs.with_format("numpy", dtype=None)   # dtype=None keeps uint16 (the numpy format casts to int64 otherwise)
row_of = {{p: i for i, p in enumerate(pairs["patch_id"])}}
example = texts[0]
bands = pairs[row_of[example["patch_id"]]]         # the text's image pair: s2_10m, ..., s1 arrays

# per-text examples with their arrays, streamed in one pass (pip install bigearthnet-txt)
from bentxt.export import iter_examples
for example in iter_examples(REPO, "{default}", "test"):
    ...

bench = load_dataset(REPO, "{default}", split="bench", streaming=True)   # reads only the bench files

# several GPUs / DataLoader workers: each rank or worker gets whole files
from datasets.distributed import split_dataset_by_node
part = split_dataset_by_node(load_dataset(REPO, "{default}", split="train", streaming=True), rank=0, world_size=4)
```"""
    else:
        usage = f"""```python
from datasets import load_dataset

REPO = "<this repo id or the export folder>"
ds = load_dataset(REPO, "{default}", split="train")
arrays = ds.with_format("numpy", dtype=None)   # dtype=None keeps uint16 (numpy format casts to int64 otherwise)
bench = load_dataset(REPO, "{default}", split="bench", streaming=True)   # reads only the bench files

# several GPUs / DataLoader workers: each rank or worker gets whole files
from datasets.distributed import split_dataset_by_node
part = split_dataset_by_node(load_dataset(REPO, "{default}", split="train", streaming=True), rank=0, world_size=4)
```"""
    return f"""# BigEarthNet.txt (Parquet export)

{metadata.DESCRIPTION}

This repository holds configs of the `bigearthnet_txt` builder written as Parquet, so that
`datasets` (and the dataset viewer) read them with no custom code. About 20 texts share one
image pair, so a config `<name>` holds the texts (one row per text, no pixels) and
`<name>{IMAGERY_SUFFIX}` the image pairs (one row per pair): each pair's pixels are stored once. Both list
the pairs in the same order; join them on `patch_id`. Bands are `Array3D` columns with the exact
native values (S2 `uint16` reflectance x 10,000 at 10/20/60 m, S1 `float32` backscatter in dB);
`preview` is a quicklook PNG (S2 B04/B03/B02 true colour, or S1 VV/VH/VV-VH false colour for
`s1` configs, 2-98 % stretch per channel). A config written with its pixels inline (small
configs only) has them in every text row, with the grounding box (magenta) or point (cyan) drawn
on its previews. Rows without a box, point or options hold NaN-filled `bbox`/`point` and empty
`options` strings, never nulls. Project page: {metadata.HOMEPAGE}.

{table}

## Usage

{usage}

## Files

`data/<config>/<split>-NNNNN-of-MMMMM.parquet`, separate files per split (streaming `bench`
reads only the bench files). A pair's rows never span two files. A split has at least
`min_shards` files (4 by default) when it has that many pairs, and a multiple of it where
possible, so `split_dataset_by_node` (world sizes dividing the count) and DataLoader workers get
whole files. By default files hold at most {MAX_SHARD_BYTES / 1e6:.0f} MB of Arrow data and row groups at
most {MAX_ROW_GROUP_BYTES / 1e6:.0f} MB (streaming memory grows with the row group), well inside the dataset viewer's limits ({VIEWER_MAX_ROW_GROUP_BYTES / 1e6:.0f} MB per
row group for copying a Parquet repo as is, {VIEWER_MAX_ROW_GROUP_BYTES / 1e6:.0f} MB per `/rows` scan). Every column chunk
has an offset index (and a column index wherever its values have a min/max: not PNG bytes, nor an
all-NaN `bbox`), and the `huggingface` schema metadata restores `Array3D` and `Image`. Columns
are zstd-compressed, PNG bytes are stored as they are.

## License

The data is released under the Community Data License Agreement – Permissive, Version 1.0
(CDLA-Permissive-1.0), like BigEarthNet v2.0 and BigEarthNet.txt. The quicklooks are derived
from the same bands.

## Citation

```bibtex
{metadata.CITATION.strip()}
```
"""
