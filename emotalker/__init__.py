"""EmoTalker: emotional, audio-driven 3D Gaussian head avatars.

`emotalker.core` is the model (no Blender), `emotalker.bake` turns tracks into
per-frame Gaussians and files, `emotalker.cli` is the command line and
`emotalker.worker` the process the add-on talks to (docs/architecture.md). The Blender add-on lives in
`blender_addon/` at the repository root and talks to the core through a worker
process.
"""

import os

__version__ = "0.1.0"

# OpenMP's idle threads spin (libgomp's default), and torch's and numba's kernels take turns many times a
# frame or a training step: the spinning threads of one hold the cores the other needs, and a core shared
# with another process makes it several times slower (docs/renderer.md, "Threads"). libgomp reads this once,
# when torch loads it, so it is set before anything of ours imports torch; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
