"""tools/long_functions.py: what it counts as long, and the numba kernels it skips (a report, not a gate)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "long_functions.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("long_functions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''
import numba
from numba import njit

def short():
    return 1

@njit(cache=True)
def kernel(x):
    a = 1
    b = 2
    return x + a + b

@numba.jit
def other_kernel(x):
    a = 1
    b = 2
    return x + a + b

class Thing:
    @staticmethod
    def method():
        a = 1
        b = 2
        return a + b

    def outer(self):
        def inner():
            a = 1
            return a
        return inner
'''


def test_lists_functions_over_the_limit_with_qualified_names_and_skips_numba_kernels():
    found = load_tool().long_functions(SOURCE, limit=3)
    assert found == [(22, "Thing.method", 4), (27, "Thing.outer", 5)]


def test_length_runs_from_def_to_last_line_and_the_limit_itself_passes():
    tool = load_tool()
    assert tool.long_functions(SOURCE, limit=4) == [(27, "Thing.outer", 5)]
    assert tool.long_functions(SOURCE, limit=5) == []


def test_main_prints_the_report(tmp_path, capsys):
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    assert load_tool().main([str(path), "--max", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "5" and lines[0].endswith("Thing.outer")
    assert lines[-1] == "2 function(s) longer than 3 lines"


def test_folders_of_code_that_is_not_ours_are_skipped(tmp_path):
    tool = load_tool()
    for folder in ("pkg", "build/venv/lib", ".venv/lib", "pkg/__pycache__"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "m.py").write_text("x = 1\n")
    assert tool.python_files([tmp_path]) == [tmp_path / "pkg" / "m.py"]
