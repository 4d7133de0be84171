"""Every exception class of the package derives from one base, ``bentxt.errors.BigEarthNetTxtError``."""

import importlib
import inspect
import pkgutil

import pytest

import bentxt
from bentxt.errors import BigEarthNetTxtError


def _modules():
    names = ["bigearthnet_txt"]
    for info in pkgutil.walk_packages(bentxt.__path__, "bentxt."):
        names.append(info.name)
    return names


def _exception_classes():
    found = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found.append(obj)
    return found


def test_every_module_is_found():
    names = _modules()
    assert "bentxt.errors" in names and "bentxt.imagery.archives" in names and "bentxt.tools.cli" in names


def test_every_package_exception_derives_from_the_base():
    classes = _exception_classes()
    names = {c.__qualname__ for c in classes}
    # the ones the package had before the base existed, in eight modules
    assert {"SourceError", "ChecksumError", "ArchiveError", "ResumeError", "RasterError", "AnnotationError",
            "AnnotationFileError", "MissingPatchError", "EmptySelectionError", "OrientationTextError",
            "UsageError", "DataError"} <= names
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, BigEarthNetTxtError)]
    assert outside == []


@pytest.mark.parametrize("module, name, builtin", [
    ("bentxt.sources", "SourceError", ValueError),
    ("bentxt.sources", "ChecksumError", ValueError),
    ("bentxt.imagery.archives", "ResumeError", ValueError),
    ("bentxt.imagery.raster", "RasterError", ValueError),
    ("bentxt.join", "MissingPatchError", ValueError),
    ("bentxt.tools.transforms", "OrientationTextError", ValueError),
])
def test_the_builtin_bases_are_kept(module, name, builtin):
    """``except ValueError`` written before the base existed still catches these."""
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(builtin):
        raise cls("x")
    with pytest.raises(BigEarthNetTxtError, match="^x$"):
        raise cls("x")
