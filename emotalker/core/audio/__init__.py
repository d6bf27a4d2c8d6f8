"""Dialogue audio: loading and validating waveforms, and per-frame audio features."""
