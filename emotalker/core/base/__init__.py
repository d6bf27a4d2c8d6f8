"""What every core module may use: the error type, atomic files, progress, device choice, quaternions, the emotion vocabulary, the compiled per-Gaussian kernels."""
