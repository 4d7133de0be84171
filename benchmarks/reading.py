"""Cached reading: our Arrow cache vs the publisher's LMDB reader, on the same image pairs and texts.

Ours: ``BigEarthNetTxt("s1s2-all", bands="S1S2-10m20m", point_token=("", ""),
ref_token=("", ""))`` prepared once, read with ``.with_format("numpy",
dtype=None)``: one float32 (12, 120, 120) ``image`` per text, what the
publisher's loader returns. Reference: ``benchmarks.publisher_reference``
(LMDB lookup, safetensors decode, nearest interpolation to 120 px, torch.stack)
over the same parquet rows. Before any timing the two must return identical
images and texts for a sample of rows (``check_identical``).

The functions run in a child process pinned to one core (``run_child(...,
one_core=True)``).
"""

from __future__ import annotations

import time
from typing import Dict

import numpy as np

BANDS = "S1S2-10m20m"
TOKENS = ("", "")  # the publisher's default: tags stripped


def builder(data_dir: str, cache_dir: str, bands: str = BANDS):
    import bigearthnet_txt as bt

    return bt.BigEarthNetTxt(
        config_name="s1s2-all", data_dir=data_dir, cache_dir=cache_dir, bands=bands, point_token=TOKENS, ref_token=TOKENS
    )


def prepare(data_dir: str, cache_dir: str, bands: str = BANDS) -> dict:
    import datasets

    datasets.disable_progress_bars()
    t = time.perf_counter()
    builder(data_dir, cache_dir, bands).download_and_prepare()
    return {"seconds": time.perf_counter() - t}


def open_both(data_dir: str, cache_dir: str, lmdb_dir: str, bands: str = BANDS):
    """(our dataset in numpy format, the reference dataset, our index of every reference row).

    ``cache_dir`` must hold the prepared cache (:func:`prepare` with the same ``bands``).
    """
    import datasets

    from benchmarks.publisher_reference import BENTxTDataset

    datasets.disable_progress_bars()
    parts = builder(data_dir, cache_dir, bands).as_dataset()
    ours = datasets.concatenate_datasets([parts[s] for s in parts]).with_format("numpy", dtype=None)
    ref = BENTxTDataset(lmdb_dir, f"{data_dir}/BigEarthNet.txt.parquet", bands=bands)
    our_ids = ours.data.column("ID").to_numpy()
    position = {int(i): k for k, i in enumerate(our_ids)}
    ref_to_ours = np.array([position[int(i)] for i in ref.text_data["ID"]])
    assert len(ours) == len(ref) == len(set(ref_to_ours)), (len(ours), len(ref))
    return ours, ref, ref_to_ours


def check_identical(ours, ref, ref_to_ours: np.ndarray, n: int = 8, seed: int = 0) -> int:
    """Assert that ``n`` random rows give bit-identical float32 images and equal texts; returns n."""
    rng = np.random.default_rng(seed)
    for j in rng.choice(len(ref), size=min(n, len(ref)), replace=False):
        mine, theirs = ours[int(ref_to_ours[j])], ref[int(j)]
        image = theirs["image_input"].numpy()
        assert mine["image"].dtype == image.dtype == np.float32, (mine["image"].dtype, image.dtype)
        assert mine["image"].shape == image.shape, (mine["image"].shape, image.shape)
        assert np.array_equal(mine["image"], image), f"image of ID {mine['ID']} differs from the reference"
        assert str(mine["input"]) == theirs["text_input"], (mine["input"], theirs["text_input"])
        assert str(mine["output"]) == theirs["reference_output"], (mine["output"], theirs["reference_output"])
    return int(min(n, len(ref)))


def _timed(fn, items) -> float:
    t = time.perf_counter()
    for i in items:
        fn(i)
    return time.perf_counter() - t


def random_access(data_dir: str, cache_dir: str, lmdb_dir: str, seed: int = 0, repeat: int = 2) -> dict:
    """examples/s of ``ds[i]`` vs ``reference[j]`` over all rows in one shuffled order (best of ``repeat``)."""
    ours, ref, ref_to_ours = open_both(data_dir, cache_dir, lmdb_dir)
    checked = check_identical(ours, ref, ref_to_ours)
    order = np.random.default_rng(seed).permutation(len(ref))
    ours_order = [int(k) for k in ref_to_ours[order]]
    ref_order = [int(j) for j in order]
    narrow = ours.select_columns(["image", "input", "output"])
    # warm-up (page cache, lazy LMDB open, first-call costs), then timed passes
    for fn, items in ((ours.__getitem__, ours_order), (ref.__getitem__, ref_order), (narrow.__getitem__, ours_order)):
        _timed(fn, items[: max(1, len(items) // 10)])
    t_ours = min(_timed(ours.__getitem__, ours_order) for _ in range(repeat))
    t_ref = min(_timed(ref.__getitem__, ref_order) for _ in range(repeat))
    t_narrow = min(_timed(narrow.__getitem__, ours_order) for _ in range(repeat))
    n = len(order)
    return {"rows": n, "checked": checked, "ours": n / t_ours, "reference": n / t_ref, "ours_3_columns": n / t_narrow}


def batched(data_dir: str, cache_dir: str, lmdb_dir: str, batch_size: int = 64, repeat: int = 2) -> dict:
    """examples/s of batched passes: ours ``.iter(batch_size)`` (numpy, torch) vs the reference DataLoader.

    Ours reads the columns the reference returns (``image``, ``input``,
    ``output``): in datasets 5.2 numpy/torch *batch* formatting of the nullable
    ``bbox`` / ``point`` columns fails when a batch's first row is null
    (``AttributeError: 'NoneType' object has no attribute 'shape'``;
    huggingface/datasets PR #8432), so the full row cannot be batched there.
    """
    from benchmarks.publisher_reference import data_loader

    ours, ref, _ = open_both(data_dir, cache_dir, lmdb_dir)
    ours = ours.select_columns(["image", "input", "output"])
    as_torch = ours.with_format("torch")

    def ours_numpy():
        for batch in ours.iter(batch_size=batch_size):
            assert batch["image"].shape[1:] == (12, 120, 120) and batch["image"].dtype == np.float32

    def ours_torch():
        import torch

        for batch in as_torch.iter(batch_size=batch_size):
            assert batch["image"].dtype == torch.float32 and tuple(batch["image"].shape[1:]) == (12, 120, 120)

    def ours_numpy_to_torch():  # numpy batches handed to torch without a copy
        import torch

        for batch in ours.iter(batch_size=batch_size):
            image = torch.from_numpy(batch["image"])
            assert image.dtype == torch.float32 and tuple(image.shape[1:]) == (12, 120, 120)

    def reference():
        for batch in data_loader(ref, batch_size=batch_size):
            assert tuple(batch["image_input"].shape[1:]) == (12, 120, 120)

    n = len(ref)
    times: Dict[str, float] = {}
    for name, fn in (("ours_numpy", ours_numpy), ("ours_torch", ours_torch), ("ours_numpy_to_torch", ours_numpy_to_torch),
                     ("reference", reference)):
        fn()  # warm-up
        times[name] = min(_once(fn) for _ in range(repeat))
    return {"rows": n, "batch_size": batch_size, **{k: n / v for k, v in times.items()}}


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
