"""Shared fixtures: small rigs built in the test, never downloaded."""

from __future__ import annotations

import numpy as np
import pytest

from emotalker.core.rig.flame import FlameModel


def make_toy_rig(V: int = 60, n_shape: int = 4, n_expr: int = 6, seed: int = 0, posedirs: bool = True) -> FlameModel:
    """A random but well-formed FLAME-format rig with FLAME's 5-joint tree.

    Vertices 0..V/3 are skinned to the head root only (the "upper lip" set),
    the next third blend neck and jaw, the rest split among jaw and eyes.
    """
    rng = np.random.default_rng(seed)
    J = 5
    v = rng.normal(scale=0.05, size=(V, 3)).astype(np.float32)
    weights = np.zeros((V, J), np.float32)
    third = V // 3
    weights[:third, 0] = 1.0
    weights[third : 2 * third, 1] = 0.5
    weights[third : 2 * third, 2] = 0.5
    rest = np.arange(2 * third, V)
    weights[rest, 2 + rest % 3] = 1.0
    J_reg = rng.random((J, V)).astype(np.float32)
    J_reg /= J_reg.sum(1, keepdims=True)
    faces = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1)
    return FlameModel(
        v_template=v,
        faces=faces,
        shapedirs=rng.normal(scale=0.01, size=(V, 3, n_shape + n_expr)).astype(np.float32),
        n_shape=n_shape,
        n_expr=n_expr,
        posedirs=(rng.normal(scale=0.001, size=(V, 3, 36)) if posedirs else np.zeros((V, 3, 36))).astype(np.float32),
        J_regressor=J_reg,
        weights=weights,
        kintree_table=np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        eyelids=rng.normal(scale=0.002, size=(2, V, 3)).astype(np.float32),
    ).validate()


@pytest.fixture
def toy_rig() -> FlameModel:
    return make_toy_rig()
