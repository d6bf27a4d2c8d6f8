"""One frame of Gaussians as an INRIA 3DGS PLY, and the PLY sequence's JSON sidecar.

Each frame is a standalone binary little-endian PLY with one `vertex` element
whose float32 properties are, in this order (docs/architecture.md, "PLY sequence"):

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3

raw values as the INRIA writer stores them: opacity as a logit, scales as logs,
rotation as an (unnormalised) wxyz quaternion, colour as SH coefficients;
normals are zero; `f_rest` is channel-major (every coefficient of red, then
green, then blue). `sh_degree` truncates (or zero-pads) the SH bands;
`up_axis="z"` rotates the frame as emotalker.bake.axes documents.

The writer builds one float32 [N, P] array and writes it after the header in a
single call: no Python loop over Gaussians.

A sequence's frames can also be written compressed (`ENCODINGS`): SPZ or
PlayCanvas' compressed PLY, encoded from the same rows by
emotalker.bake.splat_codecs, with their own frame suffix and sidecar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emotalker.core.base.errors import InputError
from emotalker.core.base.fileio import atomic_path, write_json

from emotalker.bake.axes import UP_AXES, from_up_axis, to_up_axis

SIDECAR_FORMAT = "emotalker-plyseq/1"
FRAME_DIGITS = 6


@dataclass(frozen=True)
class SequenceEncoding:
    """How a sequence's frames are stored: `<name>_NNNNNN<suffix>`, described by `<name><sidecar_suffix>`."""

    suffix: str
    sidecar_suffix: str
    sidecar_format: str


ENCODINGS = {
    "ply": SequenceEncoding(".ply", ".json", SIDECAR_FORMAT),
    "spz": SequenceEncoding(".spz", ".spz.json", "emotalker-spzseq/1"),
    "compressed-ply": SequenceEncoding(".compressed.ply", ".compressed-ply.json", "emotalker-compressed-plyseq/1"),
}
"""Every per-frame Gaussian encoding a bake writes (docs/exports.md)."""


def ply_property_names(sh_degree: int) -> list[str]:
    """The vertex property names, in file order, for SH degree 0..3."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def ply_header(count: int, sh_degree: int) -> bytes:
    """The ASCII header of a frame with `count` Gaussians."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    lines += [f"property float {name}" for name in ply_property_names(sh_degree)]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def frame_pattern(name: str, encoding: str = "ply") -> str:
    """The frames' file name with the frame number left to fill: `<name>_{frame:06d}.ply` (or the encoding's suffix)."""
    return f"{name}_{{frame:0{FRAME_DIGITS}d}}{ENCODINGS[encoding].suffix}"


def frame_path(out_dir: str | os.PathLike, name: str, frame: int, encoding: str = "ply") -> Path:
    """`<out_dir>/<name>_000001.ply` for timeline frame 1."""
    return Path(out_dir) / frame_pattern(name, encoding).format(frame=frame)


def gaussian_rows(means: np.ndarray, quats: np.ndarray, log_scales: np.ndarray, opacity_logits: np.ndarray,
                  sh: np.ndarray, sh_degree: int | None = None, up_axis: str = "y") -> np.ndarray:
    """Raw Gaussians (means [N,3], quats [N,4] wxyz, log_scales [N,3], opacity_logits [N], sh [N,K,3])
    -> the PLY rows [N, P] float32 in `ply_property_names` order."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    n, k = sh.shape[0], sh.shape[1]
    degree = int(round(k ** 0.5)) - 1 if sh_degree is None else sh_degree
    want = (degree + 1) ** 2
    sh = sh[:, :want]
    means, quats, sh = to_up_axis(means, quats, sh, up_axis)
    n_rest = 3 * (want - 1)
    rows = np.zeros((n, 9 + n_rest + 8), dtype="<f4")
    rows[:, 0:3] = means
    rows[:, 6:9] = sh[:, 0]
    if want > 1:
        have = sh.shape[1] - 1  # fewer bands than asked: the missing ones stay zero
        rest = rows[:, 9:9 + n_rest].reshape(n, 3, want - 1)
        rest[:, :, :have] = sh[:, 1:].transpose(0, 2, 1)  # channel-major
    rows[:, 9 + n_rest] = opacity_logits
    rows[:, 10 + n_rest:13 + n_rest] = log_scales
    rows[:, 13 + n_rest:17 + n_rest] = quats
    return rows


def write_ply(path: str | os.PathLike, gaussians: Any, *, sh_degree: int | None = None, up_axis: str = "y",
              atomic: bool = True) -> int:
    """Write one frame of `Gaussians` (emotalker.core.render.gaussians); returns the bytes written.

    `sh_degree` None keeps the container's degree. `atomic=False` writes `path`
    directly (for callers that already write to a temporary file).
    """
    return write_rows(path, frame_rows(gaussians, sh_degree=sh_degree, up_axis=up_axis), atomic=atomic)


def frame_rows(gaussians: Any, *, sh_degree: int | None = None, up_axis: str = "y") -> np.ndarray:
    """The PLY rows [N, P] of one frame of `Gaussians` (what every encoding is made from)."""
    arrays = [_numpy(getattr(gaussians, f)) for f in ("means", "quats", "log_scales", "opacity_logits", "sh")]
    return gaussian_rows(*arrays, sh_degree=sh_degree, up_axis=up_axis)


def write_rows(path: str | os.PathLike, rows: np.ndarray, atomic: bool = True) -> int:
    """Write PLY rows [N, P] float32 (P fixes the SH degree); returns the bytes written."""
    n, p = rows.shape
    header = ply_header(n, degree_for_columns(p))
    rows = np.ascontiguousarray(rows, dtype="<f4")
    if not atomic:
        _write_file(path, header, rows)
    else:
        with atomic_path(path) as tmp:
            _write_file(tmp, header, rows)
    return len(header) + rows.nbytes


def _write_file(path: str | os.PathLike, header: bytes, rows: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(header)
        f.write(memoryview(rows).cast("B"))


@dataclass(frozen=True)
class PlyFrame:
    """A frame as read back: property names [P] and rows [N, P] float32."""

    names: list[str]
    rows: np.ndarray

    @property
    def sh_degree(self) -> int:
        return degree_for_columns(len(self.names))

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, self.names.index(name)]

    def raw(self, up_axis: str = "y") -> dict[str, np.ndarray]:
        """The raw attributes back in FLAME's y-up (undoing `up_axis`):
        means [N,3], quats [N,4], log_scales [N,3], opacity_logits [N], sh [N,K,3]."""
        n, k = len(self.rows), (self.sh_degree + 1) ** 2
        r = self.rows.astype(np.float64)
        n_rest = 3 * (k - 1)
        sh = np.empty((n, k, 3))
        sh[:, 0] = r[:, 6:9]
        sh[:, 1:] = r[:, 9:9 + n_rest].reshape(n, 3, k - 1).transpose(0, 2, 1)
        means, quats, sh = from_up_axis(r[:, 0:3], r[:, 13 + n_rest:17 + n_rest], sh, up_axis)
        return {"means": means, "quats": quats, "log_scales": r[:, 10 + n_rest:13 + n_rest],
                "opacity_logits": r[:, 9 + n_rest], "sh": sh}


def read_ply(path: str | os.PathLike) -> PlyFrame:
    """Read a frame written by `write_ply` (any binary little-endian all-float vertex PLY)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.readline().strip() != b"ply":
                raise InputError(path, "not a PLY file")
            names, count, fmt = [], None, None
            while True:
                line = f.readline()
                if not line:
                    raise InputError(path, "PLY header has no end_header")
                words = line.decode("ascii", "replace").split()
                if not words or words[0] in ("comment", "obj_info"):
                    continue
                if words[0] == "end_header":
                    break
                if words[0] == "format":
                    fmt = words[1]
                elif words[0] == "element":
                    if words[1] != "vertex" or count is not None:
                        raise InputError(path, f"unexpected PLY element {words[1]!r}; expected one vertex element")
                    count = int(words[2])
                elif words[0] == "property":
                    if words[1] not in ("float", "float32"):
                        raise InputError(path, f"PLY property {words[-1]!r} is {words[1]}, expected float")
                    names.append(words[2])
            if fmt != "binary_little_endian" or count is None:
                raise InputError(path, f"expected a binary_little_endian vertex PLY, got format {fmt!r}")
            data = np.fromfile(f, dtype="<f4", count=count * len(names))
    except FileNotFoundError:
        raise InputError(path, "PLY file not found") from None
    if data.size != count * len(names):
        raise InputError(path, f"PLY data is truncated: {data.size} of {count * len(names)} values")
    return PlyFrame(names, data.reshape(count, len(names)))


def write_sidecar(out_dir: str | os.PathLike, name: str, *, fps: float, frame_start: int, frame_end: int, count: int,
                  sh_degree: int, up_axis: str, audio: str | None, units: str = "metres", encoding: str = "ply") -> Path:
    """Write `<out_dir>/<name>.json` (another encoding: `<name>.spz.json`, ...) describing the sequence
    (docs/architecture.md, "PLY sequence"; docs/exports.md)."""
    kind = ENCODINGS[encoding]
    path = Path(out_dir) / f"{name}{kind.sidecar_suffix}"
    sidecar = {"format": kind.sidecar_format, "fps": fps, "frame_start": int(frame_start), "frame_end": int(frame_end),
               "count": int(count), "sh_degree": int(sh_degree), "up_axis": up_axis, "units": units,
               "audio": audio, "frame_pattern": frame_pattern(name, encoding)}
    if encoding == "ply":
        sidecar["properties"] = ply_property_names(sh_degree)
    else:  # what the frames decode to: the PLY frame of these properties, within the encoding's quantisation
        sidecar["decodes_to"] = ply_property_names(sh_degree)
    write_json(path, sidecar)
    return path


def write_frame(path: str | os.PathLike, gaussians: Any, *, encoding: str = "ply", sh_degree: int | None = None,
                up_axis: str = "y") -> int:
    """Write one frame in `encoding` (ENCODINGS) to `path` directly (not atomically); returns the bytes written."""
    if encoding == "ply":
        return write_ply(path, gaussians, sh_degree=sh_degree, up_axis=up_axis, atomic=False)
    from emotalker.bake.splat_codecs import ENCODERS

    data = ENCODERS[encoding](frame_rows(gaussians, sh_degree=sh_degree, up_axis=up_axis))
    Path(path).write_bytes(data)
    return len(data)


def ply_sink(out_dir: str | os.PathLike, name: str, *, sh_degree: int, up_axis: str = "y",
             count: int | None = None, to_gaussians: Callable[[Any], Any] = lambda item: item,
             encoding: str = "ply"):
    """A FrameSink writing `<out_dir>/<name>_NNNNNN.ply` (or the encoding's suffix) from each frame's item.

    `to_gaussians(item)` picks the frame's `Gaussians` out of what the producer
    returns. Every frame must hold `count` Gaussians (when None, the first frame
    written fixes it): the sequence has the same count and order in every frame.
    """
    from emotalker.bake.sequence import FrameSink

    if up_axis not in UP_AXES:
        raise InputError("--up-axis", f"must be one of {', '.join(UP_AXES)}, got {up_axis!r}")
    if not 0 <= sh_degree <= 3:
        raise InputError("--sh-degree", f"must be 0..3, got {sh_degree}")
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
    expected = [count]

    def write(item: Any, tmp: Path) -> None:
        gaussians = to_gaussians(item)
        if expected[0] is None:
            expected[0] = len(gaussians)
        if len(gaussians) != expected[0]:
            raise ValueError(f"a frame has {len(gaussians)} Gaussians, the sequence {expected[0]}")
        write_frame(tmp, gaussians, encoding=encoding, sh_degree=sh_degree, up_axis=up_axis)

    return FrameSink(encoding, Path(out_dir), frame_pattern(name, encoding), write)


def degree_for_columns(p: int) -> int:
    """The SH degree 0..3 of a PLY frame with `p` columns; ValueError when none fits."""
    for degree in range(4):
        if len(ply_property_names(degree)) == p:
            return degree
    raise ValueError(f"{p} PLY columns match no SH degree 0..3")


def _numpy(t: Any) -> np.ndarray:
    """A torch tensor (any device, float dtype) or array -> numpy float32/float64 array."""
    if hasattr(t, "detach"):
        t = t.detach().to("cpu")
        if not t.is_floating_point() or t.element_size() < 4:
            t = t.float()
        return t.numpy()
    return np.asarray(t)
