"""Modules over 400 lines and functions over 80 lines (issue 14), unless their docstring says why.

    python .ci/sizes.py [--strict] [FOLDER ...]

A reason is a docstring sentence with "on purpose" in it (a function's own docstring; a module's
for the module). Lists what is over; with --strict exits 1 when anything without a reason is.
Default folders: kdistill student teacher eval (modules and functions) and benchmarks (functions).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MODULE_LINES, FUNCTION_LINES = 400, 80
REASON = "on purpose"


def over(folders: list[str], functions_only: set[str]) -> list[tuple[str, bool]]:
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
            lines = text.count("\n")
            if lines > MODULE_LINES and folder not in functions_only:
                why = REASON in (ast.get_docstring(tree) or "")
                rows.append((f"module {path}: {lines} lines", why))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > FUNCTION_LINES:
                        why = REASON in (ast.get_docstring(node) or "")
                        rows.append((f"function {path}:{node.lineno} {node.name}: {n} lines", why))
    return rows


def main(argv: list[str]) -> int:
    strict = "--strict" in argv
    folders = [a for a in argv if not a.startswith("--")] or ["kdistill", "student", "teacher", "eval", "benchmarks"]
    rows = over(folders, {"benchmarks"})
    for row, why in rows:
        print(f"{row}{'  (reason given)' if why else ''}")
    bad = [row for row, why in rows if not why]
    print(f"{len(bad)} over the limits without a reason" if bad else "nothing over the limits without a reason")
    return 1 if strict and bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
