"""Per-attribute quantisers of the codec, in numpy (exact) and JAX (training).

Each attribute is mapped to a *latent* in which one uniform step is roughly
equally harmful everywhere, then rounded to an integer:

* positions ``(x, y)``: ``round((μ + margin) / pos_step)``, a point on a grid
  that covers the image plus a margin; the grid points are ordered along a
  Morton (Z-order) curve and their sorted codes delta-coded (FORMAT.md).
  With ``QuantSteps.pos_levels`` K > 0 the step is per Gaussian, ``pos_step ·
  2^(K - r)`` with ``r`` in ``0..K`` set by its position sensitivity
  (``position_sensitivity``, from its quantised factor and colour, so the
  decoder computes the same): shifting a Gaussian by ``δ`` costs about
  ``(π/2) sqrt(det Σ) δᵀ Σ⁻¹ δ |c|²`` of SSE, whatever its size, so faint
  and round Gaussians get coarse positions and strong, thin ones fine. The
  Morton codes are then those of the coarse grid (step ``pos_step · 2^K``),
  and each Gaussian adds ``r`` refinement bits per axis.
* Cholesky factors, sign-canonicalised to ``l11, l22 ≥ 0`` (same Σ):
  ``log l11 / scale_step``, ``log l22 / scale_step`` (relative precision, the
  same for small and large Gaussians) and ``asinh(l21 / l22) / shear_step``
  (the shear, scale-free).
* colours: for RGB the YCoCg transform (Y = (R + 2G + B)/4, Co = (R - B)/2,
  Cg = (2G - R - B)/4), each channel with its own step (chroma coarser); other
  channel counts are quantised as they are. With ``QuantSteps.color_size``
  β > 0 a Gaussian's colour steps are scaled by ``(d / COLOR_SIZE_REF)^-β``
  (clipped to ``[1/COLOR_SIZE_CLIP, COLOR_SIZE_CLIP]``), ``d = sqrt(det Σ)``
  of its *quantised* Cholesky factor (with the prefilter): a colour error
  costs ``π d`` times its square, so large Gaussians get finer steps and
  small ones coarser. The decoder computes the same factor from the symbols.

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
from gaussjax.fitting._density import rendered_det

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

# Size-scaled colour steps (module docstring): sqrt(det Σ) in pixels² at which a
# Gaussian's colour step is the header's, the factor's clip, and the exponent's
# denominator (the file stores β · COLOR_SIZE_DENOM in the colour mode byte).
COLOR_SIZE_REF = 16.0
COLOR_SIZE_CLIP = 4.0
COLOR_SIZE_DENOM = 8
COLOR_SIZE_MAX = 15 / COLOR_SIZE_DENOM

# Per-Gaussian position steps (module docstring): at most POS_LEVELS_MAX
# refinement levels; the reference sensitivity is a positive float16.
POS_LEVELS_MAX = 3
POS_REF_RANGE = (2.0 ** -24, 2.0 ** 15)

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
    color_size: exponent β of the size-scaled colour steps (module
      docstring), a multiple of ``1 / COLOR_SIZE_DENOM`` in ``[0,
      COLOR_SIZE_MAX]``; 0: the same colour steps for every Gaussian.
    pos_levels: K, the refinement levels of per-Gaussian position steps
      (module docstring), ``0..POS_LEVELS_MAX``; 0: ``pos`` for every
      Gaussian.
    pos_ref: the position sensitivity (``position_sensitivity``) from which
      up a Gaussian gets the finest step ``pos``; each factor of 4 below it
      doubles the step, up to ``pos · 2^K``. Unused when ``pos_levels`` is 0.
  """

  pos: float
  scale: float
  shear: float
  color: tuple[float, ...]
  color_size: float = 0.0
  pos_levels: int = 0
  pos_ref: float = 1.0

  def scaled(self, factor: float = 1.0, *, pos: float = 1.0, scale: float = 1.0,
             shear: float = 1.0, color: float = 1.0, pos_ref: float = 1.0) -> "QuantSteps":
    """All steps times ``factor`` (and each attribute's own factor), kept in range;
    ``pos_ref`` times its own factor only.

    The results are rounded to float16, as the file stores them.
    """
    def clip(v, f, rng):
      return float(np.float16(min(max(v * factor * f, rng[0]), rng[1])))
    return QuantSteps(clip(self.pos, pos, POS_STEP_RANGE),
                      clip(self.scale, scale, SCALE_STEP_RANGE),
                      clip(self.shear, shear, SHEAR_STEP_RANGE),
                      tuple(clip(c, color, COLOR_STEP_RANGE) for c in self.color),
                      self.color_size, self.pos_levels,
                      rounded_pos_ref(self.pos_ref * pos_ref))

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


def rounded_pos_ref(value: float) -> float:
  """``value`` clipped to ``POS_REF_RANGE`` and rounded to float16, as the file stores it."""
  return float(np.float16(min(max(float(value), POS_REF_RANGE[0]), POS_REF_RANGE[1])))


def reference_sensitivity(gaussians) -> float:
  """Half the mean ``position_sensitivity`` of float Gaussians: the ``pos_ref``
  that ``encode`` starts its step search from (``_codec._choose``).

  A uniform position step suits the mean sensitivity (the errors add up), so
  with per-Gaussian steps the header's step goes to the Gaussians above it;
  half the mean did best on kodim01 (``pos_levels`` of 2 and 3, before the
  search moves it).
  """
  chol = np.asarray(gaussians.chol, np.float64)
  colors = np.asarray(gaussians.colors, np.float64)
  if not len(chol):
    return 1.0
  return rounded_pos_ref(0.5 * float(np.mean(position_sensitivity(chol, colors))))


def check_pos_levels(pos_levels) -> int:
  """``pos_levels`` as an int, or ValueError when the file cannot store it."""
  if isinstance(pos_levels, bool) or not isinstance(pos_levels, (int, np.integer)) or \
      not 0 <= pos_levels <= POS_LEVELS_MAX:
    raise ValueError(f"pos_levels={pos_levels!r} must be an integer in [0, {POS_LEVELS_MAX}]")
  return int(pos_levels)


def position_sensitivity(chol, colors, xp=np):
  """``[N]`` ``|c|² tr Σ / (2 sqrt det Σ)``: the SSE a position error costs, per
  unit of its mean square per axis, up to a constant factor.

  Shifting a Gaussian by ``δ`` changes its footprint by ``∫ (w(x - δ) -
  w(x))² ≈ (π/2) sqrt(det Σ) δᵀ Σ⁻¹ δ`` (``_codec._shift_footprint``), times
  ``|c|²``; averaged over directions, ``sqrt(det Σ) tr Σ⁻¹ = tr Σ / sqrt(det
  Σ)``. Round Gaussians: ``|c|²`` whatever their size; thin ones more.
  ``Σ`` is the rendered covariance (with the prefilter).
  """
  from gaussjax.core._gaussians import rendered_covariance
  sxx, _, syy, det = rendered_covariance(chol)
  return xp.sum(colors * colors, -1) * (sxx + syy) / (2.0 * xp.sqrt(det))


def _position_multiple(chol, colors, steps: QuantSteps, xp):
  """``[N]`` each Gaussian's position step in units of ``steps.pos``: ``2^(K - r)``,
  ``r = clip(K + floor(log4(s / pos_ref) + 1/2), 0, K)`` (``s`` its
  ``position_sensitivity``); all ones when ``pos_levels`` is 0.

  ``chol`` and ``colors`` are the decoder's reconstruction (``_reconstruct``
  of the rounded latents), so that encoder and decoder agree.
  """
  k = steps.pos_levels
  if not k:
    return xp.ones(chol.shape[:1], chol.dtype)
  s = xp.maximum(position_sensitivity(chol, colors, xp), 1e-30)
  r = xp.clip(k + xp.floor(0.5 * xp.log2(s / steps.pos_ref) + 0.5), 0, k)
  return 2.0 ** (k - r)


def _latent_multiple(logs, shear, col, height, width, steps: QuantSteps, xp):
  """``_position_multiple`` of rounded latents (``logs [N, 2]``, ``shear [N]``, ``col [N, C]``)."""
  if not steps.pos_levels:
    return xp.ones(shear.shape, shear.dtype)
  _, chol, colors = _reconstruct(logs, logs, shear, col, height, width, steps, xp)
  return _position_multiple(chol, colors, steps, xp)


def position_multiple(gaussians, height: int, width: int, steps: QuantSteps) -> np.ndarray:
  """``[N]`` (float64) each Gaussian's position step in units of ``steps.pos``, as
  ``quantize`` sets it from the Gaussians' rounded factors and colours."""
  g = tuple(np.asarray(x, np.float64) for x in gaussians)
  _, logs, shear, col = _latents(g, height, width, steps, np)
  return _latent_multiple(np.rint(logs), np.rint(shear), np.rint(col), height, width, steps, np)


def symbol_multiple(symbols: "Symbols", height: int, width: int, steps: QuantSteps) -> np.ndarray:
  """``[N]`` the position step multiples of ``symbols``, as the decoder computes them
  (in float64, exactly as ``quantize`` did)."""
  chol = np.asarray(symbols.chol, np.float64)
  return _latent_multiple(chol[:, 0::2], chol[:, 1], np.asarray(symbols.color, np.float64),
                          height, width, steps, np)


def symbol_shift(symbols: "Symbols", height: int, width: int, steps: QuantSteps) -> np.ndarray:
  """``[N]`` int64 ``K - r``, log2 of ``symbol_multiple``: the low bits of each position
  symbol that are zero; the file stores ``r = K - shift`` refinement bits per axis."""
  return np.rint(np.log2(symbol_multiple(symbols, height, width, steps))).astype(np.int64)


def position_codes(pos: np.ndarray, height: int, width: int,
                   steps: QuantSteps) -> tuple[np.ndarray, int]:
  """``(codes, bits)``: the Morton codes of positions ``pos [N, 2]`` (fine grid
  symbols) on the coarse grid the file's deltas run on (``pos >> pos_levels``),
  and its bits per axis."""
  k = steps.pos_levels
  bits = max(grid_bits(height, width, steps.pos) - k, 0)
  pos = np.asarray(pos, np.int64) >> k
  return morton_encode(pos[:, 0], pos[:, 1], bits), bits


def check_color_size(color_size) -> float:
  """``color_size`` as a float, or ValueError when the file cannot store it."""
  k = color_size * COLOR_SIZE_DENOM if isinstance(color_size, (int, float)) else math.nan
  if isinstance(color_size, bool) or not (0 <= k <= 15 and k == round(k)):
    raise ValueError(f"color_size={color_size!r} must be a multiple of 1/{COLOR_SIZE_DENOM} "
                     f"in [0, {COLOR_SIZE_MAX}]")
  return float(color_size)


def _color_factor(logs_q, shear_q, steps: QuantSteps, xp):
  """``[N]`` factor of each Gaussian's colour steps, from its rounded Cholesky latents.

  ``(d / COLOR_SIZE_REF)^-β`` clipped, ``d = sqrt(det(L Lᵀ + COV_FLOOR · I))``
  of the factor the decoder reconstructs; exactly 1 when β is 0.
  """
  l11 = xp.exp(logs_q[:, 0] * steps.scale)
  l22 = xp.exp(logs_q[:, 1] * steps.scale)
  l21 = xp.sinh(shear_q * steps.shear) * l22
  d = xp.sqrt(rendered_det(xp.stack([l11, l21, l22], -1), xp))
  return xp.clip((d / COLOR_SIZE_REF) ** (-steps.color_size), 1.0 / COLOR_SIZE_CLIP,
                 COLOR_SIZE_CLIP)


def color_steps(chol, height: int, width: int, steps: QuantSteps, xp=np):
  """``[N, C]`` colour step of each Gaussian (``steps.color`` times its size factor).

  ``chol``: ``[N, 3]`` Cholesky factors (rounded to the grid here, as the
  encoder does).
  """
  logs, shear = _chol_latents(chol, height, width, steps, xp)
  factor = _color_factor(xp.round(logs), xp.round(shear), steps, xp)
  return factor[:, None] * xp.asarray(steps.color, dtype=factor.dtype)[None]


def color_symbol_range(steps: QuantSteps) -> tuple[np.ndarray, np.ndarray]:
  """``(-kmax, kmax)``: the decoder's clip of the colour symbols, ``ceil(2 COLOR_MAX / finest step)``."""
  finest = np.asarray(steps.color) / (COLOR_SIZE_CLIP if _sized(steps) else 1.0)
  kmax = np.ceil(2 * COLOR_MAX / finest).astype(np.int64)
  return -kmax, kmax


def shape_symbol_range(height: int, width: int,
                       steps: QuantSteps) -> tuple[np.ndarray, np.ndarray]:
  """``(lo, hi)``, each ``[5]``: the least and greatest symbol ``quantize`` produces of
  ``ix, iy`` (positions) and ``log l11, shear, log l22`` (Cholesky, file order).

  The encoder's integer descents (``_codec._footprint_descent``) keep their
  symbols inside it, so that ``quantize`` gives back the symbols they chose.
  """
  m = margin(height, width)
  top = (1 << grid_bits(height, width, steps.pos)) - 1
  lmin, lmax = _log_scale_range(height, width)
  smax = np.rint(SHEAR_MAX / steps.shear)
  lo = np.array([0, 0, np.rint(lmin / steps.scale), -smax, np.rint(lmin / steps.scale)])
  hi = np.array([min(np.rint((width + 2 * m) / steps.pos), top),
                 min(np.rint((height + 2 * m) / steps.pos), top),
                 np.rint(lmax / steps.scale), smax, np.rint(lmax / steps.scale)])
  return lo, hi


def _log_scale_range(height: int, width: int) -> tuple[float, float]:
  """``(log SCALE_MIN, log 2 max(H, W))``: the range of ``log l11`` and ``log l22`` the quantiser covers."""
  return math.log(SCALE_MIN), math.log(2.0 * max(height, width))


def clip_symbols(symbols: Symbols, height: int, width: int, steps: QuantSteps) -> Symbols:
  """Symbols clipped to the ranges the quantisers can produce (FORMAT.md).

  The decoders (image and video) apply it to whatever a file holds, so that a
  corrupt file still yields finite, bounded Gaussians; symbols from
  ``quantize`` are unchanged by it.
  """
  pos = np.clip(symbols.pos, 0, (1 << grid_bits(height, width, steps.pos)) - 1)
  chol = np.array(symbols.chol, np.int64, copy=True)
  lmin, lmax = (v / steps.scale for v in _log_scale_range(height, width))
  chol[:, 0::2] = np.clip(chol[:, 0::2], math.floor(lmin), math.ceil(lmax))
  smax = math.ceil(SHEAR_MAX / steps.shear)
  chol[:, 1] = np.clip(chol[:, 1], -smax, smax)
  return Symbols(pos, chol, np.clip(symbols.color, *color_symbol_range(steps)))


def _chol_latents(chol, height, width, steps: QuantSteps, xp):
  """``(log l11, log l22) / scale step`` and ``asinh(l21 / l22) / shear step``, clipped."""
  chol = canonical_chol(chol, xp)
  lmin, lmax = _log_scale_range(height, width)
  logs = xp.clip(xp.log(xp.maximum(chol[:, 0::2], SCALE_MIN)), lmin, lmax)
  shear = xp.clip(xp.arcsinh(chol[:, 1] / xp.maximum(chol[:, 2], SCALE_MIN)), -SHEAR_MAX, SHEAR_MAX)
  return logs / steps.scale, shear / steps.shear


def _latents(gaussians, height, width, steps: QuantSteps, xp):
  """Continuous latents (before rounding), clipped to the quantiser ranges.

  The colour latents are in units of each Gaussian's own colour steps
  (``color_steps``: from its rounded Cholesky latents; constant in the
  gradient).
  """
  means, chol, colors = gaussians
  m = margin(height, width)
  lim = xp.asarray([width + m, height + m], dtype=means.dtype)
  pos = (xp.clip(means, -m, lim) + m) / steps.pos
  logs, shear = _chol_latents(chol, height, width, steps, xp)
  fwd, _ = _color_matrices(colors.shape[-1])
  col = xp.clip(colors @ xp.asarray(fwd.T, dtype=colors.dtype), -COLOR_MAX, COLOR_MAX)
  col = col / xp.asarray(steps.color, dtype=colors.dtype)
  if _sized(steps):
    factor = _color_factor(xp.round(logs), xp.round(shear), steps, xp)
    if xp is jnp:
      factor = jax.lax.stop_gradient(factor)
    col = col / factor[:, None]
  return pos, logs, shear, col


def _sized(steps: QuantSteps) -> bool:
  """Whether the colour steps depend on the size (False also skips the factor's cost)."""
  return not (isinstance(steps.color_size, (int, float)) and steps.color_size == 0)


def _reconstruct(pos, logs, shear, col, height, width, steps: QuantSteps, xp):
  """Inverse of ``_latents`` on rounded latents (the colour step factor assumes them rounded)."""
  m = margin(height, width)
  means = pos * steps.pos - m
  l11 = xp.exp(logs[:, 0] * steps.scale)
  l22 = xp.exp(logs[:, 1] * steps.scale)
  l21 = xp.sinh(shear * steps.shear) * l22
  chol = xp.stack([l11, l21, l22], -1)
  _, inv = _color_matrices(col.shape[-1])
  col = col * xp.asarray(steps.color, dtype=col.dtype)
  if _sized(steps):
    factor = _color_factor(logs, shear, steps, xp)
    if xp is jnp:
      factor = jax.lax.stop_gradient(factor)
    col = col * factor[:, None]
  colors = col @ xp.asarray(inv.T, dtype=col.dtype)
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
  logs, shear, col = np.rint(logs), np.rint(shear), np.rint(col)
  bits = grid_bits(height, width, steps.pos)
  top = (1 << bits) - 1
  if steps.pos_levels:
    mult = _latent_multiple(logs, shear, col, height, width, steps, np)[:, None]
    # A multiple of the Gaussian's own step, at most the grid's last such point.
    pos = np.minimum(np.rint(pos / mult), np.floor(top / mult)) * mult
  pos = np.clip(np.rint(pos), 0, top).astype(np.int64)
  coarse, _ = position_codes(pos, height, width, steps)
  # Coarse Morton order; Gaussians in one coarse cell in fine Morton order.
  order = np.lexsort((morton_encode(pos[:, 0], pos[:, 1], bits), coarse))
  chol = np.stack([logs[:, 0], shear, logs[:, 1]], -1).astype(np.int64)
  color = col.astype(np.int64)
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
  logs, shear, col = _ste_round(logs), _ste_round(shear), _ste_round(col)
  if steps.pos_levels:
    mult = jax.lax.stop_gradient(_latent_multiple(logs, shear, col, height, width, steps,
                                                  jnp))[:, None]
    pos = _ste_round(pos / mult) * mult
  else:
    pos = _ste_round(pos)
  means, chol, colors = _reconstruct(pos, logs, shear, col, height, width, steps, jnp)
  return Gaussians(means, chol, colors)
