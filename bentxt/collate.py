"""``collate``: a list of examples -> one PyTorch batch (``DataLoader(collate_fn=collate)``).

- Image arrays (``s2_10m``, ``s2_20m``, ``s2_60m``, ``s1``, ``image``) are
  stacked into tensors (B, C, H, W) in their own dtype: float32 stays float32,
  uint16 stays ``torch.uint16`` (torch >= 2.3 has the dtype, but few kernels:
  arithmetic and convolutions need ``x.float()`` first). ``Collate(uint16="int32")``
  casts to int32 instead (exact; 0..65535 fits).
  Nested lists (the ``python`` format) are read in the feature's dtype.
- Python / numpy integers, floats and bools become int64 / float64 / bool tensors (B,).
- Everything else (texts, ``bbox``, ``point``, ``options`` -- which are None on
  rows of other types --, the patch layout's ``annotations``) stays a list of B values.
- Aliases of the publisher's ``collate_mixed`` batch: ``text_input`` = ``input``,
  ``reference_output`` = ``output``, ``image_input`` = the ``image`` tensor
  (configs with ``bands=``), else the only image group, else a dict
  ``{group: tensor}`` (native groups differ in size and cannot be stacked into
  one tensor; pass ``image_key=`` to choose one). Aliases are the same objects,
  not copies.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .bands import BAND_GROUPS

__all__ = ["collate", "Collate", "IMAGE_KEYS"]

_GROUP_DTYPE = {g.name: np.dtype(g.dtype) for g in BAND_GROUPS}
IMAGE_KEYS = tuple(_GROUP_DTYPE) + ("image",)
_ALIASES = {"text_input": "input", "reference_output": "output"}


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("collate needs PyTorch: pip install 'bigearthnet-txt[torch]'") from err
    return torch


class Collate:
    """Configurable :func:`collate`: ``image_key`` picks ``image_input``; ``uint16`` is ``"keep"`` or ``"int32"``."""

    def __init__(self, image_key: Optional[str] = None, uint16: str = "keep"):
        if uint16 not in ("keep", "int32"):
            raise ValueError(f"uint16={uint16!r}; choose 'keep' (torch.uint16) or 'int32'")
        self.image_key = image_key
        self.uint16 = uint16

    def _images(self, key: str, values: Sequence[Any]):
        torch = _torch()
        if all(isinstance(v, torch.Tensor) for v in values):
            stacked = torch.stack(list(values))
            return stacked.to(torch.int32) if stacked.dtype == torch.uint16 and self.uint16 == "int32" else stacked
        arrays = [v if isinstance(v, np.ndarray) else np.asarray(v, dtype=_GROUP_DTYPE.get(key, np.float32)) for v in values]
        stacked = np.stack(arrays)
        if stacked.dtype == np.uint16 and self.uint16 == "int32":
            stacked = stacked.astype(np.int32)
        return torch.from_numpy(stacked)

    @staticmethod
    def _scalars(values: List[Any]):
        torch = _torch()
        items = [v.item() if isinstance(v, np.generic) else v for v in values]
        if all(isinstance(v, bool) for v in items):
            return torch.tensor(items, dtype=torch.bool)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            return torch.tensor(items, dtype=torch.int64)
        if all(isinstance(v, float) for v in items):
            return torch.tensor(items, dtype=torch.float64)
        return [v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v for v in items]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        if not examples:
            raise ValueError("collate needs at least one example")
        keys = list(examples[0])
        batch: Dict[str, Any] = {}
        for key in keys:
            values = [e[key] for e in examples]
            if key in IMAGE_KEYS and all(v is not None for v in values):
                batch[key] = self._images(key, values)
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


_DEFAULT = Collate()


def collate(examples: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Stack images into (B, C, H, W) tensors (dtypes kept), keep texts as lists, add the publisher's aliases."""
    return _DEFAULT(examples)
