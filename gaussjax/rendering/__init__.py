"""The rasteriser: dense reference, XLA + native CPU kernel, Pallas GPU kernels; it owns plans and overflow."""
