"""The rasteriser's plain-jnp oracle: the model of ``gaussjax.constants``, dense.

Every fast backend (``_xla``, ``_native``'s C++, ``_pallas``'s kernels)
computes this function; tests compare them against it. ``gaussian_weight`` is
the truncated profile they share.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gaussjax import constants
from gaussjax.core._gaussians import Gaussians, conics

Array = jax.Array


def pixel_centres(height: int, width: int, dtype=jnp.float32) -> tuple[Array, Array]:
  """``(x, y)`` coordinates of pixel centres, each ``[H, W]``."""
  ys = jnp.arange(height, dtype=dtype) + 0.5
  xs = jnp.arange(width, dtype=dtype) + 0.5
  return jnp.broadcast_to(xs[None, :], (height, width)), jnp.broadcast_to(ys[:, None], (height, width))


def gaussian_weight(q: Array) -> Array:
  """The truncated, continuous Gaussian profile of ``constants`` at radius² ``q``."""
  w = jnp.exp(-0.5 * q) - constants.WEIGHT_CUTOFF
  return jnp.maximum(w, 0.0) * constants.WEIGHT_SCALE


def render_reference(gaussians: Gaussians, height: int, width: int) -> Array:
  """Dense, obviously correct rendering: every Gaussian at every pixel.

  Args:
    gaussians: ``Gaussians`` with ``means [N, 2]``, ``chol [N, 3]``,
      ``colors [N, C]``.
    height: output rows.
    width: output columns.

  Returns:
    ``[height, width, C]`` image, not clipped.
  """
  means, chol, colors = gaussians
  dtype = jnp.result_type(means, chol, colors)
  conic = conics(chol.astype(dtype))  # [N, 3]
  px, py = pixel_centres(height, width, dtype)
  dx = px[:, :, None] - means[:, 0].astype(dtype)  # [H, W, N]
  dy = py[:, :, None] - means[:, 1].astype(dtype)
  q = conic[:, 0] * dx * dx + 2.0 * conic[:, 1] * dx * dy + conic[:, 2] * dy * dy
  w = gaussian_weight(q)  # [H, W, N]
  return jnp.einsum("hwn,nc->hwc", w, colors.astype(dtype), precision=jax.lax.Precision.HIGHEST)
