"""Initialisation: random placement and SLIC superpixels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gaussjax._gaussians import Gaussians


def init_random(key: jax.Array, n: int, height: int, width: int, channels: int = 3) -> Gaussians:
  """N Gaussians at uniformly random positions with random colours.

  Each Gaussian is isotropic with a standard deviation of about half the mean
  spacing ``sqrt(H·W / n)``, so together they cover the image.

  Args:
    key: PRNG key.
    n: number of Gaussians.
    height: image rows.
    width: image columns.
    channels: colour channels.

  Returns:
    ``Gaussians`` with ``means [n, 2]``, ``chol [n, 3]``, ``colors [n, channels]``.
  """
  for name, value in (("n", n), ("height", height), ("width", width), ("channels", channels)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")
  k_pos, k_col = jax.random.split(key)
  means = jax.random.uniform(k_pos, (n, 2)) * jnp.asarray([width, height], jnp.float32)
  sigma = 0.5 * math.sqrt(height * width / n)
  chol = jnp.tile(jnp.asarray([[sigma, 0.0, sigma]], jnp.float32), (n, 1))
  colors = jax.random.uniform(k_col, (n, channels)) * 0.5
  return Gaussians(means, chol, colors)
