"""The built-in procedural head: a FLAME-format rig generated from a seed, so nothing needs a FLAME licence.

`make_head(seed)` returns a `FlameModel` with a closed skin (mouth cavity and eye
pockets), two eyeballs, FLAME's five joints, 13 identity and 50 named expression
components (`EXPRESSION_NAMES`), two eyelid blendshapes, pose correctives, vertex
regions and a per-vertex albedo. The same seed always gives the same head.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.rig.flame import FlameModel
from emotalker.core.rig.mesh_preview import vertex_normals
from emotalker.core.head.albedo import albedo_and_regions
from emotalker.core.head.components import EXPRESSION_NAMES, IDENTITY_NAMES, expression_shapes, identity_shapes
from emotalker.core.head.rig import eyelid_shapes, jaw_weight, joint_regressor, lbs_weights, lowerness, pose_correctives
from emotalker.core.head.surface import GridConfig, build_head_mesh

__all__ = ["EXPRESSION_NAMES", "IDENTITY_NAMES", "GridConfig", "make_head"]

KINTREE = np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)


def make_head(seed: int = 0, grid: GridConfig = GridConfig(), identity_scale: float = 0.7) -> FlameModel:
    """Generate the procedural head for `seed` (deterministic). The template carries a random identity
    drawn from the head's own identity components (N(0, identity_scale^2) each)."""
    m = build_head_mesh(grid)
    skin_faces = m.faces[: m.n_skin_faces]
    normals = vertex_normals(m.verts, skin_faces)
    lam = lowerness(m)
    w_jaw = jaw_weight(m, lam)
    ident = identity_shapes(m, normals, lam)
    expr = expression_shapes(m, normals, lam)
    lids = eyelid_shapes(m)
    albedo, regions = albedo_and_regions(m, lam, lids, seed)
    beta = np.random.default_rng([seed, 1]).normal(scale=identity_scale, size=len(IDENTITY_NAMES))
    v_template = m.verts + ident @ beta
    model = FlameModel(
        v_template=v_template.astype(np.float32),
        faces=m.faces,
        shapedirs=np.concatenate([ident, expr], -1).astype(np.float32),
        n_shape=ident.shape[-1],
        n_expr=expr.shape[-1],
        posedirs=pose_correctives(m, normals, lam).astype(np.float32),
        J_regressor=joint_regressor(m).astype(np.float32),
        weights=lbs_weights(m, w_jaw).astype(np.float32),
        kintree_table=KINTREE.copy(),
        eyelids=lids.astype(np.float32),
        regions={k: v.astype(np.int64) for k, v in regions.items()},
        albedo=albedo.astype(np.float32),
        expr_names=list(EXPRESSION_NAMES),
    )
    return model.validate()
