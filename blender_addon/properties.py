"""Per-object avatar properties: animatable, so animators key them like any property.

`obj.emotalker.happy` etc. are the 8 emotion weights, `intensity` is 0..3 (MEAD
levels 1-3, 0 neutral), `blink` 0..1; the data paths are `emotalker.<name>`.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, PointerProperty, StringProperty

# A copy of emotalker/core/base/emotions.py (the add-on cannot import emotalker); tests/test_emotions.py checks they agree.
EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
MAX_INTENSITY = 3.0
# The export formats: (identifier, label, description); ops_bake.export_clip_fields says what each asks the bake for.
EXPORT_FORMATS = [
    ("PLY", "PLY", "INRIA 3DGS PLY, one a frame, at the SH degree and up axis set here"),
    ("UNITY", "Unity PLY", "PLY at SH degree 3, Y up: aras-p's UnityGaussianSplatting importer (ignores the settings)"),
    ("SPZ", "SPZ", "Niantic SPZ, one a frame: about 10x smaller (web viewers, Spark, Babylon.js)"),
    ("COMPRESSED_PLY", "Compressed PLY", "PlayCanvas compressed PLY, one a frame (SuperSplat, PlayCanvas)"),
    ("USD", "OpenUSD", "One .usdc: time-sampled splats, the rig animated (UsdSkel) and the audio; Y up, metres "
                       "(needs usd-core in the worker's Python)"),
]


def _emotion(name: str) -> FloatProperty:
    return FloatProperty(name=name.capitalize(), description=f"Weight of {name} in this frame's emotion mix",
                         default=1.0 if name == "neutral" else 0.0, min=0.0, max=1.0)


class EmoTalkerAvatarProps(bpy.types.PropertyGroup):
    is_avatar: BoolProperty(default=False, options={"HIDDEN"})
    avatar_path: StringProperty(name="Avatar", subtype="DIR_PATH", description="The avatar bundle folder")
    audio_path: StringProperty(name="Audio", subtype="FILE_PATH", description="Dialogue audio (any format soundfile reads); empty: the first sound strip")
    cache_dir: StringProperty(name="Cache", subtype="DIR_PATH", default="//emotalker_cache",
                              description="Where baked curves and per-frame Gaussians are kept")
    intensity: FloatProperty(name="Intensity", default=1.0, min=0.0, max=MAX_INTENSITY,
                             description="Emotion intensity: 0 neutral, 1-3 as MEAD's levels, anything between")
    blink: FloatProperty(name="Blink", default=0.0, min=0.0, max=1.0, description="Extra eyelid closure")
    baked: BoolProperty(default=False, options={"HIDDEN"})
    sh_degree: EnumProperty(name="SH degree", items=[(str(d), str(d), "") for d in range(4)], default="3")
    up_axis: EnumProperty(name="Up axis", items=[("Z", "Z up", "Blender, Unreal"), ("Y", "Y up", "FLAME, Unity, glTF")],
                          default="Z")
    export_format: EnumProperty(name="Format", items=EXPORT_FORMATS, default="PLY",
                                description="How the exported frames are stored (docs/exports.md)")
    __annotations__.update({name: _emotion(name) for name in EMOTIONS})


def register() -> None:
    bpy.utils.register_class(EmoTalkerAvatarProps)
    bpy.types.Object.emotalker = PointerProperty(type=EmoTalkerAvatarProps)


def unregister() -> None:
    del bpy.types.Object.emotalker
    bpy.utils.unregister_class(EmoTalkerAvatarProps)
