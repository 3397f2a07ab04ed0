"""Shared fixtures: small Kodak crops and random Gaussians."""

import os

import numpy as np
import pytest

from gaussjax import constants as _constants

# No test reads or writes the user's compilation cache (the command line's
# default); tests/test_cache.py turns it on in a temporary directory.
os.environ["GAUSSJAX_XLA_CACHE"] = "0"

KODAK = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "kodak")
KODAK_DIRS = (KODAK, "/work/shared/data/kodak")


def kodak_path(index: int) -> str:
  for directory in KODAK_DIRS:
    path = os.path.join(directory, f"kodim{index:02d}.png")
    if os.path.exists(path):
      return path
  pytest.skip(f"Kodak image {index} not found in {KODAK_DIRS}")


@pytest.fixture(scope="session")
def kodak_crop():
  """A 64x64 RGB crop of kodim23 (parrots: edges and flat areas), float32."""
  from gaussjax import load_image

  image = load_image(kodak_path(23))
  return np.ascontiguousarray(image[200:264, 300:364])


def random_gaussians_np(rng: np.random.Generator, n: int, height: int, width: int, channels: int):
  """(means, chol, colors) float64 NumPy arrays, some anisotropic and rotated."""
  means = rng.uniform([-2.0, -2.0], [width + 2.0, height + 2.0], (n, 2))
  l11 = rng.uniform(0.3, 6.0, n) * rng.choice([-1.0, 1.0], n)
  l22 = rng.uniform(0.3, 6.0, n)
  l21 = rng.uniform(-4.0, 4.0, n)
  chol = np.stack([l11, l21, l22], -1)
  colors = rng.uniform(-0.5, 1.0, (n, channels))
  return means, chol, colors


def render_float64(gaussians, height, width):
  """The model of ``gaussjax.constants`` in float64 numpy: ground truth."""
  means, chol, colors = (np.asarray(x, np.float64) for x in gaussians)
  l11, l21, l22 = chol.T
  sxx = l11 * l11 + _constants.COV_FLOOR
  sxy = l11 * l21
  syy = l21 * l21 + l22 * l22 + _constants.COV_FLOOR
  det = sxx * syy - sxy * sxy
  dx = np.arange(width)[None, :, None] + 0.5 - means[:, 0]
  dy = np.arange(height)[:, None, None] + 0.5 - means[:, 1]
  q = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det
  w = np.maximum(np.exp(-0.5 * q) - _constants.WEIGHT_CUTOFF, 0) * _constants.WEIGHT_SCALE
  return np.einsum("hwn,nc->hwc", w, colors)


# --------------------------------------------------------------------------- renderer test scenes
# Shared by the Pallas and XLA renderer tests. NumPy, not jax.random:
# building test inputs compiles nothing.


def scene(seed, n, height, width, channels, *, margin=0.0, scale=(0.7, 6.0)):
  """Random anisotropic Gaussians; ``margin`` (fraction) places some off-image."""
  import jax.numpy as jnp

  import gaussjax
  rng = np.random.default_rng(seed)
  size = np.asarray([width, height], np.float32)
  means = (rng.uniform(size=(n, 2)) * (1 + 2 * margin) - margin) * size
  diag = np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]), size=(n, 2)))
  off = rng.normal(size=n) * 0.5 * diag[:, 0]
  chol = np.stack([diag[:, 0], off, diag[:, 1]], -1)
  colors = rng.normal(size=(n, channels)) * 0.5
  return gaussjax.Gaussians(*(jnp.asarray(x, jnp.float32) for x in (means, chol, colors)))


def large_and_thin_scene(seed, height, width, channels):
  """Very large, very thin and degenerate Gaussians among ordinary ones."""
  import jax.numpy as jnp

  import gaussjax
  means, chol, colors = (np.array(x) for x in scene(seed, 40, height, width, channels))
  chol[0:4] = [[200.0, 30.0, 150.0], [80.0, -60.0, 40.0], [500.0, 0.0, 500.0], [60.0, 0.0, 60.0]]
  chol[4:10] = [[25.0, 0.0, 0.02], [0.01, 0.0, 30.0], [0.0, 0.0, 0.0], [12.0, 0.0, 1e-3],
                [1.5, 1.0, 0.05], [0.0, 40.0, 0.01]]
  return gaussjax.Gaussians(jnp.asarray(means), jnp.asarray(chol), jnp.asarray(colors))


def ill_conditioned_scene(seed, height, width, channels):
  """Long, thin, diagonal Gaussians: ``q`` cancels in float32 along their length."""
  import jax.numpy as jnp

  import gaussjax
  means, _, colors = scene(seed, 12, height, width, channels)
  length = np.linspace(8.0, 30.0, 12)
  sign = np.where(np.arange(12) % 2, 1.0, -1.0)
  chol = np.stack([length, 0.95 * sign * length, np.full(12, 0.01)], -1)
  return gaussjax.Gaussians(means, jnp.asarray(chol, jnp.float32), colors)
