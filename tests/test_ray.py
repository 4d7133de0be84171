"""The Ray engine (bentxt/export/ray_engine.py) on a real Ray: a local ``ray.init(num_cpus=2)`` for the module, and a
two-node ``ray.cluster_utils.Cluster`` reached by address. No mocks.

- the Ray export equals the local export: every config's rows and arrays per split (files concatenated: texts, the
  shared imagery configs, browse), the card's configs, features and counts; its files follow the documented rules
  (whole pairs, one tile per file, min_shards);
- Ray reading gives the examples of ``load_dataset`` (the builder) and of ``iter_examples``, in order with
  ``preserve_order``, and feeds ``iter_torch_batches``;
- without an address, a new local Ray is started even when Ray's temporary folder records a dead cluster;
- ``bigearthnet-txt export --engine ray --ray-address`` on the two-node cluster, and examples/ray_train_one_step.py.

Robust on a busy machine (issue 20): Ray starts get generous waits and one retry after a start-up timeout, no test
asserts a duration, and the module removes what its Ray sessions leave behind: their processes (found by the
module's own session folder in their command line, ended by pid: a ``ray::RuntimeEnvAgent`` may ignore SIGTERM)
and the folder.
"""

from __future__ import annotations

import logging
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

from bentxt.tools import cli
from bentxt.export import ray_engine
from bentxt.export import writer as ex
from bentxt.config import resolve_config
from bentxt.cache.imagery_table import array3d_values
from bentxt.registration import builder_for
from test_builder import same_value

ROOT = Path(__file__).resolve().parent.parent
#: (config, export name, options): both sensors; boxes and points; S1 only in the patch layout; a bands= image
VARIANTS = (
    ("s1s2-vqa", "s1s2-vqa", {}),
    ("s2-grounding", "s2-grounding", {}),
    ("s1-captioning", "s1-captioning-patches", {"layout": "patch"}),
    ("s2-binary", "s2-binary-rgb", {"bands": "RGB", "img_size": 60}),
    ("s2-binary", "s2-binary", {}),  # what examples/ray_train_one_step.py reads
)
SPLITS = ("train", "validation", "test", "bench")
#: seconds a cluster's nodes may take to register (Ray's default 30 s failed once on a busy 2-core machine)
NODE_WAIT_S = 300


def retried(start, attempts: int = 2):
    """Run a Ray start-up, once more after Ray's own start-up timeout (its raylet wait is a fixed 30 s)."""
    for attempt in range(attempts):
        try:
            return start()
        except Exception as err:  # Ray raises a bare Exception for "timed out during startup"
            if attempt + 1 == attempts or "timed out" not in str(err):
                raise
            ray.shutdown()
            time.sleep(5)


def start_local_ray() -> None:
    retried(lambda: ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING))
    ray.data.DataContext.get_current().enable_progress_bars = False


def session_processes(folder: str) -> list:
    """Pids of live processes whose command line names ``folder`` (this module's own Ray session folder)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if folder.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def end_session_processes(folder: str, grace_s: float = 10.0) -> None:
    """SIGTERM the processes of this module's Ray sessions, then SIGKILL those still there after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        for pid in session_processes(folder):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while session_processes(folder) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """The datasets cache in a temporary folder, here and in Ray's processes (they inherit the environment).

    Ray's session folder holds Unix sockets, whose paths may not exceed 107 bytes: under the checkout's
    temporary folder (TMPDIR, tests/conftest.py) a deep checkout would make them too long, so Ray's
    processes get a short temporary folder of their own (RAY_TMPDIR and their TMPDIR; this process keeps
    tempfile's), removed at the end.
    """
    patch = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    patch.setenv("HF_DATASETS_CACHE", str(cache))
    patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Ray Train's controller polls every 2 s otherwise
    sessions = tempfile.mkdtemp(prefix="bentxt-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    patch.setenv("RAY_TMPDIR", sessions)
    patch.setenv("TMPDIR", sessions)
    patch.setenv("RAY_gcs_server_port_wait_time_s", "120")  # the GCS start-up wait, generous on a busy machine
    patch.delenv("RAY_ADDRESS", raising=False)
    # Ray writes the token of a new local cluster to ~/.ray/auth_token (Path.home(): HOME): a home of the run's own
    patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    try:
        yield cache
    finally:
        if ray.is_initialized():
            ray.shutdown()
        end_session_processes(sessions)
        patch.undo()
        shutil.rmtree(sessions, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(environment):
    """One local Ray for the module (start-up takes seconds): 2 CPUs, so 2 workers."""
    if ray.is_initialized():
        ray.shutdown()
    start_local_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def exported(local_ray, fixture_data, tmp_path_factory):
    """Every variant exported twice from one prepared cache: locally (bentxt.export.writer) and on Ray (2 workers)."""
    cache = tmp_path_factory.mktemp("cache")
    local, on_ray = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("ray")
    for config, name, options in VARIANTS:
        common = dict(data_dir=str(fixture_data.root), cache_dir=str(cache), name=name, progress=False, **options)
        ex.export(config, local, **common)
        assert ray_engine.export(config, on_ray, num_workers=2, **common) == on_ray
    return local, on_ray, cache


# ----------------------------------------------------------------------------- helpers


def card(root: Path) -> dict:
    return yaml.safe_load((root / "README.md").read_text().split("---\n")[1])


def configs_of(root: Path) -> list:
    return [c["config_name"] for c in card(root)["configs"]]


def files(root: Path, config: str, split: str):
    return sorted((root / "data" / config).glob(f"{split}-*.parquet"))


def split_table(root: Path, config: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in files(root, config, split)])


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    """Same schema (with the ``huggingface`` metadata), rows and values; arrays exactly, NaN equal to NaN."""
    assert got.schema.equals(want.schema, check_metadata=True)
    assert got.num_rows == want.num_rows
    features = datasets.Features.from_arrow_schema(want.schema)
    for name, feature in features.items():
        a, b = got[name].combine_chunks(), want[name].combine_chunks()
        if isinstance(feature, datasets.Array3D):
            x, y = array3d_values(a, feature.shape), array3d_values(b, feature.shape)
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
        else:
            assert same(a.to_pylist(), b.to_pylist()), name


def same(a, b) -> bool:
    """Deep equality of Python values (nested lists and dicts too), NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def pair_keys(table: pa.Table) -> list:
    return table["patch_id"].to_pylist()


def ray_rows(root, name: str, split: str) -> list:
    ds = ray_engine.read(root, name, split)
    ds.context.execution_options.preserve_order = True
    return ds.take_all()


# ----------------------------------------------------------------------------- the two-node cluster (first: no local Ray yet)


@pytest.fixture
def no_connection(environment):
    """The cluster test connects by address: this process must not be connected to the module's local Ray."""
    was = ray.is_initialized()
    if was:
        ray.shutdown()
    yield
    if was:
        start_local_ray()


def test_cli_export_on_a_two_node_cluster_by_address(no_connection, fixture_data, tmp_path, capsys, caplog):
    cluster = retried(lambda: Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}))
    try:
        retried(lambda: cluster.add_node(num_cpus=1))
        cluster.wait_for_nodes(timeout=NODE_WAIT_S)
        common = ["s1s2-vqa", "--data-dir", str(fixture_data.root), "--cache-dir", str(tmp_path / "cache")]
        with caplog.at_level(logging.INFO, logger="bigearthnet_txt"):
            assert cli.main(["export", *common, "-o", str(tmp_path / "ray"), "--engine", "ray",
                             "--ray-address", cluster.address]) == 0
        assert "wrote s1s2-vqa to" in capsys.readouterr().out
        # imagery 8 files / 7 tile runs, texts 8 / 7, browse 8 / 7 (browse rows sorted by pair keep tiles together)
        assert "24 files of 21 tile runs written by Ray tasks on 2 node(s)" in caplog.text  # 1 CPU per node
        assert not ray.is_initialized()  # the engine connected for the export only
    finally:
        cluster.shutdown()
    assert cli.main(["export", *common, "-o", str(tmp_path / "local"), "--quiet"]) == 0  # the same prepared cache
    assert configs_of(tmp_path / "ray") == ["browse", "s1s2-vqa", "imagery-s1s2"]
    for config in configs_of(tmp_path / "local"):
        for split in SPLITS:
            assert_same_table(split_table(tmp_path / "ray", config, split), split_table(tmp_path / "local", config, split))
    assert card(tmp_path / "ray")["configs"] == card(tmp_path / "local")["configs"]


def test_without_an_address_a_stale_recorded_cluster_is_not_used(no_connection, fixture_data, tmp_path):
    """`ray start` records its cluster in Ray's temporary folder; ray.init() would wait for it even after it died."""
    from ray._private.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("127.0.0.1:9")  # nobody listens there: a cluster that is gone
    try:
        assert "RAY_ADDRESS" not in os.environ
        out = ray_engine.export("s2-vqa-bench", tmp_path / "out", data_dir=str(fixture_data.root),
                                cache_dir=str(tmp_path / "cache"), progress=False)
        assert configs_of(out) == ["browse", "s2-vqa-bench", "imagery-s2"] and not ray.is_initialized()
        rows = ray_engine.read(out, "s2-vqa-bench", "bench").take_all()  # read too: a local Ray of its own, left running
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:9"
        assert len(rows) == sum(1 for _ in ex.iter_examples(out, "s2-vqa-bench", "bench", cache_dir=str(tmp_path / "hf")))
    finally:
        ray.shutdown()
        record.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- exporting


@pytest.mark.parametrize("name", [name for _, name, _ in VARIANTS])
def test_ray_export_equals_the_local_export(exported, name):
    local, on_ray, _ = exported
    config_name, _, options = next(v for v in VARIANTS if v[1] == name)
    for config in (name, ex.imagery_name(resolve_config(config_name, **options))):
        for split in SPLITS:
            assert_same_table(split_table(on_ray, config, split), split_table(local, config, split))


def test_the_browse_config_equals_the_local_one(exported):
    local, on_ray, _ = exported
    assert configs_of(on_ray) == configs_of(local) == [
        "browse", *(n for _, n, _ in VARIANTS), "imagery-s1s2", "imagery-s2", "imagery-s1", "imagery-s2-rgb-60px-nearest"]
    for split in SPLITS:
        assert_same_table(split_table(on_ray, "browse", split), split_table(local, "browse", split))


def test_the_card_is_the_local_export_card(exported):
    local, on_ray, _ = exported
    got, want = card(on_ray), card(local)
    assert got["configs"] == want["configs"]  # names, data_files globs, the one default, in the same order
    assert [i["config_name"] for i in got["dataset_info"]] == [i["config_name"] for i in want["dataset_info"]]
    for g, w in zip(got["dataset_info"], want["dataset_info"]):
        assert g["features"] == w["features"]
        assert [(s["name"], s["num_examples"]) for s in g["splits"]] == [(s["name"], s["num_examples"]) for s in w["splits"]]
    assert (on_ray / "README.md").read_text().split("---\n", 2)[2].split("| config |")[0] == \
        (local / "README.md").read_text().split("---\n", 2)[2].split("| config |")[0]


def test_files_keep_pairs_whole_one_tile_each_and_min_shards(exported, fixture_data):
    _, on_ray, _ = exported
    for config in configs_of(on_ray):  # texts, imagery and browse configs
        for split in SPLITS:
            parts = files(on_ray, config, split)
            if not parts:
                continue
            keys = [pair_keys(pq.read_table(f, columns=["patch_id"])) for f in parts]
            pairs = len({k for ks in keys for k in ks})
            assert len(parts) % 4 == 0 or len(parts) == pairs  # min_shards=4, or one per pair when fewer
            seen = set()
            for ks in keys:
                assert not seen & set(ks)  # a pair never spans two files
                seen |= set(ks)
                assert len({ray_engine.tile_of(k) for k in ks}) == 1  # a file holds one tile run


def test_one_worker_writes_the_same_bytes_as_two(exported, fixture_data, tmp_path):
    local, on_ray, cache = exported
    ray_engine.export("s1s2-vqa", tmp_path, num_workers=1, data_dir=str(fixture_data.root), cache_dir=str(cache),
                      progress=False)
    for config in ("s1s2-vqa", "imagery-s1s2"):
        mine = sorted(p.name for p in (tmp_path / "data" / config).iterdir())
        assert mine == sorted(p.name for p in (on_ray / "data" / config).iterdir())
        for name in mine:
            assert (tmp_path / "data" / config / name).read_bytes() == (on_ray / "data" / config / name).read_bytes()


def test_files_per_run_spreads_files_by_rows_and_rounds_to_min_shards():
    # three tile runs; the local export would write 4 files; one run is too big for one file
    assert ray_engine.files_per_run([100, 10, 30], [5, 1, 3], 1.0, 4, 4, 60) == [2, 1, 1]
    assert sum(ray_engine.files_per_run([100, 10, 30, 5, 5], [5, 1, 3, 1, 1], 1.0, 4, 4, 10**9)) == 8
    assert ray_engine.files_per_run([50, 50], [1, 1], 1.0, 4, 4, 10**9) == [1, 1]  # never more files than pairs
    assert ray_engine.files_per_run([90, 10], [9, 1], 1.0, 4, 4, 10**9) == [3, 1]  # the big run gets the extra files


def test_refusals_are_one_clear_error(local_ray, tmp_path):
    with pytest.raises(ValueError, match="inline_pixels=True is gone"):
        ray_engine.export("s2-vqa-bench", tmp_path, inline_pixels=True)
    with pytest.raises(ValueError, match="already connected to the Ray cluster at .*call ray.shutdown"):
        with ray_engine.connected("203.0.113.9:6379"):
            pass
    with pytest.raises(FileNotFoundError, match="neither an export folder nor a Hub dataset repo id"):
        ray_engine.read(str(tmp_path / "nowhere" / "x" / "y"), "s2-vqa", "test")
    with pytest.raises(ValueError, match=r"no files for config 's2-vqa' \(configs here: \[\]\)"):
        ray_engine.read(tmp_path, "s2-vqa", "test")
    # a Hub repo id is read through fsspec's hf:// (not reachable from the tests: no network)
    assert ray_engine._url("org/BigEarthNet.txt") == "hf://datasets/org/BigEarthNet.txt"


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["s1s2-vqa", "s2-grounding", "s1-captioning-patches", "s2-binary-rgb"])
def test_ray_read_gives_the_builders_examples_and_iter_examples(exported, fixture_data, name):
    local, on_ray, cache = exported
    config, _, options = next(v for v in VARIANTS if v[1] == name)
    prepared = builder_for(config, data_dir=str(fixture_data.root), cache_dir=str(cache), **options).as_dataset()
    for split in SPLITS:
        got = ray_rows(on_ray, name, split)
        built = prepared[split].with_format("numpy", dtype=None)  # load_dataset's examples, arrays in their dtype
        assert len(got) == built.num_rows
        for i, row in enumerate(got):
            assert row.keys() == built[i].keys() and all(same_value(row[k], built[i][k]) for k in row), i
        want = list(ex.iter_examples(local, name, split, cache_dir=str(cache / "hf")))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.keys() == w.keys() and all(same_value(g[k], w[k]) for k in w)
    # without preserve_order the same rows come back, in some order; the local export's files give them too
    key = "patch_id" if "annotations" in prepared["test"].features else "ID"
    assert sorted(r[key] for r in ray_engine.read(local, name, "test").take_all()) == sorted(prepared["test"][key])


def test_ray_read_feeds_torch_batches_with_band_dtypes(exported):
    torch = pytest.importorskip("torch")
    _, on_ray, _ = exported
    ds = ray_engine.read(on_ray, "s1s2-vqa", "train")
    batch = next(iter(ds.iter_torch_batches(batch_size=4, collate_fn=ray_engine.torch_collate)))
    assert batch["s2_10m"].dtype == torch.uint16 and tuple(batch["s2_10m"].shape) == (4, 4, 120, 120)
    assert batch["s1"].dtype == torch.float32 and tuple(batch["s1"].shape) == (4, 2, 120, 120)
    assert batch["bbox"].dtype == torch.float64 and tuple(batch["bbox"].shape) == (4, 4)
    assert isinstance(batch["input"], list) and isinstance(batch["input"][0], str) and len(batch["options"][0]) == 4
    plain = next(iter(ds.select_columns(["s2_20m", "ID"]).iter_torch_batches(batch_size=3)))  # Ray's own collate
    assert plain["s2_20m"].dtype == torch.uint16 and tuple(plain["s2_20m"].shape) == (3, 6, 60, 60)


def test_ray_train_one_step_example(exported, monkeypatch, capsys):
    """The script as ``python examples/ray_train_one_step.py --export DIR`` runs it, on this module's Ray."""
    pytest.importorskip("torch")
    _, on_ray, _ = exported
    script = ROOT / "examples" / "ray_train_one_step.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--export", str(on_ray)])
    with pytest.raises(SystemExit) as status:
        runpy.run_path(str(script), run_name="__main__")  # Ray ships __main__'s functions by value, as for a script
    assert status.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("batch: s2_10m (8, 4, 120, 120) torch.float32"), lines
    before, after = (float(v) for v in lines[-1].split()[2::2])
    assert np.isfinite(before) and np.isfinite(after) and after < before
    assert ray.is_initialized()  # the script used the Ray it found and left it running
