"""The ``numpy`` and ``torch`` formats keep the bands' dtype.

``datasets``' formatters turn every integer array into int64 (4x the memory of
S2's uint16) unless ``dtype=None`` is passed, which few users know. For the
:class:`~bentxt.imagery_table.PairBands` columns of a prepared cache these
subclasses return the stored dtype instead, stacked into one (B, C, H, W)
array per batch:

- numpy: uint16 stays uint16, float32 stays float32;
- torch: float32 stays float32; uint16 becomes int32 (exact for 0..65535;
  ``torch.uint16`` exists but has almost no kernels, arithmetic included).

An explicit ``dtype=`` still wins. Every other column, and every other dataset
in the process, is formatted exactly as ``datasets`` does it. Registering a
format under an existing name uses ``datasets.formatting._register_formatter``
(private; see registration.py for the list).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import numpy as np
from datasets.formatting import _register_formatter as _datasets_register
from datasets.formatting.np_formatter import NumpyFormatter

from .imagery_table import PairBands


def _register_formatter(cls, name: str, aliases: List[str]) -> None:
    """Replace a format quietly (``datasets`` warns about every replacement)."""
    quiet = logging.getLogger("datasets.formatting")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        _datasets_register(cls, name, aliases=aliases)
    finally:
        quiet.setLevel(level)


class _KeepBandDtype:
    """Mixin: band columns skip the generic tensorize step and are stacked in their own dtype."""

    def _band_columns(self) -> List[str]:
        return [k for k, f in (self.features or {}).items() if isinstance(f, PairBands)]

    def recursive_tensorize(self, data_struct: Dict[str, Any]):
        bands = {k: data_struct.pop(k) for k in self._band_columns() if k in data_struct}
        out = super().recursive_tensorize(data_struct)
        for k, v in bands.items():
            out[k] = self._bands(v)
        return out

    def format_column(self, pa_table):
        name = pa_table.column_names[0]
        if name not in self._band_columns():
            return super().format_column(pa_table)
        column = self.numpy_arrow_extractor().extract_column(pa_table)
        return self._bands(self.python_features_decoder.decode_column(column, name))

    def _stack(self, value) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        return np.stack(list(value)) if len(value) else np.zeros((0,), dtype=np.float32)


class BandNumpyFormatter(_KeepBandDtype, NumpyFormatter):
    def _bands(self, value) -> np.ndarray:
        array = self._stack(value)
        dtype = self.np_array_kwargs.get("dtype")
        return array if dtype is None else array.astype(dtype, copy=False)


_register_formatter(BandNumpyFormatter, "numpy", aliases=["np"])

try:  # torch is optional
    from datasets.formatting.torch_formatter import TorchFormatter
    import datasets.config as _config

    if _config.TORCH_AVAILABLE:

        class BandTorchFormatter(_KeepBandDtype, TorchFormatter):
            def _bands(self, value):
                import torch

                array = self._stack(value)
                if "dtype" in self.torch_tensor_kwargs:
                    return torch.as_tensor(array, **self.torch_tensor_kwargs)
                if array.dtype == np.uint16:
                    array = array.astype(np.int32)
                return torch.from_numpy(np.ascontiguousarray(array))

        _register_formatter(BandTorchFormatter, "torch", aliases=["pt", "pytorch"])
except ImportError:  # pragma: no cover - datasets without its torch module
    pass
