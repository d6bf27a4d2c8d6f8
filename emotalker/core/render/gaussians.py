"""The one Gaussian container: raw 3DGS attributes, as stored in INRIA PLY files.

Raw means before activation: log-scales, opacity logits, unnormalised wxyz
quaternions, SH coefficients (DC first). `activated()` gives what the renderer
takes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def sh_degree_of(n_coeffs: int) -> int:
    """SH degree for (degree + 1)^2 coefficients; ValueError for other counts."""
    degree = int(round(n_coeffs ** 0.5)) - 1
    if (degree + 1) ** 2 != n_coeffs or not 0 <= degree <= 3:
        raise ValueError(f"{n_coeffs} SH coefficients is not (d+1)^2 for a degree d in 0..3")
    return degree


@dataclass
class Gaussians:
    """N Gaussians, raw. means [N,3], quats [N,4] wxyz, log_scales [N,3],
    opacity_logits [N], sh [N,K,3] with K = (sh_degree + 1)^2 (sh[:, 0] is the DC term)."""

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {list(getattr(self, name).shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"Gaussians.sh must be [N,K,3] with N={n}, got {list(self.sh.shape)}")
        sh_degree_of(self.sh.shape[1])

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh.shape[1])

    def activated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quats normalised [N,4], scales [N,3], opacities [N], sh [N,K,3]) for the renderer."""
        quats = torch.nn.functional.normalize(self.quats, dim=-1)
        return quats, torch.exp(self.log_scales), torch.sigmoid(self.opacity_logits), self.sh

    def map(self, fn) -> "Gaussians":
        """A new container with `fn` applied to every tensor (e.g. `.map(lambda t: t[mask])`)."""
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device) -> "Gaussians":
        return self.map(lambda t: t.to(device))

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Truncate (or zero-pad) the SH bands to `degree`."""
        k = (degree + 1) ** 2
        sh = self.sh[:, :k]
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(len(self), k - sh.shape[1], 3)], 1)
        return Gaussians(self.means, self.quats, self.log_scales, self.opacity_logits, sh)

    @staticmethod
    def cat(parts: list["Gaussians"]) -> "Gaussians":
        """Concatenate containers with the same SH degree."""
        return Gaussians(**{f.name: torch.cat([getattr(p, f.name) for p in parts], 0) for f in fields(Gaussians)})
