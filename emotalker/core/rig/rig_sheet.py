"""A contact sheet of a FLAME-format rig in a few telling poses, drawn with the mesh preview rasteriser."""

from __future__ import annotations

import numpy as np

from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.rig.mesh_preview import look_at, render_mesh


def sheet_poses(model: FlameModel):
    """(label, FlameParams) for neutral, jaw open, smile, frown, brows up and eyes closed."""
    import torch

    def expr(**weights):
        e = torch.zeros(1, model.n_expr)
        for name, w in weights.items():
            e[0, model.expr_index(name)] = w
        return e

    return [
        ("neutral", FlameParams()),
        ("jaw open", FlameParams(jaw=torch.tensor([[0.3, 0.0, 0.0]]))),
        ("smile", FlameParams(expr=expr(smile=1.2, cheek_raise=0.6))),
        ("frown", FlameParams(expr=expr(frown=1.2, brow_lower=0.8))),
        ("brows up", FlameParams(expr=expr(brow_inner_raise=1.0, brow_outer_raise=1.0, eyes_widen=0.6))),
        ("eyes closed", FlameParams(eyelids=torch.tensor([[1.0, 1.0]]))),
    ]


def rig_sheet(model: FlameModel, panel: int = 300, columns: int = 3) -> np.ndarray:
    """uint8 image [rows*panel, columns*panel, 3] of the rig in `sheet_poses`, three-quarter view, labelled."""
    from PIL import Image, ImageDraw

    if model.albedo is None:
        colours = np.full((model.n_verts, 3), 0.75)
    else:
        colours = model.albedo
    rig = FlameRig(model)
    centre = model.v_template.mean(0)
    centre = np.array([0.0, centre[1] + 0.01, 0.0])
    viewmat = look_at(centre + np.array([0.22, 0.05, 0.74]), centre)
    f = panel * 2.5
    K = np.array([[f, 0, panel / 2], [0, f, panel / 2], [0, 0, 1.0]])
    poses = sheet_poses(model)
    rows = -(-len(poses) // columns)
    sheet = Image.new("RGB", (columns * panel, rows * panel), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (label, params) in enumerate(poses):
        verts, _ = rig(params)
        img = render_mesh(verts[0].numpy(), model.faces, colours, viewmat, K, panel, panel, background=(0.96, 0.96, 0.96))
        x, y = (k % columns) * panel, (k // columns) * panel
        sheet.paste(Image.fromarray((img * 255).round().astype(np.uint8)), (x, y))
        draw.text((x + 8, y + 6), label, fill=(40, 40, 40))
    return np.asarray(sheet)
