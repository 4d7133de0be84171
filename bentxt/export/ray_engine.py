"""Past one machine: the export as Ray tasks per S2 tile run, and an export read as a ``ray.data.Dataset``.

    from bentxt.export import ray_engine
    root = ray_engine.export("s1s2-vqa", "out/", data_dir="raw/", ray_address="10.0.0.1:6379")
    ds = ray_engine.read(root, "s1s2-vqa", "train")          # per-text examples, numpy arrays
    for batch in ds.iter_torch_batches(batch_size=64, collate_fn=ray_engine.torch_collate):
        ...

Needs the ``ray`` extra (``pip install "bigearthnet-txt[ray]"``: Ray Data, and Ray Train, which
``iter_torch_batches`` imports).

**Exporting** (:func:`export`) writes what ``bentxt.export.writer.export`` writes (the texts config, the shared
``imagery-*`` config where needed, the rebuilt ``browse`` config; the same rows in the same order, the same pixels, the
same card) through the same code: ``bentxt.export.writer.ExportJob`` decides what is written, ``bentxt.export.writer.write_file``
writes each file inside a Ray task, ``ExportJob.finish`` checks and swaps the staged files and updates the card. Only
the plan differs: the driver cuts each split's pairs, in order, into runs of one S2 tile
(``"_".join(patch_id.split("_")[:-2])``, the tile folder of the release), and one Ray task per tile run writes that
run's files. The phases (imagery, texts, browse) run one after the other, as locally.

1. The driver prepares the config through ``registration.builder_for`` (the cache ``load_dataset`` uses). Preparing is
   not distributed: for ``.tar.zst`` archives it is the one-reader-per-archive stream (a ``.tar.zst`` cannot be split);
   folders and an LMDB are read by ``num_proc`` processes of the driver's machine.
2. Tasks open the prepared cache and write the output by path, so on several nodes the cache folder (``cache_dir``, or
   ``HF_DATASETS_CACHE``) and ``output_dir`` must be on storage every node mounts at the same path (NFS, a parallel
   file system). On one machine nothing is needed.
3. ``ray_address`` (or ``RAY_ADDRESS``) names a running cluster; a Ray this process is already connected to is used;
   otherwise a new local Ray is started (``address="local"``), never a cluster recorded by an earlier ``ray start``
   in Ray's temporary folder (a stale record would make ``ray.init()`` wait for a dead cluster). A Ray started here is
   shut down at the end.

**Why plain Ray tasks, not Ray Data ``map_batches``**: on this 2-core machine Ray Data's streaming executor kept ~1.2
of the 2 allowed tasks running (5.6 s against 3.6 s with plain tasks for the same 500-pair export), and nothing Ray
Data adds is used: the tasks write files and return their paths. Ray Data's own ``write_parquet`` would not do either:
the export needs ``datasets``' schema metadata (``Array3D``, ``Image``), zstd, the page index and content-defined
chunking, which ``bentxt.export.writer.parquet_writer`` sets.

**Shard boundaries** are the one difference from the local export (which balances a split's files by rows, at pair
boundaries): a file never spans two tile runs. A split of a config gets ``max(local file count, one per tile run, files
its runs need under max_shard_bytes)`` files, rounded up to a multiple of ``min_shards`` (at most one per pair), spread
over the runs by rows. The local rules still hold: whole pairs per file, at most ``max_shard_bytes`` per file, at least
``min_shards`` files per split where there are enough pairs, the same rows per row group.

**Reading** (:func:`read`) gives a ``ray.data.Dataset`` of per-text examples, each with its pair's band groups as
``(C, H, W)`` numpy arrays in their dtype, ``bbox``/``point`` as float64 arrays, other columns as ``iter_examples``
gives them. One read task per row group of the texts config finds its pairs' rows in the imagery config with
``bentxt.export.reader.ImageryIndex`` (the export's one reader) and yields blocks of at most Ray's target block size. It
works on a local export folder and a Hub repo (``org/name`` or ``hf://datasets/org/name``, through fsspec; untested
here: no network). Ray Data keeps the order of rows only with
``ds.context.execution_options.preserve_order = True``; then rows come in the order of ``iter_examples``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from bentxt.export import writer as ex
from bentxt.export import reader as rd
from bentxt.imagery.layout import parent_dir

logger = logging.getLogger("bigearthnet_txt")

#: the pip extra that brings Ray Data and Ray Train
EXTRA = 'pip install "bigearthnet-txt[ray]"'


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"the Ray engine needs Ray Data: {EXTRA}") from err
    return ray


def tile_of(patch_id: str) -> str:
    """The S2 tile folder a pair belongs to: ``"_".join(patch_id.split("_")[:-2])``."""
    return parent_dir("s2", patch_id)


# ----------------------------------------------------------------------------- connecting


def _same_cluster(address: str) -> bool:
    import ray

    if address == "auto":
        return True
    current = ray.get_runtime_context().gcs_address or ""
    strip = lambda a: re.sub(r"^(ray|gcs)://", "", a).replace("localhost", "127.0.0.1")  # noqa: E731
    return strip(address) == strip(current)


def _check_reachable(address: Optional[str], timeout: float = 10.0) -> None:
    """Fail in seconds on a ``host:port`` (or ``ray://host:port``) nobody listens on: ``ray.init`` would retry for minutes."""
    import socket

    found = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address or "")
    if found is None:  # None (a new local Ray), "auto", "local": Ray's own lookup
        return
    try:
        socket.create_connection((found[1], int(found[2])), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"no Ray cluster answers at {address} ({err.strerror or err}): check the address "
                              f"(ray_address / --ray-address / RAY_ADDRESS)") from None


def connect(address: Optional[str] = None) -> bool:
    """Use the Ray this process is connected to; else connect to ``address``, else ``RAY_ADDRESS``, else start a new
    local Ray (``address="local"``: never a cluster recorded in Ray's temporary folder by an earlier ``ray start``,
    which ``ray.init()`` would wait for even when it is gone). True when this call connected."""
    ray = _ray()
    if ray.is_initialized():
        if address is not None and not _same_cluster(address):
            raise ValueError(f"this process is already connected to the Ray cluster at "
                             f"{ray.get_runtime_context().gcs_address}, not {address}: call ray.shutdown() first, "
                             f"or leave ray_address out to use it")
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    _check_reachable(address)
    ray.init(address=address, logging_level=logging.WARNING)
    return True


@contextlib.contextmanager
def connected(address: Optional[str] = None) -> Iterator[None]:
    """:func:`connect` for a block; a Ray connected here is shut down after it."""
    started = connect(address)
    try:
        yield
    finally:
        if started:
            _ray().shutdown()


# ----------------------------------------------------------------------------- exporting


def export(
    config: str,
    output_dir: Union[str, Path],
    *,
    ray_address: Optional[str] = None,
    num_workers: Optional[int] = None,
    data_dir: Optional[str] = None,
    data_files: Optional[object] = None,
    cache_dir: Optional[str] = None,
    num_proc: Optional[int] = None,
    name: Optional[str] = None,
    min_shards: int = 4,
    max_shard_bytes: int = ex.MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    inline_pixels: bool = False,
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """``bentxt.export.writer.export`` on Ray: prepare on this machine, write the files with ``num_workers`` Ray workers.

    ``ray_address``: a running cluster (``"host:6379"``, ``"auto"``); ``None`` uses the Ray this process is connected
    to, else ``RAY_ADDRESS``, else a new local Ray. ``num_workers``: Ray tasks writing at a time (default: the
    cluster's CPUs, at most one per tile run). ``num_proc`` prepares the cache, as in the local export. The cache and
    ``output_dir`` must be on storage all nodes share (see the module docstring).
    """
    ex._refuse_inline(inline_pixels)
    with connected(ray_address):  # first: a wrong address fails before a long preparation
        builder = ex.prepared(config, data_dir=data_dir, data_files=data_files, cache_dir=cache_dir, num_proc=num_proc,
                              progress=progress, **config_kwargs)
        return export_dataset(builder.as_dataset(), output_dir, builder.config, num_workers=num_workers, name=name,
                              min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                              progress=progress)


def export_dataset(
    dataset: datasets.DatasetDict,
    output_dir: Union[str, Path],
    config: object,
    *,
    ray_address: Optional[str] = None,
    num_workers: Optional[int] = None,
    name: Optional[str] = None,
    min_shards: int = 4,
    max_shard_bytes: int = ex.MAX_SHARD_BYTES,
    rows_per_group: Optional[int] = None,
    max_row_group_bytes: int = ex.MAX_ROW_GROUP_BYTES,
    inline_pixels: bool = False,
    progress: bool = True,
    **config_kwargs,
) -> Path:
    """``bentxt.export.writer.export_dataset`` on Ray, for a ``DatasetDict`` prepared by the builder (its cache is shared)."""
    ex._refuse_inline(inline_pixels)
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be at least 1")
    job = ex.ExportJob.create(dataset, output_dir, config, name, min_shards, max_shard_bytes, **config_kwargs)
    limits: Dict[str, Any] = dict(min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                  max_row_group_bytes=max_row_group_bytes)
    files, runs, nodes = 0, 0, set()
    with connected(ray_address):
        for kind in job.phases():
            job = job.ready(kind)
            tasks = plan_kind(job, kind, **limits)
            job.prepare_staging([kind])
            try:
                nodes |= set(_run(tasks, job, num_workers, progress))
            except BaseException:
                shutil.rmtree(job.staging(kind), ignore_errors=True)
                raise
            job.finish(kind, [s for t in tasks for s in t.specs])
            files, runs = files + sum(len(t.specs) for t in tasks), runs + len(tasks)
    logger.info("config %s: %d files of %d tile runs written by Ray tasks on %d node(s)", job.name, files, runs,
                len(nodes))
    return job.root


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TileTask:
    """One Ray task: the files of one tile run of a split (``bentxt.export.writer.FileSpec`` s, numbered within the split)."""

    split: str
    tile: str
    specs: Tuple[ex.FileSpec, ...]

    @property
    def rows(self) -> int:
        return sum(s.stop - s.start for s in self.specs)


def tile_runs(keys: Sequence[str]) -> List[Tuple[str, int, int]]:
    """``(tile, first pair, stop pair)``: maximal runs of consecutive pairs of one S2 tile, in the given order.

    The builder lists a folder or LMDB source's pairs by name and an archive's in archive order, and browse rows are
    sorted by ``patch_id``: all keep a tile's pairs together; a tile whose pairs are not consecutive gets one run each
    time.
    """
    tiles = [tile_of(p) for p in keys]
    cuts = [0] + [i for i in range(1, len(tiles)) if tiles[i] != tiles[i - 1]] + [len(tiles)]
    return [(tiles[a], a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def files_per_run(rows: Sequence[int], pairs: Sequence[int], bytes_per_row: float, at_least: int, min_shards: int,
                  max_shard_bytes: int) -> List[int]:
    """Files of each run: each what its bytes need (at least one, at most one per pair), then more for the largest
    files until the split has ``max(at_least, that sum)`` rounded up to a multiple of ``min_shards`` (capped by pairs)."""
    counts = [min(p, max(1, math.ceil(r * bytes_per_row / max_shard_bytes))) for r, p in zip(rows, pairs)]
    target = max(sum(counts), at_least)
    target = min(math.ceil(target / min_shards) * min_shards, sum(pairs))
    while sum(counts) < target:
        room = [i for i in range(len(counts)) if counts[i] < pairs[i]]
        j = max(room, key=lambda i: (rows[i] / counts[i], -i))  # the run with the largest files gets one more
        counts[j] += 1
    return counts


def plan_kind(job: ex.ExportJob, kind: str, *, min_shards: int, max_shard_bytes: int, rows_per_group: Optional[int],
              max_row_group_bytes: int) -> List[TileTask]:
    """Every file of one kind, grouped into one task per tile run (see the module docstring)."""
    tasks: List[TileTask] = []
    for split in job.write_splits(kind):
        position, keys = job.pairs(kind, split)
        runs = tile_runs(keys)
        per_row = job.bytes_per_row(kind, split)
        local = ex.plan_shards(position, per_row, min_shards=min_shards, max_shard_bytes=max_shard_bytes,
                               rows_per_group=rows_per_group, max_row_group_bytes=max_row_group_bytes)
        counts = files_per_run([int(position[b] - position[a]) for _, a, b in runs], [b - a for _, a, b in runs],
                               per_row, len(local.bounds), min_shards, max_shard_bytes)
        bounds: List[List[Tuple[int, int]]] = []
        for (_, a, b), k in zip(runs, counts):
            run = ex.plan_shards(position[a : b + 1] - position[a], per_row, min_shards=k, max_shard_bytes=2**62,
                                 rows_per_group=1)
            bounds.append([(int(position[a] + s), int(position[a] + e)) for s, e in run.bounds])
        specs = job.specs(kind, split, [x for run in bounds for x in run], local.rows_per_group)
        k = 0
        for (tile, _, _), shards in zip(runs, bounds):
            tasks.append(TileTask(split, tile, tuple(specs[k : k + len(shards)])))
            k += len(shards)
    return tasks


# ----------------------------------------------------------------------------- the Ray job


def _write_task(specs: Sequence[ex.FileSpec], job: ex.ExportJob) -> str:
    """The Ray task: the files of one tile run, by the local export's writer; returns the node it ran on."""
    import ray

    for spec in specs:
        ex.write_file(job, spec)
    return ray.get_runtime_context().get_node_id()


def _run(tasks: Sequence[TileTask], job: ex.ExportJob, num_workers: Optional[int], progress: bool) -> List[str]:
    """Run every tile task, at most ``workers`` at a time, largest first; the node of each."""
    ray = _ray()
    if not tasks:
        return []
    workers = max(1, min(num_workers or int(ray.cluster_resources().get("CPU", 1)), len(tasks)))
    # system failures (a worker process or node lost) are retried; an error of the writer fails the export
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_write_task)
    shared = ray.put(job)  # sent once, resolved by each task
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].rows)  # the last tasks to start are the short ones
    running: Dict[object, int] = {}
    nodes: List[str] = []
    with tqdm(total=sum(t.rows for t in tasks), desc=f"export on Ray ({workers} workers)", unit="rows",
              disable=not progress) as bar:

        def collect_one() -> None:
            done, _ = ray.wait(list(running), num_returns=1)
            nodes.append(ray.get(done[0]))
            bar.update(tasks[running.pop(done[0])].rows)

        try:
            for number in order:
                if len(running) >= workers:
                    collect_one()
                running[remote.remote(tasks[number].specs, shared)] = number
            while running:
                collect_one()
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
    return nodes


# ----------------------------------------------------------------------------- reading


def _url(root_or_repo: Union[str, Path]) -> str:
    return rd.export_url(root_or_repo)


@dataclass(frozen=True)
class ReadPart:
    """One read task: a row group of a texts file, and the imagery rows of its pairs (in order)."""

    texts_file: str
    group: int
    rows: int
    imagery_rows: np.ndarray


@dataclass(frozen=True)
class _ReadContext:
    url: str
    storage_options: Optional[dict]
    text_features: datasets.Features
    image_features: Dict[str, datasets.Array3D]  # the band columns of the imagery config
    index: rd.ImageryIndex


def plan_read(url: str, name: str, split: str,
              storage_options: Optional[dict] = None) -> Tuple[_ReadContext, List[ReadPart]]:
    """The read tasks of one split of an exported config: the driver reads the footers and the ``patch_id`` columns."""
    import pyarrow.parquet as pq

    fs, inner = rd.open_root(url, storage_options)
    inner = inner.rstrip("/")
    imagery = rd.imagery_of(fs, inner, name)
    texts_files = rd.config_files(fs, inner, name, split)
    if not texts_files:
        raise ValueError(f"{url}: no {split} files for config {name!r}")
    index = rd.ImageryIndex.load(fs, inner, imagery, split)
    pair_files = rd.config_files(fs, inner, imagery, split)
    with fs.open(texts_files[0], "rb") as f:
        text_features = datasets.Features.from_arrow_schema(pq.read_schema(f))
    with fs.open(pair_files[0], "rb") as f:
        arrays = rd.array_columns(datasets.Features.from_arrow_schema(pq.read_schema(f)))
    parts: List[ReadPart] = []
    for path in texts_files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for g in range(parquet.metadata.num_row_groups):
                keys = parquet.read_row_group(g, columns=[rd.PAIR_KEY])[rd.PAIR_KEY].combine_chunks()
                if not len(keys):
                    continue
                firsts = keys.take(pa.array(rd.pair_starts(keys)[:-1])).to_pylist()
                rows = index.rows_of(firsts, f"{path} row group {g}")
                parts.append(ReadPart(path, g, len(keys), rows))
    return _ReadContext(url, storage_options, text_features, arrays, index), parts


def _tensor_columns(table: pa.Table, features: datasets.Features) -> pa.Table:
    """Fixed-length numeric lists (``bbox``, ``point``) as Ray tensor columns: ``(n,)`` float arrays per row."""
    from ray.data.extensions import ArrowTensorArray

    for k, feature in features.items():
        if isinstance(feature, datasets.List) and feature.length not in (None, -1) \
                and isinstance(feature.feature, datasets.Value) and feature.feature.dtype != "string":
            column = table[k].combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), feature.length)
            table = table.set_column(table.schema.get_field_index(k), k, ArrowTensorArray.from_numpy(values))
    return table


def read_part(context: _ReadContext, part: ReadPart, block_bytes: int) -> Iterator[pa.Table]:
    """Per-text examples of one texts row group with their pair's arrays, in blocks of about ``block_bytes``."""
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    fs, _ = rd.open_root(context.url, context.storage_options)
    step = max(1, block_bytes // max(rd.pixel_bytes(datasets.Features(context.image_features)), 1))
    with fs.open(part.texts_file, "rb") as f:
        texts = pq.ParquetFile(f).read_row_group(part.group, columns=list(context.text_features))
    texts = _tensor_columns(texts, context.text_features)
    keys = texts[rd.PAIR_KEY].combine_chunks()
    starts = rd.pair_starts(keys)
    pairs = context.index.read(fs, part.imagery_rows, [rd.PAIR_KEY, *context.image_features])
    if pairs[rd.PAIR_KEY].to_pylist() != keys.take(pa.array(starts[:-1])).to_pylist():
        raise ValueError(f"{part.texts_file} row group {part.group}: its pairs are not those read from its imagery "
                         f"config")
    arrays = rd.numpy_arrays(pairs, context.image_features)
    pair_of_row = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    for r in range(0, texts.num_rows, step):
        e = min(r + step, texts.num_rows)
        block = texts.slice(r, e - r)
        for k, values in arrays.items():
            block = block.append_column(k, ArrowTensorArray.from_numpy(np.ascontiguousarray(values[pair_of_row[r:e]])))
        yield block


def _datasource(context: _ReadContext, parts: Sequence[ReadPart]):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    pixel_bytes = rd.pixel_bytes(datasets.Features(context.image_features))

    class BigEarthNetTxtExport(Datasource):
        """One read task per row group of the texts config (see :func:`read`)."""

        def estimate_inmemory_data_size(self) -> Optional[int]:
            return int(sum(p.rows for p in parts) * (pixel_bytes + 600))

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, data_context=None):
            block_bytes = int(getattr(data_context, "target_max_block_size", None) or 128 * 2**20)
            tasks = []
            for part in parts:
                # ignore: ray's stub says a tuple, yet BlockMetadata converts a list itself (older ray declares a list)
                meta = BlockMetadata(num_rows=part.rows, size_bytes=int(part.rows * (pixel_bytes + 600)), exec_stats=None,
                                     input_files=[part.texts_file])  # type: ignore[arg-type]

                def read_fn(part: ReadPart = part) -> Iterator[pa.Table]:
                    return read_part(context, part, block_bytes)

                tasks.append(ReadTask(read_fn, meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return BigEarthNetTxtExport()


def read(root_or_repo: Union[str, Path], name: str, split: str, *, storage_options: Optional[dict] = None,
         ray_address: Optional[str] = None):
    """A ``ray.data.Dataset`` of the per-text examples of ``split`` of the exported config ``name``.

    ``root_or_repo``: an export folder (``bentxt.export.writer`` or :func:`export`), any fsspec URL of one, or a Hub dataset
    repo id (``org/name``, ``org/name@revision``) read as ``hf://datasets/...`` (``storage_options``, e.g.
    ``{"token": ...}``, go to fsspec; untested here: no network). Each row holds the text columns, ``bbox``/``point``
    as float64 arrays, and the pair's band groups (or ``image``) as ``(C, H, W)`` arrays in their dtype: the values of
    ``bentxt.export.writer.iter_examples`` (in its order with ``preserve_order``). For torch:
    ``ds.iter_torch_batches(collate_fn=torch_collate)`` (strings stay lists), or ``select_columns`` the arrays; Ray
    Train workers get theirs with ``ray.train.get_dataset_shard``. On a cluster, a local folder must be on shared
    storage. Ray: the one this process is connected to, else ``ray_address``, else ``RAY_ADDRESS``, else a new local
    Ray (:func:`connect`; left running, as Ray Data's own start would be).
    """
    ray = _ray()
    connect(ray_address)
    url = _url(root_or_repo)
    context, parts = plan_read(url, name, split, storage_options)
    return ray.data.read_datasource(_datasource(context, parts), override_num_blocks=max(1, len(parts)))


def torch_collate(batch: Mapping[str, np.ndarray]) -> Dict[str, object]:
    """``iter_torch_batches(collate_fn=...)``: numeric arrays as torch tensors (dtypes kept), strings as lists."""
    import torch

    out: Dict[str, object] = {}
    for k, v in batch.items():
        v = np.asarray(v) if not isinstance(v, np.ndarray) else v
        if v.dtype.kind in "biuf":  # Ray's batches may be read-only views of the object store: torch wants its own
            out[k] = torch.from_numpy(np.array(v) if not v.flags.writeable else np.ascontiguousarray(v))
        else:
            out[k] = [x.tolist() if isinstance(x, np.ndarray) else x for x in v]
    return out


__all__ = ["export", "export_dataset", "read", "torch_collate", "connect", "connected", "tile_of", "plan_kind",
           "files_per_run", "plan_read", "EXTRA"]
