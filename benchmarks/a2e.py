"""A2E quality and speed on a dataset's held-out clips, against an always-the-training-mean baseline.

    python benchmarks/a2e.py [--dataset DATASET (default: emotalker-sample-default in the temp folder)] [--steps N] [--json out.json]

Trains the A2E model on the dataset's train split (timed: `train_minutes`),
then on the test split reports:
- lip_vertex_err_mm: mean L2 distance over the rig's lip vertices, posed by
  predicted vs tracked expression + jaw (head at rest), in millimetres; and
  baseline_lip_vertex_err_mm, the same for a model that always predicts the
  training mean (goal: ratio <= 0.5);
- jaw_corr: Pearson correlation of predicted and tracked jaw opening (rotation
  about x) over all test frames (goal >= 0.8);
- emotion_cos: for each emotional test clip, the cosine between the predicted
  emotional expression offset, mean over frames of A2E(audio, emotion, 3) -
  A2E(audio, neutral) on the clip's own audio, and the tracked one, the clip's
  mean expression minus the mean expression of the dataset's neutral clips
  (offsets are linear in intensity in MEAD-style data, and a cosine ignores
  scale, so clips at any level count); the mean over clips (goal >= 0.8);
- infer_fps: frames a second from 16 kHz samples to curves (features and model)
  on CPU, over the test clips joined into one long clip (goal >= 1000);
  model_fps: the model alone.
Timings come from a shared machine and are noisy: train_cpu_minutes (process
CPU time) says what the wall clock would on an idle machine with one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from emotalker.core.models.a2e import A2EModel, infer_curves, split_params  # noqa: E402
from emotalker.core.evaluation.a2e_metrics import cosine  # noqa: E402
from emotalker.core.audio.waveform import load_audio  # noqa: E402
from emotalker.core.audio.features import AudioFeaturizer  # noqa: E402
from emotalker.core.base.emotions import MAX_INTENSITY, NEUTRAL, one_hot  # noqa: E402
from emotalker.core.datasets.dataset import Dataset  # noqa: E402
from emotalker.core.training.a2e import TrainA2EConfig, prepare_clips, predict_clip, train_a2e  # noqa: E402

GOALS = {"lip_ratio": 0.5, "jaw_corr": 0.8, "emotion_cos": 0.8, "train_minutes": 15.0, "infer_fps": 1000.0}


def emotion_cos(model: A2EModel, dataset: Dataset, clips) -> tuple[float, dict]:
    """Mean cosine between predicted (intensity 3 vs neutral, same audio) and tracked emotional expression offsets."""
    neutral = [c for c in dataset.clips if c.emotion == "neutral"]
    if not neutral:
        return float("nan"), {}
    neutral_mean = np.mean([dataset.tracking(c.id).expr.mean(0) for c in neutral], axis=0)
    per_clip = {}
    for clip in clips:
        if clip.emotion == "neutral" or clip.intensity <= 0:
            continue
        expr_e, _, _ = split_params(predict_clip(model, clip, one_hot(clip.emotion), MAX_INTENSITY))
        expr_n, _, _ = split_params(predict_clip(model, clip, one_hot(NEUTRAL), 0.0))
        predicted = (expr_e - expr_n).mean(0).numpy()
        tracked = clip.params[:, : model.cfg.n_expr].mean(0) - neutral_mean
        per_clip[clip.id] = cosine(predicted, tracked)
    return (float(np.mean(list(per_clip.values()))) if per_clip else float("nan")), per_clip


def speed(model: A2EModel, dataset: Dataset, clips, fps: float, repeats: int = 3) -> tuple[float, float, int]:
    """(end-to-end frames/s from samples, model-only frames/s, frames) over the test audio joined into one clip."""
    samples = np.concatenate([load_audio(dataset.audio_path(c.id)) for c in clips])
    samples = np.tile(samples, max(1, int(np.ceil(60 * 16000 / len(samples)))))  # at least a minute
    w = one_hot("happy")
    infer_curves(model, samples[:16000], w, 2.0, fps)  # warm-up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        curves = infer_curves(model, samples, w, 2.0, fps)
        best = min(best, time.perf_counter() - t)
    T = len(curves["expr"])
    seq = torch.from_numpy(AudioFeaturizer(model.cfg.features)(samples, fps, T))
    wt, st = torch.from_numpy(w).expand(T, -1), torch.full((T,), 2.0)
    best_model = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(seq, wt, st)
        best_model = min(best_model, time.perf_counter() - t)
    return T / best, T / best_model, T


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=str(Path(tempfile.gettempdir()) / "emotalker-sample-default"), help="dataset folder (default: the shared sample)")
    ap.add_argument("--avatar", default=None, help="avatar folder to train into (default: a temporary one)")
    ap.add_argument("--steps", type=int, default=TrainA2EConfig.steps)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this small model on a busy machine)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dataset = Dataset.open(args.dataset)
    tmp = None
    if args.avatar is None:
        tmp = tempfile.TemporaryDirectory(prefix="a2e-bench-")
        args.avatar = tmp.name
    t, cpu = time.perf_counter(), time.process_time()
    train_a2e(args.dataset, args.avatar, TrainA2EConfig(steps=args.steps), device="cpu", progress="none")
    train_minutes = (time.perf_counter() - t) / 60
    # CPU time of this process: what the wall clock would read on an idle machine, with --threads 1.
    train_cpu_minutes = (time.process_time() - cpu) / 60

    model, meta = A2EModel.load(Path(args.avatar) / "a2e.safetensors")
    test_info = dataset.split("test")
    test = prepare_clips(dataset, test_info, AudioFeaturizer(model.cfg.features))
    m = meta["metrics"]  # computed on the test split at the end of training
    emo_cos, per_clip = emotion_cos(model, dataset, test)
    infer_fps, model_fps, speed_frames = speed(model, dataset, test_info, dataset.fps)
    train_frames = sum(dataset.n_frames(c.id) for c in dataset.split("train"))

    result = {
        "dataset": str(args.dataset),
        "train_clips": len(dataset.split("train")),
        "train_frames": train_frames,
        "test_clips": len(test),
        "test_frames": m["frames"],
        "steps": args.steps,
        "threads": args.threads,
        "lip_vertex_err_mm": m["lip_vertex_err_mm"],
        "baseline_lip_vertex_err_mm": m["baseline_lip_vertex_err_mm"],
        "lip_ratio": m["lip_vertex_err_mm"] / m["baseline_lip_vertex_err_mm"],
        "jaw_corr": m["jaw_corr"],
        "emotion_cos": emo_cos,
        "emotion_cos_per_clip": per_clip,
        "train_minutes": train_minutes,
        "train_cpu_minutes": train_cpu_minutes,
        "load_average": os.getloadavg()[0],
        "infer_fps": infer_fps,
        "model_fps": model_fps,
        "speed_frames": speed_frames,
    }
    verdict = {
        "lip_ratio": result["lip_ratio"] <= GOALS["lip_ratio"],
        "jaw_corr": result["jaw_corr"] >= GOALS["jaw_corr"],
        "emotion_cos": result["emotion_cos"] >= GOALS["emotion_cos"],
        "train_minutes": result["train_minutes"] <= GOALS["train_minutes"],
        "infer_fps": result["infer_fps"] >= GOALS["infer_fps"],
    }
    result["goals"] = GOALS
    result["meets_goals"] = verdict

    print(f"A2E on {args.dataset}: {result['train_clips']} train clips ({train_frames} frames), "
          f"{result['test_clips']} test clips ({m['frames']} frames), {args.steps} steps, {args.threads} thread(s)")
    print(f"  lip vertex error   {m['lip_vertex_err_mm']:.3f} mm   baseline (training mean) {m['baseline_lip_vertex_err_mm']:.3f} mm"
          f"   ratio {result['lip_ratio']:.3f} (goal <= {GOALS['lip_ratio']})")
    print(f"  jaw correlation    {m['jaw_corr']:.3f} (goal >= {GOALS['jaw_corr']})")
    print(f"  emotion cosine     {emo_cos:.3f} over {len(per_clip)} emotional test clips (goal >= {GOALS['emotion_cos']})")
    print(f"  train time         {train_minutes:.2f} min wall, {train_cpu_minutes:.2f} min CPU, "
          f"load average {result['load_average']:.1f} (goal <= {GOALS['train_minutes']})")
    print(f"  inference          {infer_fps:.0f} frames/s end to end, {model_fps:.0f} frames/s model only, "
          f"over {speed_frames} frames (goal >= {GOALS['infer_fps']:.0f})")
    print("  goals met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
