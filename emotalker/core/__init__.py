"""The model: rig, Gaussians, renderer, stage models, datasets, training, evaluation. Never imports bpy.

Sub-packages in dependency order (each may import only those before it; see
docs/architecture.md): base, rig, head, render, audio, models, datasets,
evaluation, training.
"""
