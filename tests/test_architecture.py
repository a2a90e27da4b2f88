"""The shape of the package: subsystems import one way (lower layers never import higher ones), no module
imports itself back through others, and functions and modules stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "your_ai"

# Lowest first: a module may import from its own layer and the layers before it, never after.
LAYERS = [
    {"__init__", "environment", "errors", "files", "hardware", "hub_offline", "lifeline"},
    {"objective"},
    {"data", "sources"},
    {"model"},
    {"step"},
    {"train", "mlx_engine"},
    {"fit"},
    {"eval"},
    {"cli", "__main__"},
]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("your_ai"):
            base = node.module.removeprefix("your_ai").lstrip(".")
            for alias in node.names:
                joined = f"{base}.{alias.name}" if base else alias.name
                names.add(joined if joined in modules else base)
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("your_ai.") for a in node.names if a.name.startswith("your_ai."))
    return {name for name in names if name in modules}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(index for index, layer in enumerate(LAYERS) if top in layer)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    for module in _modules():
        assert any(module.split(".")[0] in layer for layer in LAYERS), f"{module} is in no layer"


def test_imports_point_down():
    wrong = [f"{module} imports {target}" for module, targets in _graph().items() for target in targets
             if _layer(target) > _layer(module)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph, cycles = _graph(), []

    def visit(module: str, path: list[str]) -> None:
        for target in graph[module]:
            if target in path:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("module", sorted(_modules()))
def test_small_functions_and_modules(module):
    path = _modules()[module]
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: {len(source.splitlines())} lines"
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: " + ", ".join(long)
