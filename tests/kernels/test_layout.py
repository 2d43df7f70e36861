"""The rule that keeps the oracles trustworthy (attention-gym's): an optimized file never imports the
eager oracle, the oracle imports nothing optimized, and only ops.py, the public ops, sees both."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

OPTIMIZED = ("flash_attention", "swin_attention", "similarity_ce")


def _package_imports(module: str) -> set[str]:
    """The vitfast.kernels modules that `module` imports (relative or absolute), by short name."""
    tree = ast.parse(Path(importlib.import_module(f"vitfast.kernels.{module}").__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitfast.kernels"):
            rest = node.module.removeprefix("vitfast.kernels").lstrip(".")
            names.update([rest] if rest else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name.removeprefix("vitfast.kernels.") for a in node.names
                         if a.name.startswith("vitfast.kernels."))
    return names


@pytest.mark.parametrize("module", OPTIMIZED)
def test_optimized_files_do_not_import_the_oracle(module):
    imports = _package_imports(module)
    assert "reference" not in imports and "ops" not in imports, imports
    assert not imports & set(OPTIMIZED), f"{module} imports another kernel file: {imports}"


def test_oracle_imports_nothing_optimized():
    assert _package_imports("reference") <= {"window_geometry"}


def test_public_ops_dispatch_to_both_sides():
    assert {"reference", *OPTIMIZED} <= _package_imports("ops")
