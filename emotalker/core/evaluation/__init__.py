"""Scoring an avatar on tracked frames: image metrics, A2E lip metrics, Stage 1 and Stage 2 evaluation."""
