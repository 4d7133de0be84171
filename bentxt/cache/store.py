"""One imagery store per source: each image pair's pixels once, shared by every config, split, task and filter.

Why: ~20 texts share an image pair, and users prepare several configs of one
download (``vqa`` + ``captioning`` + ``grounding``, ``-train`` and
``-validation``, filters). Pixels kept per config would be one copy per config
(3 x 76 GB for the everyday S2 recipe) and one archive pass each; kept per
source they are stored once and a later config only adds the pairs it lacks.

A store holds one sensor of one source (an archive set, an extracted tree, an
LMDB, an export), every native band group of that sensor::

    <cache>/bigearthnet_txt/imagery/<sensor>-<source key>/
        store.json                             the manifest: generation, source, groups, shards (file, rows, bytes)
        not-stored.json                        pairs known to be absent from, or invalid in, the source
        <sensor>-p0001.index.arrow             name, source position and map grid (EPSG, transform) of each row
                                               a pass added (read instead of the shards)
        <sensor>-p0001-00000-of-00002.arrow    shards (``bentxt.cache.imagery_table`` format), appended pass by pass
        .lock                                  held (flock) by the one process adding pairs
        .adding-<pid>-<nonce>/                 a pass's files until they are committed

Rows are numbered across the shards in manifest order; a committed shard never
changes, so a row number stays valid for the life of the store. A text row
names its store by *reference* ``<folder>.<generation>``: the generation is
drawn when the folder is created, so rows prepared against a store that was
deleted and built again (other row numbers) are an error, never other pixels.

Appending is safe: a pass holds the store's lock from its check of what is
missing to its commit (a second process preparing another config of the same
source waits, then adds only what is still missing); a pass writes into its
own folder and commits by renaming its shards and replacing the manifest
(``os.replace``), so a killed pass leaves the store as it was, and the next
pass removes what it left.

Where a store is found (:func:`locate`): stores this process opened or was
told about (:func:`register`, the features of a loaded dataset), the folders in
``BENTXT_STORES`` (``os.pathsep``-separated), and the default
``$HF_DATASETS_CACHE/bigearthnet_txt/imagery``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from functools import lru_cache
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from bentxt.bands import BandGroup, groups_for_sensors
from bentxt.errors import BigEarthNetTxtError
from bentxt.cache.imagery_table import ImageryTables
from bentxt.metadata import NAME

logger = logging.getLogger("bigearthnet_txt")

STORES_DIR = "imagery"
MANIFEST = "store.json"
#: pairs a pass looked for and did not find, or found invalid: kept apart from the manifest, which every reading
#: process loads (a partial download can leave ~460,000 absent names: megabytes of JSON)
NOT_STORED = "not-stored.json"
LOCK = ".lock"
ADDING_PREFIX = ".adding-"
#: where else stores are looked for (folders holding store folders, or store folders), ``os.pathsep``-separated
STORES_ENV = "BENTXT_STORES"
FORMAT_VERSION = 1


class StoreError(BigEarthNetTxtError, ValueError):
    """An imagery store is missing, damaged, or not the one a row was prepared against."""


# ----------------------------------------------------------------------------- where stores are


#: store path -> its reference (<folder>.<generation>), for every store this process knows. Keyed by path: copies of
#: one store (a copied cache) share a reference, and rows tell them apart by the pass that added them.
_KNOWN: Dict[str, str] = {}


def register(path: str) -> str:
    """Tell this process where a store folder is (e.g. after moving it); loaded datasets do this themselves.

    Returns the store's reference. Keyed by reference, not folder name: two
    caches may each hold a store of the same source (same folder name), and
    only the generation tells them apart.
    """
    found = ImageryStore(path)
    _KNOWN[found.path] = found.reference
    return found.reference


def known() -> Dict[str, str]:
    """Store path -> reference, of every store this process knows (pickled with the features that use them)."""
    return dict(_KNOWN)


def default_root(cache_root: Optional[str] = None) -> str:
    """The folder holding the stores of a ``datasets`` cache root (the default cache when None)."""
    if cache_root is None:
        import datasets

        cache_root = datasets.config.HF_DATASETS_CACHE
    return os.path.join(str(cache_root), NAME, STORES_DIR)


def search_roots() -> List[str]:
    return env_roots() + [default_root()]


@lru_cache(maxsize=256)  # parsed for every row read; a dataset names a handful of references
def split_reference(reference: str) -> Tuple[str, str, Optional[str]]:
    """``<folder>.<generation>[.<pass>]`` -> (folder name, generation, pass or None).

    A store is ``<folder>.<generation>``; a row names the pass that added it
    too, so that two copies of one store that grew apart (a copied cache) are
    never mistaken for each other.
    """
    parts = reference.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise StoreError(f"{reference!r} is not an imagery store reference (<sensor>-<key>.<generation>[.<pass>])")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


_OPEN: Dict[Tuple[int, str], "ImageryStore"] = {}


def locate(reference: str) -> "ImageryStore":
    """The store a row names: same generation and holding the row's pass; never the pixels of another store."""
    key = (os.getpid(), reference)
    found = _OPEN.get(key)
    if found is not None:
        return found
    folder, generation, pass_id = split_reference(reference)
    identity = f"{folder}.{generation}"
    roots = search_roots()
    candidates = [path for path, known_as in _KNOWN.items() if known_as == identity]
    candidates += [path for path in _KNOWN if os.path.basename(path) == folder]  # rebuilt there since: said so
    candidates += [os.path.join(r, folder) for r in roots]
    candidates += [r for r in roots if os.path.basename(r.rstrip("/")) == folder]
    rebuilt, lacking = [], []
    for path in dict.fromkeys(candidates):
        if not os.path.isfile(os.path.join(path, MANIFEST)):
            continue
        found = ImageryStore(path)
        if found.generation != generation:
            rebuilt.append(f"{path} (generation {found.generation})")
            continue
        if pass_id is not None and pass_id not in found.pass_ranges():
            lacking.append(path)  # a copy of the store that did not get this pass
            continue
        found.check()
        _KNOWN.setdefault(found.path, identity)
        _OPEN[key] = found
        return found
    if rebuilt and not lacking:
        raise StoreError(
            f"the imagery store {folder!r} of these rows was built again since they were prepared (the rows name "
            f"generation {generation}, found {rebuilt}): its row numbers changed. Prepare the config(s) of these rows "
            f"again (load_dataset(...) does it), then concatenate or save them again"
        )
    if lacking:
        raise StoreError(
            f"the imagery store {folder!r} was found at {lacking}, but without the pass {pass_id} that added these "
            f"rows: it is a copy made before that pass (a copied cache that grew apart). Point {STORES_ENV} at the "
            f"copy these rows were prepared with, or prepare the config again"
        )
    raise StoreError(
        f"the pixels of these rows are in the imagery store {folder!r}, which was not found (looked in "
        f"{sorted(set(candidates))}). If it is in another cache_dir or was moved, set {STORES_ENV}=<the folder "
        f"holding it> (e.g. <cache_dir>/{NAME}/{STORES_DIR}) or call bentxt.cache.store.register(<its path>); if it "
        f"was deleted, prepare the config again (load_dataset(...) rebuilds it). To keep rows without their store, "
        f"use bentxt.portable(dataset) before save_to_disk or to_parquet"
    )


def env_roots() -> List[str]:
    return [p for p in os.environ.get(STORES_ENV, "").split(os.pathsep) if p]


def find(folder: str, root: str) -> Optional["ImageryStore"]:
    """An existing store folder of that name: in ``root``, else in a ``BENTXT_STORES`` folder (a moved store).

    Other cache folders are not looked in: a ``cache_dir`` keeps its own store.
    """
    paths = [os.path.join(root, folder)] + [os.path.join(r, folder) for r in env_roots()]
    paths += [r for r in env_roots() if os.path.basename(r.rstrip("/")) == folder]
    for path in dict.fromkeys(paths):
        if os.path.isfile(os.path.join(path, MANIFEST)):
            return ImageryStore(path)
    return None


def forget() -> None:
    """Drop this process's open stores (tests; a store folder removed and rebuilt in this process)."""
    _OPEN.clear()


# ----------------------------------------------------------------------------- one store


class ImageryStore:
    """One sensor of one source: a manifest and its shards, read memory-mapped, appended under a lock."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.name = os.path.basename(self.path)
        self._manifest: Optional[dict] = None
        self._tables: Optional[ImageryTables] = None
        self._rows: Optional[Dict[str, int]] = None
        self._passes: Optional[Dict[str, Tuple[int, int]]] = None
        self._index: Optional[pa.Table] = None

    # --- creating and reading the manifest

    @classmethod
    def for_source(cls, root: str, sensor: str, key: str, source: Mapping[str, object]) -> "ImageryStore":
        """The store of ``sensor`` from the source fingerprinted as ``key``, created (empty) when new."""
        existing = find(f"{sensor}-{key}", root)  # no lock: another process may hold it for a long pass
        if existing is not None:
            register(existing.path)
            return existing
        path = os.path.join(root, f"{sensor}-{key}")
        store = cls(path)
        os.makedirs(path, exist_ok=True)
        with store.locked():
            if not os.path.isfile(os.path.join(path, MANIFEST)):
                groups = groups_for_sensors((sensor,))
                store._write_manifest({
                    "format": FORMAT_VERSION, "sensor": sensor, "generation": uuid.uuid4().hex[:8],
                    "groups": [g.name for g in groups], "source": dict(source), "shards": [], "passes": 0,
                })
                _log_replaced(root, store)
        register(path)
        return store

    @property
    def manifest(self) -> dict:
        if self._manifest is None:
            try:
                with open(os.path.join(self.path, MANIFEST)) as f:
                    self._manifest = json.load(f)
            except FileNotFoundError:
                raise StoreError(f"{self.path} is not an imagery store (no {MANIFEST})") from None
            except ValueError as err:
                raise StoreError(
                    f"the manifest {os.path.join(self.path, MANIFEST)} is damaged ({err}): remove the folder "
                    f"{self.path} and prepare again"
                ) from None
        return self._manifest

    @property
    def sensor(self) -> str:
        return self.manifest["sensor"]

    @property
    def generation(self) -> str:
        return self.manifest["generation"]

    @property
    def reference(self) -> str:
        """This store: ``<folder>.<generation>`` (a row's reference adds the pass that added it)."""
        return f"{self.name}.{self.generation}"

    def pass_ranges(self) -> Dict[str, Tuple[int, int]]:
        """pass -> (first row, end row): the rows each committed pass added (a pass's shards are contiguous)."""
        if self._passes is None:
            ranges: Dict[str, Tuple[int, int]] = {}
            start = 0
            for shard in self.manifest["shards"]:
                first, _ = ranges.get(shard["pass"], (start, start))
                start += shard["rows"]
                ranges[shard["pass"]] = (first, start)
            self._passes = ranges
        return self._passes

    def row_references(self, rows: np.ndarray) -> np.ndarray:
        """The reference each row's text rows store: ``<folder>.<generation>.<pass>`` (None for -1)."""
        ranges = sorted((first, end, name) for name, (first, end) in self.pass_ranges().items())
        ends = np.array([end for _, end, _ in ranges], dtype=np.int64)
        names = np.array([f"{self.reference}.{name}" for _, _, name in ranges] + [None], dtype=object)
        which = np.searchsorted(ends, rows, side="right")
        which[np.asarray(rows) < 0] = len(ranges)
        return names[which]

    @property
    def groups(self) -> Tuple[BandGroup, ...]:
        return groups_for_sensors((self.sensor,))

    @property
    def num_rows(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.manifest["shards"])

    def manifest_files(self) -> List[str]:
        """The committed shard files, in row order."""
        return [s["file"] for s in self.manifest["shards"]]

    def committed_files(self) -> List[str]:
        """Every file the manifest lists: the shards and the passes' index files."""
        return self.manifest_files() + [entry["file"] for entry in self.manifest.get("indexes", {}).values()]

    def refresh(self) -> None:
        """Read the manifest again (another process may have appended)."""
        self._manifest = self._tables = self._rows = self._passes = self._index = None

    def check(self) -> None:
        """Every shard is there with its recorded size: a truncated or lost file is found now, not mid-training."""
        for shard in [*self.manifest["shards"], *self.manifest.get("indexes", {}).values()]:
            path = os.path.join(self.path, shard["file"])
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                raise StoreError(self._damaged(path, "is missing")) from None
            if size != shard["bytes"]:
                raise StoreError(self._damaged(path, f"has {size} bytes, {shard['bytes']} were written"))

    def _damaged(self, path: str, what: str) -> str:
        return (
            f"the imagery store file {path} {what}: the store is damaged. Remove the folder {self.path} and prepare "
            f"again (every config prepared from this source is then prepared anew)"
        )

    # --- reading

    @property
    def tables(self) -> ImageryTables:
        if self._tables is None:
            files = [os.path.join(self.path, s["file"]) for s in self.manifest["shards"]]
            rows = [s["rows"] for s in self.manifest["shards"]]
            self._tables = ImageryTables({self.sensor: files}, expected_rows={self.sensor: rows})
        return self._tables

    def take(self, group: BandGroup, row: int, pass_id: Optional[str] = None) -> np.ndarray:
        """One pair's values of one band group (a view over the memory map), checked to be in the row's pass."""
        if pass_id is not None and pass_id not in self.pass_ranges() or row >= self.tables.num_rows(self.sensor):
            self._reread()  # appended by another process since this one looked
        if pass_id is not None:
            first, end = self.pass_ranges().get(pass_id, (0, 0))
            if not first <= row < end:
                raise StoreError(f"row {row} is not one that pass {pass_id} added to the imagery store {self.path}: "
                                 f"the reference does not belong to this store")
        return self.tables.take(self.sensor, group, row)

    def _reread(self) -> None:
        """The manifest again, refused if the store was built anew meanwhile (other rows under the same numbers)."""
        generation = self.generation
        self.refresh()
        if self.generation != generation:
            raise StoreError(
                f"the imagery store {self.path} was built again while these rows were in use (generation "
                f"{generation}, now {self.generation}): prepare their config(s) again")
        self.check()

    def index(self) -> pa.Table:
        """``name`` and ``position`` of every row, from the passes' small index files (the shards are not read)."""
        if self._index is None:
            order = sorted(self.pass_ranges().items(), key=lambda item: item[1][0])
            parts = []
            for pass_id, (first, end) in order:
                entry = self.manifest.get("indexes", {}).get(pass_id)
                if entry is None:
                    raise StoreError(self._damaged(self.path, f"has no index of pass {pass_id}"))
                path = os.path.join(self.path, entry["file"])
                try:
                    with pa.memory_map(path) as source:
                        table = pa.ipc.open_file(source).read_all()
                except (OSError, pa.ArrowInvalid) as err:
                    raise StoreError(self._damaged(path, f"cannot be read ({err})")) from None
                if table.num_rows != end - first:
                    raise StoreError(self._damaged(path, f"has {table.num_rows} rows, {end - first} were written"))
                parts.append(table)
            schema = pa.schema({"name": pa.string(), "position": pa.int64(), "epsg": pa.int32(),
                                "transform": pa.list_(pa.float64(), 6)})
            self._index = pa.concat_tables(parts) if parts else schema.empty_table()
        return self._index

    def rows(self) -> Dict[str, int]:
        """Patch name -> row, of every pair in the store."""
        if self._rows is None:
            self._rows = {name: row for row, name in enumerate(self.index()["name"].to_pylist())}
        return self._rows

    def positions(self) -> np.ndarray:
        """Each row's place in its source's own order (archive order; name order for random-access sources)."""
        return self.index()["position"].to_numpy()

    def grids(self) -> Tuple[np.ndarray, np.ndarray]:
        """Each row's 10 m grid as read from its GeoTIFF while preparing: EPSG codes (n,), transforms (n, 6)."""
        index = self.index()
        transforms = index["transform"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return index["epsg"].to_numpy(), transforms.reshape(-1, 6)

    def not_stored(self) -> dict:
        """``{"absent": [names], "invalid": {name: reason}}``: what earlier passes did not store, and why."""
        try:
            with open(os.path.join(self.path, NOT_STORED)) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"absent": [], "invalid": {}}

    def absent(self) -> frozenset:
        return frozenset(self.not_stored()["absent"])

    def invalid(self) -> Dict[str, str]:
        return dict(self.not_stored()["invalid"])

    # --- appending

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This store's lock (flock: released by the OS when the process dies, so a kill never leaves it held)."""
        with open(os.path.join(self.path, LOCK), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("imagery store %s: waiting for another process that is adding pairs to it", self.path)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def adding(self) -> Iterator["StorePass"]:
        """Hold the lock, drop what killed passes left, and give a pass its own folder; committed on ``commit``."""
        with self.locked():
            self.refresh()
            self._remove_leftovers()
            folder = os.path.join(self.path, f"{ADDING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.makedirs(folder)
            store_pass = StorePass(self, folder)
            try:
                yield store_pass
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                self.refresh()

    def _remove_leftovers(self) -> None:
        """Under the lock: anything that is neither the manifest, the lock nor a committed shard was left by a killed pass."""
        keep = {MANIFEST, LOCK, NOT_STORED} | {s["file"] for s in self.manifest["shards"]}
        keep |= {entry["file"] for entry in self.manifest.get("indexes", {}).values()}
        for entry in os.listdir(self.path):
            if entry not in keep:
                path = os.path.join(self.path, entry)
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)

    def _write_manifest(self, manifest: dict) -> None:
        self._write_json(MANIFEST, manifest)
        self._manifest = manifest

    def _write_json(self, name: str, value: object) -> None:
        """Written whole, then renamed over the old one: a reader sees one or the other, never half."""
        temporary = os.path.join(self.path, f"{name}.{os.getpid()}.tmp")
        with open(temporary, "w") as f:
            json.dump(value, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, os.path.join(self.path, name))


class StorePass:
    """The files one pass writes; :meth:`commit` makes them part of the store, all at once."""

    def __init__(self, store: ImageryStore, folder: str):
        self.store, self.folder = store, folder

    def commit(self, files: Sequence[Tuple[str, int]], names: Sequence[str], positions: Sequence[int],
               grids: Sequence[Tuple[int, Tuple[float, ...]]], absent: Sequence[str] = (),
               invalid: Optional[Mapping[str, str]] = None) -> None:
        """``files``: (path in the pass folder, rows) in row order, ``names``/``positions``/``grids`` of those rows;
        ``absent``/``invalid``: what the pass found. The names go into a small index file of the pass, so that a
        later config learns what the store holds without touching the shards (on a cold disk, reading back every
        batch's names costs a random read each: minutes for the release)."""
        manifest = json.loads(json.dumps(self.store.manifest))
        number = manifest["passes"] + 1
        pass_id = uuid.uuid4().hex[:8]  # what the rows of this pass name, with the store's generation
        kept = [(p, n) for p, n in files if n]
        if sum(n for _, n in kept) != len(names):
            raise RuntimeError(f"internal error: {len(names)} names for {sum(n for _, n in kept)} rows")
        for k, (path, rows) in enumerate(kept):
            name = f"{manifest['sensor']}-p{number:04d}-{k:05d}-of-{len(kept):05d}.arrow"
            os.replace(path, os.path.join(self.store.path, name))
            size = os.path.getsize(os.path.join(self.store.path, name))
            manifest["shards"].append({"file": name, "rows": rows, "bytes": size, "pass": pass_id})
        if kept:
            index = f"{manifest['sensor']}-p{number:04d}.index.arrow"
            table = pa.table({
                "name": pa.array(list(names), pa.string()), "position": pa.array(list(positions), pa.int64()),
                "epsg": pa.array([g[0] for g in grids], pa.int32()),
                "transform": pa.array([list(g[1]) for g in grids], pa.list_(pa.float64(), 6)),
            })
            with pa.OSFile(os.path.join(self.store.path, index), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            size = os.path.getsize(os.path.join(self.store.path, index))
            manifest.setdefault("indexes", {})[pass_id] = {"file": index, "rows": len(names), "bytes": size}
        if absent or invalid:
            known = self.store.not_stored()
            self.store._write_json(NOT_STORED, {"absent": sorted(set(known["absent"]) | set(absent)),
                                                "invalid": {**known["invalid"], **(invalid or {})}})
        manifest["passes"] = number
        self.store._write_manifest(manifest)
        self.store._tables = self.store._rows = self.store._passes = self.store._index = None


def _log_replaced(root: str, new: "ImageryStore") -> None:
    """A new store of files that an older store was prepared from (they changed since): say the old one can go."""
    for entry in sorted(os.listdir(root)):
        path = os.path.abspath(os.path.join(root, entry))
        if path == new.path or not entry.startswith(f"{new.sensor}-"):
            continue
        try:
            old = ImageryStore(path)
            same_files = old.manifest["source"].get("paths") == new.manifest["source"].get("paths")
        except (StoreError, OSError, KeyError):
            continue
        if same_files:
            logger.info("imagery store %s holds %.1f GB of pixels of an earlier version of %s: remove that folder to "
                        "free its disk once no prepared config needs it", path, old.nbytes / 1e9,
                        ", ".join(map(str, new.manifest["source"]["paths"])))


def pair_bytes(sensor: str) -> int:
    """Bytes one pair takes in a sensor's store: its native groups, plus ~2 % of Arrow list offsets."""
    return int(sum(g.nbytes for g in groups_for_sensors((sensor,))) * 1.02)


def source_key(source_fingerprint: object, paths: Sequence[str]) -> str:
    """What names a source's store: where it is and what it is (size/mtime, or a URL's recorded checksum)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash({"paths": list(paths), "fingerprint": source_fingerprint})[:12]
