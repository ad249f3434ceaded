"""The benchmark scripts import what exists: every ``from <project package> import name`` in
benchmarks/*.py (lazy imports inside functions included) resolves, so a refactor cannot leave a
benchmark broken until someone runs it."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
PROJECT = ("kdistill", "student", "teacher", "eval")


def _project_imports(path: Path) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] in PROJECT]
    return out


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_project_import_of_a_benchmark_resolves(path):
    for module, name in _project_imports(path):
        mod = importlib.import_module(module)
        if name:
            assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
                f"{path.name}: from {module} import {name}"
