"""The import graph of rankgym: layers import downwards only, and no module imports itself
back through others. Every import counts, also those inside functions and ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# rankgym.<layer> -> its folder; a layer may import only the layers before it. The modules of
# the top package itself (``rankgym.threads``) come first: every layer may use them.
LAYERS = {"": "rankgym", "logs": "logs", "encoders": "encoders", "envs": "envs", "agents": "agents",
          "experiments": "experiments"}  # fmt: skip


def module_files() -> dict[str, Path]:
    """``rankgym.<layer>.<module>`` -> its file."""
    files = {}
    for layer, folder in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(p for p in ("rankgym", layer, *parts) if p)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Each module -> the rankgym modules it imports (a name imported from a package counts
    as that package's submodule when one exists)."""
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    name = module.split(".")[1] if "." in module else ""
    return list(LAYERS).index(name) if name in LAYERS else 0  # rankgym's own modules: 0


def test_layers_import_downwards_only() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in import_graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == [], "\n".join(upward)


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: every component is a single module."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], cycles


def test_the_graph_sees_function_level_imports() -> None:
    """The checker itself: a known lazy import inside a function is an edge."""
    graph = import_graph()
    assert "rankgym.experiments.runs" in graph["rankgym.experiments.export"]
    assert "rankgym.logs.session_log" in graph["rankgym.logs.candidates"]
