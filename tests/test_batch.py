"""Batches: bucketing, padding masks, the batched loop, fit_batch, encode_batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussjax
from gaussjax.batch import _batch
from gaussjax.codec import _codec
from gaussjax.rendering import _render

# ----------------------------------------------------------------- bucketing and padding


@pytest.mark.parametrize("size, expected", [
    ((1, 1), (32, 32)), ((32, 32), (32, 32)), ((33, 20), (64, 32)), ((512, 768), (512, 768))])
def test_bucket_shape(size, expected):
  assert _batch.bucket_shape(*size) == expected


def test_bucket_shape_rejects_bad_sizes():
  with pytest.raises(ValueError, match="height=0"):
    _batch.bucket_shape(0, 5)
  with pytest.raises(ValueError, match="multiple"):
    _batch.bucket_shape(5, 5, multiple=-1)


def test_bucket_images_groups_by_padded_size_and_channels():
  shapes = [(30, 30, 3), (40, 30, 3), (32, 20, 3), (30, 30, 1), (64, 64, 3)]
  assert _batch.bucket_images(shapes) == {
      (32, 32, 3): [0, 2], (64, 32, 3): [1], (32, 32, 1): [3], (64, 64, 3): [4]}
  with pytest.raises(ValueError, match=r"image 0 must have shape \[H, W, C\]"):
    _batch.bucket_images([(3, 3)])


def test_pad_images_and_mask():
  a = np.full((2, 3, 3), 0.5, np.float32)
  b = np.full((4, 1, 3), 0.25, np.float32)
  padded, mask = _batch.pad_images([a, b])
  assert padded.shape == (2, 4, 3, 3) and mask.shape == (2, 4, 3)
  np.testing.assert_array_equal(padded[0, :2, :3], a)
  np.testing.assert_array_equal(padded[1, :4, :1], b)
  assert padded[0, 2:].sum() == 0 and padded[1, :, 1:].sum() == 0
  assert mask[0].sum() == 6 and mask[1].sum() == 4
  with pytest.raises(ValueError, match="channel count"):
    _batch.pad_images([a, np.zeros((2, 2, 1))])
  with pytest.raises(ValueError, match="does not fit"):
    _batch.pad_images([a], shape=(1, 1))


def test_masked_loss_ignores_padding_in_value_and_gradient():
  image = toy_images(1, 13, 10)[0]
  g = toy_gaussians(1, 12, 13, 10)[0]
  padded = np.pad(image, ((0, 19), (0, 22), (0, 0)), constant_values=123.0)
  mask = np.pad(np.ones((13, 10), np.float32), ((0, 19), (0, 22)))

  def loss(g, image, mask):
    return _codec._loss(g, jnp.asarray(image), mask, height=0, width=0, backend="reference",
                        qsteps=None, plan=None)[0]

  expected, expected_grad = jax.value_and_grad(loss)(g, image, None)
  actual, actual_grad = jax.value_and_grad(loss)(g, padded, jnp.asarray(mask))
  assert float(actual) == pytest.approx(float(expected), rel=1e-5)
  for a, e in zip(actual_grad, expected_grad):
    # float32 sums over 32x32 instead of 13x10 pixels.
    np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)


def test_pad_batch_repeats_the_first_element():
  tree = {"a": np.arange(3.0), "b": np.ones((3, 2))}
  padded, size = _batch.pad_batch(tree, 4)
  assert size == 3 and padded["a"].tolist() == [0.0, 1.0, 2.0, 0.0]
  same, size = _batch.pad_batch(tree, 3)
  assert size == 3 and same is tree


# ----------------------------------------------------------------- the batched loop
# A toy one-image step (gradient descent on the masked MSE, reference renderer)
# checks the loop itself, independently of the fitting code.


def toy_step(gaussians, example, t, plan, static):
  image, mask = example
  learning_rate = static
  (_, overflow), grad = jax.value_and_grad(_codec._loss, has_aux=True)(
      gaussians, image, mask, height=0, width=0, backend="reference", qsteps=None, plan=plan)
  return (jax.tree_util.tree_map(lambda p, d: p - learning_rate * d, gaussians, grad),
          {"overflow": overflow})


def toy_images(count, height, width, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width] / max(height, width)
  images = []
  for _ in range(count):
    a, b, c = rng.random(3)
    images.append(np.stack([a * xx, b * yy, c * (1 - xx * yy)], -1).astype(np.float32))
  return images


def toy_gaussians(count, n, height, width):
  return [gaussjax.init_random(jax.random.key(i), n, height, width) for i in range(count)]


def stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def run_toy(images, gaussians, height, width, *, num_steps=6, mesh=None, chunk=4, vectorize=None,
            step=toy_step):
  padded, mask = _batch.pad_images(images, shape=(height, width))
  state, _ = _batch.run_batch(
      step, stack(gaussians), (jnp.asarray(padded), jnp.asarray(mask)), mesh=mesh,
      num_steps=num_steps, static=2.0, height=height, width=width, backend="reference",
      view=lambda s: s, chunk=chunk, batch=_batch._loop_batch(vectorize))
  return state


@pytest.mark.parametrize("vectorize", [True, False])
def test_batched_loop_equals_one_at_a_time(vectorize):
  images, gaussians = toy_images(3, 16, 12), toy_gaussians(3, 10, 16, 12)
  batched = run_toy(images, gaussians, 16, 12, vectorize=vectorize)
  for i in range(3):
    alone = run_toy(images[i:i + 1], gaussians[i:i + 1], 16, 12)
    for actual, expected in zip(batched, alone):
      # float32, same math; only XLA's batched fusion may round differently.
      np.testing.assert_allclose(actual[i], expected[0], rtol=1e-5, atol=1e-5)
  # The loop did something: the loss went down for every image.
  assert not np.allclose(batched.means, stack(gaussians).means)


def test_batched_loop_padding_does_not_change_the_result():
  image, g = toy_images(1, 13, 10), toy_gaussians(1, 10, 13, 10)
  alone = run_toy(image, g, 13, 10)
  padded = run_toy(image, g, 32, 32)
  for actual, expected in zip(padded, alone):
    # Sums over a 32x32 grid instead of 13x10 round differently in float32.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vectorize", [True, False])
def test_batched_loop_on_a_mesh_pads_the_batch_to_the_devices(vectorize):
  images, gaussians = toy_images(3, 8, 8), toy_gaussians(3, 5, 8, 8)
  mesh = _batch.batch_mesh()
  expected = run_toy(images, gaussians, 8, 8)
  actual = run_toy(images, gaussians, 8, 8, mesh=mesh, vectorize=vectorize)
  assert actual.means.shape == (3, 5, 2)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


def overflowing_step(gaussians, example, t, plan, static):
  new, _ = toy_step(gaussians, example, t, None, static)
  return new, {"overflow": jnp.asarray(plan == 0)}


def test_batched_loop_replans_on_overflow_and_never_keeps_an_overflowed_step(monkeypatch):
  plans = []

  def plan_for(gaussians, height, width, *, backend, previous=None, boost=1.0):
    plans.append(len(plans))
    return len(plans) - 1, True  # plan 0 always overflows; later ones never

  monkeypatch.setattr(_render, "uses_plans", lambda backend, channels: True)
  monkeypatch.setattr(_render, "plan_for", plan_for)
  images, gaussians = toy_images(2, 8, 8), toy_gaussians(2, 5, 8, 8)
  state = run_toy(images, gaussians, 8, 8, num_steps=5, chunk=5, step=overflowing_step)
  monkeypatch.undo()
  expected = run_toy(images, gaussians, 8, 8, num_steps=5, chunk=5)
  for a, e in zip(state, expected):
    np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)
  assert len(plans) >= 2


def test_batched_loop_fails_loudly_when_fresh_plans_overflow(monkeypatch):
  monkeypatch.setattr(_render, "uses_plans", lambda backend, channels: True)
  monkeypatch.setattr(_render, "plan_for", lambda *a, **k: (0, True))
  images, gaussians = toy_images(1, 8, 8), toy_gaussians(1, 5, 8, 8)
  with pytest.raises(RuntimeError, match="overflowed"):
    run_toy(images, gaussians, 8, 8, num_steps=2, step=overflowing_step)


# ----------------------------------------------------------------- encode_batch


def psnr(expected, actual):
  return float(-10 * np.log10(np.mean((np.asarray(actual) - expected) ** 2)))


def check_encode_batch(images, config, min_psnr=15.0):
  batch = gaussjax.encode_batch(images, config)
  assert len(batch) == len(images)
  for image, data in zip(images, batch):
    alone = gaussjax.encode(image, config)
    # Batched and single fits sum in different orders, so a file may differ in
    # a few quantised values; the stated tolerance: 2 % in size, 0.05 dB PSNR.
    assert abs(len(data) - len(alone)) <= 0.02 * len(alone)
    actual = gaussjax.decode(data, backend="reference")
    expected = gaussjax.decode(alone, backend="reference")
    assert actual.shape == image.shape
    assert abs(psnr(image, actual) - psnr(image, expected)) < 0.05
    assert psnr(image, actual) > min_psnr  # the fit did something


def test_encode_batch_matches_encode_one_at_a_time():
  config = _codec.CodecConfig(quality=50, fit_steps=25, qat_steps=5, backend="reference")
  check_encode_batch(toy_images(2, 16, 20), config)


@pytest.mark.parametrize("coarse_fit", [False, True])
def test_encode_batch_float_fit_with_fit_cycles_matches_encode(monkeypatch, coarse_fit):
  # The float fit of encode_batch (both halves, _batch._first_fit_all) against
  # encode's _first_fit, with each half in two fresh fits (CodecConfig.fit_cycles),
  # the first at full size or on the halved image (CodecConfig.coarse_fit).
  # Compared before the fine-tuning: on 16 Gaussians the descents' discrete choices
  # can turn a 1e-5 difference into a different file.
  monkeypatch.setattr(_codec, "MIN_CYCLE_STEPS", 1)  # cycles of 6 steps, to keep it quick
  monkeypatch.setattr(_codec, "COARSE_MIN_PIXELS", 0)  # halved first halves at a toy size
  config = _codec.CodecConfig(quality=50, fit_steps=25, fit_cycles=2, qat_steps=5,
                              backend="reference", coarse_fit=coarse_fit)
  images = [_codec._as_image(x) for x in toy_images(2, 16, 20)]
  # 8x10 halved pixels for the 16 Gaussians of quality 50: the halved first half applies.
  assert [_codec._coarse(a.shape, 16, config) for a in images] == [coarse_fit] * 2
  fitted, chosen = _batch._first_fit_all(images, config, None, None)
  for image, g, (steps, _) in zip(images, fitted, chosen):
    alone, alone_steps = _codec._first_fit(image, config)
    assert alone.num_gaussians == g.num_gaussians and alone_steps == steps
    render = lambda x: gaussjax.render(x, 16, 20, backend="reference")
    assert abs(psnr(image, render(g)) - psnr(image, render(alone))) < 0.05
    assert psnr(image, render(g)) > 15.0


def test_encode_batch_on_the_fast_renderer_matches_encode():
  # The default renderer of the machine (on the CPU: the native kernel, which
  # encode_batch runs on every image of a batch at once under vmap).
  config = _codec.CodecConfig(quality=50, fit_steps=20, qat_steps=4, backend="auto")
  check_encode_batch(toy_images(3, 24, 20), config)


@pytest.mark.slow
def test_encode_batch_ragged_sizes_and_rate_control_match_encode():
  # Two 16x20 images and a 12x18 one: the float fit runs all three in one
  # padded 32x32 bucket, QAT in two exact-size groups.
  images = toy_images(2, 16, 20) + toy_images(1, 12, 18, seed=1)
  config = _codec.CodecConfig(quality=50, fit_steps=25, qat_steps=5, backend="reference")
  check_encode_batch(images, config)
  # With a rate target the few bytes allow only a rough picture of 16x20 px.
  config = _codec.CodecConfig(bpp=3.0, fit_steps=25, qat_steps=5, backend="reference")
  check_encode_batch(images, config, min_psnr=5.0)


def test_encode_batch_bad_input():
  config = _codec.CodecConfig(quality=50, fit_steps=1, qat_steps=0, backend="reference")
  assert gaussjax.encode_batch([], config) == []
  with pytest.raises(ValueError, match="image 1"):
    gaussjax.encode_batch([np.zeros((8, 8, 3)), np.zeros((8, 8, 3, 1))], config)
  with pytest.raises(TypeError, match="CodecConfig"):
    gaussjax.encode_batch([np.zeros((8, 8, 3))], "fast")


# ----------------------------------------------------------------- fit_batch


def tiny_fit_config(**kwargs):
  kwargs.setdefault("steps", 30)
  return gaussjax.FitConfig(backend="reference", warmup_steps=5, log_every=10, **kwargs)


def fitted(result):
  """The fitted Gaussians of ``fit`` / ``fit_batch``."""
  return result[0]


@pytest.mark.parametrize("vectorize", [True, False])
def test_fit_batch_matches_fit_one_at_a_time_and_padding_changes_nothing(vectorize):
  # Two 16x20 images and a 12x18 one share a padded 32x32 bucket.
  images = toy_images(2, 16, 20) + toy_images(1, 12, 18, seed=1)
  initial = [gaussjax.init_random(jax.random.key(i), 12, *im.shape) for i, im in enumerate(images)]
  config = tiny_fit_config()
  actual, metrics = gaussjax.fit_batch(images, initial, config, vectorize=vectorize)
  assert actual.means.shape == (3, 12, 2)
  for i, (image, g) in enumerate(zip(images, initial)):
    expected, history = gaussjax.fit(image, g, config)
    for a, e in zip(actual, expected):
      # float32: a padded 32x32 grid and batched kernels sum in other orders.
      np.testing.assert_allclose(a[i], e, rtol=1e-4, atol=1e-4)
    assert metrics["psnr"][i] == pytest.approx(history.psnr[-1], abs=1e-3)
    assert metrics["loss"][i] == pytest.approx(history.loss[-1], rel=1e-3)
    assert history.psnr[-1] > history.psnr[0] + 3  # the fit did something


def test_fit_batch_runs_the_density_events_of_fit():
  # Growth from 8 to 12 Gaussians and prune/re-add events at steps 5, 10, 15
  # (on the device, per image): the batch makes the same events as fit alone.
  images = toy_images(2, 16, 20)
  initial = [gaussjax.init_slic(im, 8) for im in images]
  config = tiny_fit_config(num_gaussians=12, densify_every=5, densify_until=0.6, grow_until=0.3,
                           prune_fraction=0.1)
  actual, metrics = gaussjax.fit_batch(images, initial, config)
  assert actual.means.shape == (2, 12, 2)
  for i, (image, g) in enumerate(zip(images, initial)):
    expected, history = gaussjax.fit(image, g, config)
    for a, e in zip(actual, expected):
      np.testing.assert_allclose(a[i], e, rtol=1e-4, atol=1e-4)
    assert metrics["psnr"][i] == pytest.approx(history.psnr[-1], abs=1e-3)


def test_fit_batch_accepts_an_array_batch_and_batched_gaussians():
  images = np.stack(toy_images(2, 8, 8))
  initial = stack([gaussjax.init_random(jax.random.key(i), 6, 8, 8) for i in range(2)])
  config = tiny_fit_config(steps=4)
  from_array, _ = gaussjax.fit_batch(images, initial, config)
  as_list = [jax.tree_util.tree_map(lambda x, i=i: x[i], initial) for i in range(2)]
  from_lists, _ = gaussjax.fit_batch(list(images), as_list, config)
  for a, b in zip(from_array, from_lists):
    np.testing.assert_array_equal(a, b)


def test_fit_batch_bad_input():
  image = np.zeros((8, 8, 3), np.float32)
  g = gaussjax.init_random(jax.random.key(0), 4, 8, 8)
  config = tiny_fit_config(steps=2)
  with pytest.raises(ValueError, match="2 sets of Gaussians for 1 images"):
    gaussjax.fit_batch([image], [g, g], config)
  with pytest.raises(ValueError, match="same number of Gaussians"):
    gaussjax.fit_batch([image, image], [g, gaussjax.init_random(jax.random.key(0), 5, 8, 8)],
                       config)
  with pytest.raises(ValueError, match="colour channels"):
    gaussjax.fit_batch([image[..., :1]], [g], config)
  with pytest.raises(ValueError, match="image 0 must be"):
    gaussjax.fit_batch([np.zeros((8, 8, 3, 1))], [g], config)
  with pytest.raises(TypeError, match="floating point"):
    gaussjax.fit_batch([np.zeros((8, 8, 3), np.uint8)], [g], config)
  with pytest.raises(ValueError, match="target_psnr"):
    gaussjax.fit_batch([image], [g], tiny_fit_config(steps=2, target_psnr=30.0))
  with pytest.raises(TypeError, match="FitConfig"):
    gaussjax.fit_batch([image], [g], {"steps": 2})
