"""Image quality metrics: PSNR, SSIM, MS-SSIM and bits per pixel.

Convention (as in dm-pix): float images in [0, 1], channels last, ``[..., H, W,
C]``; leading axes are a batch and each metric returns one value per image
(shape ``[...]``). The metrics do not clip: clip renders to [0, 1] first.
"""

from __future__ import annotations

import functools
import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Wang, Simoncelli & Bovik (2003), "Multi-scale structural similarity for image
# quality assessment", Table/Eq. 7: the weights of scales 1 (finest) to 5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# SSIM's Gaussian window (Wang et al. 2004): 11 taps, σ = 1.5; K1, K2 as there.
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a, b, name: str, *, min_size: int = 1) -> tuple[Array, Array]:
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim < 3:
    raise ValueError(f"{name}: images must be [..., H, W, C], got shape {a.shape}")
  if not (jnp.issubdtype(a.dtype, jnp.floating) and jnp.issubdtype(b.dtype, jnp.floating)):
    raise TypeError(f"{name}: images must be floating point in [0, 1], got {a.dtype} and {b.dtype}")
  h, w = a.shape[-3], a.shape[-2]
  if h < min_size or w < min_size:
    raise ValueError(f"{name}: images of {h}x{w} pixels are smaller than the {min_size}x{min_size} minimum")
  return a, b


def psnr(a: Array, b: Array) -> Array:
  """Peak signal-to-noise ratio in dB for a peak value of 1.

  Args:
    a: ``[..., H, W, C]`` image in [0, 1].
    b: ``[..., H, W, C]`` image of the same shape.

  Returns:
    ``[...]`` PSNR; ``inf`` for identical images.

  Examples:
    >>> import jax.numpy as jnp, gaussjax
    >>> float(gaussjax.psnr(jnp.zeros((4, 4, 1)), jnp.full((4, 4, 1), 0.1)))
    20.0
  """
  a, b = _check_pair(a, b, "psnr")
  mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
  return -10.0 * jnp.log10(mse)


@functools.cache
def _filter_taps(size: int, sigma: float) -> tuple[float, ...]:
  # The window of dm_pix.ssim, written out so that the separable filter below
  # computes exactly dm-pix's default (tested in tests/test_metrics.py).
  hw = size // 2
  shift = (2 * hw - size + 1) / 2
  taps = np.exp(-0.5 * ((np.arange(size) - hw + shift) / sigma) ** 2)
  return tuple(float(t) for t in taps / taps.sum())


def _correlate_hw(zt: Array, taps: tuple[float, ...]) -> Array:
  """'Valid' correlation of ``[..., H, W]`` with ``taps`` along H, then W."""
  k = len(taps)
  h, w = zt.shape[-2], zt.shape[-1]
  out = sum(t * zt[..., i:i + h - k + 1, :] for i, t in enumerate(taps))
  return sum(t * out[..., :, i:i + w - k + 1] for i, t in enumerate(taps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _blur_hw(zt: Array, taps: tuple[float, ...]) -> Array:
  return _correlate_hw(zt, taps)


def _blur_hw_fwd(zt, taps):
  return _correlate_hw(zt, taps), None


def _blur_hw_bwd(taps, _, g):
  # The filter is linear: its transpose is the 'full' correlation with the
  # reversed taps. Autodiff of the slices would build pad-and-add chains that
  # are several times slower on CPU.
  k = len(taps)
  pad = [(0, 0)] * (g.ndim - 2) + [(k - 1, k - 1), (k - 1, k - 1)]
  return (_correlate_hw(jnp.pad(g, pad), taps[::-1]),)


_blur_hw.defvjp(_blur_hw_fwd, _blur_hw_bwd)


def _blur_valid(z: Array, taps: tuple[float, ...]) -> Array:
  """Separable 'valid' Gaussian filtering of ``[..., H, W, C]`` along H and W.

  A sum of shifted slices on a channels-first view, with a hand-written
  transpose as its VJP: on CPU the forward is several times faster than
  dm-pix's default (``vmap(jnp.convolve)``) and the result is the same.
  """
  zt = jnp.moveaxis(z, -1, -3)
  return jnp.moveaxis(_blur_hw(zt, taps), -3, -1)


def _ssim_maps(a: Array, b: Array, *, filter_size: int, filter_sigma: float) -> tuple[Array, Array]:
  """SSIM and contrast-structure maps ``[..., H', W', C]`` (max value 1)."""
  taps = _filter_taps(filter_size, filter_sigma)
  blur = functools.partial(_blur_valid, taps=taps)
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a * mu_a
  var_b = blur(b * b) - mu_b * mu_b
  cov = blur(a * b) - mu_a * mu_b
  # As dm-pix: variances are non-negative and |cov| <= sqrt(var_a var_b).
  eps = jnp.finfo(jnp.float32).eps ** 2
  var_a = jnp.maximum(eps, var_a)
  var_b = jnp.maximum(eps, var_b)
  cov = jnp.sign(cov) * jnp.minimum(jnp.sqrt(var_a * var_b), jnp.abs(cov))
  c1 = SSIM_K1**2
  c2 = SSIM_K2**2
  cs = (2.0 * cov + c2) / (var_a + var_b + c2)
  luminance = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
  return luminance * cs, cs


def ssim(a: Array, b: Array, *, filter_size: int = SSIM_FILTER_SIZE, filter_sigma: float = SSIM_FILTER_SIGMA) -> Array:
  """Structural similarity (Wang et al. 2004) through ``dm_pix.ssim``.

  The Gaussian window is applied as a separable sum of shifted slices
  (``filter_fn``), which equals dm-pix's default filter and is several times
  faster on CPU, so ``fit`` can afford an SSIM loss term.

  Args:
    a: ``[..., H, W, C]`` image in [0, 1], H and W at least ``filter_size``.
    b: ``[..., H, W, C]`` image of the same shape.
    filter_size: window taps.
    filter_sigma: window standard deviation in pixels.

  Returns:
    ``[...]`` mean SSIM, 1 for identical images.
  """
  a, b = _check_pair(a, b, "ssim", min_size=filter_size)
  taps = _filter_taps(filter_size, filter_sigma)
  return dm_pix.ssim(
      a, b, max_val=1.0, filter_size=filter_size, filter_sigma=filter_sigma,
      k1=SSIM_K1, k2=SSIM_K2, filter_fn=functools.partial(_blur_valid, taps=taps))


def _downsample2(x: Array) -> Array:
  """2x2 average pooling of ``[..., H, W, C]`` (odd trailing row/column dropped)."""
  h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
  x = x[..., :h, :w, :]
  return 0.25 * (x[..., 0::2, 0::2, :] + x[..., 1::2, 0::2, :] + x[..., 0::2, 1::2, :] + x[..., 1::2, 1::2, :])


def ms_ssim(a: Array, b: Array, *, filter_size: int = SSIM_FILTER_SIZE, filter_sigma: float = SSIM_FILTER_SIGMA) -> Array:
  """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), five scales.

  ``MS-SSIM = l_5^w5 · Π_{j=1..5} cs_j^wj`` with the weights
  ``MS_SSIM_WEIGHTS``, the images halved (2x2 mean) between scales.
  Negative contrast-structure values are clamped at 0 (as TensorFlow's
  ``ssim_multiscale``), so the power is defined.

  Args:
    a: ``[..., H, W, C]`` image in [0, 1]; H and W must be at least
      ``filter_size · 16`` (176 px by default) so the coarsest scale (the
      image halved four times) still holds one window.
    b: ``[..., H, W, C]`` image of the same shape.
    filter_size: window taps.
    filter_sigma: window standard deviation in pixels.

  Returns:
    ``[...]`` MS-SSIM in [0, 1].
  """
  levels = len(MS_SSIM_WEIGHTS)
  min_size = filter_size * 2 ** (levels - 1)
  a, b = _check_pair(a, b, "ms_ssim", min_size=min_size)
  dtype = jnp.result_type(a, b)
  weights = jnp.asarray(MS_SSIM_WEIGHTS, dtype)
  values = []
  for level in range(levels):
    ssim_map, cs_map = _ssim_maps(a, b, filter_size=filter_size, filter_sigma=filter_sigma)
    last = level == levels - 1
    values.append(jnp.mean(ssim_map if last else cs_map, axis=(-3, -2, -1)))
    if not last:
      a, b = _downsample2(a), _downsample2(b)
  values = jnp.maximum(jnp.stack(values, -1), 0.0)
  return jnp.prod(values**weights, axis=-1)


def _check_size(height, width) -> None:
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")


def bpp(num_bytes: float, height: int, width: int) -> float:
  """Bits per pixel of a ``num_bytes`` file describing a ``height x width`` image.

  ``num_bytes`` is a file's size (an int) or a byte budget (any number >= 0).
  The package computes every rate here; ``bytes_for_bpp`` is the inverse.
  """
  _check_size(height, width)
  if isinstance(num_bytes, bool) or not isinstance(num_bytes, (int, float, np.integer,
                                                               np.floating)) \
      or not num_bytes >= 0 or not math.isfinite(num_bytes):
    raise ValueError(f"num_bytes={num_bytes!r} must be a non-negative number")
  return 8.0 * num_bytes / (int(height) * int(width))


def bytes_for_bpp(rate: float, height: int, width: int) -> float:
  """The bytes of a ``height x width`` image's file at ``rate`` bits per pixel (``bpp``'s inverse)."""
  _check_size(height, width)
  return rate * height * width / 8.0
