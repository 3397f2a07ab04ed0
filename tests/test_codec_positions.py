"""Per-Gaussian position steps (``QuantSteps.pos_levels``): format, rule, encoder."""

import dataclasses
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import kodak_path
from PIL import Image

import gaussjax
from gaussjax.codec import _codec, _rate
from gaussjax.codec import _quantize as qz
from gaussjax.codec._formats import info


def _gaussians(n=400, h=40, w=56, seed=0):
  """Random Gaussians with colour magnitudes spread over two decades, as fits have."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  g = gaussjax.init_random(k1, n, h, w, 3)
  chol = g.chol * jax.random.uniform(k2, (n, 3), minval=-1.5, maxval=1.5)
  colors = g.colors * jnp.exp(jax.random.normal(k3, (n, 1)) * 1.5)
  return gaussjax.Gaussians(*(np.asarray(x, np.float32) for x in (g.means, chol, colors)))


def _steps(g, levels, ref_factor=1.0):
  s = np.mean(qz.position_sensitivity(np.asarray(g.chol, np.float64),
                                      np.asarray(g.colors, np.float64)))
  return dataclasses.replace(qz.default_steps(3), pos_levels=levels,
                             pos_ref=qz.rounded_pos_ref(ref_factor * s))


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_round_trip_and_per_gaussian_steps(levels):
  """The decoder gives back exactly ``dequantize(quantize)``; each mean is within half its
  own step of the original; the steps follow the sensitivity rule."""
  h, w = 40, 56
  g = _gaussians(h=h, w=w)
  steps = _steps(g, levels)
  data = gaussjax.encode_gaussians(g, h, w, steps=steps)
  decoded, _ = gaussjax.decode_gaussians(data)
  sym, order = qz.quantize(g, h, w, steps)
  for a, e in zip(decoded, qz.dequantize(sym, h, w, steps)):
    np.testing.assert_array_equal(a, e)
  mult = qz.position_multiple(g, h, w, steps)[order]
  np.testing.assert_array_equal(qz.symbol_multiple(sym, h, w, steps), mult)
  err = np.abs(decoded.means - g.means[order]) / (steps.pos * mult[:, None])
  assert err.max() <= 0.5 + 1e-4
  # Every level is used, and the most sensitive Gaussians get the header's step.
  assert set(np.log2(mult).astype(int)) == set(range(levels + 1))
  s = qz.position_sensitivity(decoded.chol.astype(np.float64), decoded.colors.astype(np.float64))
  assert np.all(mult[s >= steps.pos_ref * 2] == 1)
  assert np.all(mult[s < steps.pos_ref / 4 ** (levels + 0.5)] == 2 ** levels)
  # The step never decreases as the sensitivity grows.
  by_s = mult[np.argsort(s)]
  assert np.all(np.diff(by_s) <= 0)
  # The header: levels in bits 2-3 of the colour mode byte, then the reference.
  header = info(data)
  assert header["steps"]["pos_levels"] == levels
  assert header["steps"]["pos_ref"] == steps.pos_ref


def test_levels_spend_position_error_where_it_costs_least():
  """Coarse grids for the insensitive Gaussians save bytes at less PSNR per byte than a
  coarser grid for all: on this fitted crop about 0.012 dB per byte saved (two levels,
  ``pos_ref`` at twice the mean sensitivity) against 0.028 for doubling the step."""
  img = np.asarray(Image.open(kodak_path(23)).convert("RGB"), np.float32)[190:254, 290:386] / 255
  h, w = img.shape[:2]
  g, _ = gaussjax.fit(img, gaussjax.init_slic(img, 200), gaussjax.FitConfig(steps=150,
                                                                            backend="xla"))
  base = qz.default_steps(3)

  def bytes_psnr(steps):
    data = gaussjax.encode_gaussians(g, h, w, steps=steps)
    out = np.clip(np.asarray(gaussjax.decode(data)), 0, 1)
    return len(data), -10 * np.log10(np.mean((out - img) ** 2))

  size0, psnr0 = bytes_psnr(base)
  size_l, psnr_l = bytes_psnr(dataclasses.replace(
      base, pos_levels=2, pos_ref=qz.rounded_pos_ref(4 * qz.reference_sensitivity(g))))
  size_u, psnr_u = bytes_psnr(base.scaled(pos=2.0))
  assert size_l < 0.98 * size0, (size0, size_l)
  per_byte_l = (psnr0 - psnr_l) / (size0 - size_l)
  per_byte_u = (psnr0 - psnr_u) / (size0 - size_u)
  assert per_byte_l < 0.5 * per_byte_u, (per_byte_l, per_byte_u)


def test_position_estimate_counts_the_refinement_bits():
  """``_rate._position_bits`` against the real file: the difference of two files that
  differ only in their position streams."""
  h, w = 40, 56
  g = _gaussians(h=h, w=w)
  for levels in (0, 3):
    steps = _steps(g, levels)
    # Same factors and colours, positions from the quantiser: only position bits differ.
    real = 8 * len(gaussjax.encode_gaussians(g, h, w, steps=steps))
    est = _rate._position_bits(g, h, w, steps)
    other = dataclasses.replace(steps, pos=steps.pos * 2)
    real2 = 8 * len(gaussjax.encode_gaussians(g, h, w, steps=other))
    est2 = _rate._position_bits(g, h, w, other)
    assert abs((real - real2) - (est - est2)) <= 0.05 * abs(est - est2) + 64, (levels,
                                                                               real - real2,
                                                                               est - est2)


def test_sensitivity_is_the_shift_cost():
  """``position_sensitivity`` is ``∫ (w(x - δ) - w(x))²`` of a small shift, averaged over
  directions, divided by ``π/2 · |δ|²/2`` per axis (times ``|c|²``)."""
  chol = np.array([[2.0, 0.7, 1.2], [5.0, 0.0, 5.0], [0.3, 4.0, 0.4]])
  colors = np.array([[0.5, 0.1, -0.2], [0.05, 0.05, 0.05], [1.0, 0.0, 0.0]])
  eps = 1e-3
  angles = np.linspace(0, np.pi, 64, endpoint=False)
  cost = np.zeros(3)
  for a in angles:
    delta = np.tile([eps * np.cos(a), eps * np.sin(a)], (3, 1))
    cost += _codec._shift_footprint(chol, delta) / len(angles)
  # Mean over directions of δᵀΣ⁻¹δ is |δ|² tr Σ⁻¹ / 2.
  expected = np.sum(colors ** 2, -1) * cost / (np.pi / 2 * eps ** 2)
  np.testing.assert_allclose(qz.position_sensitivity(chol, colors), expected, rtol=1e-3)


def test_fake_quantize_is_the_decoder_with_levels():
  h, w = 40, 56
  g = _gaussians(h=h, w=w)
  steps = _steps(g, 3)
  sym, order = qz.quantize(g, h, w, steps)
  want = qz.dequantize(sym, h, w, steps)
  got = qz.fake_quantize(g, h, w, steps)
  np.testing.assert_allclose(np.asarray(got.means)[order], want.means, atol=1e-3)
  grad = jax.grad(lambda m: qz.fake_quantize(gaussjax.Gaussians(m, g.chol, g.colors), h, w,
                                             steps).means.sum())(jnp.asarray(g.means))
  np.testing.assert_allclose(np.asarray(grad), 1.0, atol=1e-5)


def test_rd_round_means_keeps_each_gaussians_grid():
  """The position descent moves each mean by its own step: the result is on the file's
  grid (quantising it again changes nothing) and beats nearest rounding."""
  img = np.asarray(Image.open(kodak_path(23)).convert("RGB"), np.float32)[190:254, 290:386] / 255
  h, w = img.shape[:2]
  g, _ = gaussjax.fit(img, gaussjax.init_slic(img, 200), gaussjax.FitConfig(steps=150,
                                                                            backend="xla"))
  steps = dataclasses.replace(qz.default_steps(3), pos_levels=3,
                              pos_ref=qz.reference_sensitivity(g))
  near = _codec._snap(g, h, w, steps, ("means",))
  rounded = _codec._rd_round_means(near, jnp.asarray(img), steps, backend="xla")
  np.testing.assert_array_equal(np.asarray(_codec._snap(rounded, h, w, steps, ("means",)).means),
                                np.asarray(rounded.means))
  assert np.any(np.asarray(rounded.means) != np.asarray(near.means))

  def mse(x):
    out = gaussjax.render(x, h, w, backend="xla")
    return float(np.mean((np.asarray(out) - img) ** 2))
  assert mse(rounded) < mse(near)


def _with_header(data: bytes, offset: int, new: bytes) -> bytes:
  body = data[:offset] + new + data[offset + len(new):-4]
  return body + struct.pack("<I", zlib.crc32(body))


def test_decoder_checks_the_reference_and_old_decoders_refuse():
  h, w = 40, 56
  g = _gaussians(n=40, h=h, w=w)
  data = gaussjax.encode_gaussians(g, h, w, steps=_steps(g, 2))
  mode = 11  # after N = 40 (a one-byte varint)
  assert data[mode] & 3 == 1 and (data[mode] >> 2) & 3 == 2
  ref_at = mode + 1 + 2 * 6  # after the six float16 steps
  for bad in (0.0, -1.0, float("inf"), float("nan")):
    with pytest.raises(gaussjax.DecodeError, match="position reference"):
      gaussjax.decode_gaussians(_with_header(data, ref_at, struct.pack("<e", bad)))
  # A file without levels is unchanged in layout (no reference field).
  plain = gaussjax.encode_gaussians(g, h, w, steps=qz.default_steps(3))
  assert plain[mode] == 1 and len(plain) < len(data) + 64


def test_config_and_video_checks():
  for bad in (-1, 4, 1.5, True, "3"):
    with pytest.raises(ValueError, match="pos_levels"):
      gaussjax.CodecConfig(pos_levels=bad)
  assert gaussjax.CodecConfig().pos_levels == 3
  from gaussjax.codec._video import VideoConfig
  assert VideoConfig().codec_config(0.5).pos_levels == 0


@pytest.mark.parametrize("h, w, pos", [(1, 1, 16.0), (2, 3, 4.0), (300, 2, 0.5)])
def test_round_trip_when_levels_exceed_the_grid(h, w, pos):
  """Grids of one or two bits per axis, Gaussians far outside: the coarse grid may have
  no bits at all, and the decoder still gives back exactly ``dequantize(quantize)``."""
  g = _gaussians(n=50, h=h, w=w)
  g = g._replace(means=g.means * 3 - w)
  for levels in (1, 3):
    steps = dataclasses.replace(_steps(g, levels), pos=pos)
    decoded, _ = gaussjax.decode_gaussians(gaussjax.encode_gaussians(g, h, w, steps=steps))
    sym, _ = qz.quantize(g, h, w, steps)
    for a, e in zip(decoded, qz.dequantize(sym, h, w, steps)):
      np.testing.assert_array_equal(a, e)
