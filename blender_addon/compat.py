"""The Blender APIs that changed between the supported versions, behind one interface.

Blender 4.4 introduced slotted actions (F-curves live in a channelbag per slot;
`Action.fcurves` was removed in 5.0) and renamed the sequencer's `sequences_all`
to `strips_all` (the old name was removed in 5.0). The add-on calls these
functions instead of either API, so it runs on 4.2 LTS, 4.5 LTS and 5.x, and
registers as a legacy add-on (`bl_info`) in 3.4 and later.
"""

from __future__ import annotations

import bpy

SLOTTED_ACTIONS = bpy.app.version >= (4, 4, 0)
SEQUENCER_STRIPS = bpy.app.version >= (4, 4, 0)


def fcurve_ensure(action, id_block, data_path: str, index: int = 0):
    """The F-curve animating `id_block`'s `data_path`[`index`] in `action`, created when missing."""
    if SLOTTED_ACTIONS:
        return action.fcurve_ensure_for_datablock(id_block, data_path, index=index)
    return action.fcurves.find(data_path, index=index) or action.fcurves.new(data_path, index=index)


def fcurve_find(action, data_path: str, index: int = 0):
    """`action`'s F-curve for `data_path`[`index`] (any slot's), or None."""
    if not SLOTTED_ACTIONS:
        return action.fcurves.find(data_path, index=index)
    from bpy_extras import anim_utils

    for slot in action.slots:
        bag = anim_utils.action_get_channelbag_for_slot(action, slot)
        fc = bag.fcurves.find(data_path, index=index) if bag else None
        if fc is not None:
            return fc
    return None


def sequencer_strips(scene) -> tuple:
    """Every strip in `scene`'s sequencer, inside meta strips too (empty without a sequencer)."""
    editor = scene.sequence_editor
    if editor is None:
        return ()
    return tuple(editor.strips_all if SEQUENCER_STRIPS else editor.sequences_all)
