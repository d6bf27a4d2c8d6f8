"""The avatar report with its video (`write_avatar_report`, for the CLI and the worker). The video: a few seconds of a held-out dataset clip's audio baked by `bake_clip` (A2E
drives the face, the clip's emotion and intensity Stage 2) from the clip's own tracked camera, as an MP4.

H.264 in MP4 (bake_clip's encoder): Debian's chromium 156 decodes it (tests/test_report.py checks the page
in it), as do Firefox and Safari.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

SECONDS = 3.0
SIDE = 192  # the longer side of the video: small and quick, the page stays light


def clip_camera(dataset, clip_id: str, side: int) -> dict:
    """The clip's first tracked camera scaled so the image's longer side is `side` (emotalker-camera/1)."""
    from emotalker.core.render.camera import Camera

    tracking = dataset.tracking(clip_id)
    scale = side / max(dataset.width, dataset.height)
    K = np.asarray(tracking.K[0], np.float64).copy()
    K[:2] *= scale
    width, height = max(1, round(dataset.width * scale)), max(1, round(dataset.height * scale))
    return Camera(np.asarray(tracking.viewmat[0], np.float64), K, width, height).to_dict()


def heldout_clip_video(avatar: Path, dataset_root: Path, clip_id: str, *, device: str = "auto",
                       seconds: float = SECONDS, side: int = SIDE) -> tuple[bytes, str]:
    """(MP4 bytes, "video/mp4") of the first `seconds` of the clip, baked into a temporary folder."""
    from emotalker.bake.clip import ClipSpec, RunOptions, bake_clip
    from emotalker.core.audio.waveform import duration_frames, load_audio
    from emotalker.core.base.fileio import write_json
    from emotalker.core.datasets.dataset import Dataset

    ds = Dataset.open(dataset_root)
    info = ds.clip(clip_id)
    audio = ds.audio_path(clip_id)
    last = max(1, min(duration_frames(len(load_audio(audio)), ds.fps), round(seconds * ds.fps)))
    with tempfile.TemporaryDirectory(prefix="emotalker-report-") as tmp:
        camera = Path(tmp) / "camera.json"
        write_json(camera, clip_camera(ds, clip_id, side))
        spec = ClipSpec(avatar=str(avatar), audio=str(audio), out=str(Path(tmp) / "bake"), emotion=info.emotion,
                        intensity=info.intensity, png=True, mp4=True, frames=f"1:{last}", fps=ds.fps,
                        camera=str(camera), name="clip")
        result = bake_clip(spec, RunOptions(device=device, progress="none"))
        return Path(result.outputs["mp4"]).read_bytes(), "video/mp4"


def write_avatar_report(avatar, dataset=None, out=None, *, device: str = "auto", frames: int = 8) -> Path:
    """core.evaluation.report.write_report with this module's held-out clip as its video; returns the page."""
    from functools import partial

    from emotalker.core.base.device import resolve_device
    from emotalker.core.evaluation.report import write_report

    dev = resolve_device(device)
    return write_report(avatar, dataset, out, clip_video=partial(heldout_clip_video, device=str(dev)), device=dev,
                        frames=frames)
