"""The training loop (gaussjax.fitting._loop): chunks, density events on the device, overflow redo."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussjax
from gaussjax.fitting import _density, _fit, _loop
from gaussjax.rendering import _native, _render

# Growth from 15 to 30 Gaussians with prune and split events every 5 steps.
CONFIG = gaussjax.FitConfig(steps=40, log_every=20, backend="reference", num_gaussians=30,
                            densify_every=5, densify_until=0.8, grow_until=0.4,
                            prune_fraction=0.1, split_fraction=0.3)


@pytest.fixture(scope="module")
def image(kodak_crop):
  return jnp.asarray(kodak_crop[:32, :32])


@pytest.fixture(scope="module")
def initial(image):
  return gaussjax.init_slic(np.asarray(image), 15)


def _leaves(tree):
  return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree_util.tree_leaves(tree)]


def run(image, initial, config=CONFIG, *, chunk=50, key=None, plan=None, on_chunk=None):
  height, width = image.shape[:2]
  schedule = _density.Schedule.make(initial.num_gaussians, config)
  state = gaussjax.init_fit_state(_density.to_buffer(initial, schedule.target), config, key=key)
  static = _fit.loop_static(config, schedule, height, width)
  return _loop.run(_fit._loop_step, state, (image, None, None), num_steps=config.steps,
                   static=static, height=height, width=width, backend=config.backend,
                   chunk=chunk, plan=plan, on_chunk=on_chunk, event=_fit._loop_event,
                   event_due=_fit.event_due(static))


def test_chunked_and_unchunked_runs_agree(image, initial):
  one, info_one = run(image, initial, chunk=1)
  many, info_many = run(image, initial, chunk=50)  # one partial chunk: 40 of 50 steps valid
  assert info_one.done == info_many.done == CONFIG.steps
  for a, b in zip(_leaves(one), _leaves(many)):
    # The same step, compiled into scans of 1 and of 50 steps.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert _density.is_active(many.gaussians).all()


def test_a_partial_chunk_does_not_compile_again(image, initial):
  config = dataclasses.replace(CONFIG, steps=12)
  run(image, initial, config, chunk=5)  # 5 + 5 + 2
  compiled = _loop._chunk._cache_size()
  state, info = run(image, initial, dataclasses.replace(config, log_every=7), chunk=5)
  assert info.done == 12 and _loop._chunk._cache_size() == compiled


def test_runs_are_deterministic_and_follow_the_key(image, initial):
  a, _ = run(image, initial, key=jax.random.key(3))
  b, _ = run(image, initial, key=jax.random.key(3))
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  c, _ = run(image, initial, key=jax.random.key(4))
  assert not np.array_equal(a.gaussians.means, c.gaussians.means)  # events draw from the key


def test_device_events_follow_the_schedule_and_keep_exactly_n(image, initial):
  schedule = _density.Schedule.make(initial.num_gaussians, CONFIG)
  assert len(schedule.events) >= 4
  live = {}

  def record(first, count, state, metrics):
    assert count == 1
    live[first] = int(_density.is_active(state.gaussians).sum())
    assert state.gaussians.means.shape[0] == CONFIG.num_gaussians
    return False

  run(image, initial, chunk=1, on_chunk=record)
  for step in range(CONFIG.steps):
    events = [e for e in schedule.events if e <= step]
    expected = schedule.event(events[-1])[0] if events else schedule.initial
    assert live[step] == expected, (step, live[step], expected)
  assert live[CONFIG.steps - 1] == CONFIG.num_gaussians


def test_the_density_event_is_compiled_apart_from_the_steps(image, initial):
  # The steps of a chunk hold no density event (it is its own program, run
  # between chunks): the step's program has none of the event's top-k
  # selections, the event's has.
  schedule = _density.Schedule.make(initial.num_gaussians, CONFIG)
  static = _fit.loop_static(CONFIG, schedule, 32, 32)
  state = gaussjax.init_fit_state(_density.to_buffer(initial, schedule.target), CONFIG)
  data = (image, None, None)
  program = lambda f: str(jax.make_jaxpr(lambda s, t: f(s, data, t, None, static))(
      state, jnp.int32(5)))
  assert "top_k" not in program(_fit._loop_step)
  assert "top_k" in program(_fit._loop_event)
  due = _fit.event_due(static)
  assert [t for t in range(CONFIG.steps) if due(t)] == list(schedule.events)


@pytest.mark.parametrize("target, prune, split", [(24, 3, 2), (30, 3, 0), (20, 0, 4), (25, 0, 0)])
def test_device_event_counts_equal_the_host_event(image, initial, target, prune, split):
  schedule = _density.Schedule.make(initial.num_gaussians, CONFIG)
  buffer = _density.to_buffer(initial, CONFIG.num_gaussians)
  render = gaussjax.render(buffer, 32, 32, backend="reference")
  residual = np.asarray(image) - np.clip(np.asarray(render), 0, 1)
  grads = np.random.default_rng(0).random(CONFIG.num_gaussians).astype(np.float32)
  host, written = _density.densify(np.random.default_rng(0), buffer, residual, target=target,
                                   prune=prune, split=split, mean_grads=grads)
  spec = dataclasses.replace(_density.EventSpec.make(schedule, 32, 32, "reference"),
                             prune=prune, max_new=CONFIG.num_gaussians, max_split=max(split, 1))
  device, device_written = jax.jit(
      lambda key, g: _density.densify_device(key, g, jnp.asarray(residual), None, target, prune,
                                             split, spec=spec, mean_grads=jnp.asarray(grads)))(
          jax.random.key(0), jax.tree_util.tree_map(jnp.asarray, buffer))
  assert _density.is_active(device).sum() == _density.is_active(host).sum() == target
  assert int(device_written.sum()) == len(np.unique(written))
  assert device.means.shape == host.means.shape
  assert np.all(np.isfinite(np.asarray(device.colors)))
  # New Gaussians land on the image; added ones (no prune, no split) lower the
  # error about as much as the host's (other random positions).
  new = np.asarray(device.means)[np.asarray(device_written)]
  assert np.all((new > -1) & (new < 33))
  if prune == split == 0:
    error = lambda g: float(np.mean((np.asarray(image) - np.clip(
        np.asarray(gaussjax.render(g, 32, 32, backend="reference")), 0, 1)) ** 2))
    assert error(device) < 0.9 * float(np.mean(residual ** 2))
    assert error(device) < 1.25 * error(host), (error(device), error(host))


def test_a_forced_overflow_is_redone_and_never_accepted(image, initial, monkeypatch):
  # The pure-XLA renderer with a tiny plan: one window class of 8 px with room
  # for 4 Gaussians overflows at once; the loop redoes the chunk with a fresh
  # plan, so the result is that of a run that never overflowed.
  monkeypatch.setattr(_native, "usable", lambda dtype, channels: False)
  config = dataclasses.replace(CONFIG, steps=10, backend="xla")
  roomy = _render.replan(_density.to_buffer(initial, 30), 32, 32, backend="xla", attempt=3)
  expected, info = run(image, initial, config, plan=roomy)
  assert info.overflows == 0
  tiny = type(roomy)(sizes=(8,), capacities=(4,), chunks=(4,))
  actual, info = run(image, initial, config, plan=tiny)
  assert info.overflows >= 1 and info.replans >= 1 and info.plan != tiny
  for a, b in zip(_leaves(actual), _leaves(expected)):
    # Other plans put Gaussians in other window classes: float rounding only.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_fit_image_stops_early_and_fills_to_n(kodak_crop):
  # A run stopped while growing: the free slots are filled before returning.
  config = dataclasses.replace(CONFIG, steps=200, log_every=5, time_budget_s=1e-3)
  fitted, history = gaussjax.fit_image(kodak_crop[:32, :32], 30, config)
  assert history.step[-1] == 5
  assert fitted.num_gaussians == 30 and _density.is_active(fitted).all()


def test_lr_shape_is_the_optimizer_schedule():
  config = dataclasses.replace(CONFIG, steps=300, warmup_steps=20, final_lr_fraction=0.2)
  schedule = _fit._schedule(2.0, config)
  for step in [0, 5, 19, 20, 21, 150, 299, 300, 400]:
    np.testing.assert_allclose(float(_fit.lr_shape(step, 300, config)), float(schedule(step)) / 2.0,
                               rtol=1e-5)


def test_a_horizon_runs_the_schedule_of_that_many_steps(image, initial):
  # fit_step with horizon H under a config of 100 steps makes the steps of a
  # config of H steps.
  long = dataclasses.replace(CONFIG, steps=100, densify_every=0)
  short = dataclasses.replace(long, steps=30)
  g = _density.to_buffer(initial, 15)
  a = b = gaussjax.init_fit_state(g, long)
  step = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))
  for _ in range(25):
    a, _ = step(a, image, config=long, horizon=jnp.int32(30))
    b, _ = step(b, image, config=short)
  for x, y in zip(_leaves(a.gaussians), _leaves(b.gaussians)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_time_budget_shortens_the_schedule_instead_of_cutting_it(kodak_crop, monkeypatch):
  # A clock that advances 0.1 s per step made (chunks end at log points and
  # at density events, so their lengths vary), so a budget of 8.5 s allows
  # about 85 of the 200 planned steps. The schedule (and the growth from 15
  # to 30) is fitted to those steps: no free slot is left to fill at the end.
  clock = [0.0]
  chunk = _loop._chunk

  def timed_chunk(state, data, start, num_valid, **kwargs):
    clock[0] += 0.1 * int(num_valid)
    return chunk(state, data, start, num_valid, **kwargs)

  monkeypatch.setattr(_loop, "_chunk", timed_chunk)
  monkeypatch.setattr(_fit.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(_fit, "_fill", None)  # fails if called
  config = dataclasses.replace(CONFIG, steps=200, log_every=10, time_budget_s=8.5)
  fitted, history = gaussjax.fit(kodak_crop[:32, :32], gaussjax.init_slic(kodak_crop[:32, :32], 15),
                                 config)
  assert 50 <= history.step[-1] <= 100, history.step
  assert fitted.num_gaussians == 30 and _density.is_active(fitted).all()
  assert history.psnr[-1] > history.psnr[0] + 3.0
