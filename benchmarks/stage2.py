"""Stage 2 quality (ablations, held-out intensities) and speed.

    python benchmarks/stage2.py --json out.json [--dataset DIR --avatar DIR] [--skip-quality] [--grid PNG]

Speed (always; the machine may be shared, so the figures are noisy; medians):
  deform_fps          Stage 2 alone a frame, 20,000 face Gaussians, CPU: mesh cue, tokens,
                      attention network, offsets applied to Stage 1's Gaussians   (goal >= 100)
  deform_fps_1thread  the same with torch limited to one thread
  network_fps         the attention network alone (offsets from dM)
  stage1_fps          baseline in the same run: Stage 1's own evaluation of the same frame
Quality (with --avatar: a bundle holding Stage 1, and A2E for the A2E-driven figure, trained
on --dataset; Stage 2 is trained here twice, with and without the null token):
  psnr_full               Stage 1 + Stage 2 on the test clips at intensity 3 (tracking-driven)
  psnr_stage1_only        Stage 1 alone on the same frames (`--no-emotion`)  (goal: full - this >= 1 dB)
  psnr_no_null            Stage 2 trained with --no-null-token, same frames
  psnr_trained_levels     Stage 1 + 2 on the emotional test clips at levels 1-3
  psnr_heldout_intensity  Stage 1 + 2 on the held-out clips at 1.5 and 2.5  (goal: within 1 dB of the above)
  psnr_full_a2e           Stage 1 + 2 on the intensity-3 clips driven by A2E from the audio
  train_minutes[_no_null] Stage 2 training time on this machine
--grid PNG writes the README figure: emotions down, intensity 0..3 across, one frame of a
held-out clip's audio (A2E-driven when the bundle has A2E); from the Stage 2 trained here, or
with --skip-quality from the --avatar bundle's own Stage 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import emotalker  # noqa: E402,F401  (before torch: it sets OpenMP's wait policy, docs/renderer.md)
import torch  # noqa: E402
from emotalker.core.base.emotions import EMOTIONS, one_hot, parse_mix  # noqa: E402
from emotalker.core.models.avatar import Avatar, render_avatar  # noqa: E402
from emotalker.core.models.bundle import AvatarBundle  # noqa: E402
from emotalker.core.models.emotion_deformer import (EmotionConfig, EmotionDeformer, EmotionInputs, apply_offsets,  # noqa: E402
                                                    mesh_cue)
from emotalker.core.rig.flame import FlameModel, FlameParams  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed(flame_path: Path | None, n: int, repeats: int) -> dict:
    """Per-frame timings of Stage 2 (and Stage 1 as the baseline) with n face Gaussians."""
    from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes

    if flame_path is not None and flame_path.is_file():
        rig, rig_name = FlameModel.load(flame_path), str(flame_path)
    else:
        from emotalker.sample.generate import default_head

        rig, rig_name = default_head(), "procedural default head"
    stage1 = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=n, n_teeth=300)).eval()
    audio_dim = 1600  # the default log-mel window: 5 frames x 4 samples x 80 bands
    torch.manual_seed(0)
    model = EmotionDeformer(EmotionConfig(n_gaussians=stage1.n_gaussians, audio_dim=audio_dim)).eval()
    with torch.no_grad():  # trained-like heads (zero heads would be as fast, but be honest)
        torch.nn.init.normal_(model.head[2].weight, std=0.1)
        model.null.normal_()
    E = rig.n_expr
    params = FlameParams(expr=torch.randn(1, E) * 0.5, jaw=torch.tensor([[0.15, 0.0, 0.0]]),
                         neck=torch.tensor([[0.05, 0.1, 0.0]]))
    w = torch.from_numpy(parse_mix("happy=0.7,surprised=0.3"))
    inputs = EmotionInputs(w, 2.5, blink=0.2, audio=torch.randn(audio_dim), camera=torch.tensor([0.0, 0.0, 1.0]))
    out = {"rig": rig_name, "n_face_gaussians": stage1.n_gaussians, "n_teeth": stage1.n_teeth,
           "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}
    with torch.inference_mode():
        g1 = stage1(params)[0]
        dM = mesh_cue(stage1, params)[0]

        def stage2_alone():
            apply_offsets(g1, model.offsets(mesh_cue(stage1, params)[0], inputs))

        t1 = median_time(lambda: stage1(params), repeats)
        t2 = median_time(stage2_alone, repeats)
        tn = median_time(lambda: model.offsets(dM, inputs), repeats)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t2_1 = median_time(stage2_alone, repeats)
        finally:
            torch.set_num_threads(threads)
    out.update({"deform_fps": 1 / t2, "deform_fps_1thread": 1 / t2_1, "network_fps": 1 / tn, "stage1_fps": 1 / t1,
                "deform_ms": 1e3 * t2, "network_ms": 1e3 * tn, "stage1_ms": 1e3 * t1})
    return out


def quality(dataset_root: Path, avatar: Path, steps: int, stride: int, workdir: Path, backend: str) -> dict:
    """Train Stage 2 (with and without the null token) on copies of `avatar`; evaluate the ablations."""
    from dataclasses import replace

    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.datasets.emotion_frames import EmotionFrames, a2e_params
    from emotalker.core.evaluation.emotion import clip_groups, evaluate_emotion
    from emotalker.core.training.emotion import TrainEmotionConfig, train_emotion

    ds = Dataset.open(dataset_root)
    groups = clip_groups(ds)
    neutral_info = AvatarBundle.open(avatar).manifest()["stages"]["neutral"]
    resolution = max(neutral_info["resolution"]) if neutral_info.get("resolution") else None
    cfg = TrainEmotionConfig(steps=steps, resolution=resolution, eval_stride=stride, backend=backend,
                             background=tuple(neutral_info.get("background", (1.0, 1.0, 1.0))))
    out: dict = {"steps": steps, "resolution": resolution, "eval_stride": stride,
                 "clips": {k: v for k, v in groups.items() if k != "all"}}
    models = {}
    for name, use_null in (("full", True), ("no_null", False)):
        copy = workdir / name
        shutil.copytree(avatar, copy, dirs_exist_ok=True)
        metrics = train_emotion(dataset_root, copy, replace(cfg, model=replace(cfg.model, use_null=use_null)), device="cpu", progress="none")
        out["train_minutes" + ("" if use_null else "_no_null")] = metrics["train_minutes"]
        out["train_seconds_per_step" + ("" if use_null else "_no_null")] = metrics["train_seconds_per_step"]
        models[name] = Avatar.open(copy).stage2
    bundle = AvatarBundle.open(workdir / "full")
    stage1 = Avatar.open(bundle, use_emotion=False).stage1
    features = models["full"].cfg.features

    def frames(ids, override=None):
        return EmotionFrames(ds, ids, features, resolution, cfg.background, stride=stride, params_override=override)

    def psnr(model, f):
        return evaluate_emotion(Avatar(stage1, model), f, backend=backend)["psnr"]

    if groups["intensity3"]:
        f3 = frames(groups["intensity3"])
        out["psnr_full"] = psnr(models["full"], f3)
        out["psnr_stage1_only"] = psnr(None, f3)
        out["psnr_no_null"] = psnr(models["no_null"], f3)
        out["gain_full_over_stage1_db"] = out["psnr_full"] - out["psnr_stage1_only"]
        if bundle.has_stage("a2e"):
            from emotalker.core.models.a2e import load_a2e

            a2e, _ = load_a2e(bundle)
            fa = frames(groups["intensity3"], {c: a2e_params(a2e, ds, c) for c in groups["intensity3"]})
            out["psnr_full_a2e"] = psnr(models["full"], fa)
            out["psnr_stage1_only_a2e"] = psnr(None, fa)
    if groups["trained_levels"]:
        out["psnr_trained_levels"] = psnr(models["full"], frames(groups["trained_levels"]))
    if groups["heldout_intensity"]:
        out["psnr_heldout_intensity"] = psnr(models["full"], frames(groups["heldout_intensity"]))
        if "psnr_trained_levels" in out:
            out["heldout_minus_trained_db"] = out["psnr_heldout_intensity"] - out["psnr_trained_levels"]
    return out


def emotion_grid(avatar: Path, dataset_root: Path, out_png: Path, clip: str | None = None, t: int | None = None,
                 levels=(0.0, 1.0, 2.0, 3.0), backend: str = "auto") -> dict:
    """Render emotions (rows) x intensities (columns) for one frame of a held-out clip's audio."""
    from dataclasses import replace

    from emotalker.core.datasets.dataset import Dataset
    from emotalker.core.datasets.emotion_frames import EmotionFrames

    ds = Dataset.open(dataset_root)
    bundle = AvatarBundle.open(avatar)
    model = Avatar.open(bundle)
    if not model.uses_emotion:
        raise SystemExit(f"{bundle.root}: no Stage 2 (emotion.safetensors) to draw the grid with")
    test = ds.split("test")
    clip = clip or next((c.id for c in test if c.held_out), test[0].id)
    frames = EmotionFrames(ds, [clip], model.audio_features, max(bundle.manifest()["stages"]["neutral"]["resolution"]))
    t = ds.n_frames(clip) // 2 if t is None else t
    frame, conditions = frames.get(t)
    a2e = None
    if bundle.has_stage("a2e"):
        from emotalker.core.models.a2e import infer_curves, load_a2e
        from emotalker.core.audio.waveform import load_audio

        a2e, _ = load_a2e(bundle)
        samples = load_audio(ds.audio_path(clip))
    rows = []
    for name in EMOTIONS:
        w = one_hot(name)
        tiles = []
        for s in levels:
            params = frame.params
            if a2e is not None:
                c = infer_curves(a2e, samples, w, s, ds.fps)
                k = min(t, len(c["expr"]) - 1)
                f = lambda a: torch.as_tensor(a[k:k + 1], dtype=torch.float32)  # noqa: E731
                params = FlameParams(expr=f(c["expr"]), jaw=f(c["jaw"]), neck=f(c["neck"]),
                                     eyes=frame.params.eyes, eyelids=frame.params.eyelids)
            x = replace(conditions, params=params, emotion=torch.from_numpy(w)[None],
                        intensity=torch.tensor([s], dtype=torch.float64))
            with torch.no_grad():
                g = model.evaluate_differentiable(x).unbind()[0]
                rgb = render_avatar(g, frame.camera, frames.background, backend).rgb[0]
            tiles.append((rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
        rows.append(tiles)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, list(EMOTIONS), [f"intensity {s:g}" for s in levels]).save(out_png, optimize=True)
    return {"grid": str(out_png), "clip": clip, "frame": t, "rows": list(EMOTIONS), "columns": list(levels),
            "driver": "a2e" if a2e is not None else "tracking"}


def labelled_grid(tiles: list[list[np.ndarray]], row_names: list[str], column_names: list[str], margin: int = 6):
    """Tiles [rows][columns] of RGB uint8 [H,W,3] on a white background -> one PIL image, each tile
    cropped to the box holding every tile's non-white pixels, row names left, column names on top."""
    from PIL import Image, ImageDraw, ImageFont

    stack = np.stack([t for row in tiles for t in row])
    ys, xs = np.nonzero((stack < 250).any(-1).any(0))
    H, W = stack.shape[1:3]
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, H)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, W)
    th, tw, label_w, head_h = y1 - y0, x1 - x0, 90, 24
    out = Image.new("RGB", (label_w + tw * len(column_names), head_h + th * len(row_names)), "white")
    draw, font = ImageDraw.Draw(out), ImageFont.load_default(size=15)
    for j, name in enumerate(column_names):
        draw.text((label_w + j * tw + tw // 2, head_h // 2), name, fill="black", font=font, anchor="mm")
    for i, name in enumerate(row_names):
        draw.text((6, head_h + i * th + th // 2), name, fill="black", font=font, anchor="lm")
        for j, tile in enumerate(tiles[i]):
            out.paste(Image.fromarray(tile[y0:y1, x0:x1]), (label_w + j * tw, head_h + i * th))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path(tempfile.gettempdir()) / "emotalker-sample-default")
    ap.add_argument("--avatar", type=Path, default=None, help="bundle with Stage 1 (+ A2E) trained on --dataset")
    ap.add_argument("--steps", type=int, default=2000, help="Stage 2 training steps (default 2000, as `train emotion`)")
    ap.add_argument("--eval-stride", type=int, default=5, help="evaluate every Nth frame of the test clips (default 5)")
    ap.add_argument("--gaussians", type=int, default=20000, help="face Gaussians for the speed figures")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--workdir", type=Path, default=None, help="where the trained copies go (default: a temp folder)")
    ap.add_argument("--grid", type=Path, default=None, help="also write the emotion x intensity grid PNG")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    result["speed"] = speed(args.dataset / "flame_model.npz", args.gaussians, args.repeats)
    result["deform_fps"] = result["speed"]["deform_fps"]
    if args.skip_quality or args.avatar is None:
        result["quality"] = None
        result["quality_note"] = "not run: needs --avatar (Stage 1 + A2E trained on --dataset)"
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="emotalker-stage2-bench-"))
        result["quality"] = quality(args.dataset, args.avatar, args.steps, args.eval_stride, workdir, args.backend)
        result.update({k: v for k, v in result["quality"].items() if k.startswith("psnr_") or k.startswith("train_minutes")})
    report(result, args.json)  # the figures first: the grid below is the slow, optional part
    if args.grid and (result["quality"] is not None or args.avatar is not None):
        # After training: the model trained here; with --skip-quality: the --avatar bundle's own Stage 2.
        trained = workdir / "full" if result["quality"] is not None else args.avatar
        result["grid"] = emotion_grid(trained, args.dataset, args.grid, backend=args.backend)
        report(result, args.json)


def report(result: dict, json_path: Path | None) -> None:
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if json_path:
        json_path.write_text(text + "\n")


if __name__ == "__main__":
    main()
