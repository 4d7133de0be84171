"""Parsing and formatting of the text columns of BigEarthNet.txt.

The release stores structure inside free text: boxes are strings in the
``output`` column, point prompts and MCQ options are embedded in ``input``
(docs/release.md#text-formats, docs/release.md#boxes-and-points). This module
is the single place that knows those grammars, so the builder, the
augmentation code and the tests agree on them. Parsing is strict by design: a row that does not match the documented
grammar raises :class:`AnnotationError` instead of being guessed at, so format
drift in a new release surfaces at build time rather than as silently wrong
training targets.

``parse_row`` defines the grammars, one row at a time. ``fast_boxes`` and
``fast_options`` parse blocks of rows with Arrow compute for the builder
(about 5.7 million of the 9.5 million rows are boxes or MCQs), but only rows of
a strict subset of the grammars, and leave every other row to ``parse_row``
(see "Bulk parsing" below).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bentxt.errors import BigEarthNetTxtError

__all__ = [
    "AnnotationError",
    "ROW_TYPES",
    "fast_boxes",
    "fast_options",
    "format_bbox",
    "format_point",
    "parse_bbox",
    "parse_options",
    "parse_point",
    "parse_row",
    "replace_point",
    "replace_tokens",
]

BBox = Tuple[float, float, float, float]
Point = Tuple[float, float]

#: the four values of the ``type`` column
ROW_TYPES: Tuple[str, ...] = ("binary", "mcq", "captioning", "bounding box")
BINARY_ANSWERS: frozenset = frozenset({"yes", "no"})
OPTION_LETTERS: Tuple[str, ...] = ("a", "b", "c", "d")
_OPTION_LETTER_SET: frozenset = frozenset(OPTION_LETTERS)

# The permissive number grammar that accepts every real row (docs/release.md#boxes-and-points).
# re.ASCII keeps ``\d`` to 0-9: ``float()`` would happily accept other Unicode
# digits, which never occur in the release and would only hide corruption.
_NUM = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"

# ``[x0 y0, x1 y1]``: one space inside a corner, ", " between corners. Only
# whitespace around the brackets is tolerated; the inner separators are part
# of the grammar (all 2,205,686 real rows follow it exactly).
_BBOX_RE = re.compile(rf"\s*\[{_NUM} {_NUM}, {_NUM} {_NUM}\]\s*", re.ASCII)

# ``<point>(x, y)</point>``, matched exactly as released.
_POINT_OPEN = "<point>"
_POINT_CLOSE = "</point>"
_POINT_RE = re.compile(rf"<point>\({_NUM}, {_NUM}\)</point>", re.ASCII)

# An MCQ option marker is a letter a-d plus ")" that starts a whitespace-
# delimited word (or the text). The brief's ``\b[a-d]\)`` would also fire on a
# parenthesised reference such as "(a)" or on "x-b)"; requiring whitespace (or
# the start) in front rules those out while still matching every real row,
# where "a)" follows the question after a space and b)-d) follow ", ".
_MARKER_RE = re.compile(r"(?<!\S)([a-d])\)")

_MAX_SHOWN = 120


class AnnotationError(BigEarthNetTxtError, ValueError):
    """A row of the annotation parquet does not follow the released grammar.

    Carries the row's ``ID`` and the column so that a failure in a 9.5-million
    row build can be traced back to the exact parquet row.
    """

    def __init__(self, id: int, column: str, text: str, reason: str) -> None:
        self.id = id
        self.column = column
        self.text = text
        self.reason = reason
        shown = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
        super().__init__(f"ID {id}: {column} {reason}: {shown!r}")

    def __reduce__(self):
        # Exceptions are pickled as ``cls(*self.args)`` by default, which does
        # not fit this signature; ``datasets`` worker processes pickle errors.
        return (type(self), (self.id, self.column, self.text, self.reason))


def _unit_interval(values: Tuple[float, ...]) -> bool:
    return 0.0 <= min(values) and max(values) <= 1.0


def parse_bbox(text: str, id: int) -> BBox:
    """Parse the ``output`` of a ``bounding box`` row into (x0, y0, x1, y1).

    Coordinates are fractions of the image, origin top-left, x = column; the
    check ``x1 >= x0 and y1 >= y0`` holds for every real row and guards the
    xyxy reading (docs/release.md#boxes-and-points).
    """
    m = _BBOX_RE.fullmatch(text)
    if m is None:
        raise AnnotationError(id, "output", text, "is not a box '[x0 y0, x1 y1]'")
    box = (float(m[1]), float(m[2]), float(m[3]), float(m[4]))
    if not _unit_interval(box):
        raise AnnotationError(id, "output", text, "has box values outside [0, 1]")
    if box[2] < box[0] or box[3] < box[1]:
        raise AnnotationError(id, "output", text, "has a box with x1 < x0 or y1 < y0")
    return box


def parse_point(text: str, id: int) -> Optional[Point]:
    """Return the (x, y) of the single ``<point>`` tag in ``input``, or None.

    A text counts as tagged if it contains either tag string, because those
    are exactly the strings the publisher's loader replaces; a stray or
    repeated tag is therefore an error, not "no point".
    """
    opens = text.count(_POINT_OPEN)
    closes = text.count(_POINT_CLOSE)
    if not opens and not closes:
        return None
    if opens != 1 or closes != 1:
        raise AnnotationError(id, "input", text, "must contain exactly one <point>...</point> tag")
    m = _POINT_RE.search(text)
    if m is None:
        raise AnnotationError(id, "input", text, "has a malformed <point>(x, y)</point> tag")
    point = (float(m[1]), float(m[2]))
    if not _unit_interval(point):
        raise AnnotationError(id, "input", text, "has point values outside [0, 1]")
    return point


def parse_options(text: str, id: int) -> list[str]:
    """Split the four MCQ options out of an ``input`` question.

    Options contain commas ("Cold, dry summer, warm summer"), so the text is
    split on the option markers, never on commas. Rule: a marker is ``[a-d])``
    at the start of a whitespace-delimited word; the markers found must be
    exactly a, b, c, d, in that order, once each. An option text that itself
    contains such a marker (e.g. "see b) below") makes the split ambiguous, and
    the row is rejected rather than split at a guessed position. Parenthesised
    letters such as "(a)" or letters inside words ("tab)") are not markers and
    may appear freely. The question text before "a)" is discarded; the
    separator before b), c), d) is ", " (a missing comma is tolerated).
    """
    markers = list(_MARKER_RE.finditer(text))
    letters = [m[1] for m in markers]
    if letters != ["a", "b", "c", "d"]:
        found = ", ".join(f"{x})" for x in letters[:8]) or "none"
        if len(letters) > 8:
            found += ", ..."
        raise AnnotationError(
            id, "input", text, f"needs options a), b), c), d) once each in order (found {found})"
        )
    options = []
    for i, m in enumerate(markers):
        end = markers[i + 1].start() if i < 3 else len(text)
        option = text[m.end() : end].strip()
        if i < 3:
            option = option.removesuffix(",").strip()
        if not option:
            raise AnnotationError(id, "input", text, f"has an empty option {m[1]})")
        options.append(option)
    return options


def _grid(value: float, name: str) -> float:
    """Snap to the release's 0.01 grid; ``+ 0.0`` turns -0.0 into 0.0 so it prints as in the release."""
    v = round(float(value), 2) + 0.0
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} value {value!r} is outside [0, 1]")
    return v


def format_bbox(box: Sequence[float]) -> str:
    """Render a box exactly like the release (``[0.0 0.37, 1.0 1.0]``).

    Augmentation rewrites boxes with arithmetic such as ``1 - x``, which leaves
    values like 0.06999999999999995; snapping to the 0.01 grid and using
    ``repr`` reproduces the release's minimal float text.
    """
    if len(box) != 4:
        raise ValueError(f"box must have 4 values, got {len(box)}")
    x0, y0, x1, y1 = (_grid(v, "box") for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {tuple(box)!r} has x1 < x0 or y1 < y0")
    return f"[{x0!r} {y0!r}, {x1!r} {y1!r}]"


def _format_point_coords(point: Sequence[float]) -> str:
    if len(point) != 2:
        raise ValueError(f"point must have 2 values, got {len(point)}")
    x, y = (_grid(v, "point") for v in point)
    return f"({x!r}, {y!r})"


def format_point(point: Sequence[float]) -> str:
    """Render a point tag exactly like the release (``<point>(0.35, 0.16)</point>``)."""
    return f"{_POINT_OPEN}{_format_point_coords(point)}{_POINT_CLOSE}"


def replace_point(text: str, point: Sequence[float]) -> str:
    """Rewrite the coordinates of the one ``<point>`` tag, keeping the prompt wording.

    Raises ValueError unless the text holds exactly one well-formed tag, so an
    augmentation can never produce a prompt whose point and box disagree.
    """
    if text.count(_POINT_OPEN) != 1 or text.count(_POINT_CLOSE) != 1:
        raise ValueError(f"text must contain exactly one point tag: {text[:_MAX_SHOWN]!r}")
    new = format_point(point)
    out, n = _POINT_RE.subn(lambda _: new, text)
    if n != 1:
        raise ValueError(f"text has a malformed point tag: {text[:_MAX_SHOWN]!r}")
    return out


def check_token(token: object, name: str) -> Optional[Tuple[str, str]]:
    # Only tuples and lists: a 2-character str is also "a sequence of two
    # strs" and would otherwise be accepted as a token pair by accident.
    if token is None:
        return None
    if (
        not isinstance(token, (tuple, list))
        or len(token) != 2
        or not isinstance(token[0], str)
        or not isinstance(token[1], str)
    ):
        raise ValueError(f"{name} must be None or a pair of strings (open, close), got {token!r}")
    return (token[0], token[1])


def replace_tokens(
    text: str,
    point_token: Optional[Tuple[str, str]],
    ref_token: Optional[Tuple[str, str]],
) -> str:
    """Replace the ``<ref>``/``<point>`` tags the way the publisher's loader does.

    The order matters and is copied from ``ben_txt_datamodule.py``
    (docs/release.md#publishers-loader): ``<ref>``, ``</ref>``, then ``<point>``, ``</point>``, each a
    plain ``str.replace`` of the result so far. The publisher's default
    ``("", "")`` strips the tags; ``None`` (this builder's default) keeps them.
    """
    ref = check_token(ref_token, "ref_token")
    point = check_token(point_token, "point_token")
    if ref is not None:
        text = text.replace("<ref>", ref[0]).replace("</ref>", ref[1])
    if point is not None:
        text = text.replace(_POINT_OPEN, point[0]).replace(_POINT_CLOSE, point[1])
    return text


def parse_row(type: str, input: str, output: str, id: int) -> dict:
    """Validate one annotation row and extract its structured fields.

    Returns ``{"bbox", "point", "options"}`` with None where a field does not
    apply to the row's type, so every example has the same feature schema.
    """
    bbox = point = options = None
    if type == "binary":
        if output not in BINARY_ANSWERS:
            raise AnnotationError(id, "output", output, "of a binary row must be 'yes' or 'no'")
    elif type == "mcq":
        if output not in _OPTION_LETTER_SET:
            raise AnnotationError(id, "output", output, "of an mcq row must be one of a, b, c, d")
        options = parse_options(input, id)
    elif type == "bounding box":
        bbox = parse_bbox(output, id)
        point = parse_point(input, id)
    elif type != "captioning":
        raise AnnotationError(id, "type", type, f"is not one of {', '.join(ROW_TYPES)}")
    return {"bbox": bbox, "point": point, "options": options}


# ----------------------------------------------------------------------------- bulk parsing
#
# parse_row costs ~10 us a row in Python. fast_boxes and fast_options parse a
# block of rows at once with Arrow compute, but only rows of a strict subset of
# the grammars above, chosen so that an accepted row certainly gets what
# parse_row returns for it (same values, same floats). They report the other
# rows as not accepted, and the caller hands those to parse_row, which parses
# them or raises the precise AnnotationError: the results and the errors are
# parse_row's for every input, only faster for rows written like the release.
#
# The subset is not a translation of the patterns above, because RE2 reads
# them differently: its \s is ASCII only (re's also matches \xa0, \u2003,
# \x1c-\x1f, ...) and lacks \v, its "." stops at "\n", its "$" is only the
# end of the text, and it has no lookbehind for _MARKER_RE. So the fast grammar
#
# - reads printable ASCII only, where " " is the only whitespace for re and
#   RE2 alike (and invalid UTF-8 never gets past it);
# - takes numbers as plain "d" or "d.d" digits (no sign, exponent, "5." or
#   ".5"); Arrow's string cast (fast_float) and float() both round such a
#   decimal correctly, so they give the same double (the tests check it, on
#   halfway cases too);
# - takes the release's separators exactly: no whitespace around a box,
#   options with no whitespace at either end.

_PRINTABLE = r"[\x20-\x7e]"  # printable ASCII, where " " is the only whitespace
_VISIBLE = r"[\x21-\x7e]"  # printable ASCII but " "
_ASCII_TEXT = rf"^{_PRINTABLE}*$"


def _number(name: str) -> str:
    return rf"(?P<{name}>\d+(?:\.\d+)?)"


# an option: non-empty, no whitespace at either end, so that strip() and the
# removal of one separator comma give back exactly this text (it may end in ",")
_OPTION = rf"{_VISIBLE}(?:{_PRINTABLE}*{_VISIBLE})?"

_FAST_BBOX = rf"^\[{_number('x0')} {_number('y0')}, {_number('x1')} {_number('y1')}\]$"
_FAST_POINT = rf"<point>\({_number('x')}, {_number('y')}\)</point>"
_FAST_OPTIONS = rf"^{_PRINTABLE}* a\) {_OPTION}, b\) {_OPTION}, c\) {_OPTION}, d\) {_OPTION}$"
# In printable ASCII a marker (_MARKER_RE) is "[a-d])" at the start or after a
# space. Splitting at every marker after a space (with the separator comma)
# both counts them and cuts out the options; a marker at the start is looked
# for apart (RE2 has no lookbehind).
_MARKER_SPLIT = r",? [a-d]\)"
_LEADING_MARKER = r"^[a-d]\)"


def _true(mask) -> np.ndarray:
    """An Arrow boolean array as numpy, null (a null text) counting as False."""
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _floats(found: pa.StructArray) -> np.ndarray:
    """The groups of an ``extract_regex`` result as float columns, NaN where it did not match."""
    columns = [pc.cast(c, pa.float64()).to_numpy(zero_copy_only=False) for c in found.flatten()]
    return np.column_stack(columns)


def _in_unit_interval(values: np.ndarray) -> np.ndarray:
    return np.asarray(((values >= 0.0) & (values <= 1.0)).all(axis=1))  # NaN fails


def fast_boxes(inputs: pa.Array, outputs: pa.Array) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes and points of ``bounding box`` rows in bulk: ``(accepted, boxes, points)``.

    ``inputs``/``outputs`` are the rows' string columns. ``boxes`` is (n, 4),
    ``points`` (n, 2); both are NaN for rows not accepted, and ``points`` also
    for an accepted row without a point tag. Rows not accepted must go through
    :func:`parse_row`. A row is accepted when its output is a box of the fast
    grammar that :func:`parse_bbox` would accept, and its printable-ASCII
    input has no point tag, or exactly one ``<point>`` and one ``</point>``
    that form a tag of the fast grammar with values in [0, 1].
    """
    boxes = _floats(pc.extract_regex(outputs, _FAST_BBOX))
    points = _floats(pc.extract_regex(inputs, _FAST_POINT))
    opens, closes = (pc.count_substring(inputs, tag).fill_null(-1).to_numpy() for tag in (_POINT_OPEN, _POINT_CLOSE))
    untagged = (opens == 0) & (closes == 0)
    tagged = (opens == 1) & (closes == 1)
    accepted = (
        _true(pc.match_substring_regex(inputs, _ASCII_TEXT))
        & _in_unit_interval(boxes)
        & (boxes[:, 2] >= boxes[:, 0])
        & (boxes[:, 3] >= boxes[:, 1])
        & (untagged | (tagged & _in_unit_interval(points)))
    )
    boxes[~accepted] = np.nan
    points[~(accepted & tagged)] = np.nan
    return accepted, boxes, points


def fast_options(inputs: pa.Array, outputs: pa.Array) -> Tuple[np.ndarray, pa.FixedSizeListArray]:
    """The four options of ``mcq`` rows in bulk: ``(accepted, options)``.

    ``options`` holds the four strings of each accepted row, in row order (one
    entry per accepted row, not per row); rows not accepted must go through
    :func:`parse_row`. A row is accepted when its output is a letter a-d and
    its input is laid out as ``_FAST_OPTIONS`` with no other marker, inside an
    option text or at the very start, which :func:`parse_options` would count.
    """
    # Split at the markers after a space, e.g. "Q a) x, b) y, c) z, d) w" into
    # "Q", " x", " y", " z", " w": five pieces when there are exactly four such
    # markers, and then, as the layout matched, each option is a piece after
    # its one leading space. (Splitting at ") " too would swallow the space
    # before a marker right after "a) ", so that marker would go uncounted.)
    pieces = pc.split_pattern_regex(inputs, _MARKER_SPLIT)
    accepted = (
        _true(pc.is_in(outputs, pa.array(OPTION_LETTERS)))
        & _true(pc.match_substring_regex(inputs, _FAST_OPTIONS))
        & _true(pc.equal(pc.list_value_length(pieces), 5))
        & ~_true(pc.match_substring_regex(inputs, _LEADING_MARKER))
    )
    options = pc.list_flatten(pc.list_slice(pieces.filter(pa.array(accepted)), 1, 5))
    return accepted, pa.FixedSizeListArray.from_arrays(pc.utf8_slice_codeunits(options, 1).cast(pa.string()), 4)
