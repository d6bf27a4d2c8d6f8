"""Measurements that a sample dataset is right: silhouettes, audio-mouth agreement, lip closures.

They read only the dataset (frames, tracking, audio, the rig) and each clip's
meta.json (the phonemes espeak-ng reported), so they check what was written,
not what the generator meant to write. Used by tests and benchmarks/sample_quality.py.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.base.fileio import read_json
from emotalker.core.datasets.dataset import Dataset

from emotalker.sample.visemes import BILABIALS, speech_envelope


def posed_vertices(ds: Dataset, clip_id: str) -> np.ndarray:
    """The rig posed by the clip's tracking: [T,V,3] float64 (FLAME space)."""
    return ds.tracking(clip_id).posed_vertices(ds.flame_model())


def silhouette_iou(ds: Dataset, clip_id: str, stride: int = 1) -> np.ndarray:
    """IoU of each frame's alpha (> 0.5) with the rig's silhouette re-rasterised from the tracking: [n]."""
    from emotalker.core.rig.mesh_preview import rasterize

    model, tr = ds.flame_model(), ds.tracking(clip_id)
    verts = tr.posed_vertices(model)
    out = []
    for t in range(0, len(tr), stride):
        fid, _ = rasterize(verts[t], model.faces, tr.viewmat[t].astype(np.float64), tr.K[t].astype(np.float64), ds.width, ds.height)
        a, b = ds.frame(clip_id, t)[..., 3] > 0.5, fid >= 0
        out.append((a & b).sum() / max(int((a | b).sum()), 1))
    return np.array(out)


def jaw_envelope_correlation(ds: Dataset, clip_id: str, window: float = 0.04) -> float:
    """Pearson correlation of the jaw opening with the RMS loudness of audio.wav at the frame times."""
    import soundfile

    tr = ds.tracking(clip_id)
    audio, sr = soundfile.read(str(ds.audio_path(clip_id)), dtype="float32", always_2d=True)
    env = speech_envelope(audio.mean(1), sr, len(tr), ds.fps, window)
    return float(np.corrcoef(tr.jaw[:, 0], env)[0, 1])


def _lip_midline(model, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    if "lips_upper" not in model.regions or "lips_lower" not in model.regions:
        raise KeyError("the dataset's rig has no lips_upper / lips_lower regions")
    v0 = model.v_template
    up = model.regions["lips_upper"][np.abs(v0[model.regions["lips_upper"], 0]) < half_width]
    lo = model.regions["lips_lower"][np.abs(v0[model.regions["lips_lower"], 0]) < half_width]
    return up, lo


def lip_gaps(ds: Dataset, clip_id: str, half_width: float = 0.004) -> np.ndarray:
    """Opening of the lips on the face's midline per frame [T] (metres): the lowest upper-lip vertex
    above the highest lower-lip vertex of the posed rig, along the head's own up axis (so that the
    neck's rotation cancels). Uses the rig's `lips_upper` and `lips_lower` regions."""
    import torch

    from emotalker.core.rig.flame import axis_angle_to_matrix

    up, lo = _lip_midline(ds.flame_model(), half_width)
    verts = posed_vertices(ds, clip_id)
    head_up = axis_angle_to_matrix(torch.from_numpy(ds.tracking(clip_id).neck).double()).numpy()[:, :, 1]  # [T,3]
    height = np.einsum("tvc,tc->tv", verts, head_up)
    return height[:, up].min(1) - height[:, lo].max(1)


def rest_lip_gap(ds: Dataset, half_width: float = 0.004) -> float:
    """The midline lip opening of the rig at rest (lips together)."""
    model = ds.flame_model()
    up, lo = _lip_midline(model, half_width)
    return float(model.v_template[up, 1].min() - model.v_template[lo, 1].max())


def bilabial_closure_delays(ds: Dataset, clip_id: str, tolerance: float = 0.0005) -> list[tuple[str, float, float]]:
    """For each p, b, m espeak-ng reported: (phoneme, its time, seconds to the nearest frame with the lips
    shut, i.e. the midline opening within `tolerance` of the rest opening; inf if none)."""
    meta = read_json(ds.root / "clips" / clip_id / "meta.json", "clip metadata")
    gaps = lip_gaps(ds, clip_id)
    shut = np.flatnonzero(gaps <= rest_lip_gap(ds) + tolerance) / ds.fps
    out = []
    for name, when in meta["phonemes"]:
        if name in BILABIALS:
            out.append((name, float(when), float(np.abs(shut - when).min()) if len(shut) else float("inf")))
    return out
