"""The Open Job Description template (farm/emotalker-bake.openjd.yaml): `openjd check` accepts it, and
`openjd run` of one of its tasks bakes that one clip of a manifest. Needs `openjd` (openjd-cli, the farm
extra); skipped, saying so, without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "farm" / "emotalker-bake.openjd.yaml"
OPENJD = shutil.which("openjd", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
DATA = ROOT / "emotalker" / "data"

pytestmark = pytest.mark.skipif(OPENJD is None, reason="openjd-cli is not installed (the farm extra): "
                                                       "pip install -e '.[farm]'")


def test_openjd_check_passes():
    result = subprocess.run([OPENJD, "check", str(TEMPLATE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passes validation checks" in result.stdout


def test_a_task_bakes_its_one_clip(tmp_path):
    clips = [{"id": "first", "emotion": "sad"}, {"id": "second", "emotion": "happy"}]
    manifest = tmp_path / "batch.json"
    manifest.write_text(json.dumps({"format": "emotalker-batch/1", "clips": clips, "defaults": {
        "avatar": str(DATA / "demo_avatar"), "audio": str(DATA / "demo_speech.wav"), "frames": "1:3",
        "resolution": 16, "ply": True}}))
    emotalker = Path(sys.executable).with_name("emotalker")
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout's emotalker, whatever the venv installed
    result = subprocess.run([OPENJD, "run", str(TEMPLATE), "--job-param", f"Manifest={manifest}",
                             "--job-param", "LastClipIndex=1", "--job-param", f"EmoTalker={emotalker}",
                             "--job-param", "Threads=1", "--task-param", "ClipIndex=1"],
                            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "bake" / "second").glob("*.ply")) == [
        f"second_{frame:06d}.ply" for frame in (1, 2, 3)]
    assert not (tmp_path / "bake" / "first").exists()  # the task's clip alone
    summary = json.loads((tmp_path / "batch.second.summary.json").read_text())
    assert summary["done"] == ["second"] and summary["exit_code"] == 0
