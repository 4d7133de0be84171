"""Each image pair's pixels, once per cache: the imagery tables and the feature that points into them.

Why: about 20 texts share one image pair. An ``Array3D`` per text stores every
pair ~20 times (1.9 TB for ``s1s2-vqa``, 2.7 TB for ``s1s2-all``); no user has
that disk. ``datasets`` keeps large media out of its rows the same way
(``imagefolder`` caches paths, ``Image`` decodes them on access).

Inside a prepared cache folder::

    imagery/s2-00000.arrow   rows in the S2 source's own order: s2_10m, s2_20m, s2_60m (Array3D), name
    imagery/s1-00000.arrow   rows in the S1 source's own order: s1 (Array3D), name

Each is a plain ``datasets`` Arrow file (``Dataset.from_file`` reads it on its
own). Rows of a sensor are numbered across its files in name order. A text row
stores, per image column, ``{"s1": row, "s2": row, "bytes": null}``; the
:class:`PairBands` feature decodes that to the ``(C, H, W)`` array an
``Array3D`` column of the imagery table gives (or, for ``bands=`` configs, to
the resampled ``image``, computed on access from the native bands).

Where the tables are is not stored in the rows: the builder attaches the cache
folder to the features when it returns a dataset (:func:`attach`), so a cache
that moves with its folder keeps working. ``save_to_disk`` and Parquet writing
call :meth:`PairBands.embed_storage`, which puts each row's pixels into its
``bytes`` (like ``Image`` embeds file bytes): a saved folder is self-contained.
"""

from __future__ import annotations

import io
import mmap
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import register_feature

from .bands import GROUP_OF_BAND, BandGroup
from .raster import stack_groups

IMAGERY_DIR = "imagery"
FEATURE_TYPE = "PairBands"


# ----------------------------------------------------------------------------- the imagery table


def imagery_features(groups: Sequence[BandGroup]) -> datasets.Features:
    """One sensor's table: its band groups as ``Array3D``, then the patch name.

    The name comes last so that in every full batch the band values sit at the
    same offsets of the Arrow message (:class:`ImageryWriter` decodes into them).
    """
    return datasets.Features({**{g.name: datasets.Array3D(g.shape, g.dtype) for g in groups}, "name": datasets.Value("string")})


def array3d(stack: np.ndarray, feature: datasets.Array3D) -> pa.ExtensionArray:
    """(n, C, H, W) ndarray -> the ``Array3D`` column ``datasets`` writes, without Python lists (offsets are ranges)."""
    n, c, h, w = stack.shape
    values = pa.array(np.ascontiguousarray(stack, dtype=feature.dtype).reshape(-1))
    rows = pa.ListArray.from_arrays(_offsets(n * c * h, w), values)
    planes = pa.ListArray.from_arrays(_offsets(n * c, h), rows)
    patches = pa.ListArray.from_arrays(_offsets(n, c), planes)
    return pa.ExtensionArray.from_storage(feature(), patches)


@lru_cache(maxsize=64)
def _offsets(lists: int, size: int) -> pa.Array:
    """The offsets of ``lists`` lists of ``size`` items (the same for every full batch: made once)."""
    return pa.array(np.arange(0, lists * size + 1, size, dtype=np.int32))


def array3d_values(column, shape: Tuple[int, ...]) -> np.ndarray:
    """An ``Array3D`` column (or chunk) -> one (rows, *shape) ndarray; zero-copy for a memory-mapped table."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.storage if isinstance(column, pa.ExtensionArray) else column
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).reshape(len(column), *shape)


class DirectFile(io.RawIOBase):
    """A write-only file that bypasses the page cache (``O_DIRECT``) where the OS and file system allow it.

    The imagery tables are most of a cache (~275 kB per pair, ~128 GB for the
    release) and are written once, front to back. Buffered writes go through
    the page cache, whose first touch of fresh pages is slow on virtual
    machines (measured 270-460 MB/s here, against 1.3-1.5 GB/s direct), and
    they evict everything else from memory. Writes are collected in two
    page-aligned buffers that a thread writes out in whole blocks while the
    other fills (the write itself releases the GIL); the last block is padded
    and the file truncated to its real size. Where ``O_DIRECT`` is missing or
    refused (tmpfs, macOS) it is an ordinary file, written the same way.
    """

    BLOCK = 4096

    def __init__(self, path: str, buffer_bytes: int = 8 << 20):
        from concurrent.futures import ThreadPoolExecutor

        super().__init__()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self.direct = hasattr(os, "O_DIRECT")
        try:
            self._fd = os.open(path, flags | (os.O_DIRECT if self.direct else 0), 0o644)
        except OSError:  # the file system refuses O_DIRECT
            self.direct, self._fd = False, os.open(path, flags, 0o644)
        # anonymous maps are page-aligned, as O_DIRECT needs
        self._buffers = [mmap.mmap(-1, buffer_bytes), mmap.mmap(-1, buffer_bytes)]
        self._views = [memoryview(b) for b in self._buffers]
        self._addresses = [np.frombuffer(b, np.uint8).ctypes.data for b in self._buffers]
        self._current, self._used, self.size = 0, 0, 0
        self._placed: List[Tuple[int, int]] = []  # (start, end) in the current buffer: bytes filled before their write
        self.placed_bytes = 0  # written from where they were filled, without a copy
        self._writer = ThreadPoolExecutor(1)
        self._pending = None

    def writable(self) -> bool:
        return True

    def reserve(self, n: int, placed: Sequence[Tuple[int, int]]) -> Optional[memoryview]:
        """The next ``n`` bytes of the file as memory to fill now; ``placed`` (offset, length) pieces of it get filled.

        A later :meth:`write` of a piece from exactly that memory costs no copy.
        Until then no other write may land on a piece (an error, never silently
        overwritten pixels). None when ``n`` does not fit a buffer.
        """
        view = self._views[self._current]
        if n > len(view) - self.BLOCK:
            return None
        if len(view) - self._used < n:
            self._hand_over_part()
            view = self._views[self._current]
        self._placed = sorted((self._used + offset, self._used + offset + length) for offset, length in placed)
        return view[self._used : self._used + n]

    def release(self) -> None:
        """The reserved pieces will not be written from their place (their owner copied them out)."""
        self._placed = []

    def write(self, data) -> int:
        if self._placed and isinstance(data, pa.Buffer):
            start, end = self._placed[0]
            if start == self._used and data.size == end - start and data.address == self._addresses[self._current] + start:
                self._placed.pop(0)  # already in place: filled through reserve()
                self._used = end
                self.placed_bytes += data.size
                self.size += data.size
                return data.size
        data = memoryview(data).cast("B")
        n = len(data)
        if self._placed and self._used + n > self._placed[0][0]:
            raise RuntimeError(
                f"imagery writer: a write of {n} bytes would overwrite decoded bands waiting at byte "
                f"{self._placed[0][0] - self._used} ahead (the Arrow message layout changed)"
            )
        while len(data):
            view = self._views[self._current]
            k = min(len(data), len(view) - self._used)
            view[self._used : self._used + k] = data[:k]
            self._used, data = self._used + k, data[k:]
            if self._used == len(view):
                self._hand_over(view)
        self.size += n
        return n

    def _hand_over(self, view: memoryview) -> None:
        """Write ``view`` in the thread; fill the other buffer meanwhile (once its own write is done)."""
        self._wait()
        self._pending = self._writer.submit(self._write, view)
        self._current, self._used = 1 - self._current, 0

    def _hand_over_part(self) -> None:
        """Write the whole blocks filled so far; the unfinished last block moves to the front of the other buffer."""
        whole = self._used - self._used % self.BLOCK
        tail = self._used - whole
        self._wait()
        other = self._views[1 - self._current]
        other[:tail] = self._views[self._current][whole : self._used]
        if whole:
            self._pending = self._writer.submit(self._write, self._views[self._current][:whole])
        self._current, self._used = 1 - self._current, tail

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def _write(self, block: memoryview) -> None:
        while len(block):
            try:
                done = os.write(self._fd, block)
            except OSError:
                if not self.direct:
                    raise
                self._stop_direct()  # refused at the first write by some file systems: go on buffered
                continue
            block = block[done:]

    def _stop_direct(self) -> None:
        import fcntl

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._wait()
            if self._used:
                view = self._views[self._current]
                padded = -(-self._used // self.BLOCK) * self.BLOCK if self.direct else self._used
                view[self._used : padded] = bytes(padded - self._used)
                self._write(view[:padded])
            os.ftruncate(self._fd, self.size)
        finally:
            self._writer.shutdown()
            os.close(self._fd)
            for view, buffer in zip(self._views, self._buffers):
                try:
                    view.release()
                    buffer.close()
                except BufferError:  # an array over it is still referenced somewhere: freed with it
                    pass
            super().close()


class ImageryWriter:
    """Appends decoded patches of one sensor to one Arrow file.

    Each band is copied once: decoded straight into the file's write buffer,
    at the place where the Arrow stream writer puts that batch's band values
    (found once per writer by writing two empty batches to a sink that only
    notes offsets); the writer then writes them from there without a copy.
    Bulk copies cost ~1 ms per MB on this kind of VM, so the copy saved is
    ~10 % of a pass. The first batch (its message also carries the schema) and
    a last, shorter batch go through batch buffers of their own instead.
    """

    def __init__(self, path: str, groups: Sequence[BandGroup], batch_rows: int = 128):
        self.path, self.groups, self.batch_rows = path, tuple(groups), batch_rows
        self.features = imagery_features(self.groups)
        self._schema = self.features.arrow_schema
        self._layout, self._message_bytes = _batch_layout(self._schema, self.features, self.groups, batch_rows)
        buffer_bytes = max(8 << 20, -(-(self._message_bytes + 2 * DirectFile.BLOCK) // DirectFile.BLOCK) * DirectFile.BLOCK)
        self._sink = DirectFile(path, buffer_bytes)
        self._writer = pa.ipc.new_stream(self._sink, self._schema)
        self._own = {g.name: np.empty((batch_rows, *g.shape), dtype=g.dtype) for g in self.groups}
        self._buffers: Optional[Dict[str, np.ndarray]] = self._own  # the first batch: own buffers
        self._in_place = False
        self._names: List[str] = []
        self.rows = 0

    def slots(self) -> Dict[str, np.ndarray]:
        """band -> the next row's place in the batch being filled: decode into them, then :meth:`commit`."""
        if self._buffers is None:
            self._buffers = self._reserve()
            self._in_place = self._buffers is not self._own
        i = len(self._names)
        return {b: self._buffers[g.name][i, k] for g in self.groups for k, b in enumerate(g.bands)}

    def _reserve(self) -> Dict[str, np.ndarray]:
        if not self._layout:
            return self._own
        pieces = [(self._layout[g.name], self.batch_rows * g.size * g.size * len(g.bands) * np.dtype(g.dtype).itemsize)
                  for g in self.groups]
        region = self._sink.reserve(self._message_bytes, pieces)
        if region is None:
            return self._own
        return {g.name: np.frombuffer(region, g.dtype, self.batch_rows * len(g.bands) * g.size * g.size,
                                      self._layout[g.name]).reshape(self.batch_rows, *g.shape) for g in self.groups}

    def commit(self, name: str) -> int:
        """Keep the row just filled through :meth:`slots`; returns the patch's row in this file."""
        self._names.append(name)
        self.rows += 1
        if len(self._names) == self.batch_rows:
            self._flush()
        return self.rows - 1

    def add(self, name: str, arrays: Mapping[str, np.ndarray]) -> int:
        """``arrays``: band -> 2-D array (checked by the caller); returns the patch's row in this file."""
        for band, slot in self.slots().items():
            slot[...] = arrays[band]
        return self.commit(name)

    def _flush(self) -> None:
        n = len(self._names)
        if not n:
            if self._in_place:  # reserved, never filled (the last patch failed to decode): nothing to write
                self._sink.release()
                self._buffers, self._in_place = None, False
            return
        buffers = self._buffers
        if self._in_place and n < self.batch_rows:  # a shorter batch has another layout: from own buffers
            for g in self.groups:
                self._own[g.name][:n] = buffers[g.name][:n]
            self._sink.release()
            buffers = self._own
        columns = [array3d(buffers[g.name][:n], self.features[g.name]) for g in self.groups]
        columns.append(pa.array(self._names, pa.string()))
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))
        self._names = []
        self._buffers, self._in_place = None, False  # the next batch: reserved in the write buffer

    def close(self) -> int:
        self._flush()
        self._writer.close()
        self._sink.close()
        return self.rows


class _LayoutProbe(io.RawIOBase):
    """A sink that keeps nothing: it notes where each written buffer would land (address -> offset)."""

    def __init__(self):
        super().__init__()
        self.size, self.offsets = 0, {}

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        n = data.size if isinstance(data, pa.Buffer) else len(memoryview(data).cast("B"))
        if isinstance(data, pa.Buffer):
            self.offsets[data.address] = self.size
        self.size += n
        return n


def _batch_layout(schema: pa.Schema, features: datasets.Features, groups: Sequence[BandGroup],
                  rows: int) -> Tuple[Dict[str, int], int]:
    """Where a full batch's band values start in its Arrow message, and where the last of them ends.

    Found by writing two batches of ``rows`` rows (the second has no schema
    before it) to a probe; the names come last, so their length moves nothing.
    """
    probe = _LayoutProbe()
    arrays = {g.name: np.zeros((rows, *g.shape), g.dtype) for g in groups}  # never written to: no memory touched
    batch = pa.RecordBatch.from_arrays(
        [array3d(arrays[g.name], features[g.name]) for g in groups] + [pa.array(["x"] * rows, pa.string())], schema=schema)
    with pa.ipc.new_stream(probe, schema) as writer:
        writer.write_batch(batch)
        start = probe.size
        probe.offsets.clear()
        writer.write_batch(batch)
    if not groups or any(arrays[g.name].ctypes.data not in probe.offsets for g in groups):  # nothing to place, or copied
        return {}, 0
    layout = {g.name: probe.offsets[arrays[g.name].ctypes.data] - start for g in groups}
    end = max(layout[g.name] + arrays[g.name].nbytes for g in groups)
    return layout, end


class ImageryTables:
    """The imagery tables of one cache folder, memory-mapped (the page cache is shared by every process)."""

    def __init__(self, root: str):
        self.root = root
        self._arrays: Dict[Tuple[str, str], Tuple[np.ndarray, List[np.ndarray]]] = {}

    def files(self, sensor: str) -> List[str]:
        directory = os.path.join(self.root, IMAGERY_DIR)
        names = sorted(n for n in os.listdir(directory) if n.startswith(f"{sensor}-") and n.endswith(".arrow"))
        return [os.path.join(directory, n) for n in names]

    def group(self, sensor: str, group: BandGroup) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(first global row of each record batch + total, one (n, C, H, W) view per batch, over the memory map).

        One view per batch, never one array per file: joining a file's batches
        copies the whole group into memory (63 GB for the release's S2 10 m bands).
        """
        key = (sensor, group.name)
        if key not in self._arrays:
            starts, views = [0], []
            for path in self.files(sensor):
                for chunk in pa.ipc.open_stream(pa.memory_map(path)).read_all()[group.name].chunks:
                    if len(chunk):
                        views.append(array3d_values(chunk, group.shape))
                        starts.append(starts[-1] + len(chunk))
            self._arrays[key] = (np.array(starts, dtype=np.int64), views)
        return self._arrays[key]

    def take(self, sensor: str, group: BandGroup, row: int) -> np.ndarray:
        starts, views = self.group(sensor, group)
        if not 0 <= row < starts[-1]:
            raise IndexError(f"imagery row {row} of {sensor} is outside {self.root}/{IMAGERY_DIR} ({starts[-1]} rows)")
        k = int(np.searchsorted(starts, row, side="right")) - 1
        return views[k][row - starts[k]]

    def names(self, sensor: str) -> List[str]:
        out: List[str] = []
        for path in self.files(sensor):
            out += pa.ipc.open_stream(pa.memory_map(path)).read_all()["name"].to_pylist()
        return out


_OPEN: Dict[Tuple[int, str], Tuple[int, ImageryTables, float]] = {}


#: seconds between checks that an open folder was not rebuilt (a stat per row costs ~10 us of a ~300 us read)
RECHECK_SECONDS = 1.0


def open_tables(root: str) -> ImageryTables:
    """One ``ImageryTables`` per process and folder; reopened when the folder was rebuilt."""
    key = (os.getpid(), root)
    entry = _OPEN.get(key)
    now = time.monotonic()
    if entry is not None and now - entry[2] < RECHECK_SECONDS:
        return entry[1]
    directory = os.path.join(root, IMAGERY_DIR)
    try:
        stamp = os.stat(directory).st_mtime_ns
    except FileNotFoundError:
        _OPEN.pop(key, None)
        raise FileNotFoundError(
            f"the imagery tables of this dataset are missing: no folder {directory}. The cache was moved or deleted; "
            f"prepare it again, or keep a self-contained copy with save_to_disk()"
        ) from None
    tables = entry[1] if entry is not None and entry[0] == stamp else ImageryTables(root)
    _OPEN[key] = (stamp, tables, now)
    return tables


# ----------------------------------------------------------------------------- the feature


@dataclass
class PairBands:
    """Band data of an image pair, stored once per pair in the cache and decoded to an ndarray on access.

    Declares the shape and dtype of what it decodes to: a native group
    (``bands`` = a group's bands, ``img_size`` None) gives exactly the
    ``Array3D`` value of the imagery table; with ``img_size`` the bands are
    stacked and resampled like the publisher's loader (``bands=`` configs).
    """

    shape: Tuple[int, int, int]
    dtype: str
    bands: Tuple[str, ...]
    img_size: Optional[int] = None
    resample: Optional[str] = None
    decode: bool = True
    #: the cache folder holding the tables: set by :func:`attach`, ignored by ``==``. It is serialised only
    #: where ``datasets`` writes rows of an attached dataset (``map``, ``save_to_disk``), so those can embed.
    root: Optional[str] = field(default=None, compare=False, repr=False)
    pa_type: ClassVar[pa.DataType] = pa.struct({"s1": pa.int64(), "s2": pa.int64(), "bytes": pa.binary()})
    _type: str = field(default=FEATURE_TYPE, init=False, repr=False)

    def __post_init__(self) -> None:
        self.shape, self.bands = tuple(self.shape), tuple(self.bands)

    def __call__(self) -> pa.DataType:
        return self.pa_type

    @property
    def sensors(self) -> Tuple[str, ...]:
        return _sensors_of(self.bands)

    def encode_example(self, value) -> dict:
        """A reference ``{"s1": row, "s2": row}`` stays one; an array (e.g. returned by ``map``) is stored inline."""
        if isinstance(value, dict):
            return {"s1": value.get("s1"), "s2": value.get("s2"), "bytes": value.get("bytes")}
        array = np.asarray(value)
        if array.shape != self.shape:
            raise ValueError(f"a {self.bands} array must have shape {self.shape}, got {array.shape}")
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind") and array.dtype != np.dtype(self.dtype):
            raise ValueError(f"a {self.bands} array must be {self.dtype}, got {array.dtype}")
        return {"s1": None, "s2": None, "bytes": np.ascontiguousarray(array, dtype=self.dtype).tobytes()}

    def decode_example(self, value: dict, token_per_repo_id=None) -> np.ndarray:
        if value.get("bytes") is not None:
            return np.frombuffer(value["bytes"], dtype=self.dtype).reshape(self.shape).copy()
        return self.read(self._tables(), {s: value.get(s) for s in self.sensors})

    def read(self, tables: ImageryTables, rows: Mapping[str, Optional[int]], out: Optional[np.ndarray] = None) -> np.ndarray:
        """The decoded array of one pair, into ``out`` (a slot of a batch) when given."""
        for sensor in self.sensors:
            if rows.get(sensor) is None:
                raise ValueError(f"this row has no {sensor} imagery row for bands {list(self.bands)}")
        if self.img_size is None:  # one native group: the table's value itself
            group = GROUP_OF_BAND[self.bands[0]]
            value = tables.take(group.sensor, group, int(rows[group.sensor]))
            if out is None:
                return np.array(value)
            out[...] = value
            return out
        values = {group.name: tables.take(group.sensor, group, int(rows[group.sensor])) for group in _groups_of(self.bands)}
        return stack_groups(values, self.bands, self.img_size, self.resample, out=out)

    def decode_batch(self, values: Sequence[Optional[dict]]) -> np.ndarray:
        """Many rows at once, straight into one (B, C, H, W) array (no per-row arrays to stack)."""
        out = np.empty((len(values), *self.shape), dtype=self.dtype)
        tables = None
        for i, value in enumerate(values):
            if value is None:
                raise ValueError(f"row {i} has no {list(self.bands)} value")
            if value.get("bytes") is not None:
                out[i] = np.frombuffer(value["bytes"], dtype=self.dtype).reshape(self.shape)
                continue
            tables = tables or self._tables()
            self.read(tables, {s: value.get(s) for s in self.sensors}, out=out[i])
        return out

    def _tables(self) -> ImageryTables:
        if self.root is None:
            raise ValueError(
                "these rows point into a prepared bigearthnet_txt cache, but the dataset was not loaded through the "
                "builder (load_dataset / BigEarthNetTxt.as_dataset), so the cache folder is unknown: use "
                "bentxt.imagery_table.attach(dataset, cache_folder)"
            )
        return open_tables(self.root)

    def cast_storage(self, storage: pa.StructArray) -> pa.StructArray:
        """Needed by ``save_to_disk`` (it walks storages) and by writers that inferred null-typed fields."""
        if storage.type == self.pa_type:
            return storage
        if isinstance(storage, pa.ExtensionArray) or pa.types.is_list(storage.type) or pa.types.is_large_list(storage.type) \
                or pa.types.is_fixed_size_list(storage.type):
            return self._inline(storage)  # arrays that ``map`` decoded and writes back: stored inline, still PairBands
        if not pa.types.is_struct(storage.type) or not {f.name for f in storage.type} <= set(self.pa_type.names):
            raise TypeError(f"cannot cast {storage.type} to {FEATURE_TYPE} storage {self.pa_type}")
        names = {f.name for f in storage.type}
        fields = [
            storage.field(f.name).cast(f.type) if f.name in names else pa.nulls(len(storage), f.type) for f in self.pa_type
        ]
        return pa.StructArray.from_arrays(fields, fields=list(self.pa_type), mask=storage.is_null())

    def _inline(self, storage: pa.Array) -> pa.StructArray:
        """(C, H, W) arrays as Arrow lists -> this feature's storage with each row's pixels in ``bytes``."""
        if isinstance(storage, pa.ExtensionArray):
            storage = storage.storage
        valid = storage.is_valid().to_numpy(zero_copy_only=False)
        kept = storage.filter(pa.array(valid)) if storage.null_count else storage
        try:
            values = array3d_values(kept, self.shape) if len(kept) else np.zeros((0, *self.shape), self.dtype)
        except (ValueError, pa.ArrowInvalid) as err:
            raise TypeError(f"cannot cast {storage.type} to {FEATURE_TYPE}: the values are not {self.shape} arrays") from err
        if not np.can_cast(values.dtype, self.dtype, casting="same_kind"):
            raise TypeError(f"cannot cast {values.dtype} arrays to a {self.dtype} {FEATURE_TYPE}")
        rows = iter(np.ascontiguousarray(values, dtype=self.dtype))
        data = [next(rows).tobytes() if v else None for v in valid]
        n = len(storage)
        return pa.StructArray.from_arrays(
            [pa.nulls(n, pa.int64()), pa.nulls(n, pa.int64()), pa.array(data, pa.binary())],
            fields=list(self.pa_type), mask=pa.array(~valid),
        )

    def embed_storage(self, storage: pa.StructArray, **kwargs) -> pa.StructArray:
        """Pixels into each row (``save_to_disk``, Parquet): the result no longer needs the cache folder."""
        rows = storage.to_pylist()
        data = [None if r is None else (r["bytes"] if r["bytes"] is not None else self.decode_example(r).tobytes()) for r in rows]
        return pa.StructArray.from_arrays(
            [pa.nulls(len(rows), pa.int64()), pa.nulls(len(rows), pa.int64()), pa.array(data, pa.binary())],
            names=["s1", "s2", "bytes"],
            mask=storage.is_null(),
        )

    def flatten(self):
        return self


with warnings.catch_warnings():  # "register_feature is experimental": it is the documented way, said once in the README
    warnings.simplefilter("ignore")
    register_feature(PairBands, FEATURE_TYPE)
# wherever PairBands can be decoded (a DataLoader worker unpickling a dataset too), numpy/torch keep its dtype
from . import formatting  # noqa: E402,F401  (imports PairBands from this module, defined above)


@lru_cache(maxsize=64)  # asked for every row read
def _groups_of(bands: Tuple[str, ...]) -> Tuple[BandGroup, ...]:
    """The band groups holding ``bands``, each once, in order of first use."""
    return tuple(dict.fromkeys(GROUP_OF_BAND[b] for b in bands))


@lru_cache(maxsize=64)
def _sensors_of(bands: Tuple[str, ...]) -> Tuple[str, ...]:
    return tuple(s for s in ("s1", "s2") if any(g.sensor == s for g in _groups_of(bands)))


def attach(data, root: str):
    """Tell the :class:`PairBands` features of a ``Dataset``, ``DatasetDict`` or ``Features`` where their tables are."""
    if isinstance(data, dict) and not isinstance(data, datasets.Features):  # a DatasetDict
        for part in data.values():
            attach(part, root)
        return data
    features = data.info.features if hasattr(data, "info") else data  # .features would be a copy
    for feature in _pair_bands(features):
        feature.root = root
    _OPEN.pop((os.getpid(), root), None)  # looked at afresh: it may have been rebuilt or removed
    return data


def _pair_bands(features) -> Iterable[PairBands]:
    for feature in (features or {}).values():
        if isinstance(feature, PairBands):
            yield feature
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, dict):
            yield from _pair_bands(feature.feature)
        elif isinstance(feature, dict):
            yield from _pair_bands(feature)
