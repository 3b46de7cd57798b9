"""No import circles among the project's modules, package ``__init__`` files included.

The graph is read from the source (``ast``), not by importing. An edge ``a -> b`` is an import
statement that runs when ``a`` is imported (module level, including ``try``/``if`` blocks; not
inside a function, which runs once every module is initialised) and makes Python execute ``b``:
``import p.q.r`` and ``from p.q import r`` execute ``p``, ``p.q`` and, when it is a module,
``p.q.r``. So a package ``__init__`` that eagerly imports its submodules, while those submodules
import each other through the package, is a circle; a package ``__init__`` that exports lazily
(PEP 562 ``__getattr__``) is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "model", "pipeline", "simulator", "transforms")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``, by dotted name."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[_module_name(path, root)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)  # `if TYPE_CHECKING:` never runs
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Edges between project modules: what each module's import-time statements execute."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in _module_level_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name:
                        graph[name].add(prefix)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_no_import_circles():
    cycles = find_cycles(import_graph(ROOT, PACKAGES))
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_check_finds_a_circle_through_a_package_init(tmp_path):
    # The shape the simulator had: the package __init__ re-exports a submodule that imports
    # a sibling through the package.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.core import run\n")
    (pkg / "core.py").write_text("from pkg import helpers\n\ndef run():\n    return helpers\n")
    (pkg / "helpers.py").write_text("def f():\n    from pkg.core import run\n    return run\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {"pkg": {"pkg.core"}, "pkg.core": {"pkg", "pkg.helpers"}, "pkg.helpers": set()}
    assert find_cycles(graph) == [["pkg", "pkg.core"]]


def test_a_lazy_package_init_is_no_circle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "def __getattr__(name):\n    from pkg.core import run\n    return run\n"
    )
    (pkg / "core.py").write_text("from pkg import helpers\n\ndef run():\n    return helpers\n")
    (pkg / "helpers.py").write_text("X = 1\n")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import helpers\n", {"pkg", "pkg.helpers"}),
        ("from .helpers import f\n", {"pkg", "pkg.helpers"}),
        (
            "try:\n    import pkg.helpers as h\nexcept ImportError:\n    h = None\n",
            {"pkg", "pkg.helpers"},
        ),
        ("from pkg import VERSION\n", {"pkg"}),
        ("import numpy\n", set()),
        ("def f():\n    import pkg.helpers\n", set()),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.helpers\n", set()),
    ],
)
def test_edges_resolve_relative_and_package_imports(tmp_path, source, expected):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VERSION = 1\n")
    (pkg / "helpers.py").write_text("def f():\n    return 1\n")
    (pkg / "user.py").write_text(source)
    assert import_graph(tmp_path, ("pkg",))["pkg.user"] == expected
