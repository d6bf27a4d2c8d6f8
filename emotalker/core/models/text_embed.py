"""Optional CLIP text embeddings of the emotion and intensity words, as the paper uses.

Needs the `clip` extra (open_clip_torch) and a local checkpoint file; nothing is
downloaded. Imported only when asked for (`--text-checkpoint`). The embeddings
are computed once at training time and cached in emotion.safetensors, so baking
never needs CLIP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emotalker.core.base.errors import InputError


def clip_text_embeddings(texts: list[str], checkpoint: str | os.PathLike, model_name: str = "ViT-B-32") -> np.ndarray:
    """L2-normalised CLIP text features [len(texts), D] (float32) from a local open_clip checkpoint."""
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(path, "CLIP checkpoint file not found")
    try:
        import open_clip
    except ImportError:
        raise InputError(path, "CLIP text embeddings need open_clip: pip install 'emotalker[clip]'") from None
    import torch

    try:
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(path))
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise InputError(path, f"could not load {model_name} from this checkpoint ({exc})") from None
    tokenizer = open_clip.get_tokenizer(model_name)
    model.eval()
    with torch.no_grad():
        feats = model.encode_text(tokenizer(list(texts))).float()
    return torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)
