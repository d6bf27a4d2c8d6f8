"""Compressed frame sequences (SPZ, PlayCanvas compressed PLY), the Unity preset and every format at once, USD
included (docs/exports.md; the USD read-back is tests/test_usd.py).

The decoding tests read our frames back with a third party's reader:
PlayCanvas splat-transform (npm; `npm install --prefix build/npm @playcanvas/splat-transform`)
converts them to PLY, and every attribute must equal our PLY frame within the
quantisation the format states. The tolerances below are derived from the
formats' quantisers (nianticlabs/spz README "File Format"; splat-transform's
compressed PLY reader), never fitted to what passes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bake_fixture import make_speech, make_tiny_avatar
from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
from emotalker.bake.ply import ply_property_names, read_ply
from emotalker.cli.main import main

REPO = Path(__file__).resolve().parent.parent
SPLAT_TRANSFORM = REPO / "build" / "npm" / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
QUIET = RunOptions(progress="none")
SH_C0 = 0.28209479177387814
FLOAT32_SLACK = 1e-6
"""Float32 rounding of the values read back (the tolerances are otherwise exact quantisation bounds)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_inputs")
    make_tiny_avatar(root / "avatar", n_gaussians=600)  # 620 with the teeth: 3 chunks of 256, the last one partial
    _colour_the_avatar(root / "avatar")
    make_speech(root / "speech.wav", seconds=1.2)  # 30 frames at 25 fps
    return root


def _colour_the_avatar(bundle_dir: Path) -> None:
    """Give the untrained avatar colours and view-dependent SH, some beyond what SPZ's bytes hold."""
    import torch

    from emotalker.core.models.blendshapes import GaussianBlendshapes
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.rig.flame import FlameModel

    bundle = AvatarBundle.open(bundle_dir)
    model = GaussianBlendshapes.load(bundle.stage_path("neutral"), FlameModel.load(bundle.flame_path))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("sh_dc", "sh_rest", "teeth_sh_dc", "teeth_sh_rest"):
            p = getattr(model, name)
            p.copy_((1.5 if "dc" in name else 0.4) * torch.randn(p.shape, generator=g))
    model.save(bundle.stage_path("neutral"))


def _clip(inputs: Path, out: Path, **fields) -> ClipSpec:
    return ClipSpec(avatar=str(inputs / "avatar"), audio=str(inputs / "speech.wav"), out=str(out), emotion="happy",
                    **fields)


def _frames(out: Path, suffix: str) -> list[Path]:
    pattern = re.compile(r"speech_\d{6}" + re.escape(suffix))
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def _state(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def _digests(folder: Path) -> dict[str, str]:
    """The frame files' digests."""
    return {n: s[0] for n, s in _state(folder).items() if re.fullmatch(r"speech_\d{6}\..*", n)}


# --- Every format from one bake: counts, sidecars, resume --------------------------------------------------


@pytest.mark.parametrize("usd", [False, True], ids=["frames", "frames+usd"])
def test_every_format_bakes_with_its_sidecar_and_a_rerun_rewrites_nothing(inputs, tmp_path, usd):
    if usd:
        pytest.importorskip("pxr", reason="--usd needs usd-core (the usd extra: pip install 'emotalker[usd]')")
    out = tmp_path / "out"
    clip = _clip(inputs, out, ply=True, spz=True, compressed_ply=True, usd=usd, frames="3:8")
    result = bake_clip(clip, QUIET)
    assert (result.written, result.skipped) == (6, 0)
    for key, suffix, sidecar_name, fmt in (("ply", ".ply", "speech.json", "emotalker-plyseq/1"),
                                           ("spz", ".spz", "speech.spz.json", "emotalker-spzseq/1"),
                                           ("compressed_ply", ".compressed.ply", "speech.compressed-ply.json",
                                            "emotalker-compressed-plyseq/1")):
        frames = _frames(out, suffix)
        assert [f.name for f in frames] == [f"speech_{i:06d}{suffix}" for i in range(3, 9)]
        sidecar = json.loads((out / sidecar_name).read_text())
        assert sidecar["format"] == fmt and (sidecar["frame_start"], sidecar["frame_end"]) == (3, 8)
        assert (sidecar["count"], sidecar["sh_degree"], sidecar["up_axis"]) == (result.n_gaussians, 1, "y")
        assert [sidecar["frame_pattern"].format(frame=i) for i in range(3, 9)] == [f.name for f in frames]
        assert sidecar.get("properties", sidecar.get("decodes_to")) == ply_property_names(1)
        assert result.outputs[f"{key}_sidecar"] == str(out / sidecar_name)
        assert result.outputs[key] == str(out / f"speech_{{frame:06d}}{suffix}")
    samples = out / "speech.usd-frames"
    if usd:  # one .usdc for the clip, assembled from one file of samples a frame
        assert result.outputs["usd"] == str(out / "speech.usdc") and (out / "speech.usdc").is_file()
        assert sorted(p.name for p in samples.iterdir()) == [f"speech_{i:06d}.npz" for i in range(3, 9)]
    else:
        assert not samples.exists() and not (out / "speech.usdc").exists() and "usd" not in result.outputs
    before, before_samples = _state(out), _state(samples) if usd else {}
    again = bake_clip(clip, QUIET)
    assert (again.written, again.skipped) == (0, 6)
    after = _state(out)
    frame_files = [n for n in before if re.fullmatch(r"speech_\d{6}\..*", n)]
    assert len(frame_files) == 18 and all(after[n] == before[n] for n in frame_files)  # not even touched
    if usd:  # the samples untouched; the .usdc assembled again from them, the same bytes
        assert _state(samples) == before_samples
        assert after["speech.usdc"][0] == before["speech.usdc"][0]


def test_adding_a_format_to_a_finished_bake_writes_only_its_files(inputs, tmp_path):
    out = tmp_path / "out"
    bake_clip(_clip(inputs, out, ply=True, frames="1:4"), QUIET)
    plys = {n: s for n, s in _state(out).items() if n.endswith(".ply")}
    result = bake_clip(_clip(inputs, out, ply=True, spz=True, frames="1:4"), QUIET)
    assert result.written == 4 and len(_frames(out, ".spz")) == 4
    assert {n: s for n, s in _state(out).items() if n.endswith(".ply")} == plys


def test_compressed_frames_are_the_same_bytes_from_the_same_inputs(inputs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        bake_clip(_clip(inputs, out, spz=True, compressed_ply=True, frames="1:2"), QUIET)
    assert _digests(a) == _digests(b) and len(_digests(a)) == 4


# --- The Unity preset -------------------------------------------------------------------------------------


def test_unity_preset_writes_all_45_f_rest_zero_padded_y_up(inputs, tmp_path):
    out = tmp_path / "unity"
    assert main(["bake", str(inputs / "avatar"), "--audio", str(inputs / "speech.wav"), "--emotion", "happy",
                 "--out", str(out), "--preset", "unity", "--frames", "1:2", "--progress", "none"]) == 0
    sidecar = json.loads((out / "speech.json").read_text())
    assert (sidecar["sh_degree"], sidecar["up_axis"]) == (3, "y")
    frame = read_ply(out / "speech_000001.ply")
    assert frame.names == ply_property_names(3) and len([n for n in frame.names if n.startswith("f_rest_")]) == 45
    rest = frame.rows[:, 9:54].reshape(-1, 3, 15)  # channel-major: 15 coefficients of red, then green, then blue
    assert np.any(rest[:, :, :3] != 0) and np.all(rest[:, :, 3:] == 0)  # the avatar's degree 1, bands 2-3 zero
    # The preset is --ply --sh-degree 3 --up-axis y: the same bytes.
    explicit = tmp_path / "explicit"
    bake_clip(_clip(inputs, explicit, ply=True, sh_degree=3, up_axis="y", frames="1:2"), QUIET)
    assert _digests(out) == _digests(explicit)


def test_unity_preset_refuses_a_contradicting_degree_or_axis(inputs, tmp_path, capsys):
    base = ["bake", str(inputs / "avatar"), "--audio", str(inputs / "speech.wav"), "--emotion", "happy",
            "--out", str(tmp_path / "o"), "--preset", "unity", "--progress", "none"]
    for extra in (["--sh-degree", "1"], ["--up-axis", "z"]):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--preset" in err[0] and "unity writes SH degree 3, y up" in err[0]
    assert not (tmp_path / "o").exists()


# --- Read back by splat-transform ---------------------------------------------------------------------------


def _splat_transform_or_skip() -> list[str]:
    node = shutil.which("node")
    if node is None or not SPLAT_TRANSFORM.is_file():
        pytest.skip("needs node and @playcanvas/splat-transform: npm install --prefix build/npm "
                    "@playcanvas/splat-transform")
    return [node, str(SPLAT_TRANSFORM)]


@pytest.fixture(scope="module")
def decoded(inputs, tmp_path_factory):
    """Our first and last frame of the whole clip: {frame: (our PLY frame, {suffix: (our file, its decode)})}."""
    command = _splat_transform_or_skip()
    out = tmp_path_factory.mktemp("decoded")
    result = bake_clip(_clip(inputs, out, ply=True, spz=True, compressed_ply=True), QUIET)
    frames = {}
    for frame in (result.frame_start, result.frame_end):
        ours = {}
        for suffix in (".spz", ".compressed.ply"):
            src = out / f"speech_{frame:06d}{suffix}"
            dst = out / f"decoded_{frame}{suffix.replace('.', '_')}.ply"
            run = subprocess.run(command + ["-q", "-w", str(src), str(dst)], capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr
            ours[suffix] = (src, read_ply(dst))
        frames[frame] = (read_ply(out / f"speech_{frame:06d}.ply"), ours)
    assert result.frame_end - result.frame_start == 29
    return frames


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def _quats(frame) -> np.ndarray:
    q = np.stack([frame.column(f"rot_{i}") for i in range(4)], axis=1).astype(np.float64)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _assert_rotations(ours, theirs, step: float) -> None:
    """Smallest-three rotations: the three stored components within `step`, the largest (rebuilt from the unit
    norm, at least 1/2) within what their errors carry into it."""
    q, d = _quats(ours), _quats(theirs)
    d *= np.sign(np.sum(q * d, axis=1))[:, None]  # q and -q are one rotation
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(len(q))
    stored = np.ones_like(q, dtype=bool)
    stored[rows, largest] = False
    err = np.abs(q - d)
    assert err[stored].max() <= step + FLOAT32_SLACK
    others = np.where(stored, np.abs(q), 0.0).sum(axis=1)
    bound = (others * step + 3 * step ** 2) / np.abs(q[rows, largest])
    assert np.all(err[rows, largest] <= bound + FLOAT32_SLACK)


def _assert_close(name: str, ours: np.ndarray, theirs: np.ndarray, bound) -> None:
    err = np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))
    assert np.all(err <= np.asarray(bound) + FLOAT32_SLACK), f"{name}: error {err.max():.3g} over {np.max(bound):.3g}"


def _rest(frame) -> np.ndarray:
    return np.stack([frame.column(n) for n in frame.names if n.startswith("f_rest_")], axis=1).astype(np.float64)


def test_splat_transform_decodes_our_spz_within_its_quantisation(decoded):
    for ply, formats in decoded.values():
        src, spz = formats[".spz"]
        header = gzip.decompress(src.read_bytes())[:16]
        magic, version, count, degree, fractional_bits, flags, _ = struct.unpack("<IIIBBBB", header)
        assert (magic, version, count, degree, flags) == (0x5053474E, 3, len(ply.rows), 1, 0)
        assert spz.names[:3] == ["x", "y", "z"] and len(spz.rows) == len(ply.rows)
        # Positions: 24-bit fixed point with the header's fractional bits (the file is right-up-back; the
        # reader converts back to the PLY's axes).
        for axis in "xyz":
            _assert_close(axis, ply.column(axis), spz.column(axis), 0.5 / (1 << fractional_bits))
        # Alpha: sigmoid * 255 in a byte.
        _assert_close("opacity", _sigmoid(ply.column("opacity")), _sigmoid(spz.column("opacity")), 0.5 / 255)
        # Colour: f_dc * 0.15 * 255 + 127.5 in a byte (clamped to what a byte holds).
        lo, hi = -127.5 / (0.15 * 255), 127.5 / (0.15 * 255)
        for c in range(3):
            name = f"f_dc_{c}"
            _assert_close(name, np.clip(ply.column(name), lo, hi), spz.column(name), 0.5 / (0.15 * 255))
        # Log scales: (s + 10) * 16 in a byte.
        for c in range(3):
            name = f"scale_{c}"
            _assert_close(name, np.clip(ply.column(name), -10, 255 / 16 - 10), spz.column(name), 0.5 / 16)
        # Rotations (version 3): 9-bit magnitudes over 1/sqrt(2).
        _assert_rotations(ply, spz, np.sqrt(0.5) * 0.5 / 511)
        # SH: x * 128 + 128 rounded, then to 5 bits (degree 1: steps of 8 of 256), clamped to a byte.
        _assert_close("f_rest", np.clip(_rest(ply), -1, 127 / 128), _rest(spz), (8 / 2 + 0.5) / 128)


def _chunk_bounds(values: np.ndarray, bits: int) -> np.ndarray:
    """Per value, half a quantisation step of its 256-splat chunk's range at `bits` bits."""
    n = len(values)
    chunk = np.arange(n) // 256
    lo = np.array([values[chunk == c].min() for c in range(chunk.max() + 1)])
    hi = np.array([values[chunk == c].max() for c in range(chunk.max() + 1)])
    span = (hi - lo)[chunk]
    return np.where(span < 1e-5, span, span / (2 * ((1 << bits) - 1))) + 1e-7 * np.abs(values)


def test_splat_transform_decodes_our_compressed_ply_within_its_quantisation(decoded):
    for ply, formats in decoded.values():
        _, cply = formats[".compressed.ply"]
        assert len(cply.rows) == len(ply.rows)
        # Positions and log scales: 11, 10, 11 bits within each chunk's range.
        for names in (("x", "y", "z"), ("scale_0", "scale_1", "scale_2")):
            for name, bits in zip(names, (11, 10, 11)):
                values = ply.column(name).astype(np.float64)
                _assert_close(name, values, cply.column(name), _chunk_bounds(values, bits))
        # Colour: 8 bits within each chunk's colour range (colour = f_dc * SH_C0 + 0.5); opacity: sigmoid, 8 bits.
        for c in range(3):
            colour = ply.column(f"f_dc_{c}").astype(np.float64) * SH_C0 + 0.5
            _assert_close(f"f_dc_{c}", colour, cply.column(f"f_dc_{c}") * SH_C0 + 0.5, _chunk_bounds(colour, 8))
        _assert_close("opacity", _sigmoid(ply.column("opacity")), _sigmoid(cply.column("opacity")), 0.5 / 255)
        # Rotations: 10 bits of v / sqrt(2) + 1/2.
        _assert_rotations(ply, cply, 0.5 / 1023 / np.sqrt(0.5))
        # SH: value / 8 + 1/2 in 8 bits, read back at the bin's middle (the end bins at their ends).
        rest = np.clip(_rest(ply), -4, 4)
        step = 8 / 256
        _assert_close("f_rest", rest, _rest(cply), np.where(np.abs(rest) < 4 - step, step / 2, step))
