"""Packed Parquet export: a dataset folder the Hub and ``load_dataset`` read without our code.

    from bentxt.export import export, push_to_hub
    root = export("s1s2-vqa", "out/", data_dir="raw/")        # prepare, add previews, write Parquet + README
    export("s2-grounding", "out/", data_dir="raw/")           # a second config, merged into the same card
    push_to_hub(root, "org/BigEarthNet.txt")

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
  an offset index, and each written file is checked against the 300 MB.
- Shards hold at most ``MAX_SHARD_BYTES`` = 500 MB (``push_to_hub``'s
  default ``max_shard_size``), and a config directory at most 10,000 files
  (the Hub's per-directory limit).
- A patch's rows never span two files, and each split has at least
  ``min_shards`` files when it has that many patches, rounded up to a multiple
  of ``min_shards``: ``split_dataset_by_node`` then hands whole files to ranks
  (world sizes dividing the count), and DataLoader workers each get files.
- The ``preview`` column is an ``Image`` (a PNG per row): the viewer shows
  thumbnails instead of truncated number lists (notes section 4).
- first-rows (200 kB per response, cells over 100 B truncated) needs nothing:
  images are served as URLs, arrays are truncated cells either way.
"""

from __future__ import annotations

import contextlib
import copy
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

from bentxt import preview

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
#: bytes a preview PNG adds to a row, for planning before any is drawn (measured 20-25 kB on noise)
PREVIEW_BYTES_ESTIMATE = 25_000

PREVIEW = "preview"
DATA_DIR = "data"
CARD = "README.md"


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
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """Prepare ``config`` with the builder, then write it as an export into ``output_dir``.

    ``data_dir``/``data_files`` default to the release. ``config_kwargs`` (e.g.
    ``layout="patch"``, ``countries=[...]``) go to the builder; pass ``name``
    to store such a variant under its own config name. Returns the folder.
    """
    import bigearthnet_txt as bt

    kwargs = dict(config_kwargs)
    if data_files is not None:
        kwargs["data_files"] = data_files
    builder = bt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir, **kwargs)
    with _datasets_progress(progress):
        builder.download_and_prepare(num_proc=num_proc)
    return export_dataset(
        builder.as_dataset(),
        output_dir,
        builder.config,
        name=name,
        min_shards=min_shards,
        max_shard_bytes=max_shard_bytes,
        rows_per_group=rows_per_group,
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
    num_proc: Optional[int] = None,
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """Write an already prepared ``DatasetDict`` of a config (a ``BigEarthNetTxtConfig`` or its name).

    The config says how to cut (its key column), what to draw (its sensors
    and bands) and what the rows must look like: each split's features must be
    the builder's ``features_for(config)``.
    """
    import bigearthnet_txt as bt

    config = _resolve_config(config, config_kwargs)
    name = name or config.name
    expected = bt.features_for(config)
    for split, part in dataset.items():
        if part.features != expected:
            raise ValueError(
                f"split {split!r} does not have the features of config {config.name!r} "
                f"(layout={config.layout!r}, bands={config.bands!r}); pass the options it was prepared with"
            )
    if min_shards < 1 or max_shard_bytes < 1:
        raise ValueError("min_shards and max_shard_bytes must be positive")

    root = Path(output_dir)
    staging = root / DATA_DIR / f".{name}.incomplete"  # hidden: never matched by the card's globs
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    splits = {split: part for split, part in dataset.items() if part.num_rows}
    plans = {
        split: plan_shards(part, config.key_column, min_shards, max_shard_bytes, rows_per_group, max_row_group_bytes)
        for split, part in splits.items()
    }
    n_files = sum(len(p.bounds) for p in plans.values())
    if n_files > MAX_FILES_PER_DIRECTORY:
        raise ValueError(
            f"config {name}: {n_files} files would exceed the Hub's {MAX_FILES_PER_DIRECTORY} files per directory; "
            f"raise max_shard_bytes (now {max_shard_bytes})"
        )

    features = export_features(expected)
    tasks = {split: shard_tasks(part, split, plans[split], staging, features, config) for split, part in splits.items()}
    sizes = write_shards([t for ts in tasks.values() for t in ts], num_proc, progress, f"{name} ({', '.join(splits)})")
    split_infos, k = [], 0
    for split, part in splits.items():
        n = len(tasks[split])
        split_infos.append(datasets.SplitInfo(name=split, num_bytes=sum(sizes[k : k + n]), num_examples=part.num_rows,
                                              shard_lengths=[b - a for a, b in plans[split].bounds]))
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
    return root


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
                batch[name] = _array(table[name], feature.shape, feature.dtype)
            else:
                batch[name] = table[name].to_pylist()
        yield batch


def _array(column: Union[pa.Array, pa.ChunkedArray], shape: Tuple[int, ...], dtype: str) -> np.ndarray:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = column.storage if isinstance(column, pa.ExtensionArray) else column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(column), *shape)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    """Where a split is cut: row ranges per file, patch starts, rows per row group."""

    bounds: Tuple[Tuple[int, int], ...]
    patch_starts: np.ndarray  # row index where each patch begins, then the row count
    rows_per_group: int
    bytes_per_row: float


def patch_starts(part: datasets.Dataset, key_column: str) -> np.ndarray:
    """Row index of each patch's first row, then the row count; rows of a patch must be contiguous."""
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
    part: datasets.Dataset,
    key_column: str,
    min_shards: int = 4,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    max_row_group_bytes: int = MAX_ROW_GROUP_BYTES,
) -> ShardPlan:
    """Cut a split into files of whole patches, balanced by rows (rows of a config are near-equal in size)."""
    starts = patch_starts(part, key_column)
    n_rows, n_patches = int(starts[-1]), len(starts) - 1
    bytes_per_row = _arrow_bytes(part) / max(n_rows, 1) + PREVIEW_BYTES_ESTIMATE
    n_files = max(math.ceil(n_rows * bytes_per_row / max_shard_bytes), min_shards)
    n_files = min(math.ceil(n_files / min_shards) * min_shards, n_patches)  # a multiple of min_shards when possible
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
    return ShardPlan(bounds, starts, rows_per_group, bytes_per_row)


def _arrow_bytes(part: datasets.Dataset) -> float:
    """In-memory bytes of a split's rows (pro rata when an indices mapping selects part of the table)."""
    return part.data.nbytes * part.num_rows / max(part.data.num_rows, 1)


# ----------------------------------------------------------------------------- writing


def export_features(features: datasets.Features) -> datasets.Features:
    """The builder's features with the ``preview`` picture first, so the viewer shows it first."""
    return datasets.Features({PREVIEW: datasets.Image(), **features})


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


@dataclass(frozen=True)
class ShardTask:
    """One file to write: everything a worker process needs (the Dataset pickles as a file reference)."""

    part: datasets.Dataset
    start: int
    stop: int
    patch_starts: np.ndarray
    config: object
    features: datasets.Features
    path: Path
    rows_per_group: int


def shard_tasks(part: datasets.Dataset, split: str, plan: ShardPlan, directory: Path, features: datasets.Features,
                config) -> List[ShardTask]:
    n = len(plan.bounds)
    return [
        ShardTask(part, start, stop, plan.patch_starts, config, features, directory / shard_name(split, k, n),
                  plan.rows_per_group)
        for k, (start, stop) in enumerate(plan.bounds)
    ]


def write_shard(task: ShardTask, bar: Optional[tqdm] = None) -> int:
    """Draw the previews of a row range, write it as one file; returns its Arrow bytes (as ``datasets`` counts)."""
    table = task.part.with_format("arrow")[task.start : task.stop]
    pngs = list(_previews(task, bar))
    column = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())], names=["bytes", "path"]
    )
    table = table.add_column(0, pa.field(PREVIEW, column.type), column)
    write_parquet(table, task.features, task.path, task.rows_per_group)
    _warn_if_too_big_for_viewer(task.path)
    return table.nbytes


def write_shards(tasks: Sequence[ShardTask], num_proc: Optional[int], progress: bool, label: str) -> List[int]:
    """Write every file, in ``num_proc`` processes when > 1 (files are independent); returns bytes per file.

    Parquet encoding (zstd, dictionaries, content-defined chunks) takes most of
    the time, ~125 MB/s of Arrow data per core, so files are the unit of work.
    Workers are forked where the platform can (like ``datasets``' ``num_proc``;
    Arrow re-creates its thread pools after a fork), so callers need no
    ``if __name__ == "__main__"`` guard.
    """
    total = sum(t.stop - t.start for t in tasks)
    with tqdm(total=total, desc=f"export {label}", unit="ex", disable=not progress) as bar:
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


def write_parquet(table: pa.Table, features: datasets.Features, path: Path, rows_per_group: int) -> None:
    """``Dataset.to_parquet``'s file, with zstd instead of snappy for the non-image columns.

    Kept from ``datasets``: the ``huggingface`` schema metadata (restores
    ``Array3D`` and ``Image``), the page index, content-defined chunking (Xet
    dedup on the Hub), uncompressed PLAIN PNG bytes. Changed: zstd. In the
    annotation layout every row repeats its patch's bands, and zstd's window
    (unlike snappy's 64 kB) spans those repeats within a page: on the
    benchmark fixture s1s2-vqa files are ~3x smaller, and they decode faster.
    """
    schema = features.arrow_schema
    options = get_parquet_column_options(features, schema)
    options["compression"] = {leaf: "none" if c == "none" else "zstd" for leaf, c in options["compression"].items()}
    cdc = datasets.config.DEFAULT_CDC_OPTIONS
    table = table.replace_schema_metadata(schema.metadata)
    with pq.ParquetWriter(str(path), schema, use_content_defined_chunking=cdc, write_page_index=True, **options) as writer:
        for offset in range(0, table.num_rows, rows_per_group):
            writer.write_table(table.slice(offset, rows_per_group))
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(cdc)})


def _previews(task: ShardTask, bar: Optional[tqdm] = None) -> Iterator[bytes]:
    """One PNG per row: one quicklook per patch, its box/point drawn on grounding rows."""
    part, start, stop, starts, config = task.part, task.start, task.stop, task.patch_starts, task.config
    sensor = preview.preview_sensor(config.sensors)
    images = [k for k, f in part.features.items() if isinstance(f, datasets.Array3D)]
    pixels = part.with_format("numpy", columns=images, dtype=None)
    marks = [c for c in ("bbox", "point") if c in part.features]  # annotation layout only
    rows = part.with_format("arrow", columns=marks)[start:stop].to_pylist() if marks else None
    first, last = np.searchsorted(starts, start), np.searchsorted(starts, stop)
    for a, b in zip(starts[first:last], starts[first + 1 : last + 1]):
        base = preview.base_quicklook(pixels[int(a)], sensor, config.image_bands)
        plain: Optional[bytes] = None
        for i in range(int(a), int(b)):
            row = rows[i - start] if rows is not None else {}
            if row.get("bbox") is None and row.get("point") is None:
                plain = plain or preview.to_png(base)
                yield plain
            else:
                yield preview.to_png(preview.annotate(base, row.get("bbox"), row.get("point")))
        if bar is not None:
            bar.update(int(b - a))


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
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Turn the ``datasets`` progress bars off for a block (and back on only if they were on)."""
    was_enabled = not datasets.utils.are_progress_bars_disabled()
    if not enabled and was_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            datasets.enable_progress_bars()


def _resolve_config(config: object, config_kwargs: Mapping[str, object]):
    import bigearthnet_txt as bt

    if isinstance(config, str):
        if config not in bt.BigEarthNetTxt.builder_configs:
            raise ValueError(bt.config_name_error(config))
        config = copy.deepcopy(bt.BigEarthNetTxt.builder_configs[config])
    elif config_kwargs:
        config = copy.deepcopy(config)
    for option, value in config_kwargs.items():
        if not hasattr(config, option):
            raise ValueError(f"{option!r} is not an option of {type(config).__name__}")
        setattr(config, option, value)
    config.validate()
    return config


# ----------------------------------------------------------------------------- dataset card


def update_card(root: Path, name: str, info: datasets.DatasetInfo) -> None:
    """Add or replace one config in the card's YAML, keeping the others; regenerate the text.

    Exactly one config is ``default: true``: the first one exported, unless the
    card already names one. (Setting it on the first config up front avoids
    the ``KeyError: 'default'`` of ``push_to_hub`` on a lone config without the
    key, hf-datasets-notes section 5.)
    """
    import bigearthnet_txt as bt

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
    if not any(c.get("default") for c in configs):
        configs[0]["default"] = True
    for c in configs:
        if not c.get("default"):
            c.pop("default", None)

    yaml_info = {"config_name": name, **info._to_yaml_dict()}
    by_name = {i.get("config_name", "default"): i for i in infos}
    by_name[name] = yaml_info
    ordered_infos = [by_name[c["config_name"]] for c in configs if c["config_name"] in by_name]

    data.update(
        license=bt._LICENSE,  # the Hub's licence id, cdla-permissive-1.0
        pretty_name="BigEarthNet.txt",
        task_categories=data.get("task_categories") or ["image-to-text", "visual-question-answering", "zero-shot-object-detection"],
        tags=data.get("tags") or ["remote-sensing", "earth-observation", "sentinel-1", "sentinel-2", "multispectral", "sar"],
        configs=configs,
        dataset_info=ordered_infos,
    )
    card_data = DatasetCardData(**data)
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_text(configs, ordered_infos)}").save(path)


def card_text(configs: Sequence[dict], infos: Sequence[dict]) -> str:
    """The card's Markdown: what is here, how to load it, how the files are cut, licence, citation."""
    import bigearthnet_txt as bt

    default = next(c["config_name"] for c in configs if c.get("default"))
    rows = []
    for i in infos:
        splits = ", ".join(f"{s['name']} {s['num_examples']:,}" for s in i.get("splits") or [])
        rows.append(f"| `{i['config_name']}` | {splits} | {i.get('download_size', 0) / 1e6:,.1f} MB |")
    table = "\n".join(["| config | examples per split | Parquet size |", "|---|---|---|", *rows])
    return f"""# BigEarthNet.txt (Parquet export)

{bt._DESCRIPTION}

This repository holds configs of the `bigearthnet_txt` builder written as Parquet, so that
`datasets` (and the dataset viewer) read them with no custom code. Bands are `Array3D`
columns with the exact native values (S2 `uint16` reflectance x 10,000 at 10/20/60 m,
S1 `float32` backscatter in dB); `preview` is a quicklook PNG (S2 B04/B03/B02 true colour,
or S1 VV/VH/VV-VH false colour for `s1` configs, 2-98 % stretch per channel) with the
grounding box (magenta) or point (cyan) drawn on grounding rows. Project page: {bt._HOMEPAGE}.

{table}

## Usage

```python
from datasets import load_dataset

REPO = "<this repo id or the export folder>"
ds = load_dataset(REPO, "{default}", split="train")
arrays = ds.with_format("numpy", dtype=None)   # dtype=None keeps uint16 (numpy format casts to int64 otherwise)
bench = load_dataset(REPO, "{default}", split="bench", streaming=True)   # reads only the bench files

# several GPUs / DataLoader workers: each rank or worker gets whole files
from datasets.distributed import split_dataset_by_node
part = split_dataset_by_node(load_dataset(REPO, "{default}", split="train", streaming=True), rank=0, world_size=4)
```

## Files

`data/<config>/<split>-NNNNN-of-MMMMM.parquet`, separate files per split (streaming `bench`
reads only the bench files). A patch's rows never span two files. A split has at least
`min_shards` files (4 by default) when it has that many patches, and a multiple of it where
possible, so `split_dataset_by_node` (world sizes dividing the count) and DataLoader workers get
whole files. By default files hold at most {MAX_SHARD_BYTES / 1e6:.0f} MB of Arrow data and row groups at
most {MAX_ROW_GROUP_BYTES / 1e6:.0f} MB (streaming memory grows with the row group), well inside the dataset viewer's limits ({VIEWER_MAX_ROW_GROUP_BYTES / 1e6:.0f} MB per
row group for copying a Parquet repo as is, {VIEWER_MAX_ROW_GROUP_BYTES / 1e6:.0f} MB per `/rows` scan). Every column chunk
has a page index, and the `huggingface` schema metadata restores `Array3D` and `Image`. Columns
are zstd-compressed (rows of a patch repeat its bands; zstd finds the repeats), PNG bytes are
stored as they are.

## License

The data is released under the Community Data License Agreement – Permissive, Version 1.0
(CDLA-Permissive-1.0), like BigEarthNet v2.0 and BigEarthNet.txt. The quicklooks are derived
from the same bands.

## Citation

```bibtex
{bt._CITATION.strip()}
```
"""
