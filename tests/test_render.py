"""The CPU renderer against the torch reference (forward and every gradient), plus basics.

The reference runs in float64 and serves as ground truth; the CPU backend runs in float32.
Scenes are random and include the awkward cases: Gaussians behind the camera, off-screen,
huge, sub-pixel, with zero opacity, and a heavily overlapping cluster; several cameras;
an image size that is not a multiple of the 16-pixel tile. Every comparison runs through
the pinhole camera and through gsplat's orthographic one.
"""

from __future__ import annotations

import math

import pytest
import torch

from emotalker.core.render import RenderOutput, rasterize

W, H = 44, 36          # partial tiles on both axes
FWD_TOL = 1e-4
GRAD_TOL = 1e-3


def look_at(eye, target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """World-to-camera OpenCV viewmat [4,4] (x right, y down, z forward), world +Y up."""
    eye, target = torch.tensor(eye, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    fwd = torch.nn.functional.normalize(target - eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)), dim=0)
    down = torch.linalg.cross(fwd, right)
    rot = torch.stack([right, down, fwd])
    vm = torch.eye(4, dtype=torch.float64)
    vm[:3, :3] = rot
    vm[:3, 3] = -rot @ eye
    return vm


def random_scene(seed: int, n: int = 160, sh_k: int = 16, camera_model: str = "pinhole"):
    """A scene dict for rasterize(): random Gaussians around the origin plus the special cases,
    seen by 3 cameras about 2 m away (orthographic ones at the pinholes' scale there, 20 pixels a
    metre). Tensors are float64 (cast for the CPU backend)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    means = rn(n, 3) * 0.35
    scales = torch.exp(rn(n, 3) * 0.4) * 0.03
    opac = r(n) * 0.9 + 0.05
    special = {
        "behind": (torch.tensor([0.0, 0.0, 3.0]), 0.05, 0.8),       # behind camera 0 (which sits at z=+2)
        "offscreen": (torch.tensor([3.0, 0.2, 0.0]), 0.02, 0.8),
        "huge": (torch.tensor([0.1, -0.1, 0.2]), 1.5, 0.3),
        "subpixel": (torch.tensor([0.05, 0.02, -0.1]), 1e-4, 0.9),
        "zero_opacity": (torch.tensor([-0.1, 0.1, 0.1]), 0.1, 0.0),
    }
    means[: len(special)] = torch.stack([v[0] for v in special.values()]).double()
    for i, (_, s, o) in enumerate(special.values()):
        scales[i] = s * torch.exp(rn(3) * 0.2)
        opac[i] = o
    # a heavily overlapping cluster: 30 near-identical, fairly opaque Gaussians
    cl = slice(len(special), len(special) + 30)
    means[cl] = torch.tensor([0.05, 0.05, 0.0], dtype=torch.float64) + rn(30, 3) * 0.01
    scales[cl] = 0.05 + r(30, 3) * 0.02
    opac[cl] = 0.6 + 0.3 * r(30)
    quats = rn(n, 4)
    sh = rn(n, sh_k, 3) * 0.3
    eyes = [(0.0, 0.0, 2.0), (1.2, 0.5, 1.6), (-0.9, -0.3, -1.8)]
    viewmats = torch.stack([look_at(e) for e in eyes])
    f = 40.0 if camera_model == "pinhole" else 20.0
    Ks = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]],
                       [[f * 1.1, 0, W / 2 + 2], [0, f * 1.1, H / 2 - 1], [0, 0, 1.0]],
                       [[f * 0.9, 0, W / 2], [0, f * 0.9, H / 2], [0, 0, 1.0]]], dtype=torch.float64)
    return dict(means=means, quats=quats, scales=scales, opacities=opac, sh=sh, viewmats=viewmats, Ks=Ks,
                backgrounds=r(3, 3), special=list(special), camera_model=camera_model)


GRAD_INPUTS = ("means", "quats", "scales", "opacities", "colors", "backgrounds")


def render_with_grads(scene, backend, dtype, sh_degree, mode, seed=0):
    """Render, back-propagate a fixed random weighting of rgb, alpha and depth, and return
    (output, {input name: gradient}) including the screen-space gradient of means2d."""
    colors = scene["sh"] if sh_degree is not None else torch.sigmoid(scene["sh"][:, 0])
    raw = dict(means=scene["means"], quats=scene["quats"], scales=scene["scales"], opacities=scene["opacities"],
               colors=colors, backgrounds=scene["backgrounds"])
    ins = {k: v.to(dtype).clone().requires_grad_(True) for k, v in raw.items()}
    out = rasterize(ins["means"], ins["quats"], ins["scales"], ins["opacities"], ins["colors"],
                    scene["viewmats"].to(dtype), scene["Ks"].to(dtype), W, H, sh_degree=sh_degree,
                    backgrounds=ins["backgrounds"], mode=mode, camera_model=scene["camera_model"], backend=backend)
    out.means2d.retain_grad()
    g = torch.Generator().manual_seed(seed + 1)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in (out.rgb, out.alpha, out.depth)]
    loss = (out.rgb * weights[0]).sum() + (out.alpha * weights[1]).sum() + 0.3 * (out.depth * weights[2]).sum()
    loss.backward()
    grads = {k: v.grad for k, v in ins.items()}
    grads["means2d"] = out.means2d.grad
    return out, grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-12))


CASES = [(None, "classic", 0), (0, "antialiased", 1), (1, "classic", 2), (2, "antialiased", 3),
         (3, "classic", 4), (3, "antialiased", 5)]


@pytest.mark.parametrize("sh_degree,mode,seed", CASES)
def test_cpu_matches_reference(sh_degree, mode, seed):
    check_cpu_matches_reference(random_scene(seed), sh_degree, mode)


@pytest.mark.parametrize("sh_degree,mode,seed", CASES)
def test_cpu_matches_reference_orthographic(sh_degree, mode, seed):
    check_cpu_matches_reference(random_scene(seed, camera_model="ortho"), sh_degree, mode)


def check_cpu_matches_reference(scene, sh_degree, mode):
    out_cpu, g_cpu = render_with_grads(scene, "cpu", torch.float32, sh_degree, mode)
    out_ref, g_ref = render_with_grads(scene, "reference", torch.float64, sh_degree, mode)
    assert out_cpu.rgb.shape == (3, H, W, 3) and out_cpu.alpha.shape == (3, H, W, 1)
    assert out_cpu.depth.shape == (3, H, W, 1) and out_cpu.means2d.shape == (3, len(scene["means"]), 2)
    assert out_cpu.radii.dtype == torch.int32
    # the scene really covers pixels and reaches termination somewhere
    assert out_ref.alpha.max() > 0.99 and out_ref.alpha.mean() > 0.1
    for name in ("rgb", "alpha", "depth", "means2d"):
        diff = (getattr(out_cpu, name).double() - getattr(out_ref, name)).abs().max().item()
        assert diff <= FWD_TOL, f"{name}: max abs difference {diff:.2e}"
    assert torch.equal(out_cpu.radii, out_ref.radii)
    for name, ref in g_ref.items():
        assert ref is not None and float(ref.norm()) > 0, f"reference gradient of {name} is empty"
        err = rel_err(g_cpu[name], ref)
        assert err <= GRAD_TOL, f"gradient of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("camera_model", ["pinhole", "ortho"])
def test_special_gaussians_are_culled_or_ignored(camera_model):
    scene = random_scene(0, camera_model=camera_model)
    out, grads = render_with_grads(scene, "cpu", torch.float32, 3, "classic")
    idx = {name: i for i, name in enumerate(scene["special"])}
    assert out.radii[0, idx["behind"]] == 0                 # behind camera 0
    assert (out.radii[:, idx["offscreen"]] == 0).all()
    assert (out.radii[:, idx["huge"]] > max(W, H) / 2).all()
    assert (out.radii[:, idx["subpixel"]] > 0).all()        # dilation keeps it at least a pixel wide
    # d alpha / d opacity = exp(-sigma) > 0, but pairs below 1/255 are skipped, so this is exactly 0
    assert grads["opacities"][idx["zero_opacity"]] == 0
    assert (grads["means"][idx["offscreen"]] == 0).all()
    assert (out.means2d[out.radii == 0] == 0).all()


def test_single_gaussian_matches_closed_form():
    """One isotropic Gaussian centred on a pixel centre: alpha there is its opacity."""
    f, z, s, o = 50.0, 2.0, 0.04, 0.6
    means = torch.tensor([[0.0, 0.0, 0.0]])
    viewmat = torch.eye(4)[None].clone()
    viewmat[0, 2, 3] = z
    K = torch.tensor([[[f, 0, 10.5], [0, f, 8.5], [0, 0, 1.0]]])   # centre of pixel (10, 8)
    color = torch.tensor([[0.2, 0.5, 0.9]])
    bg = torch.tensor([[1.0, 0.0, 0.5]])
    for backend in ("cpu", "reference"):
        out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]), color,
                        viewmat, K, 24, 20, backgrounds=bg, backend=backend)
        assert out.alpha[0, 8, 10, 0].item() == pytest.approx(o, abs=1e-6)
        assert out.rgb[0, 8, 10].tolist() == pytest.approx((o * color[0] + (1 - o) * bg[0]).tolist(), abs=1e-6)
        assert out.depth[0, 8, 10, 0].item() == pytest.approx(z, abs=1e-5)
        assert out.means2d[0, 0].tolist() == pytest.approx([10.5, 8.5], abs=1e-5)
        # sigma of the 2D footprint: (f s / z)^2 + 0.3; radius = ceil(3 sqrt(...))
        assert out.radii[0, 0].item() == math.ceil(3 * math.sqrt((f * s / z) ** 2 + 0.3))
        # one pixel to the right: alpha = o exp(-0.5 / var)
        var = (f * s / z) ** 2 + 0.3
        assert out.alpha[0, 8, 11, 0].item() == pytest.approx(o * math.exp(-0.5 / var), rel=1e-5)


def test_single_gaussian_matches_closed_form_orthographic():
    """gsplat's orthographic camera: pixel = (fx x + cx, fy y + cy) whatever the depth, and the footprint's
    variance (fx s)^2 + 0.3 does not shrink with distance."""
    f, s, o = 50.0, 0.04, 0.6                      # f: pixels a world unit
    means = torch.tensor([[0.1, -0.06, 0.0]])
    color = torch.tensor([[0.2, 0.5, 0.9]])
    K = torch.tensor([[[f, 0, 5.5], [0, f, 11.5], [0, 0, 1.0]]])    # (0.1, -0.06) -> centre of pixel (10, 8)
    var = (f * s) ** 2 + 0.3
    for z in (0.5, 2.0, 40.0):
        viewmat = torch.eye(4)[None].clone()
        viewmat[0, 2, 3] = z
        for backend in ("cpu", "reference"):
            out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), s), torch.tensor([o]), color,
                            viewmat, K, 24, 20, camera_model="ortho", backend=backend)
            assert out.means2d[0, 0].tolist() == pytest.approx([10.5, 8.5], abs=1e-5)
            assert out.alpha[0, 8, 10, 0].item() == pytest.approx(o, abs=1e-6)
            assert out.depth[0, 8, 10, 0].item() == pytest.approx(z, rel=1e-6)
            assert out.radii[0, 0].item() == math.ceil(3 * math.sqrt(var))
            assert out.alpha[0, 8, 11, 0].item() == pytest.approx(o * math.exp(-0.5 / var), rel=1e-5)


def test_orthographic_image_does_not_change_with_distance():
    """Moving an orthographic camera along its axis changes depth only; a pinhole's image shrinks."""
    scene = random_scene(3, n=60, camera_model="ortho")
    keep = slice(len(scene["special"]), None)  # not the Gaussian behind the camera, which moving it reveals
    args = tuple(scene[k][keep].float() for k in ("means", "quats", "scales", "opacities", "sh"))
    near, far = scene["viewmats"][:1].float(), scene["viewmats"][:1].float().clone()
    far[0, 2, 3] += 5.0
    K = scene["Ks"][:1].float()
    a, b = (rasterize(*args, v, K, W, H, sh_degree=0, camera_model="ortho", backend="cpu") for v in (near, far))
    assert a.alpha.max() > 0.5
    assert torch.allclose(a.rgb, b.rgb, atol=1e-5) and torch.equal(a.radii, b.radii)
    assert torch.allclose(b.depth[a.alpha > 0], a.depth[a.alpha > 0] + 5.0, atol=1e-4)
    pinhole = random_scene(3, n=60)["Ks"][:1].float()
    c, d = (rasterize(*args, v, pinhole, W, H, sh_degree=0, backend="cpu") for v in (near, far))
    assert not torch.allclose(c.alpha, d.alpha, atol=1e-2)


def test_an_unknown_camera_model_is_named():
    with pytest.raises(ValueError, match="camera_model"):
        rasterize(torch.zeros(1, 3), torch.zeros(1, 4), torch.ones(1, 3), torch.ones(1), torch.zeros(1, 3),
                  torch.eye(4)[None], torch.eye(3)[None], 8, 8, camera_model="fisheye")


def test_empty_scene_shows_background_and_backpropagates():
    means = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)     # behind the camera
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1.0]]])
    bg = torch.tensor([[0.1, 0.2, 0.3]], requires_grad=True)
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1), torch.tensor([0.9]),
                    torch.rand(1, 3), viewmat, K, 16, 16, backgrounds=bg, backend="cpu")
    assert torch.allclose(out.rgb, bg[:, None, None, :].expand(1, 16, 16, 3))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0 and out.radii.sum() == 0
    out.rgb.sum().backward()
    assert means.grad.abs().max() == 0
    assert torch.allclose(bg.grad, torch.full((1, 3), 256.0))


def test_auto_is_cpu_on_cpu_tensors():
    scene = random_scene(7, n=40)
    args = (scene["means"].float(), scene["quats"].float(), scene["scales"].float(), scene["opacities"].float(),
            scene["sh"].float(), scene["viewmats"][:1].float(), scene["Ks"][:1].float(), W, H)
    a = rasterize(*args, sh_degree=2, backend="auto")
    b = rasterize(*args, sh_degree=2, backend="cpu")
    assert isinstance(a, RenderOutput) and torch.equal(a.rgb, b.rgb)


@pytest.mark.parametrize("change,message", [
    (dict(quats=torch.zeros(5, 3)), "quats"),
    (dict(colors=torch.zeros(5, 4, 3)), "sh_degree"),
    (dict(Ks=torch.zeros(2, 3, 3)), "Ks"),
    (dict(mode="fancy"), "mode"),
    (dict(backend="opengl"), "backend"),
])
def test_bad_arguments_are_named(change, message):
    args = dict(means=torch.zeros(5, 3), quats=torch.zeros(5, 4), scales=torch.ones(5, 3), opacities=torch.ones(5),
                colors=torch.zeros(5, 3), viewmats=torch.eye(4)[None], Ks=torch.eye(3)[None], width=8, height=8)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        rasterize(**args)


def test_render_avatar_takes_a_numpy_or_torch_camera_and_a_background():
    import numpy as np

    from emotalker.core.models.avatar import render_avatar
    from emotalker.core.render.camera import Camera
    from emotalker.core.render.gaussians import Gaussians

    g = torch.Generator().manual_seed(0)
    n = 40
    gaussians = Gaussians(torch.randn(n, 3, generator=g) * 0.05, torch.randn(n, 4, generator=g),
                          torch.full((n, 3), -3.5), torch.randn(n, generator=g), torch.randn(n, 4, 3, generator=g) * 0.3)
    viewmat = look_at((0.0, 0.0, 0.5)).float()
    K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]])
    quats, scales, opacities, sh = gaussians.activated()
    bg = torch.tensor([0.2, 0.4, 0.6])
    expected = rasterize(gaussians.means, quats, scales, opacities, sh, viewmat[None], K[None], W, H, sh_degree=1,
                         backgrounds=bg[None], backend="cpu")
    for camera in (Camera(viewmat, K, W, H), Camera(viewmat.double().numpy(), K.double().numpy(), W, H)):
        out = render_avatar(gaussians, camera, bg, backend="cpu")
        assert torch.equal(out.rgb, expected.rgb) and torch.equal(out.alpha, expected.alpha)
    black = render_avatar(gaussians, Camera(viewmat.numpy(), K.numpy(), W, H), backend="cpu")
    assert torch.allclose(black.rgb + bg * (1 - black.alpha), expected.rgb, atol=1e-5)
    assert np.isclose(float(expected.alpha.max()), float(black.alpha.max()))
