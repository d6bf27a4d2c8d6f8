"""How right is a sample dataset? Silhouettes, audio-mouth agreement and lip closures, with baselines.

    python benchmarks/sample_quality.py DATASET [--stride 1] [--json out.json]

For each clip: the alpha IoU of every frame against the rig re-rasterised from
the tracking (baseline: the tracking of 3 frames earlier, which shows how much
motion the measure sees), the Pearson correlation of the jaw opening with the
speech loudness (baseline: the same jaw against the loudness played backwards,
which keeps its statistics but not its timing),
and for each p, b, m the time to the nearest frame with the lips shut
(measured on the posed mesh).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotalker.core.datasets.dataset import Dataset  # noqa: E402
from emotalker.sample import checks  # noqa: E402
from emotalker.sample.visemes import speech_envelope  # noqa: E402


def shifted_iou(ds: Dataset, clip_id: str, shift: int, stride: int) -> np.ndarray:
    """IoU of frame t against the rig posed by the tracking of frame t - shift (a wrong-time baseline)."""
    from emotalker.core.rig.mesh_preview import rasterize

    model, tr, verts = ds.flame_model(), ds.tracking(clip_id), checks.posed_vertices(ds, clip_id)
    out = []
    for t in range(shift, len(tr), stride):
        fid, _ = rasterize(verts[t - shift], model.faces, tr.viewmat[t - shift].astype(np.float64), tr.K[t].astype(np.float64), ds.width, ds.height)
        a, b = ds.frame(clip_id, t)[..., 3] > 0.5, fid >= 0
        out.append((a & b).sum() / max(int((a | b).sum()), 1))
    return np.array(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--stride", type=int, default=1, help="check every n-th frame's silhouette")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import soundfile

    ds = Dataset.open(args.dataset)
    rows = []
    envs = {}
    for c in ds.clips:
        audio, sr = soundfile.read(str(ds.audio_path(c.id)), dtype="float32", always_2d=True)
        envs[c.id] = speech_envelope(audio.mean(1), sr, ds.n_frames(c.id), ds.fps, 0.04)
    for c in ds.clips:
        iou = checks.silhouette_iou(ds, c.id, args.stride)
        base_iou = shifted_iou(ds, c.id, 3, args.stride)
        r = checks.jaw_envelope_correlation(ds, c.id)
        r_base = float(np.corrcoef(ds.tracking(c.id).jaw[:, 0], envs[c.id][::-1])[0, 1])
        delays = [d for _, _, d in checks.bilabial_closure_delays(ds, c.id)] if "lips_upper" in ds.flame_model().regions else []
        rows.append({"clip": c.id, "iou_min": float(iou.min()), "iou_mean": float(iou.mean()),
                     "iou_baseline_shift3_mean": float(base_iou.mean()), "pearson": r, "pearson_baseline_reversed": r_base,
                     "bilabials": len(delays), "closure_delay_max_ms": 1000 * max(delays) if delays else None})
        print(f"{c.id:28s} IoU min {iou.min():.4f} mean {iou.mean():.4f} (3 frames late: {base_iou.mean():.4f})  "
              f"Pearson {r:.3f} (audio reversed: {r_base:.3f})  p/b/m {len(delays)}, "
              f"lips shut within {1000 * max(delays) if delays else float('nan'):.0f} ms")
    all_delays = [r["closure_delay_max_ms"] for r in rows if r["closure_delay_max_ms"] is not None]
    summary = {
        "clips": len(rows), "width": ds.width, "height": ds.height,
        "iou_min": min(r["iou_min"] for r in rows), "iou_mean": float(np.mean([r["iou_mean"] for r in rows])),
        "iou_baseline_shift3_mean": float(np.mean([r["iou_baseline_shift3_mean"] for r in rows])),
        "pearson_min": min(r["pearson"] for r in rows), "pearson_mean": float(np.mean([r["pearson"] for r in rows])),
        "pearson_baseline_mean": float(np.nanmean([r["pearson_baseline_reversed"] for r in rows])),
        "bilabials": int(sum(r["bilabials"] for r in rows)),
        "closure_delay_max_ms": max(all_delays) if all_delays else None,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
