"""The Pallas backend against the reference renderer.

On a machine without a GPU the kernels run in Pallas interpret mode (the same
kernel bodies, evaluated by XLA on the CPU); ``test_exports_for_cuda`` lowers
the compiled (Triton) kernels for CUDA so that CPU-only CI catches a kernel the
Triton lowering rejects. Images stay small: interpret mode is slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ill_conditioned_scene, large_and_thin_scene, render_float64, scene

import gaussjax
from gaussjax import constants
from gaussjax.kernels import rasterize as kernels
from gaussjax.rendering import _pallas, _render
from gaussjax.rendering._render import render_reference

# float32 images: each pixel sums ≤ 200 terms of size ≤ ~2 in a different
# order than the reference einsum, so agreement is a few ulps of the sum.
IMAGE_ATOL = 1e-5
# Gradients are sums over up to H·W pixels of products of float32 terms; the
# kernel and autodiff of the reference group them differently. Errors are
# measured relative to the largest entry of each field.
GRAD_RTOL = 1e-4


def _clustered(seed, height, width, channels):
  """Small Gaussians in the top-left corner only: most tiles are empty."""
  del height, width
  return scene(seed, 60, 20, 24, channels, scale=(0.5, 2.0))


# Each scene costs one interpret-mode compilation of both kernels, so the
# cases are combined: every scene has a size that is not a multiple of 16.
SCENES = {
    # Partly and wholly off-image Gaussians, RGB.
    "off_image_rgb_37x61": (lambda: scene(3, 160, 37, 61, 3, margin=0.6), 37, 61),
    # Empty tiles, one channel.
    "empty_tiles_grey_40x72": (lambda: _clustered(4, 40, 72, 1), 40, 72),
    # Very large and very thin Gaussians, four channels.
    "large_and_thin_rgba_37x61": (lambda: large_and_thin_scene(5, 37, 61, 4), 37, 61),
}


def _image_and_vjp(render_fn, height, width, channels):
  """jit of ``g, cotangent -> (render_fn(g), vjp(cotangent))``: one compilation."""

  @jax.jit
  def run(gaussians, cotangent):
    image, vjp = jax.vjp(render_fn, gaussians)
    return image, vjp(cotangent)[0]

  return run


def _assert_grads_close(actual, expected):
  for name, a, e in zip(gaussjax.Gaussians._fields, actual, expected):
    scale = float(jnp.max(jnp.abs(e)))
    np.testing.assert_allclose(a, e, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale, err_msg=name)


@pytest.mark.parametrize("scene", sorted(SCENES))
def test_matches_reference(scene):
  make, height, width = SCENES[scene]
  gaussians = make()
  channels = gaussians.channels
  plan = _pallas.plan_pallas(gaussians, height, width)
  cotangent = jax.random.normal(jax.random.key(7), (height, width, channels))

  def pallas_image(g):
    image, overflow = _pallas.rasterize_pallas(g, height, width, plan)
    return jnp.where(overflow, jnp.nan, image)

  actual_image, actual_grads = _image_and_vjp(pallas_image, height, width, channels)(
      gaussians, cotangent)
  expected_image, expected_grads = _image_and_vjp(
      lambda g: render_reference(g, height, width), height, width, channels)(gaussians, cotangent)
  assert actual_image.shape == (height, width, channels)
  assert float(jnp.max(jnp.abs(expected_image))) > 0.1  # the scene is not blank
  np.testing.assert_allclose(actual_image, expected_image, rtol=0, atol=IMAGE_ATOL)
  _assert_grads_close(actual_grads, expected_grads)


def test_ill_conditioned_as_accurate_as_reference():
  # For long thin diagonal Gaussians q = a dx² + 2b dx dy + c dy² cancels, so
  # one ulp of the conic moves the float32 image by ~1e-4 in any
  # implementation (the reference included). Require the kernel to be as close
  # to the float64 truth as the float32 reference is.
  height, width = 37, 61
  g = ill_conditioned_scene(6, height, width, 3)
  truth = render_float64(g, height, width)
  actual = np.asarray(_pallas.rasterize_pallas(g, height, width)[0], np.float64)
  expected = np.asarray(jax.jit(lambda g: render_reference(g, height, width))(g), np.float64)
  reference_error = np.max(np.abs(expected - truth))
  assert np.max(np.abs(actual - truth)) <= 2 * reference_error + IMAGE_ATOL


def _tiles_touched(gaussians, height, width, tile=16):
  """numpy: the tile rectangles that each Gaussian's cut-off box covers (or None)."""
  means, chol = np.asarray(gaussians.means, np.float64), np.asarray(gaussians.chol, np.float64)
  radius = np.sqrt(constants.CUTOFF_Q * np.stack(
      [chol[:, 0] ** 2, chol[:, 1] ** 2 + chol[:, 2] ** 2], -1) + constants.CUTOFF_Q
                   * constants.COV_FLOOR)
  lo, hi = means - radius - 0.5, means + radius - 0.5
  limit = np.asarray([width - 1, height - 1])
  boxes = []
  for lo_i, hi_i in zip(lo, hi):
    if np.any(hi_i < 0) or np.any(lo_i > limit):
      boxes.append(None)
    else:
      boxes.append((np.clip(lo_i, 0, limit) // tile, np.clip(hi_i, 0, limit) // tile))
  return boxes


def test_scenes_cover_the_cases():
  g = SCENES["off_image_rgb_37x61"][0]()
  boxes = _tiles_touched(g, 37, 61)
  assert sum(box is None for box in boxes) > 10  # wholly off the image
  partly = [(m < 0).any() or m[0] > 61 or m[1] > 37 for m, box in zip(np.asarray(g.means), boxes)
            if box is not None]
  assert sum(partly) > 10  # centre off the image, footprint partly on it
  g = SCENES["empty_tiles_grey_40x72"][0]()
  used = np.zeros((3, 5), bool)
  for (x0, y0), (x1, y1) in filter(None, _tiles_touched(g, 40, 72)):
    used[int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
  assert np.sum(~used) >= 8
  g = SCENES["large_and_thin_rgba_37x61"][0]()
  axes = np.linalg.eigvalsh(np.asarray(gaussjax.covariances(g.chol)))
  assert axes[:, 1].max() > 1e5 and axes[:, 0].min() < 1e-3


def test_render_dispatches_to_pallas():
  make, height, width = SCENES["off_image_rgb_37x61"]
  gaussians = make()
  actual = gaussjax.render(gaussians, height, width, backend="pallas")
  expected = render_reference(gaussians, height, width)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=IMAGE_ATOL)


def test_auto_picks_pallas_on_gpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _render.resolve_backend("auto") == "pallas"


def test_tile_overflow_is_reported_and_replanning_fixes_it():
  # 100 small Gaussians in one 16x16 tile: more than the smallest tile capacity.
  height, width = 37, 61
  g = scene(8, 100, 12, 12, 3, scale=(0.5, 1.5))
  tight = _pallas.PallasPlan(pair_capacity=4096, tile_capacity=32)
  _, overflow = _pallas.rasterize_pallas(g, height, width, tight)
  assert bool(overflow)
  plan = _pallas.plan_pallas(g, height, width)
  assert plan.tile_capacity >= 100
  image, overflow = _pallas.rasterize_pallas(g, height, width, plan)
  assert not bool(overflow)
  np.testing.assert_allclose(image, render_reference(g, height, width), rtol=0, atol=IMAGE_ATOL)


def test_pair_overflow_is_reported():
  make, height, width = SCENES["off_image_rgb_37x61"]
  g = make()
  plan = _pallas.plan_pallas(g, height, width)
  small = _pallas.PallasPlan(pair_capacity=plan.pair_capacity // 4,
                             tile_capacity=plan.tile_capacity)
  _, overflow = _pallas.rasterize_pallas(g, height, width, small)
  assert bool(overflow)


def test_render_under_jit_fills_nan_on_overflow():
  # 60 Gaussians covering every one of 30 tiles need 1800 pairs, over the
  # default plan (made from N and the size only); concrete render plans from
  # the values instead.
  height, width = 80, 96
  g = scene(9, 60, height, width, 3, scale=(60.0, 80.0))
  assert _pallas.default_plan(60, height, width).pair_capacity < 1800
  jitted = jax.jit(lambda g: gaussjax.render(g, height, width, backend="pallas"))(g)
  assert bool(jnp.all(jnp.isnan(jitted)))
  eager = gaussjax.render(g, height, width, backend="pallas")
  np.testing.assert_allclose(eager, render_reference(g, height, width), rtol=0, atol=IMAGE_ATOL)


def test_vmap_and_vmap_grad():
  height, width, channels = 37, 61, 3
  batch = [scene(10 + i, 60, height, width, channels) for i in range(2)]
  stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batch)
  plan = _pallas.plan_pallas(stacked, height, width)
  target = jax.random.uniform(jax.random.key(3), (height, width, channels))

  def image_and_grad(render_fn):
    # vmap of (image, grad of a loss): one compilation covers vmap and vmap(grad).
    def one(g):
      loss = lambda g: jnp.mean((render_fn(g)[0] - target) ** 2)
      return render_fn(g), jax.grad(loss)(g)
    return jax.jit(jax.vmap(one))

  (images, overflow), actual = image_and_grad(
      lambda g: _pallas.rasterize_pallas(g, height, width, plan))(stacked)
  (expected_images, _), expected = image_and_grad(
      lambda g: (render_reference(g, height, width), None))(stacked)
  assert images.shape == (2, height, width, channels)
  assert overflow.shape == (2,) and not bool(jnp.any(overflow))
  for i in range(len(batch)):
    np.testing.assert_allclose(images[i], expected_images[i], rtol=0, atol=IMAGE_ATOL)
    _assert_grads_close(jax.tree_util.tree_map(lambda x: x[i], actual),
                        jax.tree_util.tree_map(lambda x: x[i], expected))


def test_no_gaussians():
  g = gaussjax.Gaussians(jnp.zeros((0, 2)), jnp.zeros((0, 3)), jnp.zeros((0, 3)))
  image, overflow = _pallas.rasterize_pallas(g, 20, 24, _pallas.plan_pallas(g, 20, 24))
  assert image.shape == (20, 24, 3) and not bool(jnp.any(image)) and not bool(overflow)


def test_optax_step_matches_reference():
  height, width = 37, 61
  g = scene(11, 80, height, width, 3)
  target = jax.random.uniform(jax.random.key(4), (height, width, 3))
  optimizer = optax.sgd(0.5)

  def make_step(backend):
    @jax.jit
    def step(g, state):
      loss, grads = jax.value_and_grad(
          lambda g: jnp.mean((gaussjax.render(g, height, width, backend=backend) - target) ** 2))(g)
      updates, state = optimizer.update(grads, state, g)
      return optax.apply_updates(g, updates), state, loss
    return step

  results = {}
  for backend in ("pallas", "reference"):
    params, state = g, optimizer.init(g)
    losses = []
    step = make_step(backend)
    for _ in range(2):
      params, state, loss = step(params, state)
      losses.append(float(loss))
    results[backend] = params, losses
  assert results["pallas"][1][1] < results["pallas"][1][0]
  np.testing.assert_allclose(results["pallas"][1], results["reference"][1], rtol=1e-5)
  for a, e in zip(results["pallas"][0], results["reference"][0]):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_gradients_are_bitwise_reproducible():
  make, height, width = SCENES["large_and_thin_rgba_37x61"]
  g = make()
  cotangent = jax.random.normal(jax.random.key(5), (height, width, g.channels))
  plan = _pallas.plan_pallas(g, height, width)
  grad = jax.jit(jax.grad(
      lambda g: jnp.sum(_pallas.rasterize_pallas(g, height, width, plan)[0] * cotangent)))
  first = jax.device_get(grad(g))
  second = jax.device_get(grad(g))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


def test_exports_for_cuda():
  """jit(render), jit(grad(loss)) and vmap(grad) pass the Triton lowering for CUDA."""
  height, width = 37, 61
  g = scene(12, 50, height, width, 3)

  def forward(g):
    return gaussjax.render(g, height, width, backend="pallas")

  def loss(g):
    return jnp.sum(forward(g) ** 2)

  batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), g)
  disabled = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  with _pallas.interpret_mode(False):
    for fn, args in ((forward, g), (jax.grad(loss), g), (jax.vmap(jax.grad(loss)), batch)):
      exported = jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=disabled)(args)
      text = exported.mlir_module()
      assert text.count("__gpu$xla.gpu.triton") >= (2 if fn is not forward else 1)
      assert "mosaic" not in text.lower()


def test_bad_input():
  g = scene(0, 10, 16, 16, 3)
  with pytest.raises(TypeError, match="PallasPlan"):
    _pallas.rasterize_pallas(g, 16, 16, plan=(1024, 32))
  with pytest.raises(ValueError, match="vmap"):
    _pallas.rasterize_pallas(jax.tree_util.tree_map(lambda x: x[None], g), 16, 16)
  with pytest.raises(ValueError, match="height"):
    _pallas.rasterize_pallas(g, 0, 16)
  with pytest.raises(ValueError, match="tile_capacity"):
    _pallas.PallasPlan(pair_capacity=1024, tile_capacity=48)
  with pytest.raises(ValueError, match="block"):
    kernels.RasterizeConfig(block=24)
