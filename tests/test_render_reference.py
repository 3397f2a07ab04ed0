"""The reference renderer against an independent float64 NumPy evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_gaussians_np
from jax.test_util import check_grads

import gaussjax
from gaussjax import constants


def render_numpy(means, chol, colors, height, width):
  """The model of DESIGN.md / constants.py, one Gaussian at a time, float64."""
  ys, xs = np.mgrid[0:height, 0:width]
  px, py = xs + 0.5, ys + 0.5
  image = np.zeros((height, width, colors.shape[1]))
  for mean, (l11, l21, l22), color in zip(means, chol, colors):
    low = np.array([[l11, 0.0], [l21, l22]])
    sigma = low @ low.T + constants.COV_FLOOR * np.eye(2)
    inv = np.linalg.inv(sigma)
    d = np.stack([px - mean[0], py - mean[1]], -1)
    q = np.einsum("hwi,ij,hwj->hw", d, inv, d)
    weight = np.maximum(np.exp(-q / 2) - 1 / 255, 0.0) / (1 - 1 / 255)
    image += weight[..., None] * color
  return image


def _as_gaussians(means, chol, colors, dtype=jnp.float32):
  return gaussjax.Gaussians(jnp.asarray(means, dtype), jnp.asarray(chol, dtype), jnp.asarray(colors, dtype))


@pytest.mark.parametrize("height, width, channels, n", [(37, 61, 3, 40), (37, 61, 1, 25), (16, 9, 4, 12), (1, 1, 3, 3)])
def test_reference_equals_numpy(height, width, channels, n):
  rng = np.random.default_rng(height * 100 + channels)
  means, chol, colors = random_gaussians_np(rng, n, height, width, channels)
  expected = render_numpy(means, chol, colors, height, width)
  actual = gaussjax.render(_as_gaussians(means, chol, colors), height, width, backend="reference")
  assert actual.shape == (height, width, channels)
  # float32 exp and sums of ~n terms of magnitude <= 1: a few ulps of the sum.
  np.testing.assert_allclose(np.asarray(actual), expected, atol=2e-5 * max(n, 1) ** 0.5, rtol=1e-5)


def test_reference_float64_matches_tightly():
  rng = np.random.default_rng(5)
  means, chol, colors = random_gaussians_np(rng, 10, 12, 17, 3)
  with jax.enable_x64(True):
    actual = gaussjax.render_reference(_as_gaussians(means, chol, colors, jnp.float64), 12, 17)
    assert actual.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(actual), render_numpy(means, chol, colors, 12, 17), rtol=1e-12, atol=1e-12)


def test_support_is_cut_exactly():
  # One isotropic Gaussian (σ² = 1 - 1/12 + 1/12 = 1): zero where q >= CUTOFF_Q.
  s = np.sqrt(1.0 - constants.COV_FLOOR)
  g = _as_gaussians([[10.5, 10.5]], [[s, 0.0, s]], [[1.0]])
  image = np.asarray(gaussjax.render(g, 21, 21, backend="reference"))[..., 0]
  ys, xs = np.mgrid[0:21, 0:21]
  q = (xs + 0.5 - 10.5) ** 2 + (ys + 0.5 - 10.5) ** 2
  assert np.all(image[q >= constants.CUTOFF_Q] == 0.0)
  assert np.all(image[q < constants.CUTOFF_Q - 0.1] > 0.0)
  np.testing.assert_allclose(image[10, 10], 1.0, rtol=1e-6)  # the peak is the colour


def test_check_grads_float64():
  rng = np.random.default_rng(1)
  means, chol, colors = random_gaussians_np(rng, 6, 9, 11, 3)
  with jax.enable_x64(True):
    g = _as_gaussians(means, chol, colors, jnp.float64)
    cotangent = jnp.asarray(rng.normal(size=(9, 11, 3)))

    def f(g):
      return jnp.sum(gaussjax.render_reference(g, 9, 11) * cotangent)

    check_grads(f, (g,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
    check_grads(lambda g: gaussjax.render(g, 9, 11, backend="reference"), (g,), order=1, modes=["rev"])


def test_vmap_equals_loop():
  rng = np.random.default_rng(2)
  parts = [random_gaussians_np(rng, 8, 13, 15, 3) for _ in range(3)]
  batch = gaussjax.Gaussians(*(jnp.asarray(np.stack(f), jnp.float32) for f in zip(*parts)))
  batched = jax.vmap(lambda g: gaussjax.render(g, 13, 15, backend="reference"))(batch)
  for i, part in enumerate(parts):
    expected = gaussjax.render(_as_gaussians(*part), 13, 15, backend="reference")
    np.testing.assert_allclose(batched[i], expected, rtol=1e-6, atol=1e-6)


def test_jit_render():
  rng = np.random.default_rng(3)
  g = _as_gaussians(*random_gaussians_np(rng, 8, 10, 12, 1))
  f = jax.jit(lambda g: gaussjax.render(g, 10, 12, backend="reference"))
  np.testing.assert_allclose(f(g), gaussjax.render(g, 10, 12, backend="reference"), rtol=1e-6, atol=1e-6)


def test_other_size_samples_the_same_picture():
  # Fitted on 20x30; rendered at 40x45 the Gaussians are scaled by S = diag(1.5, 2).
  rng = np.random.default_rng(4)
  means, chol, colors = random_gaussians_np(rng, 10, 20, 30, 3)
  g = _as_gaussians(means, chol, colors)
  actual = gaussjax.render(g, 40, 45, backend="reference", source_size=(20, 30))
  scale = np.array([1.5, 2.0])
  expected = render_numpy(means * scale, chol * np.array([1.5, 2.0, 2.0]), colors, 40, 45)
  np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-4)
  # A 2x render, average-pooled, is close to the 1x render (up to the prefilter).
  big = np.asarray(gaussjax.render(_as_gaussians(means, np.abs(chol) + 1.0, colors), 40, 60,
                                   backend="reference", source_size=(20, 30)))
  small = np.asarray(gaussjax.render(_as_gaussians(means, np.abs(chol) + 1.0, colors), 20, 30, backend="reference"))
  pooled = big.reshape(20, 2, 30, 2, 3).mean((1, 3))
  assert np.abs(pooled - small).mean() < 0.02 * np.abs(small).mean() + 1e-3


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0, 5), {}, ValueError, "height=0 must be positive"),
        ((5, -1), {}, ValueError, "width=-1 must be positive"),
        ((5.0, 5), {}, TypeError, "height must be a Python int"),
        ((5, 5), {"backend": "cuda"}, ValueError, "unknown backend 'cuda'"),
        ((1 << 15, 1 << 15), {}, ValueError, "over the limit"),
    ],
)
def test_render_rejects_bad_arguments(args, kwargs, error, match):
  g = _as_gaussians(np.zeros((2, 2)), np.ones((2, 3)), np.ones((2, 3)))
  with pytest.raises(error, match=match):
    gaussjax.render(g, *args, **{"backend": "reference", **kwargs})


def test_reference_refuses_a_huge_dense_array():
  g = _as_gaussians(np.zeros((5000, 2)), np.ones((5000, 3)), np.ones((5000, 3)))
  with pytest.raises(ValueError, match="use backend='xla'"):
    gaussjax.render(g, 1024, 1024, backend="reference")


def test_render_rejects_a_batch():
  g = _as_gaussians(np.zeros((2, 4, 2)), np.ones((2, 4, 3)), np.ones((2, 4, 3)))
  with pytest.raises(ValueError, match="use jax.vmap"):
    gaussjax.render(g, 4, 4, backend="reference")
