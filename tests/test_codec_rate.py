"""Rate in the encoder's objective (gaussjax.codec._rate) and RD pruning."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import kodak_path
from PIL import Image

import gaussjax
from gaussjax.codec import _codec, _rate
from gaussjax.codec import _quantize as qz

# The estimate of a whole file (``_rate.file_bits``) against the real file's
# bits: it leaves out the entropy models' tables and models each attribute
# stream by a Laplace where the coder picks the best of three models, so it
# runs a little low. Measured on fitted Kodak crops: 4-14% low at 150
# Gaussians, 3-4% at 600 (the tables weigh less).
FILE_TOLERANCE = 0.15


def _crop(h=64, w=96):
  img = np.asarray(Image.open(kodak_path(23)).convert("RGB"), np.float32)
  return img[190:190 + h, 290:290 + w] / 255


@pytest.fixture(scope="module")
def fitted():
  img = _crop()
  g, _ = gaussjax.fit(img, gaussjax.init_slic(img, 200),
                      gaussjax.FitConfig(steps=150, backend="xla"))
  return img, g


@pytest.mark.parametrize("factor, color_size", [(0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (1.0, 0.375)])
def test_file_estimate_tracks_real_bytes(fitted, factor, color_size):
  img, g = fitted
  h, w = img.shape[:2]
  steps = dataclasses.replace(qz.default_steps(3).scaled(factor), color_size=color_size)
  real = 8 * len(gaussjax.encode_gaussians(g, h, w, steps=steps))
  est = _rate.file_bits(g, h, w, steps)
  assert abs(est / real - 1) <= FILE_TOLERANCE, (est, real)


def test_estimate_follows_the_steps_like_the_file(fitted):
  """Coarser steps: the estimate falls by about as much as the real file."""
  img, g = fitted
  h, w = img.shape[:2]
  fine, coarse = qz.default_steps(3).scaled(0.5), qz.default_steps(3).scaled(2.0)
  real = [len(gaussjax.encode_gaussians(g, h, w, steps=s)) for s in (fine, coarse)]
  est = [_rate.file_bits(g, h, w, s) for s in (fine, coarse)]
  assert abs((est[1] / est[0]) / (real[1] / real[0]) - 1) < 0.05


@pytest.mark.parametrize("color_size", [0.0, 0.375])
def test_training_bits_equal_the_numpy_estimate(fitted, color_size):
  """The differentiable per-Gaussian bits are the estimate's attribute bits."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = dataclasses.replace(qz.default_steps(3), color_size=color_size)
  term = _rate.rate_term(1.0, steps)
  jax_bits = np.asarray(_rate.attribute_bits(g, h, w, term), np.float64)
  np_bits = _rate.gaussian_bits(g, h, w, steps)
  position = np_bits - jax_bits
  assert np.allclose(position, position.mean(), atol=1e-2)  # positions: the mean cost
  assert 1.0 < position.mean() < 30.0


def test_discretised_laplace_is_normalised():
  q = jnp.arange(-400, 401, dtype=jnp.float32)
  for loc, scale in ((0.0, 0.05), (0.3, 1.0), (-2.7, 17.6)):
    log2p = np.asarray(_rate.laplace_log2_prob(q, loc, scale), np.float64)
    p = np.exp2(log2p[log2p > _rate._MIN_LOG2_P])  # the floor charges improbable symbols 20 bits
    assert abs(p.sum() - 1) < 1e-4, (loc, scale, p.sum())


def test_rd_lambda_is_the_slope():
  """MSE + λ·R is stationary where PSNR rises slope dB per doubling of R."""
  mse, bpp, slope = 1e-3, 0.5, 1.75
  lam = _rate.rd_lambda(mse, bpp, slope)
  # along the curve PSNR(R) = PSNR0 + slope·log2(R / bpp): d(MSE)/dR at bpp
  eps = 1e-4
  mse_of = lambda r: 10 ** (-(-10 * math.log10(mse) + slope * math.log2(r / bpp)) / 10)
  assert abs(-(mse_of(bpp + eps) - mse_of(bpp - eps)) / (2 * eps) / lam - 1) < 1e-4
  with pytest.raises(ValueError):
    _rate.rd_lambda(0.0, 0.5, 1.75)
  with pytest.raises(ValueError):
    _rate.rate_term(float("nan"), qz.default_steps(3))


def _train(g, img, rate, frozen=()):
  return _codec._train(g, jnp.asarray(img), iterations=12, learning_rate=0.01, qsteps=None,
                       backend="xla", frozen=frozen, rate=rate)


def _plain_stages(g, img, steps, iterations=12, descend=True):
  """The sequential fine-tuning's stages, distortion only, without the rounding stage.

  ``descend``: the means, then the factors, onto the grid by
  ``_rd_round_means`` and ``_rd_round_chol`` at λ = 0 where each is first
  frozen (the defaults ``rd_round_means=True``, ``rd_round_chol=True``).
  """
  h, w = img.shape[:2]
  for frozen, lr, n in _codec._sequential_stages(iterations):
    g = _codec._snap(g, h, w, steps, frozen)
    if descend and frozen == ("means",):
      g = _codec._rd_round_means(g, jnp.asarray(img), steps, backend="xla")
    if descend and frozen == ("means", "chol"):
      g = _codec._rd_round_chol(g, jnp.asarray(img), steps, 0.0, backend="xla")
    g = _codec._train(g, jnp.asarray(img), iterations=n, learning_rate=lr * 0.01,
                      qsteps=None, backend="xla", frozen=frozen)
  return g


def test_zero_weight_reproduces_the_distortion_only_fit(fitted):
  """rate_weight=0 runs exactly the distortion-only fine-tuning (no term at all)."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3)
  config = gaussjax.CodecConfig(rate_weight=0.0, qat_steps=12, backend="xla")
  assert _codec._finetune_rate(g, jnp.asarray(img), steps, config) is None
  tuned = _codec._finetune(g, jnp.asarray(img), steps, config)
  expected = _plain_stages(g, img, steps)
  expected = _codec._rd_round_colors(_codec._snap(expected, h, w, steps, ("means", "chol")),
                                     jnp.asarray(img), steps, 0.0, backend="xla")
  for a, b in zip(tuned, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rd_round_off_is_the_plain_fine_tuning(fitted):
  """rd_round, rd_round_means and rd_round_chol False: the fine-tuned Gaussians as they were,
  the means and factors snapped to their nearest steps, and the encoder rounds the colours."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3)
  config = gaussjax.CodecConfig(rate_weight=0.0, qat_steps=12, backend="xla", rd_round=False,
                                rd_round_means=False, rd_round_chol=False)
  tuned = _codec._finetune(g, jnp.asarray(img), steps, config)
  expected = _plain_stages(g, img, steps, descend=False)
  for a, b in zip(tuned, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _file_mse(g, img, steps):
  h, w = img.shape[:2]
  data = gaussjax.encode_gaussians(g, h, w, steps=steps)
  decoded, _ = gaussjax.decode_gaussians(data)
  out = np.asarray(_codec.render_safe(decoded, h, w, backend="xla"))
  return float(np.mean((np.clip(out, 0, 1) - img) ** 2)), len(data), decoded


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_rd_round_beats_nearest_rounding(fitted, factor):
  """Colour descent at λ = 0: the file's colours are exactly the chosen ones, and it
  removes at least half of the error that rounding each colour to the nearest step
  adds to the float render (on this under-fitted crop it removes all of it and more,
  112-132% at step factors 1, 2 and 4)."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3).scaled(factor)
  g = _codec._snap(g, h, w, steps, ("means", "chol"))
  rounded = _codec._rd_round_colors(g, jnp.asarray(img), steps, 0.0, backend="xla")
  mse_near, _, _ = _file_mse(g, img, steps)
  mse_rd, _, decoded = _file_mse(rounded, img, steps)
  sym, order = qz.quantize(rounded, h, w, steps)
  np.testing.assert_allclose(np.asarray(decoded.colors),
                             np.asarray(rounded.colors)[order], rtol=0, atol=1e-6)
  out = np.asarray(_codec.render_safe(g, h, w, backend="xla"))
  mse_float = float(np.mean((np.clip(out, 0, 1) - img) ** 2))
  assert mse_rd < mse_near - 0.5 * (mse_near - mse_float), (mse_float, mse_near, mse_rd)


def test_rd_round_weight_trades_error_for_bits(fitted):
  """A large λ moves colours towards their streams' centres: a smaller file."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3)
  g = _codec._snap(g, h, w, steps, ("means", "chol"))
  plain = _codec._rd_round_colors(g, jnp.asarray(img), steps, 0.0, backend="xla")
  heavy = _codec._rd_round_colors(g, jnp.asarray(img), steps, 0.05, backend="xla")
  (mse0, size0, _), (mse1, size1, _) = (_file_mse(x, img, steps) for x in (plain, heavy))
  assert size1 < 0.97 * size0 and mse1 > mse0, (size0, size1, mse0, mse1)


def test_footprint_change_is_the_integral():
  """The closed form of ∫(w' - w)² (``_codec._footprint_change``) against a fine grid sum."""
  with_det = lambda s: (*s, s[0] * s[2] - s[1] * s[1])
  cov = with_det((np.array([4.0, 0.3]), np.array([1.5, -0.1]), np.array([2.0, 0.2])))
  new = with_det((np.array([5.0, 0.35]), np.array([0.5, 0.0]), np.array([2.5, 0.25])))
  x = np.arange(-30.0, 30.0, 0.02)
  xx, yy = np.meshgrid(x, x)

  def profile(s, i):
    det = s[0][i] * s[2][i] - s[1][i] ** 2
    return np.exp(-0.5 * (s[2][i] * xx * xx - 2 * s[1][i] * xx * yy + s[0][i] * yy * yy) / det)
  closed = _codec._footprint_change(cov, new)
  for i in range(2):
    numeric = np.sum((profile(new, i) - profile(cov, i)) ** 2) * 0.02 ** 2
    assert abs(closed[i] / numeric - 1) < 1e-4, (i, closed[i], numeric)


def _render_mse(g, img):
  out = np.asarray(_codec.render_safe(g, *img.shape[:2], backend="xla"))
  return float(np.mean((out - img) ** 2))


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_rd_round_chol_beats_nearest_rounding(fitted, factor):
  """Shape descent at λ = 0: the factors land exactly on the file's grid, the colours are
  untouched, and it removes at least half of the error that rounding each latent to its
  nearest step adds to the render (on this crop all of it and more: 95-123% at step
  factors 1, 2 and 4)."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3).scaled(factor)
  near = _codec._snap(g, h, w, steps, ("means", "chol"))
  rounded = _codec._rd_round_chol(near, jnp.asarray(img), steps, 0.0, backend="xla")
  np.testing.assert_array_equal(np.asarray(rounded.colors), np.asarray(near.colors))
  np.testing.assert_allclose(np.asarray(_codec._snap(rounded, h, w, steps, ("chol",)).chol),
                             np.asarray(rounded.chol), rtol=1e-6, atol=0)
  mse_float = _render_mse(_codec._snap(g, h, w, steps, ("means",)), img)
  mse_near, mse_rd = _render_mse(near, img), _render_mse(rounded, img)
  assert mse_rd < mse_near - 0.5 * (mse_near - mse_float), (mse_float, mse_near, mse_rd)


@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_rd_round_means_beats_nearest_rounding(fitted, factor):
  """Position descent: the means land exactly on the file's grid, nothing else moves, and
  it removes at least a third of the error that rounding each mean to its nearest grid
  point adds to the render (43-60% at step factors 1, 2 and 4 on this crop)."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3).scaled(factor)
  near = _codec._snap(g, h, w, steps, ("means",))
  rounded = _codec._rd_round_means(near, jnp.asarray(img), steps, backend="xla")
  for field in ("chol", "colors"):
    np.testing.assert_array_equal(np.asarray(getattr(rounded, field)),
                                  np.asarray(getattr(near, field)))
  np.testing.assert_array_equal(np.asarray(_codec._snap(rounded, h, w, steps, ("means",)).means),
                                np.asarray(rounded.means))
  assert np.any(np.asarray(rounded.means) != np.asarray(near.means))
  mse_float, mse_near, mse_rd = (_render_mse(x, img) for x in (g, near, rounded))
  assert mse_rd < mse_near - (mse_near - mse_float) / 3, (mse_float, mse_near, mse_rd)


def test_shift_footprint_is_the_integral():
  """The closed form of ∫(w(x - δ) - w(x))² (``_codec._shift_footprint``) against a fine
  grid sum."""
  chol = np.array([[2.0, 0.7, 1.2]] * 3)
  deltas = np.array([[0.25, 0.0], [0.0, -0.5], [1.0, 1.0]])
  closed = _codec._shift_footprint(chol, deltas)
  l11, l21, l22 = chol[0]
  floor = gaussjax.constants.COV_FLOOR
  cov = np.array([[l11 * l11 + floor, l11 * l21], [l11 * l21, l21 * l21 + l22 * l22 + floor]])
  prec = np.linalg.inv(cov)
  x = np.arange(-30.0, 30.0, 0.02)
  xx, yy = np.meshgrid(x, x)
  profile = lambda dx, dy: np.exp(-0.5 * (prec[0, 0] * (xx - dx) ** 2 + prec[1, 1] * (yy - dy) ** 2
                                          + 2 * prec[0, 1] * (xx - dx) * (yy - dy)))
  for i, (dx, dy) in enumerate(deltas):
    numeric = np.sum((profile(dx, dy) - profile(0.0, 0.0)) ** 2) * 0.02 ** 2
    assert abs(closed[i] / numeric - 1) < 1e-4, (i, closed[i], numeric)


def test_rd_round_chol_weight_trades_error_for_bits(fitted):
  """A large λ moves the factors' latents towards their streams' centres: a smaller file."""
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3).scaled(2.0)
  near = _codec._snap(g, h, w, steps, ("means", "chol"))
  plain = _codec._rd_round_chol(near, jnp.asarray(img), steps, 0.0, backend="xla")
  heavy = _codec._rd_round_chol(near, jnp.asarray(img), steps, 0.05, backend="xla")
  sizes = [len(gaussjax.encode_gaussians(x, h, w, steps=steps)) for x in (plain, heavy)]
  assert sizes[1] < 0.9 * sizes[0], sizes
  assert _render_mse(heavy, img) > _render_mse(plain, img)


def test_zero_weight_term_changes_nothing_but_rounding(fitted):
  """A term of weight 0 in the loss: the same fit up to float32 reassociation."""
  img, g = fitted
  plain = _train(g, img, None)
  zero = _train(g, img, _rate.rate_term(0.0, qz.default_steps(3)))
  for a, b in zip(plain, zero):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_rate_term_lowers_the_real_file(fitted):
  img, g = fitted
  h, w = img.shape[:2]
  steps = qz.default_steps(3)
  g = _codec._snap(g, h, w, steps, ("means",))
  plain = _train(g, img, None, frozen=("means",))
  heavy = _train(g, img, _rate.rate_term(0.05, steps), frozen=("means",))
  sizes = [len(gaussjax.encode_gaussians(x, h, w, steps=steps)) for x in (plain, heavy)]
  assert sizes[1] < 0.97 * sizes[0], sizes
  assert _rate.file_bits(heavy, h, w, steps) < _rate.file_bits(plain, h, w, steps)


def test_removal_delta_is_the_error_change(fitted):
  img, g = fitted
  h, w = img.shape[:2]
  g = gaussjax.Gaussians(*(np.asarray(x, np.float32) for x in g))
  delta = _codec._removal_delta(g, jnp.asarray(img), "xla")

  def sse(x):
    out = np.asarray(gaussjax.render(x, h, w, backend="xla"), np.float64)
    return float(np.sum((out - img) ** 2))

  base = sse(g)
  keep = np.ones(g.num_gaussians, bool)
  for i in np.argsort(delta)[[0, 1, len(delta) // 2, -2, -1]]:
    keep[:] = True
    keep[i] = False
    actual = sse(g.select(np.nonzero(keep)[0]))  # the cut-off makes the energy approximate
    assert abs((actual - base) - delta[i]) <= 0.02 * abs(delta).max() + 1e-6, (i, actual - base,
                                                                                delta[i])


def test_config_checks_the_new_fields():
  with pytest.raises(ValueError, match="rate_weight"):
    gaussjax.CodecConfig(rate_weight=-1.0)
  with pytest.raises(ValueError, match="rate_weight"):
    gaussjax.CodecConfig(rate_weight=float("nan"))


@pytest.mark.parametrize("bad", [0, 17, 1.5, True, None])
def test_config_checks_fit_cycles(bad):
  with pytest.raises(ValueError, match="fit_cycles"):
    gaussjax.CodecConfig(fit_cycles=bad)


@pytest.mark.parametrize("iterations, cycles, expected", [
    (1001, 2, [501, 500]), (1000, 2, [500, 500]), (1000, 1, [1000]), (2500, 4, [625] * 4),
    (1999, 4, [667, 666, 666]), (999, 2, [999]), (25, 2, [25]),
    (0, 2, [0])])
def test_cycle_lengths_split_the_steps(iterations, cycles, expected):
  # none shorter than MIN_CYCLE_STEPS (500): fewer cycles, one below 1000 steps
  assert _codec._cycle_lengths(iterations, cycles) == expected


def test_cycle_lengths_with_short_cycles_allowed(monkeypatch):
  monkeypatch.setattr(_codec, "MIN_CYCLE_STEPS", 1)
  assert _codec._cycle_lengths(13, 2) == [7, 6]
  assert _codec._cycle_lengths(3, 4) == [1, 1, 1]


def test_fit_cycles_run_each_half_as_fresh_fits(monkeypatch):
  """fit_cycles=2: each half of the float fit is two calls of gaussjax.fit, each with its own
  whole schedule, the later ones starting from the Gaussians the one before ended with."""
  from gaussjax.fitting import _fit
  calls = []
  real_fit = _fit.fit

  def spy(image, g, config, *args, **kwargs):
    calls.append((config.steps, config.num_gaussians, g.num_gaussians))
    out = real_fit(image, g, config, *args, **kwargs)
    calls[-1] += (out[0],)
    return out

  monkeypatch.setattr(_fit, "fit", spy)
  monkeypatch.setattr(_codec, "MIN_CYCLE_STEPS", 1)  # cycles of 6 steps, to keep it quick
  img = _crop(16, 24)
  config = gaussjax.CodecConfig(quality=50, fit_steps=25, fit_cycles=2, qat_steps=0,
                                backend="reference", coarse_fit=False)
  data = gaussjax.encode(img, config)
  assert [c[0] for c in calls] == [7, 6, 6, 6]
  assert calls[0][1] == calls[1][1] and calls[2][1] == calls[3][1]  # N per half
  for before, after in zip(calls, calls[1:]):
    assert after[2] == before[3].num_gaussians  # each starts where the last one ended
  assert gaussjax.decode(data).shape == img.shape
  one = gaussjax.encode(img, dataclasses.replace(config, fit_cycles=1))
  assert [c[0] for c in calls[4:]] == [13, 12] and one != data


@pytest.mark.parametrize("bad", [1, 0, None, "yes"])
def test_config_checks_coarse_fit(bad):
  with pytest.raises(ValueError, match="coarse_fit"):
    gaussjax.CodecConfig(coarse_fit=bad)


def test_fit_halves_give_the_coarse_steps_saved_to_the_second_half():
  config = gaussjax.CodecConfig()
  assert _codec._fit_halves(config) == (1000, 1000)
  assert _codec._fit_halves(config, coarse=True) == (1000, 1750)  # 1000 halved = 250 full
  assert _codec._fit_halves(dataclasses.replace(config, fit_steps=25), True) == (13, 22)
  assert _codec._fit_halves(dataclasses.replace(config, fit_steps=0), True) == (0, 0)


def test_coarse_fit_needs_room_on_the_halved_image(monkeypatch):
  config = gaussjax.CodecConfig()
  # Kodak at 768x512 (N of 1 bpp) is fitted halved first, at 384x256 not (too small)
  assert _codec._coarse((512, 768, 3), 8549, config)
  assert not _codec._coarse((256, 384, 3), 16, config)
  assert not _codec._coarse((511, 511, 3), 16, config)  # 255x255 < 256x256
  assert _codec._coarse((512, 512, 3), 16, config)
  monkeypatch.setattr(_codec, "COARSE_MIN_PIXELS", 0)  # toy sizes: the per-Gaussian rule
  assert _codec._coarse((16, 24, 3), 24, config)  # 8x12 = 96 pixels = 4 per Gaussian
  assert not _codec._coarse((16, 24, 3), 25, config)
  assert not _codec._coarse((17, 25, 3), 25, config)  # odd sizes: 8x12 all the same
  assert not _codec._coarse((16, 24, 3), 4, dataclasses.replace(config, coarse_fit=False))
  assert not _codec._coarse((16, 24, 3), 4, dataclasses.replace(config, fit_steps=0))


def test_halved_image_and_scaled_gaussians_agree():
  # Gaussians at full size, scaled by 1/2, render close to the full render halved
  # by _halve (2x2 means): the two maps _first_fit uses are consistent.
  rng = np.random.default_rng(0)
  n, h, w = 12, 32, 48
  means = rng.uniform([8, 8], [w - 8, h - 8], (n, 2)).astype(np.float32)
  chol = np.stack([rng.uniform(3, 6, n), rng.uniform(-1, 1, n), rng.uniform(3, 6, n)],
                  1).astype(np.float32)
  g = gaussjax.Gaussians(jnp.asarray(means), jnp.asarray(chol),
                         jnp.asarray(rng.uniform(0, 0.5, (n, 3)).astype(np.float32)))
  full = gaussjax.render(g, h, w, backend="reference")
  half = gaussjax.render(_codec.scale_gaussians(g, 0.5, 0.5), h // 2, w // 2,
                         backend="reference")
  halved = _codec._halve(full)
  assert halved.shape == half.shape == (16, 24, 3)
  assert float(jnp.max(jnp.abs(halved - half))) < 0.02
  # and a shift would not be: one pixel off is far worse
  shifted = _codec.scale_gaussians(g._replace(means=g.means + 1.0), 0.5, 0.5)
  assert float(jnp.max(jnp.abs(halved - gaussjax.render(shifted, 16, 24,
                                                        backend="reference")))) > 0.02


def test_coarse_fit_runs_the_first_half_on_the_halved_image(monkeypatch):
  """coarse_fit: the first half's fits see the halved image, the second half's the image,
  starting from the first half's Gaussians mapped back (x2), and it gets the saved steps."""
  from gaussjax.fitting import _fit
  calls = []
  real_fit = _fit.fit

  def spy(image, g, config, *args, **kwargs):
    out = real_fit(image, g, config, *args, **kwargs)
    calls.append((image.shape[:2], config.steps, np.asarray(g.means), np.asarray(out[0].means)))
    return out

  monkeypatch.setattr(_fit, "fit", spy)
  monkeypatch.setattr(_codec, "MIN_CYCLE_STEPS", 1)
  monkeypatch.setattr(_codec, "COARSE_MIN_PIXELS", 0)  # a toy size, to keep it quick
  img = _crop(16, 24)
  config = gaussjax.CodecConfig(quality=50, fit_steps=25, fit_cycles=2, qat_steps=0,
                                backend="reference")
  data = gaussjax.encode(img, config)
  assert [c[:2] for c in calls] == [((8, 12), 7), ((8, 12), 6), ((16, 24), 11),
                                    ((16, 24), 11)]
  # the second half starts from the first half's last Gaussians, mapped back (x2)
  np.testing.assert_allclose(calls[2][2], 2 * calls[1][3], rtol=1e-6)
  assert gaussjax.decode(data).shape == img.shape


@pytest.mark.slow  # a whole encode with its compiles: about a minute on a loaded 2-core CPU
def test_encode_with_the_rate_pieces_meets_the_target():
  img = _crop(32, 48)
  config = gaussjax.CodecConfig(bpp=1.5, fit_steps=40, qat_steps=12, backend="xla")
  data = gaussjax.encode(img, config)
  assert abs(8 * len(data) / (32 * 48) / 1.5 - 1) <= config.rate_tolerance
  assert _codec.info_single(data)["num_gaussians"] > 0


def test_shape_symbol_range_is_what_quantize_produces():
  """The descents' symbol bounds: Gaussians far outside every range quantise exactly onto
  ``qz.shape_symbol_range``'s ends, and ordinary ones inside them."""
  h, w = 40, 70
  steps = qz.default_steps(3)
  means = np.array([[-1e4, -1e4], [1e4, 1e4], [35.0, 20.0]], np.float32)
  chol = np.array([[1e-6, -1e9, 1e-6], [1e6, 1e12, 1e6], [2.0, 0.3, 1.5]], np.float32)
  g = gaussjax.Gaussians(means, chol, np.zeros((3, 3), np.float32))
  sym, order = qz.quantize(g, h, w, steps)
  symbols = np.concatenate([sym.pos, sym.chol], -1)[np.argsort(order)]
  lo, hi = qz.shape_symbol_range(h, w, steps)
  np.testing.assert_array_equal(symbols[0], lo)
  np.testing.assert_array_equal(symbols[1], hi)
  assert np.all((symbols[2] > lo) & (symbols[2] < hi))
