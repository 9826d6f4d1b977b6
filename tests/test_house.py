"""House rules a reader relies on, checked on the source: short functions, no import circles between folders."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


def folder_of(module: str) -> str | None:
    """The folder of ``workbench/`` a module belongs to (``channels/<name>`` counts as one folder each).

    The package root (``workbench/__init__.py``, the public face that gathers everything) is no folder.
    """
    parts = module.split(".")
    if parts[0] != "workbench" or len(parts) < 2:
        return None
    if parts[1] == "channels" and len(parts) > 2:
        return "channels." + parts[2]
    return parts[1]


def imports_of(module: str, path: Path, tree: ast.Module) -> list[tuple[str, int]]:
    """Every module ``tree`` imports, anywhere (function bodies and ``if TYPE_CHECKING:`` included)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found += [(target, node.lineno)] + [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return found


def folder_graph() -> dict[str, dict[str, list[str]]]:
    """folder -> imported folder -> where (``module:line``)."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, (path, tree) in _modules().items():
        source = folder_of(module)
        if source is None:
            continue
        for target, line in imports_of(module, path, tree):
            dest = folder_of(target)
            if dest is not None and dest != source:
                graph.setdefault(source, {}).setdefault(dest, []).append(f"{module}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one folder (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle_between_folders():
    graph = folder_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b}: {', '.join(graph[a][b][:3])}" for group in found for a in group for b in group
              if b in graph.get(a, {})]
    assert not found, "import circles between folders of workbench/:\n" + "\n".join(detail)


def test_the_checker_finds_a_circle():
    graph = {"a": {"b": ["a.x:1"]}, "b": {"c": ["b.y:2"]}, "c": {"a": ["c.z:3"]}, "d": {"a": ["d:1"]}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": []}, "b": {}}) == []


def test_node_imports_no_channel():
    """``node/`` is what every channel shares: it never imports one (the app is assembled in server.py)."""
    graph = folder_graph()
    channels = {"dp", "federated_dp", "synth", "he", "smpc", "fl", "aggregator"}
    reached = {dest for dest in graph.get("node", {}) if dest in channels or dest.startswith("channels.")}
    assert not reached, {dest: graph["node"][dest] for dest in reached}


def test_no_function_over_60_lines():
    long = []
    for module, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                length = node.end_lineno - first + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name} ({path.name}:{node.lineno}): {length} lines")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_every_worker_task_resolves():
    """Every name a call site may give the worker pool is registered and its function exists."""
    import importlib

    from workbench.node.tasks import TASKS

    for name, target in TASKS.items():
        module_name, func = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), func)), name


def test_every_task_name_used_in_the_package_is_registered():
    """A string given to ``pool.run``/``run_isolated`` is a registered task name (not a module path)."""
    from workbench.node.tasks import TASKS

    used = set()
    for module, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
                    and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("run", "run_isolated")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                used.add(node.args[0].value)
    assert used, "no task call sites found: the check is looking in the wrong place"
    assert used <= set(TASKS), used - set(TASKS)


def test_every_benchmark_script_imports():
    """Benchmarks run by hand; a moved name must not leave one failing at its first line."""
    import importlib

    for script in sorted((PACKAGE.parent / "benchmarks").glob("*.py")):
        importlib.import_module(f"benchmarks.{script.stem}")
