"""The benchmarks' preconditions: same images as the publisher's reader, and a smoke run of benchmarks/run.py.

The text side (``read_selection`` / ``group_by_patch`` against a plain Arrow filter + sort)
is tested with the rest of ``bentxt/text/annotations.py`` in ``test_annotations.py``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import reading  # noqa: E402
from benchmarks.publisher_reference import BENTxTDataset, write_lmdb_from_archives  # noqa: E402


@pytest.mark.parametrize("bands", ["S1S2-10m20m", "all"])
def test_reference_reader_and_our_cache_give_identical_examples(fixture_data, fixture_lmdb, tmp_path, bands):
    reading.prepare(str(fixture_data.root), str(tmp_path / "cache"), bands)
    ours, ref, ref_to_ours = reading.open_both(str(fixture_data.root), str(tmp_path / "cache"), str(fixture_lmdb), bands)
    assert len(ref) == fixture_data.table.num_rows
    assert reading.check_identical(ours, ref, ref_to_ours, n=len(ref)) == len(ref)  # every row, bit for bit


def test_reference_reader_is_the_publisher_path(fixture_data, fixture_lmdb):
    """Spot checks of the re-implementation itself: band order, nearest upsampling, float32, tag stripping."""
    ref = BENTxTDataset(str(fixture_lmdb), str(fixture_data.parquet), bands="S1S2-10m20m")
    j = int(np.flatnonzero(ref.text_data["input"].str.contains("<point>").to_numpy())[0])
    item = ref[j]
    patch = fixture_data.patch(ref.text_data["patch_id"][j])
    image = item["image_input"].numpy()
    assert image.dtype == np.float32 and image.shape == (12, 120, 120)
    assert np.array_equal(image[0], patch.bands["VV"]) and np.array_equal(image[2], patch.bands["B02"].astype(np.float32))
    b05 = patch.bands["B05"].astype(np.float32)  # 60 px -> 120 px: legacy nearest is 2x2 pixel replication
    assert np.array_equal(image[5], np.repeat(np.repeat(b05, 2, axis=0), 2, axis=1))
    assert "<point>" not in item["text_input"] and "</point>" not in item["text_input"]
    assert item["reference_output"] == ref.text_data["output"][j]


def test_lmdb_from_archives_matches_the_fixture_lmdb(fixture_data, fixture_lmdb, tmp_path):
    import lmdb
    from safetensors.numpy import load

    pairs = {p.patch_id: p.s1_name for p in fixture_data.archived_patches[:3]}
    ours = write_lmdb_from_archives(str(fixture_data.s2_archive), str(fixture_data.s1_archive), str(tmp_path / "lmdb"),
                                    pairs, pairs.values())
    a, b = lmdb.open(str(ours), readonly=True, lock=False), lmdb.open(str(fixture_lmdb), readonly=True, lock=False)
    with a.begin() as ta, b.begin() as tb:
        for key in [*pairs, *pairs.values()]:
            mine, theirs = load(bytes(ta.get(key.encode()))), load(bytes(tb.get(key.encode())))
            assert mine.keys() == theirs.keys()
            for band in mine:
                assert mine[band].dtype == theirs[band].dtype and np.array_equal(mine[band], theirs[band])


def test_release_benchmark_smoke(tmp_path):
    """benchmarks/release.py end to end on a tiny fixture: the table, the projections, the disk check."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "release.py"), "--patches", "24", "--skip",
                          "reading,torchgeo", "--work", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.perf_counter() - t < 240
    assert "| measurement | ours | baseline | ratio | target | met? |" in out.stdout
    for line in ("prepare s1s2-all num_proc=2", "peak extra disk while preparing", "release projection, s1s2-vqa cache",
                 "cache s1s2-vqa / (patch layout + parquet)"):
        assert line in out.stdout, out.stdout


def test_a_child_runs_the_code_of_another_checkout_when_asked(tmp_path):
    """``--against``: the same measurement with an older checkout's code, in a fresh interpreter."""
    import shutil

    from benchmarks.common import run_child

    other = tmp_path / "older-checkout"
    (other / "benchmarks").mkdir(parents=True)
    (other / "benchmarks" / "__init__.py").write_text("")
    shutil.copy(ROOT / "benchmarks" / "common.py", other / "benchmarks" / "common.py")
    probe = "import benchmarks\n\n\ndef where():\n    return {'file': benchmarks.__file__}\n"
    (other / "benchmarks" / "probe.py").write_text(probe)
    got = run_child("benchmarks.probe:where", root=str(other))
    assert Path(got["file"]).resolve() == (other / "benchmarks" / "__init__.py").resolve() and got["peak_rss_mb"] > 0
    with pytest.raises(RuntimeError, match="benchmarks.probe:where failed"):  # our checkout has no probe
        run_child("benchmarks.probe:where")


def test_the_near_order_keeps_each_pairs_rows_within_its_block_of_pairs(fixture_data, tmp_path, monkeypatch):
    """The default text-scale layout: the same rows, a pair's rows within its block, the blocks' pairs not in ID order."""
    import pyarrow.parquet as pq

    from benchmarks import textscale

    monkeypatch.setattr(textscale, "NEAR_PAIRS_PER_BLOCK", 2)
    out = tmp_path / "near.parquet"
    info = textscale.near_layout(str(fixture_data.parquet), str(out))
    near, whole = pq.read_table(out), pq.read_table(fixture_data.parquet)
    assert info["rows"] == near.num_rows == whole.num_rows
    assert near.sort_by("ID").equals(whole.sort_by("ID"))
    pairs = near["patch_id"].to_pylist()
    by_id = sorted(set(pairs), key=lambda p: min(i for i, q in zip(near["ID"].to_pylist(), pairs) if q == p))
    block = {p: k // 2 for k, p in enumerate(by_id)}
    blocks = [block[p] for p in pairs]
    assert blocks == sorted(blocks, key=[b for i, b in enumerate(blocks) if b not in blocks[:i]].index)  # contiguous
    assert len(set(blocks)) == (len(by_id) + 1) // 2 > 2
    assert pairs != sorted(pairs, key=by_id.index)  # rows shuffled inside the blocks
    assert textscale.near_layout(str(fixture_data.parquet), str(out))["cached"] is True
