"""One selection, one cache, always current; and no folder left behind.

The cache folder of a config is ``<cache>/bigearthnet_txt/<config id>/<version>/<code hash>/``.
``datasets`` would key it on whatever route built it (the class, ``load_dataset``
with its empty file list, the CLI's explicit defaults, a relative or absolute
``data_dir``). Here the config id is ``<name>-<selection>-<inputs>``:

- *selection*: the options that differ from the named config and the resolved
  input locations (real paths), so every route to the same data agrees;
- *inputs*: what the inputs are, cheaply: size and mtime of each file (of an
  LMDB's ``data.mdb``, of an extracted tree's top folders) and the recorded
  checksum of a release URL. A changed input gives a new id: the next run
  prepares anew and logs which input changed (``inputs.json`` in each cache).

Temporary folders (streaming's S1 spill) live beside the cache under
``bigearthnet_txt/.spill/<pid>-<n>``: removed on exit, on exceptions and on
SIGTERM/SIGINT, and a later run removes those of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
from typing import Dict, Iterable, Iterator, List, Mapping, Optional

from datasets.fingerprint import Hasher

from bentxt import sources
from bentxt.errors import BigEarthNetTxtError
from bentxt.metadata import NAME

logger = logging.getLogger("bigearthnet_txt")

INPUTS_FILE = "inputs.json"
STORES_FILE = "stores.json"
SPILL_DIR = ".spill"


def selection_and_inputs(config) -> tuple:
    files = sources.resolve(config, config.sensors)
    where = {k: (list(v.paths) if isinstance(v, sources.ImageSource) else v) for k, v in files.items()}
    return {"options": config.options(), "files": where}, sources.fingerprint(files)


def config_id(config) -> str:
    selection, inputs = selection_and_inputs(config)
    return f"{config.name}-{Hasher.hash(selection)[:12]}-{Hasher.hash(inputs)[:12]}"


def write_inputs(output_dir: str, config) -> None:
    """Record what the cache was prepared from, so a later rebuild can say what changed."""
    if "://" in output_dir:
        return
    selection, inputs = selection_and_inputs(config)
    with open(os.path.join(output_dir, INPUTS_FILE), "w") as f:
        json.dump({"selection": selection, "inputs": inputs}, f, indent=1, default=str)


class ReadOnlyCacheError(BigEarthNetTxtError, OSError):
    """A read-only cache folder does not hold the prepared config asked for."""


class DamagedCacheError(BigEarthNetTxtError, OSError):
    """A prepared cache's files do not hold what was written."""


def damaged(folder: str, split: str, what: str) -> str:
    return (f"the prepared cache {folder} is damaged (split {split}: {what}). Remove that folder and load the config "
            f"again to prepare it anew (the imagery store is kept: only the texts are written again)")


def is_read_only(folder: str) -> bool:
    """A local folder that exists and cannot be written (a read-only mount, or no permission)."""
    return "://" not in folder and os.path.isdir(folder) and not os.access(folder, os.W_OK)


def write_stores(output_dir: str, stores: Mapping[str, str], paths: Mapping[str, str],
                 references: Mapping[str, Iterable[Optional[str]]]) -> None:
    """Record which imagery stores (generation, and the passes that added the rows) the cache's rows name."""
    if "://" in output_dir:
        return
    from bentxt.cache import store

    passes = {s: sorted({str(store.split_reference(r)[2]) for r in references[s] if r is not None}) for s in stores}
    with open(os.path.join(output_dir, STORES_FILE), "w") as f:
        json.dump({s: {"reference": stores[s], "path": paths[s], "passes": passes[s]} for s in stores}, f, indent=1)


def read_stores(output_dir: str) -> Dict[str, dict]:
    try:
        with open(os.path.join(output_dir, STORES_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _current(entry: dict):
    """The store a recorded entry names, where it is now (where it was, else ``BENTXT_STORES``): None if gone,
    rebuilt, or a copy without the passes the rows need."""
    from bentxt.cache import store

    folder, generation, _ = store.split_reference(entry["reference"])
    found = store.find(folder, os.path.dirname(entry.get("path") or ""))
    if found is None or found.generation != generation:
        return None
    return found if set(entry.get("passes", ())) <= set(found.pass_ranges()) else None


def store_paths(output_dir: str) -> List[str]:
    """Where the stores of a cache's rows are now (a hint for the features)."""
    found = [_current(entry) for entry in read_stores(output_dir).values()]
    return [s.path for s in found if s is not None]


def drop_if_stores_changed(output_dir: str) -> None:
    """A prepared cache whose store is gone or was built again is removed, so that it is prepared anew.

    Its rows name the store's generation, so reading them would be an error,
    never wrong pixels; preparing again is what the user wants. A store that
    was moved is found through ``BENTXT_STORES`` and kept. A damaged store (a
    truncated shard) is an error that names the file.
    """
    if "://" in output_dir or not os.path.isdir(output_dir) or is_read_only(output_dir):
        return  # read-only: nothing to rebuild here; a row of a lost store says so when read
    for sensor, entry in read_stores(output_dir).items():
        current = _current(entry)
        if current is not None:
            current.check()
            continue
        logger.info("config cache %s: its %s imagery store %s is gone or was built again: preparing the config again",
                    output_dir, sensor, entry.get("path"))
        shutil.rmtree(output_dir)
        return


def explain_rebuild(output_dir: str, config) -> None:
    """Before preparing: if a cache of the same selection exists with other inputs, say which input changed."""
    if "://" in output_dir or os.path.exists(output_dir):
        return
    version_dir = os.path.dirname(output_dir)
    config_dir = os.path.dirname(version_dir)
    family, here = os.path.dirname(config_dir), os.path.basename(config_dir)
    prefix = here.rsplit("-", 1)[0] + "-"
    try:
        siblings = [d for d in os.listdir(family) if d.startswith(prefix) and d != here]
    except FileNotFoundError:
        return
    _, inputs = selection_and_inputs(config)
    for sibling in siblings:
        old_dir = os.path.join(family, sibling, os.path.basename(version_dir), os.path.basename(output_dir))
        try:
            with open(os.path.join(old_dir, INPUTS_FILE)) as f:
                old = json.load(f)["inputs"]
        except (OSError, ValueError, KeyError):
            continue
        changed = [key for key in inputs if json.dumps(inputs[key], default=str) != json.dumps(old.get(key), default=str)]
        logger.info(
            "config %s: input(s) %s changed since the cache %s was prepared: preparing a new cache (remove the old "
            "folder to free its disk)", config.name, ", ".join(changed) or "?", old_dir,
        )


def start_clean(output_dir: str) -> None:
    """Empty what an interrupted run left in ``<cache>.incomplete``.

    ``datasets`` writes into ``<cache>.incomplete`` and renames it only when
    every split is done, so a killed run is never taken for a finished one; but
    it reuses that folder, and a killed run's files (imagery tables, shards of
    another ``num_proc``) would ride along.
    """
    if "://" in output_dir or not output_dir.endswith(".incomplete") or not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def spill_root(cache_dir_root: str) -> str:
    """The fixed, discoverable folder for temporary files of streaming, beside the cache."""
    if "://" in cache_dir_root:
        return os.path.join(tempfile.gettempdir(), f"{NAME}{SPILL_DIR}")
    return os.path.join(cache_dir_root, NAME, SPILL_DIR)


_counter = itertools.count()


@contextlib.contextmanager
def spill_dir(root: str) -> Iterator[str]:
    """A private folder under ``root``, removed however the block ends (SIGTERM included)."""
    remove_orphans(root)
    path = os.path.join(root, f"{os.getpid()}-{next(_counter)}")
    os.makedirs(path, exist_ok=True)
    with _terminate_as_exit():
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def remove_orphans(root: str) -> None:
    """Folders of processes that no longer run (killed with SIGKILL) are removed."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit (so ``finally`` blocks run) while the block runs, if nobody else handles it."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
