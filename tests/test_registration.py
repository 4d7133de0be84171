"""bentxt/registration.py and the package's import structure: the name resolves, the cache key covers the code."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import bigearthnet_txt as bt
from bentxt import registration

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bentxt"


def module_imports(path: Path, module: str):
    """``(imported bentxt module or the builder, ast node)`` for every import statement of a file, anywhere in it."""
    tree = ast.parse(path.read_text())
    package = "bentxt" if module.startswith("bentxt") else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}" if base else package
            if base == "bentxt" or base.startswith("bentxt."):
                for alias in node.names:  # a module of a package, or a name in a module: kept where it is a module
                    yield f"{base}.{alias.name}", node
            yield base, node


def package_modules():
    """Every module of the package by its dotted name; a subpackage by its own name (its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        out[".".join(("bentxt",) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return out


# ----------------------------------------------------------------------------- the cache key


def test_cache_modules_are_what_the_builder_imports():
    """Computed independently: a fresh interpreter imports the builder and we read sys.modules."""
    script = (
        f"import sys, json; sys.path.insert(0, {str(REPO)!r}); import bigearthnet_txt; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'bigearthnet_txt' or m.startswith('bentxt.'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert registration.cache_modules() == imported
    # the data-defining core is in it; tools that only read a prepared dataset are not
    core = {"bentxt.join", "bentxt.config", "bentxt.cache.imagery_table", "bentxt.sources", "bentxt.imagery.readers",
            "bentxt.cache.folders"}
    assert core <= set(imported)
    extras = {"bentxt.tools.cli", "bentxt.tools.plot", "bentxt.tools.collate", "bentxt.tools.transforms", "bentxt.export.writer"}
    assert not extras & set(imported)


def test_our_line_hash_is_datasets_own():
    """compat.hash_python_lines replaces datasets' private _hash_python_lines with the same value (caches stay
    valid)."""
    from datasets.packaged_modules import _hash_python_lines

    from bentxt import compat

    lines = ["import os  # a comment", "", "x = 1", "# only a comment", "y = '#not a comment in datasets either'"]
    assert compat.hash_python_lines(lines) == _hash_python_lines(lines)
    assert compat.hash_python_lines(["x = 1  # one"]) == compat.hash_python_lines(["x = 1  # two"])
    assert compat.hash_python_lines(["x = 1"]) != compat.hash_python_lines(["x = 2"])


def test_code_hash_covers_exactly_the_cache_modules(fixture_data):
    from datasets.packaged_modules import _hash_python_lines

    lines = []
    for name in registration.cache_modules():
        lines += inspect.getsource(importlib.import_module(name)).splitlines()
    assert registration.code_hash() == _hash_python_lines(lines)
    without_join = [n for n in registration.cache_modules() if n != "bentxt.join"]
    lines = [line for n in without_join for line in inspect.getsource(importlib.import_module(n)).splitlines()]
    assert registration.code_hash() != _hash_python_lines(lines)
    # the class, load_dataset and the CLI share it: it is the builder's hash and the registered one
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    assert _PACKAGED_DATASETS_MODULES["bigearthnet_txt"] == ("bigearthnet_txt", registration.code_hash())
    assert bt.BigEarthNetTxt(config_name="s2-vqa", data_dir=str(fixture_data.root)).hash == registration.code_hash()


# ----------------------------------------------------------------------------- the import graph


def test_no_bentxt_module_imports_the_builder():
    offenders = [
        f"{path.name}:{node.lineno}"
        for name, path in package_modules().items()
        for imported, node in module_imports(path, name)
        if imported == "bigearthnet_txt" or imported.startswith("bigearthnet_txt.")
    ]
    assert offenders == [], f"bentxt modules import the builder file (a cycle through it): {offenders}"


def test_the_import_graph_has_no_cycle():
    modules = package_modules()
    graph = {
        name: {imported for imported, _ in module_imports(path, name) if imported in modules and imported != name}
        for name, path in modules.items()
    }
    # formatting recognises PairBands by what it does, so it needs no import of the feature's module
    assert "bentxt.cache.pair_bands" not in graph["bentxt.cache.formatting"]
    edges = {(a, b) for a, targets in graph.items() for b in targets}
    cycles = []
    state = {}  # 1: on the stack, 2: done

    def visit(node, stack):
        state[node] = 1
        for target in sorted(b for a, b in edges if a == node):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


# ----------------------------------------------------------------------------- the name


def test_register_is_idempotent_and_resolves_the_name(fixture_data, tmp_path, monkeypatch):
    import datasets.load as load

    patched = load.PackagedDatasetModuleFactory.get_module
    registration.register()
    registration.register()
    assert load.PackagedDatasetModuleFactory.get_module is patched and patched._bigearthnet_txt
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.csv").write_text("a,b\n1,2\n")  # never globbed: the builder gets no data files
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s2-vqa", cache_dir=str(tmp_path / "c"))
    assert type(builder).__name__ == "BigEarthNetTxt" and not builder.config.data_files
    # named files reach the builder as given: a pattern is not expanded (datasets would glob it)
    files = {"annotations": str(tmp_path / "*.parquet"), "s2": str(fixture_data.s2_archive)}
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s2-vqa", data_files=files,
                                            cache_dir=str(tmp_path / "c"))
    assert {k: list(v) for k, v in builder.config.data_files.items()} == {k: [v] for k, v in files.items()}
    # other packaged builders are untouched
    csv = datasets.load_dataset("csv", data_files=str(tmp_path / "stray.csv"), cache_dir=str(tmp_path / "c"))
    assert csv["train"][0] == {"a": 1, "b": 2}


def test_an_unsupported_datasets_version_keeps_the_class_usable(fixture_data, monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "__version__", "6.0.0")
    expected = r"found datasets 6\.0\.0.*'datasets>=5,<6'.*bigearthnet_txt\.BigEarthNetTxt\(config_name=\.\.\.\)"
    with pytest.raises(ImportError, match=expected):
        registration.register()
    builder = registration.builder_for("s2-vqa-bench", data_dir=str(fixture_data.root), cache_dir=str(tmp_path / "c"))
    assert type(builder) is bt.BigEarthNetTxt and builder.config.name == "s2-vqa-bench"
    monkeypatch.undo()
    # the same cache folder as load_dataset's
    registered = registration.builder_for("s2-vqa-bench", data_dir=str(fixture_data.root),
                                          cache_dir=str(tmp_path / "c"))
    assert registered.cache_dir == builder.cache_dir
