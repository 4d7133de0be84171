"""The imagery file format: each image pair's pixels in one Arrow row, written fast and read memory-mapped.

One file holds rows of one sensor: its native band groups as ``Array3D``
(``s2_10m``, ``s2_20m``, ``s2_60m``, or ``s1``), the patch ``name`` and the
pair's ``position`` in its source's own order. Each is a plain ``datasets``
Arrow stream file (``Dataset.from_file`` reads it on its own).

Why one row per pair: about 20 texts share one image pair. An ``Array3D``
per text stores every pair ~20 times (1.9 TB for ``s1s2-vqa``, 2.7 TB for
``s1s2-all``); no user has that disk. ``datasets`` keeps large media out of
its rows the same way (``imagefolder`` caches paths, ``Image`` decodes them
on access). Which files make a source's store is ``bentxt.cache.store``; the
feature that points into them is ``bentxt.cache.pair_bands``.
"""

from __future__ import annotations

import io
import mmap
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa

from bentxt.bands import BandGroup
from bentxt.errors import BigEarthNetTxtError

if TYPE_CHECKING:
    from concurrent.futures import Future


# ----------------------------------------------------------------------------- the imagery table


def imagery_features(groups: Sequence[BandGroup]) -> datasets.Features:
    """One sensor's table: its band groups as ``Array3D``, then the patch name and its place in the source's order.

    Name and position come last so that in every full batch the band values sit
    at the same offsets of the Arrow message (:class:`ImageryWriter` decodes into them).
    """
    return datasets.Features({**{g.name: datasets.Array3D(g.shape, g.dtype) for g in groups},
                              "name": datasets.Value("string"), "position": datasets.Value("int64")})


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
        self._pending: Optional[Future[None]] = None

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
        self._positions: List[int] = []
        self._row_bytes = sum(g.nbytes for g in self.groups)
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
        pieces = [(self._layout[g.name], self.batch_rows * g.nbytes)
                  for g in self.groups]
        region = self._sink.reserve(self._message_bytes, pieces)
        if region is None:
            return self._own
        return {g.name: np.frombuffer(region, g.dtype, self.batch_rows * len(g.bands) * g.size * g.size,
                                      self._layout[g.name]).reshape(self.batch_rows, *g.shape) for g in self.groups}

    @property
    def bytes_written(self) -> int:
        """The file's size so far, counting the rows of the batch being filled (what a shard size limit compares)."""
        return self._sink.size + len(self._names) * self._row_bytes

    def commit(self, name: str, position: int = -1) -> int:
        """Keep the row just filled through :meth:`slots`; returns the patch's row in this file."""
        self._names.append(name)
        self._positions.append(position)
        self.rows += 1
        if len(self._names) == self.batch_rows:
            self._flush()
        return self.rows - 1

    def add(self, name: str, arrays: Mapping[str, np.ndarray], position: int = -1) -> int:
        """``arrays``: band -> 2-D array (checked by the caller); returns the patch's row in this file."""
        for band, slot in self.slots().items():
            slot[...] = arrays[band]
        return self.commit(name, position)

    def _flush(self) -> None:
        n = len(self._names)
        if not n:
            if self._in_place:  # reserved, never filled (the last patch failed to decode): nothing to write
                self._sink.release()
                self._buffers, self._in_place = None, False
            return
        buffers = self._buffers
        assert buffers is not None  # rows were filled through slots(), which sets the buffers
        if self._in_place and n < self.batch_rows:  # a shorter batch has another layout: from own buffers
            for g in self.groups:
                self._own[g.name][:n] = buffers[g.name][:n]
            self._sink.release()
            buffers = self._own
        columns = [array3d(buffers[g.name][:n], self.features[g.name]) for g in self.groups]
        columns.append(pa.array(self._names, pa.string()))
        columns.append(pa.array(self._positions, pa.int64()))
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))
        self._names, self._positions = [], []
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
        [array3d(arrays[g.name], features[g.name]) for g in groups]
        + [pa.array(["x"] * rows, pa.string()), pa.array(np.zeros(rows, np.int64))], schema=schema)
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
    """Imagery files of one or two sensors, memory-mapped (the page cache is shared by every process).

    Rows of a sensor are numbered across its files in the order given.
    ``expected_rows`` (per sensor, per file) is checked when a file is first
    read: a truncated file is an error naming it, not a wrong row.
    """

    def __init__(self, files: Mapping[str, Sequence[str]], expected_rows: Optional[Mapping[str, Sequence[int]]] = None):
        self._files = {s: list(f) for s, f in files.items()}
        self._expected = {s: list(r) for s, r in (expected_rows or {}).items()}
        self._arrays: Dict[Tuple[str, str], Tuple[np.ndarray, List[np.ndarray]]] = {}
        self._tables: Dict[str, List[pa.Table]] = {}

    @classmethod
    def in_folder(cls, root: str) -> "ImageryTables":
        """The ``<sensor>-NNNNN.arrow`` files of a folder (streaming's spill)."""
        names = sorted(n for n in os.listdir(root) if n.endswith(".arrow"))
        return cls({s: [os.path.join(root, n) for n in names if n.startswith(f"{s}-")] for s in ("s1", "s2")})

    def files(self, sensor: str) -> List[str]:
        return list(self._files.get(sensor, ()))

    def _read(self, sensor: str) -> List[pa.Table]:
        if sensor not in self._tables:
            tables, expected = [], self._expected.get(sensor)
            for k, path in enumerate(self.files(sensor)):
                try:
                    table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
                except (OSError, pa.ArrowInvalid) as err:
                    raise ImageryFileError(f"the imagery file {path} cannot be read ({err}): it is damaged or "
                                           f"truncated") from None
                if expected is not None and table.num_rows != expected[k]:
                    raise ImageryFileError(f"the imagery file {path} has {table.num_rows} rows, {expected[k]} were "
                                           f"written: it is damaged or truncated")
                tables.append(table)
            self._tables[sensor] = tables
        return self._tables[sensor]

    def num_rows(self, sensor: str) -> int:
        return sum(t.num_rows for t in self._read(sensor))

    def group(self, sensor: str, group: BandGroup) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(first global row of each record batch + total, one (n, C, H, W) view per batch, over the memory map).

        One view per batch, never one array per file: joining a file's batches
        copies the whole group into memory (63 GB for the release's S2 10 m bands).
        """
        key = (sensor, group.name)
        if key not in self._arrays:
            starts, views = [0], []
            for table in self._read(sensor):
                for chunk in table[group.name].chunks:
                    if len(chunk):
                        views.append(array3d_values(chunk, group.shape))
                        starts.append(starts[-1] + len(chunk))
            self._arrays[key] = (np.array(starts, dtype=np.int64), views)
        return self._arrays[key]

    def take(self, sensor: str, group: BandGroup, row: int) -> np.ndarray:
        starts, views = self.group(sensor, group)
        if not 0 <= row < starts[-1]:
            raise IndexError(f"imagery row {row} of {sensor} is outside {self.files(sensor)} ({starts[-1]} rows)")
        k = int(np.searchsorted(starts, row, side="right")) - 1
        return views[k][row - starts[k]]

    def names(self, sensor: str) -> List[str]:
        out: List[str] = []
        for table in self._read(sensor):
            out += table["name"].to_pylist()
        return out

    def positions(self, sensor: str) -> np.ndarray:
        parts = [table["position"].to_numpy() for table in self._read(sensor) if table.num_rows]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class ImageryFileError(BigEarthNetTxtError, ValueError):
    """An imagery file is damaged or truncated."""
