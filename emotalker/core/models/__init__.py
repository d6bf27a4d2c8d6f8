"""The avatar: Stage 1 Gaussian blendshapes, the A2E model, the Stage 2 emotion deformer, and the bundle that holds them."""
