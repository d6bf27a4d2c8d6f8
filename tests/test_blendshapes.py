import numpy as np
import pytest
import torch

from emotalker.core.rig.binding import interpolate_batched
from emotalker.core.models.blendshapes import BlendshapeConfig, GaussianBlendshapes, rotate_sh_band1
from emotalker.core.rig.deformation_transfer import deformation_gradients
from emotalker.core.base.errors import InputError
from emotalker.core.rig.flame import FlameParams, axis_angle_to_matrix
from emotalker.core.base.quaternion import quat_to_matrix
from stage1_rig import tiny_rig

SH_C1 = 0.4886025119029199


@pytest.fixture(scope="module")
def rig():
    return tiny_rig()


@pytest.fixture()
def model(rig):
    return GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=300, n_blendshapes=50, n_teeth=40))


def random_params(B, n_expr, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return FlameParams(expr=2 * r(B, n_expr) * scale, jaw=0.3 * r(B, 3) * scale, neck=0.2 * r(B, 3) * scale,
                       eyes=0.2 * r(B, 6) * scale, eyelids=torch.rand(B, 2, generator=g) * scale,
                       global_pose=0.3 * r(B, 3) * scale, transl=0.05 * r(B, 3) * scale)


def test_initial_means_lie_on_the_deformed_flame_surface_for_any_expression_and_pose(model, rig):
    assert model.config.n_blendshapes == rig.n_expr  # K is capped by the rig's components
    p = random_params(4, rig.n_expr)
    with torch.no_grad():
        frames = model.evaluate(p)
        verts, _ = model.rig()(p)
        surface = interpolate_batched(verts, model.rig().faces, model.face_ids, model.bary)
    N = model.n_gaussians
    err = (frames.means[:, :N] - surface).norm(dim=-1).max()
    assert err < 1e-5
    # ... and the surface really moved: the check is not of a rest pose against itself.
    assert (frames.means[:, :N] - model.means[None]).norm(dim=-1).mean() > 5e-3


def test_rest_parameters_reproduce_the_neutral_gaussians(model):
    g = model(FlameParams(expr=torch.zeros(1, 8)))[0]
    N = model.n_gaussians
    assert len(g) == N + model.n_teeth
    assert torch.allclose(g.means[:N], model.means, atol=1e-6)
    assert torch.allclose(torch.nn.functional.normalize(g.quats, dim=-1)[:, 0], torch.ones(len(g)), atol=1e-6)
    assert torch.allclose(g.sh[:N], torch.cat([model.sh_dc, model.sh_rest], 1), atol=1e-6)


def test_off_surface_gaussians_move_with_their_triangles_affine_map(model, rig):
    # Deformation transfer: under psi_k = 1 a point off the surface maps by x -> Q_k x + b_k.
    with torch.no_grad():
        normal_push = 0.003 * torch.randn(model.n_gaussians, 3, generator=torch.Generator().manual_seed(1))
        model.means += normal_push
    k = 3
    expr = torch.zeros(1, rig.n_expr)
    expr[0, k] = 1.0
    with torch.no_grad():
        means = model.evaluate(FlameParams(expr=expr)).means[0, : model.n_gaussians].double()
    rest = rig.v_template.astype(np.float64)
    deformed = rest + rig.shapedirs[:, :, rig.n_shape + k]
    Q, b = deformation_gradients(rest, deformed[None], rig.faces)
    fid = model.face_ids.numpy()
    expected = np.einsum("nij,nj->ni", Q[0, fid], model.means.detach().double().numpy()) + b[0, fid]
    assert np.abs(means.numpy() - expected).max() < 2e-6


def test_global_rotation_turns_every_gaussian_and_its_sh(model):
    aa = torch.tensor([[0.2, 0.5, -0.1]])
    with torch.no_grad():
        model.sh_rest[:, 0:3] = torch.randn(model.n_gaussians, 3, 3)
        g = model(FlameParams(global_pose=aa))[0]
    R = axis_angle_to_matrix(aa)[0]
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    assert torch.allclose(quat_to_matrix(q), R.expand(len(g), 3, 3), atol=1e-5)
    # The band-1 colour seen along a world direction equals the canonical colour along the canonical direction.
    d = torch.nn.functional.normalize(torch.tensor([0.3, -0.4, 0.8]), dim=0)
    basis = lambda d: SH_C1 * torch.stack([-d[1], d[2], -d[0]])  # noqa: E731
    N = model.n_gaussians
    world = torch.einsum("k,nkc->nc", basis(R @ d), g.sh[:N, 1:4])
    canon = torch.einsum("k,nkc->nc", basis(d), model.sh_rest[:, 0:3].detach())
    assert torch.allclose(world, canon, atol=1e-5)


def test_rotate_sh_band1_inverts():
    sh = torch.randn(5, 4, 3)
    R = axis_angle_to_matrix(torch.randn(5, 3))
    back = rotate_sh_band1(rotate_sh_band1(sh, R), R.transpose(1, 2))
    assert torch.allclose(back, sh, atol=1e-5)


def test_learned_deltas_are_masked_per_gaussian(model, rig):
    with torch.no_grad():
        model.masks.zero_()
        model.masks[:10, 0] = 1.0
        model.d_log_scales.fill_(0.5)
        model.d_opacity.fill_(1.0)
    expr = torch.zeros(1, rig.n_expr)
    expr[0, 0] = 2.0
    with torch.no_grad():
        f = model.evaluate(FlameParams(expr=expr))
    N = model.n_gaussians
    assert torch.allclose(f.log_scales[0, :10], model.log_scales[:10] + 1.0)
    assert torch.allclose(f.log_scales[0, 10:N], model.log_scales[10:])
    assert torch.allclose(f.opacity_logits[0, :10], model.opacity_logits[:10] + 2.0)


def test_teeth_follow_the_head_and_the_jaw(model):
    M, N = model.n_teeth, model.n_gaussians
    upper = model.teeth_joint == 1
    assert 0 < upper.sum() < M
    with torch.no_grad():
        closed = model(FlameParams(jaw=torch.zeros(1, 3)))[0].means[N:]
        opened = model(FlameParams(jaw=torch.tensor([[0.3, 0.0, 0.0]])))[0].means[N:]
        nod = model(FlameParams(neck=torch.tensor([[0.3, 0.0, 0.0]])))[0].means[N:]
    assert torch.allclose(opened[upper], closed[upper], atol=1e-7)
    assert (opened[~upper] - closed[~upper]).norm(dim=-1).min() > 1e-3
    assert (nod - closed).norm(dim=-1).min() > 1e-3  # the neck carries both rows
    # The containment loss is zero where they start and grows when they leave.
    assert model.teeth_containment_loss() == 0
    with torch.no_grad():
        model.teeth_means[:, 2] += 0.01
    assert model.teeth_containment_loss() > 1


def test_gather_keeps_every_per_gaussian_tensor_aligned(model):
    idx = torch.tensor([5, 5, 7, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.gather(idx)
    for name, value in model.state_dict().items():
        if name.startswith("teeth"):
            assert torch.equal(value, before[name])
        else:
            assert value.shape[0] == 4 and torch.equal(value, before[name][idx]), name


def test_save_and_load_round_trip(model, rig, tmp_path):
    with torch.no_grad():
        model.d_means.normal_(0, 1e-3)
    model.active_sh_degree = 0
    path = tmp_path / "neutral.safetensors"
    model.save(path)
    loaded = GaussianBlendshapes.load(path, rig)
    assert loaded.active_sh_degree == 0
    p = random_params(2, rig.n_expr, seed=5)
    with torch.no_grad():
        a, b = model.evaluate(p), loaded.evaluate(p)
    assert torch.equal(a.means, b.means) and torch.equal(a.sh, b.sh)
    other = tiny_rig(subdivisions=1)
    with pytest.raises(InputError, match="neutral.safetensors"):
        GaussianBlendshapes.load(path, other)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    with pytest.raises(InputError, match="bad.safetensors"):
        GaussianBlendshapes.load(bad, rig)


def test_rig_without_regions_still_places_teeth_in_front():
    rig = tiny_rig(regions=False)
    m = GaussianBlendshapes.initialize(rig, BlendshapeConfig(n_gaussians=100, n_teeth=20))
    assert m.teeth_source == "jaw-weight boundary"
    assert m.teeth_means[:, 2].mean() > 0.05  # the front of a 10 cm sphere, not its centre
