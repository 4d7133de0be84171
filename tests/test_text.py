"""Tests for bentxt.text against the real rows quoted in the facts file (sections 5, 6, 14)."""

from __future__ import annotations

import pickle
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bentxt.text import (
    AnnotationError,
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

# (ID, type, input, output, expected {"bbox", "point", "options"}) — the 18 rows of facts section 5.
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
        "Provide a bounding box around the land cover class instance found at <point>(0.64, 0.79)</point> in the satellite image.",
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
    # further real / transcribed examples of facts sections 5 and 6 (IDs unknown; 0 used)
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


# --- token replacement (facts section 14) -----------------------------------------------------


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
