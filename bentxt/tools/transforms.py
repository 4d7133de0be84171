"""Normalisation and text-consistent geometric augmentation for BigEarthNet.txt examples.

Both work on one example (``ds.map(f)``, a plain call) and on a batch
(``ds.with_transform(f)``: a dict of columns, each a list of B values, as
``datasets`` hands to a transform), in the annotation layout (one text per
example) and the patch layout (``annotations`` list per example), in every
format of a prepared or streamed dataset: python (images are numpy arrays, or
nested lists in a streamed export), ``numpy`` (a batch is one array per
column) and ``torch`` (tensors). Values come back in the container they came
in: numpy arrays stay numpy (native groups keep their dtype), tensors stay
tensors, nested lists become numpy arrays.

Rows without a box or point carry NaN-filled ``bbox``/``point`` (the builder's
``NO_BOX``/``NO_POINT``, never null): they are treated as absent, so a NaN box
stays NaN under every op (``None`` is accepted as absent too).

Normalisation
-------------
The publisher's per-band means and standard deviations (``bands.MEAN``/``STD``,
train split, nearest to 120 px) as arrays: ``GROUP_MEAN`` / ``GROUP_STD`` per
native band group (``s2_10m`` ...), ``band_stats(bands)`` for any band list or
combination name (the channel order of ``image``). ``Normalize`` computes
``(x - mean) / std`` in float32, like ``torchvision.transforms.Normalize`` on
the publisher's float32 tensors.

Geometric augmentation
----------------------
Coordinates follow the release: fractions of the image, origin top-left,
``x`` = column, ``y`` = row; boxes are ``[x0, y0, x1, y1]``. The eight
operations of the square's symmetry group, for an image ``a[..., row, col]``:

=============  ==============================  ======================  ====================
op             image                           point (x, y) ->         inverse
=============  ==============================  ======================  ====================
``identity``   unchanged                       (x, y)                  identity
``hflip``      mirror left-right               (1 - x, y)              hflip
``vflip``      mirror top-bottom               (x, 1 - y)              vflip
``rot90``      ``np.rot90(a, 1)``: 90° CCW     (y, 1 - x)              rot270
``rot180``     ``np.rot90(a, 2)``              (1 - x, 1 - y)          rot180
``rot270``     ``np.rot90(a, 3)``: 90° CW      (1 - y, x)              rot90
``transpose``  swap rows and columns           (y, x)                  transpose
``transverse`` anti-diagonal mirror            (1 - y, 1 - x)          transverse
=============  ==============================  ======================  ====================

Counter-clockwise (CCW) is as seen on screen with row 0 at the top, the
convention of ``np.rot90(a, k, axes=(-2, -1))``: after ``rot90`` the top-right
corner is the top-left one. Each op is stored once as (transpose?, mirror x?,
mirror y?) and the image, the point and the box are all derived from that one
triple, so they cannot disagree. Boxes map both corners and are re-sorted
(``x0 <= x1``, ``y0 <= y1``); values are snapped to the release's 0.01 grid
(``1 - 0.93`` is 0.07, not 0.06999999999999995). All native groups (120, 60
and 20 px) are transformed alike, so they stay co-registered.

For grounding rows the box in ``output`` is rewritten with ``text.format_bbox``
and the ``<point>(x, y)</point>`` in ``input`` with ``text.replace_point``.

Rows whose text depends on orientation and cannot be rewritten
(``orientation_text`` returns the reason):

- binary / mcq rows: only the categories ``presence``, ``area``, ``count``,
  ``adjacency``, ``country``, ``season`` and ``climate zone`` are orientation
  free; ``relative pos`` (answers like "to the left") and any unknown category
  are not;
- captioning rows whose caption or prompt contains a direction word
  (``DIRECTION_RE``: north/south/east/west and their -ern/-ward forms, left,
  right, top, bottom, upper, lower, above, below, beneath, horizontal,
  vertical, diagonal, upward(s), downward(s), with -most forms; whole words,
  case-insensitive, so "north-east" and "top-left" count but "topography" or
  "bright" do not);
- grounding rows whose prompt (outside the point tag) contains a direction
  word, or that have a point but not exactly one ``<point>`` tag in ``input``
  (e.g. the tags were replaced with ``point_token``);
- rows of an unknown type.

``on_orientation_text`` decides what happens to such rows when an op other
than ``identity`` is drawn: ``"skip"`` (default) returns the example
unaugmented (image and text untouched), ``"raise"`` raises
``OrientationTextError``, ``"drop"`` (patch layout) augments the patch and
removes the annotations that cannot be rewritten; in the annotation layout a
transform cannot remove a row, so ``"drop"`` behaves like ``"skip"`` there.

The op of an example is drawn from a hash of (seed, epoch, the example's ``ID``
-- ``patch_id`` in the patch layout), so it does not depend on the order in
which examples are read, on batch boundaries or on DataLoader workers; call
``set_epoch`` to draw new ops each epoch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from bentxt.text import grammar as text
from bentxt.bands import BAND_GROUPS, MEAN, STD, resolve_bands
from bentxt.errors import BigEarthNetTxtError

__all__ = [
    "BAND_MEAN",
    "BAND_STD",
    "GROUP_MEAN",
    "GROUP_STD",
    "IMAGE_KEYS",
    "OPS",
    "INVERSE",
    "DIRECTION_RE",
    "OrientationTextError",
    "band_stats",
    "normalize",
    "Normalize",
    "transform_image",
    "transform_point",
    "transform_bbox",
    "orientation_text",
    "apply_op",
    "GeometricAugment",
]

# ----------------------------------------------------------------------------- statistics

#: per band, the publisher's normalisation statistics (bands.MEAN / bands.STD)
BAND_MEAN: Dict[str, float] = dict(MEAN)
BAND_STD: Dict[str, float] = dict(STD)

#: per native band group, float32 arrays in the group's channel order
GROUP_MEAN: Dict[str, np.ndarray] = {
    g.name: np.array([MEAN[b] for b in g.bands], dtype=np.float32) for g in BAND_GROUPS
}
GROUP_STD: Dict[str, np.ndarray] = {g.name: np.array([STD[b] for b in g.bands], dtype=np.float32) for g in BAND_GROUPS}
for _a in (*GROUP_MEAN.values(), *GROUP_STD.values()):
    _a.flags.writeable = False

_GROUP_DTYPE: Dict[str, np.dtype] = {g.name: np.dtype(g.dtype) for g in BAND_GROUPS}
#: the example keys holding image arrays: the native groups and the resampled ``image``
IMAGE_KEYS: Tuple[str, ...] = tuple(g.name for g in BAND_GROUPS) + ("image",)


def band_stats(bands: Union[str, Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 arrays of shape (C,) for a band list or combination name (``"RGB"``, ``"all"`` ...)."""
    names = resolve_bands(bands)
    return (np.array([MEAN[b] for b in names], dtype=np.float32), np.array([STD[b] for b in names], dtype=np.float32))


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "numpy")


def _as_array(value: Any, key: str) -> np.ndarray:
    """An image value (numpy array, torch tensor or nested lists) as numpy, in the feature's dtype for lists."""
    if isinstance(value, np.ndarray):
        return value
    if _is_tensor(value):
        return value.detach().cpu().numpy()
    dtype = _GROUP_DTYPE.get(key, np.dtype(np.float32))
    return np.asarray(value, dtype=dtype)


def _like(array: np.ndarray, original: Any) -> Any:
    """``array`` in the container ``original`` came in: a tensor for a tensor, numpy otherwise."""
    if _is_tensor(original):
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(original.device)
    return array


def _present(value: Any) -> bool:
    """Whether a box/point is there: None and NaN-filled values (the builder's "none") are absent."""
    if value is None:
        return False
    values = np.asarray(value.detach().cpu() if _is_tensor(value) else value, dtype=np.float64)
    return values.size > 0 and bool(np.isfinite(values).all())


def _coords_like(values: List[float], original: Any) -> Any:
    """New box/point coordinates in the container (and float dtype) of the original value."""
    if isinstance(original, np.ndarray):
        return np.asarray(values, dtype=original.dtype)
    if _is_tensor(original):
        import torch

        return torch.tensor(values, dtype=original.dtype, device=original.device)
    return values


class Normalize:
    """``(x - mean) / std`` per channel, float32 out; for ``ds.with_transform``, ``ds.map`` or one example.

    Native groups (``s2_10m``, ``s2_20m``, ``s2_60m``, ``s1``) use their own
    band order. ``image`` (configs with ``bands=``) needs ``bands``: the
    config's band list or combination name, i.e. the channel order. Other
    fields pass through unchanged; the input dict is not modified.
    """

    def __init__(self, bands: Optional[Union[str, Sequence[str]]] = None):
        self.bands = None if bands is None else resolve_bands(bands)
        self._image_stats = None if self.bands is None else band_stats(self.bands)

    def stats(self, key: str) -> Tuple[np.ndarray, np.ndarray]:
        if key == "image":
            if self._image_stats is None:
                raise ValueError(
                    "normalising 'image' needs its channel order: Normalize(bands=...) with the config's bands "
                    "(a list of band names or 'RGB', 'S2-10m20m', 'S1S2-10m20m', 'all')"
                )
            return self._image_stats
        return GROUP_MEAN[key], GROUP_STD[key]

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        out = dict(batch)
        for key in IMAGE_KEYS:
            if key not in batch or batch[key] is None:
                continue
            value = batch[key]
            mean, std = self.stats(key)
            if isinstance(value, (list, tuple)):
                array = np.stack([_as_array(v, key) for v in value]).astype(np.float32, copy=False) if value else None
                if array is None:
                    continue
            else:
                array = _as_array(value, key).astype(np.float32, copy=False)
            if array.ndim not in (3, 4) or array.shape[-3] != len(mean):
                raise ValueError(
                    f"{key}: expected (C, H, W) or (B, C, H, W) with C={len(mean)}, got shape {array.shape}"
                )
            normalised = (array - mean[:, None, None]) / std[:, None, None]
            first = value[0] if isinstance(value, (list, tuple)) else value
            out[key] = _like(normalised, first)
        return out

    def __repr__(self) -> str:
        return f"Normalize(bands={list(self.bands) if self.bands else None})"


def normalize(batch: Mapping[str, Any], bands: Optional[Union[str, Sequence[str]]] = None) -> Dict[str, Any]:
    """Functional form of :class:`Normalize` (use ``functools.partial(normalize, bands=...)`` for ``image``)."""
    return Normalize(bands)(batch)


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Op:
    transpose: bool  # first swap x and y (rows and columns)
    mirror_x: bool  # then x -> 1 - x (reverse columns)
    mirror_y: bool  # then y -> 1 - y (reverse rows)


_OPS: Dict[str, _Op] = {
    "identity": _Op(False, False, False),
    "hflip": _Op(False, True, False),
    "vflip": _Op(False, False, True),
    "rot90": _Op(True, False, True),
    "rot180": _Op(False, True, True),
    "rot270": _Op(True, True, False),
    "transpose": _Op(True, False, False),
    "transverse": _Op(True, True, True),
}
#: all op names: the 8 symmetries of the square
OPS: Tuple[str, ...] = tuple(_OPS)
#: op -> the op that undoes it
INVERSE: Dict[str, str] = {
    "identity": "identity", "hflip": "hflip", "vflip": "vflip", "rot90": "rot270", "rot180": "rot180",
    "rot270": "rot90", "transpose": "transpose", "transverse": "transverse",
}


def _op(name: str) -> _Op:
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; choose one of {list(OPS)}") from None


def transform_image(array: Any, op: str) -> np.ndarray:
    """Apply ``op`` to the last two axes (row, column) of an array (C, H, W), (B, C, H, W) or (H, W).

    Returns a contiguous copy in the input's dtype (a tensor for a tensor).
    """
    if _is_tensor(array):
        return _like(transform_image(array.detach().cpu().numpy(), op), array)
    o = _op(op)
    a = np.asarray(array)
    if a.ndim < 2:
        raise ValueError(f"an image needs at least 2 axes, got shape {a.shape}")
    if o.transpose:
        a = np.swapaxes(a, -1, -2)
    if o.mirror_x:
        a = a[..., :, ::-1]
    if o.mirror_y:
        a = a[..., ::-1, :]
    return np.ascontiguousarray(a)


def _snap(v: float) -> float:
    return round(float(v), 2) + 0.0


def _map_xy(o: _Op, x: float, y: float) -> Tuple[float, float]:
    if o.transpose:
        x, y = y, x
    if o.mirror_x:
        x = 1.0 - x
    if o.mirror_y:
        y = 1.0 - y
    return x, y


def transform_point(point: Sequence[float], op: str) -> List[float]:
    """[x, y] (fractions, origin top-left, x = column) after ``op``, on the 0.01 grid."""
    if len(point) != 2:
        raise ValueError(f"a point has 2 values, got {len(point)}")
    x, y = _map_xy(_op(op), float(point[0]), float(point[1]))
    return [_snap(x), _snap(y)]


def transform_bbox(box: Sequence[float], op: str) -> List[float]:
    """[x0, y0, x1, y1] after ``op``: both corners mapped, then re-sorted; on the 0.01 grid."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 values, got {len(box)}")
    o = _op(op)
    ax, ay = _map_xy(o, float(box[0]), float(box[1]))
    bx, by = _map_xy(o, float(box[2]), float(box[3]))
    return [_snap(min(ax, bx)), _snap(min(ay, by)), _snap(max(ax, bx)), _snap(max(ay, by))]


# ----------------------------------------------------------------------------- orientation rule

#: binary / mcq categories whose question and answer do not change under flips and rotations
ORIENTATION_FREE_CATEGORIES = frozenset({"presence", "area", "count", "adjacency", "country", "season", "climate zone"})

_CARDINAL = r"(?:north|south)(?:-?(?:east|west))?(?:ern|erly|wards?)?|(?:east|west)(?:ern|erly|wards?)?"
_RELATIVE = (
    r"(?:left|right|top|bottom)(?:most)?|upper(?:most)?|lower(?:most)?|above|below|beneath"
    r"|horizontal(?:ly)?|vertical(?:ly)?|diagonal(?:ly)?|upwards?|downwards?"
)
#: a direction word (whole word, case-insensitive): see the module docstring
DIRECTION_RE = re.compile(rf"\b(?:{_CARDINAL}|{_RELATIVE})\b", re.IGNORECASE)
_POINT_TAG_RE = re.compile(r"<point>.*?</point>", re.DOTALL)


class OrientationTextError(BigEarthNetTxtError, ValueError):
    """An augmentation was asked to flip or rotate a row whose text it cannot rewrite."""


def orientation_text(annotation: Mapping[str, Any]) -> Optional[str]:
    """Why this row's text depends on orientation in a way the augmentation cannot rewrite; None if it does not."""
    kind, category = (None if v is None else str(v) for v in (annotation.get("type"), annotation.get("category")))
    prompt = str(annotation.get("input") or "")
    if kind in ("binary", "mcq"):
        if category in ORIENTATION_FREE_CATEGORIES:
            return None
        return f"{kind} category {category!r} depends on orientation"
    if kind == "captioning":
        m = DIRECTION_RE.search(str(annotation.get("output") or "")) or DIRECTION_RE.search(prompt)
        return None if m is None else f"caption mentions the direction {m[0]!r}"
    if kind == "bounding box":
        m = DIRECTION_RE.search(_POINT_TAG_RE.sub(" ", prompt))
        if m is not None:
            return f"grounding prompt mentions the direction {m[0]!r}"
        if _present(annotation.get("point")) and (prompt.count("<point>") != 1 or prompt.count("</point>") != 1):
            return "the point is not in one <point>(x, y)</point> tag (tags replaced?), so it cannot be rewritten"
        return None
    return f"unknown type {kind!r}"


def _rewrite(annotation: Mapping[str, Any], op: str) -> Dict[str, Any]:
    """The text fields of one annotation after ``op`` (caller checked ``orientation_text``).

    An absent box or point (None or NaN-filled) is left as it is.
    """
    out = dict(annotation)
    if _present(out.get("bbox")):
        box = transform_bbox([float(v) for v in out["bbox"]], op)
        if out.get("type") == "bounding box" and "output" in out:
            out["output"] = text.format_bbox(box)
        out["bbox"] = _coords_like(box, out["bbox"])
    if _present(out.get("point")):
        point = transform_point([float(v) for v in out["point"]], op)
        if "input" in out:
            out["input"] = text.replace_point(str(out["input"]), point)
        out["point"] = _coords_like(point, out["point"])
    return out


def apply_op(example: Mapping[str, Any], op: str, on_orientation_text: str = "raise") -> Tuple[Dict[str, Any], str]:
    """Apply ``op`` to one example (either layout); returns (new example, op actually applied).

    The op applied is ``"identity"`` when the example was passed through
    under ``on_orientation_text="skip"`` (or ``"drop"`` in the annotation layout).
    Image values come back as numpy arrays (nested lists are read in the
    feature's dtype), or as tensors when they were tensors; the input example
    is not modified.
    """
    out, applied = _apply_text(example, op, on_orientation_text)
    for key in IMAGE_KEYS:
        if out.get(key) is not None:
            value = out[key]
            array = _as_array(value, key)
            out[key] = _like(array if applied == "identity" else transform_image(array, applied), value)
    return out, applied


def _apply_text(example: Mapping[str, Any], op: str, on_orientation_text: str) -> Tuple[Dict[str, Any], str]:
    """The texts after ``op`` and the op to apply to the images (``identity`` when passed through)."""
    _op(op)
    _check_policy(on_orientation_text)
    if op == "identity":
        return dict(example), op
    if "annotations" in example:  # patch layout
        annotations = list(example["annotations"] or [])
        reasons = [orientation_text(a) for a in annotations]
        bad = [(a, r) for a, r in zip(annotations, reasons) if r is not None]
        if bad:
            if on_orientation_text == "raise":
                a, r = bad[0]
                raise OrientationTextError(f"{op}: annotation ID {a.get('ID')} of patch {example.get('patch_id')}: {r}")
            if on_orientation_text == "skip":
                return dict(example), "identity"
        out = dict(example)
        out["annotations"] = [_rewrite(a, op) for a, r in zip(annotations, reasons) if r is None]
        return out, op
    has_text = any(k in example for k in _TEXT_KEYS)
    reason = orientation_text(example) if has_text else None
    if reason is not None:
        if on_orientation_text == "raise":
            raise OrientationTextError(f"{op}: ID {example.get('ID')}: {reason}")
        return dict(example), "identity"
    return _rewrite(example, op), op


_POLICIES = ("skip", "raise", "drop")
#: an example without any of these columns is image-only: nothing to check or rewrite
_TEXT_KEYS = ("type", "category", "input", "output", "bbox", "point")


def _check_policy(policy: str) -> None:
    if policy not in _POLICIES:
        raise ValueError(f"on_orientation_text={policy!r}; choose one of {list(_POLICIES)}")


def _ndim(value: Any) -> int:
    """Axes of a value: arrays and tensors say so; a list counts one; a scalar or string none."""
    if hasattr(value, "ndim"):
        return int(value.ndim)
    return 1 if isinstance(value, (list, tuple)) else 0


def _is_batch(d: Mapping[str, Any]) -> bool:
    """A batch has B values per column (a list, a 1-D array or tensor); one example has scalars / one image."""
    for key in ("ID", "patch_id", "s1_name", "input", "split"):
        if key in d:
            return _ndim(d[key]) >= 1
    for key in IMAGE_KEYS:
        if key in d:
            v = d[key]
            if isinstance(v, (list, tuple)):
                return len(v) > 0 and _ndim(v[0]) == 3 or np.ndim(v) == 4
            return _ndim(v) == 4
    raise ValueError("cannot tell an example from a batch: no ID, patch_id, input or image column")


def _key_value(value: Any) -> Any:
    """A key column's value as a plain Python value (numpy scalars and 0-d tensors too), so ops match across formats."""
    if hasattr(value, "item") and _ndim(value) == 0:
        value = value.item()
    return str(value) if isinstance(value, (str, np.str_)) else value


def _column_like(values: List[Any], original: Any) -> Any:
    """A batch column rebuilt in the container the input column had (list, numpy array, tensor)."""
    if isinstance(original, np.ndarray):
        if original.dtype.kind in "US":  # strings: a rewritten text may be longer than the input's width
            return np.array([str(v) for v in values]) if values else original[:0]
        if _is_tensor(values[0]) if values else False:
            values = [v.detach().cpu().numpy() for v in values]
        try:
            if not values:
                return original[:0]
            return np.stack([np.asarray(v) for v in values]).astype(original.dtype, copy=False)
        except ValueError:  # ragged (e.g. the patch layout's lists): keep a list
            return values
    if _is_tensor(original):
        import torch

        if values and all(_is_tensor(v) for v in values):
            return torch.stack(values).to(original.dtype)
        try:
            if not values:
                return original[:0]
            return torch.as_tensor(np.stack([np.asarray(v) for v in values])).to(original.dtype)
        except (ValueError, TypeError):
            return values
    return values


class GeometricAugment:
    """Random flips / 90° rotations applied consistently to images, boxes, points and texts.

    ``ops``: the op names to draw from (uniformly; include ``"identity"`` for a
    chance of no change); default all 8 symmetries of the square.
    ``seed`` / ``set_epoch``: the op of an example is a hash of (seed, epoch,
    ``ID`` or ``patch_id``). ``on_orientation_text``: ``"skip"`` | ``"raise"``
    | ``"drop"`` (see the module docstring). ``record_op``: add a column
    ``augment_op`` with the op applied (``"identity"`` for a skipped row).

    Call it on one example or on a batch (``ds.with_transform(aug)``,
    ``ds.map(aug)``, ``ds.map(aug, batched=True)``).
    """

    def __init__(
        self,
        ops: Sequence[str] = OPS,
        seed: int = 0,
        on_orientation_text: str = "skip",
        record_op: bool = False,
    ):
        self.ops = tuple(ops)
        if not self.ops:
            raise ValueError("ops must name at least one op")
        for name in self.ops:
            _op(name)
        _check_policy(on_orientation_text)
        self.seed, self.epoch = int(seed), 0
        self.on_orientation_text = on_orientation_text
        self.record_op = record_op
        self._rng = np.random.default_rng(self.seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def op_for(self, example: Mapping[str, Any]) -> str:
        """The op this example gets: a hash of (seed, epoch, ID or patch_id); a seeded draw if it has neither."""
        for key in ("ID", "patch_id", "s1_name"):
            if example.get(key) is not None:
                value = _key_value(example[key])
                digest = hashlib.blake2b(f"{self.seed}|{self.epoch}|{key}={value}".encode(), digest_size=8).digest()
                return self.ops[int.from_bytes(digest, "little") % len(self.ops)]
        return self.ops[int(self._rng.integers(len(self.ops)))]

    def apply(self, example: Mapping[str, Any], op: Optional[str] = None) -> Dict[str, Any]:
        """One example, with the given op or the drawn one."""
        out, applied = apply_op(example, op or self.op_for(example), self.on_orientation_text)
        if self.record_op:
            out["augment_op"] = applied
        return out

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, Any]:
        if not _is_batch(batch):
            return self.apply(batch)
        keys = list(batch)
        n = len(batch[keys[0]])
        rows = [self.apply({k: batch[k][i] for k in keys}) for i in range(n)]
        out: Dict[str, Any] = {k: [r[k] for r in rows] for k in rows[0]} if rows else {k: [] for k in keys}
        for key, values in out.items():
            if key in batch and not isinstance(batch[key], (list, tuple)):
                out[key] = _column_like(values, batch[key])  # numpy / torch batches keep their containers
            elif key in IMAGE_KEYS and values and all(v is not None for v in values):
                out[key] = np.stack(values)  # python batches: one (B, C, H, W) array
        return out

    def __repr__(self) -> str:
        return (f"GeometricAugment(ops={list(self.ops)}, seed={self.seed}, epoch={self.epoch}, "
                f"on_orientation_text={self.on_orientation_text!r})")
