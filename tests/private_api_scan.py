"""Find the package's uses of other libraries' private names (a leading underscore), for ``tests/test_compat.py``.

Three kinds, each reported as ``(file, line, name)``:

- ``from library import _name``;
- ``something._name`` where no code of ours defines ``_name`` (so it must be a library's), and ``super()._name``;
- a class of ours that overrides a library class's ``_name`` (found by importing the module and walking the MRO).

Documented subclass hooks (``_info``, ``_split_generators``, ...) are public API despite the underscore.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent

#: builder hooks that ``datasets`` documents for subclasses ("Writing a dataset loading script" / builder reference),
#: and Python's own protocol names
DOCUMENTED_HOOKS = {"_info", "_split_generators", "_generate_examples", "_generate_tables", "_missing_",
                    "_generate_next_value_", "_asdict", "_replace", "_fields", "_make"}


def package_files() -> List[Path]:
    return [ROOT / "bigearthnet_txt.py"] + sorted((ROOT / "bentxt").rglob("*.py"))


#: set by Python itself on every class with an ABC base; os._exit, documented
PYTHON_INTERNALS = {"_abc_impl", "_exit"}
GETTERS = {"getattr", "hasattr", "setattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in DOCUMENTED_HOOKS | PYTHON_INTERNALS


def _defined_names(trees) -> Set[str]:
    """Every underscore name our own code defines: functions, classes, variables, attributes it assigns, arguments."""
    names: Set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
    return names


def _is_super_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _ours(module: str) -> bool:
    return module == "bigearthnet_txt" or module.split(".")[0] == "bentxt"


def source_uses() -> List[Tuple[str, int, str]]:
    """Private library names in the source: imports, attribute reads, calls on ``super()``."""
    files = package_files()
    trees = [ast.parse(f.read_text(), str(f)) for f in files]
    # our own defs, minus methods that override a library's private method (those must not hide super()._x)
    defined = _defined_names(trees)
    found = []
    for file, tree in zip(files, trees):
        rel = str(file.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and not _ours(node.module or ""):
                found += [(rel, node.lineno, f"{node.module}.{a.name}") for a in node.names if _is_private(a.name)]
            elif isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.ctx, ast.Load):
                if _is_super_call(node.value) or node.attr not in defined:
                    found.append((rel, node.lineno, node.attr))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in GETTERS:
                name = node.args[1] if len(node.args) > 1 else None  # getattr(pool, "_processes", None)
                if isinstance(name, ast.Constant) and isinstance(name.value, str) and _is_private(name.value) \
                        and name.value not in defined:
                    found.append((rel, node.lineno, name.value))
    return found


def overrides() -> List[Tuple[str, int, str]]:
    """Methods and attributes of our classes that override a library class's private name."""
    found = []
    for file in package_files():
        name = "bigearthnet_txt" if file.name == "bigearthnet_txt.py" else \
            ".".join(file.relative_to(ROOT).with_suffix("").parts)
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name:
                continue
            for attr in vars(cls):
                if not _is_private(attr):
                    continue
                owners = [base for base in cls.__mro__[1:] if attr in vars(base) and not _ours(base.__module__)]
                if owners:
                    value = vars(cls)[attr]
                    try:
                        here = Path(inspect.getsourcefile(value) or "").resolve() == file.resolve()
                        line = inspect.getsourcelines(value)[1] if here else inspect.getsourcelines(cls)[1]
                    except TypeError:  # not a function: the class's line
                        line = inspect.getsourcelines(cls)[1]
                    found.append((str(file.relative_to(ROOT)), line, f"{owners[0].__qualname__}.{attr}"))
    return found


def private_uses() -> List[Tuple[str, int, str]]:
    return sorted(set(source_uses() + overrides()))


if __name__ == "__main__":
    for use in private_uses():
        print(*use, sep=":")
