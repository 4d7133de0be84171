"""The join of texts and imagery, in one place for preparing and for streaming.

Texts are grouped by image pair (``annotations.group_by_patch``). Each sensor's
imagery is read once, in its source's own order, and every text of a pair
shares the pair's pixels:

- **preparing** makes sure each sensor's imagery store (``bentxt.cache.store``:
  one per source, shared by every config) holds the selected pairs: one pass
  per archive over what it lacks, archives in parallel (``num_proc``). S1 and
  S2 are sorted differently, and each store keeps its source's order, so the
  join is index bookkeeping (pair -> store row), with no join buffer and no
  staging copy. Text rows then name their pair's store and row.
- **streaming** reads the driving sensor (S2, or S1 for ``s1-*``) front to
  back; for ``s1s2`` from archives the S1 side is first written to an imagery
  table in a spill folder beside the cache, then read by row.

Both give the same examples in the same order: pairs in the driving sensor's
source order, texts of a pair by ``ID``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bentxt.text import annotations as ann
from bentxt import compat
from bentxt.cache import diskspace
from bentxt.cache import lifetime
from bentxt.imagery import geo, readers
from bentxt.text import grammar as text
from bentxt.bands import BandGroup, groups_for_sensors
from bentxt.config import NO_BOX, NO_OPTIONS, NO_POINT, BigEarthNetTxtConfig, TASKS, text_features
from bentxt.errors import BigEarthNetTxtError
from bentxt.cache import store as store_module
from bentxt.cache.imagery_table import ImageryTables, ImageryWriter
from bentxt.cache.pair_bands import PairBands
from bentxt.cache.store import ImageryStore
from bentxt.imagery.layout import NAME_COLUMN, display_name
from bentxt.imagery.raster import RasterError, stack_image
from bentxt.sources import ImageSource, is_url, spill_notice

logger = logging.getLogger("bigearthnet_txt")

#: texts a text-writing process gets at least (fewer: the pool costs more than it saves)
TEXTS_PER_PROCESS = 100_000
#: Arrow bytes of a text row, about (texts ~150-700 B, parsed columns, store references): tables are cut so that
#: ``datasets`` can start a new shard every ``max_shard_size``
TEXT_ROW_BYTES = 400
#: rows of a type from which :func:`text_columns` parses them in bulk: a bulk parse costs ~0.5 ms a call
#: (Arrow compiles its RE2 patterns on each call), what ``parse_row`` takes for ~100 mcq or ~250 box rows;
#: a streamed image pair has ~20 texts
BULK_PARSE_MIN_ROWS = 200


class MissingPatchError(BigEarthNetTxtError, ValueError):
    """A requested image pair is not in the imagery."""


class EmptySelectionError(BigEarthNetTxtError, ValueError):
    """A config selects no text, or skipping left none: the message says which option did it."""


# ----------------------------------------------------------------------------- texts


def select_annotations(config: BigEarthNetTxtConfig, urlpath: str, split: Optional[str], dlc,
                       filters_checked: bool = False, texts_later: bool = False, streamed: bool = False) -> ann.PatchIndex:
    """Read, check and group the config's rows; filter values are validated against the data first.

    ``texts_later`` (preparing): ``input`` / ``output`` stay in the parquet
    until :func:`write_texts` parses them into the texts file, so memory holds
    only the per-row codes, IDs and pair columns (~0.5 GB for s1s2-all at
    full scale instead of ~2.5 GB). ``streamed`` (streaming): a sparse
    selection's texts are decoded in the background as the stream goes
    (``ann.StreamedTexts``); the caller closes ``index.streamed``.
    """
    if not filters_checked:
        check_filters(config, urlpath, dlc)
    selection, key = config.selection(split), config.key_column
    later: Union[ann.SortedTexts, ann.StreamedTexts, None] = None
    if texts_later:
        table, later = ann.read_sorted_selection(urlpath, selection, key, download_config=dlc)
    elif streamed:
        table, later = ann.read_streamed_selection(urlpath, selection, key, download_config=dlc)
    else:  # sorted while reading: the bulky text columns are placed straight into sorted order
        table = ann.read_selection(urlpath, selection, download_config=dlc, sort_by=key)
    where = display_name(urlpath)
    try:
        if not table.num_rows:
            raise EmptySelectionError(f"{where}: config {config.name!r} selects no text: "
                                      f"{describe_selection(config, split)}")
        index = ann.group_by_patch(table, key, later)
        ann.check_patch_pairs(index, where)
        ann.check_pair_names(index.table.select(["ID", "patch_id", "s1_name"]).take(pa.array(index.starts[:-1])), where)
    except BaseException:
        if isinstance(later, ann.StreamedTexts):
            later.close()
        raise
    return index


def check_filters(config: BigEarthNetTxtConfig, urlpath: str, dlc) -> None:
    """Filter values (countries, seasons, ...) must occur in the data: a typo is an error, not an empty split."""
    if any(v is not None for v in config.filters.values()):
        present = ann.distinct_values(urlpath, list(ann.FILTER_COLUMNS.values()), TASKS[config.task], dlc)
        ann.check_filter_values(config.filters, present)


def describe_selection(config: BigEarthNetTxtConfig, split: Optional[str] = None) -> str:
    parts = [f"task {config.task!r} (types {list(TASKS[config.task])})", f"splits {list((split,) if split else config.splits)}"]
    parts += [f"{option}={list(value)}" for option, value in config.filters.items() if value is not None]
    return "no row has " + " and ".join(parts)


#: what :func:`text_columns` returns, in order: the per-text features
TEXT_COLUMNS: Tuple[str, ...] = tuple(text_features())
#: the Arrow type of the ``options`` column
OPTIONS_TYPE = datasets.Features(text_features()).arrow_schema.field("options").type
_NO_OPTIONS = pa.array([NO_OPTIONS], OPTIONS_TYPE)


def text_columns(config: BigEarthNetTxtConfig, rows: pa.Table) -> Dict[str, pa.Array]:
    """The per-text feature columns of a block of text rows, in one vectorised pass (preparing and streaming).

    Rows whose type carries structure are parsed in bulk with Arrow compute
    when a block has many (``text.fast_boxes``: boxes and points of
    ``bounding box`` rows; ``text.fast_options``: options of ``mcq`` rows).
    The rows those leave out, and all of a small block, go through
    ``text.parse_row``, which parses them or raises the row's
    ``AnnotationError``, type by type in row order: results and errors are
    ``parse_row``'s either way. Binary answers are checked with Arrow compute
    (only the first invalid one goes to the parser, for its message), and tags
    are replaced with ``replace_substring`` (the publisher's order: ``<ref>``,
    ``</ref>``, ``<point>``, ``</point>``). Rows of other types get the
    fixed-size "none" values, never nulls.
    """
    n = rows.num_rows
    kinds = _plain(rows["type"])
    ids = _plain(rows["ID"])
    inputs, outputs = _plain(rows["input"]), _plain(rows["output"])
    boxes, points = np.tile(np.array(NO_BOX), (n, 1)), np.tile(np.array(NO_POINT), (n, 1))
    # the options column is gathered at the end: text j gets row option_of[j] of the concatenated option_lists
    option_lists, option_of = [_NO_OPTIONS], np.zeros(n, dtype=np.int64)

    def add_options(where: np.ndarray, lists: pa.Array) -> None:
        option_of[where] = sum(map(len, option_lists)) + np.arange(len(where))
        option_lists.append(lists)

    for kind in ("bounding box", "mcq", "binary"):
        where = np.flatnonzero(pc.equal(kinds, kind).to_numpy(zero_copy_only=False))
        if not len(where):
            continue
        taken = pa.array(where)
        if kind == "binary":
            accepted = pc.is_in(outputs.take(taken), pa.array(sorted(text.BINARY_ANSWERS))).to_numpy(zero_copy_only=False)
        elif len(where) < BULK_PARSE_MIN_ROWS:  # e.g. one image pair's texts when streaming
            accepted = np.zeros(len(where), dtype=bool)
        elif kind == "bounding box":
            accepted, boxes[where], points[where] = text.fast_boxes(inputs.take(taken), outputs.take(taken))
        else:
            accepted, options = text.fast_options(inputs.take(taken), outputs.take(taken))
            add_options(where[accepted], options)
        # the rest go to the parser; of the binary rows only the first invalid one: for its message
        where = where[~accepted][:1] if kind == "binary" else where[~accepted]
        if not len(where):
            continue
        parsed_options = {}
        taken = pa.array(where)
        for j, row_id, prompt, answer in zip(where, ids.take(taken).to_pylist(), inputs.take(taken).to_pylist(),
                                             outputs.take(taken).to_pylist()):
            parsed = text.parse_row(kind, prompt, answer, row_id)
            if parsed["bbox"] is not None:
                boxes[j] = parsed["bbox"]
            if parsed["point"] is not None:
                points[j] = parsed["point"]
            if parsed["options"] is not None:
                parsed_options[j] = parsed["options"]
        if parsed_options:
            add_options(np.array(list(parsed_options)), pa.array(list(parsed_options.values()), OPTIONS_TYPE))
    for token, tags in ((config.ref_token, ("<ref>", "</ref>")), (config.point_token, ("<point>", "</point>"))):
        if token is not None:
            for tag, replacement in zip(tags, token):
                inputs = pc.replace_substring(inputs, tag, replacement)
    return {
        "ID": ids,
        "input": inputs,
        "output": outputs,
        "type": kinds,
        "category": _plain(rows["category"]),
        "bbox": pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1)), 4),
        "point": pa.FixedSizeListArray.from_arrays(pa.array(points.reshape(-1)), 2),
        "options": pa.concat_arrays(option_lists).take(pa.array(option_of)),
    }


def _plain(column) -> pa.Array:
    """One chunk, dictionary-decoded (the selection keeps some columns dictionary-encoded)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.dictionary_decode() if pa.types.is_dictionary(column.type) else column


def example_table(config: BigEarthNetTxtConfig, features, rows: pa.Table, starts: np.ndarray,
                  images: Mapping[str, pa.Array], parsed: bool = False, schema: Optional[pa.Schema] = None) -> pa.Table:
    """The examples of consecutive pairs as one Arrow table in feature order.

    ``rows``: the pairs' texts, pair after pair; ``starts``: where each pair's
    texts begin in ``rows`` (then ``rows.num_rows``); ``images``: one value per
    pair for each image column (references, or arrays when streaming).
    ``parsed``: ``rows`` already holds :func:`text_columns`' output (:func:`write_texts`).
    ``schema``: ``features.arrow_schema``, when the caller has it (datasets rebuilds it on each access, ~1 ms).
    """
    texts = {c: _plain(rows[c]) for c in TEXT_COLUMNS} if parsed else text_columns(config, rows)
    counts = np.diff(starts)
    if config.layout == "patch":
        first = pa.array(starts[:-1])
        columns = {c: _plain(rows[c]).take(first) for c in ann.PATCH_COLUMNS}
        names = list(texts)
        entries = pa.StructArray.from_arrays([texts[k] for k in names], names=names)
        columns["annotations"] = pa.ListArray.from_arrays(pa.array(starts.astype(np.int32)), entries)
        columns.update(images)
    else:
        pair_of_text = pa.array(np.repeat(np.arange(len(counts)), counts))
        columns = {c: _plain(rows[c]) for c in ann.PATCH_COLUMNS}
        columns.update(texts)
        columns.update({k: v.take(pair_of_text) for k, v in images.items()})
    names = list(features)
    return pa.Table.from_arrays([columns[k] for k in names], names=names).cast(schema or features.arrow_schema)


def examples(config: BigEarthNetTxtConfig, rows: pa.Table, images: Mapping[str, object]) -> Iterator[Tuple[object, dict]]:
    """One pair's examples as dicts (streaming): the prepared path's columns, row by row, with the pair's arrays."""
    texts = {k: v.to_pylist() for k, v in text_columns(config, rows).items()}
    patch = {c: _plain(rows[c])[0].as_py() for c in ann.PATCH_COLUMNS}
    per_text = [{k: texts[k][j] for k in texts} for j in range(rows.num_rows)]
    if config.layout == "patch":
        yield patch[config.key_column], {**patch, "annotations": per_text, **images}
        return
    for annotation in per_text:
        yield annotation["ID"], {**patch, **annotation, **images}


# ----------------------------------------------------------------------------- reports


@dataclass
class JoinReport:
    """Image pairs in the texts but not the imagery (missing), the other way round, and undecodable ones."""

    scope: str
    archive_only: int = 0
    missing: Dict[str, str] = field(default_factory=dict)  # pair key -> where it is missing
    invalid: Dict[str, str] = field(default_factory=dict)  # patch name -> why it was skipped

    def add_invalid(self, name: str, reason: str) -> None:
        self.invalid[name] = reason
        logger.warning("%s: skipped an image pair: %s", self.scope, reason)

    def finish(self, config: BigEarthNetTxtConfig, pairs: int) -> None:
        """Raise for missing pairs unless skipped; say what was skipped; refuse a result that skipping emptied."""
        if self.missing and not config.skip_missing:
            first = ", ".join(f"{k} (not in {w})" for k, w in list(self.missing.items())[:5])
            raise MissingPatchError(
                f"{self.scope}: {len(self.missing)} image pair(s) with texts are missing from the imagery, e.g. {first}. "
                f"Pass skip_missing=True to skip them (they are counted in the report)."
            )
        logger.info(
            "%s: %d image pair(s) joined; %d missing from the imagery%s; %d imagery patch(es) outside this selection "
            "(other splits, filtered out, or without texts)",
            self.scope, pairs - len(self.missing) - len(self.invalid), len(self.missing),
            " (skipped)" if self.missing else "", self.archive_only,
        )
        if self.invalid:
            logger.warning("%s: skipped %d image pair(s) with invalid band files (skip_invalid=True)",
                           self.scope, len(self.invalid))
        if pairs and len(self.missing) + len(self.invalid) >= pairs:
            raise EmptySelectionError(
                f"{self.scope}: every one of the {pairs} selected image pair(s) was skipped "
                f"({len(self.missing)} missing from the imagery with skip_missing=True, {len(self.invalid)} with invalid "
                f"band files with skip_invalid=True): nothing is left to load"
            )


# ----------------------------------------------------------------------------- imagery passes


@dataclass(frozen=True)
class ImageryJob:
    """One pass that writes one sensor's imagery files: an archive front to back, or a list of names by random access.

    Files are ``<prefix>-NNNNN.arrow``, a new one each time ``max_shard_bytes``
    is passed (``download_and_prepare(max_shard_size=)``).
    """

    sensor: str
    source: ImageSource
    groups: Tuple[BandGroup, ...]
    prefix: str
    wanted: Optional[frozenset]  # the names to keep (sequential sources); None: every patch the archive holds
    names: Tuple[str, ...] = ()  # the names to read, in order (random-access sources)
    skip_invalid: bool = False
    dlc: object = None
    part: int = 0  # which archive of the source: positions are (part << 32) + the patch's ordinal in it
    max_shard_bytes: int = 500 << 20
    exclude: frozenset = frozenset()  # with ``wanted`` None: the names the store already holds


@dataclass
class ImageryResult:
    names: List[str]
    archive_only: int
    invalid: List[Tuple[str, str]]  # (patch name, reason)
    files: List[Tuple[str, int]] = field(default_factory=list)  # (path, rows) in row order
    positions: List[int] = field(default_factory=list)  # of ``names``, in the source's order
    grids: List[Tuple[int, Tuple[float, ...]]] = field(default_factory=list)  # of ``names``: EPSG code, transform


def run_imagery_job(job: ImageryJob) -> ImageryResult:
    """Decode, check and append each wanted patch; a pass runs at the speed of its source."""
    with _objects_frozen():
        return _run_imagery_job(job)


@contextmanager
def _objects_frozen():
    """Keep the garbage collector off the objects that exist before a pass.

    A pass allocates ~50 objects per band file, so collections run often, and
    each full one walked everything the process already held (the selection,
    the imported libraries; a forked worker inherits all of it): 4-6 % of a
    pass's CPU time. Nothing the pass allocates is frozen.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_imagery_job(job: ImageryJob) -> ImageryResult:
    bands = [b for g in job.groups for b in g.bands]
    result = ImageryResult([], 0, [])

    def new_writer() -> ImageryWriter:
        path = f"{job.prefix}-{len(result.files):05d}.arrow"
        result.files.append((path, 0))
        return ImageryWriter(path, job.groups)

    writer = new_writer()
    reader = None
    patches: Iterator[Tuple[str, Any]]  # (name, band data), or (name, a call that reads them)
    try:
        if job.source.sequential:
            patches = job.source.patches(job.sensor, bands, job.dlc)
        else:
            reader = job.source.open_reader({job.sensor: tuple(bands)})
            patches = ((name, partial(reader.read, job.sensor, name)) for name in job.names)  # read in the try below
        for ordinal, (name, data) in enumerate(patches):
            if job.source.sequential and job.wanted is not None and name not in job.wanted:
                result.archive_only += 1
                continue
            if name in job.exclude:  # stored by an earlier pass
                continue
            try:
                data = data() if callable(data) else data  # a bad LMDB value is skippable like a bad GeoTIFF
                if data is None:  # not in a random-access source: reported as missing by the caller
                    continue
                readers.decode_patch(data, bands, name, job.source.name, out=writer.slots())  # straight into the batch
                grid = geo.patch_grid(data, job.sensor, name)  # from the tags (~12 us), before the bytes are gone
                position = (job.part << 32) + ordinal if job.source.sequential else -1
                writer.commit(name, position)
            except RasterError as err:
                if not job.skip_invalid:
                    raise
                result.invalid.append((name, str(err)))
                continue
            result.names.append(name)
            result.positions.append(position)
            result.grids.append(grid)
            if writer.bytes_written >= job.max_shard_bytes:
                result.files[-1] = (result.files[-1][0], writer.close())
                writer = new_writer()
    finally:
        result.files[-1] = (result.files[-1][0], writer.close())
        if reader is not None:
            reader.close()
    return result


def imagery_jobs(sensor: str, source: ImageSource, add: Sequence[str], directory: str, num_proc: int, dlc, *,
                 keep_all: bool = False, skip_invalid: bool = False, max_shard_bytes: int = 500 << 20,
                 stored: frozenset = frozenset()) -> List[ImageryJob]:
    """One sensor's jobs: one per archive, or ``num_proc`` chunks of the names to add for random-access sources.

    Every native band group of the sensor is kept, whatever one config asks
    for: the store serves every config of the source. ``keep_all``: every
    patch of the archive but those ``stored`` already.
    """
    groups = groups_for_sensors((sensor,))
    if source.sequential:
        parts = [source] if not hasattr(source, "archives") else [replace(source, paths=p) for p in source.archives]
        wanted = None if keep_all else frozenset(add)
        exclude = stored if keep_all else frozenset()
        return [ImageryJob(sensor, part, groups, os.path.join(directory, f"{sensor}-{k:03d}"), wanted, (), skip_invalid,
                           dlc, k, max_shard_bytes, exclude) for k, part in enumerate(parts)]
    chunks = [tuple(c) for c in np.array_split(np.array(sorted(add), dtype=object), max(1, num_proc)) if len(c)]
    return [ImageryJob(sensor, source, groups, os.path.join(directory, f"{sensor}-{k:03d}"), frozenset(), chunk, skip_invalid,
                       dlc, 0, max_shard_bytes) for k, chunk in enumerate(chunks)]


def run_jobs(jobs: Sequence[ImageryJob], num_proc: int,
             meanwhile: Optional[Callable[[Callable[[], bool]], None]] = None) -> List[ImageryResult]:
    """In this process, or ``num_proc`` forked workers (S1 and S2 archives then decompress at the same time).

    ``meanwhile(stopped)`` runs here while the workers run (the text side of
    preparing: it does not need the imagery); it should return early once
    ``stopped()`` is true, i.e. once a job failed. A failure on either side
    stops the other at once rather than after a pass nobody will use, and a
    worker that dies (killed, out of memory) is an error, not a hang. The
    workers die with this process whatever kills it (``lifetime.die_with_parent``),
    and an error or interrupt here kills them before it propagates.
    """
    if num_proc <= 1 or len(jobs) <= 1:  # the texts first: their errors then come before a whole imagery pass
        if meanwhile is not None:
            meanwhile(lambda: False)
        return [run_imagery_job(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    failed = threading.Event()
    pool = ProcessPoolExecutor(min(num_proc, len(jobs)), mp_context=context,
                               initializer=lifetime.die_with_parent, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(run_imagery_job, job) for job in jobs]

        def note_failure(f: Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                failed.set()

        for future in futures:
            future.add_done_callback(note_failure)
        if meanwhile is not None:
            meanwhile(failed.is_set)
        wait(futures, return_when=FIRST_EXCEPTION)
        for job, future in zip(jobs, futures):
            error = future.exception() if future.done() else None
            if error is not None:
                if isinstance(error, BrokenProcessPool):
                    raise RuntimeError(
                        f"an imagery worker died while writing {job.prefix}-*.arrow from {job.source.name} "
                        f"(killed, or out of memory?); nothing was kept: prepare again"
                    ) from error
                raise error
        return [future.result() for future in futures]
    except BaseException:
        # the workers' own passes would run to their end: stop them now (their zstd children then see a closed pipe)
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(pool) -> None:
    """Kill a pool's workers now (an error or an interrupt: their results are not wanted)."""
    for process in compat.pool_processes(pool):
        try:
            process.kill()
        except (OSError, ValueError):  # ended already, or closed
            pass


def store_of(source: ImageSource, sensor: str, root: str) -> ImageryStore:
    """The imagery store of one sensor of a source (created empty when new)."""
    key = store_module.source_key(source.fingerprint(), list(source.paths))
    return ImageryStore.for_source(root, sensor, key, {"kind": type(source).__name__, "paths": list(source.paths)})


def keeps_every_pair(source: ImageSource, option: Optional[bool]) -> bool:
    """Whether a pass stores every pair its archive holds, not only the selection's.

    From a URL the archive is downloaded anyway (54-63 GB): keeping every pair
    means no later config of that source downloads it again. From local files a
    pass keeps what the config selects, and a later config reads the archive
    again only if it needs pairs the store lacks. ``store_all_pairs`` overrides both.
    """
    if option is not None:
        return bool(option) and source.sequential
    return source.sequential and any(is_url(str(p)) for p in source.paths)


def _why_every_pair(source: ImageSource, option: Optional[bool]) -> str:
    reason = "store_all_pairs=True" if option else "it is read from a URL"
    return f" (and every other pair of the archive: {reason})"


def add_to_stores(config: BigEarthNetTxtConfig, files: Mapping[str, Any], names: Mapping[str, Sequence[str]],
                  root: str, num_proc: int, dlc, report: JoinReport,
                  meanwhile: Optional[Callable[[Callable[[], bool]], None]] = None,
                  max_shard_bytes: int = 500 << 20) -> Dict[str, ImageryStore]:
    """Make sure each sensor's store holds the named pairs: one pass over what lacks them, in parallel (``num_proc``).

    A pair the store already has costs nothing; a pair an earlier pass found
    absent from the source, or invalid, is not looked for again (the source
    is the same: the store's name fingerprints it). ``meanwhile`` (the text
    side) runs while the passes run, or at once when nothing is to be added.
    """
    sensors = config.sensors
    stores = {sensor: store_of(files[sensor], sensor, root) for sensor in sensors}
    with contextlib.ExitStack() as held:
        passes = {sensor: held.enter_context(stores[sensor].adding()) for sensor in sensors}  # s1 before s2: no deadlock
        jobs: List[ImageryJob] = []
        to_add: Dict[str, set] = {}
        for sensor in sensors:
            store, source = stores[sensor], files[sensor]
            have, absent, invalid = store.rows(), store.absent(), store.invalid()
            for name in names[sensor]:
                if name in invalid:
                    if not config.skip_invalid:
                        raise RasterError(f"{invalid[name]} (found when this pair was first read from {source.name}; "
                                          f"skip_invalid=True skips it; if the file was fixed since, remove "
                                          f"{os.path.join(store.path, store_module.NOT_STORED)})")
                    report.add_invalid(name, invalid[name])
            to_add[sensor] = {n for n in names[sensor] if n not in have and n not in absent and n not in invalid}
            if to_add[sensor]:
                keep_all = keeps_every_pair(source, config.store_all_pairs)
                logger.info(
                    "imagery store %s: adding %d %s pair(s) from %s%s", store.path, len(to_add[sensor]), sensor,
                    source.name, _why_every_pair(source, config.store_all_pairs) if keep_all else "")
                jobs += imagery_jobs(sensor, source, sorted(to_add[sensor]), passes[sensor].folder,
                                     num_proc, dlc, keep_all=keep_all, skip_invalid=config.skip_invalid,
                                     stored=frozenset(have) if keep_all else frozenset(),
                                     max_shard_bytes=max_shard_bytes)
        if not jobs:
            if meanwhile is not None:
                meanwhile(lambda: False)
            return stores
        needed = sum(_bytes_to_add(files[s], s, len(to_add[s])) for s in sensors)  # before a pass of minutes or hours
        what = f"config {config.name}: adding {sum(map(len, to_add.values())):,} image pairs to the imagery store(s)"
        diskspace.check_free_space(root, needed, what)
        try:
            results = run_jobs(jobs, num_proc, meanwhile)
        except OSError as err:
            raise diskspace.describe_enospc(err, root, needed, what) from err
        for sensor in sensors:
            mine = [(job, result) for job, result in zip(jobs, results) if job.sensor == sensor]
            if not mine:
                continue
            written = {name for _, result in mine for name in result.names}
            invalid = {name: reason for _, result in mine for name, reason in result.invalid}
            passes[sensor].commit([f for _, result in mine for f in result.files],
                                  [n for _, result in mine for n in result.names],
                                  [p for _, result in mine for p in result.positions],
                                  [g for _, result in mine for g in result.grids],
                                  absent=sorted(to_add[sensor] - written - set(invalid)), invalid=invalid)
            for job, result in mine:
                report.archive_only += result.archive_only if sensor == config.key_sensor else 0
            for name, reason in invalid.items():
                report.add_invalid(name, reason)
    return stores


#: the stored pixels of a pair are at most this many times its bytes in a .tar.zst (the release: ~1.1x; zstd does
#: not compress Sentinel bands much), so a partial download is not taken to need the whole release's disk
ARCHIVE_EXPANSION = 4


def _bytes_to_add(source: ImageSource, sensor: str, pairs: int) -> int:
    """Disk a pass will need at most: the pairs' pixels, but no more than a local archive can hold."""
    needed = pairs * store_module.pair_bytes(sensor)
    if source.sequential and not any(is_url(str(p)) for p in source.paths):
        try:
            held = sum(os.path.getsize(str(p)) for p in source.paths) * ARCHIVE_EXPANSION
        except OSError:
            return needed
        return min(needed, held)
    return needed


def spill_imagery(config: BigEarthNetTxtConfig, sensor: str, source: ImageSource, names: Sequence[str], folder: str,
                  dlc, report: JoinReport) -> Tuple[ImageryTables, Dict[str, int], Dict[str, Tuple[int, Tuple[float, ...]]]]:
    """Streaming: one sensor's named pairs into a temporary table (no store: nothing of streaming is kept)."""
    jobs = imagery_jobs(sensor, source, names, folder, 1, dlc, skip_invalid=config.skip_invalid)
    results = run_jobs(jobs, 1)
    files = [path for result in results for path, _ in result.files]
    written = [name for result in results for name in result.names]
    for result in results:
        for name, reason in result.invalid:
            report.add_invalid(name, reason)
    grids = {name: grid for result in results for name, grid in zip(result.names, result.grids)}
    return ImageryTables({sensor: files}), {name: row for row, name in enumerate(written)}, grids


# ----------------------------------------------------------------------------- preparing


_POOL_LOCK = threading.Lock()
_POOL_STATE: Dict[str, object] = {"depth": 0, "previous": None}  # preparations running in this process


@contextmanager
def preparing_memory_pool():
    """Arrow allocates through jemalloc while preparing, and while a stream selects its texts, where pyarrow has it.

    Reading, grouping and parsing the texts allocate and free large buffers
    over and over. pyarrow's default pool on Linux, mimalloc, soon returns
    freed pages to the system, and every reuse faults them in again, which is
    slow on VMs. Measured: the texts of the 5,000-pair case read and grouped
    in 280-380 ms with mimalloc, 190-200 ms with jemalloc; at full scale
    (9.55 M rows) 22.9 s and 2.80 GB peak RSS with mimalloc, 21.5 s and
    2.59 GB with jemalloc (the system allocator: 23.8 s, 3.13 GB). A stream
    start at full scale: ``s2-vqa-bench`` 2.5-3.2 s with mimalloc (0.9-2.1 s
    of it in the kernel), 2.2-2.5 s with jemalloc (0.5-0.6 s); ``s2-vqa``
    train 6.8-7.9 s and 6.3 s, both peaking at 1.25-1.46 GB.

    Only pyarrow's own default is replaced: a pool chosen with
    ``ARROW_DEFAULT_MEMORY_POOL`` or ``pa.set_memory_pool`` is kept. The pool
    is process-wide, so overlapping preparations (threads) share one switch,
    undone when the last one ends; jemalloc's unused pages are then released
    (a buffer keeps the pool it came from, so nothing allocated is affected).
    """
    with _POOL_LOCK:
        if _POOL_STATE["depth"] == 0:
            _POOL_STATE["previous"] = _switch_to_jemalloc()
        _POOL_STATE["depth"] += 1
    try:
        yield
    finally:
        with _POOL_LOCK:
            _POOL_STATE["depth"] -= 1
            previous = _POOL_STATE["previous"]
            if _POOL_STATE["depth"] == 0 and previous is not None:
                _POOL_STATE["previous"] = None
                pa.set_memory_pool(previous)
                pa.jemalloc_memory_pool().release_unused()


def _switch_to_jemalloc() -> Optional[pa.MemoryPool]:
    """The pool replaced by jemalloc, or None when nothing was switched."""
    current = pa.default_memory_pool()
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") or current.backend_name != "mimalloc":
        return None
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc (e.g. on Windows)
        return None
    pa.set_memory_pool(pool)
    return current


@dataclass(frozen=True)
class CachePlan:
    """What the text writers need: the selected rows (an Arrow file), pair ranges, each pair's store rows."""

    texts: str
    starts: np.ndarray
    rows: Dict[str, np.ndarray]  # sensor -> each pair's row in that sensor's store
    stores: Dict[str, str]  # sensor -> the store (``<folder>.<generation>``)
    references: Dict[str, np.ndarray]  # sensor -> each pair's reference (the store and the pass that added the pair)
    grids: Dict[str, Tuple[np.ndarray, np.ndarray]]  # sensor -> each pair's EPSG code (n,) and transform (n, 6)
    shards: Dict[str, List[np.ndarray]]  # split -> pair indices per writer shard, in output order
    examples: Dict[str, int]
    store_paths: Dict[str, str]  # sensor -> the store's folder


def log_estimate(config: BigEarthNetTxtConfig, index: ann.PatchIndex) -> None:
    """Tell the user, before the long imagery pass, how large the cache will be (``config.estimate_cache_bytes``)."""
    from bentxt.config import estimate_cache_bytes

    rows, patches = index.table.num_rows, len(index)
    if index.texts is not None:  # still in the parquet: from its footer
        text_bytes = index.texts.text_bytes()
    else:
        text_bytes = sum(int(pc.sum(pc.binary_length(_plain(index.table[c]))).as_py() or 0) for c in ("input", "output"))
    logger.info(
        "config %s (layout=%s): %d annotations on %d image pairs; estimated Arrow cache size %.2f GB",
        config.name, config.layout, rows, patches, estimate_cache_bytes(config, rows, patches, text_bytes) / 1e9,
    )


def plan_cache(config: BigEarthNetTxtConfig, files: Mapping[str, Any], store_root: str, texts: str, num_proc: int,
               dlc, max_shard_bytes: int = 500 << 20) -> CachePlan:
    """Read the texts, add the pairs the source's stores lack, and order each split's pairs like streaming does.

    For a new source the imagery workers start on the selected pair names (a
    quick first pass over a few columns); reading, checking and parsing the
    texts (into ``texts``) happens while they run (``meanwhile``), and a
    failure on either side stops the other. For a source whose stores already
    hold pairs (a second config) the name pass is skipped: the texts come
    first, and a pass runs only for pairs the stores lack.
    """
    urlpath = files["annotations"]
    check_filters(config, urlpath, dlc)
    selected: Dict[str, ann.PatchIndex] = {}
    wanted: Dict[str, List[str]] = {}
    firsts: Dict[str, list] = {}

    def first(column: str) -> list:
        """A column's value for each selected pair (its first row), taken once: ~0.6 s a column at release scale."""
        if column not in firsts:
            firsts[column] = selected["index"].first(column)
        return firsts[column]

    def read_texts(stopped: Callable[[], bool]) -> None:
        index = selected["index"] = select_annotations(config, urlpath, None, dlc, filters_checked=True, texts_later=True)
        log_estimate(config, index)
        for sensor in config.sensors if wanted else ():  # never wrong unless a bug: such a pair would be "missing"
            extra = set(first(NAME_COLUMN[sensor])) - set(wanted[NAME_COLUMN[sensor]])
            if extra:
                raise RuntimeError(f"internal error: {len(extra)} selected {sensor} pair(s) missed by the name pass")
        write_texts(config, index, texts, stopped)

    # A source seen before (its stores hold pairs): the texts first, then only what the stores lack (usually
    # nothing). A new source: a quick names-only pass starts the imagery workers, the texts are read meanwhile.
    seen_before = all(store_of(files[s], s, store_root).num_rows for s in config.sensors)
    if not seen_before:
        wanted = ann.selected_names(urlpath, config.selection(None), [NAME_COLUMN[s] for s in config.sensors], dlc)
    if seen_before or not all(wanted.values()):  # nothing selected: read_texts says which filter emptied it
        read_texts(lambda: False)
        wanted = {NAME_COLUMN[s]: sorted(set(first(NAME_COLUMN[s]))) for s in config.sensors}
    report = JoinReport(f"config {config.name}")
    names = {sensor: wanted[NAME_COLUMN[sensor]] for sensor in config.sensors}
    stores = add_to_stores(config, files, names, store_root, num_proc, dlc, report,
                           meanwhile=None if "index" in selected else read_texts, max_shard_bytes=max_shard_bytes)
    index = selected["index"]
    pair_names = {sensor: first(NAME_COLUMN[sensor]) for sensor in config.sensors}
    rows = {}
    for sensor in config.sensors:
        row_of = stores[sensor].rows()
        rows[sensor] = np.array([row_of.get(name, -1) for name in pair_names[sensor]], dtype=np.int64)
    present = np.ones(len(index), dtype=bool)
    for sensor in config.sensors:
        absent, where = rows[sensor] < 0, files[sensor].name
        for i in np.flatnonzero(absent & present):
            if pair_names[sensor][i] not in report.invalid:
                report.missing[index.keys[i]] = where
        present &= ~absent
    report.finish(config, len(index))

    # streaming's order: the driving sensor's source order (archive order; names for random-access sources)
    key = config.key_sensor
    if files[key].sequential:
        order_key = stores[key].positions()[np.maximum(rows[key], 0)]
    else:
        order_key = np.argsort(np.argsort(np.array(pair_names[key], dtype=object), kind="stable"), kind="stable")
    pair_split = np.array(first("split"), dtype=object)
    per_pair = np.diff(index.starts) if config.layout == "annotation" else np.ones(len(index), dtype=np.int64)
    shards, counts = {}, {}
    for split in config.splits:
        members = np.flatnonzero(present & (pair_split == split))
        if not len(members):  # datasets cannot load a split with no data: leave it out, and say so
            logger.info("config %s: split %s has no rows in this selection and is left out", config.name, split)
            continue
        ordered = members[np.argsort(order_key[members], kind="stable")]
        # a writer process pays off past ~100,000 texts (~1 s of work): datasets starts a pool per split
        n_shards = max(1, min(num_proc, len(ordered), int(np.diff(index.starts)[ordered].sum()) // TEXTS_PER_PROCESS))
        shards[split] = [part for part in np.array_split(ordered, n_shards) if len(part)]
        counts[split] = int(per_pair[ordered].sum())
    identities = {sensor: stores[sensor].reference for sensor in config.sensors}
    references = {sensor: stores[sensor].row_references(rows[sensor]) for sensor in config.sensors}
    grids = {}
    for sensor in config.sensors:
        epsg, transforms = stores[sensor].grids()
        at = np.maximum(rows[sensor], 0)  # (pairs without a row are not written)
        grids[sensor] = (epsg[at], transforms[at]) if len(epsg) else (np.full(len(at), -1, np.int32),
                                                                      np.full((len(at), 6), np.nan))
    return CachePlan(texts, index.starts, rows, identities, references, grids, shards, counts,
                     {s: st.path for s, st in stores.items()})


def write_texts(config: BigEarthNetTxtConfig, rows: Union[pa.Table, ann.PatchIndex], path: str,
                stopped: Callable[[], bool] = lambda: False, rows_per_chunk: int = 100_000) -> None:
    """The selection's texts, parsed and checked (:func:`text_columns`), with their pair columns, to an Arrow file.

    Runs while the imagery workers run (:func:`run_jobs`), so the text side of
    preparing costs no time of its own; a bad text row stops the imagery pass
    at once, and a failed imagery job (``stopped()``) stops this between
    chunks. Written in chunks: memory follows a chunk, not the selection. An
    index whose texts are still in the parquet (``select_annotations(...,
    texts_later=True)``) has them decoded, parsed and placed in its order by
    ``SortedTexts.write``, on two threads.
    """
    if isinstance(rows, ann.PatchIndex):
        if rows.texts is not None:
            # the raw texts are spilled beside the file while it is written: about their size twice (~3 GB at
            # full scale) is needed at once, on top of the imagery pass writing to the same disk meanwhile
            folder, needed = os.path.dirname(os.path.abspath(path)), 2 * rows.texts.text_bytes()
            what = (f"config {config.name}: writing {len(rows.table):,} parsed texts (the texts file and, while it "
                    f"is written, a spill of the raw texts beside it)")
            diskspace.check_free_space(folder, needed, what)
            try:
                rows.texts.write(path, partial(text_columns, config), rows.table.select(list(ann.PATCH_COLUMNS)),
                                 stopped, batch_rows=rows_per_chunk)
            except OSError as err:
                raise diskspace.describe_enospc(err, folder, needed, what) from err
            return
        rows = rows.table
    table = rows
    writer = None
    try:
        for offset in range(0, max(table.num_rows, 1), rows_per_chunk):
            if stopped():
                return
            rows = table.slice(offset, rows_per_chunk)
            chunk = pa.table({**{c: rows[c] for c in ann.PATCH_COLUMNS}, **text_columns(config, rows)})
            if writer is None:
                writer = pa.ipc.new_file(path, chunk.schema)
            writer.write_table(chunk)
    finally:
        if writer is not None:
            writer.close()


def cached_tables(config: BigEarthNetTxtConfig, features, texts: str, starts: np.ndarray,
                  rows: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray],
                  grids: Mapping[str, Tuple[np.ndarray, np.ndarray]], pairs: np.ndarray,
                  rows_per_table: int = 1000) -> Iterator[pa.Table]:
    """Tables of one writer shard: texts from the selection file, pixels as references to the imagery rows.

    A table holds whole pairs, about ``rows_per_table`` examples (the writer
    batch size): ``datasets`` starts a new shard (``max_shard_size``) between tables.
    """
    columns = {name: feature.sensors for name, feature in features.items() if isinstance(feature, PairBands)}
    schema = features.arrow_schema
    pairs = np.asarray(pairs)
    per_pair = (starts[pairs + 1] - starts[pairs]) if config.layout == "annotation" else np.ones(len(pairs), np.int64)
    cuts = np.searchsorted(np.cumsum(per_pair), np.arange(rows_per_table, int(per_pair.sum()), rows_per_table), side="left") + 1
    with pa.memory_map(texts) as source:
        reader = pa.ipc.open_file(source)
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        first_rows = np.cumsum([0] + [batch.num_rows for batch in batches])
        for chunk in np.split(pairs, np.unique(cuts[cuts < len(pairs)])):
            if not len(chunk):
                continue
            counts = starts[chunk + 1] - starts[chunk]
            local = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            text_rows = np.repeat(starts[chunk] - local[:-1], counts) + np.arange(local[-1])
            pair_rows = {s: r[chunk] for s, r in rows.items()}
            pair_references = {s: r[chunk] for s, r in references.items()}
            images = {c: _references(pair_rows, pair_references, sensors, len(chunk)) for c, sensors in columns.items()}
            for sensor, (epsg, transforms) in grids.items():
                images.update(_grid_arrays(geo.grid_columns(sensor, epsg[chunk], transforms[chunk])))
            yield example_table(config, features, _take_rows(batches, first_rows, text_rows), local,
                                images, parsed=True, schema=schema)


def _take_rows(batches: Sequence[pa.RecordBatch], first_rows: np.ndarray, rows: np.ndarray) -> pa.Table:
    """``rows`` of a file's record batches, in that order, taken batch by batch.

    ``Table.take`` on a table of several batches first joins each whole column
    (~1 GB and seconds for each take from the release's 96-batch texts file).
    """
    which = np.searchsorted(first_rows, rows, side="right") - 1
    if len(rows) and (which == which[0]).all():
        return pa.Table.from_batches([batches[which[0]].take(pa.array(rows - first_rows[which[0]]))])
    order = np.argsort(which, kind="stable")
    parts = [batches[k].take(pa.array(rows[order][which[order] == k] - first_rows[k])) for k in np.unique(which)]
    back = np.empty(len(rows), dtype=np.int64)
    back[order] = np.arange(len(rows))
    return pa.Table.from_batches(parts, schema=batches[0].schema).take(pa.array(back))


def _grid_arrays(columns: Mapping[str, np.ndarray]) -> Dict[str, pa.Array]:
    """Map-grid columns as Arrow: EPSG codes as int32, transforms and bounds as fixed-size lists."""
    out: Dict[str, pa.Array] = {}
    for name, values in columns.items():
        if values.ndim == 1:
            out[name] = pa.array(values, pa.int32())
        else:
            out[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float64()), values.shape[1])
    return out


def _references(rows: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], sensors: Sequence[str],
                n: int) -> pa.StructArray:
    """``PairBands`` storage: each pair's row in the store of each sensor the column reads, and that store.

    Only the column's own sensors are filled (an ``s2_10m`` column names no S1
    store): a reference string costs ~28 B a row.
    """
    arrays = {}
    for sensor in ("s1", "s2"):
        filled = sensor in sensors and sensor in rows
        arrays[sensor] = pa.array(rows[sensor], pa.int64()) if filled else pa.nulls(n, pa.int64())
        arrays[f"{sensor}_store"] = pa.array(references[sensor], pa.string()) if filled else pa.nulls(n, pa.string())
    arrays["bytes"] = pa.nulls(n, pa.binary())
    return pa.StructArray.from_arrays([arrays[f.name] for f in PairBands.pa_type], fields=list(PairBands.pa_type))


# ----------------------------------------------------------------------------- streaming


def stream_images(config: BigEarthNetTxtConfig, arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A pair's decoded bands as the streamed example's image columns (the values ``PairBands`` decodes to)."""
    if config.image_bands is not None:
        return {"image": stack_image(arrays, config.image_bands, config.img_size, config.resample)}
    from bentxt.bands import groups_for_sensors

    return {g.name: np.stack([arrays[b] for b in g.bands]) for g in groups_for_sensors(config.sensors)}


def stream_grids(grids: Mapping[str, Tuple[int, Tuple[float, ...]]]) -> Dict[str, object]:
    """A pair's map-grid columns (``geo.geo_features``) as one streamed example holds them."""
    out: Dict[str, object] = {}
    for sensor, (epsg, transform) in sorted(grids.items()):
        columns = geo.grid_columns(sensor, [epsg], [transform])
        out.update({k: (int(v[0]) if k.endswith("_epsg") else v[0].tolist()) for k, v in columns.items()})
    return out


def streamed_examples(config: BigEarthNetTxtConfig, files: Mapping[str, Any], split: str, dlc,
                      spill_dir: str) -> Iterator[Tuple[object, dict]]:
    """Stream one split in the driving sensor's order, reading each patch once.

    The other sensor of an ``s1s2`` config is read by patch: from its reader
    (folders, LMDB), or, for an archive, from an imagery table written first
    into ``spill_dir`` (the two archives are sorted differently, and a merge
    would have to buffer nearly all of one). A sparse split (a bench split)
    gets its texts decoded in the background, the pairs asked for first
    (``ann.StreamedTexts``): its first example waits for the selection and
    its own pair's row groups, not for every text. Memory: the text index
    plus the spilled names; disk: ~116 kB per S1 patch of the split, removed at the end.
    """
    with preparing_memory_pool():  # the same decoding as preparing: 2.2-2.5 s instead of 2.5-3.2 s for a bench start
        index = select_annotations(config, files["annotations"], split, dlc, streamed=True)
    try:
        yield from _streamed_pairs(config, files, split, dlc, spill_dir, index)
    finally:
        if index.streamed is not None:
            index.streamed.close()


def _streamed_pairs(config: BigEarthNetTxtConfig, files: Mapping[str, Any], split: str, dlc, spill_dir: str,
                    index: ann.PatchIndex) -> Iterator[Tuple[object, dict]]:
    """:func:`streamed_examples` once the split's texts are selected."""
    report = JoinReport(f"split {split}")
    key = config.key_sensor
    wanted = config.wanted_bands()
    pair_names = {sensor: index.first(NAME_COLUMN[sensor]) for sensor in config.sensors}
    sides: Dict[str, Any] = {}  # sensor -> a reader, or a _TableSide: read(sensor, name) and close()
    try:
        for sensor in config.sensors:
            if sensor == key:
                continue
            if files[sensor].sequential:
                logger.info("%s", spill_notice(config.name, split, files[sensor], groups_for_sensors((sensor,)),
                                               len(pair_names[sensor]), spill_dir))
                spilled = JoinReport(report.scope)  # its archive-only count is not the split's
                tables, row_of, grids = spill_imagery(config, sensor, files[sensor], pair_names[sensor], spill_dir, dlc,
                                                      spilled)
                report.invalid.update(spilled.invalid)
                sides[sensor] = _TableSide(tables, groups_for_sensors((sensor,)), row_of, grids)
            else:
                sides[sensor] = files[sensor].open_reader(wanted)
        driving = files[key]
        reader = None if driving.sequential else driving.open_reader(wanted)
        sides_closable = [reader] if reader is not None else []
        try:
            seen = np.zeros(len(index), dtype=bool)
            position = index.position()
            if driving.sequential:
                patches = driving.patches(key, wanted[key], dlc)
            else:
                assert reader is not None  # opened above for a random-access source
                patches = ((name, partial(reader.read, key, name)) for name in index.keys)
            for name, data in patches:
                i = position.get(name)
                if i is None:
                    report.archive_only += 1
                    continue
                if callable(data):
                    try:
                        data = data()
                    except RasterError as err:
                        if not config.skip_invalid:
                            raise
                        seen[i] = True
                        report.add_invalid(name, str(err))
                        continue
                if data is None:
                    continue
                seen[i] = True
                decoded = _decode_pair(config, files, sides, {s: pair_names[s][i] for s in config.sensors}, key, data,
                                       report)
                if decoded is not None:
                    arrays, grids = decoded
                    images = {**stream_images(config, arrays), **stream_grids(grids)}
                    yield from examples(config, index.rows(i), images)
            for j in np.flatnonzero(~seen):
                report.missing.setdefault(index.keys[j], driving.name)
        finally:
            for closable in sides_closable:
                closable.close()
        report.finish(config, len(index))
    finally:
        for side in sides.values():
            side.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


class _TableSide:
    """A spilled sensor: its imagery table, read by the pair's row."""

    def __init__(self, tables: ImageryTables, groups: Sequence[BandGroup], rows: Dict[str, int],
                 grids: Dict[str, Tuple[int, Tuple[float, ...]]]):
        self.tables, self.groups, self.rows, self.grids = tables, groups, rows, grids

    def read(self, sensor: str, name: str):
        row = self.rows.get(name, -1)
        if row < 0:
            return None
        return {b: self.tables.take(sensor, g, row)[k] for g in self.groups for k, b in enumerate(g.bands)}

    def close(self) -> None:
        pass


def _decode_pair(config, files, sides, names, key, data, report):
    """Both sensors' wanted bands and map grids of one pair; None (and counted) when missing or skipped as invalid."""
    wanted = config.wanted_bands()
    try:
        arrays = readers.decode_patch(data, wanted[key], names[key], files[key].name)
        grids = {key: geo.patch_grid(data, key, names[key])}
        for sensor, side in sides.items():
            other = side.read(sensor, names[sensor])
            if other is None:
                if names[sensor] in report.invalid:  # skipped while spilling, already counted
                    return None
                report.missing[names[config.key_sensor]] = files[sensor].name
                return None
            arrays.update(readers.decode_patch(other, wanted[sensor], names[sensor], files[sensor].name))
            spilled = isinstance(side, _TableSide)  # decoded arrays: the grid was read while spilling
            grids[sensor] = side.grids[names[sensor]] if spilled else geo.patch_grid(other, sensor, names[sensor])
    except RasterError as err:
        if not config.skip_invalid:
            raise
        report.add_invalid(names[key], str(err))
        return None
    return arrays, grids
