"""FLAME release pickles: loaded without chumpy, and refused when they try to run code."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from emotalker.cli.main import main
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameModel, FlameParams, FlameRig
from emotalker.core.rig.flame_pickle import load_flame_pickle

from conftest import make_toy_rig


class _FakeChumpyModule:
    """Registers a stand-in `chumpy.ch.Ch` while pickling, as if chumpy were installed."""

    def __enter__(self):
        ch_mod = types.ModuleType("chumpy.ch")

        class Ch:  # chumpy keeps the array in `x` beside bookkeeping fields
            def __init__(self, x):
                self.x = np.asarray(x)
                self._dirty_vars = set()
                self.label = None

        Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
        ch_mod.Ch = Ch
        self.saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
        sys.modules["chumpy"] = types.ModuleType("chumpy")
        sys.modules["chumpy.ch"] = ch_mod
        return Ch

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_flame_style_pickle(path, model: FlameModel, protocol: int) -> None:
    """Lay a rig out the way FLAME releases do: chumpy arrays, sparse J_regressor, uint32 root parent."""
    kintree = model.kintree_table.astype(np.uint32)  # -1 wraps to 4294967295 as in the release
    with _FakeChumpyModule() as Ch:
        data = {
            "v_template": Ch(model.v_template.astype(np.float64)),
            "f": model.faces.astype(np.uint32),
            "shapedirs": Ch(model.shapedirs.astype(np.float64)),
            "posedirs": Ch(model.posedirs.astype(np.float64)),
            "J_regressor": sp.csc_matrix(model.J_regressor.astype(np.float64)),
            "weights": Ch(model.weights.astype(np.float64)),
            "kintree_table": kintree,
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=protocol)
    assert "chumpy" not in sys.modules


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_pickle_loads_without_chumpy_and_matches_its_npz(tmp_path, protocol):
    model = make_toy_rig()
    model.eyelids = None
    write_flame_style_pickle(tmp_path / "flame.pkl", model, protocol)
    loaded = load_flame_pickle(tmp_path / "flame.pkl", n_shape=model.n_shape)
    assert loaded.n_shape == model.n_shape and loaded.n_expr == model.n_expr
    assert loaded.kintree_table[0, 0] == -1
    loaded.save(tmp_path / "flame.npz")
    reread = FlameModel.load(tmp_path / "flame.npz")
    g = torch.Generator().manual_seed(0)
    params = FlameParams(shape=torch.randn(2, model.n_shape, generator=g), expr=torch.randn(2, model.n_expr, generator=g),
                         jaw=0.3 * torch.rand(2, 3, generator=g), neck=0.2 * torch.rand(2, 3, generator=g))
    expected, _ = FlameRig(model)(params)
    for rig_model in (loaded, reread):
        got, _ = FlameRig(rig_model)(params)
        assert torch.allclose(got, expected, atol=1e-6)


def test_cli_converts_and_reports(tmp_path, capsys):
    model = make_toy_rig()
    write_flame_style_pickle(tmp_path / "flame.pkl", model, 2)
    assert main(["convert-flame", str(tmp_path / "flame.pkl"), str(tmp_path / "out.npz"), "--n-shape", "4", "--n-expr", "3"]) == 0
    out = FlameModel.load(tmp_path / "out.npz")
    assert out.n_expr == 3 and np.allclose(out.shapedirs, model.shapedirs[:, :, :7])
    assert "4 identity + 3 expression" in capsys.readouterr().out


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _EvilSystem:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", ["open", "system"])
def test_a_pickle_that_calls_a_function_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Evil(str(marker)) if payload == "open" else _EvilSystem()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"v_template": evil}, protocol=2))
    with pytest.raises(InputError, match="evil.pkl.*refusing to load it"):
        load_flame_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_cli_prints_one_line_for_a_refused_pickle(tmp_path, capsys):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": _EvilSystem()}, protocol=2))
    assert main(["convert-flame", str(tmp_path / "evil.pkl"), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing" in err[0] and "evil.pkl" in err[0]
    assert not (tmp_path / "o.npz").exists()


def test_truncated_pickle_is_one_clear_error(tmp_path):
    write_flame_style_pickle(tmp_path / "flame.pkl", make_toy_rig(), 2)
    data = (tmp_path / "flame.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.pkl.*truncated"):
        load_flame_pickle(tmp_path / "cut.pkl", n_shape=4)


def test_pickle_without_flame_keys_is_named(tmp_path):
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"v_template": np.zeros((3, 3))}, protocol=2))
    with pytest.raises(InputError, match="other.pkl.*missing f, shapedirs"):
        load_flame_pickle(tmp_path / "other.pkl")


def test_non_release_split_needs_n_shape(tmp_path):
    write_flame_style_pickle(tmp_path / "flame.pkl", make_toy_rig(), 2)
    with pytest.raises(InputError, match="pass --n-shape"):
        load_flame_pickle(tmp_path / "flame.pkl")
