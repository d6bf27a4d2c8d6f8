"""gsplat (CUDA) against the CPU backend, where a GPU and gsplat are present (CI has neither).

Known differences kept out of the comparison: gsplat caps alpha at 0.999 and we at
0.99 (opacities here stay below 0.95), and recent gsplat sizes radii per axis and by
opacity, so radii and the tile rule can differ at the 3-sigma edge; tolerances allow
for that edge, not for wrong maths.
"""

from __future__ import annotations

import pytest
import torch

from test_render import H, W, random_scene

cuda = pytest.mark.cuda
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gsplat_or_skip():
    return pytest.importorskip("gsplat")


def _render(scene, backend, device, sh_degree, mode):
    ins = dict(means=scene["means"], quats=scene["quats"], scales=scene["scales"],
               opacities=scene["opacities"].clamp(max=0.95), colors=scene["sh"], backgrounds=scene["backgrounds"])
    ins = {k: v.float().to(device).requires_grad_(True) for k, v in ins.items()}
    from emotalker.core.render import rasterize
    out = rasterize(ins["means"], ins["quats"], ins["scales"], ins["opacities"], ins["colors"],
                    scene["viewmats"].float().to(device), scene["Ks"].float().to(device), W, H,
                    sh_degree=sh_degree, backgrounds=ins["backgrounds"], mode=mode,
                    camera_model=scene["camera_model"], backend=backend)
    out.means2d.retain_grad()
    (out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()
    grads = {k: v.grad.cpu() for k, v in ins.items()}
    grads["means2d"] = out.means2d.grad.cpu()
    return out, grads


@cuda
@needs_gpu
@pytest.mark.parametrize("sh_degree,mode", [(0, "classic"), (3, "classic"), (3, "antialiased")])
def test_gsplat_matches_cpu(sh_degree, mode):
    check_gsplat_matches_cpu(random_scene(11), sh_degree, mode)


@cuda
@needs_gpu
@pytest.mark.parametrize("sh_degree,mode", [(0, "classic"), (3, "antialiased")])
def test_gsplat_matches_cpu_orthographic(sh_degree, mode):
    """gsplat's camera_model="ortho" against the CPU backend's orthographic camera (same convention)."""
    check_gsplat_matches_cpu(random_scene(11, camera_model="ortho"), sh_degree, mode)


def check_gsplat_matches_cpu(scene, sh_degree, mode):
    _gsplat_or_skip()
    out_g, g_g = _render(scene, "gsplat", "cuda", sh_degree, mode)
    out_c, g_c = _render(scene, "cpu", "cpu", sh_degree, mode)
    for name in ("rgb", "alpha"):
        diff = (getattr(out_g, name).detach().cpu() - getattr(out_c, name).detach()).abs()
        assert diff.mean() < 2e-3 and diff.max() < 5e-2, name
    vis = (out_g.radii.cpu() > 0) & (out_c.radii > 0)
    assert (out_g.means2d.detach().cpu()[vis] - out_c.means2d.detach()[vis]).abs().max() < 1e-2
    assert ((out_g.radii.cpu() > 0) == (out_c.radii > 0)).float().mean() > 0.97
    for name in ("means", "quats", "scales", "opacities", "colors"):
        err = (g_g[name] - g_c[name]).norm() / g_c[name].norm().clamp_min(1e-12)
        assert err < 0.05, f"gradient of {name}: relative difference {err:.3f}"
