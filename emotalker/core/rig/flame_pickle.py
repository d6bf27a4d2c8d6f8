"""Read a FLAME release `.pkl` safely, without chumpy, and convert it to a FlameModel.

FLAME 2020/2023 models are Python 2 pickles holding numpy arrays, chumpy `Ch`
objects (arrays wrapped for autodiff) and a scipy sparse `J_regressor`. Plain
`pickle.load` would import chumpy (unmaintained, broken on current numpy) and,
worse, runs whatever a pickle names. `RestrictedFlameUnpickler` resolves only an
allow-list of numpy reconstruction helpers; chumpy and scipy-sparse classes become
inert stand-ins that just keep their state, and every other global is refused.
Nothing a pickle declares is allocated before its size is checked against
MAX_ARRAY_BYTES: an array built from a shape, a sparse matrix made dense.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import MAX_ARRAY_BYTES
from emotalker.core.rig.flame import FlameModel

# FLAME releases: 300 identity then 100 expression components in shapedirs.
FLAME_N_SHAPE = 300
FLAME_N_EXPR = 100


class _TooLarge(ValueError):
    """An array the pickle asks for would take more than MAX_ARRAY_BYTES."""


def _declared_bytes(shape: Any, dtype: Any, what: str) -> int:
    """Bytes an array of `shape` and `dtype` takes; _TooLarge when more than MAX_ARRAY_BYTES."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ValueError(f"{what} has an invalid shape {shape!r}")
    size = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if size > MAX_ARRAY_BYTES:
        raise _TooLarge(f"{what} of shape {shape} would take {size / 2**30:.1f} GiB, more than the limit of "
                        f"{MAX_ARRAY_BYTES / 2**30:g} GiB")
    return size


class _ChumpyStandIn:
    """Holds a chumpy object's pickled state; its array lives under 'x'."""

    def __init__(self, *args: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_numpy(self) -> np.ndarray:
        if "x" not in self.state:
            raise ValueError(f"a chumpy object without a stored array (keys: {sorted(self.state)})")
        return np.asarray(self.state["x"])


class _SparseStandIn:
    """Holds a scipy.sparse CSC/CSR/COO matrix's pickled state."""

    kind = "csc"

    def __init__(self, *args: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {}

    @property
    def shape(self) -> tuple:
        return tuple(self.state.get("_shape") or self.state.get("shape") or ())

    def dense_bytes(self) -> int:
        """What `to_numpy` allocates (checked against MAX_ARRAY_BYTES first: the shape is two numbers)."""
        return _declared_bytes(self.shape, np.asarray(self.state.get("data", ())).dtype, "a sparse matrix")

    def to_numpy(self) -> np.ndarray:
        import scipy.sparse as sp

        s = self.state
        shape = self.shape
        if self.kind == "coo":
            return sp.coo_matrix((s["data"], (s["row"], s["col"])), shape=shape).toarray()
        ctor = sp.csc_matrix if self.kind == "csc" else sp.csr_matrix
        return ctor((s["data"], s["indices"], s["indptr"]), shape=shape).toarray()


def _sparse_class(kind: str) -> type:
    return type(f"_Sparse_{kind}", (_SparseStandIn,), {"kind": kind})


_SPARSE = {f"{k}_matrix": _sparse_class(k) for k in ("csc", "csr", "coo")}


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor restricted to our stand-ins (protocol 0/1 pickles)."""
    if not (isinstance(cls, type) and issubclass(cls, (_ChumpyStandIn, _SparseStandIn)) and base is object):
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    return cls.__new__(cls)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild bytes; only the latin-1 codec is allowed."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def _multiarray():
    try:  # numpy >= 2 moved the module; pickles name either path
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def _numpy_globals(unpickler: "RestrictedFlameUnpickler") -> dict[tuple[str, str], Any]:
    multiarray = _multiarray()
    allowed = {
        ("numpy", "ndarray"): unpickler.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copy_reg", "_reconstructor"): _safe_reconstructor,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("__builtin__", "builtins"):  # plain containers in chumpy's bookkeeping state
        allowed[(mod, "set")] = set
        allowed[(mod, "frozenset")] = frozenset
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = unpickler.reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class RestrictedFlameUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only what a FLAME model legitimately contains."""

    def __init__(self, file, path: str | os.PathLike):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _numpy_globals(self)
        self._allocated = 0

    def _charge(self, shape: Any, dtype: Any) -> None:
        """Count an allocation the pickle asks for; _TooLarge past MAX_ARRAY_BYTES in all."""
        self._allocated += _declared_bytes(shape, dtype, "an array")
        _declared_bytes((self._allocated,), np.uint8, "the arrays built so far")

    def ndarray(self, shape: Any, dtype: Any = float, *args: Any) -> np.ndarray:
        """numpy.ndarray(shape, dtype, ...) as a pickle may call it, after the size check."""
        self._charge(shape, dtype)
        return np.ndarray(shape, dtype, *args)

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's _reconstruct (what every pickled array starts from), for plain arrays, after the size check."""
        if subtype not in (self.ndarray, np.ndarray):  # bound methods compare equal, never identical
            raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}")
        self._charge(shape, dtype)
        return _multiarray()._reconstruct(np.ndarray, shape, dtype)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        if module.startswith("scipy.sparse") and name in _SPARSE:
            return _SPARSE[name]
        raise InputError(self._path, f"the pickle refers to {module}.{name}, which a FLAME model never holds; "
                                     "refusing to load it (it could run code)")


def _to_numpy(value: Any) -> Any:
    if isinstance(value, (_ChumpyStandIn, _SparseStandIn)):
        return value.to_numpy()
    return value


def read_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """The pickle's dict with chumpy and sparse values turned into dense numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "FLAME model file not found")
    try:
        with open(path, "rb") as fh:
            raw = RestrictedFlameUnpickler(fh, path).load()
    except InputError:
        raise
    except (_TooLarge, MemoryError) as exc:
        raise InputError(path, f"refusing the FLAME pickle: {exc or 'it asks for more memory than there is'}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise InputError(path, f"not a readable FLAME pickle ({type(exc).__name__}: {exc}); is it truncated?") from None
    if not isinstance(raw, dict):
        raise InputError(path, f"a FLAME pickle holds a dict, this one holds {type(raw).__name__}")
    try:
        dense = sum(v.dense_bytes() for v in raw.values() if isinstance(v, _SparseStandIn))
        _declared_bytes((dense,), np.uint8, "its sparse matrices made dense")
        return {k: _to_numpy(v) for k, v in raw.items()}
    except _TooLarge as exc:
        raise InputError(path, f"refusing the FLAME pickle: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"could not rebuild an array: {exc}") from None


def load_flame_pickle(path: str | os.PathLike, n_shape: int | None = None, n_expr: int | None = None) -> FlameModel:
    """Convert a FLAME release pickle to a validated FlameModel.

    shapedirs of a release hold 300 identity + 100 expression components; other
    splits need `n_shape` (the rest is expression). `n_expr` may keep fewer.
    """
    data = read_flame_pickle(path)
    required = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
    missing = [k for k in required if k not in data]
    if missing:
        raise InputError(path, f"not a FLAME model: missing {', '.join(missing)}")
    arr = {k: np.asarray(data[k]) for k in required}
    shapedirs = arr["shapedirs"].astype(np.float32)
    total = shapedirs.shape[-1] if shapedirs.ndim == 3 else 0
    if n_shape is None:
        if total != FLAME_N_SHAPE + FLAME_N_EXPR:
            raise InputError(path, f"shapedirs has {total} components, not FLAME's 300+100: pass --n-shape")
        n_shape = FLAME_N_SHAPE
    if not 0 <= n_shape <= total:
        raise InputError(path, f"--n-shape {n_shape} is outside 0..{total}")
    avail_expr = total - n_shape
    n_expr = avail_expr if n_expr is None else n_expr
    if not 0 <= n_expr <= avail_expr:
        raise InputError(path, f"--n-expr {n_expr} is outside 0..{avail_expr}")
    shapedirs = shapedirs[:, :, : n_shape + n_expr]
    posedirs = arr["posedirs"].astype(np.float32)
    V = arr["v_template"].shape[0]
    if posedirs.ndim == 2:  # some exports flatten to [V*3, P]
        posedirs = posedirs.reshape(V, 3, -1)
    kintree = arr["kintree_table"].astype(np.int64)
    kintree[0, 0] = -1  # FLAME stores the root's parent as uint32 max
    eyelids = np.asarray(data["eyelids"], dtype=np.float32) if "eyelids" in data else None
    model = FlameModel(
        v_template=arr["v_template"].astype(np.float32),
        faces=arr["f"].astype(np.int64),
        shapedirs=shapedirs,
        n_shape=int(n_shape),
        n_expr=int(n_expr),
        posedirs=posedirs,
        J_regressor=arr["J_regressor"].astype(np.float32),
        weights=arr["weights"].astype(np.float32),
        kintree_table=kintree,
        eyelids=eyelids,
    )
    return model.validate(path)
