"""The import structure: arrows point one way (DESIGN.md: analysis -> theory -> zoo, analysis -> zoo)
and no module of the three packages imports itself through others, at module level or inside a
function.

Every ``import`` and ``from ... import`` statement is read from the source (``ast``), wherever it
stands. A name imported from a package is an edge to its submodule when there is one, else to the
package (its ``__init__``). Edges from a module to its own enclosing packages are left out: Python
runs those ``__init__`` files first whatever the module says, so they are no arrow of the design.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "theory", "analysis")
ALLOWED = {"zoo": {"zoo"}, "theory": {"theory", "zoo"}, "analysis": {"analysis", "theory", "zoo"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:   # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and not (name + ".").startswith(target + "."):   # not an enclosing package
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_arrows_point_one_way():
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not wrong, f"imports against DESIGN.md's arrows: {wrong}"


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_is_read():
    """The reader finds the imports it must (so the two tests above cannot pass by reading nothing)."""
    edges = graph()
    assert {"analysis.capture", "analysis.cli", "zoo"} <= edges["analysis.pretrain"]
    assert {"analysis.pretrain", "analysis.capture"} <= edges["analysis.lowrank.sources"]
    assert "analysis.lowrank.sources" in edges["analysis.lowrank"]
    assert "zoo.registry" in edges["zoo.cli"]
