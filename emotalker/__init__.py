"""EmoTalker: emotional, audio-driven 3D Gaussian head avatars.

`emotalker.core` is the model (no Blender), `emotalker.bake` turns tracks into
per-frame Gaussians and files, `emotalker.cli` is the command line and
`emotalker.worker` the process the add-on talks to (docs/architecture.md). The Blender add-on lives in
`blender_addon/` at the repository root and talks to the core through a worker
process.
"""

__version__ = "0.1.0"
