"""Shared pytest fixtures.

``fixture_data`` (session scope) is the one synthetic data set every test reads:
``make_fixtures.make_fixture(tmp, seed=0)`` with the default 8 patches, built once
per test session. Its API is stable; see the ``tests/make_fixtures.py`` docstring.

- ``fixture_data.s2_archive`` / ``.s1_archive`` / ``.maps_archive`` / ``.parquet``: paths of
  ``BigEarthNet-S2.tar.zst``, ``BigEarthNet-S1.tar.zst``, ``Reference_Maps.tar.zst`` and
  ``BigEarthNet.txt.parquet`` in one folder (``fixture_data.root``, usable as ``data_dir``).
- ``fixture_data.patches``: ``FixturePatch`` records (``patch_id``, ``s1_name``, ``split``, ``tile``,
  ``rows``, ``country``, ``season``, ``climate_zone``, ``latitude``, ``longitude``, ``epsg``, ``ul``,
  ``in_archives``, ``has_caption``; ``.bands`` {band: native array}, ``.reference_map``,
  ``.transform(resolution_m)``, ``.member_paths()``); ``fixture_data.patch(patch_id)`` looks one up.
- ``fixture_data.table``: the pyarrow Table written to the parquet (rows shuffled).

Splits: train 2 patches, validation 2, test 2 (including the real patch
``make_fixtures.REAL_PATCH_ID`` with its 18 real rows), bench 2 (one without a caption).

``fixture_lmdb`` (session scope): a rico-hdl style LMDB directory of ``fixture_data``
(S1, S2 and reference-map records).

Tests must treat both as read-only: copy files before modifying them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Everything a test run writes stays in the checkout (.pytest-tmp/): the datasets cache too, set before datasets is
# imported (it reads HF_DATASETS_CACHE once).
# BENTXT_TEST_DIR names another folder, so that two runs in one checkout never remove each other's files.
_RUN_DIR = Path(os.environ.get("BENTXT_TEST_DIR") or Path(__file__).resolve().parents[1] / ".pytest-tmp").resolve()
os.environ["HF_DATASETS_CACHE"] = str(_RUN_DIR / "hf-datasets-cache")
# nor the home folder: matplotlib's font cache and huggingface_hub's files go there too
os.environ["MPLCONFIGDIR"] = str(_RUN_DIR / "matplotlib")
os.environ["HF_HOME"] = str(_RUN_DIR / "hf-home")

TESTS_DIR = Path(__file__).resolve().parent
for path in (TESTS_DIR.parent, TESTS_DIR):  # repo root (bentxt) and tests/ (make_fixtures), whatever the import mode
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from make_fixtures import Fixture, make_fixture, write_lmdb  # noqa: E402

# Everything a test run writes stays in the checkout: tempfile users (ours, datasets', subprocesses) get
# .pytest-tmp/tmp instead of /tmp, removed at the end of the session.
_TMP = _RUN_DIR / "tmp"
_DEFAULT_BASETEMP = (Path(__file__).resolve().parents[1] / ".pytest-tmp" / "base").resolve()


def pytest_configure(config) -> None:
    import os
    import tempfile

    _TMP.mkdir(parents=True, exist_ok=True)
    # setup.cfg's --basetemp=.pytest-tmp/base is the default run's: another run folder gets its own (pytest empties
    # the basetemp when it starts, so two runs sharing one would remove each other's files)
    if os.environ.get("BENTXT_TEST_DIR") and Path(config.option.basetemp or "").resolve() == _DEFAULT_BASETEMP:
        config.option.basetemp = str(_RUN_DIR / "base")
    os.environ["TMPDIR"] = str(_TMP)
    tempfile.tempdir = str(_TMP)


def pytest_unconfigure(config) -> None:
    import shutil

    shutil.rmtree(_TMP, ignore_errors=True)
    for name in ("hf-datasets-cache", "matplotlib", "hf-home"):
        shutil.rmtree(_RUN_DIR / name, ignore_errors=True)


@pytest.fixture
def row_group_reads(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every row group decoded in the test, as (row group, columns read): whole, or in batches (one entry per row group)."""
    import pyarrow.parquet as pq

    calls: list = []
    original, batches = pq.ParquetFile.read_row_group, pq.ParquetFile.iter_batches

    def spy(self, i, columns=None, **kwargs):
        calls.append((i, tuple(columns or ())))
        return original(self, i, columns=columns, **kwargs)

    def batch_spy(self, *args, row_groups=None, columns=None, **kwargs):
        calls.extend((i, tuple(columns or ())) for i in row_groups or ())
        return batches(self, *args, row_groups=row_groups, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", batch_spy)
    return calls


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return make_fixture(tmp_path_factory.mktemp("bentxt_fixture"), seed=0)


@pytest.fixture(scope="session")
def fixture_lmdb(fixture_data: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lmdb(fixture_data, tmp_path_factory.mktemp("bentxt_lmdb") / "Encoded-BigEarthNet")


@pytest.fixture(scope="session")
def extracted(fixture_data: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture as users keep it after `tar -xf`: BigEarthNet-S1/ and BigEarthNet-S2/ trees beside the parquet."""
    import os

    from bentxt.imagery.archives import iter_tar_zst

    root = tmp_path_factory.mktemp("extracted")
    for archive in (fixture_data.s1_archive, fixture_data.s2_archive):
        for name, data in iter_tar_zst(str(archive)):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    os.symlink(fixture_data.parquet, root / "BigEarthNet.txt.parquet")
    return root
