"""Training the three stages: Stage 1 (neutral blendshapes), A2E, Stage 2 (emotion), and their losses."""
