"""The Gaussian parameter pytree."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants

Array = jax.Array


class Gaussians(NamedTuple):
  """N two-dimensional Gaussians with colours: the unit gaussjax fits.

  All fields are in the unconstrained form that the optimiser updates, in the
  pixel coordinates of the image they describe (x = column, y = row, the image
  covering [0, W) × [0, H)). Leading batch axes come from ``jax.vmap``.

  Attributes:
    means: ``[N, 2]`` centres ``(x, y)`` in pixels.
    chol: ``[N, 3]`` lower-triangular Cholesky factor ``(l11, l21, l22)`` of the
      covariance, ``Σ = L Lᵀ`` with ``L = [[l11, 0], [l21, l22]]``.
    colors: ``[N, C]`` colour (opacity folded in), C = 1, 3 or 4 typically.
  """

  means: Array  # [..., N, 2]
  chol: Array  # [..., N, 3]
  colors: Array  # [..., N, C]

  @property
  def num_gaussians(self) -> int:
    """N, the number of Gaussians (the axis before the last)."""
    return self.means.shape[-2]

  @property
  def channels(self) -> int:
    """C, the number of colour channels."""
    return self.colors.shape[-1]

  def covariances(self) -> Array:
    """``[..., N, 2, 2]`` covariances ``L Lᵀ`` (without the render prefilter)."""
    return covariances(self.chol)

  def select(self, index) -> "Gaussians":
    """The subset at ``index`` (integer indices, a boolean mask or a slice)."""
    return Gaussians(self.means[..., index, :], self.chol[..., index, :], self.colors[..., index, :])

  def astype(self, dtype) -> "Gaussians":
    """All fields cast to ``dtype``."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), self)


def covariances(chol: Array) -> Array:
  """``Σ = L Lᵀ`` from Cholesky factors.

  Args:
    chol: ``[..., 3]`` factors ``(l11, l21, l22)``.

  Returns:
    ``[..., 2, 2]`` symmetric covariances.
  """
  l11, l21, l22 = chol[..., 0], chol[..., 1], chol[..., 2]
  sxx = l11 * l11
  sxy = l11 * l21
  syy = l21 * l21 + l22 * l22
  return jnp.stack([jnp.stack([sxx, sxy], -1), jnp.stack([sxy, syy], -1)], -2)


def rendered_covariance(chol: Array) -> tuple[Array, Array, Array, Array]:
  """``(Σxx, Σxy, Σyy, det Σ)`` of ``Σ = L Lᵀ + COV_FLOOR·I``, each ``[...]``.

  The one place the rendered covariance is written: ``conics``, ``extents``
  and the fast backends derive their forms from it.

  Args:
    chol: ``[..., 3]`` Cholesky factors.
  """
  l11, l21, l22 = chol[..., 0], chol[..., 1], chol[..., 2]
  f = constants.COV_FLOOR
  sxx = l11 * l11 + f
  sxy = l11 * l21
  syy = l21 * l21 + l22 * l22 + f
  # det = sxx·syy - sxy², expanded so that no terms cancel: for thin Gaussians
  # the difference form loses most digits, and how many depends on whether the
  # compiler fuses it into an FMA, so backends would disagree.
  det = (l11 * l22) ** 2 + f * (l11 * l11 + l21 * l21 + l22 * l22) + f * f
  return sxx, sxy, syy, det


def conics(chol: Array) -> Array:
  """Inverse covariances of the rendered Gaussians, as ``(a, b, c)``.

  The rendered covariance includes the anti-aliasing prefilter
  ``constants.COV_FLOOR``; ``q = a dx² + 2 b dx dy + c dy²``.

  Args:
    chol: ``[..., 3]`` Cholesky factors.

  Returns:
    ``[..., 3]`` conic coefficients ``(a, b, c)``.
  """
  sxx, sxy, syy, det = rendered_covariance(chol)
  inv = 1.0 / det
  return jnp.stack([syy * inv, -sxy * inv, sxx * inv], -1)


def extents(chol: Array) -> Array:
  """Half-widths ``(rx, ry)`` in pixels of each Gaussian's rendered support.

  The exact bounding box of the ellipse ``q = constants.CUTOFF_Q``, prefilter
  included: outside ``[μ - r, μ + r]`` the weight is exactly zero.

  Args:
    chol: ``[..., 3]`` Cholesky factors.

  Returns:
    ``[..., 2]`` half-widths.
  """
  sxx, _, syy, _ = rendered_covariance(chol)
  return jnp.sqrt(constants.CUTOFF_Q * jnp.stack([sxx, syy], -1))


def concatenate(gaussians_list) -> Gaussians:
  """Joins several ``Gaussians`` along the Gaussian axis."""
  gaussians_list = list(gaussians_list)
  if not gaussians_list:
    raise ValueError("concatenate needs at least one Gaussians")
  channels = {g.channels for g in gaussians_list}
  if len(channels) != 1:
    raise ValueError(f"cannot concatenate Gaussians with different channel counts {sorted(channels)}")
  return Gaussians(*(jnp.concatenate(parts, axis=-2) for parts in zip(*gaussians_list)))


def scale_gaussians(gaussians: Gaussians, sy: float, sx: float) -> Gaussians:
  """Maps Gaussians onto a grid scaled by ``(sy, sx)`` (output px per input px).

  Means scale as ``μ' = S μ`` and factors as ``L' = S L`` with ``S = diag(sx,
  sy)``, which keeps ``L'`` lower-triangular and gives ``Σ' = S Σ S``: the same
  continuous picture, sampled on a denser (s > 1) or sparser (s < 1) grid.
  """
  s = jnp.asarray([sx, sy], gaussians.means.dtype)
  chol_scale = jnp.asarray([sx, sy, sy], gaussians.chol.dtype)
  return Gaussians(gaussians.means * s, gaussians.chol * chol_scale, gaussians.colors)


def validate(gaussians, *, name: str = "gaussians") -> Gaussians:
  """Checks structure, shapes and dtypes; returns the tree as ``Gaussians``."""
  if not isinstance(gaussians, Gaussians):
    if isinstance(gaussians, tuple) and len(gaussians) == 3:
      gaussians = Gaussians(*gaussians)
    else:
      raise TypeError(f"{name} must be a gaussjax.Gaussians, got {type(gaussians).__name__}")
  means, chol, colors = gaussians
  for field, value, last in (("means", means, 2), ("chol", chol, 3), ("colors", colors, None)):
    shape = np.shape(value)
    if len(shape) < 2:
      raise ValueError(f"{name}.{field} must have shape [N, ...], got {shape}")
    if last is not None and shape[-1] != last:
      raise ValueError(f"{name}.{field} must have shape [N, {last}], got {shape}")
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise TypeError(f"{name}.{field} must be floating point, got {jnp.result_type(value)}")
  n = np.shape(means)[:-1]
  if np.shape(chol)[:-1] != n or np.shape(colors)[:-1] != n:
    raise ValueError(
        f"{name} fields disagree on N: means {np.shape(means)}, chol {np.shape(chol)}, "
        f"colors {np.shape(colors)}")
  if np.shape(colors)[-1] < 1:
    raise ValueError(f"{name}.colors must have at least one channel, got {np.shape(colors)}")
  return gaussians
