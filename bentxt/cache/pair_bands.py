"""The ``PairBands`` feature: a text row's reference to its pair's pixels in an imagery store, decoded on access.

A row stores, per image column, ``{"s1": row, "s2": row, "s1_store": ref,
"s2_store": ref, "bytes": null}``: the pair's row in each sensor's store and
the store it is in (``bentxt.cache.store``: ``<folder>.<generation>``). Because each
row names its own store, rows keep their own pixels wherever they go:
``concatenate_datasets`` / ``interleave_datasets`` of configs with other pair
sets or of other sources, ``select``/``shuffle``/``filter``/``map``, pickling
into DataLoader workers. The features only carry hints of where stores are
(``stores``); a store that cannot be found is an error naming it, never
another pair's pixels.

``save_to_disk`` and Parquet writing call :meth:`PairBands.embed_storage`,
which puts each row's pixels into its ``bytes`` (like ``Image`` embeds file
bytes): a saved folder is self-contained, but still needs this package to
decode. :func:`portable` turns the columns into plain ``Array3D`` for
receivers without it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Dict, Iterable, Mapping, Optional, Sequence, Tuple, cast

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import register_feature

from bentxt.cache import store as stores
from bentxt.bands import GROUP_OF_BAND, BandGroup
from bentxt.cache.imagery_table import array3d_values
from bentxt.imagery.raster import stack_groups

FEATURE_TYPE = "PairBands"
SENSORS = ("s1", "s2")
STORE_FIELD = {s: f"{s}_store" for s in SENSORS}


@dataclass
class PairBands:
    """Band data of an image pair, stored once per pair in an imagery store and decoded to an ndarray on access.

    Declares the shape and dtype of what it decodes to: a native group
    (``bands`` = a group's bands, ``img_size`` None) gives exactly the
    ``Array3D`` value of the store; with ``img_size`` the bands are stacked and
    resampled like the publisher's loader (``bands=`` configs).
    """

    shape: Tuple[int, int, int]
    dtype: str
    bands: Tuple[str, ...]
    img_size: Optional[int] = None
    resample: Optional[str] = None
    decode: bool = True
    #: store path -> reference: where the stores of the rows were when the dataset was loaded. Only a hint (each
    #: row names its store; see bentxt.cache.store.locate), ignored by ``==`` so that configs concatenate.
    stores: Optional[Dict[str, str]] = field(default=None, compare=False, repr=False)
    pa_type: ClassVar[pa.DataType] = pa.struct({
        "s1": pa.int64(), "s2": pa.int64(), "s1_store": pa.string(), "s2_store": pa.string(), "bytes": pa.binary(),
    })
    _type: str = field(default=FEATURE_TYPE, init=False, repr=False)

    def __post_init__(self) -> None:
        self.shape, self.bands = cast(Tuple[int, int, int], tuple(self.shape)), tuple(self.bands)
        self._register_hints()

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers, ``map`` processes) with every store this process knows: rows of other
        datasets concatenated into this one find theirs too."""
        state = dict(self.__dict__)
        state["stores"] = {**(self.stores or {}), **stores.known()} or None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._register_hints()

    def _register_hints(self) -> None:
        for path, reference in (self.stores or {}).items():
            stores._KNOWN.setdefault(path, reference)

    def __call__(self) -> pa.DataType:
        return self.pa_type

    @property
    def sensors(self) -> Tuple[str, ...]:
        return _sensors_of(self.bands)

    def encode_example(self, value) -> dict:
        """A reference stays one; an array (e.g. returned by ``map``) is stored inline."""
        if isinstance(value, dict):
            return {k: value.get(k) for k in self.pa_type.names}
        array = np.asarray(value)
        if array.shape != self.shape:
            raise ValueError(f"a {self.bands} array must have shape {self.shape}, got {array.shape}")
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind") and array.dtype != np.dtype(self.dtype):
            raise ValueError(f"a {self.bands} array must be {self.dtype}, got {array.dtype}")
        return {**dict.fromkeys(self.pa_type.names), "bytes": np.ascontiguousarray(array, dtype=self.dtype).tobytes()}

    def decode_example(self, value: dict, token_per_repo_id=None) -> np.ndarray:
        if value.get("bytes") is not None:
            return np.frombuffer(value["bytes"], dtype=self.dtype).reshape(self.shape).copy()
        return self.read(value)

    def read(self, value: Mapping[str, Any], out: Optional[np.ndarray] = None) -> np.ndarray:
        """The decoded array of one referenced pair, into ``out`` (a slot of a batch) when given."""
        located = {}
        for sensor in self.sensors:
            row, reference = value.get(sensor), value.get(STORE_FIELD[sensor])
            if row is None or reference is None:
                raise ValueError(f"this row has no {sensor} imagery reference for bands {list(self.bands)}")
            located[sensor] = (stores.locate(str(reference)), int(str(row)), stores.split_reference(str(reference))[2])
        if self.img_size is None:  # one native group: the store's value itself
            group = GROUP_OF_BAND[self.bands[0]]
            store, row, pass_id = located[group.sensor]
            array = store.take(group, row, pass_id)
            if out is None:
                return np.array(array)
            out[...] = array
            return out
        values = {g.name: located[g.sensor][0].take(g, *located[g.sensor][1:]) for g in _groups_of(self.bands)}
        assert self.resample is not None  # given with img_size (bentxt.config)
        return stack_groups(values, self.bands, self.img_size, self.resample, out=out)

    def decode_batch(self, values: Sequence[Optional[dict]]) -> np.ndarray:
        """Many rows at once, straight into one (B, C, H, W) array (no per-row arrays to stack)."""
        out = np.empty((len(values), *self.shape), dtype=self.dtype)
        for i, value in enumerate(values):
            if value is None:
                raise ValueError(f"row {i} has no {list(self.bands)} value")
            if value.get("bytes") is not None:
                out[i] = np.frombuffer(value["bytes"], dtype=self.dtype).reshape(self.shape)
            else:
                self.read(value, out=out[i])
        return out

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
        return _inline_storage([next(rows).tobytes() if v else None for v in valid], pa.array(~valid))

    def embed_storage(self, storage: pa.StructArray, **kwargs) -> pa.StructArray:
        """Pixels into each row (``save_to_disk``, Parquet): the result no longer needs any store."""
        rows = storage.to_pylist()
        data = [None if r is None else (r["bytes"] if r.get("bytes") is not None else self.decode_example(r).tobytes())
                for r in rows]
        return _inline_storage(data, storage.is_null())

    def flatten(self):
        return self


def _inline_storage(data, mask) -> pa.StructArray:
    n = len(data)
    fields = [pa.nulls(n, f.type) for f in PairBands.pa_type if f.name != "bytes"] + [pa.array(data, pa.binary())]
    return pa.StructArray.from_arrays(fields, fields=list(PairBands.pa_type), mask=mask)


with warnings.catch_warnings():  # "register_feature is experimental": it is the documented way, said once in the README
    warnings.simplefilter("ignore")
    register_feature(PairBands, FEATURE_TYPE)
# wherever PairBands can be decoded (a DataLoader worker unpickling a dataset too), numpy/torch keep its dtype
from bentxt.cache import formatting  # noqa: E402,F401  (imports PairBands from this module, defined above)


@lru_cache(maxsize=64)  # asked for every row read
def _groups_of(bands: Tuple[str, ...]) -> Tuple[BandGroup, ...]:
    """The band groups holding ``bands``, each once, in order of first use."""
    return tuple(dict.fromkeys(GROUP_OF_BAND[b] for b in bands))


@lru_cache(maxsize=64)
def _sensors_of(bands: Tuple[str, ...]) -> Tuple[str, ...]:
    return tuple(s for s in SENSORS if any(g.sensor == s for g in _groups_of(bands)))


def attach(data, store_paths: Iterable[str]):
    """Tell this process, and the :class:`PairBands` features of a ``Dataset``/``DatasetDict``/``Features``, where
    the stores of its rows are (a hint that travels with the features; each row still names its own store)."""
    paths = list(store_paths)
    hints = {}
    for path in paths:
        try:
            hints[os.path.abspath(path)] = stores.register(path)
        except stores.StoreError:  # gone: its rows say so when read
            continue
    if isinstance(data, dict) and not isinstance(data, datasets.Features):  # a DatasetDict
        for part in data.values():
            attach(part, paths)
        return data
    features = data.info.features if hasattr(data, "info") else data  # .features would be a copy
    for feature in _pair_bands(features):
        feature.stores = {**(feature.stores or {}), **hints}
    return data


def _pair_bands(features) -> Iterable[PairBands]:
    for feature in (features or {}).values():
        if isinstance(feature, PairBands):
            yield feature
        elif isinstance(feature, datasets.List) and isinstance(feature.feature, dict):
            yield from _pair_bands(feature.feature)
        elif isinstance(feature, dict):
            yield from _pair_bands(feature)


def portable(dataset: datasets.Dataset, batch_size: int = 64, num_proc: Optional[int] = None) -> datasets.Dataset:
    """The dataset with every ``PairBands`` column as a plain ``Array3D``: what someone without this package reads.

    Call it before ``save_to_disk``/``push_to_hub`` for a receiver who only has
    ``datasets`` (pixels are then stored once per row, ~20x a prepared cache).
    """
    columns = {k: f for k, f in dataset.features.items() if isinstance(f, PairBands)}
    if not columns:
        return dataset
    features = datasets.Features({k: (datasets.Array3D(f.shape, f.dtype) if k in columns else f)
                                  for k, f in dataset.features.items()})

    def to_arrays(batch: pa.Table) -> pa.Table:
        from bentxt.cache.imagery_table import array3d

        arrays = {}
        for name in batch.column_names:
            if name in columns:
                decoded = columns[name].decode_batch(batch[name].to_pylist())
                arrays[name] = array3d(decoded, features[name])
            else:
                arrays[name] = batch[name]
        return pa.table(arrays)

    return dataset.with_format("arrow").map(to_arrays, batched=True, batch_size=batch_size, features=features,
                                            num_proc=num_proc, desc="pixels into each row").with_format(None)
