"""A FLAME-format rig cut down to a few vertices (e.g. the lips) that poses them exactly as the full rig.

Losses and metrics on lip vertices need only ~100 of the rig's thousands of
vertices, but FLAME's joints are regressed from the whole shaped mesh. The cut
rig keeps the chosen vertices and adds one "joint vertex" a joint, whose shape,
expression and eyelid bases are the full rig's bases pushed through J_regressor;
its own J_regressor simply picks those joint vertices. Joint positions (which
are linear in the shaped mesh) are therefore identical, and the chosen vertices
are posed by the one FlameRig implementation at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np

from emotalker.core.rig.flame import FlameModel


def vertex_subset(model: FlameModel, indices: np.ndarray) -> FlameModel:
    """A rig posing model's vertices `indices` [K] exactly; its first K vertices are those, then J joint vertices.

    Pose it with FlameRig and keep `verts[:, :K]`.
    """
    idx = np.asarray(indices, dtype=np.int64)
    K, J = len(idx), model.n_joints
    reg = model.J_regressor.astype(np.float64)

    def with_joints(per_vertex: np.ndarray, through_regressor: np.ndarray) -> np.ndarray:
        return np.concatenate([per_vertex, through_regressor], axis=0).astype(np.float32)

    v_template = with_joints(model.v_template[idx], reg @ model.v_template)
    shapedirs = with_joints(model.shapedirs[idx], np.einsum("jv,vcs->jcs", reg, model.shapedirs))
    # Joints come from the shaped mesh before pose correctives, so joint vertices need none.
    posedirs = with_joints(model.posedirs[idx], np.zeros((J,) + model.posedirs.shape[1:]))
    weights = with_joints(model.weights[idx], np.eye(J))
    J_regressor = np.concatenate([np.zeros((J, K)), np.eye(J)], axis=1).astype(np.float32)
    eyelids = None
    if model.eyelids is not None:
        eyelids = np.concatenate([model.eyelids[:, idx], np.einsum("jv,kvc->kjc", reg, model.eyelids)], axis=1).astype(np.float32)
    return FlameModel(
        v_template=v_template,
        faces=np.zeros((0, 3), np.int64),
        shapedirs=shapedirs,
        n_shape=model.n_shape,
        n_expr=model.n_expr,
        posedirs=posedirs,
        J_regressor=J_regressor,
        weights=weights,
        kintree_table=model.kintree_table.copy(),
        eyelids=eyelids,
        expr_names=list(model.expr_names),
    ).validate()
