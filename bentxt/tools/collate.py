"""``collate``: examples -> one PyTorch batch (``DataLoader(collate_fn=collate)``).

Input: a list of examples in any format of a prepared or streamed dataset --
python rows (numpy image arrays, or nested lists from a streamed export),
``numpy`` rows, ``torch`` rows -- or one batch as a dict of columns (e.g.
``ds.with_format("numpy")[0:8]``, ``ds[0:8]``, a ``torch`` batch).

- Image arrays (``s2_10m``, ``s2_20m``, ``s2_60m``, ``s1``, ``image``) are
  stacked into tensors (B, C, H, W). float32 stays float32. uint16 (S2
  reflectance) becomes **int32** by default, exactly what ``with_format("torch")``
  gives for these columns (``bentxt.cache.formatting``): exact for 0..65535, and
  every torch kernel accepts it. ``Collate(uint16="keep")`` gives
  ``torch.uint16`` instead (half the memory; torch >= 2.3 has the dtype but few
  kernels: arithmetic and convolutions need ``x.float()`` first). Tensors
  already int32 (torch format) are left as they are. Nested lists are read in
  the feature's dtype.
- ``bbox`` (B, 4) and ``point`` (B, 2) become float tensors in the values'
  float dtype (float64 from python rows, float32 from the numpy/torch
  formats). Rows without a box or point hold NaN there (the builder's
  ``NO_BOX``/``NO_POINT``); ``None`` is read as NaN too. Test with
  ``torch.isnan(batch["bbox"]).any(-1)``.
- ``options`` is a list of B lists of 4 strings (``""`` on rows that are not
  MCQ; ``None`` becomes that too).
- Python / numpy integers, floats and bools (and 0-d tensors) become int64 /
  float64 / bool tensors (B,) -- 0-d tensors keep their dtype.
- Everything else (texts, the patch layout's ``annotations``) stays a list of
  B values; numpy strings become ``str``.
- Aliases of the publisher's ``collate_mixed`` batch: ``text_input`` = ``input``,
  ``reference_output`` = ``output``, ``image_input`` = the ``image`` tensor
  (configs with ``bands=``), else the only image group, else a dict
  ``{group: tensor}`` (native groups differ in size and cannot be stacked into
  one tensor; pass ``image_key=`` to choose one). Aliases are the same objects,
  not copies.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from bentxt.bands import BAND_GROUPS

__all__ = ["collate", "Collate", "IMAGE_KEYS", "COORDINATE_KEYS"]

_GROUP_DTYPE = {g.name: np.dtype(g.dtype) for g in BAND_GROUPS}
IMAGE_KEYS = tuple(_GROUP_DTYPE) + ("image",)
#: fixed-length coordinates, NaN-filled where a row has none: key -> length
COORDINATE_KEYS = {"bbox": 4, "point": 2}
_OPTIONS = "options"
_N_OPTIONS = 4
_ALIASES = {"text_input": "input", "reference_output": "output"}


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("collate needs PyTorch: pip install 'bigearthnet-txt[torch]'") from err
    return torch


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "numpy")


def _rows_of(column: Any) -> List[Any]:
    """A batch column (list, array or tensor of B values) as a list of B values."""
    if isinstance(column, (list, tuple)):
        return list(column)
    if isinstance(column, np.ndarray) or _is_tensor(column):
        return list(column.unbind(0)) if _is_tensor(column) else list(column)
    raise TypeError(f"a batch column must hold B values (a list, an array or a tensor), got {type(column).__name__}")


class Collate:
    """Configurable :func:`collate`.

    ``image_key`` picks which image tensor ``image_input`` is. ``uint16``:
    ``"int32"`` (default, the same dtype as ``with_format("torch")``) or
    ``"keep"`` (``torch.uint16``).
    """

    def __init__(self, image_key: Optional[str] = None, uint16: str = "int32"):
        if uint16 not in ("keep", "int32"):
            raise ValueError(f"uint16={uint16!r}; choose 'int32' (the torch format's dtype) or 'keep' (torch.uint16)")
        self.image_key = image_key
        self.uint16 = uint16

    # --- per kind of column

    def _images(self, key: str, values: Sequence[Any], column: Any = None):
        torch = _torch()
        if _is_tensor(column) and column.ndim == 4:  # a torch batch: already stacked
            stacked = column
        elif isinstance(column, np.ndarray) and column.ndim == 4:  # a numpy batch
            stacked = torch.from_numpy(np.ascontiguousarray(column))
        elif all(_is_tensor(v) for v in values):
            stacked = torch.stack(list(values))
        else:
            arrays = [v.detach().cpu().numpy() if _is_tensor(v) else
                      v if isinstance(v, np.ndarray) else np.asarray(v, dtype=_GROUP_DTYPE.get(key, np.float32))
                      for v in values]
            stacked = torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))
        if stacked.dtype == torch.uint16 and self.uint16 == "int32":
            stacked = stacked.to(torch.int32)
        return stacked

    @staticmethod
    def _coordinates(key: str, values: Sequence[Any]):
        torch = _torch()
        n = COORDINATE_KEYS[key]
        if all(_is_tensor(v) for v in values):
            return torch.stack(list(values))
        arrays = []
        for v in values:
            if v is None:
                arrays.append(np.full(n, np.nan))
            else:
                a = np.asarray(v.detach().cpu() if _is_tensor(v) else v)
                arrays.append(a if a.dtype.kind == "f" else a.astype(np.float64))
        stacked = np.stack(arrays)
        if stacked.shape[1:] != (n,):
            raise ValueError(f"{key}: expected {n} values per row, got shape {stacked.shape[1:]}")
        return torch.from_numpy(stacked)

    @staticmethod
    def _options(values: Sequence[Any]) -> List[List[str]]:
        return [[""] * _N_OPTIONS if v is None else [str(o) for o in v] for v in values]

    @staticmethod
    def _scalars(values: List[Any]):
        torch = _torch()
        if values and all(_is_tensor(v) and v.ndim == 0 for v in values):
            return torch.stack(values)
        items = [v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0) else v
                 for v in values]
        if all(isinstance(v, bool) for v in items):
            return torch.tensor(items, dtype=torch.bool)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return torch.tensor(items, dtype=torch.int64)
        if all(isinstance(v, float) for v in items):
            return torch.tensor(items, dtype=torch.float64)
        return [v.tolist() if isinstance(v, np.ndarray) and v.dtype.kind in "USO" else v for v in items]

    # --- the batch

    def __call__(self, examples: Union[Sequence[Mapping[str, Any]], Mapping[str, Any]]) -> Dict[str, Any]:
        if isinstance(examples, Mapping):  # one batch of columns
            columns = dict(examples)
            if not columns:
                raise ValueError("collate needs at least one column")
            rows = {key: _rows_of(column) for key, column in columns.items()}
        else:
            if not examples:
                raise ValueError("collate needs at least one example")
            columns = {}
            rows = {key: [e[key] for e in examples] for key in examples[0]}
        batch: Dict[str, Any] = {}
        for key, values in rows.items():
            if key in IMAGE_KEYS and all(v is not None for v in values):
                batch[key] = self._images(key, values, columns.get(key))
            elif key in COORDINATE_KEYS:
                batch[key] = self._coordinates(key, values)
            elif key == _OPTIONS and all(v is None or _is_sequence(v) for v in values):
                batch[key] = self._options(values)
            else:
                batch[key] = self._scalars(values)
        for alias, key in _ALIASES.items():
            if key in batch:
                batch[alias] = batch[key]
        images = {k: batch[k] for k in IMAGE_KEYS if k in batch and not isinstance(batch[k], list)}
        if self.image_key is not None:
            if self.image_key not in images:
                raise KeyError(f"image_key={self.image_key!r} is not an image field of the batch ({list(images)})")
            batch["image_input"] = images[self.image_key]
        elif "image" in images:
            batch["image_input"] = images["image"]
        elif len(images) == 1:
            batch["image_input"] = next(iter(images.values()))
        elif images:
            batch["image_input"] = images
        return batch

    def __repr__(self) -> str:
        return f"Collate(image_key={self.image_key!r}, uint16={self.uint16!r})"


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


_DEFAULT = Collate()


def collate(examples: Union[Sequence[Mapping[str, Any]], Mapping[str, Any]]) -> Dict[str, Any]:
    """Stack images into (B, C, H, W) tensors (uint16 -> int32, as the torch format), boxes/points into NaN-filled
    float tensors; texts stay lists; the publisher's aliases are added. See the module docstring."""
    return _DEFAULT(examples)
