"""The ``numpy`` and ``torch`` formats keep the bands' dtype.

``datasets``' formatters turn every integer array into int64 (4x the memory of
S2's uint16) unless ``dtype=None`` is passed, which few users know. For the
:class:`~bentxt.cache.pair_bands.PairBands` columns of a prepared cache these
subclasses return the stored dtype instead, stacked into one (B, C, H, W)
array per batch:

- numpy: uint16 stays uint16, float32 stays float32;
- torch: float32 stays float32; uint16 becomes int32 (exact for 0..65535;
  ``torch.uint16`` exists but has almost no kernels, arithmetic included).

An explicit ``dtype=`` still wins. Every other column, and every other dataset
in the process, is formatted exactly as ``datasets`` does it
(``tests/test_formatting_unchanged.py`` runs a sample of ``datasets``' own
formatting with and without this module imported). Registering a format under
an existing name, and the two hooks overridden here, are private ``datasets``
API: they go through ``bentxt/compat.py``.
"""

from __future__ import annotations

from functools import cached_property, partial
from typing import Any, Callable, Dict, List, Optional, Tuple

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import require_decoding
from datasets.formatting.formatting import NumpyArrowExtractor
from datasets.formatting.np_formatter import NumpyFormatter

from bentxt.bands import BAND_GROUPS
from bentxt.compat import ColumnToNumpyHook, TensorizeHook, register_formatter
from bentxt.cache.imagery_table import array3d_values

#: the image columns of our examples: the native band groups and the ``bands=`` image
BAND_COLUMNS = frozenset([g.name for g in BAND_GROUPS] + ["image"])


class FastNumpyArrowExtractor(ColumnToNumpyHook):
    """``datasets``' numpy extraction, with a direct path for the flat column types of our rows.

    The generic path costs ~70 us per column per call (it re-parses numpy's
    version string twice per column, and builds Python lists), which is most of
    a ``ds[i]`` with ~17 columns. Null-free numbers, strings and fixed-size lists
    of them are converted directly, to exactly the arrays the generic path gives
    (tests compare both); everything else goes the generic way.
    """

    def column_to_numpy(self, pa_array) -> np.ndarray:
        array = pa_array.combine_chunks() if isinstance(pa_array, pa.ChunkedArray) else pa_array
        kind = array.type
        if array.null_count or not len(array):
            return super().column_to_numpy(pa_array)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            return array.to_numpy(zero_copy_only=False)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return np.asarray(array.to_pylist())
        if pa.types.is_struct(kind):  # e.g. PairBands references: dicts for the decoder
            out = np.empty(len(array), dtype=object)
            out[:] = array.to_pylist()
            return out
        if pa.types.is_fixed_size_list(kind) and not array.values.null_count:
            values, shape = array.flatten(), (len(array), kind.list_size)
            if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
                return values.to_numpy(zero_copy_only=False).reshape(shape)
            if pa.types.is_string(values.type) and kind.list_size:
                return np.array(values.to_pylist(), dtype=object).reshape(shape)
        return super().column_to_numpy(pa_array)


def _scalar_type(kind) -> Optional[type]:
    """The numpy scalar a one-row numpy extraction gives for a flat Arrow type (None: not a flat type)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.str_
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return np.dtype(kind.to_pandas_dtype()).type
    return None


def extract_one_row(pa_table) -> Optional[dict]:
    """A one-row table as the numpy extractor would give it, from plain Python values (no numpy conversion per column).

    Covers null-free numbers, strings and fixed-size lists of them; returns
    None for anything else (the caller then takes the generic path).
    """
    columns = pa_table.columns  # wrappers built once (~6 us)
    if pa_table.num_rows != 1 or any(column.null_count for column in columns):
        return None
    schema = pa_table.schema
    makers = _makers_for(schema)
    if makers is None:
        return None
    values = [column.to_pylist()[0] for column in columns]  # ~2/3 of the time of Table.to_pylist
    return {name: makers[name](value) for name, value in zip(schema.names, values)}


#: column names -> (the schema, its makers): worked out once, not per row (~50 us of a ~450 us ``ds[i]``;
#: ``datasets`` makes a new formatter for every access, so the formatter cannot keep them). Checked with
#: ``Schema.equals`` (C++, ~0.04 us), not by comparing ``schema.types`` (a Python object per column, ~3 us).
_MAKERS: Dict[Tuple[str, ...], Tuple[pa.Schema, Optional[Dict[str, Callable]]]] = {}


def _makers_for(schema: pa.Schema) -> Optional[Dict[str, Callable]]:
    key = tuple(schema.names)
    entry = _MAKERS.get(key)
    if entry is None or not entry[0].equals(schema):
        if len(_MAKERS) >= 64:
            _MAKERS.clear()
        entry = _MAKERS[key] = (schema, _row_makers(schema))
    return entry[1]


def _row_makers(schema: pa.Schema) -> Optional[Dict[str, Callable]]:
    """Per column, what turns its Python value into the numpy extractor's value (None: a type not covered)."""
    makers = {}
    for field in schema:
        kind = field.type
        scalar = _scalar_type(kind)
        if scalar is None and pa.types.is_fixed_size_list(kind):
            item = _scalar_type(kind.value_type)
            if item is np.str_:
                makers[field.name] = lambda v: np.array(v, dtype=object)
            elif item is not None:
                makers[field.name] = partial(np.array, dtype=np.dtype(kind.value_type.to_pandas_dtype()))
            else:
                return None
        elif scalar is None:
            return None
        else:
            makers[field.name] = scalar
    return makers


def _decodes_batches(feature) -> bool:
    """A ``PairBands`` feature: it decodes a whole column of references into one array. Asked by what it can do,
    not by its class, so that this module does not import the feature's (which imports this one to install it)."""
    return callable(getattr(feature, "decode_batch", None))


def _stacked(value) -> Optional[np.ndarray]:
    """A band value as one array: an example's array, or a batch's list of equal arrays (None: neither)."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        return np.stack(value)
    return None


class _KeepBandDtype:
    """Mixin: band columns are decoded straight into one batch array in their own dtype; the rest as usual."""

    features: Any  # datasets.Features or None: set by datasets' Formatter

    def numpy_arrow_extractor(self):
        """An extractor instance (``datasets`` calls ``self.numpy_arrow_extractor()``)."""
        if not self._band_columns:  # other datasets: exactly datasets' own path
            return NumpyArrowExtractor()
        return FastNumpyArrowExtractor()

    @cached_property
    def _band_columns(self) -> List[str]:
        """``PairBands`` columns; and the ``Array3D`` band columns of our streamed or exported rows
        (a dataset with ``patch_id`` and ``s1_name`` columns), which datasets would turn into int64 too.
        Asked several times per row: worked out once per formatter (its features do not change)."""
        features = self.features or {}
        ours = "patch_id" in features and "s1_name" in features
        return [
            k for k, f in features.items()
            if (_decodes_batches(f) and f.decode)
            or (ours and k in BAND_COLUMNS and isinstance(f, datasets.Array3D))
        ]

    def _split(self, pa_table) -> Tuple[List[str], object]:
        names = pa_table.schema.names  # (Table.column_names builds a Field per column: 6 us instead of 1.5)
        bands = [c for c in self._band_columns if c in names]
        return bands, (pa_table.drop_columns(bands) if bands else pa_table)

    @cached_property
    def _decoding_columns(self) -> frozenset:
        """Columns whose features decode (e.g. an Image column): worked out once per formatter."""
        return frozenset(k for k, feature in (self.features or {}).items() if require_decoding(feature))

    def _decoded(self, pa_table, name: str) -> np.ndarray:
        feature = self.features[name]
        if _decodes_batches(feature):
            return feature.decode_batch(pa_table[name].to_pylist())
        return array3d_values(pa_table[name], feature.shape).astype(feature.dtype, copy=False)

    def recursive_tensorize(self, data_struct):
        """``datasets``' version maps with ``map_nested``, which builds a progress bar per call (~50 us a row);
        for a flat dict (no nested dicts, so the same result) each value is tensorized directly."""
        if isinstance(data_struct, dict) and not any(isinstance(v, dict) for v in data_struct.values()):
            bands = set(self._band_columns)  # streamed examples arrive here with their band arrays
            return {k: self._bands(_stacked(v)) if k in bands and _stacked(v) is not None else self.tensorize_value(v)
                    for k, v in data_struct.items()}
        return super().recursive_tensorize(data_struct)

    def format_row(self, pa_table):
        bands, rest = self._split(pa_table)
        if not bands:
            return super().format_row(pa_table)
        row = extract_one_row(rest) if rest.num_columns else {}
        if row is None:
            row = super().format_row(rest)
        else:
            decoding = self._decoding_columns
            if decoding and not decoding.isdisjoint(row):
                row = self.python_features_decoder.decode_row(row)
            row = self.recursive_tensorize(row)
        for k in bands:
            row[k] = self._bands(self._decoded(pa_table, k)[0])
        return {k: row[k] for k in pa_table.schema.names}

    def format_batch(self, pa_table):
        bands, rest = self._split(pa_table)
        if not bands:
            return super().format_batch(pa_table)
        batch = super().format_batch(rest) if rest.num_columns else {}
        decoded = {k: self._bands(self._decoded(pa_table, k)) for k in bands}
        return {k: decoded[k] if k in decoded else batch[k] for k in pa_table.column_names}

    def format_column(self, pa_table):
        name = pa_table.column_names[0]
        if name not in self._band_columns:
            return super().format_column(pa_table)
        return self._bands(self._decoded(pa_table, name))


class BandNumpyFormatter(_KeepBandDtype, TensorizeHook, NumpyFormatter):
    def tensorize_value(self, data_struct):
        if isinstance(data_struct, (np.number, np.str_, str)):  # what NumpyFormatter._tensorize returns as is
            return data_struct
        if isinstance(data_struct, np.ndarray) and data_struct.dtype == object and data_struct.ndim == 1 \
                and all(isinstance(v, str) for v in data_struct):
            # e.g. ``options``: datasets rebuilds it element by element (~50 us a row) into an equal object array
            return data_struct
        return super().tensorize_value(data_struct)

    def _bands(self, array: np.ndarray) -> np.ndarray:
        dtype = self.np_array_kwargs.get("dtype")
        return array if dtype is None else array.astype(dtype, copy=False)


register_formatter(BandNumpyFormatter, "numpy", aliases=["np"])

try:  # torch is optional
    from datasets.formatting.torch_formatter import TorchFormatter
    import datasets.config as _config

    if _config.TORCH_AVAILABLE:

        class BandTorchFormatter(_KeepBandDtype, TensorizeHook, TorchFormatter):
            def _bands(self, array: np.ndarray):
                import torch

                if "dtype" in self.torch_tensor_kwargs:
                    return torch.as_tensor(array, **self.torch_tensor_kwargs)
                if array.dtype == np.uint16:
                    array = array.astype(np.int32)
                return torch.from_numpy(np.ascontiguousarray(array))

        register_formatter(BandTorchFormatter, "torch", aliases=["pt", "pytorch"])
except ImportError:  # pragma: no cover - datasets without its torch module
    pass
