"""The report's training curves: a stage's recorded per-step history (avatar.json's `history`) as a PNG.

matplotlib's object interface with the Agg canvas, so no pyplot state and no display is touched.
"""

from __future__ import annotations

import io

import numpy as np


def running_mean(values: list[float], share: float = 0.1) -> np.ndarray:
    """The mean over a centred window of `share` of the points (at least 1), shorter at the ends: one
    training batch's loss is noisy."""
    v = np.asarray(values, np.float64)
    half = max(1, round(len(v) * share)) // 2
    c = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.clip(np.arange(len(v)) - half, 0, len(v))
    hi = np.clip(np.arange(len(v)) + half + 1, 0, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def curve_png(history: list[dict], title: str, held_out_psnr: float | None = None) -> bytes:
    """Training loss (log scale) and PSNR over the steps of `history` ({"step", "loss", "psnr", ...}),
    with the held-out PSNR the stage reached as a dashed line when given; PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    marker = "o" if len(history) < 20 else None  # a short run's few points stay visible
    loss, psnr = [h["loss"] for h in history], [h["psnr"] for h in history]
    fig = Figure(figsize=(7.2, 2.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, psnr_ax = fig.subplots(1, 2)
    loss_ax.plot(steps, loss, color="tab:red", lw=0.8, alpha=0.45, marker=marker, ms=3)
    loss_ax.plot(steps, running_mean(loss), color="tab:red", lw=1.6)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log" if min(loss) > 0 else "linear")
    psnr_ax.plot(steps, psnr, color="tab:blue", lw=0.8, alpha=0.45, marker=marker, ms=3)
    psnr_ax.plot(steps, running_mean(psnr), color="tab:blue", lw=1.6, label="training batch (running mean)")
    if held_out_psnr is not None:
        psnr_ax.axhline(held_out_psnr, color="black", ls="--", lw=1, label=f"held-out {held_out_psnr:.2f} dB")
    psnr_ax.set(xlabel="step", ylabel="PSNR (dB)")
    psnr_ax.legend(loc="lower right", fontsize=8)
    for ax in (loss_ax, psnr_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    # No Software/date metadata: the same history gives the same bytes.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
