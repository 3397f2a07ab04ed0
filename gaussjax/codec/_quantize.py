"""Per-attribute quantisers of the codec, in numpy (exact) and JAX (training).

Each attribute is mapped to a *latent* in which one uniform step is roughly
equally harmful everywhere, then rounded to an integer:

* positions ``(x, y)``: ``round((μ + margin) / pos_step)``, a point on a grid
  that covers the image plus a margin; the grid points are ordered along a
  Morton (Z-order) curve and their sorted codes delta-coded (FORMAT.md).
* Cholesky factors, sign-canonicalised to ``l11, l22 ≥ 0`` (same Σ):
  ``log l11 / scale_step``, ``log l22 / scale_step`` (relative precision, the
  same for small and large Gaussians) and ``asinh(l21 / l22) / shear_step``
  (the shear, scale-free).
* colours: for RGB the YCoCg transform (Y = (R + 2G + B)/4, Co = (R - B)/2,
  Cg = (2G - R - B)/4), each channel with its own step (chroma coarser); other
  channel counts are quantised as they are.

``fake_quantize`` is the straight-through twin used by quantisation-aware
fine-tuning: the forward pass is the decoder's reconstruction, the backward
pass the identity on the latent.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax.core._gaussians import Gaussians

# Range of l11, l22 (pixels) the scale quantiser covers; values outside are
# clipped. Below ~1/32 px a factor is invisible next to the COV_FLOOR prefilter.
SCALE_MIN = 1.0 / 32.0
# Shear asinh(l21 / l22) is clipped to ±SHEAR_MAX (|l21 / l22| ≤ ~8e4).
SHEAR_MAX = 12.0
# Colours (in the quantised colour space) are clipped to ±COLOR_MAX.
COLOR_MAX = 8.0

# Documented step ranges (FORMAT.md); the decoder rejects files outside them.
POS_STEP_RANGE = (1.0 / 16.0, 16.0)
SCALE_STEP_RANGE = (1.0 / 256.0, 4.0)
SHEAR_STEP_RANGE = (1.0 / 256.0, 4.0)
COLOR_STEP_RANGE = (1.0 / 1024.0, 4.0)

YCOCG = np.array([[0.25, 0.5, 0.25], [0.5, 0.0, -0.5], [-0.25, 0.5, -0.25]], np.float64)
YCOCG_INV = np.array([[1.0, 1.0, -1.0], [1.0, 0.0, 1.0], [1.0, -1.0, -1.0]], np.float64)


@dataclasses.dataclass(frozen=True)
class QuantSteps:
  """Step sizes of the four quantisers (see module docstring).

  Attributes:
    pos: position step in pixels.
    scale: step of ``log l11`` and ``log l22``.
    shear: step of ``asinh(l21 / l22)``.
    color: one step per colour channel (in YCoCg for RGB).
  """

  pos: float
  scale: float
  shear: float
  color: tuple[float, ...]

  def scaled(self, factor: float = 1.0, *, pos: float = 1.0, scale: float = 1.0,
             shear: float = 1.0, color: float = 1.0) -> "QuantSteps":
    """All steps times ``factor`` (and each attribute's own factor), kept in range.

    The results are rounded to float16, as the file stores them.
    """
    def clip(v, f, rng):
      return float(np.float16(min(max(v * factor * f, rng[0]), rng[1])))
    return QuantSteps(clip(self.pos, pos, POS_STEP_RANGE),
                      clip(self.scale, scale, SCALE_STEP_RANGE),
                      clip(self.shear, shear, SHEAR_STEP_RANGE),
                      tuple(clip(c, color, COLOR_STEP_RANGE) for c in self.color))

  def rounded(self) -> "QuantSteps":
    """Steps rounded to float16, as the file stores them."""
    return self.scaled(1.0)


def default_steps(channels: int) -> QuantSteps:
  """The starting steps.

  On a fitted Kodak image each step sits near break-even between bytes and
  PSNR: halving or doubling one attribute's step trades a few percent of
  bytes for about as much PSNR as that is worth
  (the ``step_factor`` table of ``benchmarks/results/quantizers.md``). ``choose_steps``
  moves them per image, since the balance shifts with the quality.
  """
  if channels == 3:
    color = (1.0 / 128.0, 1.0 / 64.0, 1.0 / 64.0)
  else:
    color = (1.0 / 128.0,) * channels
  return QuantSteps(pos=0.25, scale=1.0 / 16.0, shear=1.0 / 16.0, color=color).rounded()


def margin(height: int, width: int) -> int:
  """Pixels around the image that the position grid also covers."""
  return int(math.ceil(max(height, width) / 8))


def grid_bits(height: int, width: int, pos_step: float) -> int:
  """Bits per axis of the position grid (Morton codes have twice as many)."""
  m = margin(height, width)
  cells = math.ceil((max(height, width) + 2 * m) / pos_step) + 1
  return max(1, int(math.ceil(math.log2(cells))))


def _color_matrices(channels: int):
  if channels == 3:
    return YCOCG, YCOCG_INV
  eye = np.eye(channels)
  return eye, eye


def canonical_chol(chol, xp=np):
  """Flips column signs so that ``l11, l22 ≥ 0``; the covariance is unchanged."""
  s1 = xp.where(chol[:, 0] < 0, -1.0, 1.0)
  s2 = xp.where(chol[:, 2] < 0, -1.0, 1.0)
  return xp.stack([chol[:, 0] * s1, chol[:, 1] * s1, chol[:, 2] * s2], -1)


def _latents(gaussians, height, width, steps: QuantSteps, xp):
  """Continuous latents (before rounding), clipped to the quantiser ranges."""
  means, chol, colors = gaussians
  m = margin(height, width)
  lim = xp.asarray([width + m, height + m], dtype=means.dtype)
  pos = (xp.clip(means, -m, lim) + m) / steps.pos
  chol = canonical_chol(chol, xp)
  lmax = math.log(2.0 * max(height, width))
  logs = xp.clip(xp.log(xp.maximum(chol[:, 0::2], SCALE_MIN)), math.log(SCALE_MIN), lmax)
  shear = xp.clip(xp.arcsinh(chol[:, 1] / xp.maximum(chol[:, 2], SCALE_MIN)), -SHEAR_MAX, SHEAR_MAX)
  fwd, _ = _color_matrices(colors.shape[-1])
  col = xp.clip(colors @ xp.asarray(fwd.T, dtype=colors.dtype), -COLOR_MAX, COLOR_MAX)
  col = col / xp.asarray(steps.color, dtype=colors.dtype)
  return pos, logs / steps.scale, shear / steps.shear, col


def _reconstruct(pos, logs, shear, col, height, width, steps: QuantSteps, xp):
  """Inverse of ``_latents`` on (rounded) latents."""
  m = margin(height, width)
  means = pos * steps.pos - m
  l11 = xp.exp(logs[:, 0] * steps.scale)
  l22 = xp.exp(logs[:, 1] * steps.scale)
  l21 = xp.sinh(shear * steps.shear) * l22
  chol = xp.stack([l11, l21, l22], -1)
  _, inv = _color_matrices(col.shape[-1])
  colors = (col * xp.asarray(steps.color, dtype=col.dtype)) @ xp.asarray(inv.T, dtype=col.dtype)
  return means, chol, colors


@dataclasses.dataclass
class Symbols:
  """Integer symbols of quantised Gaussians, in Morton order.

  Attributes:
    pos: ``int64 [N, 2]`` grid coordinates ``(ix, iy)``.
    chol: ``int64 [N, 3]`` (log l11, shear, log l22) indices.
    color: ``int64 [N, C]`` colour indices.
  """

  pos: np.ndarray
  chol: np.ndarray
  color: np.ndarray


def morton_encode(ix: np.ndarray, iy: np.ndarray, bits: int) -> np.ndarray:
  """Interleaves ``bits`` bits of x (even) and y (odd) into Z-order codes."""
  code = np.zeros(ix.shape, np.int64)
  ix, iy = ix.astype(np.int64), iy.astype(np.int64)
  for b in range(bits):
    code |= ((ix >> b) & 1) << (2 * b)
    code |= ((iy >> b) & 1) << (2 * b + 1)
  return code


# Masks that gather every other bit of a 64-bit word into its low half, in
# five shift-or steps (instead of one step per bit): morton_decode.
_COMPACT_MASKS = tuple(np.int64(m) for m in (
    0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x00FF00FF00FF00FF, 0x0000FFFF0000FFFF,
    0x00000000FFFFFFFF))


def _compact_bits(v: np.ndarray) -> np.ndarray:
  """Bits 0, 2, 4, ... of non-negative ``v`` (int64) packed into bits 0, 1, 2, ..."""
  v = v & np.int64(0x5555555555555555)
  for shift, mask in zip((1, 2, 4, 8, 16), _COMPACT_MASKS):
    v = (v | (v >> shift)) & mask
  return v


def morton_decode(code: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
  """``(ix, iy)`` of Z-order codes: the inverse of ``morton_encode`` (``bits`` ≤ 31)."""
  code = np.asarray(code, np.int64) & np.int64((1 << (2 * bits)) - 1)
  return _compact_bits(code), _compact_bits(code >> 1)


def quantize(gaussians: Gaussians, height: int, width: int, steps: QuantSteps):
  """Rounds Gaussians to symbols and sorts them along the Morton curve.

  Args:
    gaussians: ``Gaussians`` (``means [N, 2]``, ``chol [N, 3]``, ``colors [N, C]``).
    height: image rows.
    width: image columns.
    steps: the quantiser steps.

  Returns:
    ``(symbols, order)``: ``Symbols`` in Morton order, and the permutation
    ``order`` such that ``symbols`` row ``k`` is Gaussian ``order[k]``.
  """
  g = tuple(np.asarray(x, np.float64) for x in gaussians)
  pos, logs, shear, col = _latents(g, height, width, steps, np)
  pos = np.rint(pos).astype(np.int64)
  bits = grid_bits(height, width, steps.pos)
  pos = np.clip(pos, 0, (1 << bits) - 1)
  order = np.argsort(morton_encode(pos[:, 0], pos[:, 1], bits), kind="stable")
  chol = np.stack([np.rint(logs[:, 0]), np.rint(shear), np.rint(logs[:, 1])], -1).astype(np.int64)
  color = np.rint(col).astype(np.int64)
  return Symbols(pos[order], chol[order], color[order]), order


def dequantize(symbols: Symbols, height: int, width: int, steps: QuantSteps) -> Gaussians:
  """The decoder's reconstruction: float32 ``Gaussians`` from symbols."""
  pos = symbols.pos.astype(np.float64)
  logs = symbols.chol[:, 0::2].astype(np.float64)
  shear = symbols.chol[:, 1].astype(np.float64)
  col = symbols.color.astype(np.float64)
  means, chol, colors = _reconstruct(pos, logs, shear, col, height, width, steps, np)
  return Gaussians(means.astype(np.float32), chol.astype(np.float32), colors.astype(np.float32))


def _ste_round(x):
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fake_quantize(gaussians: Gaussians, height: int, width: int, steps: QuantSteps) -> Gaussians:
  """Straight-through quantisation for training (JAX, differentiable).

  The forward value is ``dequantize(quantize(g))`` (up to float32 rounding and
  ordering); gradients pass through the rounding unchanged.
  """
  pos, logs, shear, col = _latents(tuple(gaussians), height, width, steps, jnp)
  means, chol, colors = _reconstruct(_ste_round(pos), _ste_round(logs), _ste_round(shear),
                                     _ste_round(col), height, width, steps, jnp)
  return Gaussians(means, chol, colors)
