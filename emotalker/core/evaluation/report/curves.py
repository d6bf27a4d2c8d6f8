"""The report's training curves: a stage's recorded per-step history (avatar.json's `history`) as a PNG.

matplotlib's object interface with the Agg canvas, so no pyplot state and no display is touched.
"""

from __future__ import annotations

import io


def curve_png(history: list[dict], title: str, held_out_psnr: float | None = None) -> bytes:
    """Training loss (log scale) and PSNR over the steps of `history` ({"step", "loss", "psnr", ...}),
    with the held-out PSNR the stage reached as a dashed line when given; PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    marker = "o" if len(history) < 20 else None  # a short run's few points stay visible
    fig = Figure(figsize=(7.2, 2.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, psnr_ax = fig.subplots(1, 2)
    loss_ax.plot(steps, [h["loss"] for h in history], color="tab:red", lw=1.2, marker=marker, ms=3)
    loss_ax.set(xlabel="step", ylabel="training loss", yscale="log" if min(h["loss"] for h in history) > 0 else "linear")
    psnr_ax.plot(steps, [h["psnr"] for h in history], color="tab:blue", lw=1.2, marker=marker, ms=3,
                 label="training batch")
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
