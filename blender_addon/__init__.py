"""EmoTalker for Blender: emotional, audio-driven Gaussian head avatars on the timeline.

A thin client: it imports bpy and numpy only. Every model computation happens in
the core worker (`emotalker worker`), a separate process in the environment that
EmoTalker's install.py made, spoken to over JSON lines (see worker_client.py).
"""

from __future__ import annotations

import importlib

# Legacy add-on metadata: Blender 4.2+ reads blender_manifest.toml (an extension) and ignores this;
# older Blenders (3.4 and later) install the folder as a legacy add-on from it.
bl_info = {
    "name": "EmoTalker",
    "description": "Emotional, audio-driven 3D Gaussian head avatars on the timeline",
    "author": "EmoTalker developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D View > Sidebar > EmoTalker",
    "category": "Animation",
}

# Imported when registered, not with the package, so that its bpy-free modules (worker_client, preview,
# camera) import anywhere: benchmarks/viewport.py drives the viewport's preview code outside Blender.
MODULES = ("preferences", "properties", "operators", "ops_bake", "ops_train", "engine", "ui")


def _modules():
    return [importlib.import_module(f"{__name__}.{name}") for name in MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
    importlib.import_module(f"{__name__}.session").shutdown()
