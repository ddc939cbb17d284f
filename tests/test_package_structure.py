"""The package's import structure: acyclic, no private names across modules, engine free of CLI.

The import graph is read from the sources' syntax trees, so imports inside functions count
(a function-level import hides a cycle, it does not remove it); imports under
``if TYPE_CHECKING:`` are skipped because they never run.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the dotted name it has inside the installed package
FOLDERS = {
    "relgraph": "relgraph",
    "rules": "relgraph.rules",
    "architectures": "relgraph.architectures",
}


def module_files() -> dict[str, Path]:
    """Every module of the package (and its mounted folders) by dotted name."""
    modules = {}
    for folder, dotted in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((dotted, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST):
    """Import nodes that can run: everywhere except the body of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]):
    """``(imported module, imported names, line)`` for each import of ``name`` in the package."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, [], node.lineno
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [alias.name for alias in node.names]
        submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in modules]
        for submodule in submodules:
            yield submodule, [], node.lineno
        others = [n for n in names if f"{source}.{n}" not in modules]
        if source in modules and (others or not submodules):
            yield source, others, node.lineno


@functools.cache
def import_graph() -> nx.DiGraph:
    """Module -> module edges, each with the names and line of its import."""
    modules = module_files()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target, names, line in imports_of(name, path, modules):
            if target != name:
                graph.add_edge(name, target, names=names, line=line)
    return graph


def test_module_import_graph_is_acyclic():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles)


def test_no_module_imports_a_private_name_from_another_module():
    graph = import_graph()
    crossing = [
        f"{a} imports {n} from {b} (line {data['line']})"
        for a, b, data in graph.edges(data=True)
        for n in data["names"]
        if n.startswith("_") and not n.startswith("__")
    ]
    assert crossing == []


def is_cli(module: str) -> bool:
    return module == "relgraph.cli" or module.startswith("relgraph.cli.")


def test_engine_and_rules_never_reach_the_cli():
    graph = import_graph()
    engine = [m for m in graph if m.startswith(("relgraph.engine", "relgraph.rules"))]
    offending = sorted(f"{m} -> {t}" for m in engine for t in nx.descendants(graph, m) if is_cli(t))
    assert offending == []


def test_only_the_command_line_entry_point_imports_the_cli():
    graph = import_graph()
    offending = sorted(
        f"{a} -> {b}"
        for a, b in graph.edges
        if is_cli(b) and not is_cli(a) and a != "relgraph.__main__"
    )
    assert offending == []


def test_import_works_from_an_uninstalled_checkout():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import relgraph, relgraph.rules, relgraph.architectures; "
        "print(relgraph.__file__); print(relgraph.rules.__file__); "
        "print(relgraph.architectures.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        cwd=ROOT.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.split()]
    assert [f.resolve().parent for f in files] == [
        ROOT / "relgraph",
        ROOT / "rules",
        ROOT / "architectures",
    ]
