"""`emotalker track`: a monocular talking-head video becomes an `emotalker-dataset/1` clip.

Landmarks come from mediapipe's FaceMesh (the `track` extra, imported only when needed),
are embedded on any FLAME-format rig by rendering it (`embedding`), and a per-frame FLAME
fit to them gives the tracking that training reads. Core never imports this package.
"""
