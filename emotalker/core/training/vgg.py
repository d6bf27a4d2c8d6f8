"""Optional VGG16 perceptual loss, only from a local weights file (nothing is downloaded).

The file holds torchvision's VGG16 `features.<i>.weight/bias` tensors
(safetensors, or a .pth state dict read with weights_only=True). The loss is
the mean L1 between the activations after relu1_2, relu2_2, relu3_3 and
relu4_3 (the first four blocks) of the two images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from emotalker.core.base.errors import InputError

# VGG16's convolution widths by block, up to block 4 (the layers the loss reads).
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """VGG16 conv blocks 1-4; `loss(pred, target)` on [H,W,3] images in 0..1."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for b, widths in enumerate(BLOCKS):
            if b:
                layers.append(nn.MaxPool2d(2, 2))
            for w in widths:
                layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU()]
                c_in = w
        self.features = nn.Sequential(*layers)
        self.taps = {i for i, m in enumerate(layers) if isinstance(m, nn.ReLU) and
                     (i + 1 == len(layers) or isinstance(layers[i + 1], nn.MaxPool2d))}
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VGGFeatures":
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "VGG weights file not found")
        if path.suffix == ".safetensors":
            from emotalker.core.base.fileio import load_tensors

            state, _ = load_tensors(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
                raise InputError(path, f"not a readable weights file ({exc})") from None
        model = cls()
        mine = model.features.state_dict()
        try:
            model.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                            if k.startswith("features.") and k[len("features."):] in mine})
        except RuntimeError as exc:
            raise InputError(path, f"not VGG16 weights ({exc})") from None
        return model.eval()

    def activations(self, img: torch.Tensor) -> list[torch.Tensor]:
        """img [H,W,3] -> the four tapped activations."""
        x = (img.permute(2, 0, 1)[None] - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.activations(target)
        return sum((a - b).abs().mean() for a, b in zip(self.activations(pred), want))
