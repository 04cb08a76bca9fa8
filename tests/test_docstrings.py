"""Every public name has a docstring: module-level functions and classes, and the methods and
properties of public classes, in every module of ``ddkit`` (names starting with "_" are exempt).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ddkit"


def _public(node: ast.AST) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and (
        not node.name.startswith("_")
    )


def _undocumented(path: Path) -> list[str]:
    """``path:line name`` of each public definition in the module without a docstring."""
    where = path.relative_to(SRC.parent)
    missing = []
    for node in ast.parse(path.read_text()).body:
        if not _public(node):
            continue
        if ast.get_docstring(node) is None:
            missing.append(f"{where}:{node.lineno} {node.name}")
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                if _public(sub) and not isinstance(sub, ast.ClassDef):
                    if ast.get_docstring(sub) is None:
                        missing.append(f"{where}:{sub.lineno} {node.name}.{sub.name}")
    return missing


def test_the_walk_finds_the_modules():
    assert len(list(SRC.rglob("*.py"))) > 10


def test_every_public_function_class_and_method_has_a_docstring():
    missing = [m for path in sorted(SRC.rglob("*.py")) for m in _undocumented(path)]
    assert not missing, f"{len(missing)} public names without a docstring:\n" + "\n".join(missing)
