"""The OpenUSD export (`--usd`, emotalker.bake.usd; docs/exports.md, "OpenUSD"), read back with usd-core.

The shipped demo clip is baked with --ply --usd; usd-core opens the .usdc, the
validators of its UsdValidation registry (usd-core ships no usdchecker program)
report no errors, every time sample equals the PLY frame of that time within
half-precision rounding (or exactly, for the float positions), and UsdSkel's own
skinning of the proxy mesh gives FLAME's vertices. Skipped without usd-core
(the `usd` extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
from emotalker.bake.demo import DEMO_AVATAR, DEMO_SPEECH, demo_tracks
from emotalker.bake.ply import read_ply
from emotalker.core.base.errors import InputError

pxr = pytest.importorskip("pxr", reason="needs usd-core (the usd extra: pip install 'emotalker[usd]')")

HALF_ULP = 2.0 ** -11
"""Half precision's unit roundoff: rounding to the nearest half moves a normal number by at most this, relatively."""
HALF_SUBNORMAL = 2.0 ** -25
"""... and a number below half's smallest normal (2^-14) by at most half its subnormal step."""


@pytest.fixture(scope="module")
def demo_usd(tmp_path_factory):
    """The shipped demo clip (demo avatar, speech and tracks) baked with --ply --usd: (out, result)."""
    from emotalker.core.base.fileio import write_json

    out = tmp_path_factory.mktemp("demo_usd")
    write_json(out / "tracks.json", demo_tracks(125, 25.0))
    result = bake_clip(ClipSpec(avatar=str(DEMO_AVATAR), audio=str(DEMO_SPEECH), out=str(out),
                                tracks=str(out / "tracks.json"), ply=True, usd=True, name="demo"),
                       RunOptions(device="cpu", progress="none"))
    return out, result


def _assert_half(name: str, read: np.ndarray, exact: np.ndarray) -> None:
    """`read` is `exact` rounded to half precision: within half an ulp, relative (absolute below 2^-14)."""
    read, exact = np.asarray(read, np.float64), np.asarray(exact, np.float64)
    bound = np.maximum(np.abs(exact) * HALF_ULP, HALF_SUBNORMAL) * (1 + 1e-6)
    err = np.abs(read - exact)
    assert read.shape == exact.shape and np.all(err <= bound), f"{name}: error {err.max():.3g} beyond half rounding"


def test_usd_file_passes_every_validator_of_the_registry(demo_usd):
    from pxr import Usd, UsdValidation

    out, result = demo_usd
    stage = Usd.Stage.Open(str(out / "demo.usdc"))
    registry = UsdValidation.ValidationRegistry()
    validators = registry.GetOrLoadAllValidators()
    assert len(validators) >= 20  # the registry really ran (stage metadata, UsdSkel, UsdGeom, UsdMedia, ...)
    errors = [f"{e.GetValidator().GetMetadata().name}: {e.GetMessage()}"
              for e in UsdValidation.ValidationContext(validators).Validate(stage)
              if e.GetType() == UsdValidation.ValidationErrorType.Error]
    assert errors == []
    assert result.outputs["usd"] == str(out / "demo.usdc")


def test_usd_stage_is_y_up_metres_at_the_bakes_frame_rate(demo_usd):
    from pxr import Usd, UsdGeom, UsdMedia

    out, result = demo_usd
    stage = Usd.Stage.Open(str(out / "demo.usdc"))
    assert (UsdGeom.GetStageUpAxis(stage), UsdGeom.GetStageMetersPerUnit(stage)) == (UsdGeom.Tokens.y, 1.0)
    assert stage.GetTimeCodesPerSecond() == stage.GetFramesPerSecond() == 25.0
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (result.frame_start, result.frame_end) == (1, 124)
    assert stage.GetDefaultPrim().GetPath() == "/demo"
    audio = UsdMedia.SpatialAudio(stage.GetPrimAtPath("/demo/Dialogue"))
    path = audio.GetFilePathAttr().Get()
    assert not Path(path.path).is_absolute()  # relative to the .usdc, so the folder can move
    assert Path(path.resolvedPath).resolve() == DEMO_SPEECH.resolve()
    assert audio.GetStartTimeAttr().Get() == 1.0  # timeline frame 1 is the audio's start


def test_every_time_sample_is_the_ply_frame_of_that_time_within_half_rounding(demo_usd):
    from pxr import Usd, UsdVol

    out, result = demo_usd
    stage = Usd.Stage.Open(str(out / "demo.usdc"))
    prim = stage.GetPrimAtPath("/demo/Splats")
    assert prim.IsA(UsdVol.ParticleField3DGaussianSplat)
    attrs = {name: prim.GetAttribute(name) for name in ("positions", "orientationsh", "scalesh", "opacitiesh",
                                                         "radiance:sphericalHarmonicsCoefficientsh")}
    frames = list(range(result.frame_start, result.frame_end + 1))
    for attr in attrs.values():
        assert attr.GetTimeSamples() == [float(f) for f in frames]
    degree = prim.GetAttribute("radiance:sphericalHarmonicsDegree").Get()
    for frame in frames:
        ply = read_ply(out / f"demo_{frame:06d}.ply")
        raw = ply.raw()
        assert degree == ply.sh_degree and len(ply.rows) == result.n_gaussians
        read = {name: np.asarray(attr.Get(frame), np.float64) for name, attr in attrs.items()}
        assert np.array_equal(read["positions"], ply.rows[:, 0:3])  # float, as the PLY
        quats = raw["quats"] / np.linalg.norm(raw["quats"], axis=1, keepdims=True)
        _assert_half("orientations", read["orientationsh"], quats[:, [1, 2, 3, 0]])  # Vt's order: x y z w
        _assert_half("scales", read["scalesh"], np.exp(raw["log_scales"]))
        _assert_half("opacities", read["opacitiesh"], 1 / (1 + np.exp(-raw["opacity_logits"])))
        _assert_half("sh", read["radiance:sphericalHarmonicsCoefficientsh"], raw["sh"].reshape(-1, 3))


def test_usdskel_skins_the_proxy_mesh_as_flame_does(demo_usd):
    """UsdSkel's own deformation (shapes, then skinning) of the proxy equals FlameRig's vertices."""
    import torch
    from pxr import Gf, Usd, UsdGeom, UsdSkel

    from emotalker.bake.engine import FlameCurves
    from emotalker.core.models.bundle import AvatarBundle
    from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig

    out, _ = demo_usd
    stage = Usd.Stage.Open(str(out / "demo.usdc"))
    assert UsdSkel.BakeSkinning(UsdSkel.Root(stage.GetPrimAtPath("/demo/Rig")), Gf.Interval(1, 124))
    proxy = UsdGeom.Mesh(stage.GetPrimAtPath("/demo/Rig/Proxy"))
    flame = FlameModel.load(AvatarBundle.open(DEMO_AVATAR).flame_path)
    curves = FlameCurves.load(out / "demo_flame.npz", flame.n_expr)
    frames = np.array([1, 40, 80, 124])
    rows = curves.rows(frames)
    t = lambda a: torch.as_tensor(a[rows], dtype=torch.float32)  # noqa: E731
    with torch.inference_mode():
        verts, _ = FlameRig(flame)(FlameParams(expr=t(curves.expr), jaw=t(curves.jaw), neck=t(curves.neck),
                                               eyes=t(curves.eyes), eyelids=t(curves.eyelids)))
    for i, frame in enumerate(frames):
        skinned = np.asarray(proxy.GetPointsAttr().Get(float(frame)))
        moved = np.abs(verts[i].numpy() - flame.v_template).max()
        assert moved > 1e-3  # the face really moves (so agreeing means something)
        assert np.abs(skinned - verts[i].numpy()).max() < 1e-6  # metres


def test_usd_resumes_from_its_samples_and_writes_the_same_bytes(demo_usd, tmp_path):
    """A bake stopped half way resumes from the frames' samples; the .usdc is the uninterrupted bake's bytes,
    and a killed assembly's temporary folder is cleared."""
    from emotalker.core.base.fileio import write_json

    out, _ = demo_usd
    resumed = tmp_path  # as deep as `out`: the audio's relative path is the same
    write_json(resumed / "tracks.json", demo_tracks(125, 25.0))
    clip = ClipSpec(avatar=str(DEMO_AVATAR), audio=str(DEMO_SPEECH), out=str(resumed),
                    tracks=str(resumed / "tracks.json"), usd=True, name="demo")
    run = RunOptions(device="cpu", progress="none")
    first = bake_clip(clip, run)
    for frame in range(60, 125):
        (resumed / "demo.usd-frames" / f"demo_{frame:06d}.npz").unlink()
    (resumed / "demo.usdc").unlink()
    stale = resumed / ".demo.usd.killed"  # what a bake killed while assembling leaves: a temporary folder
    stale.mkdir()
    (stale / "demo.usdc").write_bytes(b"PXR-USDC partial")
    again = bake_clip(clip, run)
    assert (first.written, again.written, again.skipped) == (124, 65, 59)
    assert not stale.exists() and not list(resumed.glob(".demo.usd.*"))
    assert (resumed / "demo.usdc").read_bytes() == (out / "demo.usdc").read_bytes()


def test_usd_without_usd_core_is_one_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pxr", None)  # import pxr now raises ImportError
    clip = ClipSpec(avatar=str(DEMO_AVATAR), audio=str(DEMO_SPEECH), out=str(tmp_path / "o"), emotion="happy",
                    usd=True)
    with pytest.raises(InputError, match=r"needs usd-core \(the usd extra\): python3 install.py --extras usd"):
        bake_clip(clip, RunOptions(device="cpu", progress="none"))
    assert not (tmp_path / "o").exists()


def test_a_batch_manifest_asks_for_usd_like_any_clip_field(tmp_path):
    from pxr import Usd

    from emotalker.cli.main import main

    manifest = tmp_path / "batch.json"
    manifest.write_text(json.dumps({"format": "emotalker-batch/1",
                                    "defaults": {"avatar": str(DEMO_AVATAR), "usd": True, "frames": "1:3",
                                                 "emotion": "sad"},
                                    "clips": [{"id": "line", "audio": str(DEMO_SPEECH)}]}))
    assert main(["bake-batch", str(manifest), "--progress", "none"]) == 0
    stage = Usd.Stage.Open(str(tmp_path / "bake" / "line" / "line.usdc"))
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (1, 3)
    assert stage.GetPrimAtPath("/line/Splats").GetAttribute("positions").GetTimeSamples() == [1.0, 2.0, 3.0]
