"""List the functions longer than N lines (default 80), numba-compiled ones skipped.

    python tools/long_functions.py [PATH ...] [--max N]

PATHs are files or folders (default: the repository; hidden folders, build/ and other folders of
code that is not ours skipped).
A function's length runs from its `def` line to its last line, decorators not
counted; a nested function is listed on its own and also counts in its parent.
Functions decorated with numba's `njit`/`jit` (bare, called, or as `numba.njit`)
are kernels, exempt from the limit, and skipped. Prints one line per function,
longest first, then a count; the exit status is 0 either way (a report, not a gate).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBA_DECORATORS = {"njit", "jit"}
NOT_OURS = {"__pycache__", "build", "node_modules", "site-packages"}
"""Folders skipped besides hidden ones: caches, and build/, where the Blender version tests keep whole venvs."""


def decorator_name(node: ast.expr) -> str:
    """'njit' for @njit, @njit(...), @numba.njit and @numba.njit(...)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def long_functions(source: str, limit: int) -> list[tuple[int, str, int]]:
    """(def line, qualified name, length) of every function in `source` longer than `limit` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                compiled = any(decorator_name(d) in NUMBA_DECORATORS for d in child.decorator_list)
                length = child.end_lineno - child.lineno + 1
                if not compiled and length > limit:
                    found.append((child.lineno, name, length))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def python_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_file():
            files.append(path)
            continue
        for file in sorted(path.rglob("*.py")):
            parts = file.relative_to(path).parts
            if not any(part.startswith(".") or part in NOT_OURS for part in parts):
                files.append(file)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, help="files or folders (default: the repository)")
    ap.add_argument("--max", type=int, default=80, help="longest allowed function, in lines (default 80)")
    args = ap.parse_args(argv)
    rows = []
    for file in python_files(args.paths or [ROOT]):
        shown = file.resolve().relative_to(ROOT) if file.resolve().is_relative_to(ROOT) else file
        for line, name, length in long_functions(file.read_text(encoding="utf-8"), args.max):
            rows.append((length, f"{shown}:{line}", name))
    for length, where, name in sorted(rows, key=lambda r: (-r[0], r[1])):
        print(f"{length:5d}  {where}  {name}")
    print(f"{len(rows)} function(s) longer than {args.max} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
