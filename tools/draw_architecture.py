"""Draw the two figures of docs/architecture.md: the data flow and the packages.

    python tools/draw_architecture.py [--out docs/img]

Writes architecture_dataflow.png and architecture_packages.png (matplotlib, from
the `test` extra). The boxes and arrows are written out here by hand; keep them
in step with the text versions in docs/architecture.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# One colour per role: files on disk, core, bake, worker/cli, the Blender add-on.
COLOURS = {"file": "#e8e8e8", "core": "#cfe2f3", "bake": "#d9ead3", "proc": "#fce5cd", "addon": "#e1d5e7"}


def box(ax, x: float, y: float, w: float, h: float, text: str, role: str, size: float = 9) -> tuple:
    """A rounded box centred at (x, y); returns its (left, right, bottom, top)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.3,rounding_size=0.8",
                                facecolor=COLOURS[role], edgecolor="#555555", linewidth=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, family="DejaVu Sans")
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def arrow(ax, start: tuple, end: tuple, label: str = "", both: bool = False, dashed: bool = False) -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="<|-|>" if both else "-|>", color="#333333",
                                                          linewidth=1.1, linestyle="--" if dashed else "-",
                                                          shrinkA=2, shrinkB=2))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 1.2, label, ha="center", va="bottom",
                fontsize=7.5, color="#333333", style="italic")


def canvas(width: float, height: float, title: str):
    fig, ax = plt.subplots(figsize=(width / 8, height / 8), dpi=110)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.set_title(title, fontsize=12, loc="left")
    return fig, ax


def legend(ax, x: float, y: float) -> None:
    labels = {"file": "file on disk", "core": "emotalker.core", "bake": "emotalker.bake",
              "proc": "emotalker.worker / cli", "addon": "blender_addon (bpy + numpy)"}
    for i, (role, text) in enumerate(labels.items()):
        box(ax, x + i * 20, y, 17, 3, text, role, size=7.5)


def draw_dataflow(path: Path) -> None:
    fig, ax = canvas(120, 74, "EmoTalker: the way data flows")
    # Training: dataset -> three stages -> one bundle.
    ax.text(2, 66, "train", fontsize=10, weight="bold")
    train_row = [(10, 15, "tracked clips\n(make-sample,\nimport-tracking)", "file"),
                 (29, 14, "dataset/\nemotalker-dataset/1", "file"),
                 (48, 15, "train_neutral\nStage 1: Gaussian\nblendshapes", "core"),
                 (66, 14, "train_a2e\naudio + emotion\n-> FLAME", "core"),
                 (84, 15, "train_emotion\nStage 2: Gaussian\noffsets", "core"),
                 (106, 17, "avatar/ bundle\nemotalker-avatar/1\n+ flame_model.npz", "file")]
    steps = [box(ax, x, 58, w, 7, text, role) for x, w, text, role in train_row]
    bundle = steps[-1]
    ax.text(66, 65, "train_all: the three in turn (emotalker.core.training)", ha="center", fontsize=8)
    for left, right in zip(steps, steps[1:]):
        arrow(ax, (left[1], 58), (right[0], 58))
    # Baking: audio + tracks -> curves -> Avatar.evaluate -> exporters.
    ax.text(2, 46, "bake", fontsize=10, weight="bold")
    audio = box(ax, 10, 40, 15, 4.5, "dialogue audio\n(16 kHz mono)", "file")
    tracks = box(ax, 10, 31, 15, 4.5, "tracks\nemotalker-tracks/1", "file")
    curves = box(ax, 33, 36, 19, 7, "FLAME curves per frame\nA2E, or --flame-curves\n<name>_flame.npz", "bake")
    avatar = box(ax, 60, 36, 22, 7, "Avatar.open(bundle)\nAvatar.evaluate(conditions)\n-> FrameBatch (raw Gaussians)", "core")
    ply = box(ax, 92, 44, 22, 4.5, "PLY sequence + sidecar\nemotalker-plyseq/1", "bake")
    png = box(ax, 92, 36, 22, 4.5, "render_avatar(frames, camera)\n-> PNG frames, MP4 + audio", "bake")
    tl = box(ax, 92, 28, 22, 4.5, "Blender timeline\n(F-curves, F12 render)", "addon")
    arrow(ax, (audio[1], 40), (curves[0], 37.5))
    arrow(ax, (tracks[1], 31), (curves[0], 34.5))
    ax.text(22, 28.5, "emotion, intensity, blink", ha="center", va="top", fontsize=7.5, style="italic")
    arrow(ax, (curves[1], 36), (avatar[0], 36))
    # The bundle feeds A2E (the curves) and every stage of the Avatar.
    ax.plot([106, 106, 33], [bundle[2], 49, 49], color="#333333", linewidth=1.1)
    arrow(ax, (33, 49), (33, curves[3]))
    arrow(ax, (60, 49), (60, avatar[3]))
    ax.text(70, 49.6, "the bundle: A2E for the curves; every stage, checked once, for the Avatar",
            ha="center", va="bottom", fontsize=7.5, style="italic")
    arrow(ax, (avatar[1], 37.5), (ply[0], 44))
    arrow(ax, (avatar[1], 36), (png[0], 36))
    arrow(ax, (avatar[1], 34.5), (tl[0], 28))
    ax.text(45, 30, "conditions per frame: FLAME params, emotion weights,\nintensity, blink, audio window, camera",
            ha="center", va="top", fontsize=7.5, style="italic")
    # Blender: the add-on talks to a worker process.
    ax.text(2, 20, "Blender", fontsize=10, weight="bold")
    addon = box(ax, 18, 12, 28, 7, "blender_addon (inside Blender)\nimport, key tracks, bake, F12, export\nbpy + numpy only", "addon")
    worker = box(ax, 66, 12, 26, 7, "emotalker worker (own process)\navatar_proxy, bake, render_frame\ncancel, environment", "proc")
    box(ax, 103, 12, 22, 7, "emotalker CLI\nparses, then calls the same\ncore and bake functions", "proc")
    arrow(ax, (addon[1], 12), (worker[0], 12), "JSON lines\nemotalker-worker/1", both=True)
    arrow(ax, (62, worker[3]), (56, avatar[2]), dashed=True)
    legend(ax, 14, 3)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def draw_packages(path: Path) -> None:
    fig, ax = canvas(110, 80, "EmoTalker: packages, and what each may import (arrow: may import)")
    core = ("base", "rig", "head", "render", "audio", "models", "datasets", "evaluation", "training")
    notes = ("errors, fileio, progress, device,\nquaternion, config, emotions, kernels",
             "FLAME model + rig, pickle loader,\nbinding, deformation transfer",
             "the procedural head", "rasterize (gsplat / cpu / reference),\nGaussians, Camera, SH",
             "waveform (16 kHz), features", "blendshapes (Stage 1), a2e, emotion_deformer\n(Stage 2), bundle, Avatar",
             "Dataset reader, frames, importers", "metrics, neutral, emotion, a2e", "train_neutral / a2e / emotion / all")
    ax.add_patch(FancyBboxPatch((3, 3), 56, 70, boxstyle="round,pad=0.5", facecolor="#f4f8fc", edgecolor="#7a9cc6"))
    ax.text(5, 70.5, "emotalker.core: no bake, cli, worker, sample or bpy", fontsize=9, weight="bold")
    ax.text(5, 67.5, "each sub-package imports only those below it", fontsize=8, style="italic")
    ys = [7 + 6.8 * i for i in range(len(core))]
    for y, name, note in zip(ys, core, notes):
        box(ax, 13, y, 12, 4, name, "core")
        ax.text(21, y, note, va="center", fontsize=7.5)
    for lo, hi in zip(ys, ys[1:]):
        arrow(ax, (13, hi - 2.3), (13, lo + 2.3))
    sample = box(ax, 77, 14, 22, 5, "emotalker.sample\nsynthetic dataset", "file")
    bake = box(ax, 77, 32, 22, 5, "emotalker.bake\ntracks, frame loop, exporters", "bake")
    worker = box(ax, 77, 49, 22, 5, "emotalker.worker\nJSON-lines server", "proc")
    cli = box(ax, 77, 66, 22, 5, "emotalker.cli: parses, then calls;\nmay import worker, bake, sample", "proc")
    addon = box(ax, 101, 49, 14, 6, "blender_addon\nbpy + numpy\n(no torch)", "addon")
    for y, side in ((14, sample[0]), (32, bake[0]), (49, worker[0]), (66, cli[0])):
        arrow(ax, (side, y), (59.5, y))
    arrow(ax, (77, worker[2]), (77, bake[3]))
    arrow(ax, (77, cli[2]), (77, worker[3]))
    arrow(ax, (addon[0], 49), (worker[1], 49), "process", both=True, dashed=True)
    fig.savefig(path, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    draw_dataflow(args.out / "architecture_dataflow.png")
    draw_packages(args.out / "architecture_packages.png")


if __name__ == "__main__":
    main()
