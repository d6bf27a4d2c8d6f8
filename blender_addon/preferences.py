"""Add-on preferences: which Python environment runs the core worker, and on what device."""

from __future__ import annotations

import os

import bpy
from bpy.props import EnumProperty, StringProperty

# Tests and pipeline scripts may name the environment without touching preferences.
ENV_VARIABLE = "EMOTALKER_ENV"


class EmoTalkerPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    environment: StringProperty(
        name="Environment", subtype="DIR_PATH",
        description="The .venv made by EmoTalker's install.py (it fills this in)",
    )
    device: EnumProperty(name="Device", items=[("auto", "Auto", "CUDA when present"), ("cpu", "CPU", ""),
                                               ("cuda", "CUDA", "")], default="auto")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "environment")
        layout.prop(self, "device")
        layout.operator("emotalker.check_environment", icon="CHECKMARK")


def settings(context) -> tuple[str, str]:
    """(environment path, device) from the preferences, or $EMOTALKER_ENV when unset."""
    addon = context.preferences.addons.get(__package__)
    prefs = addon.preferences if addon else None
    env = (prefs.environment if prefs else "") or os.environ.get(ENV_VARIABLE, "")
    return bpy.path.abspath(env) if env else "", prefs.device if prefs else "auto"


def register() -> None:
    bpy.utils.register_class(EmoTalkerPreferences)


def unregister() -> None:
    bpy.utils.unregister_class(EmoTalkerPreferences)
