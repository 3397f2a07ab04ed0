"""The XLA backend against the reference renderer.

The scenes are those of the Pallas backend's tests: sizes that are not
multiples of 8, 1/3/4 channels, Gaussians off the image, empty regions,
sub-pixel, image-wide, very thin and degenerate Gaussians. Tests that take
the ``impl`` fixture run twice: on the pure-XLA size classes and on the
native CPU kernel (skipped where it cannot be built); plan and overflow tests
run on the pure-XLA path, the only one with capacities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ill_conditioned_scene, large_and_thin_scene, render_float64, scene

import gaussjax
from gaussjax.rendering import _native, _render, _xla
from gaussjax.rendering._render import render_reference

# float32 images: each pixel sums ≤ 200 terms of size ≤ ~2 in a different
# order than the reference einsum, so agreement is a few ulps of the sum.
IMAGE_ATOL = 1e-5
# Gradients are sums over up to H·W pixels of products of float32 terms; the
# hand-written VJP and autodiff of the reference group them differently.
# Errors are measured relative to the largest entry of each field.
GRAD_RTOL = 1e-4


@pytest.fixture(params=["pure", "native"])
def impl(request, monkeypatch):
  if request.param == "native":
    if not _native.available():
      pytest.skip("the native kernel cannot be built here")
  else:
    monkeypatch.setattr(_native, "usable", lambda *args: False)
  return request.param


@pytest.fixture
def pure(monkeypatch):
  monkeypatch.setattr(_native, "usable", lambda *args: False)


def _every_size(seed, height, width, channels):
  """Log-uniform sizes from sub-pixel (σ 0.05) to wider than the image (σ 100)."""
  base = scene(seed, 80, height, width, channels, margin=0.3, scale=(0.05, 100.0))
  return base


SCENES = {
    "rgb_37x61": (lambda: scene(0, 150, 37, 61, 3), 37, 61),
    "grey_48x48": (lambda: scene(1, 120, 48, 48, 1), 48, 48),
    "rgba_37x61": (lambda: scene(2, 100, 37, 61, 4), 37, 61),
    "off_image": (lambda: scene(3, 160, 37, 61, 3, margin=0.6), 37, 61),
    "empty_regions": (lambda: scene(4, 60, 20, 24, 3, scale=(0.5, 2.0)), 64, 80),
    "large_and_thin": (lambda: large_and_thin_scene(5, 37, 61, 3), 37, 61),
    "every_size_29x83": (lambda: _every_size(6, 29, 83, 3), 29, 83),
}


def _image_and_vjp(render_fn):
  """jit of ``g, cotangent -> (render_fn(g), vjp(cotangent))``: one compilation."""

  @jax.jit
  def run(gaussians, cotangent):
    image, vjp = jax.vjp(render_fn, gaussians)
    return image, vjp(cotangent)[0]

  return run


def _assert_grads_close(actual, expected, truth=None):
  """Within GRAD_RTOL of the reference, or (given ``truth``) at least as close to it.

  ``truth``: a callable giving the float64 reference gradients, used only
  where the float32 reference itself is off (ill-conditioned Gaussians).
  """
  for i, (name, a, e) in enumerate(zip(gaussjax.Gaussians._fields, actual, expected)):
    scale = float(jnp.max(jnp.abs(e)))
    if truth is not None and float(jnp.max(jnp.abs(a - e))) > GRAD_RTOL * scale:
      t = np.asarray(truth()[i])
      reference_error = np.max(np.abs(np.asarray(e, np.float64) - t))
      actual_error = np.max(np.abs(np.asarray(a, np.float64) - t))
      assert actual_error <= reference_error + GRAD_RTOL * scale, name
    else:
      np.testing.assert_allclose(a, e, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale, err_msg=name)


def _reference_grads_float64(gaussians, height, width, cotangent):
  with jax.enable_x64(True):
    g64, ct64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                       (gaussians, cotangent))
    return jax.vjp(lambda g: render_reference(g, height, width), g64)[1](ct64)[0]


def _assert_image_close(actual, expected, gaussians):
  """Within IMAGE_ATOL of the reference, or at least as close to the float64 truth.

  For long thin tilted Gaussians the reference's conic form cancels in float32
  (errors ~1e-4, see test_ill_conditioned_as_accurate_as_reference); the XLA
  backend's cancellation-free form is closer to the truth there, so it may
  differ from the reference by the reference's own error.
  """
  error = float(jnp.max(jnp.abs(actual - expected)))
  if error > IMAGE_ATOL:
    height, width = actual.shape[:2]
    truth = render_float64(gaussians, height, width)
    reference_error = np.max(np.abs(np.asarray(expected, np.float64) - truth))
    assert np.max(np.abs(np.asarray(actual, np.float64) - truth)) <= reference_error + IMAGE_ATOL


def _xla_image(height, width, plan):
  def image(g):
    image, overflow = _xla.rasterize_xla(g, height, width, plan)
    return jnp.where(overflow, jnp.nan, image)

  return image


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_matches_reference(scene, impl):
  make, height, width = SCENES[scene]
  gaussians = make()
  channels = gaussians.channels
  plan = _xla.plan_xla(gaussians, height, width)
  cotangent = jax.random.normal(jax.random.key(7), (height, width, channels))
  actual_image, actual_grads = _image_and_vjp(_xla_image(height, width, plan))(
      gaussians, cotangent)
  expected_image, expected_grads = _image_and_vjp(
      lambda g: render_reference(g, height, width))(gaussians, cotangent)
  assert actual_image.shape == (height, width, channels)
  assert float(jnp.max(jnp.abs(expected_image))) > 0.1  # the scene is not blank
  _assert_image_close(actual_image, expected_image, gaussians)
  _assert_grads_close(actual_grads, expected_grads,
                      lambda: _reference_grads_float64(gaussians, height, width, cotangent))


def test_scenes_cover_the_cases(pure):
  # Every size: sub-pixel, image-wide and wholly off-image Gaussians all occur.
  g, height, width = SCENES["every_size_29x83"][0](), 29, 83
  side, _ = _xla._needs(g.means, g.chol, height, width)
  assert float(jnp.abs(g.chol).min()) < 0.1 and int(side.max()) == width
  assert int(jnp.sum(side == 0)) >= 3
  # Empty regions: the bottom-right of the 64x80 image has no Gaussian.
  image = render_reference(SCENES["empty_regions"][0](), 64, 80)
  assert float(jnp.abs(image[40:, 50:]).max()) == 0.0


def test_ill_conditioned_as_accurate_as_reference(impl):
  # For long thin diagonal Gaussians q cancels, so one ulp of the conic moves
  # the float32 image by ~1e-4 in any implementation (the reference included).
  # The XLA backend computes q without cancellation: it must be at least as
  # close to the float64 truth as the float32 reference is.
  height, width = 37, 61
  g = ill_conditioned_scene(6, height, width, 3)
  truth = render_float64(g, height, width)
  actual = np.asarray(gaussjax.render(g, height, width, backend="xla"), np.float64)
  expected = np.asarray(jax.jit(lambda g: render_reference(g, height, width))(g), np.float64)
  reference_error = np.max(np.abs(expected - truth))
  assert np.max(np.abs(actual - truth)) <= reference_error + IMAGE_ATOL


def test_render_dispatches_and_auto_is_xla_on_cpu():
  make, height, width = SCENES["rgb_37x61"]
  gaussians = make()
  actual = gaussjax.render(gaussians, height, width, backend="xla")
  expected = render_reference(gaussians, height, width)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=IMAGE_ATOL)
  if jax.default_backend() in ("cpu", "tpu"):
    assert _render.resolve_backend("auto") == "xla"


def test_default_plan_under_jit_and_grad(impl):
  # Under jit the values are unknown: render uses default_plan.
  make, height, width = SCENES["off_image"]
  gaussians = make()
  cotangent = jax.random.normal(jax.random.key(8), (height, width, 3))
  actual_image, actual_grads = _image_and_vjp(
      lambda g: gaussjax.render(g, height, width, backend="xla"))(gaussians, cotangent)
  expected_image, expected_grads = _image_and_vjp(
      lambda g: render_reference(g, height, width))(gaussians, cotangent)
  np.testing.assert_allclose(actual_image, expected_image, rtol=0, atol=IMAGE_ATOL)
  _assert_grads_close(actual_grads, expected_grads)


def test_too_small_plan_overflows_and_render_gives_nan(pure, monkeypatch):
  height, width = 48, 48
  g = scene(9, 20, height, width, 3, scale=(40.0, 60.0))  # all image-wide
  small = _xla.plan_xla(scene(9, 20, height, width, 3, scale=(0.5, 1.0)), height, width)
  _, overflow = _xla.rasterize_xla(g, height, width, small)
  assert bool(overflow)
  # A default plan with room for 2 image-wide Gaussians: render under jit
  # says so with NaN instead of returning a partial image.
  monkeypatch.setattr(_xla, "_DEFAULT_PIXELS", 2 * height * width)
  assert _xla.default_plan(20, height, width).capacities[-1] < 20
  jitted = jax.jit(lambda g: gaussjax.render(g, height, width, backend="xla"))(g)
  assert bool(jnp.isnan(jitted).all())
  # Concrete render plans from the values: exact.
  np.testing.assert_allclose(gaussjax.render(g, height, width, backend="xla"),
                             render_reference(g, height, width), rtol=0, atol=IMAGE_ATOL)


def test_over_capacity_overflows(pure):
  make, height, width = SCENES["rgb_37x61"]
  g = make()
  plan = _xla.plan_xla(g, height, width)
  shrunk = _xla.XlaPlan(plan.sizes, tuple(1 for _ in plan.sizes), tuple(1 for _ in plan.sizes))
  assert bool(_xla.rasterize_xla(g, height, width, shrunk)[1])
  assert not bool(_xla.rasterize_xla(g, height, width, plan)[1])


def test_plan_has_headroom_and_is_hashable(pure):
  make, height, width = SCENES["rgb_37x61"]
  g = make()
  plan = _xla.plan_xla(g, height, width)
  again = _xla.plan_xla(g, height, width)
  assert plan == again and hash(plan) == hash(again)
  # A few fitting steps' worth of change does not overflow.
  nudged = gaussjax.Gaussians(g.means + 0.3, g.chol * 1.05, g.colors)
  assert not bool(_xla.rasterize_xla(nudged, height, width, plan)[1])


def test_batched_plan_and_vmap_match_a_loop(impl):
  height, width = 37, 61
  batch = [scene(10 + i, 40, height, width, 3, scale=(0.5, 3.0 + 9 * i)) for i in range(2)]
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batch)
  plan = _xla.plan_xla(stacked, height, width)
  for g in batch:  # the batch plan fits every element
    assert not bool(_xla.rasterize_xla(g, height, width, plan)[1])
  images, overflow = jax.vmap(lambda g: _xla.rasterize_xla(g, height, width, plan))(stacked)
  assert not bool(overflow.any())
  # vmap(render) uses the default plan; on the pure path it is the same code
  # as above with other capacities, so it runs only where it is cheap.
  rendered = None
  if impl == "native":
    rendered = jax.vmap(lambda g: gaussjax.render(g, height, width, backend="xla"))(stacked)
  for i, g in enumerate(batch):
    expected = render_reference(g, height, width)
    np.testing.assert_allclose(images[i], expected, rtol=0, atol=IMAGE_ATOL)
    if rendered is not None:
      np.testing.assert_allclose(rendered[i], expected, rtol=0, atol=IMAGE_ATOL)


def test_deterministic(impl):
  make, height, width = SCENES["large_and_thin"]
  g = make()
  plan = _xla.plan_xla(g, height, width)
  cotangent = jax.random.normal(jax.random.key(11), (height, width, 3))
  run = _image_and_vjp(_xla_image(height, width, plan))
  first = jax.tree_util.tree_leaves(run(g, cotangent))
  second = jax.tree_util.tree_leaves(run(g, cotangent))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_jitted_step_does_not_recompile(impl):
  height, width = 37, 61
  g = scene(12, 80, height, width, 3)
  target = jnp.zeros((height, width, 3))
  plan = _xla.plan_xla(g, height, width)

  @jax.jit
  def step(g):
    def loss(g):
      image, overflow = _xla.rasterize_xla(g, height, width, plan)
      return jnp.mean((image - target) ** 2), overflow

    (value, overflow), grads = jax.value_and_grad(loss, has_aux=True)(g)
    return jax.tree_util.tree_map(lambda p, d: p - 10.0 * d, g, grads), value, overflow

  g, _, _ = step(g)
  g, _, overflow = step(g)
  assert not bool(overflow)
  assert step._cache_size() == 1


def test_empty_and_off_image_gaussians(impl):
  height, width = 16, 24
  off = gaussjax.Gaussians(jnp.asarray([[-50.0, 5.0], [10.0, 90.0]]), jnp.ones((2, 3)),
                           jnp.ones((2, 3)))
  image, overflow = _xla.rasterize_xla(off, height, width, _xla.plan_xla(off, height, width))
  assert not bool(overflow) and float(jnp.abs(image).max()) == 0.0
  none = gaussjax.Gaussians(jnp.zeros((0, 2)), jnp.zeros((0, 3)), jnp.zeros((0, 1)))
  image = gaussjax.render(none, height, width, backend="xla")
  assert image.shape == (height, width, 1) and float(jnp.abs(image).max()) == 0.0


def test_bad_plan_is_a_clear_error(pure):
  g = scene(0, 4, 8, 8, 3)
  with pytest.raises(TypeError, match="XlaPlan"):
    _xla.rasterize_xla(g, 8, 8, plan=(8, 16))
  with pytest.raises(ValueError, match="increasing"):
    _xla.XlaPlan((16, 8), (8, 8), (8, 8))


def test_native_threads_are_deterministic():
  # 5000 Gaussians: the native kernel splits the work over threads.
  if not _native.available():
    pytest.skip("the native kernel cannot be built here")
  height, width = 40, 72
  g = scene(13, 5000, height, width, 3, scale=(0.3, 4.0))
  cotangent = jax.random.normal(jax.random.key(14), (height, width, 3))
  run = _image_and_vjp(lambda g: _xla.rasterize_xla(g, height, width)[0])
  first = jax.tree_util.tree_leaves(run(g, cotangent))
  second = jax.tree_util.tree_leaves(run(g, cotangent))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  expected_image, expected_grads = _image_and_vjp(
      lambda g: render_reference(g, height, width))(g, cotangent)
  # 5000 terms per pixel: float32 rounding relative to the image's size.
  np.testing.assert_allclose(first[0], expected_image, rtol=0,
                             atol=IMAGE_ATOL * float(jnp.abs(expected_image).max()))
  # 5000 overlapping terms: the float32 reference's own rounding can exceed
  # the bound, so the float64 truth decides those elements.
  _assert_grads_close(run(g, cotangent)[1], expected_grads,
                      lambda: _reference_grads_float64(g, height, width, cotangent))


def test_native_batch_equals_each_image_alone():
  # Under vmap the kernel gets the whole batch in one call and runs its images
  # in parallel (one thread each); every image must come out bit-identical to
  # its own call: image and the kernel's gradients (5000 Gaussians: the lone
  # calls themselves use several threads).
  if not _native.available():
    pytest.skip("the native kernel cannot be built here")
  height, width = 24, 40
  scenes = [scene(20 + i, n, height, width, 3, scale=(0.3, 4.0))
            for i, n in enumerate((5000, 5000, 5000))]
  batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *scenes)
  cotangents = jax.random.normal(jax.random.key(30), (3, 3, height, width))

  def kernel(g, cotangent):
    shapes = _xla._shapes(g.chol)
    image, vjp = jax.vjp(lambda m, s, c: _native.splat(m, s, c, height, width),
                         g.means, shapes, g.colors)
    return image, vjp(jnp.transpose(cotangent, (1, 2, 0)))

  together = jax.jit(jax.vmap(kernel))(batch, cotangents)
  for i, g in enumerate(scenes):
    alone = jax.jit(kernel)(g, cotangents[i])
    for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(together)):
      np.testing.assert_array_equal(a, b[i])
  with pytest.raises(AssertionError):  # the check can fail: images differ
    np.testing.assert_array_equal(together[0][0], together[0][1])


def test_native_colour_transpose_equals_the_backward():
  # Differentiating the colours alone (the density events' colour solve) runs
  # the kernel's colour transpose, not the whole backward; it must give the
  # backward's colour gradient, alone and under vmap.
  if not _native.available():
    pytest.skip("the native kernel cannot be built here")
  height, width = 24, 40
  scenes = [scene(50 + i, 2000, height, width, 3, scale=(0.3, 4.0)) for i in range(2)]
  cotangents = jax.random.normal(jax.random.key(52), (2, height, width, 3))

  def colours_only(g, cotangent):
    shapes = _xla._shapes(g.chol)
    _, vjp = jax.vjp(lambda c: _native.splat(g.means, shapes, c, height, width), g.colors)
    return vjp(cotangent)[0]

  def everything(g, cotangent):
    shapes = _xla._shapes(g.chol)
    _, vjp = jax.vjp(lambda m, s, c: _native.splat(m, s, c, height, width),
                     g.means, shapes, g.colors)
    return vjp(cotangent)[2]

  lowered = jax.jit(colours_only).lower(scenes[0], cotangents[0]).as_text()
  assert "gaussjax_splat_color_grad" in lowered and "gaussjax_splat_backward" not in lowered
  for g, cotangent in zip(scenes, cotangents):
    np.testing.assert_allclose(jax.jit(colours_only)(g, cotangent),
                               jax.jit(everything)(g, cotangent), rtol=1e-6, atol=1e-6)
  batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *scenes)
  together = jax.jit(jax.vmap(colours_only))(batch, cotangents)
  for i, g in enumerate(scenes):
    np.testing.assert_array_equal(together[i], jax.jit(colours_only)(g, cotangents[i]))


def test_spans_wider_than_the_row_buffer(impl):
  # The native forward works on spans of at most 1024 pixels (the row buffer
  # of its backward) and blocks of 16: wide Gaussians on a 1300-pixel-wide,
  # 19-row image (two bands) cross both kinds of boundary.
  height, width = 19, 1300
  base = scene(40, 30, height, width, 2)
  chol = base.chol.at[:6].set(jnp.asarray(
      [[400.0, 0.0, 3.0], [900.0, 5.0, 4.0], [300.0, -200.0, 2.0], [600.0, 0.0, 20.0],
       [0.3, 0.0, 0.3], [1000.0, 0.0, 0.5]]))
  gaussians = gaussjax.Gaussians(base.means, chol, base.colors)
  actual = _xla_image(height, width, _xla.plan_xla(gaussians, height, width))(gaussians)
  expected = render_reference(gaussians, height, width)
  assert float(jnp.max(jnp.abs(expected[:, 1100:]))) > 0.1  # past the first 1024 columns
  _assert_image_close(actual, expected, gaussians)


def test_native_build_falls_back_cleanly(monkeypatch, tmp_path):
  monkeypatch.setenv("GAUSSJAX_CACHE", str(tmp_path))
  monkeypatch.setattr(_native.shutil, "which", lambda name: None)
  assert _native._build() is None
