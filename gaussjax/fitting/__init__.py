"""Initialisation, density control and the one training loop."""
