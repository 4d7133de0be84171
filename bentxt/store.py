"""A local staging store: raw band files of many patches appended to a few shard files.

Why it exists: a monolithic ``.tar.zst`` can only be read front to back by one
process, and the S1 and S2 archives are sorted differently. One sequential
pass copies the selected patches' GeoTIFF bytes (undecoded, so the pass runs
at archive speed) into shard files with an offset index; afterwards any
process can read any patch of its shard by offset. Used by
``download_and_prepare`` (one shard per output shard, ``num_proc`` workers)
and by streaming ``s1s2`` (the S1 side spilled to disk so memory stays bounded
while the S2 archive streams).

Disk cost: the uncompressed band files of the selected patches (S2 ~160 kB,
S1 ~116 kB per patch). Memory cost: the index, ~0.3 kB per patch.
"""

from __future__ import annotations

import io
import json
import mmap
import os
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa

Index = Dict[str, Dict[str, Dict[str, Tuple[int, int]]]]  # sensor -> patch -> band -> (offset, length)


class StoreWriter:
    """Appends patches to named shards; ``close()`` writes each shard's index next to it."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._files: Dict[str, object] = {}
        self._offsets: Dict[str, int] = {}
        self.index: Dict[str, Index] = {}

    def open_shard(self, shard: str) -> None:
        """Create a shard's file up front, so a shard that receives no patch still exists."""
        if shard not in self._files:
            self._files[shard] = open(os.path.join(self.root, f"{shard}.bin"), "wb")
            self._offsets[shard] = 0
            self.index[shard] = {}

    def add(self, shard: str, sensor: str, patch: str, bands: Dict[str, bytes]) -> None:
        self.open_shard(shard)
        entries = self.index[shard].setdefault(sensor, {})
        if patch in entries:
            raise ValueError(f"patch {patch} appears twice in the {sensor} archive")
        f, offset, record = self._files[shard], self._offsets[shard], {}
        for band, data in bands.items():
            if isinstance(data, np.ndarray):  # decoded arrays (an export) are kept as self-describing .npy
                buffer = io.BytesIO()
                np.save(buffer, data, allow_pickle=False)
                data = buffer.getvalue()
            f.write(data)
            record[band] = (offset, len(data))
            offset += len(data)
        self._offsets[shard] = offset
        entries[patch] = record

    def write_rows(self, shard: str, table: pa.Table) -> None:
        """The shard's annotation rows, so a worker process needs nothing but its shard."""
        with pa.OSFile(os.path.join(self.root, f"{shard}.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self, write_index: bool = True) -> None:
        for shard, f in self._files.items():
            f.close()
            if write_index:
                with open(os.path.join(self.root, f"{shard}.index.json"), "w") as out:
                    json.dump(self.index[shard], out)
        self._files.clear()


class StoreShard:
    """Read access to one shard by offset (memory-mapped, shared between processes by the page cache)."""

    def __init__(self, root: str, shard: str, index: Optional[Index] = None):
        self.root, self.name = root, shard
        path = os.path.join(root, f"{shard}.bin")
        if index is None:
            with open(os.path.join(root, f"{shard}.index.json")) as f:
                index = json.load(f)
        self.index = index
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def has(self, sensor: str, patch: str) -> bool:
        return patch in self.index.get(sensor, {})

    def read(self, sensor: str, patch: str) -> Optional[Dict[str, memoryview]]:
        """The reader interface shared with folders and LMDB: None when the patch is not here."""
        return self.bands(sensor, patch) if self.has(sensor, patch) else None

    def bands(self, sensor: str, patch: str) -> Dict[str, memoryview]:
        view = memoryview(self._map) if self._map is not None else memoryview(b"")
        return {band: view[o : o + n] for band, (o, n) in self.index[sensor][patch].items()}

    def rows(self) -> pa.Table:
        with pa.memory_map(os.path.join(self.root, f"{self.name}.arrow")) as source:
            return pa.ipc.open_file(source).read_all()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()

    def __enter__(self) -> "StoreShard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
