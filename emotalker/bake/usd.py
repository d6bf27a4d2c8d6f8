"""OpenUSD export: one `<name>.usdc` a clip with the splats, the rig and the audio (docs/exports.md, "OpenUSD").

The layer (needs the `usd` extra, usd-core) holds, under the default prim `/<name>`:

- `Splats`: a `UsdVol.ParticleField3DGaussianSplat` whose positions, orientations,
  scales, opacities, SH radiance and extent are time-sampled, one sample a
  timeline frame, in FLAME's space (metres, +Y up; the PLY frame's `--up-axis`
  does not apply: the stage says its axis and unit, and DCCs convert). Values
  are the PLY frame's in USD's conventions: linear scales, sigmoid opacities,
  unit xyzw quaternions, SH coefficients particle-major. Positions are float
  (`positions`); the rest half (`orientationsh`, `scalesh`, `opacitiesh`,
  `radiance:sphericalHarmonicsCoefficientsh`), which renders the same
  (benchmarks/export.py measures it);
- `Rig`: the proxy mesh, its expression shapes and a skeleton animated from the
  FLAME curves (UsdSkel; emotalker.bake.usd_rig), for DCCs that know no splats;
- `Dialogue`: a `UsdMedia.SpatialAudio` playing the clip's audio (a path
  relative to the .usdc) from timeline frame 1, where the audio starts.

Time codes are timeline frames (timeCodesPerSecond = framesPerSecond = the
bake's fps; start/end time codes = the frame range).

Resume: one file holds the whole clip, so the frame loop writes each frame's
samples (the values the layer will hold, already in half where it stores half)
to `<out>/<name>.usd-frames/<name>_NNNNNN.npz`, atomically, as every other
per-frame output; a re-run resumes from them as from PLY frames. After the loop
the .usdc is assembled from those files (a few frames in memory at a time),
written to a temporary file and moved into place, so it is whole or absent.
The samples are kept (like the PNG frames of an MP4): delete the folder when
done; a later re-run then bakes them again.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import FILE_MODE

USD_FORMAT = "emotalker-usd/1"
SAMPLES_FORMAT = "emotalker-usd-samples/1"
HALF_MAX = float(np.finfo(np.float16).max)
SAVE_EVERY = 16
"""Frames of samples held in memory between the assembly's incremental saves."""


def require_usd() -> None:
    """usd-core importable, or an InputError saying how to install it."""
    # The audio's start is a timecode, which needs crate 0.9: write that version from the start rather than
    # have USD warn, on every file, that it upgrades (read once, at the first crate write), and without the
    # banner USD prints for a setting changed from its default. A user's own setting is left alone.
    if "USD_WRITE_NEW_USDC_FILES_AS_VERSION" not in os.environ:
        os.environ["USD_WRITE_NEW_USDC_FILES_AS_VERSION"] = "0.9.0"
        os.environ.setdefault("TF_ENV_SETTING_ALERTS_ENABLED", "0")
    try:
        from pxr import Usd  # noqa: F401
    except ImportError:
        raise InputError("--usd", "needs usd-core (the usd extra): python3 install.py --extras usd, "
                                  "or pip install 'emotalker[usd]'") from None


def usd_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / f"{name}.usdc"


def samples_folder(out_dir: str | os.PathLike, name: str) -> Path:
    """Where the per-frame samples the .usdc is assembled from are kept."""
    return Path(out_dir) / f"{name}.usd-frames"


def samples_from_rows(rows: np.ndarray) -> dict[str, np.ndarray]:
    """A frame's PLY rows [N, P] (y up) -> the USD values: positions float32 [N,3], orientations float16 [N,4]
    (unit, xyzw), scales float16 [N,3] (linear), opacities float16 [N], sh float16 [N*K,3] (particle-major),
    extent float32 [2,3] (every kernel's 3-sigma box)."""
    from emotalker.bake.ply import PlyFrame, degree_for_columns, ply_property_names

    raw = PlyFrame(ply_property_names(degree_for_columns(rows.shape[1])), rows).raw("y")
    quats = raw["quats"] / np.maximum(np.linalg.norm(raw["quats"], axis=1, keepdims=True), 1e-30)
    scales = np.minimum(np.exp(raw["log_scales"]), HALF_MAX)  # beyond half's range: no head is 65 km wide
    opacities = 0.5 * (1.0 + np.tanh(0.5 * raw["opacity_logits"]))
    positions = np.ascontiguousarray(rows[:, 0:3], dtype=np.float32)
    reach = 3.0 * scales.max(axis=1, keepdims=True)
    extent = np.stack([(positions - reach).min(axis=0), (positions + reach).max(axis=0)]).astype(np.float32)
    return {"positions": positions, "orientations": quats[:, [1, 2, 3, 0]].astype(np.float16),
            "scales": scales.astype(np.float16), "opacities": opacities.astype(np.float16),
            "sh": raw["sh"].reshape(-1, 3).astype(np.float16), "extent": extent}


def write_samples(path: str | os.PathLike, samples: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a handle: np.savez would append .npz to the temporary name
        np.savez(fh, format=np.str_(SAMPLES_FORMAT), **samples)


def read_samples(path: str | os.PathLike, count: int, sh_degree: int) -> dict[str, np.ndarray]:
    """A frame's samples as `write_samples` wrote them; InputError naming the file when they do not fit the clip."""
    from emotalker.core.base.fileio import read_npz

    arrays = read_npz(path, "USD frame samples")
    k = (sh_degree + 1) ** 2
    shapes = {"positions": (count, 3), "orientations": (count, 4), "scales": (count, 3), "opacities": (count,),
              "sh": (count * k, 3), "extent": (2, 3)}
    if str(arrays.get("format", "")) != SAMPLES_FORMAT:
        raise InputError(path, f"not {SAMPLES_FORMAT} samples; delete the folder and bake again")
    for key, shape in shapes.items():
        if key not in arrays or arrays[key].shape != shape:
            got = list(arrays[key].shape) if key in arrays else None
            raise InputError(path, f"{key!r} must have shape {list(shape)}, got {got}; delete the folder and bake again")
    return arrays


def usd_sink(out_dir: str | os.PathLike, name: str, *, sh_degree: int, count: int,
             to_gaussians: Callable[[Any], Any] = lambda item: item):
    """A FrameSink writing each frame's USD samples to `<out_dir>/<name>.usd-frames/<name>_NNNNNN.npz`."""
    from emotalker.bake.ply import frame_rows
    from emotalker.bake.sequence import FrameSink

    def write(item: Any, tmp: Path) -> None:
        gaussians = to_gaussians(item)
        if len(gaussians) != count:
            raise ValueError(f"a frame has {len(gaussians)} Gaussians, the sequence {count}")
        write_samples(tmp, samples_from_rows(frame_rows(gaussians, sh_degree=sh_degree, up_axis="y")))

    return FrameSink("usd", samples_folder(out_dir, name), f"{name}_{{frame:06d}}.npz", write)


@dataclass(frozen=True)
class UsdClip:
    """What the .usdc of a clip is made of (besides the per-frame samples)."""

    out: Path
    name: str
    frames: tuple[int, int]
    fps: float
    count: int
    sh_degree: int
    audio: str | None
    """The audio's path relative to `out` (None: no audio prim)."""
    flame: Any
    """The avatar's FlameModel (the proxy mesh and skeleton)."""
    curves: Any
    """The clip's FlameCurves (the skeleton's animation and the shapes' weights)."""


def write_usd(clip: UsdClip) -> Path:
    """Assemble `<out>/<name>.usdc` from the frames' samples, atomically; returns its path.

    The layer is created in a temporary folder beside it and saved every SAVE_EVERY frames: crate appends
    each save's new values to the file and keeps only their offsets, so memory stays bounded however long
    the clip (a 20k-Gaussian SH3 clip holds 2.5 MB a frame). Then the file is moved into place."""
    require_usd()
    path = usd_path(clip.out, clip.name)
    for stale in path.parent.glob(f".{path.stem}.usd.*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.stem}.usd.", dir=path.parent))
    try:
        tmp = scratch / path.name
        _author(clip, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _author(clip: UsdClip, tmp: Path) -> None:
    """Write the whole layer to `tmp` (its stage is gone when this returns)."""
    from pxr import Sdf, Usd, UsdGeom

    from emotalker.bake.usd_rig import define_rig

    stage = Usd.Stage.CreateNew(str(tmp))
    if not stage:
        raise OSError(f"USD could not create {tmp}")
    _stage_metadata(stage, clip)
    root = UsdGeom.Xform.Define(stage, Sdf.Path(f"/{_identifier(clip.name)}"))
    stage.SetDefaultPrim(root.GetPrim())
    define_rig(stage, root.GetPath().AppendChild("Rig"), clip.flame, clip.curves, clip.frames)
    if clip.audio is not None:
        _define_audio(stage, root.GetPath().AppendChild("Dialogue"), clip)
    _define_splats(stage, root.GetPath().AppendChild("Splats"), clip)
    if not stage.GetRootLayer().Save():
        raise OSError(f"USD could not write {tmp}")


def _stage_metadata(stage, clip: UsdClip) -> None:
    from pxr import UsdGeom

    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)  # FLAME space: +Y up, metres
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.SetTimeCodesPerSecond(clip.fps)
    stage.SetFramesPerSecond(clip.fps)
    stage.SetStartTimeCode(clip.frames[0])
    stage.SetEndTimeCode(clip.frames[1])
    stage.GetRootLayer().customLayerData = {"emotalker": {"format": USD_FORMAT, "frame_start": clip.frames[0],
                                                         "frame_end": clip.frames[1], "count": clip.count,
                                                         "sh_degree": clip.sh_degree}}


def _define_splats(stage, path, clip: UsdClip) -> None:
    """The ParticleField3DGaussianSplat with one sample of every attribute a frame, read one frame at a time."""
    from pxr import UsdGeom, UsdVol, Vt

    splats = UsdVol.ParticleField3DGaussianSplat.Define(stage, path)
    prim = splats.GetPrim()
    UsdGeom.Imageable(prim).CreatePurposeAttr(UsdGeom.Tokens.render)  # the rig's mesh is its proxy
    attrs = {
        "positions": (UsdVol.ParticleFieldPositionAttributeAPI(prim).CreatePositionsAttr(), Vt.Vec3fArray),
        "orientations": (UsdVol.ParticleFieldOrientationAttributeAPI(prim).CreateOrientationshAttr(),
                         Vt.QuathArray),
        "scales": (UsdVol.ParticleFieldScaleAttributeAPI(prim).CreateScaleshAttr(), Vt.Vec3hArray),
        "opacities": (UsdVol.ParticleFieldOpacityAttributeAPI(prim).CreateOpacitieshAttr(), Vt.HalfArray),
        "sh": (UsdVol.ParticleFieldSphericalHarmonicsAttributeAPI(prim)
               .CreateRadianceSphericalHarmonicsCoefficientshAttr(), Vt.Vec3hArray),
        "extent": (splats.CreateExtentAttr(), Vt.Vec3fArray),
    }
    UsdVol.ParticleFieldSphericalHarmonicsAttributeAPI(prim).CreateRadianceSphericalHarmonicsDegreeAttr(
        clip.sh_degree)
    folder = samples_folder(clip.out, clip.name)
    for i, frame in enumerate(range(clip.frames[0], clip.frames[1] + 1)):
        samples = read_samples(folder / f"{clip.name}_{frame:06d}.npz", clip.count, clip.sh_degree)
        for key, (attr, array) in attrs.items():
            attr.Set(array.FromNumpy(np.ascontiguousarray(samples[key])), float(frame))
        if i % SAVE_EVERY == SAVE_EVERY - 1 and not stage.GetRootLayer().Save():
            raise OSError(f"USD could not write {stage.GetRootLayer().realPath}")
    rig_path = path.GetParentPath().AppendChild("Rig").AppendChild("Proxy")
    UsdGeom.Imageable(prim).CreateProxyPrimRel().SetTargets([rig_path])


def _define_audio(stage, path, clip: UsdClip) -> None:
    from pxr import Sdf, UsdMedia

    audio = UsdMedia.SpatialAudio.Define(stage, path)
    audio.CreateFilePathAttr(Sdf.AssetPath(Path(clip.audio).as_posix()))
    audio.CreateAuralModeAttr(UsdMedia.Tokens.nonSpatial)
    audio.CreatePlaybackModeAttr(UsdMedia.Tokens.onceFromStart)
    audio.CreateStartTimeAttr(Sdf.TimeCode(1.0))  # timeline frame 1 is the audio's start


def _identifier(name: str) -> str:
    """`name` as a USD prim name (letters, digits, '_'; not starting with a digit)."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return ident if re.match(r"[A-Za-z_]", ident) else f"_{ident}"
