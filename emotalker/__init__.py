"""EmoTalker: emotional, audio-driven 3D Gaussian head avatars.

`emotalker.core` is the model (no Blender), `emotalker.bake` turns tracks into
per-frame Gaussians and files and hosts the CLI. The Blender add-on lives in
`blender_addon/` at the repository root and talks to the core through a worker
process.
"""

__version__ = "0.1.0"
