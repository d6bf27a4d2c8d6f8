#!/usr/bin/env python3
"""Set up EmoTalker in ./.venv with one command; re-running is quick.

    python3 install.py                   # the package and the CLI
    python3 install.py --test            # + test, Blender, USD, farm and track extras, then run the tests
    python3 install.py --extras clip,speech
    python3 install.py --blender /path/to/blender   # also install the Blender add-on

Steps (each skipped when already done):
1. make .venv with pip;
2. install the pinned CPU build of torch first, so that no dependency pulls a
   newer CUDA build;
3. install this package (editable) with the extras asked for;
4. system tools the sample data needs (espeak-ng and libespeak-ng1), through apt-get when run as root;
5. with --blender PATH: install the add-on into that Blender's user extensions
   (Blender 4.2 or later; an older or broken Blender gets one line and the
   setup goes on). A Blender merely found on PATH is never touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".emotalker-install.json"
TORCH = "torch==2.13.0"
TEST_EXTRAS = ("test", "blender", "usd", "farm", "track")


def say(msg: str) -> None:
    print(f"[install] {msg}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> None:
    say("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def pip(*args: str) -> None:
    run([venv_python(), "-m", "pip", "--disable-pip-version-check", *args])


def installed_version(dist: str) -> str | None:
    out = subprocess.run([venv_python(), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_venv() -> None:
    if venv_python().exists():
        say(f"virtual environment {VENV} exists")
        return
    say(f"creating virtual environment {VENV}")
    venv.EnvBuilder(with_pip=True).create(VENV)


def ensure_torch() -> None:
    want = TORCH.split("==")[1]
    have = installed_version("torch")
    if have and have.split("+")[0] == want:
        say(f"torch {have} already installed")
        return
    pip("install", "-q", TORCH)


def ensure_package(extras: list[str]) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + spec.encode()).hexdigest()
    stamp = json.loads(STAMP.read_text()) if STAMP.exists() else {}
    if stamp.get("key") == key and installed_version("emotalker"):
        say(f"emotalker{spec[1:]} already installed")
        return
    pip("install", "-q", "-e", spec)
    STAMP.write_text(json.dumps({"key": key, "extras": extras}))


def ensure_system_tools(allow: bool) -> None:
    import ctypes.util

    # make-sample loads libespeak-ng through ctypes (phoneme timings), not just the espeak-ng program.
    if shutil.which("espeak-ng") and ctypes.util.find_library("espeak-ng"):
        say("espeak-ng and libespeak-ng found")
        return
    can_apt = allow and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0
    if not can_apt:
        say("espeak-ng not found: `emotalker make-sample` needs it (Debian/Ubuntu: apt-get install espeak-ng libespeak-ng1)")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "espeak-ng", "libespeak-ng1"], env=env)


MIN_BLENDER = (4, 2)  # extensions (`blender --command extension`) exist from 4.2 on


def blender_version(blender: str) -> tuple[int, ...] | None:
    """(major, minor, patch) from `blender --version`, or None when it does not run or say."""
    try:
        out = subprocess.run([blender, "--version"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Blender "):
            try:
                return tuple(int(p) for p in line.split()[1].split("."))
            except ValueError:
                return None
    return None


def install_addon(blender: str) -> None:
    """Install the add-on into `blender` as an extension; on a Blender that cannot take it, say so in
    one line and go on (the rest of the setup does not depend on it)."""
    addon = ROOT / "blender_addon"
    version = blender_version(blender)
    if version is None:
        say(f"{blender} did not report a Blender version; the add-on was not installed")
        return
    shown = ".".join(map(str, version))
    if version[:2] < MIN_BLENDER:
        say(f"Blender {shown} at {blender} is older than {MIN_BLENDER[0]}.{MIN_BLENDER[1]}; the add-on was not "
            f"installed (install it into a Blender {MIN_BLENDER[0]}.{MIN_BLENDER[1]}+ with --blender PATH)")
        return
    zip_path = ROOT / "build" / "emotalker_blender.zip"
    zip_path.parent.mkdir(exist_ok=True)
    shutil.make_archive(str(zip_path.with_suffix("")), "zip", addon)
    try:
        run([blender, "--background", "--factory-startup", "--command", "extension", "install-file",
             "-r", "user_default", "-e", str(zip_path)])
    except subprocess.CalledProcessError as e:
        say(f"installing the add-on into Blender {shown} failed (exit {e.returncode}); the rest of the setup is done")
        return
    say(f"add-on installed into Blender {shown}; in Blender set Preferences > Add-ons > EmoTalker > Environment to {VENV}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extras", default="", help="comma-separated extras: blender, clip, speech, cuda, usd, farm, track, test")
    ap.add_argument("--test", action="store_true", help="install the test extras and run the test suite")
    ap.add_argument("--blender", help="path of a Blender 4.2+ executable to install the add-on into")
    ap.add_argument("--no-system", action="store_true", help="never call apt-get")
    ap.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --test)")
    args = ap.parse_args()

    extras = sorted({e.strip() for e in args.extras.split(",") if e.strip()} | (set(TEST_EXTRAS) if args.test else set()))
    ensure_venv()
    ensure_torch()
    ensure_package(extras)
    ensure_system_tools(allow=not args.no_system)
    if args.blender:
        if not Path(args.blender).exists():
            sys.exit(f"[install] --blender {args.blender}: no such file")
        install_addon(args.blender)
    elif shutil.which("blender"):
        say(f"a Blender is on PATH ({shutil.which('blender')}); to install the add-on into it: "
            f"python3 install.py --blender {shutil.which('blender')}")

    bin_dir = venv_python().parent
    if args.test:
        say("running the test suite")
        return subprocess.run([str(venv_python()), "-m", "pytest", *args.pytest_args], cwd=ROOT).returncode
    say(f"done. Next: {bin_dir / 'emotalker'} demo   (or source {bin_dir / 'activate'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
