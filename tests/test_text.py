"""Tests for bentxt.text.grammar against the real rows quoted in docs/release.md (its text formats and publisher's loader)."""

from __future__ import annotations

import decimal
import math
import pickle
import re
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentxt import join
from bentxt.text.grammar import (
    ROW_TYPES,
    AnnotationError,
    fast_boxes,
    fast_options,
    format_bbox,
    format_point,
    parse_bbox,
    parse_options,
    parse_point,
    parse_row,
    replace_point,
    replace_tokens,
)

CAPTION = (
    "This satellite image, captured during the summer season in Austria, showcases a diverse landscape "
    'within the "temperate, no dry season, warm summer" climate zone. The dominant feature is the '
    "broad-leaved forest, covering approximately 586,000 square meters, …"
)

# (ID, type, input, output, expected {"bbox", "point", "options"}) — the 18 rows of docs/release.md#text-formats.
REAL_ROWS = [
    (27519, "binary", "Would you identify any broad-leaved forest as lying right beside inland waters?", "yes", {}),
    (27521, "binary", "Does the image contain classes other than inland waters?", "yes", {}),
    (27522, "binary", "Would you say that arable lands take up between 60% and 70% of the image?", "no", {}),
    (27523, "binary", "Does the image illustrate fewer than three connected regions of inland waters?", "yes", {}),
    (27525, "binary", "Do parts of the image correspond to inland waters?", "yes", {}),
    (
        27527,
        "bounding box",
        "Generate a bounding box for the land cover class instance found at <point>(0.35, 0.16)</point> in the satellite image.",
        "[0.0 0.0, 0.93 0.45]",
        {"bbox": (0.0, 0.0, 0.93, 0.45), "point": (0.35, 0.16)},
    ),
    (
        27529,
        "bounding box",
        "Provide a bounding box around the land cover class instance found at <point>(0.64, 0.79)</point> "
        "in the satellite image.",
        "[0.0 0.37, 1.0 1.0]",
        {"bbox": (0.0, 0.37, 1.0, 1.0), "point": (0.64, 0.79)},
    ),
    (
        27530,
        "bounding box",
        "Identify a continuous patch of <ref>broad-leaved forest</ref>.",
        "[0.0 0.0, 1.0 0.94]",
        {"bbox": (0.0, 0.0, 1.0, 0.94)},
    ),
    (
        27531,
        "bounding box",
        "Point out a patch of <ref>inland waters</ref> in the image.",
        "[0.0 0.37, 1.0 1.0]",
        {"bbox": (0.0, 0.37, 1.0, 1.0)},
    ),
    (
        27532,
        "bounding box",
        "Locate a patch of <ref>arable land</ref> present in the image.",
        "[0.0 0.0, 0.93 0.45]",
        {"bbox": (0.0, 0.0, 0.93, 0.45)},
    ),
    (
        27533,
        "captioning",
        "Describe this satellite image, including the location, season, and observed land cover.",
        CAPTION,
        {},
    ),
    (
        27534,
        "mcq",
        "Select the classes in contact: a) Arable land and Natural grassland and sparsely vegetated areas, "
        "b) Inland waters and Pastures, c) Arable land and Broad-leaved forest, d) Agro-forestry areas and Permanent crops",
        "c",
        {
            "options": [
                "Arable land and Natural grassland and sparsely vegetated areas",
                "Inland waters and Pastures",
                "Arable land and Broad-leaved forest",
                "Agro-forestry areas and Permanent crops",
            ]
        },
    ),
    (
        27535,
        "mcq",
        "How much area do broad-leaved forests occupy? a) 10 to 50%, b) 50 to 60%, c) 0 to 10%, d) 70 to 90%",
        "a",
        {"options": ["10 to 50%", "50 to 60%", "0 to 10%", "70 to 90%"]},
    ),
    (
        27536,
        "mcq",
        "Which climate zone is captured in the satellite image? a) Cold, dry summer, warm summer, "
        "b) Cold, no dry season, warm summer, c) Temperate, no dry season, warm summer, d) Temperate, no dry season, hot summer",
        "c",
        {
            "options": [
                "Cold, dry summer, warm summer",
                "Cold, no dry season, warm summer",
                "Temperate, no dry season, warm summer",
                "Temperate, no dry season, hot summer",
            ]
        },
    ),
    (
        27537,
        "mcq",
        "Identify the number of continuous areas of arable land: a) 0, b) 3, c) 2, d) 1",
        "d",
        {"options": ["0", "3", "2", "1"]},
    ),
    (
        27538,
        "mcq",
        "Which country does the satellite image capture? a) Kosovo, b) Ireland, c) Switzerland, d) Austria",
        "d",
        {"options": ["Kosovo", "Ireland", "Switzerland", "Austria"]},
    ),
    (
        27539,
        "mcq",
        "Which of these classes is visible in the image? a) Land principally occupied by agriculture, with significant "
        "areas of natural vegetation, b) Arable land, c) Agro-forestry areas, d) Coniferous forest",
        "b",
        {
            "options": [
                "Land principally occupied by agriculture, with significant areas of natural vegetation",
                "Arable land",
                "Agro-forestry areas",
                "Coniferous forest",
            ]
        },
    ),
    (
        27540,
        "mcq",
        "In which of the following seasons was this satellite image captured? a) Winter, b) Spring, c) Summer, d) Autumn",
        "c",
        {"options": ["Winter", "Spring", "Summer", "Autumn"]},
    ),
    # further real / transcribed examples of docs/release.md#text-formats (IDs unknown; 0 used)
    (
        0,
        "bounding box",
        "Identify the location of the <ref>largest connected region of pastures</ref>.",
        "[0.0 0.33, 0.28 0.8]",
        {"bbox": (0.0, 0.33, 0.28, 0.8)},
    ),
    (
        0,
        "bounding box",
        "Provide a bounding box for the land cover class instance at <point>(0.82, 0.28)</point> in the satellite image.",
        "[0.64 0.0, 1.0 0.71]",
        {"bbox": (0.64, 0.0, 1.0, 0.71), "point": (0.82, 0.28)},
    ),
    (0, "binary", "Is the area covered by industrial or commercial units at least 0 m2?", "yes", {}),
    (
        0,
        "mcq",
        "What is the relative position of the arable land to the inland waters? "
        "a) to the left, b) to the bottom, c) to the top-right, d) to the top",
        "a",
        {"options": ["to the left", "to the bottom", "to the top-right", "to the top"]},
    ),
]


def _row_id(row):
    return f"{row[0]}-{row[1]}"


@pytest.mark.parametrize("row", REAL_ROWS, ids=_row_id)
def test_real_rows(row):
    id_, type_, input_, output, expected = row
    want = {"bbox": None, "point": None, "options": None, **expected}
    assert parse_row(type_, input_, output, id_) == want


def test_real_rows_count():
    assert len([r for r in REAL_ROWS if r[0]]) == 18


@pytest.mark.parametrize("row", [r for r in REAL_ROWS if r[1] == "bounding box"], ids=_row_id)
def test_real_boxes_round_trip_text(row):
    # the release prints minimal float reprs, so formatting reproduces the string byte for byte
    _, _, input_, output, expected = row
    assert format_bbox(parse_bbox(output, 1)) == output
    if expected.get("point"):
        tag = input_[input_.index("<point>") : input_.index("</point>") + len("</point>")]
        assert format_point(parse_point(input_, 1)) == tag


# --- malformed inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[0.0 0.37 1.0 1.0]",
        "[0.0, 0.37, 1.0, 1.0]",
        "[0.0 0.37,1.0 1.0]",
        "[0.0  0.37, 1.0 1.0]",
        "[[0.0, 0.37], [1.0, 1.0]]",
        '{"bbox": [0.0, 0.37, 1.0, 1.0]}',
        "(0.0 0.37, 1.0 1.0)",
        "[0.0 0.37, 1.0 1.01]",
        "[0.0 0.37, 2 1.0]",
        "[-0.1 0.37, 1.0 1.0]",
        "[0.5 0.37, 0.4 1.0]",  # x1 < x0
        "[0.0 0.37, 1.0 0.2]",  # y1 < y0
        "[0.0 0.37, 1.0]",
        "[0.0 0.37, 1.0 1.0, 1.0 1.0]",
        "[0.0 0.37, 1.0 1e0]",
        "[0.0 0.37, 1.0 nan]",
        "[0.0 0.37, 1.0 ١]",  # non-ASCII digit
        "",
        "yes",
    ],
)
def test_parse_bbox_rejects(text):
    with pytest.raises(AnnotationError) as exc:
        parse_bbox(text, 4242)
    msg = str(exc.value)
    assert "ID 4242" in msg and "output" in msg
    assert exc.value.id == 4242 and exc.value.column == "output"


@pytest.mark.parametrize(
    "text, box",
    [
        ("  [0.0 0.37, 1.0 1.0]\n", (0.0, 0.37, 1.0, 1.0)),
        ("[.5 0., +1 1.0]", (0.5, 0.0, 1.0, 1.0)),  # permissive number grammar
        ("[0.5 0.5, 0.5 0.5]", (0.5, 0.5, 0.5, 0.5)),  # zero-area box
    ],
)
def test_parse_bbox_lenient(text, box):
    assert parse_bbox(text, 1) == box


@pytest.mark.parametrize(
    "text",
    [
        "at <point>(0.35,0.16)</point> in",
        "at <point>(0.35 0.16)</point> in",
        "at <point>[0.35, 0.16]</point> in",
        "at <point>(0.35, 1.16)</point> in",
        "at <point>(0.35, 0.16)</point> and <point>(0.1, 0.2)</point>",
        "at <point>(0.35, 0.16) in",
        "at (0.35, 0.16)</point> in",
        "at <point></point> in",
    ],
)
def test_parse_point_rejects(text):
    with pytest.raises(AnnotationError, match=r"ID 7: input"):
        parse_point(text, 7)


def test_parse_point_absent():
    assert parse_point("Point out a patch of <ref>inland waters</ref> in the image.", 1) is None
    assert parse_point("", 1) is None


MCQ = "Identify the number of continuous areas of arable land: a) 0, b) 3, c) 2, d) 1"


@pytest.mark.parametrize(
    "text",
    [
        "Identify the number of continuous areas of arable land: a) 0, b) 3, c) 2",  # missing d
        "Identify the number of continuous areas of arable land: a) 0, c) 2, b) 3, d) 1",  # out of order
        "Identify the number of continuous areas of arable land: b) 0, a) 3, c) 2, d) 1",
        "Identify: a) 0, b) 3, c) 2, d) 1, d) 4",  # repeated marker
        "Identify: a) 0, b) 3, c) 2, d) 1, e) 5, a) 6",
        "Identify: a) 0, b) , c) 2, d) 1",  # empty option
        "Identify: a) 0, b) 3, c) 2, d)",
        "Identify: a) see b) below, b) 3, c) 2, d) 1",  # ambiguous: marker inside an option
        "Identify the number of continuous areas of arable land: 0, 3, 2, 1",
        "",
    ],
)
def test_parse_options_rejects(text):
    with pytest.raises(AnnotationError, match=r"ID 99: input"):
        parse_options(text, 99)


def test_parse_options_non_markers():
    # parenthesised letters and letters inside words are option text, not markers
    text = "Pick (a) or (b): a) tab) x, b) Rule (c), c) and (d) more, d) x-d) end"
    assert parse_options(text, 1) == ["tab) x", "Rule (c)", "and (d) more", "x-d) end"]
    assert parse_options(text.replace(", b)", " b)"), 1)[0] == "tab) x"  # separator comma is optional


@pytest.mark.parametrize(
    "type_, input_, output, column",
    [
        ("binary", "Is there water?", "Yes", "output"),
        ("binary", "Is there water?", "maybe", "output"),
        ("mcq", MCQ, "e", "output"),
        ("mcq", MCQ, "A", "output"),
        ("mcq", MCQ, "a)", "output"),
        ("mcq", MCQ.replace(", d) 1", ""), "a", "input"),
        ("bounding box", "Locate <ref>x</ref>.", "[0.0, 0.37, 1.0, 1.0]", "output"),
        ("bounding box", "at <point>(0.3, 2.0)</point>", "[0.0 0.37, 1.0 1.0]", "input"),
        ("regression", "How much?", "3", "type"),
        ("Binary", "Is there water?", "yes", "type"),
    ],
)
def test_parse_row_rejects(type_, input_, output, column):
    with pytest.raises(AnnotationError) as exc:
        parse_row(type_, input_, output, 31337)
    assert str(exc.value).startswith(f"ID 31337: {column} ")
    if column == "type":
        assert repr(type_) in str(exc.value)


def test_annotation_error_truncates_and_pickles():
    err = AnnotationError(5, "input", "x" * 500, "is bad")
    assert isinstance(err, ValueError)
    assert len(str(err)) < 200 and "..." in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.id == 5 and again.column == "input"


# --- formatting ------------------------------------------------------------------------------


def test_format_snaps_to_grid():
    assert format_bbox((0.0, 0.37, 1.0, 1.0)) == "[0.0 0.37, 1.0 1.0]"
    assert format_bbox((1 - 0.93, -0.0, 1 - 1e-12, 0.5)) == "[0.07 0.0, 1.0 0.5]"
    assert format_point((0.35, 0.16)) == "<point>(0.35, 0.16)</point>"
    assert format_point((1 - 0.65, -1e-9)) == "<point>(0.35, 0.0)</point>"


@pytest.mark.parametrize("box", [(0.0, 0.0, 1.1, 1.0), (0.5, 0.0, 0.4, 1.0), (0.0, 0.0, 1.0), (float("nan"),) * 4])
def test_format_bbox_rejects(box):
    with pytest.raises(ValueError):
        format_bbox(box)


def test_replace_point():
    text = REAL_ROWS[5][2]
    out = replace_point(text, (0.65, 1 - 0.16))
    assert out == text.replace("(0.35, 0.16)", "(0.65, 0.84)")
    assert parse_point(out, 1) == (0.65, 0.84)
    with pytest.raises(ValueError):
        replace_point("no tag here", (0.1, 0.1))
    with pytest.raises(ValueError):
        replace_point("<point>(0.1,0.1)</point>", (0.1, 0.1))


# --- token replacement (docs/release.md#publishers-loader) --------------------------------------


def _publisher(text: str, point_token=("", ""), ref_token=("", "")) -> str:
    """Literal copy of the replacement in ben_txt_datamodule.py."""
    text = text.replace("<ref>", ref_token[0]).replace("</ref>", ref_token[1])
    return text.replace("<point>", point_token[0]).replace("</point>", point_token[1])


POINT_INPUT = REAL_ROWS[5][2]
REF_INPUT = REAL_ROWS[7][2]


def test_replace_tokens_publisher_default():
    assert replace_tokens(POINT_INPUT, ("", ""), ("", "")) == (
        "Generate a bounding box for the land cover class instance found at (0.35, 0.16) in the satellite image."
    )
    assert replace_tokens(REF_INPUT, ["", ""], ["", ""]) == "Identify a continuous patch of broad-leaved forest."


def test_replace_tokens_identity_and_none():
    for text in (POINT_INPUT, REF_INPUT, MCQ):
        assert replace_tokens(text, ["<point>", "</point>"], ["<ref>", "</ref>"]) == text
        assert replace_tokens(text, None, None) == text
    assert replace_tokens(REF_INPUT, ("[", "]"), None) == REF_INPUT
    assert replace_tokens(POINT_INPUT, None, ("", "")) == POINT_INPUT


def test_replace_tokens_order_matches_publisher():
    # ref tokens that themselves contain point tags are rewritten again by the point pass, as upstream
    text = "<ref>a</ref> <point>(0.1, 0.2)</point>"
    tokens = [(("<p>", "</p>"), ("<point>", "</point>")), (("", ""), ("<ref>", "</ref>")), (("X", "Y"), ("<point>", "Z"))]
    for point_token, ref_token in tokens:
        assert replace_tokens(text, point_token, ref_token) == _publisher(text, point_token, ref_token)


@pytest.mark.parametrize("bad", ["ab", ("a",), ("a", "b", "c"), ("a", 1), 5, b"ab", {"a": 1, "b": 2}])
@pytest.mark.parametrize("option", ["point_token", "ref_token"])
def test_replace_tokens_validates(bad, option):
    kwargs = {"point_token": None, "ref_token": None, option: bad}
    with pytest.raises(ValueError, match=option):
        replace_tokens("x", **kwargs)


# --- property tests ---------------------------------------------------------------------------

grid = st.integers(0, 100).map(lambda i: i / 100)


@st.composite
def grid_boxes(draw):
    x0, x1 = sorted((draw(grid), draw(grid)))
    y0, y1 = sorted((draw(grid), draw(grid)))
    return (x0, y0, x1, y1)


@given(grid_boxes())
def test_bbox_round_trip(box):
    assert parse_bbox(format_bbox(box), 1) == box


@given(grid, grid)
def test_point_round_trip(x, y):
    assert parse_point(f"at {format_point((x, y))} in", 1) == (x, y)
    assert parse_point(replace_point("at <point>(0.5, 0.5)</point>.", (x, y)), 1) == (x, y)


def _parses_or_annotation_error(func, text):
    try:
        func(text, 1)
    except AnnotationError:
        pass


alphabet_with_syntax = st.text(st.sampled_from(list("[](),. 0123456789+-abcd<>/pointref\n")) | st.characters())


@settings(max_examples=300)
@given(st.text() | alphabet_with_syntax)
def test_arbitrary_text_only_annotation_errors(text):
    for func in (parse_bbox, parse_point, parse_options):
        _parses_or_annotation_error(func, text)
    for type_ in ("binary", "mcq", "captioning", "bounding box", text):
        try:
            parse_row(type_, text, text, 1)
        except AnnotationError:
            pass


# the documented marker rule: [a-d]) at the start of the text or after whitespace
MARKER = re.compile(r"(?<!\S)[a-d]\)")

marker_free = st.text(max_size=40).map(str.strip).filter(lambda s: not MARKER.search(s))


@given(marker_free, st.lists(marker_free.filter(bool), min_size=4, max_size=4))
def test_options_round_trip(question, options):
    parts = [f"{letter}) {opt}" for letter, opt in zip("abcd", options)]
    text = f"{question} {', '.join(parts)}".lstrip()
    assert parse_options(text, 1) == options


# --- bulk parsing: fast_boxes, fast_options ---------------------------------------------------
#
# The contract: a row the fast path accepts gets exactly parse_row's values (floats bit for bit),
# every other row is left to parse_row; and rows written like the release are accepted.


def _bits(values):
    return [float(v).hex() for v in values]


def _check_fast(kind, inputs, outputs):
    """Run the fast path on the rows; check every accepted row against parse_row; return the accepted mask."""
    if kind == "bounding box":
        accepted, boxes, points = fast_boxes(pa.array(inputs, pa.string()), pa.array(outputs, pa.string()))
        assert boxes.shape == (len(inputs), 4) and points.shape == (len(inputs), 2)
    else:
        accepted, options = fast_options(pa.array(inputs, pa.string()), pa.array(outputs, pa.string()))
        assert len(options) == accepted.sum() and options.type == pa.list_(pa.string(), 4)
        options = iter(options.to_pylist())
    for i, (input_, output) in enumerate(zip(inputs, outputs)):
        if kind == "bounding box" and not accepted[i]:
            assert all(math.isnan(v) for v in [*boxes[i], *points[i]])
        if not accepted[i]:
            continue
        want = parse_row(kind, input_, output, 1)  # an accepted row parses
        if kind == "bounding box":
            assert _bits(boxes[i]) == _bits(want["bbox"])
            assert _bits(points[i]) == _bits(want["point"] or (math.nan, math.nan))
        else:
            assert next(options) == want["options"]
    return accepted


REAL_STRUCTURED = [r for r in REAL_ROWS if r[1] in ("mcq", "bounding box")]


@pytest.mark.parametrize("kind", ["mcq", "bounding box"])
def test_fast_path_takes_the_real_rows(kind):
    rows = [r for r in REAL_STRUCTURED if r[1] == kind]
    assert rows and _check_fast(kind, [r[2] for r in rows], [r[3] for r in rows]).all()


MCQ_Q = "Which climate zone is captured in the satellite image?"


@pytest.mark.parametrize(
    "input_, output, accepted",
    [
        (f"{MCQ_Q} a) Cold, no dry season, warm summer, b) Cold, dry summer, warm summer, c) x, d) y", "a", True),
        (f"{MCQ_Q} a) (a) x, b) tab) y, c) Rule (c), d) w,", "d", True),  # non-markers; the last option keeps its ","
        (f"{MCQ_Q} a) x,, b) y, c) z, d) w", "b", True),  # one separator comma removed: "x,"
        (" a) x, b) y, c) z, d) w", "c", True),  # an empty question
        (f"{MCQ_Q} a) x, b) y, c) z, d) w", "e", False),  # bad answer: parse_row raises
        (f"{MCQ_Q} a) x, b) y, c) z, d) w\n", "a", False),  # parse_row strips "\n": left to it
        (f"{MCQ_Q}\xa0a) x, b) y, c) z, d) w", "a", False),  # \xa0 is whitespace for re, not for RE2
        (f"{MCQ_Q} a) x,\u2003b) y, c) z, d) w", "a", False),
        (f"{MCQ_Q}\va) x, b) y, c) z, d) w", "a", False),  # \v: not in RE2's \s
        ("a) x, b) y, c) z, d) w", "a", False),  # a marker at the start: parse_row takes it
        ("b) x a) 1, b) 2, c) 3, d) 4", "a", False),  # an extra marker at the start: parse_row raises
        (f"{MCQ_Q} a) b) x, b) y, c) z, d) w", "a", False),  # a marker right after "a) ": parse_row raises
        (f"{MCQ_Q} a) see b) below, b) y, c) z, d) w", "a", False),
        (f"{MCQ_Q} a) x, b) y, c) z, d) w, d) v", "a", False),
        (f"{MCQ_Q} a) x, b) , c) z, d) w", "a", False),  # an empty option
        (f"{MCQ_Q} a) x, b) y, c) z, d)", "a", False),
        (f"{MCQ_Q} a) x, b)  y, c) z, d) w", "a", False),  # two spaces: parse_row strips them
        (f"{MCQ_Q} a) x b) y, c) z, d) w", "a", False),  # no comma: parse_row tolerates it
        (f"{MCQ_Q} a) x, c) y, b) z, d) w", "a", False),
    ],
)
def test_fast_options_examples(input_, output, accepted):
    assert _check_fast("mcq", [input_], [output])[0] == accepted


AT = "Output a bounding box for the land cover class instance located at "


@pytest.mark.parametrize(
    "input_, output, accepted",
    [
        (f"{AT}<point>(0.81, 0.37)</point>.", "[0.77 0.0, 1.0 1.0]", True),
        ("Identify a continuous patch of <ref>inland wetlands</ref>.", "[0 0.45, 1 0.69]", True),
        ("x", "[0.1234567890123456789012 0.5, 0.5 0.5]", True),  # long: both round correctly
        ("x", "[00.5 0, 1 1]", True),
        ("x", " [0.0 0.37, 1.0 1.0]\n", False),  # whitespace around: parse_row takes it
        ("x", "[.5 0., +1 1.0]", False),
        ("x", "[0.5 0.37, 0.4 1.0]", False),  # x1 < x0: parse_row raises
        ("x", "[0.0 0.37, 1.0 1.01]", False),
        ("x", "[0.0 0.37, 1.0 1.0]x", False),
        (f"{AT}<point>(0.81, 1.37)</point>.", "[0.77 0.0, 1.0 1.0]", False),
        (f"{AT}<point>(0.81,0.37)</point>.", "[0.77 0.0, 1.0 1.0]", False),
        (f"{AT}<point>(0.81, 0.37)</point> <point>(0.1, 0.1)</point>", "[0.77 0.0, 1.0 1.0]", False),
        (f"{AT}<point>(0.81, 0.37)</point></point>", "[0.77 0.0, 1.0 1.0]", False),
        (f"{AT}</point>.", "[0.77 0.0, 1.0 1.0]", False),
        (f"{AT}\xe9 <point>(0.81, 0.37)</point>.", "[0.77 0.0, 1.0 1.0]", False),  # not ASCII: parse_row takes it
        (f"{AT}\n<point>(0.81, 0.37)</point>.", "[0.77 0.0, 1.0 1.0]", False),
    ],
)
def test_fast_boxes_examples(input_, output, accepted):
    assert _check_fast("bounding box", [input_], [output])[0] == accepted


def test_fast_path_on_no_rows_and_null_rows():
    for kind in ("mcq", "bounding box"):
        assert len(_check_fast(kind, [], [])) == 0
        assert not _check_fast(kind, [None, f"{MCQ_Q} a) x, b) y, c) z, d) w"], ["a", None]).any()


# Generated rows: the release's layout, with none, one or two pitfalls applied to each row.

release_number = st.integers(0, 100).map(lambda i: repr(i / 100))
# numbers in [0, 1]: "0", "1", "1.0..." and "0." with 1 to 14 decimals
short_number = st.sampled_from(["0", "1", "1.0", "1.00000000000000"]) | st.tuples(
    st.integers(1, 14), st.integers(0, 10**14 - 1)).map(lambda t: f"0.{t[1]:014d}"[: 2 + t[0]])
clean_number = release_number | short_number
# numbers the release does not write: parse_row rejects some, the fast path leaves most to parse_row
odd_number = st.sampled_from(
    ["0.123456789012345", "0.1234567890123456789", "1.01", "2", "-0.1", "+0.5", "-0", ".5", "5.", "0.", "00.5", "1e0",
     "nan", "inf", "\u0661", "0.30000000000000004", "0,5", "", " 0.5"]
) | st.floats(0, 2).map(repr)  # 17 digits, or "1e-05"
ODD_SPACE = ["\n", "\t", "\v", "\x0c", "\x1c", "\xa0", "\u2003", "\x85"]
odd_char = st.sampled_from(ODD_SPACE + ["\xe9", "\x00", "\x7f"])


def _box_pitfall(draw, row):
    pitfall = draw(st.sampled_from(["number", "reversed", "space", "separator", "tags", "char"]))
    if pitfall == "number":
        row[draw(st.sampled_from(["x0", "y0", "x1", "y1", "px", "py"]))] = draw(odd_number)
    elif pitfall == "reversed":
        a, b = draw(st.sampled_from([("x0", "x1"), ("y0", "y1")]))
        row[a], row[b] = row[b], row[a]
    elif pitfall == "space":  # around the box: parse_row allows it
        row[draw(st.sampled_from(["lead", "trail"]))] = draw(st.sampled_from([" ", "  "] + ODD_SPACE))
    elif pitfall == "separator":
        row[draw(st.sampled_from(["sep", "psep"]))] = draw(st.sampled_from([",", " ", ",  ", ", ,", ",\xa0", "\n"]))
    elif pitfall == "tags":
        row["tags"] = draw(st.sampled_from([2, "<point>", "</point>", "<point></point>", "</point><point>"]))
    else:  # anywhere in the input: parse_row does not care
        row["head"] += draw(odd_char)


@st.composite
def box_rows(draw, pitfalls=True):
    """(input, output) of a ``bounding box`` row."""
    (x0, x1), (y0, y1) = (sorted((draw(clean_number), draw(clean_number)), key=float) for _ in "xy")
    row = dict(x0=x0, y0=y0, x1=x1, y1=y1, px=draw(clean_number), py=draw(clean_number), sep=", ", psep=", ",
               lead="", trail="", tags=draw(st.sampled_from([0, 1])), head=AT)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]) if pitfalls else st.just(0))):
        _box_pitfall(draw, row)
    tag = "<point>({px}{psep}{py})</point>".format(**row)
    tags = tag * row["tags"] if isinstance(row["tags"], int) else row["tags"]
    input_ = row["head"] + (tags or "<ref>arable land</ref>") + " in the image."
    return input_, "{lead}[{x0} {y0}{sep}{x1} {y1}]{trail}".format(**row)


CLEAN_OPTIONS = ["Portugal", "Cold, dry summer, warm summer", "0", "x,", "1,", "(a)", "xb)", "tab) x", "x-d) end",
                 "Rule (c)", "a", "a ,x"]
ODD_OPTIONS = ["see b) below", "c) 3", "a) x", "", " ", "x ,", ",", "\xe9t\xe9", "x\xa0y", "x\u2003", "\vx", "x\ny",
               "x\x1c", "x\xa0", "\xa0b) y"]
option_text = st.sampled_from(CLEAN_OPTIONS) | st.text(st.sampled_from(list("ab cd),(x")), min_size=1, max_size=6).filter(
    lambda t: t == t.strip())  # may hold a marker: then parse_row raises


def _mcq_pitfall(draw, row):
    pitfall = draw(st.sampled_from(["option", "before", "after", "letters", "question", "lead", "end", "answer"]))
    i = draw(st.integers(0, 3))
    if pitfall == "option":
        row["options"][i] = draw(st.sampled_from(ODD_OPTIONS))
    elif pitfall == "before":  # the separator before a marker
        row["before"][i] = draw(st.sampled_from(["", " ", ",", ", ,", ",,", " , ", "\xa0", ",\n", ", \u2003", ",\v"]))
    elif pitfall == "after":
        row["after"][i] = draw(st.sampled_from(["", "  ", "\xa0", "\t", "\n", " ,"]))
    elif pitfall == "letters":  # missing, out of order, repeated, extra
        row["letters"] = draw(st.sampled_from(["abc", "abdc", "abcdd", "aabcd", "abcde", "bacd", "abcdc"]))
    elif pitfall == "question":
        row["question"] = draw(st.sampled_from(["", "Pick (a) or b):", "Q\xa0", "Q\n", "\xe9"]))
        row["before"][0] = draw(st.sampled_from(["", " "]))
    elif pitfall == "lead":  # a marker at the very start: parse_row counts it too
        row["question"] = draw(st.sampled_from(["a) x", "d)", "b) Q:", "c)Q"]))
    elif pitfall == "end":
        row["end"] = draw(st.sampled_from(ODD_SPACE + [" ", ","]))
    else:
        row["answer"] = draw(st.sampled_from(["e", "A", "", "a)", " a"]))


@st.composite
def mcq_rows(draw, pitfalls=True):
    """(input, output) of an ``mcq`` row."""
    row = dict(question=draw(st.sampled_from([MCQ_Q, "Pick (a) or (b):", "?"])), letters="abcd",
               before=[" ", ", ", ", ", ", ", ", "], after=[" "] * 5, options=[draw(option_text) for _ in range(5)],
               end="", answer=draw(st.sampled_from("abcd")))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]) if pitfalls else st.just(0))):
        _mcq_pitfall(draw, row)
    parts = zip(row["letters"], row["before"], row["after"], row["options"])
    input_ = row["question"] + "".join(f"{before}{letter}){after}{option}" for letter, before, after, option in parts)
    return input_ + row["end"], row["answer"]


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(box_rows(), min_size=1, max_size=20), st.lists(mcq_rows(), min_size=1, max_size=20))
def test_fast_path_agrees_with_parse_row(boxes, mcqs):
    for kind, rows in (("bounding box", boxes), ("mcq", mcqs)):
        _check_fast(kind, *zip(*rows))


@settings(derandomize=True, max_examples=30, deadline=None)
@given(st.lists(box_rows(pitfalls=False), min_size=1, max_size=20), st.lists(mcq_rows(pitfalls=False), min_size=1, max_size=20))
def test_fast_path_takes_rows_written_like_the_release(boxes, mcqs):
    assert _check_fast("bounding box", *zip(*boxes)).all()
    clean = [(i, o) for i, o in mcqs if len(MARKER.findall(i)) == 4]  # a generated option text may hold a marker
    if clean:
        assert _check_fast("mcq", *zip(*clean)).all()


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=10))
def test_fast_boxes_read_numbers_bit_for_bit_like_float(xs):
    # Arrow's cast and float() must agree even where rounding is hardest: at and next to the exact
    # midpoint of two adjacent doubles (up to ~1100 digits)
    texts = []
    for x in xs:
        with decimal.localcontext() as context:
            context.prec = 2000
            middle = format((decimal.Decimal(x) + decimal.Decimal(math.nextafter(x, 1))) / 2, "f")
        texts += [np.format_float_positional(x, trim="0"), middle, middle + "1", middle[:-1], middle[:19]]  # no exponent
    outputs = [f"[0 0, {t} {t}]" for t in texts]
    assert _check_fast("bounding box", ["x"] * len(outputs), outputs).all()


# --- through join.text_columns: the same values and the same first error as parse_row ---------

NO_TOKENS = SimpleNamespace(ref_token=None, point_token=None)


def _text_columns(rows, bulk):
    """``join.text_columns`` of (type, input, output) rows, IDs from 100; ``bulk``: parse even 1 row in bulk."""
    kinds, inputs, outputs = zip(*rows)
    table = pa.table({"ID": pa.array(range(100, 100 + len(rows)), pa.int64()), "input": list(inputs),
                      "output": list(outputs), "type": list(kinds), "category": ["None"] * len(rows)})
    with mock.patch.object(join, "BULK_PARSE_MIN_ROWS", 1 if bulk else 10**9):
        return join.text_columns(NO_TOKENS, table)


any_row = (box_rows().map(lambda r: ("bounding box", *r)) | mcq_rows().map(lambda r: ("mcq", *r))
           | st.tuples(st.sampled_from(["binary", "captioning", "other"]), st.just("Is it?"),
                       st.sampled_from(["yes", "no", "Yes"])))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(any_row, min_size=1, max_size=20))
def test_text_columns_agree_with_parse_row(rows):
    first_error = None
    for kind in ("bounding box", "mcq", "binary"):  # the order in which text_columns meets the rows
        for j, (k, input_, output) in enumerate(rows):
            if k == kind:
                try:
                    parse_row(kind, input_, output, 100 + j)
                except AnnotationError as err:
                    first_error = first_error or err
    parsed = []
    for kind, input_, output in rows:
        try:
            parsed.append(((kind, input_, output), parse_row(kind, input_, output, 1) if kind in ROW_TYPES else {}))
        except AnnotationError:
            pass
    for bulk in (True, False):
        if first_error is not None:
            with pytest.raises(AnnotationError) as exc:
                _text_columns(rows, bulk)
            assert str(exc.value) == str(first_error)
        if not parsed:
            continue
        out = _text_columns([r for r, _ in parsed], bulk)
        assert out["options"].type == pa.list_(pa.string(), 4) and out["bbox"].type == pa.list_(pa.float64(), 4)
        for j, (_, want) in enumerate(parsed):
            assert _bits(out["bbox"][j].as_py()) == _bits(want.get("bbox") or (math.nan,) * 4)
            assert _bits(out["point"][j].as_py()) == _bits(want.get("point") or (math.nan,) * 2)
            assert out["options"][j].as_py() == (want.get("options") or [""] * 4)


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize(
    "kind, input_, output, column",
    [
        ("mcq", f"{MCQ_Q} a) see b) below, b) y, c) z, d) w", "a", "input"),
        ("mcq", f"{MCQ_Q} a) x, b) y, c) z, d) w", "e", "output"),
        ("bounding box", f"{AT}<point>(0.81, 1.37)</point>.", "[0.77 0.0, 1.0 1.0]", "input"),
        ("bounding box", "x", "[0.5 0.37, 0.4 1.0]", "output"),
        ("binary", "Is it?", "Yes", "output"),
    ],
)
def test_a_bad_row_raises_naming_its_id_through_text_columns(kind, input_, output, column, bulk):
    good = [("mcq", f"{MCQ_Q} a) x, b) y, c) z, d) w", "a"), ("bounding box", "x", "[0.0 0.37, 1.0 1.0]"),
            ("binary", "Is it?", "no")] * 2
    with pytest.raises(AnnotationError, match=rf"^ID 104: {column} ") as exc:
        _text_columns(good[:4] + [(kind, input_, output)] + good[4:], bulk)
    assert exc.value.id == 104
