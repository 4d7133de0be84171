"""Every use of another library's private or undocumented API, in one place.

Private API can change in any release without notice, so each use is listed
here with why it is needed and what it buys (measured where it is a speed-up),
and the README's list ("Development" section) is checked against
:data:`PRIVATE_API` by ``tests/test_compat.py``. The functions and classes
below are the only code of the package that touches these names (for the
entries marked ``routed``); the others are still used where ``used_in`` says,
and the same test fails (an expected failure, for now) until they go through
this module too.

``datasets`` is pinned to one major version (``setup.cfg``); the registration
checks it at call time and the builder class keeps working without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import datasets
import fsspec
from datasets.formatting.formatting import NumpyArrowExtractor


@dataclass(frozen=True)
class PrivateUse:
    """One private (or undocumented) name of another library that the package relies on."""

    library: str  #: the distribution that defines it
    name: str  #: as the library spells it (``module.attribute`` or ``Class.attribute``)
    used_in: str  #: the file(s) of this repository that use it
    why: str  #: what it is needed for
    benefit: str  #: what it buys over the public way, measured where it is a speed-up
    routed: bool = False  #: True: only this module touches it; False: still used directly in ``used_in``


#: The registry. ``tests/test_compat.py`` checks that the README lists exactly these names, and that no other
#: private name of a library appears in the package's code.
PRIVATE_API: Tuple[PrivateUse, ...] = (
    # --- datasets: the name ``load_dataset("bigearthnet_txt", ...)`` resolves (docs/datasets-notes.md#registration)
    PrivateUse("datasets", "packaged_modules._PACKAGED_DATASETS_MODULES", "bentxt/compat.py",
               "the only table a bare name passed to load_dataset resolves through to installed code (no plugins, "
               "no entry points, no scripts in datasets 5.x)",
               "load_dataset('bigearthnet_txt', config) works at all; the builder class itself needs none of this",
               routed=True),
    PrivateUse("datasets", "load.PackagedDatasetModuleFactory.get_module", "bentxt/compat.py",
               "replaced for our name only, so data_dir/data_files reach the builder untouched",
               "no glob of the working directory (a stray notes.csv became an input) and no listing of data_dir: "
               "0.04 s instead of a full listing for a folder of 1,000,000 files (benchmarks/data_dir_scan.py); "
               "hours for the release's 7.7 M extracted band files",
               routed=True),
    PrivateUse("datasets", "load.DatasetModule", "bentxt/compat.py",
               "what get_module must return for our name", "(part of the registration above)", routed=True),
    # --- datasets: formats (docs/datasets-notes.md#numpy-format)
    PrivateUse("datasets", "formatting._register_formatter", "bentxt/compat.py",
               "the numpy and torch formats keep the bands' dtype; the only way to install a formatter under an "
               "existing format name",
               "uint16 bands stay uint16 instead of int64 (4x less memory); ds[i] numpy 2.6x, torch batches 5x "
               "faster (README, Performance)", routed=True),
    PrivateUse("datasets", "NumpyArrowExtractor._arrow_array_to_numpy", "bentxt/compat.py",
               "a direct path for flat, null-free columns of our rows",
               "~70 us less per column per call; most of a ds[i] with ~17 columns", routed=True),
    PrivateUse("datasets", "Formatter._recursive_tensorize", "bentxt/compat.py",
               "strings and string arrays are returned as they are instead of rebuilt element by element",
               "~50 us less per row for the options column", routed=True),
    # --- datasets: the builder (bigearthnet_txt.py)
    PrivateUse("datasets", "ArrowBasedBuilder._prepare_split / _prepare_split_single", "bentxt/compat.py",
               "preparing writes Arrow tables through datasets' own table writer (borrowed, not copied) while "
               "streaming still yields examples",
               "the per-example encoder costs ~465 us per text: over an hour for the release's 9.55 M texts",
               routed=True),
    PrivateUse("datasets", "DatasetBuilder._create_builder_config", "bentxt/compat.py",
               "an unknown config name gets our message naming the valid ones, and the config id is our cache "
               "selection",
               "one cache folder per selection, shared by load_dataset, the class and the CLI", routed=True),
    PrivateUse("datasets", "DatasetBuilder._download_and_prepare", "bentxt/compat.py",
               "leftovers of an interrupted run are cleared before, the inputs recorded after the files are written",
               "a half-written cache is never taken for complete; a changed input is named in the log", routed=True),
    PrivateUse("datasets", "DatasetBuilder._make_split_generators_kwargs", "bentxt/compat.py",
               "num_proc and max_shard_size reach _split_generators, where the imagery pass runs",
               "the imagery pass uses num_proc processes and max_shard_size", routed=True),
    PrivateUse("datasets", "DatasetBuilder._as_dataset", "bentxt/compat.py",
               "each loaded split is checked against what was written and told where its stores are",
               "a damaged cache is an error naming it when loaded, not mid-training", routed=True),
    PrivateUse("datasets", "DatasetBuilder._output_dir / _cache_dir_root / _writer_batch_size",
               "bentxt/compat.py",
               "where the cache is written, where the stores and streaming's spill go, the rows per record batch",
               "(no public attribute holds them while preparing)", routed=True),
    PrivateUse("datasets", "builder.FileLock", "bentxt/compat.py",
               "datasets locks a cache with lock files beside it, also when it only reads a prepared one; on a "
               "read-only mount (a shared, prepared cache) creating one fails with EROFS",
               "a prepared cache on a read-only mount opens for reading (only swapped while the cache root is not "
               "writable, where nothing can be written anyway)", routed=True),
    # --- datasets: elsewhere
    PrivateUse("datasets", "utils.file_utils._prepare_single_hop_path_and_storage_options", "bentxt/compat.py",
               "an http(s) archive URL gets the same storage options (proxy, token, Google Drive) as xopen gives it",
               "resumable downloads with exactly xopen's options", routed=True),
    # --- other libraries
    PrivateUse("aiohttp", "StreamReader._read_nowait", "bentxt/compat.py",
               "the bytes aiohttp already buffered when a connection broke",
               "a resumed download restarts at the last byte received, not up to a buffer earlier; if it changes, "
               "resuming is only less efficient", routed=True),
    PrivateUse("fsspec", "HTTPStreamFile.r", "bentxt/compat.py",
               "the aiohttp response of a streamed HTTP file: status, Content-Range and Content-Length of a resumed "
               "GET", "a server that ignores Range is refused instead of read from byte 0 again", routed=True),
    PrivateUse("concurrent.futures", "ProcessPoolExecutor._processes", "bentxt/compat.py",
               "the imagery workers are terminated when the preparation fails or is interrupted",
               "Ctrl-C stops the workers at once instead of after their whole pass "
               "(multiprocessing.active_children would also kill children that are not the pool's)", routed=True),
)


def readme_list() -> str:
    """The README's list of private uses (between its ``private-api`` markers), written from :data:`PRIVATE_API`."""
    lines = []
    for use in PRIVATE_API:
        where = use.used_in + ("" if use.routed else ", not yet through compat")
        lines.append(f"- {use.library}: `{use.name}` (`{where}`): {use.why}; {use.benefit}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- code hash (public replacement)


def hash_python_lines(lines: List[str]) -> str:
    """SHA-256 of source lines without comments: the same value as ``datasets.packaged_modules._hash_python_lines``
    (so existing cache folders stay valid), written here instead of imported because that one is private."""
    kept = [re.sub(r"#.*", "", line) for line in lines]
    return hashlib.sha256("\n".join(line for line in kept if line).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- the builder's private hooks


class TableBuilder(datasets.GeneratorBasedBuilder):
    """``GeneratorBasedBuilder`` whose private hooks are given public names, for ``bigearthnet_txt.py``.

    Streaming yields examples (``_generate_examples``); preparing writes Arrow
    tables (``_generate_tables``) through ``datasets``' own table writer,
    borrowed from ``ArrowBasedBuilder``. A subclass overrides the public-named
    hooks below instead of ``datasets``' private methods.
    """

    #: ``download_and_prepare`` keywords that reach ``_split_generators``
    SPLIT_GENERATOR_OPTIONS: Tuple[str, ...] = ()

    _prepare_split = datasets.ArrowBasedBuilder._prepare_split
    _prepare_split_single = datasets.ArrowBasedBuilder._prepare_split_single

    @property
    def output_dir(self) -> str:
        """Where this config's files are written and read (``<cache>.incomplete`` while preparing)."""
        return self._output_dir

    @property
    def local_output_dir(self) -> str:
        return fsspec.core.strip_protocol(self._output_dir)

    @property
    def cache_root(self) -> str:
        """The ``cache_dir`` root (``HF_DATASETS_CACHE`` by default)."""
        return self._cache_dir_root

    @property
    def writer_batch_size(self) -> Optional[int]:
        return self._writer_batch_size

    def check_config_request(self, config_name: object, options: dict) -> None:
        """Before a config is made from a name and keyword options."""

    def config_cache_id(self, config: datasets.BuilderConfig, config_id: Optional[str]) -> str:
        """The cache folder name of a config (``datasets``: the name plus a hash of the options)."""
        return config_id or config.name

    def _create_builder_config(self, config_name=None, custom_features=None, config_id=None, **config_kwargs):
        self.check_config_request(config_name, config_kwargs)
        config, _ = super()._create_builder_config(config_name, custom_features, config_id, **config_kwargs)
        return config, self.config_cache_id(config, config_id)

    @contextlib.contextmanager
    def preparing(self, verification_mode) -> Iterator[None]:
        """Around the writing of every split, inside the ``.incomplete`` folder (``output_dir``)."""
        yield

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        with self.preparing(verification_mode):
            super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)

    def _make_split_generators_kwargs(self, prepare_split_kwargs):
        return {k: prepare_split_kwargs.get(k) for k in self.SPLIT_GENERATOR_OPTIONS}

    def loaded(self, read: Callable[[], datasets.Dataset], split) -> datasets.Dataset:
        """One split read from the prepared files (``read()``), before it is returned."""
        return read()

    def _as_dataset(self, split=datasets.Split.TRAIN, in_memory: bool = False) -> datasets.Dataset:
        return self.loaded(lambda: super(TableBuilder, self)._as_dataset(split, in_memory), split)


# ----------------------------------------------------------------------------- HTTP archives


def xopen_storage_options(urlpath: str, download_config) -> Tuple[str, dict]:
    """(URL, storage options) exactly as ``datasets``' ``xopen`` would open ``urlpath`` with ``download_config``."""
    from datasets.utils.file_utils import _prepare_single_hop_path_and_storage_options

    return _prepare_single_hop_path_and_storage_options(urlpath, download_config)


def http_response(file) -> Any:
    """The aiohttp response behind an fsspec streamed HTTP file (None for other files)."""
    return getattr(file, "r", None)


def buffered_bytes(content, n: int) -> bytes:
    """Up to ``n`` bytes aiohttp already buffered in a response body (on the event loop thread that owns it)."""
    return content._read_nowait(n)


# ----------------------------------------------------------------------------- process pools


def pool_processes(pool) -> List[Any]:
    """The worker processes of a ``ProcessPoolExecutor`` (to kill them when their results are not wanted)."""
    return list((getattr(pool, "_processes", None) or {}).values())


# ----------------------------------------------------------------------------- read-only caches


class _NoLock:
    """Stands in for ``datasets``' file lock where no file can be created (a read-only cache)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


@contextlib.contextmanager
def builder_without_file_locks() -> Iterator[None]:
    """``datasets.builder`` without its lock files while the block runs (only for a read-only cache root)."""
    import datasets.builder as builder

    saved = builder.FileLock
    builder.FileLock = _NoLock  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        builder.FileLock = saved  # type: ignore[misc]


# ----------------------------------------------------------------------------- registration


def register_packaged_module(name: str, module_hash: str) -> None:
    """Make ``load_dataset(name, ...)`` resolve to the importable module ``name``, with ``data_dir`` and
    ``data_files`` passed to the builder untouched (docs/datasets-notes.md#registration). Idempotent."""
    import datasets.load as load
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    _PACKAGED_DATASETS_MODULES[name] = (name, module_hash)
    factory = load.PackagedDatasetModuleFactory
    if getattr(factory.get_module, "_bigearthnet_txt", None) == name:
        return
    original = factory.get_module

    def get_module(self):
        if self.name != name:
            return original(self)
        module_path, module_hash = _PACKAGED_DATASETS_MODULES[name]
        # an empty file list, not None: datasets 5.2 indexes the module's builder_configs when data_files is None
        data_files = self.data_files if self.data_files is not None else DataFilesDict()
        kwargs = {"dataset_name": name, "data_files": data_files, "data_dir": self.data_dir}
        return load.DatasetModule(module_path, module_hash, kwargs)

    get_module._bigearthnet_txt = name  # type: ignore[attr-defined]
    factory.get_module = get_module  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- formats


def register_formatter(cls: type, name: str, aliases: List[str]) -> None:
    """Install a formatter under an existing format name, quietly (``datasets`` warns about every replacement)."""
    from datasets.formatting import _register_formatter

    quiet = logging.getLogger("datasets.formatting")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        _register_formatter(cls, name, aliases=aliases)
    finally:
        quiet.setLevel(level)


class ColumnToNumpyHook(NumpyArrowExtractor):
    """``datasets``' numpy extractor with its per-column conversion as a public-named hook.

    Subclasses override :meth:`column_to_numpy` and call ``super().column_to_numpy`` for datasets' own path.
    """

    def _arrow_array_to_numpy(self, pa_array) -> Any:
        return self.column_to_numpy(pa_array)

    def column_to_numpy(self, pa_array) -> Any:
        """One Arrow column as datasets' numpy extractor gives it."""
        return super()._arrow_array_to_numpy(pa_array)


class TensorizeHook:
    """Mixin for a ``datasets`` formatter: its per-value tensorization as a public-named hook.

    Put it before the ``datasets`` formatter class in the bases; subclasses override :meth:`tensorize_value`
    and call ``super().tensorize_value`` for datasets' own conversion.
    """

    def _recursive_tensorize(self, data_struct):
        return self.tensorize_value(data_struct)

    def tensorize_value(self, data_struct):
        """One value (an array, a scalar, a list) as the formatter's ``_recursive_tensorize`` gives it."""
        return super()._recursive_tensorize(data_struct)  # type: ignore[misc]

