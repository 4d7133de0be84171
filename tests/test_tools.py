"""Normalisation, text-consistent geometric augmentation, plot and collate (bentxt.tools.transforms / plot / collate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bigearthnet_txt as bt
from bentxt import bands as B
from bentxt.text import grammar as text
from bentxt.tools import transforms as T

# ----------------------------------------------------------------------------- helpers

GROUPS = {g.name: g for g in B.BAND_GROUPS}
BOX = [0.1, 0.2, 0.5, 0.9]  # pixel-aligned at 120, 60 and 20 px (multiples of 12 / 6 / 2 pixels)
POINT = [0.36, 0.43]  # inside a pixel at every size (no coordinate is a multiple of 0.05)
PROMPT = "Generate a bounding box for the land cover class instance found at <point>(0.36, 0.43)</point> in the satellite image."


def box_mask(size: int, box=BOX) -> np.ndarray:
    x0, y0, x1, y1 = (round(v * size) for v in box)
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True  # rows = y, columns = x
    return mask


def point_mask(size: int, point=POINT) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[int(point[1] * size), int(point[0] * size)] = True
    return mask


def grounding_example(**extra) -> dict:
    """One annotation-layout grounding row whose images carry the box (channel 0) and the point (channel 1)."""
    example = {
        "ID": 7, "patch_id": "P", "type": "bounding box", "category": "point", "input": PROMPT,
        "output": text.format_bbox(BOX), "bbox": list(BOX), "point": list(POINT), "options": None,
    }
    for g in B.BAND_GROUPS:
        a = np.zeros(g.shape, dtype=g.dtype)
        a[0][box_mask(g.size)] = 1
        a[1][point_mask(g.size)] = 1
        example[g.name] = a
    example.update(extra)
    return example


def same(a, b) -> bool:
    """Values equal, NaN equal to NaN (rows without a box/point hold NaN-filled values), arrays exactly."""
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f" and b.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def is_nan(value) -> bool:
    return bool(np.isnan(np.asarray(value, dtype=np.float64)).all())


def extent(mask: np.ndarray):
    """[x0, y0, x1, y1] of the True pixels, as fractions (pixel edges / size)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return [cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h]


# ----------------------------------------------------------------------------- normalisation


def test_statistics_are_the_publishers_numbers_as_arrays():
    # docs/release.md#publishers-loader (ConfigILM BENv2_utils "120_nearest"), typed in here independently of bands.py
    assert T.GROUP_MEAN["s2_10m"].tolist() == [438.3720703125, 614.0556640625, 588.4096069335938, 2193.2919921875]
    assert T.GROUP_STD["s2_10m"].tolist() == [607.02685546875, 603.2968139648438, 684.56884765625, 1369.3717041015625]
    assert T.GROUP_MEAN["s2_60m"].tolist() == [361.0767822265625, 2241.455322265625]
    assert T.GROUP_MEAN["s1"].tolist() == [-12.643863677978516, -19.352558135986328]
    assert T.GROUP_STD["s1"].tolist() == [5.133493900299072, 5.590505599975586]
    mean, std = T.band_stats("RGB")
    assert mean.dtype == std.dtype == np.float32
    assert mean.tolist() == [588.4096069335938, 614.0556640625, 438.3720703125]
    assert T.band_stats(["VH", "B8A"])[1].tolist() == [5.590505599975586, 1356.5440673828125]
    assert set(T.GROUP_MEAN) == {g.name for g in B.BAND_GROUPS}
    with pytest.raises(ValueError):
        T.GROUP_MEAN["s1"][0] = 0.0  # read-only


def test_normalize_one_example_and_a_python_format_batch():
    ex = {"ID": 1, "s2_10m": np.full((4, 120, 120), 1000, np.uint16), "s1": np.full((2, 120, 120), -10.0, np.float32)}
    out = T.normalize(ex)
    assert out["ID"] == 1 and ex["s2_10m"].dtype == np.uint16  # input untouched
    assert out["s2_10m"].dtype == out["s1"].dtype == np.float32 and out["s2_10m"].shape == (4, 120, 120)
    assert out["s2_10m"][0, 5, 5] == np.float32((np.float32(1000) - np.float32(438.3720703125)) / np.float32(607.02685546875))
    assert out["s2_10m"][3, 0, 0] == pytest.approx((1000 - 2193.2919921875) / 1369.3717041015625, rel=1e-6)
    assert out["s1"][1, 0, 0] == pytest.approx((-10 + 19.352558135986328) / 5.590505599975586, rel=1e-6)
    batch = {"ID": [1, 2],
             "s2_60m": [np.full((2, 20, 20), 361, np.uint16).tolist(), np.full((2, 20, 20), 2241, np.uint16).tolist()]}
    out = T.Normalize()(batch)
    assert out["s2_60m"].shape == (2, 2, 20, 20) and out["s2_60m"].dtype == np.float32
    assert out["s2_60m"][0, 0, 0, 0] == pytest.approx((361 - 361.0767822265625) / 575.0687255859375, rel=1e-5)
    assert out["s2_60m"][1, 1, 3, 3] == pytest.approx((2241 - 2241.455322265625) / 1316.393310546875, rel=1e-5)


def test_normalize_image_needs_and_uses_the_band_order():
    image = np.stack([np.full((8, 8), v, np.float32) for v in (-12.643863677978516, 588.4096069335938 + 684.56884765625)])
    with pytest.raises(ValueError, match="bands="):
        T.normalize({"image": image})
    out = T.normalize({"image": image}, bands=["VV", "B04"])
    np.testing.assert_allclose(out["image"][:, 0, 0], [0.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="C=3"):
        T.normalize({"image": image}, bands="RGB")


@pytest.fixture(scope="module")
def grounding(fixture_data, tmp_path_factory):
    builder = bt.BigEarthNetTxt(config_name="s1s2-grounding-test", data_dir=str(fixture_data.root),
                                cache_dir=str(tmp_path_factory.mktemp("tools_cache")))
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def test_normalize_with_transform_matches_the_formula(grounding):
    raw = grounding.with_format("numpy", dtype=None)[0:3]
    out = grounding.with_transform(T.Normalize())[0:3]
    for group in B.BAND_GROUPS:
        mean, std = T.GROUP_MEAN[group.name][:, None, None], T.GROUP_STD[group.name][:, None, None]
        expected = (raw[group.name].astype(np.float32) - mean) / std
        assert out[group.name].dtype == np.float32
        np.testing.assert_array_equal(out[group.name], expected)
    assert out["ID"] == raw["ID"].tolist()


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("op,k", [("rot90", 1), ("rot180", 2), ("rot270", 3)])
def test_rotations_are_np_rot90_counter_clockwise(op, k):
    a = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    np.testing.assert_array_equal(T.transform_image(a, op), np.rot90(a, k, axes=(-2, -1)))
    # CCW: after rot90 the top-right corner is the top-left one
    assert T.transform_image(a, "rot90")[0, 0, 0] == a[0, 0, -1]
    assert T.transform_point([1.0, 0.0], "rot90") == [0.0, 0.0]


def test_flips_and_transposes_match_numpy():
    a = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(T.transform_image(a, "hflip"), np.fliplr(a))
    np.testing.assert_array_equal(T.transform_image(a, "vflip"), np.flipud(a))
    np.testing.assert_array_equal(T.transform_image(a, "transpose"), a.T)
    np.testing.assert_array_equal(T.transform_image(a, "transverse"), np.rot90(a, 2).T)


def test_real_row_rewritten_exactly():
    # ID 27527: "<point>(0.35, 0.16)</point>" -> "[0.0 0.0, 0.93 0.45]"
    assert text.format_bbox(T.transform_bbox([0.0, 0.0, 0.93, 0.45], "hflip")) == "[0.07 0.0, 1.0 0.45]"
    assert text.format_bbox(T.transform_bbox([0.0, 0.0, 0.93, 0.45], "vflip")) == "[0.0 0.55, 0.93 1.0]"
    assert text.format_bbox(T.transform_bbox([0.0, 0.0, 0.93, 0.45], "rot90")) == "[0.0 0.07, 0.45 1.0]"
    assert text.format_bbox(T.transform_bbox([0.0, 0.0, 0.93, 0.45], "rot270")) == "[0.55 0.0, 1.0 0.93]"
    assert T.transform_point([0.35, 0.16], "rot90") == [0.16, 0.65]
    assert T.transform_point([0.35, 0.16], "rot270") == [0.84, 0.35]
    assert T.transform_point([0.35, 0.16], "rot180") == [0.65, 0.84]


@pytest.mark.parametrize("op", T.OPS)
def test_box_point_and_text_stay_aligned_with_every_band_group(op):
    out, applied = T.apply_op(grounding_example(), op)
    assert applied == op
    x0, y0, x1, y1 = out["bbox"]
    assert x0 <= x1 and y0 <= y1
    for g in B.BAND_GROUPS:
        a = out[g.name]
        assert a.shape == g.shape and a.dtype == np.dtype(g.dtype) and a.flags.c_contiguous
        np.testing.assert_array_equal(a[0] == 1, box_mask(g.size, out["bbox"]))  # box pixels = transformed box
        assert extent(a[0] == 1) == pytest.approx(out["bbox"], abs=1e-12)
        row, col = np.argwhere(a[1] == 1)[0]
        assert (col, row) == (int(out["point"][0] * g.size), int(out["point"][1] * g.size))
        assert box_mask(g.size, out["bbox"])[row, col]  # the point is still inside the box
    assert out["output"] == text.format_bbox(out["bbox"]) and text.parse_bbox(out["output"], 7) == tuple(out["bbox"])
    assert text.parse_point(out["input"], 7) == tuple(out["point"])
    assert out["input"].replace(text.format_point(out["point"]), "") == PROMPT.replace("<point>(0.36, 0.43)</point>", "")


def test_resampled_image_is_transformed_like_native_groups():
    ex = grounding_example()
    ex["image"] = np.stack([box_mask(128).astype(np.float32), point_mask(128).astype(np.float32)])
    out, _ = T.apply_op(ex, "rot270")
    np.testing.assert_array_equal(out["image"][0] == 1, box_mask(128, out["bbox"]))
    assert out["image"].dtype == np.float32


@settings(max_examples=100, deadline=None)
@given(
    op=st.sampled_from(T.OPS),
    xs=st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
    ys=st.tuples(st.integers(0, 100), st.integers(0, 100)).map(sorted),
    px=st.integers(0, 100), py=st.integers(0, 100),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    seed=st.integers(0, 2**16),
)
def test_op_then_inverse_is_identity(op, xs, ys, px, py, shape, seed):
    box = [xs[0] / 100, ys[0] / 100, xs[1] / 100, ys[1] / 100]
    point = [px / 100, py / 100]
    inv = T.INVERSE[op]
    moved = T.transform_bbox(box, op)
    assert moved[0] <= moved[2] and moved[1] <= moved[3]
    assert all(round(v * 100) == v * 100 or abs(round(v * 100) - v * 100) < 1e-9 for v in moved)  # on the 0.01 grid
    assert T.transform_bbox(moved, inv) == box
    assert T.transform_point(T.transform_point(point, op), inv) == point
    image = np.random.default_rng(seed).integers(0, 9, shape)
    np.testing.assert_array_equal(T.transform_image(T.transform_image(image, op), inv), image)
    # a pixel-aligned box at 100 px: the transformed mask is exactly the transformed box
    if xs[0] < xs[1] and ys[0] < ys[1]:
        np.testing.assert_array_equal(T.transform_image(box_mask(100, box), op), box_mask(100, moved))


# ----------------------------------------------------------------------------- orientation-dependent texts

RELATIVE = {
    "ID": 1017, "patch_id": "P", "type": "mcq", "category": "relative pos", "output": "d", "bbox": None, "point": None,
    "input": "What is the relative position of the arable land to the mixed forest? "
             "a) to the bottom-left, b) to the left, c) to the right, d) to the top",
    "options": ["to the bottom-left", "to the left", "to the right", "to the top"],
}
CAPTION = ("The dominant feature is the arable land, covering approximately 597,600 square meters, "
           "mainly in the centre of the image.")


def test_orientation_rule():
    assert T.orientation_text(RELATIVE) == "mcq category 'relative pos' depends on orientation"
    assert T.orientation_text({"type": "binary", "category": "adjacency", "input": "Is it right beside inland waters?"}) is None
    assert T.orientation_text({"type": "mcq", "category": "climate zone", "input": "?"}) is None
    assert T.orientation_text({"type": "captioning", "category": None, "input": "Describe", "output": CAPTION}) is None
    for words in ("along the right side", "in the upper part", "the North-eastern corner", "to the top-left", "runs vertically"):
        reason = T.orientation_text({"type": "captioning", "output": f"Forest {words} of the image."})
        assert reason is not None and "direction" in reason, words
    for harmless in ("topography", "brightness", "leastwise", "Westmeath"):
        assert T.orientation_text({"type": "captioning", "output": harmless}) is None
    stripped = dict(grounding_example(), input="Generate a bounding box at (0.36, 0.43) in the satellite image.")
    assert "cannot be rewritten" in T.orientation_text(stripped)
    assert T.orientation_text(
        {"type": "bounding box", "input": "Locate the <ref>pastures</ref> in the upper left.", "point": None}
    )
    assert T.orientation_text(grounding_example()) is None
    assert T.orientation_text({"type": "weird"}) == "unknown type 'weird'"


def relative_example():
    ex = dict(RELATIVE)
    ex["s1"] = np.random.default_rng(0).normal(size=(2, 120, 120)).astype(np.float32)
    return ex


def test_relative_position_rows_are_skipped_or_raise():
    ex = relative_example()
    out, applied = T.apply_op(ex, "hflip", on_orientation_text="skip")
    assert applied == "identity" and out["input"] == ex["input"] and out["output"] == "d"
    np.testing.assert_array_equal(out["s1"], ex["s1"])
    with pytest.raises(T.OrientationTextError, match="relative pos"):
        T.apply_op(ex, "rot90", on_orientation_text="raise")
    # identity never needs a rewrite
    assert T.apply_op(ex, "identity", on_orientation_text="raise")[1] == "identity"
    aug = T.GeometricAugment(ops=["vflip"], on_orientation_text="raise")
    with pytest.raises(T.OrientationTextError):
        aug(ex)
    out = T.GeometricAugment(ops=["vflip"], record_op=True)(ex)
    assert out["augment_op"] == "identity" and np.array_equal(out["s1"], ex["s1"])


def test_captions_without_directions_are_augmented_with_text_unchanged():
    ex = {"ID": 3, "type": "captioning", "category": None, "input": "Describe this satellite image.", "output": CAPTION,
          "bbox": None, "point": None, "options": None, "s1": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)}
    out, applied = T.apply_op(ex, "rot90", on_orientation_text="raise")
    assert applied == "rot90" and out["output"] == CAPTION
    np.testing.assert_array_equal(out["s1"], np.rot90(ex["s1"], 1, axes=(-2, -1)))


def test_patch_layout_policies():
    g = grounding_example()
    patch = {k: g[k] for k in ("patch_id", *GROUPS)}
    fields = ("ID", "type", "category", "input", "output", "bbox", "point", "options")
    patch["annotations"] = [{k: g[k] for k in fields}, dict(RELATIVE)]
    out, applied = T.apply_op(patch, "hflip", on_orientation_text="skip")
    assert applied == "identity" and out["annotations"] == patch["annotations"]
    with pytest.raises(T.OrientationTextError, match="annotation ID 1017"):
        T.apply_op(patch, "hflip", on_orientation_text="raise")
    out, applied = T.apply_op(patch, "hflip", on_orientation_text="drop")
    assert applied == "hflip" and [a["ID"] for a in out["annotations"]] == [7]
    a = out["annotations"][0]
    assert a["bbox"] == [0.5, 0.2, 0.9, 0.9] and a["output"] == "[0.5 0.2, 0.9 0.9]" and a["point"] == [0.64, 0.43]
    assert "<point>(0.64, 0.43)</point>" in a["input"]
    np.testing.assert_array_equal(out["s2_20m"][0] == 1, box_mask(60, a["bbox"]))
    # annotation layout: "drop" cannot remove the row, so it passes through
    assert T.apply_op(relative_example(), "hflip", on_orientation_text="drop")[1] == "identity"


def test_ops_are_deterministic_per_example_and_seed():
    ids = [{"ID": i} for i in range(400)]
    a, b = T.GeometricAugment(seed=3), T.GeometricAugment(seed=3)
    ops = [a.op_for(e) for e in ids]
    assert ops == [b.op_for(e) for e in reversed(ids)][::-1]  # order independent
    assert set(ops) == set(T.OPS) and max(ops.count(o) for o in T.OPS) < 80  # all 8, roughly uniform (50 each)
    assert ops != [T.GeometricAugment(seed=4).op_for(e) for e in ids]
    b.set_epoch(1)
    assert ops != [b.op_for(e) for e in ids]
    assert {T.GeometricAugment(ops=["rot90", "hflip"]).op_for(e) for e in ids} == {"rot90", "hflip"}
    with pytest.raises(ValueError, match="unknown op"):
        T.GeometricAugment(ops=["rot45"])
    with pytest.raises(ValueError, match="on_orientation_text"):
        T.GeometricAugment(on_orientation_text="ignore")


def test_with_transform_batches_match_per_example_application(grounding):
    aug = T.GeometricAugment(seed=11, record_op=True)
    batch = grounding.with_transform(aug)[:]
    raw = grounding.with_format("numpy", columns=list(GROUPS), dtype=None, output_all_columns=True)
    assert len(set(batch["augment_op"])) > 1
    for i in range(grounding.num_rows):
        example = raw[i]
        expected, applied = T.apply_op(example, aug.op_for(example), "skip")
        assert batch["augment_op"][i] == applied
        for key in ("input", "output", "bbox", "point"):
            assert same(batch[key][i], expected[key]), (key, batch[key][i], expected[key])
        for g in B.BAND_GROUPS:
            assert batch[g.name].dtype == np.dtype(g.dtype)
            np.testing.assert_array_equal(batch[g.name][i], expected[g.name])
        assert text.parse_bbox(batch["output"][i], 0) == tuple(batch["bbox"][i])
    # grounding rows with a <ref> instead of a point (NaN point) are rewritable and augmented too
    no_point = [i for i in range(grounding.num_rows) if is_nan(batch["point"][i])]
    assert no_point and any(batch["augment_op"][i] != "identity" for i in no_point)
    # per example (ds.map without batching) gives the same rows, and their arrays
    mapped = grounding.map(T.GeometricAugment(seed=11))
    assert mapped["output"] == batch["output"] and mapped["input"] == batch["input"]
    assert all(same(a, b) for a, b in zip(mapped["point"], batch["point"]))
    got = mapped.with_format("numpy", columns=["s2_10m"])[:]["s2_10m"]
    assert got.dtype == np.uint16 and np.array_equal(got, batch["s2_10m"])


# ----------------------------------------------------------------------------- plot


def rgba(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_example() -> dict:
    """Pixels chosen so that nothing but the box is yellow: S2 red and green flat (stretched to 0), blue a
    gradient; S1 VH flat (green 0), VV a gradient (red and blue)."""
    ex = grounding_example(input=PROMPT, split="test")
    s2 = np.zeros((4, 120, 120), np.uint16)
    s2[0] = np.linspace(100, 3000, 120, dtype=np.uint16)[None, :]
    ex["s2_10m"] = s2
    s1 = np.full((2, 120, 120), -18.0, np.float32)
    s1[0] = np.linspace(-25, -5, 120, dtype=np.float32)[:, None]
    ex["s1"] = s1
    return ex


def yellow_extent(image: np.ndarray, ax) -> tuple:
    """Pixel bounds (left, top, right, bottom) of the yellow box pixels inside one axes."""
    h = image.shape[0]
    bb = ax.get_window_extent()
    x0, x1 = int(bb.x0) - 5, int(bb.x1) + 5
    r0, r1 = h - int(bb.y1) - 5, h - int(bb.y0) + 5
    sub = image[r0:r1, x0:x1].astype(int)
    yellow = (sub[..., 0] > 200) & (sub[..., 1] > 200) & (sub[..., 2] < 90)
    rows, cols = np.nonzero(yellow)
    return cols.min() + x0, rows.min() + r0, cols.max() + x0, rows.max() + r0


def assert_box_and_point_drawn(fig, box, point):
    image = rgba(fig)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 100  # not blank
    h = image.shape[0]
    for ax in fig.axes:
        (left, top), (right, bottom) = ax.transData.transform([(box[0], box[1]), (box[2], box[3])])
        expected = (left, h - top, right, h - bottom)  # display y grows upwards, image rows downwards
        found = yellow_extent(image, ax)
        assert np.allclose(found, expected, atol=3), (ax.get_title(), found, expected)
        px, py = ax.transData.transform([point])[0]
        r, c = int(round(h - py)), int(round(px))
        marker = image[r - 1 : r + 2, c - 1 : c + 2].reshape(-1, 3).astype(int)
        assert ((marker[:, 0] > 200) & (marker[:, 1] < 60) & (marker[:, 2] > 200)).any()  # magenta "+"


def test_plot_draws_images_box_point_and_title():
    pytest.importorskip("matplotlib")
    from bentxt.tools.plot import plot

    ex = plot_example()
    fig = plot(ex)
    assert len(fig.axes) == 2 and "Sentinel-2" in fig.axes[0].get_title() and "Sentinel-1" in fig.axes[1].get_title()
    title = fig._suptitle.get_text()
    assert "<point>(0.36, 0.43)</point>" in title.replace("\n", " ") and "A: [0.1 0.2, 0.5 0.9]" in title
    assert_box_and_point_drawn(fig, BOX, POINT)
    # the S2 panel shows B02 as blue increasing to the right: the image is not flipped or transposed
    image = rgba(fig)
    bb = fig.axes[0].get_window_extent()
    row = image.shape[0] - int(round(fig.axes[0].transData.transform([(0.5, 0.05)])[0][1]))  # above the box
    blue = image[row, int(bb.x0) + 3 : int(bb.x1) - 3, 2].astype(int)
    assert blue[-1] > 200 and blue[0] < 30 and np.all(np.diff(blue) >= 0)


def test_plot_patch_layout_picks_the_annotation_and_image_needs_bands():
    pytest.importorskip("matplotlib")
    from bentxt.tools.plot import plot

    ex = plot_example()
    patch = {k: ex[k] for k in ("patch_id", "split", "s2_10m", "s1")}
    fields = ("ID", "type", "category", "input", "output", "bbox", "point", "options")
    patch["annotations"] = [dict(RELATIVE), {k: ex[k] for k in fields}]
    assert "A: d) to the top" in plot(patch)._suptitle.get_text()
    fig = plot(patch, annotation=1)
    assert "[0.1 0.2, 0.5 0.9]" in fig._suptitle.get_text() and len(fig.axes[0].patches) == 1
    with pytest.raises(IndexError):
        plot(patch, annotation=2)
    image = {"image": np.stack([ex["s1"][0], ex["s2_10m"][0]]).astype(np.float32), "bbox": BOX, "input": "q", "output": "a"}
    with pytest.raises(ValueError, match="bands="):
        plot(image)
    with pytest.raises(ValueError, match="nothing to draw"):  # no B03/B04 for true colour, no VH for SAR
        plot(image, bands=["VV", "B02"])


def test_plot_resampled_image_with_band_order():
    pytest.importorskip("matplotlib")
    from bentxt.tools.plot import plot

    ex = plot_example()
    moved, _ = T.apply_op(ex, "rot90")
    image = np.concatenate([moved["s1"], moved["s2_10m"][[2, 1, 0]].astype(np.float32)])
    example = {"image": image, "bbox": moved["bbox"], "point": moved["point"], "input": "q", "output": "a"}
    fig = plot(example, bands=["VV", "VH", "B04", "B03", "B02"])
    assert len(fig.axes) == 2
    assert_box_and_point_drawn(fig, moved["bbox"], moved["point"])


# ----------------------------------------------------------------------------- collate


def test_collate_stacks_images_and_fills_absent_boxes_with_nan():
    torch = pytest.importorskip("torch")
    from bentxt.tools.collate import Collate, collate

    a, b = grounding_example(), dict(RELATIVE, **{g: grounding_example()[g] for g in GROUPS})
    b["s2_10m"] = b["s2_10m"].copy()
    b["s2_10m"][2, 3, 4] = 65535
    batch = collate([a, b])
    # uint16 -> int32 by default: what with_format("torch") gives for the same columns
    assert batch["s2_10m"].shape == (2, 4, 120, 120) and batch["s2_10m"].dtype == torch.int32
    assert batch["s2_20m"].shape == (2, 6, 60, 60) and batch["s1"].dtype == torch.float32
    assert int(batch["s2_10m"][1, 2, 3, 4]) == 65535
    assert batch["ID"].dtype == torch.int64 and batch["ID"].tolist() == [7, 1017]
    assert batch["input"] == [PROMPT, RELATIVE["input"]] and batch["text_input"] is batch["input"]
    assert batch["reference_output"] is batch["output"] and batch["output"] == ["[0.1 0.2, 0.5 0.9]", "d"]
    # None (hand-made rows) and NaN-filled (the builder's rows) boxes are both a NaN row
    assert batch["bbox"].shape == (2, 4) and batch["bbox"][0].tolist() == BOX and batch["bbox"][1].isnan().all()
    assert batch["point"].shape == (2, 2) and batch["point"][1].isnan().all()
    assert batch["options"] == [["", "", "", ""], RELATIVE["options"]]
    assert set(batch["image_input"]) == set(GROUPS)  # native groups differ in size: a dict
    keep = Collate(uint16="keep", image_key="s2_10m")([a, b])
    assert keep["s2_10m"].dtype == torch.uint16 and keep["image_input"] is keep["s2_10m"]
    assert torch.equal(keep["s2_10m"].to(torch.int32), batch["s2_10m"])
    assert repr(Collate()) == "Collate(image_key=None, uint16='int32')"
    with pytest.raises(ValueError, match="int32"):
        Collate(uint16="int64")
    # python-format nested lists keep the feature dtype; a resampled `image` is the publisher's image_input
    lists = collate([{"s2_60m": a["s2_60m"].tolist(), "image": np.ones((3, 4, 4), np.float32), "latitude": 48.3}] * 3)
    assert lists["s2_60m"].dtype == torch.int32 and lists["image_input"].shape == (3, 3, 4, 4)
    assert lists["latitude"].dtype == torch.float64
    nan = collate([dict(a, bbox=[math.nan] * 4), a])
    assert nan["bbox"][0].isnan().all() and nan["bbox"][1].tolist() == BOX


@pytest.fixture(scope="module")
def mixed(fixture_data, tmp_path_factory):
    """A prepared split with every text type: boxes on grounding rows only, NaN elsewhere; options on MCQ rows only."""
    builder = bt.BigEarthNetTxt(config_name="s1s2-all-test", data_dir=str(fixture_data.root),
                                cache_dir=str(tmp_path_factory.mktemp("tools_mixed")))
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def assert_same_batches(got: dict, want: dict, torch) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor) and got[key].shape == value.shape, key
            assert torch.equal(got[key], value) or torch.allclose(got[key].double(), value.double(), equal_nan=True), key
        elif isinstance(value, dict):
            assert_same_batches(got[key], value, torch)
        else:
            assert got[key] == value, key


def test_collate_handles_every_format_of_a_prepared_dataset(mixed):
    torch = pytest.importorskip("torch")
    from bentxt.tools.collate import collate

    types = mixed["type"]
    part = mixed.select(sorted({types.index(t) for t in types} | {len(types) - 1}))  # every type, both pairs
    n = part.num_rows
    assert set(part["type"]) == {"bounding box", "mcq", "binary", "captioning"} and len(set(part["patch_id"])) == 2
    python = collate([part[i] for i in range(n)])
    assert python["s2_10m"].dtype == part.with_format("torch")[0:2]["s2_10m"].dtype == torch.int32
    assert python["s1"].dtype == torch.float32 and python["bbox"].dtype == torch.float64
    for i in range(n):
        assert bool(python["bbox"][i].isnan().all()) != (part[i]["type"] == "bounding box")
        assert (python["options"][i] == ["", "", "", ""]) != (part[i]["type"] == "mcq")
    want = part.with_format("numpy")[:]
    for key in ("s2_10m", "s2_20m", "s2_60m", "s1"):
        assert np.array_equal(python[key].numpy(), want[key].astype(python[key].numpy().dtype)), key
    # numpy rows, a numpy batch, torch rows, a torch batch, a python batch: the same values
    for name, batch in {
        "numpy rows": collate([part.with_format("numpy")[i] for i in range(n)]),
        "numpy batch": collate(part.with_format("numpy")[:]),
        "torch rows": collate([part.with_format("torch")[i] for i in range(n)]),
        "torch batch": collate(part.with_format("torch")[:]),
        "python batch": collate(part[:]),
    }.items():
        assert set(batch) == set(python), name
        for key in ("s2_10m", "s2_20m", "s2_60m", "s1", "ID"):
            assert batch[key].dtype == python[key].dtype and torch.equal(batch[key], python[key]), (name, key)
        for key in ("bbox", "point"):  # float32 from the numpy/torch formats, float64 from python rows
            assert torch.allclose(batch[key].double(), python[key], equal_nan=True, atol=1e-6), (name, key)
        for key in ("input", "output", "type", "category", "options", "patch_id"):
            assert batch[key] == python[key], (name, key)
        assert torch.allclose(batch["latitude"].double(), python["latitude"], atol=1e-4), name


def test_collate_in_a_dataloader_with_workers_over_the_default_columns(mixed):
    torch = pytest.importorskip("torch")
    from bentxt.tools.collate import collate

    loader = torch.utils.data.DataLoader(mixed, batch_size=8, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b["ID"]) for b in batches) == mixed.num_rows
    assert sorted(i for b in batches for i in b["ID"].tolist()) == sorted(mixed["ID"])
    assert all(b["s2_10m"].dtype == torch.int32 and b["bbox"].shape[1:] == (4,) for b in batches)
    boxes = torch.cat([b["bbox"] for b in batches])
    assert int((~boxes.isnan().any(1)).sum()) == sum(t == "bounding box" for t in mixed["type"])


def test_collate_in_a_dataloader_with_transforms(grounding):
    torch = pytest.importorskip("torch")
    from bentxt.tools.collate import collate

    ds = grounding.with_transform(lambda batch: T.Normalize()(T.GeometricAugment(seed=0)(batch)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["s2_10m"].shape == (4, 4, 120, 120) and batch["s2_10m"].dtype == torch.float32
    assert batch["s1"].shape == (4, 2, 120, 120) and len(batch["text_input"]) == 4
    raw = grounding.with_transform(T.GeometricAugment(seed=0))[:4]
    np.testing.assert_allclose(batch["s2_10m"][0].numpy(), T.normalize({"s2_10m": raw["s2_10m"][0]})["s2_10m"])
    assert batch["reference_output"] == raw["output"]


# ----------------------------------------------------------------------------- the no-null representation


@pytest.mark.parametrize("op", T.OPS)
def test_nan_boxes_and_points_stay_nan_under_every_op(op):
    caption = {"ID": 3, "type": "captioning", "category": "None", "input": "Describe this satellite image.",
               "output": CAPTION, "bbox": [math.nan] * 4, "point": [math.nan] * 2, "options": [""] * 4,
               "s1": np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)}
    out, applied = T.apply_op(caption, op, on_orientation_text="raise")
    assert applied == op and out["output"] == CAPTION and out["options"] == [""] * 4
    assert is_nan(out["bbox"]) and is_nan(out["point"]) and len(out["bbox"]) == 4 and len(out["point"]) == 2
    # a grounding row with a <ref> and no point: the box moves, the NaN point stays, the text is rewritten
    ref = dict(grounding_example(), input="Locate a patch of <ref>pastures</ref> in the image.",
               point=np.full(2, np.nan, np.float32), bbox=np.array(BOX, np.float32))
    assert T.orientation_text(ref) is None  # NaN point: nothing to find in the prompt
    out, applied = T.apply_op(ref, op, on_orientation_text="raise")
    assert applied == op and is_nan(out["point"]) and out["input"] == ref["input"]
    assert isinstance(out["bbox"], np.ndarray) and out["bbox"].dtype == np.float32  # the container it came in
    assert out["output"] == text.format_bbox(T.transform_bbox(BOX, op))
    np.testing.assert_allclose(out["bbox"], T.transform_bbox(BOX, op), atol=1e-6)


def test_geometric_augment_gives_the_same_rows_in_every_format(mixed):
    pytest.importorskip("torch")
    aug = T.GeometricAugment(seed=5, record_op=True)
    python = mixed.with_transform(aug)[:]
    assert len(set(python["augment_op"])) > 2 and {"bounding box", "captioning"} <= set(mixed["type"])
    for i in range(mixed.num_rows):
        if mixed[i]["type"] != "bounding box":
            assert is_nan(python["bbox"][i]), i  # a NaN box stays NaN whatever op was drawn
    for name, batch in (("numpy", aug(mixed.with_format("numpy")[:])), ("torch", aug(mixed.with_format("torch")[:]))):
        assert batch["augment_op"] == python["augment_op"], name  # the same op per ID in every format
        assert list(batch["input"]) == python["input"] and list(batch["output"]) == python["output"], name
        for key in ("s2_10m", "s2_60m", "s1"):
            values = batch[key].numpy() if name == "torch" else batch[key]
            assert type(batch[key]).__module__.startswith(name), (name, key)  # numpy in, numpy out; torch too
            assert np.array_equal(values, np.stack(python[key]).astype(values.dtype)), (name, key)
        boxes = np.asarray(batch["bbox"], dtype=np.float64)
        assert np.allclose(boxes, np.asarray(python["bbox"], dtype=np.float64), equal_nan=True, atol=1e-6), name
    one = aug(mixed.with_format("numpy")[0])  # one numpy example: arrays stay arrays
    assert isinstance(one["s2_10m"], np.ndarray) and one["s2_10m"].dtype == np.uint16 and one["s2_10m"].ndim == 3
    assert one["augment_op"] == python["augment_op"][0]


def test_normalize_works_on_numpy_and_torch_formats(grounding):
    torch = pytest.importorskip("torch")
    raw = grounding.with_format("numpy")[0:3]
    out = T.normalize(raw)
    for group in B.BAND_GROUPS:
        mean, std = T.GROUP_MEAN[group.name][:, None, None], T.GROUP_STD[group.name][:, None, None]
        expected = (raw[group.name].astype(np.float32) - mean) / std
        assert out[group.name].dtype == np.float32 and out[group.name].shape == raw[group.name].shape
        np.testing.assert_array_equal(out[group.name], expected)
    assert out["ID"] is raw["ID"]  # other columns pass through
    one = T.normalize(grounding.with_format("numpy")[1])
    np.testing.assert_array_equal(one["s2_10m"], out["s2_10m"][1])
    tensors = T.Normalize()(grounding.with_format("torch")[0:3])
    assert isinstance(tensors["s1"], torch.Tensor) and tensors["s1"].dtype == torch.float32
    np.testing.assert_allclose(tensors["s2_20m"].numpy(), out["s2_20m"], rtol=1e-6)


def test_plot_leaves_out_nan_boxes_and_the_captions_none_category():
    pytest.importorskip("matplotlib")
    from bentxt.tools.plot import plot

    ex = dict(plot_example(), type="captioning", category="None", input="Describe the image.", output=CAPTION,
              bbox=np.full(4, np.nan, np.float32), point=[math.nan] * 2, options=[""] * 4)
    fig = plot(ex)
    assert all(len(ax.patches) == 0 and len(ax.lines) == 0 for ax in fig.axes)
    title = fig._suptitle.get_text()
    assert "captioning" in title and "None" not in title
    mcq = dict(plot_example(), type="mcq", category="relative pos", input=RELATIVE["input"], output="d",
               options=np.array(RELATIVE["options"], dtype=object), bbox=[math.nan] * 4, point=[math.nan] * 2)
    assert "A: d) to the top" in plot(mcq)._suptitle.get_text()  # options as a numpy array (numpy format)
    boxed = dict(plot_example(), point=[math.nan] * 2)
    fig = plot(boxed)
    assert all(len(ax.patches) == 1 and len(ax.lines) == 0 for ax in fig.axes)  # the box, no point marker


def test_plot_draws_a_prepared_row_in_any_format(mixed):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from bentxt.tools.plot import plot

    i = mixed["type"].index("bounding box")
    for row in (mixed[i], mixed.with_format("numpy")[i], mixed.with_format("torch")[i]):
        fig = plot(row)
        assert len(fig.axes) == 2 and all(len(ax.patches) == 1 for ax in fig.axes)
    caption = mixed[mixed["type"].index("captioning")]
    assert all(len(ax.patches) == 0 for ax in plot(caption).axes)
