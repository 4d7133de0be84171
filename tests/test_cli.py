"""The ``bigearthnet-txt`` command line (info, show, demo, prepare, export, flags, errors) and examples/train_one_step.py.

Every test runs with the ``datasets`` cache in a temporary folder (``isolated_cache``):
nothing is written to ~/.cache, and commands without ``--cache-dir`` are checked to use it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import bigearthnet_txt as bt
from bentxt.tools import cli
from bentxt.config import CONFIG_OPTIONS, config_name_error

ROOT = Path(__file__).resolve().parent.parent
BUILDING = ("demo", "show", "prepare", "export", "chat-export")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """One datasets cache for this module's tests, so the sample's configs are prepared once."""
    return tmp_path_factory.mktemp("hf_datasets_cache")


@pytest.fixture(autouse=True)
def isolated_cache(module_cache, monkeypatch):
    """The datasets cache (HF_DATASETS_CACHE) in a temporary folder, here and in subprocesses."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", module_cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(module_cache))
    return module_cache


@pytest.fixture(autouse=True)
def restore_global_state():
    """--quiet switches datasets' bars off and the logger to WARNING: put both back after each test."""
    level = logging.getLogger("bigearthnet_txt").level
    yield
    datasets.enable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(level)


def table(out: str) -> dict:
    """The size table printed by ``info``: {split: [cells]} (cells split on 2+ spaces)."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in (*bt.SPLITS, "total"):
            rows[cells[0]] = cells[1:]
    return rows


def error_line(err: str) -> str:
    """The one line an error prints (and nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bigearthnet-txt: error: "), err
    return lines[0][len("bigearthnet-txt: error: "):]


# ----------------------------------------------------------------------------- flags


def subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_config_option_has_a_flag_on_every_subcommand_that_reads_data():
    commands = subparsers(cli.build_parser())
    assert set(commands) == {"demo", "info", "show", "prepare", "export", "chat-export", "score"}
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        missing = [o for o in CONFIG_OPTIONS if "--" + o.replace("_", "-") not in flags]
        assert not missing, f"{name}: no flag for {missing}"
        assert {"--data-dir", "--data-files", "--quiet", "--debug"} <= flags, name
        if name in BUILDING:
            assert {"--cache-dir", "--num-proc"} <= flags, name
    # the CLI's own tables only describe options, they do not list them: nothing in them may be stale
    assert set(cli.HELP) | set(cli.CHOICES) | set(cli.VALUE_PARSERS) | set(cli.NAME_PARTS) <= set(CONFIG_OPTIONS)


def test_flags_parse_to_the_config_values():
    parser = cli.build_parser()
    args = parser.parse_args([
        "prepare", "s2-vqa", "--countries", "Portugal", "Austria", "--countries", "Serbia",
        "--climate-zones", "Temperate, no dry season, warm summer", "--point-token", "", "", "--ref-token", "[", "]",
        "--bands", "B04,B03,B02", "--img-size", "60", "--resample", "bilinear", "--layout", "patch",
        "--skip-missing", "--no-skip-invalid", "--image-source", "s1=/a/s1.tar.zst,s2=/b/x.tar.gzaa,s2=/b/x.tar.gzab",
        "--data-files", "annotations=/p/BigEarthNet.txt.parquet", "--data-files", "s1=/a/s1.tar.zst,s2=/b/x.tar.gzaa",
        "--data-files", "s2=/b/x.tar.gzab",
    ])
    assert cli.config_options(args) == {
        "countries": ["Portugal", "Austria", "Serbia"], "climate_zones": ["Temperate, no dry season, warm summer"],
        "point_token": ["", ""], "ref_token": ["[", "]"], "bands": ["B04", "B03", "B02"], "img_size": 60,
        "resample": "bilinear", "layout": "patch", "skip_missing": True, "skip_invalid": False,
        "image_source": {"s1": "/a/s1.tar.zst", "s2": ["/b/x.tar.gzaa", "/b/x.tar.gzab"]},
    }
    assert cli._data_files(args) == {"annotations": "/p/BigEarthNet.txt.parquet", "s1": "/a/s1.tar.zst",
                                     "s2": ["/b/x.tar.gzaa", "/b/x.tar.gzab"]}
    name, options = cli.config_request(args, args.config)
    config = cli._resolve(name, **options)  # every parsed value is a valid config value
    assert (config.countries, config.point_token, config.image_bands) == (
        ("Portugal", "Austria", "Serbia"), ("", ""), ("B04", "B03", "B02")
    )

    args = parser.parse_args(["show", "s1s2-vqa", "--bands", "RGB", "--image-source", "/data/lmdb", "-o", "x.png"])
    assert cli.config_options(args) == {"bands": "RGB", "image_source": "/data/lmdb"}
    args = parser.parse_args(["info", "s2-vqa"])
    assert cli.config_options(args) == {}  # only what is given reaches the config


def test_sensor_task_split_flags_pick_the_named_config():
    parser = cli.build_parser()
    for argv, expected in [
        (["prepare", "s2-vqa", "--split", "bench"], "s2-vqa-bench"),
        (["prepare", "s2-vqa", "--sensor", "s1", "--task", "captioning"], "s1-captioning"),
        (["prepare", "s2-vqa-bench", "--split", "bench", "--countries", "Portugal"], "s2-vqa-bench"),
    ]:
        args = parser.parse_args(argv)
        assert cli.config_request(args, args.config)[0] == expected


def test_global_flags_work_before_and_after_the_subcommand():
    parser = cli.build_parser()
    for argv, quiet, debug in [
        (["--quiet", "info", "s2-vqa"], True, False),
        (["info", "s2-vqa", "--quiet"], True, False),
        (["--debug", "prepare", "s2-vqa", "--quiet"], True, True),
        (["prepare", "--debug", "s2-vqa"], False, True),
        (["prepare", "s2-vqa"], False, False),
    ]:
        args = parser.parse_args(argv)
        assert (args.quiet, args.debug) == (quiet, debug), argv


def test_quiet_after_the_subcommand_silences_bars_and_info_logs(fixture_data, tmp_path, capfd):
    assert cli.main(["prepare", "s2-binary-bench", "--data-dir", str(fixture_data.root), "--cache-dir", str(tmp_path / "a"),
                     "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "Generating" not in err and "bigearthnet_txt:" not in err and "examples/s" not in err
    assert logging.getLogger("bigearthnet_txt").level == logging.WARNING


# ----------------------------------------------------------------------------- errors


def test_a_bad_config_name_prints_one_line_and_exits_2(capsys):
    assert cli.main(["info", "s2-grounding-tset"]) == 2
    captured = capsys.readouterr()
    assert error_line(captured.err) == config_name_error("s2-grounding-tset") and captured.out == ""
    assert cli.main(["prepare", "s2-grounding-tset", "--quiet"]) == 2
    assert error_line(capsys.readouterr().err) == config_name_error("s2-grounding-tset")


@pytest.mark.parametrize("argv, status, message", [
    (["prepare"], 2, "the following arguments are required: config"),
    (["prepare", "s2-vqa", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
    (["prepare", "s2-vqa", "--layout", "rows"], 2, "invalid choice: 'rows'"),
    (["prepare", "s2-vqa", "--bands", "B99"], 2, "Unknown band combination 'B99'"),
    (["prepare", "s1-vqa", "--bands", "RGB"], 2, "are not read by config sensor 's1'"),
    (["prepare", "s2-vqa", "--image-source", "s3=/x"], 2, "--image-source 's3=/x': expected s1=PATH,s2=PATH"),
    (["prepare", "s2-vqa", "--data-files", "parquet=/x"], 2, "--data-files 'parquet=/x': expected annotations=PATH"),
    (["prepare", "s2-vqa", "--point-token", "a"], 2, "point_token"),
    (["show", "s1s2-grounding-test", "--split", "train", "-o", "x.png"], 2, "config s1s2-grounding-test has the splits ['test']"),
    (["info", "--countries", "Portugal"], 2, "--countries need a CONFIG"),
])
def test_usage_errors_print_one_line_and_exit_2(argv, status, message, capsys):
    assert cli.main(argv) == status
    assert message in error_line(capsys.readouterr().err)


def test_data_errors_print_one_line_exit_1_and_debug_shows_the_traceback(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["prepare", "s2-vqa", "--data-dir", str(empty), "--cache-dir", str(tmp_path / "c")]
    assert cli.main(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert f"data_dir {empty} has no BigEarthNet.txt.parquet" in line and "Traceback" not in line
    assert cli.main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "bentxt/sources.py" in err
    assert err.splitlines()[-1] == "bigearthnet-txt: error: " + line


# ----------------------------------------------------------------------------- prepare and the shared cache


def arrow_mtimes(folder: str) -> dict:
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(folder, "**", "*.arrow"), recursive=True)}


def test_prepare_prints_the_cache_and_load_dataset_reuses_it(fixture_data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    country = fixture_data.patches[0].country
    argv = ["prepare", "s2-captioning", "--data-dir", str(fixture_data.root), "--cache-dir", str(cache_dir),
            "--layout", "patch", "--countries", country, "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    m = re.search(r"^cache: (.+) \(([\d.,]+) MB on disk\)$", out, re.M)
    assert m, out
    folder = m[1]
    assert os.path.isdir(folder) and folder.startswith(str(cache_dir / "bigearthnet_txt"))
    assert float(m[2]) == round(cli.disk_usage(folder) / 1e6, 2) > 0
    before = arrow_mtimes(folder)
    assert before and not any("/imagery/" in p for p in before)  # the texts; the pixels are in the source's store
    stores = re.findall(r"^imagery store: (.+) \(([\d.,]+) MB on disk, shared by every config of its source\)$", out, re.M)
    assert len(stores) == 1 and stores[0][0].startswith(str(cache_dir / "bigearthnet_txt" / "imagery" / "s2-"))
    store_files = arrow_mtimes(stores[0][0])
    assert store_files

    ds = datasets.load_dataset("bigearthnet_txt", "s2-captioning", data_dir=str(fixture_data.root), cache_dir=str(cache_dir),
                               layout="patch", countries=[country])
    assert {os.path.dirname(f["filename"]) for part in ds.values() for f in part.cache_files} == {folder}
    assert arrow_mtimes(folder) == before and arrow_mtimes(stores[0][0]) == store_files  # read, not prepared again
    assert sorted(os.listdir(cache_dir / "bigearthnet_txt")) == sorted(
        [os.path.basename(os.path.dirname(os.path.dirname(folder))), "imagery"])
    printed = {split: int(n) for split, n in re.findall(r"^(\w+): (\d+) examples$", out, re.M)}
    assert printed == {split: part.num_rows for split, part in ds.items()}

    # the load_dataset call prepare prints is the one that reads this cache
    call = re.search(r"^load it with: import bigearthnet_txt, datasets; (datasets\.load_dataset\(.*\))$", out, re.M)[1]
    assert "layout='patch'" in call and f"countries=[{country!r}]" in call
    again = eval(call, {"datasets": datasets})
    assert {os.path.dirname(f["filename"]) for part in again.values() for f in part.cache_files} == {folder}
    assert arrow_mtimes(folder) == before


def test_prepare_without_cache_dir_uses_the_datasets_cache(fixture_data, isolated_cache, capsys):
    assert cli.main(["--quiet", "prepare", "s1-mcq-bench", "--data-dir", str(fixture_data.root)]) == 0
    folder = re.search(r"^cache: (.+) \(", capsys.readouterr().out, re.M)[1]
    assert folder.startswith(str(isolated_cache / "bigearthnet_txt" / "s1-mcq-bench-"))
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s1-mcq-bench", data_dir=str(fixture_data.root))
    assert builder.cache_dir == folder


def test_image_source_and_data_files_from_the_command_line(fixture_data, fixture_lmdb, tmp_path, capsys):
    """An LMDB is usable without the parquet beside it (--data-files + --image-source)."""
    argv = ["--quiet", "prepare", "s1s2-grounding-test", "--data-files", f"annotations={fixture_data.parquet}",
            "--image-source", str(fixture_lmdb), "--cache-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    t = fixture_data.table.filter(pc.and_(pc.equal(fixture_data.table["split"], "test"),
                                          pc.equal(fixture_data.table["type"], "bounding box")))
    assert f"test: {len(t)} examples" in out
    folder = re.search(r"^cache: (.+) \(", out, re.M)[1]
    ds = datasets.load_dataset("bigearthnet_txt", "s1s2-grounding-test", data_files={"annotations": str(fixture_data.parquet)},
                               image_source=str(fixture_lmdb), cache_dir=str(tmp_path), split="test")
    assert {os.path.dirname(f["filename"]) for f in ds.cache_files} == {folder}


def test_show_and_demo_leave_nothing_in_tmp(tmp_path, isolated_cache, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    assert cli.main(["--quiet", "show", "s2-captioning-bench", "-o", str(tmp_path / "x.png")]) == 0
    assert cli.main(["--quiet", "show", "s2-captioning-bench", "--streaming", "-o", str(tmp_path / "y.png")]) == 0
    assert cli.main(["--quiet", "demo", "--config", "s1-mcq", "--split", "bench", "--examples", "1"]) == 0
    assert os.listdir(tmp) == []
    prepared = {name.rsplit("-", 2)[0] for name in os.listdir(isolated_cache / "bigearthnet_txt") if not name.startswith(".")}
    assert {"s2-captioning-bench", "s1-mcq-bench"} <= prepared


# ----------------------------------------------------------------------------- info


def test_info_lists_configs(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "90 configs" in out and "task grounding: type bounding box" in out


def test_info_release_sizes_and_cache_estimates(capsys):
    assert cli.main(["info", "s1s2-all"]) == 0
    out = capsys.readouterr().out
    assert "s2_20m: PairBands(shape=(6, 60, 60), dtype='uint16'" in out
    rows = table(out)
    # rows and image pairs of the release (docs/release.md#counts); the cache keeps pixels once per pair whatever the
    # layout: 4*120*120*2 + 6*60*60*2 + 2*20*20*2 + 2*120*120*4 = 275,200 B per pair, +2%, + (150 + 170) B per row
    assert rows["train"] == ["4,674,281", "229,114", "65.81 GB"]
    assert rows["bench"] == ["15,029", "1,082", "0.31 GB"]
    assert rows["total"] == ["9,553,962", "464,044", "133.32 GB"]
    assert round((229_114 * 275_200 * 1.02 + 4_674_281 * 320) / 1e9, 2) == 65.81


def test_info_gives_the_known_bench_counts(capsys):
    # docs/release.md#counts: bench rows binary 6,927, mcq 5,550, captions 970, referring 1,582 (15,029 in all)
    expected = {"s2-vqa-bench": "12,477", "s2-binary-bench": "6,927", "s1-mcq-bench": "5,550",
                "s1s2-captioning-bench": "970", "s1-grounding-bench": "1,582", "s2-all-bench": "15,029"}
    for name, rows in expected.items():
        assert cli.main(["info", name]) == 0
        assert table(capsys.readouterr().out)["bench"][0] == rows, name
    assert 6_927 + 5_550 == 12_477 and 6_927 + 5_550 + 970 + 1_582 == 15_029


def test_info_marks_what_is_unknown(capsys):
    assert cli.main(["info", "s1-grounding-bench", "--layout", "patch"]) == 0
    out = capsys.readouterr().out
    assert "annotations: List(" in out and "s2_10m" not in out
    # rows known; pairs with a referring text not published; s1: 2*120*120*4 = 115,200 B per pair
    assert table(out)["bench"] == ["1,582", "unknown (<= 1,082)", "<= 0.13 GB"]

    assert cli.main(["info", "s2-vqa"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["train"][:2] == ["unknown (<= 4,674,281)", "unknown (<= 229,114)"]
    assert rows["bench"][:2] == ["12,477", "unknown (<= 1,082)"]
    assert rows["total"][:2] == ["6,884,344", "unknown (<= 464,044)"]  # type totals: binary 3,625,160 + mcq 3,259,184

    assert cli.main(["info", "s2-captioning"]) == 0  # one caption per pair (112 bench pairs have none)
    rows = table(capsys.readouterr().out)
    assert rows["train"][:2] == ["229,114", "229,114"] and rows["bench"][:2] == ["970", "970"]
    assert rows["total"][:2] == ["463,932", "463,932"]

    assert cli.main(["info", "s2-binary-bench", "--countries", "Portugal"]) == 0  # filters: bounds only
    assert table(capsys.readouterr().out)["bench"][:2] == ["unknown (<= 6,927)", "unknown (<= 1,082)"]


def test_info_counts_a_data_dir_or_data_files(fixture_data, capsys):
    t = fixture_data.table.filter(pc.is_in(fixture_data.table["type"], pa.array(["binary", "mcq"])))
    for argv in (["--data-dir", str(fixture_data.root)], ["--data-files", f"annotations={fixture_data.parquet}"]):
        assert cli.main(["info", "s2-vqa", *argv]) == 0
        out = capsys.readouterr().out
        assert "not the release parquet" in out
        rows = table(out)
        for split in bt.SPLITS:
            part = t.filter(pc.equal(t["split"], split))
            assert rows[split][:2] == [str(len(part)), str(len(pc.unique(part["patch_id"])))]
        assert rows["total"][0] == str(len(t))


# ----------------------------------------------------------------------------- show, demo


def read_png(path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_show_writes_the_grounding_example(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "pictures" / "grounding.png"
    assert cli.main(["--quiet", "show", "s1s2-grounding", "--split", "test", "--id", "27527", "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ID 27527, bounding box, patch S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_61_39" in out
    image = read_png(png)
    assert image.shape[1] == 800 and image.shape[2] == 4 and image[..., :3].std() > 0.1
    yellow = (image[..., 0] > 0.8) & (image[..., 1] > 0.8) & (image[..., 2] < 0.35)
    assert yellow.sum() > 500  # the box outline, in both panels


def test_show_streaming_draws_the_same_picture_as_prepared(tmp_path):
    pytest.importorskip("matplotlib")
    a, b = tmp_path / "prepared.png", tmp_path / "streamed.png"
    assert cli.main(["--quiet", "show", "s2-grounding-test", "--id", "27529", "-o", str(a)]) == 0
    assert cli.main(["--quiet", "show", "s2-grounding-test", "--id", "27529", "--streaming", "-o", str(b)]) == 0
    np.testing.assert_array_equal(read_png(a), read_png(b))


def test_show_patch_layout_options_and_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "patch.png"
    assert cli.main(["--quiet", "show", "s1s2-all", "--layout", "patch", "--id", "27530", "-o", str(png)]) == 0
    assert "ID 27530, bounding box" in capsys.readouterr().out and png.is_file()
    assert cli.main(["show", "s1s2-grounding-test", "--bands", "RGB", "--img-size", "60", "--point-token", "", "",
                     "--id", "27527", "-o", str(tmp_path / "rgb.png"), "--quiet"]) == 0
    assert "ID 27527" in capsys.readouterr().out
    assert cli.main(["--quiet", "show", "s1s2-grounding-test", "--id", "99999999", "-o", str(png)]) == 1
    assert error_line(capsys.readouterr().err) == "--id 99999999: no such annotation in split(s) test"


def test_show_logs_and_bars_unless_quiet(tmp_path, capfd):
    pytest.importorskip("matplotlib")
    args = ["--quiet", "show", "s1-binary-bench", "-o", str(tmp_path / "q.png"), "--cache-dir", str(tmp_path / "a")]
    assert cli.main(args) == 0
    err = capfd.readouterr().err
    assert "Generating" not in err and "bigearthnet_txt:" not in err and "examples/s" not in err
    datasets.enable_progress_bars()
    logging.getLogger("bigearthnet_txt").setLevel(logging.INFO)
    assert cli.main(["show", "s1-binary-bench", "-o", str(tmp_path / "loud.png"), "--cache-dir", str(tmp_path / "b")]) == 0
    err = capfd.readouterr().err
    assert "Generating bench split" in err and "examples/s" in err  # datasets' bar with its rate


def test_demo_still_works(capsys):
    assert cli.main(["--quiet", "demo", "--config", "s1-captioning", "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "streaming test: 2 examples read from archive BigEarthNet-S1.tar.zst" in out and "(prepared: 2)" in out


def test_python_dash_m_entry_point(isolated_cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_DATASETS_CACHE=str(isolated_cache))
    run = subprocess.run([sys.executable, "-m", "bigearthnet_txt", "info", "s2-captioning-bench", "--quiet"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert table(run.stdout)["bench"][:2] == ["970", "970"]
    run = subprocess.run([sys.executable, "-m", "bigearthnet_txt", "info", "s2-grounding-tset"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert error_line(run.stderr) == config_name_error("s2-grounding-tset")


# ----------------------------------------------------------------------------- example


def test_train_one_step_example(tmp_path):
    pytest.importorskip("torch", reason="examples/train_one_step.py needs PyTorch (pip install 'bigearthnet-txt[torch]')")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_DATASETS_CACHE=str(tmp_path / "hf"), TMPDIR=str(tmp))
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "train_one_step.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("batch: s2_10m (8, 4, 120, 120) torch.float32")
    assert "image_input groups: ['s2_10m', 's2_20m', 's2_60m']" in lines[1]
    before, after = (float(v) for v in lines[-1].split()[2::2])
    assert np.isfinite(before) and np.isfinite(after) and after < before
    # prepared in the datasets cache, nothing left in the temporary folder
    assert glob.glob(str(tmp_path / "hf" / "bigearthnet_txt" / "s2-binary-*")) and os.listdir(tmp) == []


def test_export_takes_the_config_options_and_shares_the_cache(fixture_data, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    common = ["s2-captioning", "--data-dir", str(fixture_data.root), "--cache-dir", str(cache), "--split", "test", "--quiet"]
    assert cli.main(["prepare", *common]) == 0
    folder = re.search(r"^cache: (.+) \(", capsys.readouterr().out, re.M)[1]
    before = arrow_mtimes(folder)
    assert cli.main(["export", *common, "--output", str(out), "--name", "captions", "--min-shards", "1"]) == 0
    assert "wrote captions to" in capsys.readouterr().out
    assert arrow_mtimes(folder) == before  # the export read the prepared cache
    ds = datasets.load_dataset(str(out), "captions", split="test")
    t = fixture_data.table.filter(pc.and_(pc.equal(fixture_data.table["split"], "test"),
                                          pc.equal(fixture_data.table["type"], "captioning")))
    assert ds.num_rows == len(t) and set(ds["type"]) == {"captioning"}


def test_export_engine_flags_are_export_only_and_checked_before_any_work(tmp_path, capsys):
    """--engine/--ray-address (the Ray run itself, on a two-node cluster by address, is in test_ray.py)."""
    commands = subparsers(cli.build_parser())
    export_flags = {s for a in commands["export"]._actions for s in a.option_strings}
    assert {"--engine", "--ray-address"} <= export_flags
    for name in ("demo", "show", "prepare", "info"):
        assert not {"--engine", "--ray-address"} & {s for a in commands[name]._actions for s in a.option_strings}
    args = cli.build_parser().parse_args(["export", "s2-vqa", "-o", str(tmp_path)])
    assert args.engine == "local" and args.ray_address is None
    base = ["export", "s2-vqa-bench", "-o", str(tmp_path / "out"), "--data-dir", str(tmp_path / "nowhere")]
    for argv, message in (
        ([*base, "--engine", "spark"], "argument --engine: invalid choice: 'spark'"),
        ([*base, "--ray-address", "10.0.0.1:6379"], "--ray-address needs --engine ray"),
        ([*base, "--inline-pixels"], "unrecognized arguments: --inline-pixels"),  # gone: the 'browse' config shows it
    ):
        assert cli.main(argv) == 2
        assert error_line(capsys.readouterr().err).startswith(message)
    assert not (tmp_path / "out").exists()
    # the flags reach the Ray engine: an address nobody answers at fails in seconds, before any preparation
    argv = ["export", "s2-vqa-bench", "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
            "--data-dir", cli.sample_dir(), "--engine", "ray", "--ray-address", "127.0.0.1:1"]
    assert cli.main(argv) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("ConnectionError: no Ray cluster answers at 127.0.0.1:1") and "--ray-address" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- issue 20
# exit codes, plain help, --id in any split


def test_a_filter_value_the_data_lacks_is_a_usage_error(tmp_path, capsys):
    """A wrong option value exited 1 ("the data failed"); 2 is the documented "wrong command line"."""
    argv = ["show", "s2-vqa", "--countries", "Atlantis", "-o", str(tmp_path / "x.png"), "--cache-dir", str(tmp_path / "c")]
    assert cli.main(["--quiet", *argv]) == 2
    assert error_line(capsys.readouterr().err).startswith("countries=['Atlantis']: ['Atlantis'] not found in column 'country'")
    assert not (tmp_path / "x.png").exists()


def test_help_is_plain_text_without_module_names(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--help"])
    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and "bentxt." not in text and "registration" not in text
    assert "Exit status: 0 done; 1 the data or the run failed; 2 the command line is wrong" in text


def test_show_id_finds_the_annotation_in_any_split(tmp_path, capsys):
    """``show --id`` looked only in test unless --split was given; 1037 is a train row of the sample."""
    png = tmp_path / "train.png"
    assert cli.main(["--quiet", "show", "s2-vqa", "--id", "1037", "-o", str(png)]) == 0
    assert "split train" in capsys.readouterr().out and png.stat().st_size > 0
    assert cli.main(["--quiet", "show", "s2-vqa", "--id", "1037", "--streaming", "-o", str(tmp_path / "s.png")]) == 0
    assert "split train" in capsys.readouterr().out
    assert cli.main(["--quiet", "show", "s2-vqa", "--id", "99999999", "-o", str(png)]) == 1
    assert error_line(capsys.readouterr().err) == "--id 99999999: no such annotation in split(s) test, train, validation, bench"


def test_demo_and_score_keep_a_stated_default_while_the_library_has_none():
    parser = cli.build_parser()
    assert parser.parse_args(["demo"]).config == cli.DEMO_CONFIG == "s1s2-all"
