"""Tracks to per-frame Gaussians to files: emotion tracks, the resumable frame loop, PLY/PNG/MP4 exporters, batches."""
