"""fit, fit_step and the plan/overflow protocol."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussjax
from gaussjax.fitting import _fit
from gaussjax.rendering import _render

CONFIG = gaussjax.FitConfig(steps=100, log_every=25, backend="reference")


def _leaves(tree):
  """Array leaves of a pytree, PRNG keys as their raw data (comparable)."""
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def fitted_random(kodak_crop):
  g = gaussjax.init_random(jax.random.key(0), 100, 64, 64, 3)
  return g, *gaussjax.fit(kodak_crop, g, CONFIG)


def test_fit_raises_psnr_from_random_init(kodak_crop, fitted_random):
  _, fitted, history = fitted_random
  assert history.psnr[-1] > history.psnr[0] + 8.0, history.psnr
  assert history.psnr[-1] > 20.0, history.psnr
  render = np.clip(gaussjax.render(fitted, 64, 64, backend="reference"), 0, 1)
  # The last history entry is the returned Gaussians themselves.
  np.testing.assert_allclose(float(gaussjax.psnr(render, kodak_crop)), history.psnr[-1], atol=1e-3)


def test_fit_raises_psnr_from_slic_init(kodak_crop, fitted_random):
  g = gaussjax.init_slic(kodak_crop, 100)
  _, history = gaussjax.fit(kodak_crop, g, CONFIG)
  assert history.psnr[-1] > history.psnr[0] + 1.0, history.psnr
  # Same N and steps: SLIC ends ahead of random.
  assert history.psnr[-1] > fitted_random[2].psnr[-1], (history.psnr, fitted_random[2].psnr)


def test_history_layout(fitted_random):
  _, _, history = fitted_random
  np.testing.assert_array_equal(history.step, [0, 25, 50, 75, 100])
  assert np.all(np.diff(history.wall_time) >= 0)
  assert np.all(np.isfinite(history.loss)) and np.all(history.loss > 0)
  assert history.loss[-1] < history.loss[0]
  # The reference renderer needs no plan: one (None) for the whole fit, the
  # density events at steps 30 and 60 included (they run inside the loop).
  assert history.overflows == 0 and history.replans == 1, history.replans


def test_fit_is_reproducible(kodak_crop, fitted_random):
  g, fitted, history = fitted_random
  again, history2 = gaussjax.fit(kodak_crop, g, CONFIG)
  for a, b in zip(fitted, again):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(history.psnr, history2.psnr)


def test_fit_step_is_pure_and_compiles_once(kodak_crop):
  g = gaussjax.init_random(jax.random.key(1), 30, 64, 64, 3)
  config = dataclasses.replace(CONFIG, steps=10)
  state = gaussjax.init_fit_state(g, config, key=jax.random.key(5))
  step = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))
  image = jnp.asarray(kodak_crop)
  a, metrics_a = step(state, image, config=config, plan=None)
  compiled = step._cache_size()  # the cache is shared by every jit of fit_step
  b, _ = step(state, image, config=config, plan=None)
  assert step._cache_size() == compiled
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert int(a.step) == 1 and int(state.step) == 0
  assert set(metrics_a) >= {"loss", "psnr", "overflow"} and not bool(metrics_a["overflow"])
  assert not np.array_equal(a.gaussians.means, state.gaussians.means)
  c, _ = step(a, image, config=config, plan=None)
  assert int(c.step) == 2 and step._cache_size() == compiled


def test_loss_weights(kodak_crop):
  g = gaussjax.init_random(jax.random.key(2), 30, 64, 64, 3)
  render = gaussjax.render(g, 64, 64, backend="reference")
  diff = np.asarray(render) - kodak_crop
  for weights, expected in [
      ({"l1_weight": 0.0, "l2_weight": 1.0}, np.mean(diff**2)),
      ({"l1_weight": 1.0, "l2_weight": 0.0}, np.mean(np.abs(diff))),
      ({"l1_weight": 0.5, "l2_weight": 2.0, "ssim_weight": 0.3},
       0.5 * np.mean(np.abs(diff)) + 2.0 * np.mean(diff**2) + 0.3 * (1 - float(gaussjax.ssim(render, kodak_crop)))),
  ]:
    config = dataclasses.replace(CONFIG, **weights)
    loss, _ = gaussjax.fit_loss(g, jnp.asarray(kodak_crop), config=config)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_ssim_and_l1_terms_also_fit(kodak_crop):
  g = gaussjax.init_slic(kodak_crop, 60)
  config = dataclasses.replace(CONFIG, steps=30, log_every=30, l1_weight=0.8, l2_weight=0.0, ssim_weight=0.2)
  _, history = gaussjax.fit(kodak_crop, g, config)
  assert history.loss[-1] < history.loss[0]
  assert history.psnr[-1] > history.psnr[0]


@pytest.mark.parametrize("channels", [1, 4])
def test_fit_grey_and_rgba(kodak_crop, channels):
  image = kodak_crop[:32, :40]
  image = image.mean(-1, keepdims=True) if channels == 1 else np.concatenate([image, image[..., :1]], -1)
  g = gaussjax.init_random(jax.random.key(0), 40, 32, 40, channels)
  fitted, history = gaussjax.fit(image, g, dataclasses.replace(CONFIG, steps=40, log_every=40))
  assert fitted.channels == channels
  assert history.psnr[-1] > history.psnr[0] + 3.0


def test_target_psnr_and_time_budget_stop_early(kodak_crop):
  g = gaussjax.init_slic(kodak_crop, 50)
  config = dataclasses.replace(CONFIG, steps=1000, log_every=5, target_psnr=1.0)
  _, history = gaussjax.fit(kodak_crop, g, config)
  assert history.step[-1] == 5  # the first logged PSNR already reaches the target
  config = dataclasses.replace(CONFIG, steps=1000, log_every=5, time_budget_s=1e-3)
  _, history = gaussjax.fit(kodak_crop, g, config)
  assert history.step[-1] == 5


class _FakeTiledBackend:
  """A backend whose plan is a bound on the Gaussians' extents, like a tile capacity.

  ``rasterize`` renders with the reference but, like a real binning renderer,
  loses contributions when a Gaussian is larger than its plan allows (here:
  the image comes back all zero) and reports ``overflow``.
  """

  def __init__(self):
    self.plans = []

  def plan_for(self, gaussians, height, width, *, backend, previous=None, boost=1.0):
    extent = float(np.max(np.asarray(gaussjax.extents(gaussians.chol))))
    if previous is not None and extent <= previous:
      return previous, False
    # Up to 8 px of headroom, times `boost` after an overflow (the redo policy).
    plan = float(np.ceil(extent * boost / 8.0 + 1e-6) * 8.0)
    self.plans.append(plan)
    return plan, True

  def install(self, monkeypatch):
    """Makes fit plan and render with this backend (the loop asks the render layer)."""
    monkeypatch.setattr(_render, "uses_plans", lambda backend, channels: True)
    monkeypatch.setattr(_render, "plan_for", self.plan_for)
    monkeypatch.setattr(_render, "make_plan", lambda g, h, w, *, backend: self.plan_for(
        g, h, w, backend=backend)[0])
    monkeypatch.setattr(_fit, "rasterize", self.rasterize)

  def rasterize(self, gaussians, height, width, *, backend="auto", plan=None):
    image = gaussjax.render_reference(gaussians, height, width)
    overflow = jnp.max(gaussjax.extents(gaussians.chol)) > plan
    return jnp.where(overflow, 0.0, image), overflow


def test_overflowed_steps_are_never_accepted(kodak_crop, monkeypatch):
  image = kodak_crop[:32, :32]
  g = gaussjax.init_random(jax.random.key(0), 20, 32, 32, 3)
  config = dataclasses.replace(CONFIG, steps=16, log_every=8, replan_every=1000, lr_chol=0.1)
  expected, expected_history = gaussjax.fit(image, g, config)

  fake = _FakeTiledBackend()
  fake.install(monkeypatch)
  actual, history = gaussjax.fit(image, g, config)
  assert history.overflows >= 1, fake.plans
  assert history.replans == history.overflows + 1
  assert len(set(fake.plans)) > 1
  # Had any incomplete (all-zero) render been accepted, the result would differ.
  for a, b in zip(actual, expected):
    # Tolerance: the two runs compile different programs (float32 rounding, then
    # 16 Adam steps); an accepted all-zero render moves a colour by ~lr = 0.02.
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(history.psnr[-1], expected_history.psnr[-1], atol=1e-3)
  np.testing.assert_array_equal(history.step, expected_history.step)


def test_a_plan_that_keeps_overflowing_is_an_error(kodak_crop, monkeypatch):
  fake = _FakeTiledBackend()
  fake.install(monkeypatch)
  monkeypatch.setattr(_render, "plan_for", lambda *a, previous=None, **k: (0.5, True))
  g = gaussjax.init_random(jax.random.key(0), 20, 32, 32, 3)
  with pytest.raises(RuntimeError, match="overflowed"):
    gaussjax.fit(kodak_crop[:32, :32], g, dataclasses.replace(CONFIG, steps=4, log_every=2))


def test_fit_step_returns_the_state_unchanged_on_overflow(kodak_crop, monkeypatch):
  fake = _FakeTiledBackend()
  monkeypatch.setattr(_fit, "rasterize", fake.rasterize)
  g = gaussjax.init_random(jax.random.key(0), 20, 64, 64, 3)
  state = gaussjax.init_fit_state(g, CONFIG)
  step = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))
  new_state, metrics = step(state, jnp.asarray(kodak_crop), config=CONFIG, plan=0.5)
  assert bool(metrics["overflow"])
  for a, b in zip(_leaves(new_state), _leaves(state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps=0 must be a positive int"),
        ({"log_every": -1}, "log_every=-1"),
        ({"lr_means": -0.1}, "lr_means=-0.1"),
        ({"lr_colors": float("nan")}, "lr_colors=nan"),
        ({"l2_weight": 0.0}, "at least one of"),
        ({"backend": "tpu"}, "unknown backend 'tpu'"),
        ({"time_budget_s": 0}, "time_budget_s=0"),
    ],
)
def test_fit_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gaussjax.FitConfig(**kwargs)


def test_fit_config_is_hashable():
  assert hash(gaussjax.FitConfig()) == hash(gaussjax.FitConfig())


def test_fit_rejects_bad_input(kodak_crop):
  g = gaussjax.init_random(jax.random.key(0), 10, 64, 64, 3)
  with pytest.raises(ValueError, match="3 colour channels but the image has 1"):
    gaussjax.fit(kodak_crop[..., :1], g, CONFIG)
  with pytest.raises(ValueError, match="NaN"):
    gaussjax.fit(np.full((8, 8, 3), np.nan, np.float32), g, CONFIG)
  with pytest.raises(TypeError, match="floating point"):
    gaussjax.fit((kodak_crop * 255).astype(np.uint8), g, CONFIG)
  with pytest.raises(ValueError, match=r"must be \[H, W, C\]"):
    gaussjax.fit(kodak_crop[None], g, CONFIG)
  with pytest.raises(TypeError, match="FitConfig"):
    gaussjax.fit(kodak_crop, g, {"steps": 3})
  batch = jax.tree_util.tree_map(lambda x: x[None], g)
  with pytest.raises(ValueError, match=r"means \[N, 2\]"):
    gaussjax.fit(kodak_crop, batch, CONFIG)


def test_fit_refuses_traced_input():
  g = gaussjax.init_random(jax.random.key(0), 3, 4, 4, 3)
  with pytest.raises(TypeError, match="use fit_step under jit"):
    jax.jit(lambda x: gaussjax.fit(x, g, CONFIG)[1].psnr)(np.zeros((4, 4, 3), np.float32))


def test_fit_image_grows_slic_to_exactly_n(kodak_crop):
  config = gaussjax.FitConfig(steps=60, log_every=20, backend="reference")
  assert gaussjax.fitting._fit.initial_count(100, config) == 50
  assert gaussjax.fitting._fit.initial_count(100, dataclasses.replace(config, densify_every=0)) == 100
  fitted, history = gaussjax.fit_image(kodak_crop, 100, config)
  assert fitted.num_gaussians == 100
  assert bool(np.all(np.isfinite(np.asarray(fitted.colors))))
  assert history.psnr[-1] > history.psnr[0] + 3.0, history.psnr
  with pytest.raises(ValueError, match="num_gaussians"):
    gaussjax.fit_image(kodak_crop, 0, config)
  with pytest.raises(TypeError, match="num_gaussians"):
    gaussjax.fit_image(kodak_crop, 2.5, config)
