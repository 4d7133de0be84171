"""Reading an export folder (``bentxt/export/writer.py``): the one reader behind ``iter_examples``, the Ray read and the
builder's export image source.

An export holds texts configs (no pixels) and one imagery config per sensor set (``imagery-s2``, ...), one row per
pair, shared by every texts config of that sensor set. A texts config's pairs are a subsequence of its imagery
config's pairs in the same order (the export checks it), so a reader joins them on ``patch_id`` in one forward pass,
or finds a pair's imagery row with :class:`ImageryIndex` (the ``patch_id`` column and the row groups' sizes only).
Each texts and browse file names its imagery config in its Parquet key-value metadata (``bentxt``), so a reader
needs no card and no naming rule.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import datasets
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bentxt.cache.imagery_table import array3d_values

#: the data folder of an export, and the column that joins texts and imagery (``s1_name`` is as unique)
DATA_DIR = "data"
PAIR_KEY = "patch_id"
#: Parquet key-value metadata of texts and browse files: ``{"kind": ..., "imagery": <imagery config>}``
META_KEY = b"bentxt"


def pair_starts(keys: pa.Array) -> np.ndarray:
    """Index of each pair's first row in ``keys`` (rows of a pair are consecutive), then ``len(keys)``."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    n = len(keys)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    changed = pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)


def pixel_bytes(features: datasets.Features, columns: Optional[Sequence[str]] = None) -> int:
    """Bytes of one row's arrays (``Array3D`` columns, or ``columns`` of them) as written: shape x itemsize."""
    names = [k for k, f in features.items() if isinstance(f, datasets.Array3D)] if columns is None else columns
    return sum(int(np.prod(features[k].shape)) * np.dtype(features[k].dtype).itemsize for k in names)


def array_columns(features: datasets.Features) -> Dict[str, datasets.Array3D]:
    return {k: f for k, f in features.items() if isinstance(f, datasets.Array3D)}


def config_files(fs, root: str, name: str, split: Optional[str] = None) -> List[str]:
    """The Parquet files of a config (of one split), in order."""
    pattern = f"{split}-*.parquet" if split else "*.parquet"
    return sorted(fs.glob(f"{root.rstrip('/')}/{DATA_DIR}/{name}/{pattern}"))


def file_meta(fs, path: str) -> dict:
    """The ``bentxt`` metadata of a written file (``{}`` for files without it)."""
    with fs.open(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


def open_root(root: str, storage_options: Optional[dict] = None):
    """``(fs, path)`` of an export folder or URL (``hf://datasets/org/name`` for a Hub repo)."""
    return fsspec.core.url_to_fs(str(root), **(storage_options or {}))


def export_url(root_or_repo) -> str:
    """A local folder (absolute), an fsspec URL as given, or a Hub repo id as ``hf://datasets/<id>``."""
    path = str(root_or_repo)
    if "://" in path:
        return path.rstrip("/")
    if os.path.exists(path):
        return os.path.abspath(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", path) and not path.startswith("."):
        return f"hf://datasets/{path}"
    raise FileNotFoundError(f"{path} is neither an export folder nor a Hub dataset repo id ('org/name')")


def imagery_of(fs, root: str, name: str) -> str:
    """The imagery config a texts config joins with (named in its files' metadata)."""
    files = config_files(fs, root, name)
    if not files:
        configs = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{root.rstrip('/')}/{DATA_DIR}/*"))
        raise ValueError(f"{root}: no files for config {name!r} (configs here: {configs})")
    imagery = file_meta(fs, files[0]).get("imagery")
    if not imagery:
        raise ValueError(f"{files[0]}: not a texts file of a bentxt export (no 'bentxt' metadata naming its imagery)")
    return imagery


@dataclass(frozen=True)
class ImageryIndex:
    """Where each pair of one split of an imagery config is: its ``patch_id`` order and the files' row groups."""

    groups: Tuple[Tuple[str, int, int], ...]  # (file, row group, rows), in order
    keys: Tuple[str, ...]

    @classmethod
    def load(cls, fs, root: str, name: str, split: str) -> "ImageryIndex":
        groups, keys = [], []
        for path in config_files(fs, root, name, split):
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                for g in range(parquet.metadata.num_row_groups):
                    groups.append((path, g, parquet.metadata.row_group(g).num_rows))
                keys += parquet.read(columns=[PAIR_KEY])[PAIR_KEY].to_pylist()
        return cls(tuple(groups), tuple(keys))

    @property
    def group_start(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([n for _, _, n in self.groups])]).astype(np.int64)

    def rows_of(self, keys: Sequence[str], where: str) -> np.ndarray:
        """The imagery row of each key; a key it lacks is an error naming ``where``."""
        position = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in position]
        if missing:
            raise ValueError(f"{where}: pair {missing[0]} (and {len(missing) - 1} more) is not in its imagery config")
        return np.array([position[k] for k in keys], dtype=np.int64)

    def read(self, fs, rows: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """The imagery rows ``rows`` (any order), reading only the row groups that hold them."""
        if not len(rows):
            raise ValueError("no imagery rows asked for")
        start = self.group_start
        group_of = np.searchsorted(start, rows, side="right") - 1
        wanted = np.unique(group_of)
        parts: List[pa.Table] = []
        opened: Dict[str, pq.ParquetFile] = {}
        handles = []
        try:
            for k in wanted:
                path, group, _ = self.groups[k]
                if path not in opened:
                    handles.append(fs.open(path, "rb"))
                    opened[path] = pq.ParquetFile(handles[-1])
                parts.append(opened[path].read_row_group(group, columns=list(columns)))
        finally:
            for handle in handles:
                handle.close()
        table = pa.concat_tables(parts)
        offset = np.concatenate([[0], np.cumsum([p.num_rows for p in parts])]).astype(np.int64)
        local = offset[np.searchsorted(wanted, group_of)] + (rows - start[group_of])
        return table.take(pa.array(local))


def numpy_arrays(table: pa.Table, features: Dict[str, datasets.Array3D]) -> Dict[str, np.ndarray]:
    """The ``Array3D`` columns of a table as ``(rows, C, H, W)`` arrays in their dtype (no nested lists)."""
    return {k: array3d_values(table[k], f.shape).astype(f.dtype, copy=False) for k, f in features.items()}


def iter_pairs(root: str, sensor: str, groups: Sequence[str], key: str,
               storage_options: Optional[dict] = None) -> Iterator[Tuple[str, Dict[str, np.ndarray]]]:
    """``(pair name, {group: (C, H, W) array})`` of every pair of an imagery config holding ``groups``, split by split.

    The export's imagery configs are ``imagery-s1``, ``imagery-s2``, ``imagery-s1s2`` (and ``bands=`` variants,
    whose resampled ``image`` holds no native group); the one with the fewest other columns is read.
    """
    fs, inner = open_root(root, storage_options)
    candidates = []
    for folder in sorted(fs.glob(f"{inner.rstrip('/')}/{DATA_DIR}/*")):
        files = sorted(fs.glob(f"{folder}/*.parquet"))
        if not files:
            continue
        with fs.open(files[0], "rb") as f:
            features = datasets.Features.from_arrow_schema(pq.read_schema(f))
        arrays = array_columns(features)
        if all(g in arrays for g in groups):
            candidates.append((len(arrays), folder, files, arrays))
    if not candidates:
        raise ValueError(f"export {root} has no config with the native {sensor} band groups {list(groups)} "
                         f"(an imagery-* config of a {sensor} export)")
    _, _, files, arrays = min(candidates)
    wanted = {g: arrays[g] for g in groups}
    for path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            for i in range(parquet.num_row_groups):
                table = parquet.read_row_group(i, columns=[key, *groups])
                try:
                    values = numpy_arrays(table, wanted)
                except Exception as err:
                    raise ValueError(f"export {path}, row group {i}: the band columns do not hold {sensor} arrays of "
                                     f"the declared shapes ({type(err).__name__}: {err})") from None
                for j, name in enumerate(table[key].to_pylist()):
                    yield name, {g: values[g][j] for g in groups}


__all__ = ["pair_starts", "pixel_bytes", "ImageryIndex", "iter_pairs", "imagery_of", "config_files", "file_meta",
           "open_root", "export_url", "numpy_arrays", "DATA_DIR", "PAIR_KEY", "META_KEY"]
