"""Image embedders that define the decoder's target space (OpenCLIP image tokens)."""
