"""The layout holds: the engine's layers import one way, no module imports in a circle, none grows past ~400 lines.

Read from the source (``ast``), not run: an import inside a function or under ``TYPE_CHECKING`` counts too, since
it is a dependency all the same. ``docs/contributing.md`` shows the tree and the order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_decodeperf"
# Lowest first: a module may import from its own layer and the layers before it.
ENGINE_LAYERS = ("device", "decode", "parity", "spec", "measure", "roofline", "parallel", "top")
SHARED = {"errors", "records"}  # what every layer may use
MAX_LINES = 420


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module of the package ``name`` imports (package-relative dotted names, '' for the package itself)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("pytest_decodeperf"):
                target = node.module.removeprefix("pytest_decodeperf").lstrip(".")
            else:
                continue
            for alias in node.names:  # ``from . import x`` imports the module x
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if sub in ALL else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pytest_decodeperf"):
                    found.add(alias.name.removeprefix("pytest_decodeperf").lstrip("."))
    found.discard(name)
    return {f for f in found if f in ALL}


ALL = modules()
ALL[""] = PACKAGE / "__init__.py"


def layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "engine" or name == "engine":
        return None
    return parts[1] if len(parts) > 2 or (PACKAGE / "engine" / parts[1]).is_dir() else "top"


def test_the_engines_layers_import_one_way_and_only_the_shared_modules_from_outside() -> None:
    wrong = []
    for name, path in ALL.items():
        mine = layer(name)
        if mine is None:
            continue
        for target in sorted(imports(name, path)):
            theirs = layer(target)
            if theirs is None:
                if target not in SHARED and target != "engine":
                    wrong.append(f"{name} imports {target}: the engine knows nothing of the pytest layer")
            elif ENGINE_LAYERS.index(theirs) > ENGINE_LAYERS.index(mine):
                wrong.append(f"{name} ({mine}) imports {target} ({theirs}), a layer above it")
    assert wrong == []


def test_no_module_of_the_package_imports_in_a_circle() -> None:
    graph = {name: imports(name, path) for name, path in ALL.items() if name}
    graph = {name: {t for t in targets if t} for name, targets in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(nxt_name := node, set())):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [nxt_name, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(n for n in ALL if n))
def test_no_module_is_over_about_400_lines(name: str) -> None:
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{ALL[name].relative_to(PACKAGE.parent)} has {lines} lines: split it by concern"
