"""The model: FLAME rig, Gaussians, renderers, training stages. Never imports bpy."""
