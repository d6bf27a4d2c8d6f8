"""The worker's methods: what the Blender add-on can ask of the core.

Each takes (params, ctx) and returns a JSON-able dict. Arrays travel as files
(.npz/.npy) in the folder the add-on names, never inline in the protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emotalker.core.bundle import EMOTIONS, AvatarBundle
from emotalker.core.errors import InputError
from emotalker.core.fileio import atomic_path
from emotalker.core.flame import FlameModel


def _out_dir(params: dict) -> Path:
    if not params.get("out"):
        raise InputError(None, "the request names no output folder ('out')")
    out = Path(params["out"])
    out.mkdir(parents=True, exist_ok=True)
    return out


def avatar_proxy(params: dict, ctx) -> dict:
    """The FLAME proxy the add-on builds its mesh, shape keys and armature from.

    params: avatar (bundle folder), out (folder). Writes out/proxy.npz with
    v_template [V,3], faces [F,3], expr_dirs [E,V,3], joints [J,3] (rest),
    parents [J], weights [V,J]; returns its path and the bundle's description.
    """
    bundle = AvatarBundle.open(params["avatar"])
    model = FlameModel.load(bundle.flame_path)
    joints = model.J_regressor @ model.v_template
    arrays = {
        "v_template": model.v_template,
        "faces": model.faces.astype(np.int32),
        "expr_dirs": np.ascontiguousarray(model.shapedirs[:, :, model.n_shape:].transpose(2, 0, 1)),
        "joints": joints.astype(np.float32),
        "parents": model.parents.astype(np.int32),
        "weights": model.weights,
    }
    path = _out_dir(params) / "proxy.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    manifest = bundle.manifest()
    names = model.expr_names or [f"expr_{i:03d}" for i in range(model.n_expr)]
    return {
        "proxy": str(path),
        "expr_names": names,
        "emotions": list(EMOTIONS),
        "stages": sorted(s for s in ("neutral", "a2e", "emotion") if bundle.has_stage(s)),
        "fps": manifest.get("fps", 25),
    }


METHODS = {"avatar_proxy": avatar_proxy}
