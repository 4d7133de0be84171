"""bentxt/join.py: the one join of texts and imagery, for preparing (plan_cache) and streaming (streamed_examples)."""

from __future__ import annotations

import logging
import math
import os
import re

import numpy as np
import pyarrow as pa
import pytest

from bentxt import join
from bentxt import sources
from bentxt.imagery.archives import iter_archive_patches
from bentxt.config import resolve_config
from bentxt.cache.imagery_table import ImageryTables
from bentxt.cache.store import ImageryStore
from bentxt.join import EmptySelectionError, JoinReport, MissingPatchError
from bentxt.text import annotations as ann


def files_for(config):
    return sources.resolve(config, config.sensors)


def fixture_rows(fixture, types=None, split=None):
    return [r for r in fixture.table.to_pylist()
            if (types is None or r["type"] in types) and (split is None or r["split"] == split)]


# ----------------------------------------------------------------------------- texts


def test_select_annotations_groups_texts_by_pair(fixture_data):
    config = resolve_config("s1s2-vqa", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    rows = fixture_rows(fixture_data, ("binary", "mcq"))
    assert index.keys == sorted({r["patch_id"] for r in rows})  # grouped by the S2 name, sorted
    assert index.table.num_rows == len(rows) and int(index.starts[-1]) == len(rows)
    for i, key in enumerate(index.keys):
        ids = index.rows(i)["ID"].to_pylist()
        assert ids == sorted(r["ID"] for r in rows if r["patch_id"] == key)  # a pair's texts by ID
    s1 = join.select_annotations(resolve_config("s1-vqa", data_dir=str(fixture_data.root)), str(fixture_data.parquet), "train",
                                 None)
    assert s1.keys == sorted({r["s1_name"] for r in rows if r["split"] == "train"})  # s1-* configs key on s1_name


def test_select_annotations_checks_filters_and_says_what_emptied_it(fixture_data):
    config = resolve_config("s2-mcq", data_dir=str(fixture_data.root), seasons=["Monsoon"])
    with pytest.raises(ValueError, match=r"seasons=\['Monsoon'\]: \['Monsoon'\] not found in column 'season'.*Valid values"):
        join.select_annotations(config, str(fixture_data.parquet), None, None)
    config = resolve_config("s2-all-bench", data_dir=str(fixture_data.root), countries=["Austria"])
    with pytest.raises(EmptySelectionError, match=r"BigEarthNet.txt.parquet: config 's2-all-bench' selects no text: no row has "
                                                  r"task 'all' \(types .*\) and splits \['bench'\] and countries=\['Austria'\]"):
        join.select_annotations(config, str(fixture_data.parquet), None, None)


def test_examples_are_one_per_text_with_fixed_size_fields(fixture_data):
    config = resolve_config("s2-all-test", data_dir=str(fixture_data.root), point_token=["", ""], ref_token=["[", "]"])
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    from make_fixtures import REAL_PATCH_ID

    i = index.keys.index(REAL_PATCH_ID)
    images = {"s2_10m": "shared"}
    out = list(join.examples(config, index.rows(i), images))
    assert [k for k, _ in out] == index.rows(i)["ID"].to_pylist()
    by_id = {ex["ID"]: ex for _, ex in out}
    assert all(ex["s2_10m"] == "shared" and ex["patch_id"] == REAL_PATCH_ID for ex in by_id.values())
    assert by_id[27527]["bbox"] == [0.0, 0.0, 0.93, 0.45] and by_id[27527]["point"] == [0.35, 0.16]
    assert "found at (0.35, 0.16) in the satellite" in by_id[27527]["input"]  # point tags stripped
    assert by_id[27530]["input"] == "Identify a continuous patch of [broad-leaved forest]."
    assert all(math.isnan(x) for x in by_id[27530]["point"])
    assert by_id[27533]["type"] == "captioning" and by_id[27533]["category"] == "None"  # the parquet's literal
    assert all(math.isnan(x) for x in by_id[27533]["bbox"]) and by_id[27533]["options"] == ["", "", "", ""]
    assert by_id[27536]["options"][2] == "Temperate, no dry season, warm summer"
    for ex in by_id.values():
        assert len(ex["bbox"]) == 4 and len(ex["point"]) == 2 and len(ex["options"]) == 4
        assert not any(v is None for v in ex.values())


def test_patch_layout_gives_one_example_per_pair(fixture_data):
    config = resolve_config("s1-grounding", data_dir=str(fixture_data.root), layout="patch")
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    ((key, example),) = list(join.examples(config, index.rows(0), {"s1": "pixels"}))
    assert key == index.keys[0] == example["s1_name"] and example["s1"] == "pixels"
    assert [a["ID"] for a in example["annotations"]] == index.rows(0)["ID"].to_pylist()
    assert "ID" not in example
    assert set(example["annotations"][0]) == {"ID", "input", "output", "type", "category", "bbox", "point", "options"}


def test_malformed_text_names_the_row(fixture_data):
    config = resolve_config("s2-grounding-test", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    rows = index.rows(0)
    column = rows.schema.get_field_index("output")
    broken = rows.set_column(column, "output", pa.array(["[0.0, 0.0, 0.93, 0.45]"] * rows.num_rows))
    with pytest.raises(ValueError, match=rf"ID {rows['ID'][0].as_py()}: output"):
        list(join.examples(config, broken, {}))


# ----------------------------------------------------------------------------- reports


def test_join_report_raises_for_missing_pairs_unless_skipped(caplog):
    config = resolve_config("s2-all")
    report = JoinReport("split train", archive_only=3)
    report.missing["S2A_x_1"] = "archive BigEarthNet-S2.tar.zst"
    with pytest.raises(MissingPatchError,
                       match=r"split train: 1 image pair\(s\) with texts are missing from the imagery, "
                             r"e\.g\. S2A_x_1 \(not in archive BigEarthNet-S2.tar.zst\)\. Pass skip_missing=True"):
        report.finish(config, pairs=4)
    skipping = resolve_config("s2-all", skip_missing=True)
    with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
        report.finish(skipping, pairs=4)
    assert "split train: 3 image pair(s) joined; 1 missing from the imagery (skipped); 3 imagery patch(es) outside" in caplog.text
    report.add_invalid("S2A_x_2", "band B03 is not a TIFF")
    assert "skipped an image pair: band B03 is not a TIFF" in caplog.text
    with pytest.raises(EmptySelectionError,
                       match=r"every one of the 2 selected image pair\(s\) was skipped \(1 missing .*, 1 with invalid"):
        report.finish(resolve_config("s2-all", skip_missing=True, skip_invalid=True), pairs=2)
    assert issubclass(MissingPatchError, ValueError) and issubclass(EmptySelectionError, ValueError)


# ----------------------------------------------------------------------------- preparing


@pytest.fixture(scope="module")
def planned(fixture_data, tmp_path_factory):
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    root = tmp_path_factory.mktemp("plan")
    patch = pytest.MonkeyPatch()
    patch.setattr(join, "TEXTS_PER_PROCESS", 1)  # the fixture's splits are tiny: cut them anyway
    try:
        yield config, join.plan_cache(config, files_for(config), str(root / "stores"), str(root / "texts.arrow"), 2, None), root
    finally:
        patch.undo()


def test_plan_cache_writes_each_pair_once_and_points_texts_at_it(planned, fixture_data):
    config, plan, root = planned
    s2_store, s1_store = ImageryStore(plan.store_paths["s2"]), ImageryStore(plan.store_paths["s1"])
    assert plan.stores == {"s2": s2_store.reference, "s1": s1_store.reference}
    tables = ImageryTables({"s2": s2_store.tables.files("s2"), "s1": s1_store.tables.files("s1")})
    index_keys = sorted(p.patch_id for p in fixture_data.patches if p.in_archives)
    s2_names, s1_names = tables.names("s2"), tables.names("s1")
    assert sorted(s2_names) == index_keys and len(s1_names) == len(index_keys)
    assert len(tables.files("s2")) == len(tables.files("s1")) == 1  # one pass per archive
    # pair i of the plan (sorted by patch_id) -> its row in each sensor's table
    for i, key in enumerate(index_keys):
        assert s2_names[plan.rows["s2"][i]] == key
        assert s1_names[plan.rows["s1"][i]] == fixture_data.patch(key).s1_name
    assert int(plan.starts[-1]) == fixture_data.table.num_rows
    assert plan.examples == {s: len(fixture_rows(fixture_data, split=s)) for s in ("train", "validation", "test", "bench")}
    # each split's pairs in S2 archive order (what streaming yields), cut into num_proc shards
    archive = [n for n, _ in iter_archive_patches([str(fixture_data.s2_archive)], "s2", progress=False)]
    for split, shards in plan.shards.items():
        assert len(shards) == 2
        ordered = [index_keys[i] for shard in shards for i in shard]
        assert ordered == [n for n in archive if fixture_data.patch(n).split == split]
    assert os.path.exists(plan.texts)


@pytest.mark.parametrize("name,split", [("s1s2-all", None), ("s2-vqa", "train"), ("s1-grounding", None),
                                        ("s2-captioning", "bench")])
@pytest.mark.parametrize("slice_rows,threads", [(1, 1), (7, 2), (1 << 20, 2), (None, 2)])
def test_texts_left_in_the_parquet_are_written_like_the_texts_read_whole(fixture_data, tmp_path, name, split, slice_rows,
                                                                          threads):
    """Preparing keeps only the light columns in memory: the texts file must be byte for byte the in-memory path's."""
    config = resolve_config(name, data_dir=str(fixture_data.root))
    whole = join.select_annotations(config, str(fixture_data.parquet), split, None)
    light = join.select_annotations(config, str(fixture_data.parquet), split, None, texts_later=True)
    assert light.texts is not None and whole.texts is None
    assert "input" not in light.table.column_names and "output" not in light.table.column_names
    assert light.keys == whole.keys and light.starts.tolist() == whole.starts.tolist()
    assert light.table.to_pylist() == whole.table.drop_columns(["input", "output"]).to_pylist()
    expected, got = str(tmp_path / "whole.arrow"), str(tmp_path / "light.arrow")
    join.write_texts(config, whole, expected, rows_per_chunk=5)
    light.texts.write(got, lambda rows: join.text_columns(config, rows), light.table.select(list(join.ann.PATCH_COLUMNS)),
                      slice_rows=slice_rows, batch_rows=5, threads=threads)
    assert not os.path.exists(got + ".slices")
    with pa.memory_map(expected) as a, pa.memory_map(got) as b:
        want, have = pa.ipc.open_file(a), pa.ipc.open_file(b)
        assert all(have.get_batch(i).num_rows <= 5 for i in range(have.num_record_batches))
        have, want = have.read_all(), want.read_all()
    assert have.schema == want.schema and have.num_rows == want.num_rows
    for column in want.column_names:
        if column in ("bbox", "point"):  # NaN where a row has none: NaN equal to NaN
            np.testing.assert_array_equal(np.array(have[column].to_pylist(), float), np.array(want[column].to_pylist(), float))
        else:
            assert have[column].equals(want[column]), column
    if name == "s1s2-all":  # the size estimate is the footer's average per row: near for a selection of every kind
        text_bytes = sum(len(r["input"].encode()) + len(r["output"].encode())
                         for r in whole.table.select(["input", "output"]).to_pylist())
        assert 0.5 * text_bytes < light.texts.text_bytes() < 2 * text_bytes  # page headers weigh on 139 rows


def test_texts_left_in_the_parquet_stop_when_asked_and_leave_no_slices(fixture_data, tmp_path):
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None, texts_later=True)
    path = str(tmp_path / "texts.arrow")
    join.write_texts(config, index, path, stopped=lambda: True)
    assert not os.path.exists(path) and not os.path.exists(path + ".slices")


def test_a_null_text_left_in_the_parquet_is_an_error_naming_the_row(fixture_data, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(fixture_data.parquet)
    bad_id = table["ID"][3].as_py()
    output = table["output"].to_pylist()
    output[3] = None
    path = str(tmp_path / "nulls.parquet")
    pq.write_table(table.set_column(table.schema.get_field_index("output"), "output", pa.array(output, pa.string())),
                   path, write_statistics=False)
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, path, None, None, texts_later=True)
    with pytest.raises(join.ann.AnnotationFileError, match=f"row ID {bad_id} has a null 'output'"):
        join.write_texts(config, index, str(tmp_path / "texts.arrow"))
    assert not os.path.exists(str(tmp_path / "texts.arrow.slices"))


def test_texts_file_holds_the_parsed_texts_in_selection_order_in_any_chunking(fixture_data, tmp_path):
    """The texts are parsed while the imagery is written: the file must equal one parse of the whole selection."""
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    whole = join.text_columns(config, index.table)
    for rows_per_chunk in (7, index.table.num_rows, 10 * index.table.num_rows):
        path = str(tmp_path / f"texts-{rows_per_chunk}.arrow")
        join.write_texts(config, index.table, path, rows_per_chunk=rows_per_chunk)
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_file(source)
            assert reader.num_record_batches == -(-index.table.num_rows // rows_per_chunk)
            table = reader.read_all()
        assert table.num_rows == index.table.num_rows
        for column, values in whole.items():
            ours, expected = table[column].to_pylist(), values.to_pylist()
            if column in ("bbox", "point"):  # NaN-filled where a row has none: compared as arrays, NaN equal to NaN
                np.testing.assert_array_equal(np.array(ours, float), np.array(expected, float), err_msg=column)
            else:
                assert ours == expected, column
        for column in ("patch_id", "s1_name", "split", "country"):
            assert table[column].to_pylist() == index.table[column].to_pylist(), column


def test_a_bad_text_row_stops_the_imagery_workers_at_once(fixture_data, tmp_path, monkeypatch):
    """Texts are checked while the workers write the imagery; a bad row must not wait for the whole pass."""
    import time

    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    started = time.monotonic()
    monkeypatch.setattr(join, "run_imagery_job", _slow_job)

    def bad_texts(stopped):
        raise ValueError("ID 7: output is not a box")

    files = files_for(config)
    jobs = [job for s in ("s2", "s1") for job in join.imagery_jobs(s, files[s], [], str(tmp_path), 2, None)]
    with pytest.raises(ValueError, match="ID 7: output is not a box"):
        join.run_jobs(jobs, 2, meanwhile=bad_texts)
    assert time.monotonic() - started < 20  # the workers (each sleeping 60 s) were stopped, not awaited


def _slow_job(job):
    import time

    time.sleep(60)


def _first_job_fails(job):
    import time

    if job.sensor == "s2":
        raise RuntimeError(f"archive {job.prefix} is damaged")
    time.sleep(60)


def _first_job_dies(job):
    import signal
    import time

    if job.sensor == "s2":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


@pytest.mark.parametrize("job, error", [(_first_job_fails, "is damaged"), (_first_job_dies, "an imagery worker died")])
def test_a_failed_or_killed_worker_stops_the_texts_and_the_other_worker(fixture_data, tmp_path, monkeypatch, job, error):
    """An imagery failure is raised at once: the text side stops between chunks, the other worker is stopped."""
    import time

    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    monkeypatch.setattr(join, "run_imagery_job", job)
    chunks = []

    def texts(stopped):
        for _ in range(600):  # 60 s of "parsing", in chunks
            if stopped():
                return
            chunks.append(1)
            time.sleep(0.1)

    files = files_for(config)
    jobs = [job for s in ("s2", "s1") for job in join.imagery_jobs(s, files[s], [], str(tmp_path), 2, None)]
    started = time.monotonic()
    with pytest.raises(Exception, match=error):
        join.run_jobs(jobs, 2, meanwhile=texts)
    assert time.monotonic() - started < 20 and len(chunks) < 150


def test_texts_are_taken_from_the_file_batch_by_batch_in_any_order():
    """Taking from a several-batch file must not join whole columns (the release's texts file has ~96 batches)."""
    rng = np.random.default_rng(0)
    n = 200_000
    table = pa.table({"ID": np.arange(n), "input": pa.array([f"text {i}" for i in range(n)])})
    batches = table.to_batches(max_chunksize=30_000)
    first_rows = np.cumsum([0] + [b.num_rows for b in batches])
    for rows in (np.arange(5, 900), rng.integers(0, n, 5_000), np.array([n - 1, 0, 30_000, 29_999])):
        before = pa.total_allocated_bytes()
        taken = join._take_rows(batches, first_rows, rows)
        assert taken["ID"].to_pylist() == rows.tolist()
        assert taken["input"].to_pylist() == [f"text {i}" for i in rows]
        assert pa.total_allocated_bytes() - before < 2_000_000  # the rows taken, not the 200,000-row columns


@pytest.mark.parametrize("name, options", [("s1s2-all", {}), ("s1s2-vqa-test", {}), ("s2-grounding", {}),
                                           ("s1s2-captioning", {"seasons": ("Summer",)})])
def test_the_quick_name_pass_finds_exactly_the_selected_pairs(fixture_data, name, options):
    """The imagery workers start on a names-only pass; it must name every pair the full selection keeps."""
    from bentxt.text import annotations as ann
    from bentxt.imagery.layout import NAME_COLUMN

    config = resolve_config(name, data_dir=str(fixture_data.root), **options)
    index = join.select_annotations(config, str(fixture_data.parquet), None, None)
    columns = [NAME_COLUMN[s] for s in config.sensors]
    quick = ann.selected_names(str(fixture_data.parquet), config.selection(None), columns)
    for column in columns:
        assert quick[column] == sorted(set(index.first(column)))


def test_small_splits_are_written_by_one_process(fixture_data, tmp_path, monkeypatch):
    """A writer process pays off only past TEXTS_PER_PROCESS texts: datasets starts a pool per split."""
    monkeypatch.setattr(join, "TEXTS_PER_PROCESS", 100_000)
    config = resolve_config("s2-all", data_dir=str(fixture_data.root))
    plan = join.plan_cache(config, files_for(config), str(tmp_path), str(tmp_path / "texts.arrow"), 2, None)
    assert all(len(shards) == 1 for shards in plan.shards.values())


def test_plan_cache_reports_missing_pairs(tmp_path):
    from make_fixtures import make_fixture

    fx = make_fixture(tmp_path / "fx", seed=3, text_only=1)
    missing = next(p for p in fx.patches if not p.in_archives)
    config = resolve_config(f"s2-all-{missing.split}", data_dir=str(fx.root))
    with pytest.raises(MissingPatchError, match=rf"config s2-all-{missing.split}: 1 image pair\(s\).*{missing.patch_id} "
                                                r"\(not in archive BigEarthNet-S2.tar.zst\)"):
        join.plan_cache(config, files_for(config), str(tmp_path / "a"), str(tmp_path / "a.arrow"), 1, None)
    config = resolve_config(f"s2-all-{missing.split}", data_dir=str(fx.root), skip_missing=True)
    plan = join.plan_cache(config, files_for(config), str(tmp_path / "b"), str(tmp_path / "b.arrow"), 1, None)
    assert plan.examples[missing.split] == len(fixture_rows(fx, split=missing.split)) - missing.rows


# ----------------------------------------------------------------------------- streaming


def test_streamed_examples_follow_the_plan_order_and_clean_their_spill(planned, fixture_data, tmp_path):
    config, plan, _ = planned
    spill = tmp_path / "spill"
    spill.mkdir()
    streamed = list(join.streamed_examples(config, files_for(config), "validation", None, str(spill)))
    assert not spill.exists()  # the S1 side was spilled here, and removed at the end
    texts = pa.ipc.open_file(pa.memory_map(plan.texts)).read_all()
    expected = [texts["ID"][int(j)].as_py() for shard in plan.shards["validation"] for i in shard
                for j in range(plan.starts[i], plan.starts[i + 1])]
    assert [key for key, _ in streamed] == expected
    for _, example in streamed:
        patch = fixture_data.patch(example["patch_id"])
        assert example["s2_10m"].dtype == np.uint16
        assert np.array_equal(example["s2_10m"], np.stack([patch.bands[b] for b in ("B02", "B03", "B04", "B08")]))
        assert np.array_equal(example["s1"], np.stack([patch.bands["VV"], patch.bands["VH"]]))


def test_streaming_from_random_access_sources_needs_no_spill(fixture_data, fixture_lmdb, tmp_path):
    config = resolve_config("s1s2-binary-bench", data_dir=str(fixture_data.root), image_source=str(fixture_lmdb))
    files = files_for(config)
    assert not files["s1"].sequential and not files["s2"].sequential
    spill = tmp_path / "spill"
    spill.mkdir()
    streamed = list(join.streamed_examples(config, files, "bench", None, str(spill)))
    assert [ex["ID"] for _, ex in streamed] and sorted(ex["ID"] for _, ex in streamed) == sorted(
        r["ID"] for r in fixture_rows(fixture_data, ("binary",), "bench"))
    for _, ex in streamed:
        assert np.array_equal(ex["s1"][1], fixture_data.patch(ex["patch_id"]).bands["VH"])


def test_preparing_allocates_through_jemalloc_and_gives_pyarrows_default_back(monkeypatch):
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("pyarrow without jemalloc")
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.mimalloc_memory_pool())  # pyarrow's own default on Linux
    try:
        with join.preparing_memory_pool():
            assert pa.default_memory_pool().backend_name == "jemalloc"
            kept = pa.array(np.arange(1000))  # allocated by jemalloc, still valid afterwards
            with join.preparing_memory_pool():  # a second preparation meanwhile (another thread) shares the switch
                assert pa.default_memory_pool().backend_name == "jemalloc"
            assert pa.default_memory_pool().backend_name == "jemalloc"  # still preparing: not switched back
        assert pa.default_memory_pool().backend_name == "mimalloc"
        assert kept.sum().as_py() == 499500
        with pytest.raises(RuntimeError, match="boom"):
            with join.preparing_memory_pool():
                raise RuntimeError("boom")
        assert pa.default_memory_pool().backend_name == "mimalloc"
        pa.set_memory_pool(pa.system_memory_pool())  # a pool the user chose in code is kept
        with join.preparing_memory_pool():
            assert pa.default_memory_pool().backend_name == "system"
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")  # and so is one chosen in the environment
        with join.preparing_memory_pool():
            assert pa.default_memory_pool().backend_name == "mimalloc"
    finally:
        pa.set_memory_pool(before)


def test_a_stream_selects_its_texts_through_jemalloc_then_gives_the_default_back(fixture_data, tmp_path, monkeypatch):
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("pyarrow without jemalloc")
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    pools = []
    select = join.select_annotations
    monkeypatch.setattr(join, "select_annotations",
                        lambda *a, **k: pools.append(pa.default_memory_pool().backend_name) or select(*a, **k))
    config = resolve_config("s2-all-bench", data_dir=str(fixture_data.root))
    before = pa.default_memory_pool()
    pa.set_memory_pool(pa.mimalloc_memory_pool())  # pyarrow's own default on Linux
    try:
        stream = join.streamed_examples(config, files_for(config), "bench", None, str(tmp_path / "spill"))
        first = next(stream)
        assert pools == ["jemalloc"] and pa.default_memory_pool().backend_name == "mimalloc"  # back before any example
        assert len([first, *stream]) == len(fixture_rows(fixture_data, None, "bench"))
    finally:
        pa.set_memory_pool(before)


def test_texts_left_in_the_parquet_need_room_for_the_file_and_its_spill(fixture_data, tmp_path, monkeypatch):
    """Too little disk for the texts file and the raw texts spilled beside it: an error naming both, nothing written."""
    from bentxt.cache import diskspace

    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None, texts_later=True)
    needed = 2 * index.texts.text_bytes()
    path = str(tmp_path / "texts.arrow")
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: needed - 1)
    with pytest.raises(diskspace.DiskFullError, match=rf"config s1s2-all: writing {index.table.num_rows:,} parsed texts "
                                                      rf"\(the texts file and, while it is written, a spill .* in "
                                                      rf"{re.escape(str(tmp_path))}, but only"):
        join.write_texts(config, index, path)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: needed)
    join.write_texts(config, index, path)
    assert os.listdir(tmp_path) == ["texts.arrow"]
    # a disk that fills while writing (others write to it meanwhile): the same message
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index.texts, "write", full)
    with pytest.raises(diskspace.DiskFullError, match=rf"writing {index.table.num_rows:,} parsed texts"):
        join.write_texts(config, index, str(tmp_path / "again.arrow"))


def test_texts_of_large_row_groups_are_decoded_one_row_group_at_a_time_into_the_same_file(fixture_data, tmp_path,
                                                                                          monkeypatch):
    """Row groups holding more texts than _TWO_DECODES_BYTES (1 Mi-row groups) are decoded one at a time: memory."""
    config = resolve_config("s1s2-all", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None, texts_later=True)
    sizes = index.texts._group_text_bytes()
    assert len(sizes) > 1 and all(s > 0 for s in sizes)
    assert index.texts.text_bytes() == pytest.approx(sum(sizes), rel=1e-9)  # every row selected
    decoders = []
    original = join.ann._map_row_groups
    monkeypatch.setattr(join.ann, "_map_row_groups", lambda *a, **k: decoders.append(a[5]) or original(*a, **k))
    files = []
    for limit in (max(sizes), max(sizes) - 1):
        monkeypatch.setattr(join.ann, "_TWO_DECODES_BYTES", limit)
        files.append(str(tmp_path / f"texts-{limit}.arrow"))
        join.write_texts(config, index, files[-1])
    assert decoders == [2, 1]
    with open(files[0], "rb") as a, open(files[1], "rb") as b:
        assert a.read() == b.read()


def test_a_sparse_selection_of_large_row_groups_keeps_two_decoders(fixture_data, tmp_path, monkeypatch):
    """Decoded in batches, a sparse selection holds only its selected texts: one decoder would only cost time."""
    config = resolve_config("s2-captioning", data_dir=str(fixture_data.root))
    index = join.select_annotations(config, str(fixture_data.parquet), None, None, texts_later=True)
    sizes = index.texts._group_text_bytes()
    shares = [m.mean() for m in index.texts.masks]
    assert max(shares) < join.ann._BATCHED_DECODE_SHARE
    decoders = []
    original = join.ann._map_row_groups
    monkeypatch.setattr(join.ann, "_map_row_groups", lambda *a, **k: decoders.append(a[5]) or original(*a, **k))
    monkeypatch.setattr(join.ann, "_TWO_DECODES_BYTES", max(sizes) - 1)  # whole row groups: too large for two
    join.write_texts(config, index, str(tmp_path / "texts.arrow"))
    assert decoders == [2] and os.path.getsize(tmp_path / "texts.arrow") > 0


def test_a_stream_left_after_its_first_example_stops_decoding_its_texts(fixture_data, tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "SPARSE_SHARE", 1.0)  # the texts decoded in the background, as for a bench split
    made = []
    original = ann.StreamedTexts.__init__
    monkeypatch.setattr(ann.StreamedTexts, "__init__", lambda self, *a, **k: made.append(self) or original(self, *a, **k))
    config = resolve_config("s2-all", data_dir=str(fixture_data.root))
    stream = join.streamed_examples(config, files_for(config), "train", None, str(tmp_path / "spill"))
    _, first = next(stream)
    expected = fixture_rows(fixture_data, None, "train")
    assert first["input"] == next(r["input"] for r in expected if r["ID"] == first["ID"])
    [texts] = made
    stream.close()
    assert texts._stop and not any(t.is_alive() for t in texts._threads)
    with pytest.raises(RuntimeError, match="after close"):
        texts.rows(0, 1)
