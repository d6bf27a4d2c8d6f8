"""The report's sections, each from what it shows to an HTML fragment (page.py's builders)."""

from __future__ import annotations

import json

from emotalker.core.evaluation.report import page
from emotalker.core.evaluation.report.curves import curve_png
from emotalker.core.evaluation.report.heldout import STAGES, EmotionScores, overall
from emotalker.core.evaluation.report.images import crop_box, data_uri, png_uri

STAGE_NAMES = {"neutral": "Stage 1 (neutral blendshapes)", "a2e": "A2E (audio to expression)",
               "emotion": "Stage 2 (emotion attention)"}


def summary(name: str, manifest: dict, dataset: str | None) -> str:
    stages = manifest.get("stages", {})
    neutral = stages.get("neutral", {})
    minutes = [s.get("train_minutes") for s in stages.values() if s.get("train_minutes") is not None]
    # Text cells, left-aligned like the labels: this table is read, not compared down a column.
    rows = [["stages trained", ", ".join(STAGE_NAMES.get(s, s) for s in stages) or "none"],
            ["Gaussians (face + teeth)", f"{neutral['n_gaussians']:,}" if neutral.get("n_gaussians") else None],
            ["training resolution", "x".join(map(str, neutral["resolution"])) if neutral.get("resolution") else None],
            ["frame rate", f"{manifest['fps']:g} fps" if manifest.get("fps") else None],
            ["dataset", dataset or "none"],
            ["training time, all stages", f"{sum(minutes):.1f} min" if minutes else None]]
    return page.section(f"Avatar {name}", page.table(None, rows))


def quality(rows: list[EmotionScores]) -> str:
    """Held-out PSNR/SSIM per emotion (rows) and stage (column pairs), with the frame-weighted mean last."""
    stages = list(rows[0].scores)
    header = ["emotion", "clips", "frames"] + [f"{STAGES[s]} {m}" for s in stages for m in ("PSNR dB", "SSIM")]
    body = [[r.emotion, len(r.clips), r.frames] + [r.scores[s][m] for s in stages for m in ("psnr", "ssim")]
            for r in rows]
    mean = overall(rows)
    body.append(["all", sum(len(r.clips) for r in rows), sum(r.frames for r in rows)]
                + [mean[s][m] for s in stages for m in ("psnr", "ssim")])
    return page.section(
        "Held-out quality", page.para("Whole-image PSNR and SSIM on the test split's frames, evenly spaced over "
                                      "at most the clips and frames counted here; the avatar's training resolution."),
        page.table(header, body))


def recorded(manifest: dict) -> str:
    """The figures each stage recorded when its training ended (avatar.json)."""
    stages, rows = manifest.get("stages", {}), []
    m = stages.get("neutral", {}).get("metrics", {})
    for key in ("test_psnr", "test_ssim", "test_head_psnr", "test_mouth_psnr", "train_psnr"):
        if m.get(key) is not None:
            rows.append(["Stage 1", key.replace("_", " "), m[key]])
    m = stages.get("a2e", {}).get("metrics", {})
    for key in ("lip_vertex_err_mm", "baseline_lip_vertex_err_mm", "jaw_corr", "emotion_cos"):
        if m.get(key) is not None:
            rows.append(["A2E", key.replace("_", " "), m[key]])
    m = stages.get("emotion", {}).get("metrics", {})
    for part in ("stage2", "stage1_only"):
        for key in ("psnr", "ssim"):
            if isinstance(m.get(part), dict) and m[part].get(key) is not None:
                rows.append(["Stage 2", f"{part.replace('_', ' ')} {key}", m[part][key]])
    if not rows:
        return page.note("No stage recorded metrics when its training ended.")
    return page.section("Recorded when training ended", page.table(["stage", "figure", "value"], rows))


def samples(rows: list[EmotionScores], background: tuple) -> str:
    """Ground truth beside each stage's render: one held-out frame an emotion."""
    stages = list(rows[0].sample.keys() - {"truth"})
    stages = [s for s in STAGES if s in stages]
    box = crop_box([img for r in rows for img in r.sample.values()], background)
    header = ["emotion", "ground truth"] + [STAGES[s] for s in stages]
    body = [[r.emotion] + [("html", page.image(png_uri(r.sample[k], box), f"{r.emotion} {k}"))
                           for k in ("truth", *stages)] for r in rows]
    return page.section("Ground truth and renders, held-out frames", page.table(header, body, "tiles"))


def grid(tiles: list[list], emotions: list[str], levels, clip: str, driver: str, background: tuple) -> str:
    """tiles [emotion][level]: shown with the emotions across and the levels down (a page's width holds 8)."""
    box = crop_box([t for row in tiles for t in row], background)
    body = [[f"intensity {s:g}"] + [("html", page.image(png_uri(row[j], box, side=112), f"{e} {s:g}"))
                                    for e, row in zip(emotions, tiles)] for j, s in enumerate(levels)]
    return page.section("Emotion x intensity", page.para(f"The middle frame of held-out clip {clip}, "
                                                         f"expression driven by {driver}."),
                        page.table([""] + emotions, body, "tiles"))


def clip_video(data: bytes, mime: str, caption: str) -> str:
    return page.section("A2E-driven clip, held-out audio", page.video(data_uri(mime, data), mime, caption))


def curves(manifest: dict) -> str:
    """One plot a stage that recorded its per-step history."""
    stages = manifest.get("stages", {})
    parts = []
    held = {"neutral": stages.get("neutral", {}).get("metrics", {}).get("test_psnr"),
            "emotion": (stages.get("emotion", {}).get("metrics", {}).get("stage2") or {}).get("psnr")}
    for stage in ("neutral", "emotion"):
        history = stages.get(stage, {}).get("history")
        if stage not in stages:
            continue
        if not history:
            parts.append(page.note(f"{STAGE_NAMES[stage]}: no per-step history recorded (trained before "
                                   "avatar.json recorded it)."))
            continue
        info = stages[stage]
        title = f"{STAGE_NAMES[stage]}: {info.get('steps')} steps in {info.get('train_minutes', 0):.3g} min"
        png = curve_png(history, title, held[stage])
        parts.append(page.image(data_uri("image/png", png), f"{stage} training curves"))
    if "a2e" in stages:
        parts.append(page.para("A2E records no per-step history; its held-out lip figures are in the table above."))
    return page.section("Training curves", *parts) if parts else ""


def settings(manifest: dict) -> str:
    """Per stage: steps, time and sizes, and its full training settings folded."""
    stages, parts = manifest.get("stages", {}), []
    rows = [[STAGE_NAMES.get(s, s), info.get("steps"), info.get("train_minutes"), info.get("dataset")]
            for s, info in stages.items()]
    parts.append(page.table(["stage", "steps", "minutes", "dataset"], rows))
    for stage, info in stages.items():
        shown = {k: info[k] for k in ("train", "config", "features", "resolution", "sh_degree", "n_gaussians",
                                      "n_blendshapes", "neutral_tuned") if k in info}
        if shown:
            parts.append(page.details(f"{STAGE_NAMES.get(stage, stage)} settings", json.dumps(shown, indent=1)))
    return page.section("Training settings and times", *parts)
