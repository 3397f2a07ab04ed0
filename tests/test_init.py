"""init_random and init_slic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussjax


def test_init_random_shapes_and_determinism():
  g = gaussjax.init_random(jax.random.key(0), 50, 20, 30, 4)
  assert (g.means.shape, g.chol.shape, g.colors.shape) == ((50, 2), (50, 3), (50, 4))
  assert np.all((g.means >= 0) & (g.means <= np.array([30, 20])))
  again = gaussjax.init_random(jax.random.key(0), 50, 20, 30, 4)
  other = gaussjax.init_random(jax.random.key(1), 50, 20, 30, 4)
  np.testing.assert_array_equal(g.means, again.means)
  assert not np.array_equal(g.means, other.means)


@pytest.mark.parametrize("n", [1, 7, 64, 150, 333, 1000])
def test_init_slic_returns_exactly_n(kodak_crop, n):
  g = gaussjax.init_slic(kodak_crop, n)
  assert g.num_gaussians == n
  assert g.colors.shape == (n, 3)
  assert all(x.dtype == jnp.float32 for x in g)
  assert np.all(np.isfinite(np.asarray(g.chol))) and np.all(np.isfinite(np.asarray(g.colors)))
  # Every mean is inside the image (centroids of pixel sets).
  assert np.all((g.means > 0) & (g.means < 64))


def test_init_slic_every_pixel_can_be_its_own_gaussian():
  image = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
  g = gaussjax.init_slic(image, 30)
  assert g.num_gaussians == 30
  # One Gaussian per pixel: each mean is a pixel centre.
  np.testing.assert_array_equal(np.sort(np.asarray(g.means[:, 0]) % 1), np.full(30, 0.5))


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("height, width", [(37, 61), (64, 64)])
def test_init_slic_channels_and_sizes(kodak_crop, channels, height, width):
  base = kodak_crop[:height, :width]
  image = {1: base.mean(-1, keepdims=True), 3: base, 4: np.concatenate([base, base[..., :1]], -1)}[channels]
  g = gaussjax.init_slic(image, 40)
  assert g.num_gaussians == 40 and g.channels == channels
  render = np.clip(np.asarray(gaussjax.render(g, height, width, backend="reference")), 0, 1)
  # The least-squares colours reproduce the picture coarsely already.
  assert float(gaussjax.psnr(render, image)) > 17.0


def test_init_slic_accepts_2d_grey():
  image = np.random.default_rng(0).random((20, 24)).astype(np.float32)
  assert gaussjax.init_slic(image, 10).channels == 1


def test_init_slic_is_deterministic(kodak_crop):
  a = gaussjax.init_slic(kodak_crop, 77, key=jax.random.key(3))
  b = gaussjax.init_slic(kodak_crop, 77, key=jax.random.key(3))
  c = gaussjax.init_slic(kodak_crop, 77)
  d = gaussjax.init_slic(kodak_crop, 77)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(c, d):
    np.testing.assert_array_equal(x, y)


def test_init_slic_starts_ahead_of_random(kodak_crop):
  """SLIC with least-squares colours beats random init and mean colours."""
  n = 100

  def initial_psnr(g):
    return float(gaussjax.psnr(np.clip(gaussjax.render(g, 64, 64, backend="reference"), 0, 1), kodak_crop))

  slic = initial_psnr(gaussjax.init_slic(kodak_crop, n))
  slic_mean = initial_psnr(gaussjax.init_slic(kodak_crop, n, solve_colors=False))
  random = initial_psnr(gaussjax.init_random(jax.random.key(0), n, 64, 64, 3))
  assert slic > random + 5.0, (slic, random)
  assert slic > slic_mean + 1.0, (slic, slic_mean)


def test_init_slic_colours_are_least_squares(kodak_crop):
  # At the solution, the residual is orthogonal to every Gaussian's weight map
  # (up to the small ridge): no single colour change lowers the error.
  from gaussjax._init import _weight_matrix

  g = gaussjax.init_slic(kodak_crop, 50)
  w = _weight_matrix(np.asarray(g.means, np.float64), np.asarray(g.chol, np.float64), 64, 64)
  residual = w @ np.asarray(g.colors, np.float64) - kodak_crop.reshape(-1, 3)
  grad = w.T @ residual
  scale = np.sqrt(w.multiply(w).sum(0)).A.ravel()[:, None] * np.linalg.norm(residual)
  assert np.max(np.abs(grad) / scale) < 0.05


@pytest.mark.parametrize(
    "image, n, kwargs, error, match",
    [
        (np.zeros((8, 8, 3), np.float32), 65, {}, ValueError, "more than the 8x8"),
        (np.zeros((8, 8, 3), np.float32), 0, {}, ValueError, "n=0 must be a positive int"),
        (np.zeros((8, 8, 3), np.float32), 2.5, {}, ValueError, "n=2.5"),
        (np.zeros((8, 8, 3), np.uint8), 4, {}, TypeError, "floating point"),
        (np.full((8, 8, 3), np.nan, np.float32), 4, {}, ValueError, "NaN"),
        (np.zeros((2, 8, 8, 3), np.float32), 4, {}, ValueError, r"must be \[H, W, C\]"),
        (np.zeros((8, 8, 3), np.float32), 4, {"compactness": -1.0}, ValueError, "compactness"),
    ],
)
def test_init_slic_rejects_bad_input(image, n, kwargs, error, match):
  with pytest.raises(error, match=match):
    gaussjax.init_slic(image, n, **kwargs)


@pytest.mark.parametrize("n, height, width", [(0, 4, 4), (3, 0, 4), (3, 4, -2)])
def test_init_random_rejects_bad_sizes(n, height, width):
  with pytest.raises(ValueError, match="must be a positive int"):
    gaussjax.init_random(jax.random.key(0), n, height, width)


def test_init_slic_refuses_traced_input():
  with pytest.raises(TypeError, match="outside jit"):
    jax.jit(lambda x: gaussjax.init_slic(x, 3))(np.zeros((4, 4, 3), np.float32))
