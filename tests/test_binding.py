import numpy as np
import torch
from scipy.spatial import cKDTree

from emotalker.core.rig.binding import interpolate, interpolate_batched, poisson_disk_surface, random_surface_points
from emotalker.core.rig.deformation_transfer import deformation_gradients, polar_rotation, rotation_quats
from emotalker.core.rig.flame import axis_angle_to_matrix
from stage1_rig import tiny_rig


def test_poisson_disk_gives_n_valid_points_spaced_better_than_random():
    rig = tiny_rig()
    v, f = rig.v_template.astype(np.float64), rig.faces
    n = 400
    fid, bary = poisson_disk_surface(v, f, n, seed=3)
    assert fid.shape == (n,) and bary.shape == (n, 3)
    assert (bary >= -1e-12).all() and np.allclose(bary.sum(1), 1)
    pts = interpolate(v, f, fid, bary)
    rfid, rbary = random_surface_points(v, f, n, np.random.default_rng(3))
    rpts = interpolate(v, f, rfid, rbary)
    min_nn = lambda p: cKDTree(p).query(p, k=2)[0][:, 1].min()  # noqa: E731
    # Blue noise: the closest pair is far apart compared with white noise.
    assert min_nn(pts) > 3 * min_nn(rpts)
    # Deterministic for a seed.
    fid2, bary2 = poisson_disk_surface(v, f, n, seed=3)
    assert (fid2 == fid).all() and np.allclose(bary2, bary)


def test_barycentric_interpolation_is_exact_for_linear_fields_and_batches():
    rig = tiny_rig()
    v, f = rig.v_template.astype(np.float64), rig.faces
    fid, bary = poisson_disk_surface(v, f, 200, seed=0)
    M, c = np.random.default_rng(0).normal(size=(3, 2)), np.array([0.3, -1.0])
    pts = interpolate(v, f, fid, bary)
    assert np.allclose(interpolate(v @ M + c, f, fid, bary), pts @ M + c)
    vb = torch.tensor(np.stack([v, 2 * v]))
    out = interpolate_batched(vb, torch.tensor(f), torch.tensor(fid), torch.tensor(bary))
    assert torch.allclose(out[1], 2 * torch.tensor(pts))


def test_deformation_gradient_recovers_a_global_affine_map():
    rig = tiny_rig()
    v, f = rig.v_template.astype(np.float64), rig.faces
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)).numpy()
    deformed = 1.7 * v @ R.T + np.array([0.01, 0.02, -0.03])
    Q, b = deformation_gradients(v, deformed[None], f)
    # A similarity transform keeps the normalised 4th vertex consistent only up to sqrt scale;
    # a pure rotation + translation must come back exactly.
    Q, b = deformation_gradients(v, (v @ R.T + 0.01)[None], f)
    assert np.allclose(Q[0], R, atol=1e-9) and np.allclose(b[0], 0.01, atol=1e-9)
    # Points on each triangle land on the deformed triangle for any deformation.
    bent = v + 0.01 * np.sin(30 * v)
    Q, b = deformation_gradients(v, bent[None], f)
    fid, bary = poisson_disk_surface(v, f, 100, seed=1)
    x = interpolate(v, f, fid, bary)
    mapped = np.einsum("nij,nj->ni", Q[0, fid], x) + b[0, fid]
    assert np.allclose(mapped, interpolate(bent, f, fid, bary), atol=1e-12)
    Rp = polar_rotation(Q[0])
    assert np.allclose(Rp @ np.swapaxes(Rp, -1, -2), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(Rp), 1)


def test_rotation_quats_of_a_known_rotation():
    aa = torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64)
    q = rotation_quats(2.0 * axis_angle_to_matrix(aa).numpy())  # scaling does not change the rotation
    assert np.allclose(q, [np.cos(0.2), 0, 0, np.sin(0.2)], atol=1e-9)
