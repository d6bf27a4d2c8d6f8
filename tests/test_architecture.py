"""Import boundaries of docs/architecture.md ("Packages and what each may import").

Every module is parsed with `ast`, nothing is imported; imports inside functions
(the lazy ones) count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# docs/architecture.md: a core sub-package may import only those before it.
CORE_ORDER = ("base", "rig", "head", "render", "audio", "models", "datasets", "evaluation", "training")
OUTSIDE_CORE = ("emotalker.bake", "emotalker.cli", "emotalker.worker", "emotalker.sample", "emotalker.track", "bpy")
# docs/architecture.md: which of emotalker's other packages each package may import.
PACKAGE_MAY_IMPORT = {
    "core": set(),
    "sample": {"core"},
    "bake": {"core"},
    "worker": {"core", "bake"},
    "track": {"core", "bake"},
    "cli": {"core", "bake", "worker", "sample", "track"},
}
# The add-on runs inside Blender's Python: the standard library, Blender's own modules and numpy.
BLENDER_MODULES = {"bpy", "bpy_extras", "mathutils", "gpu", "gpu_extras", "blf", "bmesh", "numpy"}



def module_name(path: Path) -> str:
    """'emotalker/core/base/fileio.py' -> 'emotalker.core.base.fileio'; a package's __init__ names the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import anywhere in `source`, functions included.

    `from a.b import c` yields both 'a.b' and 'a.b.c' (c may be a sub-module);
    relative imports are resolved against `module`.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def files_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def all_imports(folder: str) -> list[tuple[str, int, str]]:
    """(repository-relative file, line, imported module) for every .py under `folder`."""
    rows = []
    for path in files_under(folder):
        name = module_name(path)
        for line, target in imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            rows.append((path.relative_to(ROOT).as_posix(), line, target))
    return rows


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def core_order_breaks() -> list[tuple[str, int, str]]:
    """(file, line, imported module) wherever a core sub-package imports one that comes after it."""
    breaks = []
    for file, line, target in all_imports("emotalker/core"):
        source_parts, target_parts = file.split("/"), target.split(".")
        if len(source_parts) < 4 or len(target_parts) < 3 or not within(target, "emotalker.core"):
            continue
        source_pkg, target_pkg = source_parts[2], target_parts[2]
        if target_pkg in CORE_ORDER and CORE_ORDER.index(target_pkg) > CORE_ORDER.index(source_pkg):
            breaks.append((file, line, target))
    return breaks


def test_scanner_sees_lazy_relative_and_from_imports():
    source = "import os\nfrom .sibling import thing\ndef f():\n    from emotalker.bake import video\n    import bpy\n"
    found = imports_of(source, "emotalker.core.base.fileio")
    assert found == [
        (1, "os"),
        (2, "emotalker.core.base.sibling"),
        (2, "emotalker.core.base.sibling.thing"),
        (4, "emotalker.bake"),
        (4, "emotalker.bake.video"),
        (5, "bpy"),
    ]
    assert (1, "pkg.mod") in imports_of("from . import mod\n", "pkg", is_package=True)


def test_every_subpackage_of_core_is_in_the_dependency_order():
    subpackages = {p.parent.name for p in (ROOT / "emotalker/core").glob("*/__init__.py")}
    assert subpackages == set(CORE_ORDER)


def test_core_imports_neither_bake_cli_worker_sample_nor_bpy():
    bad = [(f, line, t) for f, line, t in all_imports("emotalker/core") if any(within(t, p) for p in OUTSIDE_CORE)]
    assert bad == []


def test_core_subpackages_import_only_those_before_them():
    assert core_order_breaks() == [], f"imports against the order {' < '.join(CORE_ORDER)}"


def test_bake_imports_neither_cli_nor_worker_nor_bpy():
    bad = [(f, line, t) for f, line, t in all_imports("emotalker/bake")
           if any(within(t, p) for p in ("emotalker.cli", "emotalker.worker", "bpy"))]
    assert bad == []


@pytest.mark.parametrize("package", sorted(PACKAGE_MAY_IMPORT))
def test_package_imports_only_the_packages_before_it(package):
    others = set(PACKAGE_MAY_IMPORT) - PACKAGE_MAY_IMPORT[package] - {package}
    bad = [(f, line, t) for f, line, t in all_imports(f"emotalker/{package}")
           if any(within(t, f"emotalker.{other}") for other in others)]
    assert bad == []


def test_every_package_of_emotalker_has_its_imports_listed():
    packages = {p.parent.name for p in (ROOT / "emotalker").glob("*/__init__.py")}
    assert packages == set(PACKAGE_MAY_IMPORT)


def test_blender_addon_imports_neither_torch_nor_emotalker():
    bad = [(f, line, t) for f, line, t in all_imports("blender_addon") if within(t, "torch") or within(t, "emotalker")]
    assert bad == []


def test_blender_addon_imports_only_the_standard_library_blender_and_numpy():
    allowed = set(sys.stdlib_module_names) | BLENDER_MODULES | {"blender_addon"}
    bad = [(f, line, t) for f, line, t in all_imports("blender_addon") if t.split(".")[0] not in allowed]
    assert bad == []
