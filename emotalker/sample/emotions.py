"""What each MEAD emotion does to the face: expression, head pose and skin.

An emotion at intensity s (MEAD levels 1-3, continuous in between) adds
`s / 3` of its expression offsets (by component name) and of its neck pose,
and sets skin effects that no linear blendshape can make: a flush or a pallor
of the skin colour, and wrinkles (forehead lines, a frown furrow between the
brows, lines over the nose bridge) rendered as bump detail. These are what
Stage 2's per-Gaussian colour and shape offsets have to learn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emotalker.core.base.emotions import EMOTIONS, MAX_INTENSITY

LEVELS = (1.0, 2.0, 3.0)  # MEAD's intensity levels
HELD_OUT_LEVELS = (1.5, 2.5)  # rendered too, kept out of training to test interpolation


@dataclass(frozen=True)
class Skin:
    """Emotion-driven appearance, each in 0..1 at full strength.

    flush: red blood in the cheeks and face; pallor: blood drained (lighter,
    less saturated); forehead: horizontal forehead lines; furrow: vertical
    lines between the brows; nose: wrinkles across the nose bridge.
    """

    flush: float = 0.0
    pallor: float = 0.0
    forehead: float = 0.0
    furrow: float = 0.0
    nose: float = 0.0

    def scaled(self, k: float) -> "Skin":
        return Skin(*(min(1.0, max(0.0, getattr(self, f) * k)) for f in ("flush", "pallor", "forehead", "furrow", "nose")))

    def as_array(self) -> np.ndarray:
        return np.array([self.flush, self.pallor, self.forehead, self.furrow, self.nose], np.float32)


@dataclass(frozen=True)
class EmotionStyle:
    """An emotion at MEAD level 3: expression values by name, neck pose (axis-angle, radians), skin."""

    expr: dict[str, float] = field(default_factory=dict)
    neck: tuple[float, float, float] = (0.0, 0.0, 0.0)
    skin: Skin = Skin()


# Neck pitch about +X: positive tips the face down (towards -Y), negative lifts it.
STYLES: dict[str, EmotionStyle] = {
    "neutral": EmotionStyle(),
    "angry": EmotionStyle(
        {"brow_lower": 0.9, "lips_tighten": 0.5, "lips_press": 0.2, "nostril_flare": 0.6, "eyes_widen": 0.3,
         "upper_lip_raise": 0.2, "neck_tense": 0.5},
        neck=(0.06, 0.0, 0.0), skin=Skin(flush=0.8, furrow=0.9)),
    "contempt": EmotionStyle(
        {"smile_left": 0.6, "dimple_left": 0.5, "eyes_squint": 0.2, "sneer_left": 0.2, "brow_outer_raise_left": 0.2},
        neck=(-0.05, 0.08, 0.06), skin=Skin(furrow=0.2)),
    "disgusted": EmotionStyle(
        {"nose_wrinkle": 0.9, "upper_lip_raise": 0.7, "brow_lower": 0.5, "eyes_squint": 0.4, "chin_raise": 0.3,
         "lower_lip_depress": 0.2},
        neck=(-0.03, -0.08, 0.0), skin=Skin(furrow=0.5, nose=1.0, pallor=0.15)),
    "fear": EmotionStyle(
        {"brow_inner_raise": 0.9, "brow_outer_raise": 0.4, "eyes_widen": 0.9, "lips_stretch_left": 0.5,
         "lips_stretch_right": 0.5, "neck_tense": 0.6},
        neck=(-0.04, 0.0, 0.0), skin=Skin(pallor=0.8, forehead=0.7)),
    "happy": EmotionStyle(
        {"smile": 1.0, "cheek_raise": 0.8, "eyes_squint": 0.3, "dimple_left": 0.3, "dimple_right": 0.3},
        neck=(-0.05, 0.0, 0.03), skin=Skin(flush=0.35)),
    "sad": EmotionStyle(
        {"brow_inner_raise": 0.8, "frown": 0.8, "lower_lip_depress": 0.3, "chin_raise": 0.4, "eyes_squint": 0.1},
        neck=(0.16, 0.0, 0.0), skin=Skin(pallor=0.4, forehead=0.4, furrow=0.2)),
    "surprised": EmotionStyle(
        {"brow_inner_raise": 0.9, "brow_outer_raise": 1.0, "eyes_widen": 1.0, "lips_part": 0.3},
        neck=(-0.08, 0.0, 0.0), skin=Skin(forehead=1.0, pallor=0.1)),
}
assert set(STYLES) == set(EMOTIONS)


@dataclass(frozen=True)
class EmotionOffsets:
    """An emotion at one intensity: expr [E] offsets on the rig's components, neck [3], skin."""

    expr: np.ndarray
    neck: np.ndarray
    skin: Skin
    jaw_scale: float  # how wide the mouth opens while speaking (shouting, mumbling)


def emotion_offsets(emotion: str, intensity: float, expr_names: list[str]) -> EmotionOffsets:
    """The offsets of `emotion` at `intensity` (0..3) on a rig with components `expr_names` [E].

    Components the rig does not name are skipped, so a rig with fewer names still works.
    """
    style = STYLES[emotion]
    k = float(intensity) / MAX_INTENSITY
    expr = np.zeros(len(expr_names), np.float32)
    for name, value in style.expr.items():
        if name in expr_names:
            expr[expr_names.index(name)] = value * k
    jaw_scale = {"angry": 1.25, "surprised": 1.15, "happy": 1.1, "sad": 0.8, "fear": 0.9}.get(emotion, 1.0)
    return EmotionOffsets(expr, np.asarray(style.neck, np.float32) * k, style.skin.scaled(k), 1.0 + (jaw_scale - 1.0) * k)
