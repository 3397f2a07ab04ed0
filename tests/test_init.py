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
  from gaussjax.fitting._init import _weight_matrix

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


# The per-segment loops that _split_largest and _merge_smallest replaced: O(N · H·W)
# and a dense [k - n, n] distance table. Kept here as oracles on small cases.
def _split_reference(labels, k, n, rng):
  from gaussjax.fitting._init import _moments

  labels = labels.copy()
  h, w = labels.shape
  ys, xs = np.mgrid[0:h, 0:w]
  while k < n:
    count, mean, cov = _moments(labels, k)
    order_key = count if rng is None else count + rng.uniform(0.0, 0.5, k)
    candidates = np.argsort(-order_key, kind="stable")
    candidates = candidates[count[candidates] >= 2][: n - k]
    for new_label, seg in enumerate(candidates, start=k):
      sxx, sxy, syy = cov[seg]
      angle = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
      mask = labels == seg
      proj = ((xs[mask] + 0.5 - mean[seg, 0]) * np.cos(angle)
              + (ys[mask] + 0.5 - mean[seg, 1]) * np.sin(angle))
      side = proj > 0
      if not side.any() or side.all():
        side = np.arange(side.size) >= side.size // 2
      sub = labels[mask]
      sub[side] = new_label
      labels[mask] = sub
    k += len(candidates)
  return labels


def _blocky_labels(rng, height, width, k):
  """Labels 0..k-1 of random rectangles of varied sizes (like SLIC output, with ties)."""
  labels = np.zeros((height, width), np.int64)
  for label in range(1, k):
    y, x = rng.integers(0, height), rng.integers(0, width)
    dy, dx = rng.integers(1, 9), rng.integers(1, 9)
    labels[y:y + dy, x:x + dx] = label
  _, labels = np.unique(labels, return_inverse=True)
  return labels.reshape(height, width)


@pytest.mark.parametrize("seed, n", [(0, 700), (1, 1900), (2, 1024)])
@pytest.mark.parametrize("tie_break", [False, True])
def test_split_largest_equals_per_segment_loop(seed, n, tie_break):
  from gaussjax.fitting._init import _split_largest

  rng = np.random.default_rng(seed)
  labels = _blocky_labels(rng, 40, 48, 300)
  k = int(labels.max()) + 1
  make_rng = (lambda: np.random.default_rng(7)) if tie_break else (lambda: None)
  actual, k_out = _split_largest(labels.copy(), k, n, make_rng())
  expected = _split_reference(labels, k, n, make_rng())
  assert k_out == n
  np.testing.assert_array_equal(actual, expected)


def test_split_largest_degenerate_axis_splits_by_raster_order(monkeypatch):
  # With the covariances zeroed, the axis is x and a one-column segment lies
  # on it: every pixel projects to 0, so both versions split it in raster order.
  from gaussjax.fitting import _init

  real = _init._moments

  def flat_moments(labels, k):
    count, mean, cov = real(labels, k)
    return count, mean, np.zeros_like(cov)

  monkeypatch.setattr(_init, "_moments", flat_moments)
  labels = np.repeat(np.arange(6)[None, :], 10, axis=0)  # six vertical stripes
  actual, _ = _init._split_largest(labels.copy(), 6, 40, None)
  expected = _split_reference(labels, 6, 40, None)
  np.testing.assert_array_equal(actual, expected)
  assert len(np.unique(actual)) == 40


@pytest.mark.parametrize("seed, fraction", [(0, 0.1), (1, 0.5), (2, 0.95)])
def test_merge_smallest_coarsens_to_exactly_n(seed, fraction):
  from gaussjax.fitting._init import _merge_smallest

  labels = _blocky_labels(np.random.default_rng(seed), 40, 48, 300)
  k = int(labels.max()) + 1
  n = int(fraction * k)
  merged = _merge_smallest(labels, k, n)
  assert merged.shape == labels.shape
  np.testing.assert_array_equal(np.unique(merged), np.arange(n))
  # A coarsening: each input segment lands whole in one output segment.
  pairs = np.unique(np.stack([labels.ravel(), merged.ravel()], 1), axis=0)
  np.testing.assert_array_equal(pairs[:, 0], np.arange(k))
  again = _merge_smallest(labels, k, n)
  np.testing.assert_array_equal(merged, again)


@pytest.mark.parametrize(
    "n, sizes", [(2500, (1, 2)), (2048, (2, 2)), (1000, (4, 8)), (300, (8, 16))])
def test_merge_smallest_pairs_neighbours_instead_of_piling_up(n, sizes):
  # Every pixel its own segment, as SLIC returns at ~70k segments on a Kodak
  # image. Merging the smallest into their nearest centroid in one pass piled
  # whole rows of pixels into one segment; pairing keeps the sizes even.
  from gaussjax.fitting._init import _merge_smallest, _moments

  merged = _merge_smallest(np.arange(64 * 64).reshape(64, 64), 64 * 64, n)
  count, _, cov = _moments(merged, n)
  assert (count.min(), count.max()) == sizes
  # Two-pixel segments are 4-neighbours (variance (1/2)² along their axis).
  np.testing.assert_allclose((cov[:, 0] + cov[:, 2])[count == 2], 0.25)


def test_init_slic_at_scale_merges_and_splits_without_all_pairs(kodak_crop):
  """N near the pixel count: SLIC gives every pixel a segment and 25k are merged.

  The dense merge needed a [25_536, 40_000, 2] float64 table (15 GiB) here; the
  split path is driven from one segment to 30k (30k full-image masks before).
  """
  from gaussjax.fitting._init import _split_largest

  image = np.tile(kodak_crop, (4, 4, 1))  # 256x256
  n = 40_000
  g = gaussjax.init_slic(image, n)
  assert g.num_gaussians == n
  assert np.all(np.isfinite(np.asarray(g.colors))) and np.all(np.isfinite(np.asarray(g.chol)))
  render = np.clip(np.asarray(gaussjax.render(g, 256, 256, backend="xla")), 0, 1)
  assert float(gaussjax.psnr(render, image)) > 30.0

  labels, k = _split_largest(np.zeros((256, 256), np.int64), 1, 30_000, None)
  count = np.bincount(labels.ravel())
  assert k == 30_000 and len(count) == 30_000 and count.min() >= 1
  # Halving the largest first keeps the segments even: 16384 of 4 pixels, then
  # 13616 of them halved.
  np.testing.assert_array_equal(np.bincount(count), [0, 0, 2 * 13_616, 0, 16_384 - 13_616])


def test_init_slic_asks_slic_again_when_it_overshoots(kodak_crop, monkeypatch):
  # At 3000 segments of a 64x64 image SLIC's grid step rounds to 1 pixel (4096
  # segments): init_slic asks for fewer, then splits the coarser answer up to n.
  from gaussjax.fitting import _init

  calls = []
  real = _init._slic_labels

  def recording(image, n_segments, compactness):
    labels, k = real(image, n_segments, compactness)
    calls.append((n_segments, k))
    return labels, k

  monkeypatch.setattr(_init, "_slic_labels", recording)
  g = gaussjax.init_slic(kodak_crop, 3000)
  assert g.num_gaussians == 3000
  assert calls[0] == (3000, 4096), calls
  assert len(calls) >= 2 and calls[1][0] < 3000 and calls[-1][1] <= 3000, calls
