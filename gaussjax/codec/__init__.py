"""Quantisers, entropy-coded bitstreams and the file formats: single-level, progressive and tiled images, video."""
