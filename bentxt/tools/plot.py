"""``plot(example)``: one BigEarthNet.txt example as a matplotlib Figure (needs the ``plot`` extra).

Left panel: Sentinel-2 true colour (B04, B03, B02); right panel: Sentinel-1
false colour (R = VV, G = VH, B = VV - VH, all in dB). Each channel gets a
robust stretch (its 2nd..98th percentile mapped to 0..1, S2 nodata 0
ignored), so one bright pixel does not darken the picture: the export's
quicklook code (``bentxt.imagery.preview``), so both always look the same. Both panels are drawn in image fractions
(``extent=(0, 1, 1, 0)``: x = column to the right, y = row downwards, origin
top-left, the release's convention), so the grounding box ``[x0, y0, x1, y1]``
and the point ``[x, y]`` are drawn as stored, whatever the band's pixel size.
The question and the answer (the MCQ answer with its option text) are the title.
A NaN-filled ``bbox``/``point`` (the builder's "none" for rows of other types)
is not drawn, and neither is a ``category`` of ``"None"`` (captions) shown.

Works with the native band groups (``s2_10m``, ``s1``), with a resampled
``image`` (pass its ``bands``), and with normalised arrays (the stretch is per
channel). Examples may come in any format: numpy arrays (the default and
``numpy`` formats), torch tensors, or nested lists (a streamed export). In
the patch layout pass ``annotation=`` (an index into ``example["annotations"]``)
to pick the text.

The figure is a bare ``matplotlib.figure.Figure`` (no pyplot state): save it
with ``fig.savefig("x.png")``; it displays in Jupyter. ``fig.axes`` are the
panels, S2 first.
"""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from bentxt.bands import NODATA, resolve_bands
from bentxt.imagery.preview import QUICKLOOK_BANDS, band_planes, mark, stretch

__all__ = ["plot", "true_colour", "sar_false_colour"]


def true_colour(example: Mapping[str, Any], bands: Optional[Sequence[str]] = None) -> Optional[np.ndarray]:
    """Sentinel-2 B04/B03/B02 as (H, W, 3) in [0, 1], or None if the example has no such bands."""
    wanted = QUICKLOOK_BANDS["s2"]
    planes = band_planes(example, wanted, bands)
    if len(planes) < len(wanted):
        return None
    return np.dstack([stretch(planes[b], NODATA["s2"]) for b in wanted]) / 255.0


def sar_false_colour(example: Mapping[str, Any], bands: Optional[Sequence[str]] = None) -> Optional[np.ndarray]:
    """Sentinel-1 R = VV, G = VH, B = VV - VH (dB) as (H, W, 3) in [0, 1], or None without VV/VH."""
    planes = band_planes(example, QUICKLOOK_BANDS["s1"], bands)
    if len(planes) < 2:
        return None
    vv, vh = (np.asarray(planes[b], dtype=np.float64) for b in ("VV", "VH"))
    return np.dstack([stretch(vv), stretch(vh), stretch(vv - vh)]) / 255.0


def _text_of(example: Mapping[str, Any], annotation: Optional[int]) -> Mapping[str, Any]:
    if "annotations" in example:
        annotations = example["annotations"] or []
        if not annotations:
            return {}
        index = 0 if annotation is None else int(annotation)
        if not -len(annotations) <= index < len(annotations):
            raise IndexError(f"annotation={index}: this patch has {len(annotations)} annotations")
        return annotations[index]
    if annotation not in (None, 0):
        raise ValueError(
            "annotation= selects a text in the patch layout; this example has one text (annotation layout)"
        )
    return example


def _answer(row: Mapping[str, Any]) -> str:
    answer = str(row.get("output") or "")
    options = row.get("options")
    options = [] if options is None else [str(o) for o in options]  # a list, or a numpy array of strings
    if str(row.get("type")) == "mcq" and len(answer) == 1 and answer in "abcd" and len(options) == 4:
        option = options["abcd".index(answer)]
        if option:
            answer = f"{answer}) {option}"
    return answer


def _label(value: Any) -> Optional[str]:
    """A type/category for the title; None for empty values and the captions' literal category "None"."""
    if value is None:
        return None
    value = str(value)
    return None if value in ("", "None") else value


def _title(example: Mapping[str, Any], row: Mapping[str, Any], width: int, max_chars: int) -> str:
    def short(s: str) -> str:
        return s if len(s) <= max_chars else s[: max_chars - 3].rstrip() + "..."

    lines = []
    what = " / ".join(v for v in (_label(row.get("type")), _label(row.get("category"))) if v)
    head = " | ".join(v for v in (_label(example.get("patch_id")), _label(example.get("split")), what) if v)
    if head:
        lines.append(textwrap.fill(head, width, break_long_words=False))
    if row.get("input"):
        lines.append(textwrap.fill("Q: " + short(str(row["input"])), width))
    if row.get("output") is not None:
        lines.append(textwrap.fill("A: " + short(_answer(row)), width))
    return "\n".join(lines)


def plot(
    example: Mapping[str, Any],
    annotation: Optional[int] = None,
    bands: Optional[Union[str, Sequence[str]]] = None,
    box_color: str = "#ffff00",
    point_color: str = "#ff00ff",
    panel_size: float = 4.0,
    title_width: Optional[int] = None,
    max_text_chars: int = 400,
    dpi: int = 100,
):
    """Draw one example; returns the matplotlib Figure (``fig.axes``: S2 panel, then S1 panel).

    ``annotation``: index into ``example["annotations"]`` (patch layout; default 0).
    ``bands``: channel order of ``example["image"]`` (the config's ``bands``, e.g. ``"RGB"``).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plot() needs matplotlib: pip install 'bigearthnet-txt[plot]'") from err

    band_order = None if bands is None else resolve_bands(bands)
    if example.get("image") is not None and band_order is None:
        raise ValueError(
            "this example has a resampled 'image': pass bands= (the config's bands, e.g. 'RGB') to plot it"
        )
    panels: list[Tuple[str, np.ndarray]] = []
    rgb = true_colour(example, band_order)
    if rgb is not None:
        panels.append(("Sentinel-2 true colour (B04, B03, B02)", rgb))
    sar = sar_false_colour(example, band_order)
    if sar is not None:
        panels.append(("Sentinel-1 false colour (VV, VH, VV-VH)", sar))
    if not panels:
        raise ValueError("nothing to draw: the example has neither S2 B02/B03/B04 nor S1 VV/VH")

    row = _text_of(example, annotation)
    width = title_width or max(40, int(panel_size * len(panels) * 12))
    title = _title(example, row, width, max_text_chars)
    height = panel_size + 0.3 + 0.17 * (title.count("\n") + 1)
    fig = Figure(figsize=(panel_size * len(panels), height), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    box = mark(row.get("bbox"))  # None where the row has no box (NaN-filled)
    point = mark(row.get("point"))
    for ax, (name, picture) in zip(axes, panels):
        ax.imshow(picture, extent=(0.0, 1.0, 1.0, 0.0), interpolation="nearest")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(1.0, 0.0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (column fraction)", fontsize=8)
        ax.set_ylabel("y (row fraction)", fontsize=8)
        ax.tick_params(labelsize=7)
        if box is not None:
            x0, y0, x1, y1 = box
            # clip_on=False: an edge on the image border (0 or 1, common) is drawn whole, not halved by the axes
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=box_color, linewidth=2,
                                   clip_on=False))
        if point is not None:
            ax.plot([point[0]], [point[1]], marker="+", markersize=14, markeredgewidth=2.5, color=point_color)
    fig.suptitle(title, fontsize=9)
    return fig
