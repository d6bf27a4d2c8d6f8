"""Atomic writes and the safetensors + JSON sidecar format used for all our tensors.

Nothing here uses pickle. Writes go to a temporary file in the same folder and
are moved into place with os.replace, so a crash or Ctrl-C never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.limits import MAX_ARRAY_BYTES, MAX_JSON_BYTES, MAX_JSON_DEPTH


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


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, found without parsing it (so without
    recursion): strings are cut out, then the brackets are counted in chunks."""
    bare = _JSON_STRING.sub("", text).encode("ascii", "ignore")
    codes = np.frombuffer(bare, np.uint8)
    level = deepest = 0
    for start in range(0, len(codes), 1 << 20):
        depth = np.cumsum(_BRACKET_STEP[codes[start:start + (1 << 20)]], dtype=np.int64) + level
        deepest, level = max(deepest, int(depth.max())), int(depth[-1])
    return deepest


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def parse_json(text: str, source: str | os.PathLike | None, what: str = "JSON", *, allow_nan: bool = True) -> Any:
    """`text` parsed, or InputError naming `source` when it is not JSON or nests deeper than MAX_JSON_DEPTH.

    Every JSON we read (files through read_json, worker request lines) goes through here. Python's
    parser recurses once a level, so the depth is measured first. `allow_nan=False` also refuses
    NaN, Infinity and numbers that overflow to infinity (JSON has none; files Python wrote may)."""
    deepest = json_depth(text)
    if deepest > MAX_JSON_DEPTH:
        raise InputError(source, f"not a valid {what}: it nests {deepest} levels deep, more than the limit of "
                                 f"{MAX_JSON_DEPTH}")
    strict = {} if allow_nan else {"parse_constant": _refuse_constant, "parse_float": _finite_float}
    try:
        return json.loads(text, **strict)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a refused constant, a 5000-digit integer
        raise InputError(source, f"not a valid {what}: {exc}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON, raising InputError naming the file when it is missing, malformed, larger than
    MAX_JSON_BYTES (checked before reading) or nested deeper than MAX_JSON_DEPTH."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} not found")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(path, f"{what} is {path.stat().st_size} bytes, more than the limit of {MAX_JSON_BYTES}")
    with open(path, "rb") as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)  # the file may have grown since stat
    if len(raw) > MAX_JSON_BYTES:
        raise InputError(path, f"{what} is more than the limit of {MAX_JSON_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a valid {what}: {exc}") from None
    return parse_json(text, path, what)


def _check_npz_sizes(zf: Any, path: Path, what: str) -> None:
    """InputError unless the members of an npz hold at most MAX_ARRAY_BYTES (uncompressed, by the zip's
    directory) and each array's header declares no more than its member holds, so that loading
    allocates no more than the limit whatever the headers say."""
    total = sum(info.file_size for info in zf.infolist())
    if total > MAX_ARRAY_BYTES:
        raise InputError(path, f"the {what} file's arrays take {total} bytes, more than the limit of "
                               f"{MAX_ARRAY_BYTES}")
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    for info in zf.infolist():
        with zf.open(info) as member:
            if member.read(6) != b"\x93NUMPY":
                continue  # not an array: numpy reads it as its bytes, counted in `total`
            member.seek(0)
            version = np.lib.format.read_magic(member)
            if version not in readers:
                raise InputError(path, f"{info.filename}: unsupported .npy version {version}")
            shape, _, dtype = readers[version](member)
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size - member.tell():
                raise InputError(path, f"{info.filename} declares an array of shape {shape} {dtype} ({declared} "
                                       f"bytes) but holds {info.file_size - member.tell()}; is it truncated?")


def read_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (never pickled objects); InputError naming the file when it is
    missing, truncated, not an npz or larger than MAX_ARRAY_BYTES. `what` names the content for the message."""
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        with zipfile.ZipFile(path) as zf:  # first, so that np.load never meets a bare .npy or a pickle
            _check_npz_sizes(zf, path, what)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error) as exc:
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
            meta = parse_json((f.metadata() or {}).get("emotalker", "{}"), path, "safetensors metadata")
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
