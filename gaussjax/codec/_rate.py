"""The rate of Gaussians under the codec's quantisers, for the encoder's objective.

The file codes, per Gaussian, a Morton-delta position and one symbol per
Cholesky latent (log l11, shear, log l22) and colour latent (``_quantize``),
each stream with its own entropy model (``_bitstream.choose_model``). Here
each attribute stream is modelled by a discretised Laplace fitted to its
current symbols (mean and mean absolute deviation): a symbol ``q`` costs
``-log2 P(q)`` bits. The symbols come from straight-through rounding of the
latents, so the cost is differentiable in the Gaussians (it pulls each latent
towards its stream's centre, by ``1 / (b ln 2)`` bits per step of the
quantiser). Positions cost about the same for every Gaussian at a given N
and carry no gradient; ``file_bits`` counts them exactly as the coder does.

``encode`` adds ``λ · R`` (R in bits per pixel) to the MSE of the
fine-tuning, with ``λ`` from the slope of the rate-distortion curve
(``rd_lambda``). How far the estimate is from real files:
``tests/test_codec_rate.py``; what it buys: ``benchmarks/results/codec_ablation_rate.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax.codec import _quantize as qz
from gaussjax.core._gaussians import Gaussians
from gaussjax.fitting._density import PARK_POSITION

# Smallest probability a symbol is charged (the coder's tables have 2^-24
# resolution; anything this improbable costs the same 20 bits here).
_MIN_LOG2_P = -20.0
# Smallest Laplace scale of a stream, in quantiser steps (a stream of equal
# symbols still has a finite slope).
_MIN_SCALE = 0.05


class RateTerm(NamedTuple):
  """What the training step needs to add ``weight · bits / (H · W)`` to the loss.

  Arrays (not static), so changing λ or the steps does not recompile.

  Attributes:
    weight: ``[]`` λ, in MSE per bit per pixel.
    scale: ``[]`` step of ``log l11`` and ``log l22``.
    shear: ``[]`` step of the shear.
    color: ``[C]`` colour steps.
    color_size: ``[]`` exponent of the size-scaled colour steps
      (``QuantSteps.color_size``).
  """

  weight: jax.Array
  scale: jax.Array
  shear: jax.Array
  color: jax.Array
  color_size: jax.Array


def rate_term(weight: float, steps: qz.QuantSteps) -> RateTerm:
  """``RateTerm`` of λ = ``weight`` for the file's quantiser ``steps``."""
  if not (math.isfinite(weight) and weight >= 0):
    raise ValueError(f"weight={weight!r} must be a finite number >= 0")
  f = lambda v: jnp.asarray(v, jnp.float32)
  return RateTerm(f(weight), f(steps.scale), f(steps.shear), f(steps.color), f(steps.color_size))


def rd_lambda(mse: float, bpp: float, slope_db: float) -> float:
  """λ such that ``MSE + λ · bpp`` is stationary where PSNR rises ``slope_db`` per doubling.

  ``PSNR = -10 log10 MSE`` and ``dPSNR / dlog2(R) = slope_db`` give
  ``-dMSE/dR = slope_db · ln 10 / (10 ln 2) · MSE / R``: the marginal MSE
  that one more bit per pixel buys at the operating point ``(mse, bpp)``.
  """
  if not (mse > 0 and bpp > 0 and slope_db > 0):
    raise ValueError(f"mse={mse}, bpp={bpp} and slope_db={slope_db} must be positive")
  return slope_db * math.log(10.0) / (10.0 * math.log(2.0)) * mse / bpp


def _stream_latents(gaussians: Gaussians, height: int, width: int, chol_scale, chol_shear,
                    color, color_size, xp):
  """``[N, 3 + C]`` continuous latents of the attribute streams, in file order."""
  steps = qz.QuantSteps(1.0, chol_scale, chol_shear, color, color_size)
  _, logs, shear, col = qz._latents(tuple(gaussians), height, width, steps, xp)
  return xp.concatenate([logs[:, :1], shear[:, None], logs[:, 1:], col], -1)


def laplace_log2_prob(q, loc, scale, xp=jnp):
  """``log2 P(q)`` of integer ``q`` under a Laplace(loc, scale) discretised to unit bins."""
  u = q - loc
  d = xp.abs(u)
  inv = 1.0 / scale
  # |u| >= 1/2: both bin edges on one side: P = ½ e^{-(d - ½)/b} (1 - e^{-1/b}).
  tail = math.log(0.5) - (d - 0.5) * inv + xp.log(-xp.expm1(-inv))
  # |u| < 1/2: the bin holds the mode: P = 1 - ½ e^{(u - ½)/b} - ½ e^{-(u + ½)/b}.
  dc = xp.minimum(d, 0.5)
  centre = xp.log(xp.maximum(1.0 - 0.5 * xp.exp((dc - 0.5) * inv)
                             - 0.5 * xp.exp(-(dc + 0.5) * inv), 1e-30))
  return xp.maximum(xp.where(d >= 0.5, tail, centre) / math.log(2.0), _MIN_LOG2_P)


def _fit_laplace(q, weight, xp):
  """Per-stream ``(loc, scale)`` of symbols ``q [N, S]``: mean and mean absolute deviation.

  ``weight [N, 1]``: 1 for the Gaussians that count, 0 for parked slots.
  """
  n = xp.maximum(xp.sum(weight), 1.0)
  loc = xp.sum(q * weight, 0) / n
  scale = xp.maximum(xp.sum(xp.abs(q - loc) * weight, 0) / n, _MIN_SCALE)
  return loc, scale


def attribute_bits(gaussians: Gaussians, height: int, width: int, term: RateTerm) -> jax.Array:
  """``[N]`` bits of each Gaussian's Cholesky and colour symbols (differentiable).

  The symbols are the straight-through rounded latents; each stream's
  Laplace is fitted to the current symbols and held constant in the gradient.
  Parked slots (``fitting._density``: padding of a batch) cost 0 and are
  left out of the fit.
  """
  x = _stream_latents(gaussians, height, width, term.scale, term.shear, term.color,
                      term.color_size, jnp)
  q = x + jax.lax.stop_gradient(jnp.round(x) - x)
  active = (gaussians.means[:, :1] > PARK_POSITION / 2).astype(x.dtype)
  loc, scale = _fit_laplace(jax.lax.stop_gradient(q), active, jnp)
  return -jnp.sum(laplace_log2_prob(q, loc, scale), -1) * active[:, 0]


def rate_bpp(gaussians: Gaussians, height: int, width: int, term: RateTerm) -> jax.Array:
  """``[]`` attribute bits of all Gaussians per pixel (positions excluded: constant at fixed N)."""
  return jnp.sum(attribute_bits(gaussians, height, width, term)) / (height * width)


def _position_bits(gaussians: Gaussians, height: int, width: int, steps: qz.QuantSteps) -> float:
  """Bits of the position streams exactly as the coder spends them (model table excluded)."""
  sym, _ = qz.quantize(gaussians, height, width, steps)
  codes, _ = qz.position_codes(sym.pos, height, width, steps)
  # Refinement bits below the coarse cells (pos_levels K): K - log2(multiple) per axis.
  refine = 2.0 * float(np.sum(steps.pos_levels - qz.symbol_shift(sym, height, width, steps)))
  deltas = np.diff(codes, prepend=0)
  buckets = np.zeros(deltas.shape, np.int64)
  rest = deltas.copy()
  while (rest > 0).any():
    buckets += rest > 0
    rest >>= 1
  _, counts = np.unique(buckets, return_counts=True)
  p = counts / counts.sum()
  entropy = -float(np.sum(counts * np.log2(p)))
  return entropy + float(np.sum(np.maximum(buckets - 1, 0))) + refine


def gaussian_bits(gaussians: Gaussians, height: int, width: int,
                  steps: qz.QuantSteps) -> np.ndarray:
  """``[N]`` estimated bits of each Gaussian: its attribute symbols plus the mean position cost."""
  g = Gaussians(*(np.asarray(x, np.float64) for x in gaussians))
  n = g.num_gaussians
  if n == 0:
    return np.zeros(0)
  x = _stream_latents(g, height, width, steps.scale, steps.shear,
                      np.asarray(steps.color, np.float64), steps.color_size, np)
  q = np.rint(x)
  loc, scale = _fit_laplace(q, np.ones((n, 1)), np)
  attr = -np.sum(laplace_log2_prob(q, loc, scale, np), -1)
  return attr + _position_bits(g, height, width, steps) / n


def file_bits(gaussians: Gaussians, height: int, width: int, steps: qz.QuantSteps) -> float:
  """Estimated bits of the Gaussians' file: ``gaussian_bits`` summed, plus the header.

  Leaves out the entropy models' tables (a few dozen bytes).
  """
  n, c = len(gaussians.means), len(steps.color)
  # magic, version, C, W, H, N (varint), colour mode, float16 steps, crc32 (FORMAT.md)
  header = 4 + 1 + 1 + 2 + 2 + max(1, math.ceil(max(n, 1).bit_length() / 7)) + 1 \
      + 2 * (3 + c) + 4
  return 8.0 * header + float(np.sum(gaussian_bits(gaussians, height, width, steps)))
