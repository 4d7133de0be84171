"""Past one machine: the export as Ray tasks per S2 tile, and an export read as a ``ray.data.Dataset``.

    from bentxt import ray_engine
    root = ray_engine.export("s1s2-vqa", "out/", data_dir="raw/", ray_address="10.0.0.1:6379")
    ds = ray_engine.read(root, "s1s2-vqa", "train")          # per-text examples, numpy arrays
    for batch in ds.iter_torch_batches(batch_size=64, collate_fn=ray_engine.torch_collate):
        ...

Needs the ``ray`` extra (``pip install "bigearthnet-txt[ray]"``: Ray Data, and Ray Train, which
``iter_torch_batches`` imports).

**Exporting** (:func:`export`) writes exactly what ``bentxt.export.export`` writes (``<name>``:
the texts, ``<name>-imagery``: one row per image pair with its bands and a ``preview``; the same
rows in the same order, the same pixels, the same card) with the Parquet encoding, previews and
compression spread over Ray workers:

1. The driver prepares the config through ``registration.builder_for`` (the cache
   ``load_dataset`` uses). The prepared cache is the random-access source: its imagery tables
   are memory-mapped Arrow files that every worker on a machine reads through the shared page
   cache. Preparing is not distributed: for ``.tar.zst`` archives it is the one-reader-per-archive
   stream (a ``.tar.zst`` cannot be split, so it does not scale past one reader per archive;
   ``num_proc`` overlaps the S1 and S2 archives); folders and an LMDB are read by ``num_proc``
   processes of the driver's machine.
2. The driver cuts each split's pairs, in the builder's order, into runs of one S2 tile
   (``"_".join(patch_id.split("_")[:-2])``, the tile folder of the release) and plans every file
   up front (below). One Ray task per tile run writes that run's texts files and imagery files.
3. The file names (``<split>-NNNNN-of-MMMMM.parquet``) are fixed by that plan, so the tasks write
   them straight into hidden staging folders; the driver checks that every planned file came
   back, swaps the folders in (as the local export does, so a re-export leaves no old shards)
   and writes the card with ``export.update_card`` (texts config first, then ``-imagery``).

**Multi-node clusters**: the workers open the prepared cache and write the output by path, so the
cache folder (``cache_dir``, or ``HF_DATASETS_CACHE``) and ``output_dir`` must be on storage every
node mounts at the same path (NFS, a parallel file system). On one machine nothing is needed.
Point it at a running cluster with ``ray_address`` (or ``RAY_ADDRESS``), or call it inside a
``ray.init()`` you made; a Ray it started itself is shut down at the end.

**Why plain Ray tasks, not Ray Data ``map_batches``** (tried first: a Dataset of tile tasks,
``map_batches(batch_size=1, compute=TaskPoolStrategy(size=2))``): on this 2-core machine Ray
Data's streaming executor kept ~1.2 of the 2 allowed tasks running on average (its backpressure
policies admit tasks for streaming blocks between operators, even with resource reservation off),
5.6 s against 3.6 s with plain tasks for the same 500-pair export; and nothing Ray Data adds is
used by this job: its tasks write files and return a few numbers, no blocks flow between
operators. So each tile run is a ``ray.remote`` task (1 CPU, spread over nodes, retried when its
worker process or node is lost), at most ``num_workers`` in flight, the largest runs first; a
worker process keeps the splits it opened for the export's next tasks. Ray Data's own
``write_parquet`` would not do either: the export needs ``datasets``' schema metadata
(``Array3D``, ``Image``), zstd, the page index and content-defined chunking, which
``bentxt.export``'s writer sets, so the tasks write with it. Ray Data is what reading uses (below):
blocks streamed into training under backpressure, ``iter_torch_batches``, Ray Train shards.

**Shard boundaries** are the one difference from the local export (which balances a split's
files by rows, at pair boundaries). Here a file never spans two tile runs: a split of a config gets
``max(local file count, one per tile run, files its runs need under max_shard_bytes)`` files,
rounded up to a multiple of ``min_shards`` (at most one per pair), spread over the runs by rows
(each run at least one file, files of a run balanced by rows, at pair boundaries). So the local
export's rules still hold: a pair never spans two files, at most ``max_shard_bytes`` per file
(the same estimate), at least ``min_shards`` files per split and a multiple of it where there
are enough pairs, the same rows per row group; files are less even in rows. Row groups restart
at each file, so they differ where files do.

**Reading** (:func:`read`) gives a ``ray.data.Dataset`` of per-text examples, each with its pair's
band groups as ``(C, H, W)`` numpy arrays in their dtype (``uint16`` S2, ``float32`` S1 and
``image``), ``bbox``/``point`` as float64 arrays, other columns as ``iter_examples`` gives them.
One read task per row group of the texts config joins its texts with the ``-imagery`` rows of its
pairs (the two configs list the pairs in the same order), and yields blocks of at most Ray's
target block size. It works on a local export folder and a Hub repo (``org/name`` or
``hf://datasets/org/name``, read through fsspec; the tests here have no network, so the Hub path is
untested). Ray Data does not keep the order of rows unless
``ds.context.execution_options.preserve_order = True``; with it, rows come in the export's order,
that of ``iter_examples``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from . import annotations as ann
from . import export as ex
from . import preview
from .config import features_for
from .imagery_table import PairBands, array3d, array3d_values
from .layout import parent_dir

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


@contextlib.contextmanager
def connected(address: Optional[str] = None) -> Iterator[None]:
    """Use the Ray this process is connected to, else connect to ``address`` (``None``: ``RAY_ADDRESS`` or a new
    local Ray) for the block, and disconnect after it."""
    ray = _ray()
    if ray.is_initialized():
        if address is not None and not _same_cluster(address):
            raise ValueError(f"this process is already connected to the Ray cluster at "
                             f"{ray.get_runtime_context().gcs_address}, not {address}: call ray.shutdown() first, "
                             f"or leave ray_address out to use it")
        yield
        return
    _check_reachable(address if address is not None else os.environ.get("RAY_ADDRESS"))
    ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


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
    """``bentxt.export.export`` on Ray: prepare on this machine, write the files with ``num_workers`` Ray workers.

    ``ray_address``: a running cluster (``"host:6379"``, ``"auto"``); ``None`` uses the Ray this
    process is connected to, else ``RAY_ADDRESS``, else a local Ray started for the call.
    ``num_workers``: Ray tasks writing at a time (default: the cluster's CPUs, at most one per tile run).
    ``num_proc`` prepares the cache, as in the local export. The other options are the local
    export's; ``inline_pixels=True`` (small configs only) is refused: use the local export. The
    cache and ``output_dir`` must be on storage all nodes share (see the module docstring).
    """
    _refuse_inline(inline_pixels)
    with connected(ray_address):  # first: a wrong address fails before a long preparation
        builder = ex.prepared(config, data_dir=data_dir, data_files=data_files, cache_dir=cache_dir, num_proc=num_proc,
                              progress=progress, **config_kwargs)
        return export_dataset(builder.as_dataset(), output_dir, builder.config, num_workers=num_workers, name=name,
                              min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                              progress=progress)


def _refuse_inline(inline_pixels: bool) -> None:
    if inline_pixels:
        raise ValueError("inline_pixels=True writes ~20 copies of each pair and is meant for small configs (bench): "
                         "use the local export (engine 'local') for it")


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
    """``bentxt.export.export_dataset`` on Ray, for a ``DatasetDict`` prepared by the builder (its cache is shared)."""
    _refuse_inline(inline_pixels)
    config, name, expected = ex.checked_input(dataset, config, name, min_shards, max_shard_bytes, **config_kwargs)
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be at least 1")
    splits = {split: part for split, part in dataset.items() if part.num_rows}
    images = [k for k, f in expected.items() if isinstance(f, PairBands)]
    stream = features_for(config, storage="stream")
    kinds = {
        "texts": (name, datasets.Features({k: v for k, v in stream.items() if k not in images})),
        "imagery": (name + ex.IMAGERY_SUFFIX, ex.imagery_features(stream, images)),
    }
    limits = dict(min_shards=min_shards, max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group,
                  max_row_group_bytes=max_row_group_bytes)
    pair_bytes = _array_bytes(stream, images) + ex.PREVIEW_BYTES_ESTIMATE + ex.PAIR_COLUMN_BYTES
    plans = {split: plan_split(part, split, config, _text_bytes(part, images), pair_bytes, **limits)
             for split, part in splits.items()}
    for kind, (config_name, _) in kinds.items():
        n_files = sum(p.files[kind] for p in plans.values())
        if n_files > ex.MAX_FILES_PER_DIRECTORY:
            raise ValueError(f"config {config_name}: {n_files} files would exceed the Hub's {ex.MAX_FILES_PER_DIRECTORY} "
                             f"files per directory; raise max_shard_bytes")

    root = Path(output_dir)
    staging = {kind: root / ex.DATA_DIR / f".{config_name}.ray-incomplete" for kind, (config_name, _) in kinds.items()}
    for folder in staging.values():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    tasks = [task for split in splits for task in plans[split].tasks]
    try:
        with connected(ray_address):
            context = _Context(splits, config, {k: f for k, (_, f) in kinds.items()}, images,
                               {k: str(v.resolve()) for k, v in staging.items()}, uuid.uuid4().hex)
            written = _run(tasks, context, num_workers, progress)
        sizes = _check_written(tasks, written, staging)
        logger.info("config %s: %d files of %d tile runs written by Ray tasks on %d node(s)", name, len(sizes),
                    len(tasks), len({row["node"] for row in written}))
    except BaseException:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    for kind, (config_name, features) in kinds.items():
        split_infos = []
        for split in splits:
            lengths = [stop - start for _, start, stop in plans[split].files_of(kind)]
            split_infos.append(datasets.SplitInfo(
                name=split, num_bytes=sum(sizes[(kind, split, i)] for i in range(len(lengths))),
                num_examples=sum(lengths), shard_lengths=lengths))
        target = root / ex.DATA_DIR / config_name
        shutil.rmtree(target, ignore_errors=True)  # a re-export must not leave shards of the old shard count behind
        staging[kind].rename(target)
        info = datasets.DatasetInfo(
            features=features,
            splits=datasets.SplitDict({s.name: s for s in split_infos}),
            download_size=sum(f.stat().st_size for f in target.glob("*.parquet")),
            dataset_size=sum(s.num_bytes for s in split_infos),
        )
        ex.update_card(root, config_name, info)
    return root


def _array_bytes(features: datasets.Features, images: Sequence[str]) -> int:
    """Bytes of one pair's arrays as written (the streamed ``Array3D`` shapes): the local export's estimate."""
    return sum(int(np.prod(features[k].shape)) * np.dtype(features[k].dtype).itemsize for k in images)


def _text_bytes(part: datasets.Dataset, images: Sequence[str]) -> float:
    """Arrow bytes per text row without the image references: the local export's estimate."""
    texts = part.remove_columns(list(images)) if images else part
    return max(texts.data.nbytes / max(texts.data.num_rows, 1), 1.0)


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TileTask:
    """One Ray task: the files of one tile run of a split. ``texts``: (file, first row, stop row) in the split's
    rows; ``imagery``: (file, first pair, stop pair) in its pairs; files are numbered within the split."""

    split: str
    tile: str
    texts: Tuple[Tuple[int, int, int], ...]
    imagery: Tuple[Tuple[int, int, int], ...]
    patch_starts: np.ndarray  # the split's: row of each pair's first text, then the row count
    rows_per_group: Dict[str, int]
    files: Dict[str, int]  # the split's file count per kind (for the names)


@dataclass(frozen=True)
class SplitPlan:
    tasks: Tuple[TileTask, ...]
    files: Dict[str, int]

    def files_of(self, kind: str) -> List[Tuple[int, int, int]]:
        return sorted(f for t in self.tasks for f in getattr(t, kind))


def tile_runs(part: datasets.Dataset, starts: np.ndarray) -> List[Tuple[str, int, int]]:
    """``(tile, first pair, stop pair)``: maximal runs of consecutive pairs of one S2 tile, in the split's order.

    The builder lists a folder or LMDB source's pairs by name and an archive's in archive order,
    which keep a tile's pairs together; a tile whose pairs are not consecutive gets one run each time.
    """
    ids = part.with_format("arrow", columns=["patch_id"])[:]["patch_id"]
    tiles = [tile_of(p) for p in ids.take(pa.array(starts[:-1])).to_pylist()]
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


def plan_split(part: datasets.Dataset, split: str, config, text_bytes: float, pair_bytes: float, *, min_shards: int,
               max_shard_bytes: int, rows_per_group: Optional[int], max_row_group_bytes: int) -> SplitPlan:
    """Every file of one split, texts and imagery, grouped into one task per tile run (see the module docstring)."""
    starts = ex.patch_starts(part, config.key_column)
    n_pairs = len(starts) - 1
    pair_index = np.arange(n_pairs + 1, dtype=np.int64)
    runs = tile_runs(part, starts)
    limits = dict(max_shard_bytes=max_shard_bytes, rows_per_group=rows_per_group, max_row_group_bytes=max_row_group_bytes)
    local = {  # what the local export would do with this split: its file count and rows per row group
        "texts": ex.plan_shards(starts, text_bytes, min_shards=min_shards, **limits),
        "imagery": ex.plan_shards(pair_index, pair_bytes, min_shards=min_shards, row_starts=starts, **limits),
    }
    row_of = {"texts": starts, "imagery": pair_index}  # where each pair begins, in each kind's rows
    per_row = {"texts": text_bytes, "imagery": pair_bytes}
    cuts: Dict[str, List[List[Tuple[int, int]]]] = {}
    for kind, position in row_of.items():
        rows = [int(position[b] - position[a]) for _, a, b in runs]
        counts = files_per_run(rows, [b - a for _, a, b in runs], per_row[kind], len(local[kind].bounds), min_shards,
                               max_shard_bytes)
        cuts[kind] = []
        for (_, a, b), k in zip(runs, counts):
            run = ex.plan_shards(position[a : b + 1] - position[a], per_row[kind], min_shards=k,
                                 max_shard_bytes=2**62, rows_per_group=1)
            cuts[kind].append([(int(position[a] + s), int(position[a] + e)) for s, e in run.bounds])
    files = {kind: sum(len(c) for c in cuts[kind]) for kind in cuts}
    groups = {kind: local[kind].rows_per_group for kind in local}
    tasks, numbered = [], {kind: 0 for kind in cuts}
    for j, (tile, _, _) in enumerate(runs):
        entries = {}
        for kind in cuts:
            entries[kind] = tuple((numbered[kind] + i, s, e) for i, (s, e) in enumerate(cuts[kind][j]))
            numbered[kind] += len(cuts[kind][j])
        tasks.append(TileTask(split, tile, entries["texts"], entries["imagery"], starts, groups, files))
    return SplitPlan(tuple(tasks), files)


# ----------------------------------------------------------------------------- the Ray job


@dataclass
class _Context:
    """What every writing task needs (the prepared splits pickle as references to the cache files)."""

    splits: Mapping[str, datasets.Dataset]
    config: object
    features: Mapping[str, datasets.Features]  # per kind
    images: Sequence[str]
    staging: Mapping[str, str]  # per kind
    job: str = ""  # names this export: a worker process keeps its writer across the job's tasks


class _TileWriter:
    """Writes the files of tile tasks; one per worker process and export (see :func:`_write_task`)."""

    def __init__(self, context: _Context, tasks: Sequence[TileTask]):
        self.context, self.tasks = context, list(tasks)
        self._texts: Dict[str, datasets.Dataset] = {}

    def texts(self, split: str) -> datasets.Dataset:
        """A split's rows without the image references, as Arrow tables (made once per split and process)."""
        if split not in self._texts:
            part, images = self.context.splits[split], list(self.context.images)
            self._texts[split] = (part.remove_columns(images) if images else part).with_format("arrow")
        return self._texts[split]

    def __call__(self, number: int) -> List[dict]:
        """Every file of task ``number``: a row per file (kind, split, index, Arrow bytes, node)."""
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        task, out = self.tasks[number], []
        for kind, entries in (("texts", task.texts), ("imagery", task.imagery)):
            for index, start, stop in entries:
                nbytes = self.write(task, kind, index, start, stop)
                out.append({"kind": kind, "split": task.split, "index": index, "nbytes": nbytes, "node": node})
        return out

    def write(self, task: TileTask, kind: str, index: int, start: int, stop: int) -> int:
        """One file, a row group at a time (pixels decoded once per pair); returns its Arrow bytes."""
        features = self.context.features[kind]
        path = Path(self.context.staging[kind]) / ex.shard_name(task.split, index, task.files[kind])
        step = task.rows_per_group[kind]
        nbytes = 0
        with ex.parquet_writer(features, path) as writer:
            for a in range(start, stop, step):
                b = min(a + step, stop)
                table = self.texts(task.split)[a:b] if kind == "texts" else self.pairs(task, a, b)
                writer.write_table(table.select(list(features)).cast(writer.schema))
                nbytes += table.nbytes
        return nbytes

    def pairs(self, task: TileTask, a: int, b: int) -> pa.Table:
        """Rows of the ``-imagery`` config for pairs ``a:b``: a preview, the pair columns, the band arrays."""
        context, part = self.context, self.context.splits[task.split]
        first = task.patch_starts[a:b].tolist()  # each pair's first text row carries the pair columns
        table = self.texts(task.split).select(first)[:].select(list(ann.PATCH_COLUMNS))
        images = list(context.images)
        pixels = part.select(first).with_format("numpy", columns=images)[:] if images else {}
        features = context.features["imagery"]
        for k in images:
            table = table.append_column(pa.field(k, features[k]()), array3d(pixels[k], features[k]))
        sensor = preview.preview_sensor(context.config.sensors)
        pngs = [preview.to_png(preview.base_quicklook({k: pixels[k][i] for k in images}, sensor, context.config.image_bands))
                for i in range(b - a)]
        column = pa.StructArray.from_arrays([pa.array(pngs, pa.binary()), pa.nulls(len(pngs), pa.string())],
                                            names=["bytes", "path"])
        return table.add_column(0, pa.field(ex.PREVIEW, column.type), column)


#: this process's writer of the running export (Ray reuses worker processes across tasks and exports)
_WRITER: Dict[str, _TileWriter] = {}


def _write_task(number: int, context: _Context, tasks: Sequence[TileTask]) -> List[dict]:
    """The Ray task: the files of one tile run. The writer (and the splits it opened) is kept for the job's next tasks."""
    writer = _WRITER.get(context.job)
    if writer is None:
        _WRITER.clear()  # an earlier export's writer holds its datasets: let them go
        writer = _WRITER[context.job] = _TileWriter(context, tasks)
    return writer(number)


def _run(tasks: Sequence[TileTask], context: _Context, num_workers: Optional[int], progress: bool) -> List[dict]:
    """Run every tile task, at most ``workers`` at a time, largest first; a row per written file."""
    ray = _ray()
    if not tasks:
        return []
    workers = max(1, min(num_workers or int(ray.cluster_resources().get("CPU", 1)), len(tasks)))
    # system failures (a worker process or node lost) are retried; an error of the writer fails the export
    remote = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(_write_task)
    shared = ray.put(context), ray.put(list(tasks))  # sent once, resolved by each task
    size = [sum(e - s for _, s, e in t.imagery) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -size[i])  # the last tasks to start are the short ones
    running: Dict[object, int] = {}
    written: List[dict] = []
    with tqdm(total=sum(size), desc=f"export on Ray ({workers} workers)", unit="pairs", disable=not progress) as bar:

        def collect_one() -> None:
            done, _ = ray.wait(list(running), num_returns=1)
            written.extend(ray.get(done[0]))
            bar.update(size[running.pop(done[0])])

        try:
            for number in order:
                if len(running) >= workers:
                    collect_one()
                running[remote.remote(number, *shared)] = number
            while running:
                collect_one()
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
    return written


def _check_written(tasks: Sequence[TileTask], written: Sequence[dict],
                   staging: Mapping[str, Path]) -> Dict[Tuple[str, str, int], int]:
    """Arrow bytes per planned file, after checking that each was written once and is on disk."""
    sizes: Dict[Tuple[str, str, int], int] = {}
    for row in written:
        key = (str(row["kind"]), str(row["split"]), int(row["index"]))
        sizes[key] = int(row["nbytes"])  # a retried task writes its files again: the last one counts
    planned = {(kind, t.split, i): ex.shard_name(t.split, i, t.files[kind])
               for t in tasks for kind in ("texts", "imagery") for i, _, _ in getattr(t, kind)}
    missing = [name for key, name in planned.items() if key not in sizes or not (staging[key[0]] / name).exists()]
    if missing:
        raise RuntimeError(f"the Ray export is missing {len(missing)} written file(s), e.g. {missing[:3]}: on a cluster, "
                           f"output_dir must be on storage every node shares, at the same path")
    return sizes


# ----------------------------------------------------------------------------- reading


def _url(root_or_repo: Union[str, Path]) -> str:
    """A local folder (absolute), an fsspec URL as given, or a Hub repo id as ``hf://datasets/<id>``."""
    path = str(root_or_repo)
    if "://" in path:
        return path.rstrip("/")
    if os.path.exists(path):
        return os.path.abspath(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", path) and not path.startswith("."):
        return f"hf://datasets/{path}"
    raise FileNotFoundError(f"{path} is neither an export folder nor a Hub dataset repo id ('org/name')")


def _fs(url: str, storage_options: Optional[dict]):
    import fsspec

    return fsspec.core.url_to_fs(url, **(storage_options or {}))


@dataclass(frozen=True)
class ReadPart:
    """One read task: a row group of a texts file, and where the ``-imagery`` rows of its pairs are."""

    texts_file: str
    group: int
    rows: int
    segments: Tuple[Tuple[str, int, int, int], ...]  # (imagery file, row group, first row, stop row), in pair order


@dataclass(frozen=True)
class _ReadContext:
    url: str
    storage_options: Optional[dict]
    text_features: datasets.Features
    image_features: Dict[str, datasets.Array3D]  # the band columns (of the imagery config, or inline)
    inline: bool


def plan_read(url: str, name: str, split: str, storage_options: Optional[dict] = None) -> Tuple[_ReadContext, List[ReadPart]]:
    """The read tasks of one split of an exported config: the driver reads the footers and the texts' ``patch_id``."""
    import pyarrow.parquet as pq

    fs, inner = _fs(url, storage_options)
    inner = inner.rstrip("/")

    def files(config: str) -> List[str]:
        return sorted(fs.glob(f"{inner}/{ex.DATA_DIR}/{config}/{split}-*.parquet"))

    texts_files = files(name)
    if not texts_files:
        configs = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(f"{inner}/{ex.DATA_DIR}/*"))
        raise ValueError(f"{url}: no {split} files for config {name!r} (configs here: {configs})")
    with fs.open(texts_files[0], "rb") as f:
        features = datasets.Features.from_arrow_schema(pq.read_schema(f))
    arrays = {k: f for k, f in features.items() if isinstance(f, datasets.Array3D)}
    inline = bool(arrays)
    text_features = datasets.Features({k: f for k, f in features.items() if k not in arrays and k != ex.PREVIEW})
    parts: List[ReadPart] = []
    if inline:
        for path in texts_files:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            parts += [ReadPart(path, g, meta.row_group(g).num_rows, ()) for g in range(meta.num_row_groups)]
        return _ReadContext(url, storage_options, text_features, arrays, True), parts

    pair_files = files(name + ex.IMAGERY_SUFFIX)
    if not pair_files:
        raise ValueError(f"{url}: config {name!r} has no pixels and there is no {name}{ex.IMAGERY_SUFFIX} {split} file")
    with fs.open(pair_files[0], "rb") as f:
        pair_features = datasets.Features.from_arrow_schema(pq.read_schema(f))
    arrays = {k: f for k, f in pair_features.items() if isinstance(f, datasets.Array3D)}
    located: List[Tuple[str, int, int]] = []  # per row group of the imagery files: (file, group, rows)
    for path in pair_files:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        located += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    group_start = np.concatenate([[0], np.cumsum([n for _, _, n in located])]).astype(np.int64)

    def segments(first: int, stop: int) -> Tuple[Tuple[str, int, int, int], ...]:
        out = []
        k = int(np.searchsorted(group_start, first, side="right")) - 1
        while first < stop:
            path, group, n = located[k]
            end = min(stop, int(group_start[k]) + n)
            out.append((path, group, first - int(group_start[k]), end - int(group_start[k])))
            first, k = end, k + 1
        return tuple(out)

    ordinal, previous = 0, None
    for path in texts_files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for g in range(parquet.metadata.num_row_groups):
                keys = parquet.read_row_group(g, columns=["patch_id"])["patch_id"].combine_chunks()
                n = len(keys)
                if not n:
                    continue
                changes = int(pc.sum(pc.not_equal(keys.slice(1), keys.slice(0, n - 1))).as_py() or 0)
                first = ordinal - (1 if keys[0].as_py() == previous else 0)  # a pair may straddle two row groups
                stop = first + changes + 1
                if stop > group_start[-1]:
                    raise ValueError(f"{url}: config {name!r} ({split}) has more pairs than {name}{ex.IMAGERY_SUFFIX}")
                parts.append(ReadPart(path, g, n, segments(first, stop)))
                ordinal, previous = stop, keys[n - 1].as_py()
    if ordinal != group_start[-1]:
        raise ValueError(f"{url}: config {name!r} ({split}) has {ordinal} pairs, {name}{ex.IMAGERY_SUFFIX} {group_start[-1]}")
    return _ReadContext(url, storage_options, text_features, arrays, False), parts


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

    fs, _ = _fs(context.url, context.storage_options)
    pixel_bytes = sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in context.image_features.values())
    step = max(1, block_bytes // max(pixel_bytes, 1))
    columns = list(context.text_features)
    with fs.open(part.texts_file, "rb") as f:
        texts = pq.ParquetFile(f).read_row_group(part.group, columns=columns + (list(context.image_features) if context.inline else []))
    texts = _tensor_columns(texts, context.text_features)

    def block(rows: pa.Table, arrays: Mapping[str, np.ndarray]) -> pa.Table:
        for k, values in arrays.items():
            rows = rows.append_column(k, ArrowTensorArray.from_numpy(np.ascontiguousarray(values)))
        return rows

    if context.inline:
        for a in range(0, texts.num_rows, step):
            rows = texts.slice(a, step)
            arrays = {k: array3d_values(rows[k], f.shape).astype(f.dtype, copy=False) for k, f in context.image_features.items()}
            yield block(rows.drop_columns(list(context.image_features)), arrays)
        return
    keys = texts["patch_id"].combine_chunks()
    n = len(keys)
    changed = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False) if n > 1 else np.zeros(0, bool)
    pair_of_row = np.concatenate([[0], np.cumsum(changed)]).astype(np.int64)  # the row's pair, counted in this group
    row_start = np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)
    s1_names = texts["s1_name"].combine_chunks()
    opened: Dict[str, object] = {}
    pair = 0
    try:
        for path, group, a, b in part.segments:
            if path not in opened:
                handle = fs.open(path, "rb")
                opened[path] = (handle, pq.ParquetFile(handle))
            pairs = opened[path][1].read_row_group(group, columns=[*ex.PAIR_KEYS, *context.image_features]).slice(a, b - a)
            m = pairs.num_rows
            firsts = pa.array(row_start[pair : pair + m])
            for column, own in (("patch_id", keys), ("s1_name", s1_names)):
                if pairs[column].to_pylist() != own.take(firsts).to_pylist():
                    raise ValueError(f"{part.texts_file} row group {part.group}: its pairs are not those of {path} "
                                     f"row group {group} (the texts and -imagery configs must list the pairs in the same order)")
            arrays = {k: array3d_values(pairs[k], f.shape).astype(f.dtype, copy=False) for k, f in context.image_features.items()}
            lo, hi = int(row_start[pair]), int(row_start[pair + m])
            for r in range(lo, hi, step):
                e = min(r + step, hi)
                index = pair_of_row[r:e] - pair
                yield block(texts.slice(r, e - r), {k: v[index] for k, v in arrays.items()})
            pair += m
    finally:
        for handle, _ in opened.values():
            handle.close()


def _datasource(context: _ReadContext, parts: Sequence[ReadPart]):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    pixel_bytes = sum(int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for f in context.image_features.values())

    class BigEarthNetTxtExport(Datasource):
        """One read task per row group of the texts config (see :func:`read`)."""

        def estimate_inmemory_data_size(self) -> Optional[int]:
            return int(sum(p.rows for p in parts) * (pixel_bytes + 600))

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None, data_context=None):
            block_bytes = int(getattr(data_context, "target_max_block_size", None) or 128 * 2**20)
            tasks = []
            for part in parts:
                files = (part.texts_file, *dict.fromkeys(s[0] for s in part.segments))
                meta = BlockMetadata(num_rows=part.rows, size_bytes=int(part.rows * (pixel_bytes + 600)), exec_stats=None,
                                     input_files=files)
                tasks.append(ReadTask(lambda part=part: read_part(context, part, block_bytes), meta,
                                      per_task_row_limit=per_task_row_limit))
            return tasks

    return BigEarthNetTxtExport()


def read(root_or_repo: Union[str, Path], name: str, split: str, *, storage_options: Optional[dict] = None):
    """A ``ray.data.Dataset`` of the per-text examples of ``split`` of the exported config ``name``.

    ``root_or_repo``: an export folder (``bentxt.export`` or :func:`export`), any fsspec URL of one,
    or a Hub dataset repo id (``org/name``, ``org/name@revision``) read as ``hf://datasets/...``
    (``storage_options``, e.g. ``{"token": ...}``, go to fsspec; untested here: no network).
    Each row holds the text columns, ``bbox``/``point`` as float64 arrays, and the pair's band
    groups (or ``image``) as ``(C, H, W)`` arrays in their dtype: the values of
    ``bentxt.export.iter_examples`` (in its order with ``preserve_order``, see the module
    docstring). For torch: ``ds.iter_torch_batches(collate_fn=torch_collate)`` (strings stay lists),
    or ``select_columns`` the arrays; Ray Train workers get theirs with
    ``ray.train.get_dataset_shard``. On a cluster, a local folder must be on shared storage.
    """
    ray = _ray()
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


__all__ = ["export", "export_dataset", "read", "torch_collate", "connected", "tile_of", "plan_split", "files_per_run",
           "plan_read", "EXTRA"]
