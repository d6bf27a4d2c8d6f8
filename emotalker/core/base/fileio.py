"""Atomic writes and the safetensors + JSON sidecar format used for all our tensors.

Nothing here uses pickle. Writes go to a temporary file in the same folder and
are moved into place with os.replace, so a crash or Ctrl-C never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from emotalker.core.base.errors import InputError


def _process_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_process_umask()
"""The mode of every file we write: what open() would give under the user's umask."""


def check_writable_folder(path: str | os.PathLike) -> Path:
    """InputError when the folder `path` is a file, or when it (or, while absent, the nearest folder it would
    be made in) cannot be written by this user; nothing is made."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise InputError(existing, "is a file, not a folder; name a folder to write into"
                         if existing == path else f"is a file, so {path} cannot be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(existing, "is read-only for this user; name a folder you can write into")
    return path


def make_output_folder(path: str | os.PathLike) -> Path:
    """The user-named output folder `path`, checked (check_writable_folder) and made when absent."""
    path = check_writable_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_file(path: str | os.PathLike, suffix: str, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """The user-named output file `path`: InputError when it names a folder, does not end in `suffix`, is one
    of `inputs` or cannot be written. Checked before any work starts; nothing is made."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"is a folder; name a {suffix} file to write")
    if path.suffix.lower() != suffix:
        raise InputError(path, f"the file to write must end in {suffix}")
    for source in inputs:
        if Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise InputError(path, "is also the input file; write to another file")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(path, "is read-only for this user")
    check_writable_folder(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically.

    The suffix is kept so that writers that look at the extension (PIL, numpy) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 and some writers recreate the file: set the umask's permissions last.
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.filename is None:  # a failed write() names no file: name the one being written (disk full)
            exc.filename = os.fspath(path)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, raising InputError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a valid {what}: {exc}") from None


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (never pickled objects); InputError naming the file when it is
    missing, truncated or not an npz. `what` names the content for the message."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"not a readable .npz {what} file ({exc}); is it truncated?") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Save a dict of torch tensors or numpy arrays as safetensors, atomically.

    `metadata` (JSON-serialisable) is stored in the safetensors header under the
    key "emotalker" so that one file is self-describing.
    """
    import torch
    from safetensors.torch import save_file

    clean = {}
    for name, value in tensors.items():
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        clean[name] = t.detach().to("cpu").contiguous()
    header = {"emotalker": json.dumps(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=header)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Load (tensors, metadata) written by `save_tensors`; InputError on a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("emotalker", "{}"))
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a valid safetensors file ({exc})") from None
    require_finite(tensors, path)
    return tensors, meta


def require_finite(tensors: dict[str, Any], source: str | os.PathLike | None, what: str = "tensor",
                   cause: str = "the file is corrupt") -> None:
    """InputError naming `source` and the first tensor holding a NaN or infinite value.

    Weights are checked on load because flipped bytes in a weights file bake frames of
    NaN without a word (no stored tensor of ours is ever meant to hold one)."""
    import torch

    for name, value in tensors.items():
        # A NaN or infinity anywhere makes the sum non-finite: one pass and no mask in the usual case
        # (the bake checks every chunk of frames); a sum that merely overflowed is counted exactly.
        if not value.is_floating_point() or bool(torch.isfinite(value.sum())):
            continue
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise InputError(source, f"{what} {name!r} holds {bad} NaN or infinite values of {value.numel()}; "
                                     f"{cause}")
