"""Make ``datasets.load_dataset("bigearthnet_txt", ...)`` resolve to our builder.

``datasets`` 5.x runs no loading scripts and has no plugin mechanism; the only
way a bare name reaches packaged code is its table of packaged modules, which
``load_dataset`` consults before looking at local folders or the Hub
(docs/datasets-notes.md#registration). That factory also resolves data files: with none given it globs
the working directory (a stray ``notes.csv`` would reach the builder), and with
``data_dir`` it lists every file below it (hours for the 7.7 M extracted band
files). For our name it returns the module with the caller's ``data_dir`` and
``data_files`` untouched instead; the builder reads them as named paths.

The private ``datasets`` API this needs is in ``bentxt/compat.py`` (with the
package's other private uses). The version is checked at call time: with another
``datasets`` major version, :func:`register` raises ``ImportError`` and the
builder class still works without it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from functools import lru_cache
from pathlib import Path
from typing import List, Set

from bentxt import compat
from bentxt.metadata import NAME

SUPPORTED_MAJOR = 5


def register() -> None:
    """Idempotent; runs on ``import bigearthnet_txt``."""
    import datasets

    major = int(datasets.__version__.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise ImportError(
            f"bigearthnet_txt registers its name with datasets {SUPPORTED_MAJOR}.x internals; found datasets "
            f"{datasets.__version__}, so load_dataset('{NAME}', ...) is unavailable. Install "
            f"'datasets>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}', or use the builder class directly: "
            f"bigearthnet_txt.BigEarthNetTxt(config_name=...)"
        )
    compat.register_packaged_module(NAME, code_hash())


@lru_cache(maxsize=None)
def cache_modules() -> List[str]:
    """The modules whose code defines the prepared data: the builder and what it imports from ``bentxt``, transitively.

    Derived from the import statements, so a new module can never be left out
    of the cache key (a hand-kept list once missed one and served stale caches).
    """
    root = Path(__file__).resolve().parent
    spec = importlib.util.find_spec(NAME)
    if spec is None or spec.origin is None:
        raise ImportError(f"the builder module {NAME} is not importable (is the package installed?)")
    builder = Path(spec.origin)
    seen: Set[str] = set()
    todo = [(NAME, builder)]
    while todo:
        name, path = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module in _bentxt_imports(path, name):
            relative = module.split(".", 1)[1].replace(".", "/")
            for file in (root / f"{relative}.py", root / relative / "__init__.py"):  # a module, or a subpackage
                if file.exists():
                    todo.append((module, file))
    return sorted(seen)


def _bentxt_imports(path: Path, module: str) -> Set[str]:
    found = set()
    package = "bentxt" if module.startswith("bentxt") else ""
    tree = ast.parse(path.read_text())
    for main in [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]:
        tree.body.remove(main)  # `python -m` entry points are not part of what defines the data
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import x
                base = f"{package}.{base}" if base else package
            if base == "bentxt" or base.startswith("bentxt."):
                if base != "bentxt":
                    found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # kept where it is a module (cache_modules)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("bentxt.")}
    # importing bentxt.a.b runs bentxt/a/__init__.py too
    return found | {".".join(m.split(".")[:k]) for m in found for k in range(2, m.count(".") + 1)}


def code_hash() -> str:
    """Hash of the builder and the modules it uses, so a code change gives a new cache folder."""
    lines: List[str] = []
    for name in cache_modules():
        lines += inspect.getsource(importlib.import_module(name)).splitlines()
    return compat.hash_python_lines(lines)


def builder_for(config: str, **kwargs):
    """The builder ``load_dataset(NAME, config, **kwargs)`` uses, so the CLI and the export share its cache folder.

    Where registration is unavailable (another ``datasets`` major), the class itself (same folder too).
    """
    import datasets

    try:
        register()
    except ImportError:
        return importlib.import_module(NAME).BigEarthNetTxt(config_name=config, **kwargs)
    return datasets.load_dataset_builder(NAME, config, **kwargs)
