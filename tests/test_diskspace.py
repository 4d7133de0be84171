"""A full disk is an error naming the folder, the space needed and the space left (issue 20, item 3)."""

from __future__ import annotations

import errno
import os
import re
import shutil

import pytest

from bentxt.cache.diskspace import DiskFullError, check_free_space, describe_enospc, existing_parent


def test_not_enough_space_names_folder_needed_and_free(tmp_path):
    folder = tmp_path / "not" / "made" / "yet"
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(DiskFullError) as excinfo:
        check_free_space(str(folder), free + 10**12, "preparing config s1s2-all")
    err = excinfo.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    message = str(err)
    assert str(folder) in message and "preparing config s1s2-all" in message
    needed, left = (float(x) for x in re.findall(r"([\d.]+) GB", message)[:2])
    assert needed == pytest.approx((free + 10**12) / 1e9, abs=0.01)
    assert left == pytest.approx(free / 1e9, abs=1.0)  # others write to this disk meanwhile
    assert not folder.exists()  # measured on the nearest existing parent, nothing created


def test_enough_space_passes(tmp_path):
    check_free_space(str(tmp_path / "cache"), 1, "preparing")
    assert existing_parent(str(tmp_path / "a" / "b")) == str(tmp_path)


def test_a_raw_enospc_becomes_the_same_message(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as excinfo:
        with open("/dev/full", "wb", buffering=0) as f:
            f.write(b"x")
    raw = excinfo.value
    assert raw.errno == errno.ENOSPC and str(tmp_path) not in str(raw)
    described = describe_enospc(raw, str(tmp_path), needed=5 * 10**9)
    assert isinstance(described, DiskFullError) and described.errno == errno.ENOSPC
    assert str(tmp_path) in str(described) and "needs about 5.00 GB" in str(described) and "free there" in str(described)
    without_size = describe_enospc(OSError(errno.ENOSPC, "No space left on device", "/x/y.arrow"), str(tmp_path))
    assert "is full" in str(without_size) and "/x/y.arrow" in str(without_size)


def test_other_errors_pass_through_unchanged(tmp_path):
    other = OSError(errno.EACCES, "Permission denied")
    assert describe_enospc(other, str(tmp_path), 1) is other
    value = ValueError("x")
    assert describe_enospc(value, str(tmp_path), 1) is value
