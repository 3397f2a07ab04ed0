"""Pallas kernel bodies and their launch wrappers (installed as gaussjax.kernels)."""
