"""Examples as conversations for vision-language fine-tuning (``messages`` + ``images``).

The format is the one TRL documents for vision datasets (``dataset_formats``,
"Vision datasets") and ``transformers`` processors' ``apply_chat_template``
read: an ``images`` list, and ``messages`` whose ``content`` is a list of typed
parts::

    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": <input>}]},
                  {"role": "assistant", "content": [{"type": "text", "text": <output>}]}],
     "images": [<PIL.Image>]}

One annotation row gives one user/assistant exchange; a ``layout="patch"`` row
gives one conversation per image pair, its texts as consecutive turns, the
image once in the first user turn (one image, as many answers).

Choices, because these are what hand-written conversions get wrong:

- ``image``: ``"rgb"`` (S2 true colour B04/B03/B02), ``"s1"`` (VV, VH, VV-VH
  false colour), both as 120 px uint8 PIL images with ``bentxt.imagery.preview``'s
  per-channel 2-98 % stretch; ``"bands"`` (a float32 (C, 120, 120) array: the
  config's ``image`` stack, else every native band upsampled like the
  publisher's loader, for models that take bands); ``"auto"``: rgb when the
  example has S2, else s1.
- ``tags``: ``"keep"`` the release's ``<point>(x, y)</point>`` / ``<ref>..</ref>``
  (the answers' grammar relies on them), ``"strip"`` them as the publisher's
  loader does by default; ``point_token`` / ``ref_token`` replace them by
  other strings (``bentxt.text.grammar.replace_tokens``: same order as the publisher).
- ``format_hints``: append one sentence per type stating the answer format
  (yes/no, option letter, box ``[x0 y0, x1 y1]`` in 0-1 fractions with the
  origin top-left). Off by default: the prompts then are the release's text.
  MCQ options are always kept inline as released (``a) .., b) ..``) and the
  answer is the released letter; boxes are answered in the release's text.

The function takes one example or a batch (dict of lists), so it works in
``Dataset.map`` / ``IterableDataset.map`` (``batched`` or not) and in
``with_transform`` on prepared and streamed datasets alike.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bentxt.imagery import preview
from bentxt.imagery import raster
from bentxt.text import grammar as text
from bentxt.bands import BAND_COMBINATIONS, BAND_GROUPS, DEFAULT_IMG_SIZE

__all__ = ["IMAGE_CHOICES", "TAG_CHOICES", "FORMAT_HINTS", "to_chat", "chat_features", "chat_dataset"]

IMAGE_CHOICES: Tuple[str, ...] = ("auto", "rgb", "s1", "bands")
TAG_CHOICES: Tuple[str, ...] = ("keep", "strip")
#: the sentence ``format_hints=True`` appends, per text type (captions need none)
FORMAT_HINTS: Dict[str, str] = {
    "binary": "Answer yes or no.",
    "mcq": "Answer with the letter of the correct option (a, b, c or d).",
    "bounding box": (
        "Answer with a box [x0 y0, x1 y1]: left, top, right and bottom as fractions of the image width and height "
        "(0.0 to 1.0 in steps of 0.01, origin at the top left; points are (x, y) on the same scale)."
    ),
    "captioning": "",
}
_SENSOR_OF_IMAGE = {"rgb": "s2", "s1": "s1"}


def _check(image: str, tags: str) -> None:
    if image not in IMAGE_CHOICES:
        raise ValueError(f"image={image!r}: choose one of {list(IMAGE_CHOICES)}")
    if tags not in TAG_CHOICES:
        raise ValueError(f"tags={tags!r}: choose one of {list(TAG_CHOICES)} (or give point_token / ref_token)")


def prompt_text(annotation: Mapping[str, object], tags: str = "keep", point_token=None, ref_token=None,
                format_hints: bool = False) -> str:
    """The user turn's text of one annotation: its ``input`` with the tag handling and optional format hint."""
    words = str(annotation["input"])
    if tags == "strip":
        words = text.replace_tokens(words, ("", ""), ("", ""))
    if point_token is not None or ref_token is not None:
        words = text.replace_tokens(words, point_token, ref_token)
    hint = FORMAT_HINTS.get(str(annotation.get("type")), "") if format_hints else ""
    return f"{words} {hint}" if hint else words


def _has_s2(example: Mapping[str, Any], image_bands: Optional[Sequence[str]]) -> bool:
    if example.get("s2_10m") is not None:
        return True
    return image_bands is not None and all(b in image_bands for b in preview.QUICKLOOK_BANDS["s2"])


def _picture(example: Mapping[str, Any], sensor: str, image_bands: Optional[Sequence[str]]):
    """A 120 px (native 10 m grid) uint8 RGB PIL image: S2 true colour or S1 false colour."""
    from PIL import Image

    wanted = preview.QUICKLOOK_BANDS[sensor]
    planes = preview.band_planes(example, wanted, image_bands)
    if set(planes) != set(wanted):
        have = sorted(k for k in example if k in {g.name for g in BAND_GROUPS} | {"image"})
        raise ValueError(
            f"image={'rgb' if sensor == 's2' else 's1'} needs the bands {list(wanted)}; the example has {have}"
            + (f" (image bands {list(image_bands)})" if image_bands else "")
            + ": use a config that reads them, or another image= choice"
        )
    rgb = np.stack(preview._channels(planes, sensor), axis=-1)  # the quicklook's stretch, without its enlargement
    return Image.fromarray(rgb)


def _bands(example: Mapping[str, Any], img_size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """float32 (C, H, W): the example's ``image`` stack, else all native bands in the publisher's order at 120 px."""
    if example.get("image") is not None:
        return np.asarray(example["image"], dtype=np.float32)
    groups = {g.name: np.asarray(example[g.name]) for g in BAND_GROUPS if example.get(g.name) is not None}
    if not groups:
        raise ValueError(f"image='bands' needs band groups or an 'image' column; the example has {sorted(example)}")
    present = {b for g in BAND_GROUPS if g.name in groups for b in g.bands}
    order = [b for b in BAND_COMBINATIONS["all"] if b in present]
    return raster.stack_groups(groups, order, img_size)


def _image(example: Mapping[str, Any], image: str, image_bands: Optional[Sequence[str]]):
    if image == "bands":
        return _bands(example)
    if image == "auto":
        image = "rgb" if _has_s2(example, image_bands) else "s1"
    return _picture(example, _SENSOR_OF_IMAGE[image], image_bands)


def _one(example: Mapping[str, Any], image: str, tags: str, point_token, ref_token, format_hints: bool,
         image_bands: Optional[Sequence[str]], system: Optional[str]) -> dict:
    annotations = example["annotations"] if "annotations" in example else [example]
    if not annotations:
        raise ValueError(f"patch {example.get('patch_id')}: no texts to make a conversation of")
    messages: List[dict] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    for k, annotation in enumerate(annotations):
        words = prompt_text(annotation, tags, point_token, ref_token, format_hints)
        content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": words}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": str(annotation["output"])}]})
    return {"messages": messages, "images": [_image(example, image, image_bands)]}


def to_chat(
    example: Mapping[str, Any],
    image: str = "auto",
    tags: str = "keep",
    point_token: Optional[Sequence[str]] = None,
    ref_token: Optional[Sequence[str]] = None,
    format_hints: bool = False,
    image_bands: Optional[Sequence[str]] = None,
    system: Optional[str] = None,
) -> Dict[str, list]:
    """One example -> ``{"messages", "images"}``; a batch (dict of lists) -> the same keys, one list entry per row.

    ``image_bands`` is the band order of an ``image`` column (the config's
    ``image_bands``; configs with ``bands=``). See the module docstring for
    the choices.
    """
    _check(image, tags)
    if "patch_id" not in example:
        raise ValueError(f"expected an example or batch of a bigearthnet_txt config (with patch_id); got {sorted(example)}")
    if isinstance(example["patch_id"], str):
        return _one(example, image, tags, point_token, ref_token, format_hints, image_bands, system)
    keys = list(example)
    out: Dict[str, list] = {"messages": [], "images": []}
    for i in range(len(example["patch_id"])):
        row = _one({k: example[k][i] for k in keys}, image, tags, point_token, ref_token, format_hints, image_bands, system)
        out["messages"].append(row["messages"])
        out["images"].append(row["images"])
    return out


def chat_features(image: str = "auto", bands_shape: Optional[Tuple[int, int, int]] = None):
    """The ``datasets`` features of a chat dataset: ``messages`` (typed content parts) and ``images``.

    Arrow stores every content part with both fields, so an image part reads
    back as ``{"type": "image", "text": None}`` (as in TRL's own vision data sets).
    """
    import datasets

    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    messages = datasets.List({"role": datasets.Value("string"), "content": datasets.List(part)})
    if image == "bands":
        if bands_shape is None:
            raise ValueError("image='bands' needs bands_shape=(C, H, W) for its Array3D feature")
        images = datasets.List(datasets.Array3D(tuple(bands_shape), "float32"))
    else:
        images = datasets.List(datasets.Image())
    return datasets.Features({"messages": messages, "images": images})


def chat_dataset(dataset, config=None, keep: Sequence[str] = ("ID", "patch_id"), batch_size: int = 64, **options):
    """A prepared (``Dataset``) or streamed (``IterableDataset``) split as a chat dataset.

    ``config`` (the builder's config) supplies the ``image`` stack's band order
    and shape; ``keep`` names input columns kept next to ``messages``/``images``
    (the IDs, to match predictions to references when scoring). ``options`` go
    to :func:`to_chat`.
    """
    image = options.get("image", "auto")
    _check(image, options.get("tags", "keep"))
    image_bands = config.image_bands if config is not None else None
    options.setdefault("image_bands", image_bands)
    columns = list(dataset.features or {}) if dataset.column_names is None else list(dataset.column_names)
    kept = [c for c in keep if c in columns]
    features = None
    if dataset.features is not None:
        shape = None
        if image == "bands":
            if image_bands is not None:
                shape = (len(image_bands), config.img_size, config.img_size)
            else:
                present = [g for g in BAND_GROUPS if g.name in columns]
                shape = (sum(len(g.bands) for g in present), DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)
        features = chat_features(image, shape)
        for c in kept:
            features[c] = dataset.features[c]
    return dataset.map(
        to_chat, batched=True, batch_size=batch_size, fn_kwargs=options,
        remove_columns=[c for c in columns if c not in kept], features=features,
    )
