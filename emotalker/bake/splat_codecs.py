"""Compressed encodings of one PLY frame: Niantic SPZ and PlayCanvas' compressed PLY (docs/exports.md).

Both encoders take the frame's PLY rows (emotalker.bake.ply.gaussian_rows: the
values the `.ply` frame holds, axes already applied) and return the file's
bytes, so a compressed frame decodes to the PLY frame within the format's
quantisation. Both keep the rows' order: splat i is the same Gaussian in every
frame of a sequence. Written here with numpy rather than taken from a library:
see docs/exports.md, "Why our own encoders".

SPZ, version 3 (github.com/nianticlabs/spz, README "File Format"): a gzip
stream of a 16-byte header (magic "NGSP", version, count, SH degree,
fractional bits, flags, reserved), then per attribute for every splat:
positions as 24-bit signed fixed point, alpha as sigmoid * 255, colour as
f_dc * 0.15 * 255 + 127.5, log scales as (s + 10) * 16, rotations as the
smallest three components of the unit quaternion (2-bit index of the largest,
3 x 10 bits: sign + 9-bit magnitude over 1/sqrt 2), and SH as x * 128 + 128
rounded to 5 bits (degree 1) or 4 bits (degrees 2-3), colour channel innermost.
SPZ is right-up-back on disk where PLY is right-down-front: y and z are
negated (and the quaternion and SH with them), as Niantic's own converter does.

Compressed PLY (PlayCanvas; the layout splat-transform reads and writes): a
`chunk` element of 18 floats (min/max of position, log scale and colour per
256 splats), a `vertex` element of four uint32 a splat (position and log scale
as 11-10-11 bits within the chunk's range, rotation as 2 + 3 x 10 bits
smallest-three, colour 8-8-8 within the chunk's range + opacity as sigmoid
8 bits) and an `sh` element of uint8 f_rest (value / 8 + 0.5, 8 bits).
"""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np

from emotalker.bake.ply import degree_for_columns

SH_C0 = 0.28209479177387814
SQRT1_2 = math.sqrt(0.5)

SPZ_MAGIC = 0x5053474E
SPZ_VERSION = 3
SPZ_COLOR_SCALE = 0.15
SPZ_SH_BITS = (5, 4)
"""Bits kept of an SH coefficient: degree 1, degrees 2 and 3 (Niantic's defaults)."""
SPZ_MAX_FRACTIONAL_BITS = 16
"""Position step 2^-16 m (15 um) unless the frame is too large for 24 bits at that step."""
RDF_TO_RUB = np.array([1.0, -1.0, -1.0])

CPLY_CHUNK = 256
CPLY_CHUNK_PROPERTIES = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
                         "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
                         "min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
CPLY_VERTEX_PROPERTIES = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
CPLY_SCALE_LIMIT = 20.0
"""Log scales beyond +-20 are clamped (as splat-transform's writer does)."""


def spz_sh_signs(k: int) -> np.ndarray:
    """Per SH coefficient (1..k-1 of INRIA's real SH order), its sign under y -> -y, z -> -z."""
    signs = [-1, -1, 1,                     # degree 1: y, z, x
             -1, 1, 1, -1, 1,               # degree 2: xy, yz, 3z^2-1, xz, x^2-y^2
             -1, 1, -1, -1, 1, -1, 1]       # degree 3: y(3x^2-y^2), xyz, y(5z^2-1), z(5z^2-3), x(5z^2-1), z(x^2-y^2), x(x^2-3y^2)
    return np.array(signs[:k - 1], dtype=np.float64)


def _columns(rows: np.ndarray) -> dict[str, np.ndarray]:
    """The rows' attributes by name, float64: position, dc, rest [N, 3, K-1], opacity, scale, rot (wxyz)."""
    n, p = rows.shape
    degree = degree_for_columns(p)
    k = (degree + 1) ** 2
    r = np.asarray(rows, dtype=np.float64)
    n_rest = 3 * (k - 1)
    return {"position": r[:, 0:3], "dc": r[:, 6:9], "rest": r[:, 9:9 + n_rest].reshape(n, 3, k - 1),
            "opacity": r[:, 9 + n_rest], "scale": r[:, 10 + n_rest:13 + n_rest], "rot": r[:, 13 + n_rest:17 + n_rest],
            "degree": degree}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _smallest_three(quats: np.ndarray, bits: int, encode) -> np.ndarray:
    """Unit quaternions [N, 4] -> uint32: the largest component's index in the top 2 bits, then the
    other three in index order, `bits` each, as `encode(value)` gives them (sign made so the largest
    is positive)."""
    q = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-30)
    largest = np.argmax(np.abs(q), axis=1)
    q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
    packed = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        packed = np.where(keep, (packed << np.uint32(bits)) | encode(q[:, i]), packed)
    return packed.astype("<u4")


def spz_fractional_bits(positions: np.ndarray) -> int:
    """The most fractional bits (up to SPZ_MAX_FRACTIONAL_BITS) that keep every coordinate in 24-bit fixed point."""
    extent = float(np.abs(positions).max(initial=0.0))
    if not math.isfinite(extent):
        raise ValueError("a position is not finite")
    if extent == 0.0:
        return SPZ_MAX_FRACTIONAL_BITS
    bits = math.floor(math.log2((2 ** 23 - 1) / extent))
    if bits < 0:
        raise ValueError(f"positions reach {extent:g}, beyond what SPZ's 24-bit fixed point holds")
    return min(SPZ_MAX_FRACTIONAL_BITS, bits)


def _spz_rotation_bits(values: np.ndarray) -> np.ndarray:
    magnitude = np.clip(np.floor(np.abs(values) / SQRT1_2 * 511 + 0.5), 0, 511).astype(np.uint32)
    return ((values < 0).astype(np.uint32) << np.uint32(9)) | magnitude


def _spz_sh(rest: np.ndarray) -> np.ndarray:
    """f_rest [N, 3, K-1] (RUB signs applied) -> uint8 [N, K-1, 3], each coefficient kept to its band's bits.

    Clamping to 0..255 before rounding to the band's steps gives what rounding first and clamping after
    gives, and keeps the arithmetic in small integers (the steps are powers of two)."""
    m = rest.shape[2]
    q = np.clip(np.rint(rest.astype(np.float32) * np.float32(128.0)), -128, 127).astype(np.int16) + 128
    step = np.array([1 << (8 - SPZ_SH_BITS[0 if j < 3 else 1]) for j in range(m)], dtype=np.int16)
    q = (q + step // 2) & ~(step - 1)
    return np.minimum(q, 255).astype(np.uint8).transpose(0, 2, 1)


def encode_spz(rows: np.ndarray) -> bytes:
    """PLY rows [N, P] -> the bytes of an SPZ version 3 file (gzip'd)."""
    c = _columns(rows)
    n = len(rows)
    position = c["position"] * RDF_TO_RUB
    bits = spz_fractional_bits(position)
    fixed = np.round(position * (1 << bits)).astype("<i4")
    positions = fixed.view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = _u8(_sigmoid(c["opacity"]) * 255.0)
    colors = _u8(c["dc"] * (SPZ_COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((c["scale"] + 10.0) * 16.0)
    xyzw = c["rot"][:, [1, 2, 3, 0]] * np.array([1.0, -1.0, -1.0, 1.0])  # conjugated by the y/z flip
    rotations = _smallest_three(xyzw, 10, _spz_rotation_bits)
    sh = _spz_sh(c["rest"] * spz_sh_signs(c["rest"].shape[2] + 1)[None, None, :])
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, SPZ_VERSION, n, c["degree"], bits, 0, 0)
    payload = b"".join([header, positions.tobytes(), alphas.tobytes(), colors.tobytes(), scales.tobytes(),
                        rotations.tobytes(), np.ascontiguousarray(sh).tobytes()])
    return gzip.compress(payload, compresslevel=6, mtime=0)  # mtime 0: the same frame gives the same bytes


def _unorm(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(values * top + 0.5), 0, top).astype(np.uint32)


def _chunk_normalised(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """values [C, 256, 3] -> 0..1 within each chunk's [lo, hi] (0 where the range is below 1e-5, as the reader expects)."""
    span = (hi - lo)[:, None, :]
    t = (values - lo[:, None, :]) / np.where(span < 1e-5, 1.0, span)
    return np.where(span < 1e-5, 0.0, np.clip(t, 0.0, 1.0))


def _pack_11_10_11(t: np.ndarray) -> np.ndarray:
    return (_unorm(t[..., 0], 11) << np.uint32(21)) | (_unorm(t[..., 1], 10) << np.uint32(11)) | _unorm(t[..., 2], 11)


def _cply_rotation_bits(values: np.ndarray) -> np.ndarray:
    return _unorm(values * SQRT1_2 + 0.5, 10)


def cply_header(n: int, degree: int) -> bytes:
    """The compressed PLY's ASCII header for `n` splats of SH degree `degree`."""
    lines = ["ply", "format binary_little_endian 1.0", f"element chunk {-(-n // CPLY_CHUNK)}"]
    lines += [f"property float {name}" for name in CPLY_CHUNK_PROPERTIES]
    lines += [f"element vertex {n}"] + [f"property uint {name}" for name in CPLY_VERTEX_PROPERTIES]
    n_rest = 3 * ((degree + 1) ** 2 - 1)
    if n_rest:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(n_rest)]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def encode_compressed_ply(rows: np.ndarray) -> bytes:
    """PLY rows [N, P] -> the bytes of a PlayCanvas compressed PLY."""
    c = _columns(rows)
    n = len(rows)
    n_chunks = -(-n // CPLY_CHUNK)
    pad = np.minimum(np.arange(n_chunks * CPLY_CHUNK), n - 1)  # the last chunk repeats its last splat
    colour = c["dc"] * SH_C0 + 0.5
    ranges, packed = [], []
    for values, clamp in ((c["position"], None), (c["scale"], CPLY_SCALE_LIMIT), (colour, None)):
        chunked = values[pad].reshape(n_chunks, CPLY_CHUNK, 3)
        lo, hi = chunked.min(axis=1), chunked.max(axis=1)
        if clamp is not None:
            lo, hi = np.clip(lo, -clamp, clamp), np.clip(hi, -clamp, clamp)
        lo, hi = lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)
        ranges += [lo, hi]
        packed.append(_chunk_normalised(chunked, lo, hi).reshape(-1, 3)[:n])
    chunk = np.concatenate(ranges, axis=1).astype("<f4")
    rgb = packed[2]
    color = ((_unorm(rgb[:, 0], 8) << np.uint32(24)) | (_unorm(rgb[:, 1], 8) << np.uint32(16))
             | (_unorm(rgb[:, 2], 8) << np.uint32(8)) | _unorm(_sigmoid(c["opacity"]), 8))
    vertex = np.stack([_pack_11_10_11(packed[0]), _smallest_three(c["rot"], 10, _cply_rotation_bits),
                       _pack_11_10_11(packed[1]), color], axis=1).astype("<u4")
    rest = c["rest"].reshape(n, -1)  # channel-major, as the PLY's f_rest
    sh = np.clip(np.floor((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)
    return cply_header(n, c["degree"]) + chunk.tobytes() + vertex.tobytes() + sh.tobytes()


ENCODERS = {"spz": encode_spz, "compressed-ply": encode_compressed_ply}
"""Encoding name -> PLY rows to file bytes."""
