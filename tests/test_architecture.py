"""The package layout: layers import downward only, no cycles, small modules.

The layers, lowest first (README, "Architecture"): the seed mathematics (``diffusion``), the
samplers over it, the CPU fast paths, the networks and data, checkpoints and configs, a trained
model, training, evaluation and verification, and the command line on top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddkit"

# package or module (first component under ddkit) -> layer; a module imports only from its own
# package or from a lower layer
LAYERS = {
    "paths": 0,
    "resources": 0,
    "progress": 0,
    "diffusion": 1,
    "samplers": 2,
    "cpu": 3,
    "models": 4,
    "data": 4,
    "noise": 4,
    "checkpoint": 5,
    "interop": 5,
    "config": 5,
    "memory": 5,
    "viz": 5,
    "generation": 6,
    "trained": 7,
    "tuned_steps": 7,
    "training": 8,
    "sample": 9,
    "export": 9,
    "edit": 9,
    "evaluation": 9,
    "verify": 9,
    "demo": 10,
    "api": 10,
    "cli_checks": 10,
    "cli": 11,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """The ddkit modules that ``name`` imports, anywhere in the file (function bodies too), or
    only at module level."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from . import x" names a module
                full = f"{target}.{alias.name}"
                found.add(full if full in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "ddkit" or m.startswith("ddkit.")}


def _layer(module: str) -> tuple[str, int]:
    first = module.split(".")[1] if "." in module else ""
    return first, LAYERS.get(first, 0)


def test_every_package_has_a_layer():
    firsts = {m.split(".")[1] for m in MODULES if "." in m}
    assert firsts <= set(LAYERS), f"modules without a layer in LAYERS: {firsts - set(LAYERS)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward_only(module):
    here, level = _layer(module)
    for target in _imports(module, MODULES[module]):
        there, target_level = _layer(target)
        assert there == here or target_level < level, (
            f"{module} (layer {level}) imports {target} (layer {target_level}): "
            "imports must go to a lower layer or stay inside the package"
        )


@pytest.mark.parametrize("package", ["diffusion", "samplers"])
def test_the_mathematics_imports_nothing_above_it(package):
    forbidden = ("ddkit.training", "ddkit.evaluation", "ddkit.cli", "ddkit.cpu")
    for module, path in MODULES.items():
        if module.startswith(f"ddkit.{package}"):
            bad = sorted(t for t in _imports(module, path) if t.startswith(forbidden))
            assert not bad, f"{module} imports {bad}"


def test_no_import_cycles_at_module_level():
    graph = {m: _imports(m, p, top_level_only=True) & set(MODULES) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_importing_the_mathematics_loads_neither_training_nor_cpu():
    code = (
        "import sys, ddkit.samplers, ddkit.diffusion;"
        "print(sorted(m for m in sys.modules if m.startswith(('ddkit.training', 'ddkit.cpu'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("module", sorted(MODULES))
def test_source_files_stay_small(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= 400, f"{MODULES[module].relative_to(SRC.parent)} has {lines} lines (> 400)"
