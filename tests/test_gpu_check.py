"""benchmarks/gpu_check.sh: its dry run (every step on the CPU, small) runs here and checks its own
output; the real run refuses to start without the wheels it installs from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_the_real_run_needs_its_wheels(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "--wheels DIR (the wheels brought along) is required" in result.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_dry_run_runs_every_step_and_checks_them(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--python", sys.executable, "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: every step ran and reported" in result.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    assert [s["step"] for s in report["steps"]] == ["install", "gsplat", "tests", "render", "train_cuda",
                                                    "train_cpu", "bake"]
    assert all(s["rc"] == 0 for s in report["steps"])
    assert report["train_same_steps"]["steps"] == 5
