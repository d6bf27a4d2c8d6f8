"""Tracks to per-frame Gaussians to exports, and the `emotalker` command line."""
