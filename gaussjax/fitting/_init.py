"""Initialisation: random placement and SLIC superpixels."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
import scipy.spatial

from gaussjax import constants
from gaussjax.core._gaussians import Gaussians, rendered_covariance
from gaussjax.core._image import check_image
from gaussjax.rendering._render import _is_concrete

# init_slic: each segment's pixel covariance (plus the 1/12 px² of the pixel
# footprint) is multiplied by SLIC_COVER_SCALE² before it becomes a Gaussian.
# A square segment of side a has σ = 0.29 a, so s = 1 leaves gaps between
# neighbours. Measured (least-squares colours, 4 Kodak images at 1/4 size,
# n = 300 and 1000): initial PSNR 15.4 dB mean at s = 1.0, 18.4 at 1.2, 20.45
# at 1.6, 20.55 at 1.8-2.0 (flat past 1.6). 1.6 is within 0.1 dB of the best
# with smaller supports, which keeps the tile renderers' work down.
SLIC_COVER_SCALE = 1.6

# Ridge of the colour least-squares solve, relative to the mean diagonal of
# WᵀW: keeps the solve well posed where Gaussians overlap almost completely,
# pulling such colours towards the segment's mean colour.
SLIC_RIDGE = 1e-3

# The colour solve is Jacobi-preconditioned conjugate gradients, stopped at this
# residual relative to the right-hand side (a direct sparse solve fills in badly
# past ~10k Gaussians). At 1e-8 the colours match the direct solve to ~1e-6;
# times and PSNR in benchmarks/results/init_scale_cpu.md.
SLIC_SOLVE_RTOL = 1e-8
SLIC_SOLVE_MAX_ITERATIONS = 2000

# _merge_smallest pairs a segment with the nearest untouched one among this
# many nearest centroids (if all are taken, it waits for the next round).
_MERGE_NEIGHBOURS = 8

# When SLIC returns more than n segments, init_slic asks it again up to
# SLIC_RETRIES times for SLIC_RETRY_FACTOR · n / k times the last request, and
# keeps the first answer with at most n segments (then splits); if none has,
# it merges the first. Splitting a coarser grid starts higher than merging a
# finer one (benchmarks/results/init_scale_cpu.md, old vs new PSNR).
SLIC_RETRIES = 2
SLIC_RETRY_FACTOR = 0.95


def _check_positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive int")


def init_random(key: jax.Array, n: int, height: int, width: int, channels: int = 3) -> Gaussians:
  """N Gaussians at uniformly random positions with random colours.

  Each Gaussian is isotropic with a standard deviation of about half the mean
  spacing ``sqrt(H·W / n)``, so together they cover the image.

  Args:
    key: PRNG key.
    n: number of Gaussians.
    height: image rows.
    width: image columns.
    channels: colour channels.

  Returns:
    ``Gaussians`` with ``means [n, 2]``, ``chol [n, 3]``, ``colors [n, channels]``.
  """
  for name, value in (("n", n), ("height", height), ("width", width), ("channels", channels)):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")
  k_pos, k_col = jax.random.split(key)
  means = jax.random.uniform(k_pos, (n, 2)) * jnp.asarray([width, height], jnp.float32)
  sigma = 0.5 * math.sqrt(height * width / n)
  chol = jnp.tile(jnp.asarray([[sigma, 0.0, sigma]], jnp.float32), (n, 1))
  colors = jax.random.uniform(k_col, (n, channels)) * 0.5
  return Gaussians(means, chol, colors)


def _check_image(image) -> np.ndarray:
  if not _is_concrete(image):
    raise TypeError("init_slic runs on concrete arrays (NumPy); call it outside jit/vmap")
  return check_image(image, dtype=np.float64)


def _moments(labels: np.ndarray, k: int):
  """Per-segment pixel count, centroid ``[k, 2]`` (x, y) and covariance ``[k, 3]``."""
  h, w = labels.shape
  ys, xs = np.mgrid[0:h, 0:w]
  xs = xs.ravel() + 0.5
  ys = ys.ravel() + 0.5
  flat = labels.ravel()
  count = np.bincount(flat, minlength=k).astype(np.float64)
  safe = np.maximum(count, 1.0)
  mx = np.bincount(flat, xs, k) / safe
  my = np.bincount(flat, ys, k) / safe
  sxx = np.bincount(flat, xs * xs, k) / safe - mx * mx
  sxy = np.bincount(flat, xs * ys, k) / safe - mx * my
  syy = np.bincount(flat, ys * ys, k) / safe - my * my
  cov = np.stack([np.maximum(sxx, 0.0), sxy, np.maximum(syy, 0.0)], -1)
  return count, np.stack([mx, my], -1), cov


def _split_largest(labels: np.ndarray, k: int, n: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
  """Splits the largest segments across their principal axis until there are n.

  Each round splits up to ``n - k`` of the largest segments at once (so at
  most ``log2(n / k) + 1`` rounds), vectorised over pixels: O(H·W) per round.
  """
  h, w = labels.shape
  ys, xs = np.mgrid[0:h, 0:w]
  px = xs.ravel() + 0.5
  py = ys.ravel() + 0.5
  while k < n:
    count, mean, cov = _moments(labels, k)
    order_key = count if rng is None else count + rng.uniform(0.0, 0.5, k)  # random tie-break
    candidates = np.argsort(-order_key, kind="stable")
    candidates = candidates[count[candidates] >= 2][: n - k]
    if len(candidates) == 0:  # cannot happen when n <= H·W; guards an endless loop
      raise RuntimeError(f"cannot split {k} segments into {n}")
    # Principal axis of [[sxx, sxy], [sxy, syy]] per candidate (math, not
    # numpy, so that the angles do not depend on numpy's SIMD paths).
    axes = np.array([(math.cos(a), math.sin(a)) for a in
                     (0.5 * math.atan2(2.0 * sxy, sxx - syy) for sxx, sxy, syy in cov[candidates])])
    new_label = np.full(k, -1, np.int64)
    new_label[candidates] = np.arange(k, k + len(candidates))
    ax = np.zeros(k)
    ay = np.zeros(k)
    ax[candidates], ay[candidates] = axes[:, 0], axes[:, 1]
    flat = labels.ravel()
    pixel = np.flatnonzero(new_label[flat] >= 0)  # pixels of the candidates, raster order
    seg = flat[pixel]
    proj = (px[pixel] - mean[seg, 0]) * ax[seg] + (py[pixel] - mean[seg, 1]) * ay[seg]
    side = proj > 0
    # All pixels on one side of the axis (e.g. on it): split by raster order.
    positive = np.bincount(seg, side, k)
    degenerate = (positive == 0) | (positive == count)
    if degenerate[candidates].any():
      # Rank of each pixel within its segment, in raster order.
      sizes = count[np.sort(candidates)].astype(np.int64)
      first = np.cumsum(sizes) - sizes
      rank = np.empty(len(seg), np.int64)
      rank[np.argsort(seg, kind="stable")] = np.arange(len(seg)) - np.repeat(first, sizes)
      fix = degenerate[seg]
      side[fix] = rank[fix] >= count[seg[fix]].astype(np.int64) // 2
    flat = flat.copy()
    flat[pixel[side]] = new_label[seg[side]]
    labels = flat.reshape(h, w)
    k += len(candidates)
  return labels, k


def _merge_smallest(labels: np.ndarray, k: int, n: int) -> np.ndarray:
  """Merges segments in pairs, smallest first, until there are n.

  Each round walks the segments from the smallest (ties: lowest label) and
  merges each one not yet touched this round into its nearest (by centroid)
  untouched segment, until ``k - n`` merges are done, so a segment grows by at
  most one partner per round and many small segments never pile into one
  (at 35k-70k on a Kodak image SLIC returns up to every pixel as a segment).
  Nearest centroids come from a k-d tree: O(k log k + H·W) per round, and
  about ``log2(k / n) + 1`` rounds.
  """
  shape = labels.shape
  while k > n:
    count, mean, _ = _moments(labels, k)
    order = np.argsort(count, kind="stable")
    nearest = min(_MERGE_NEIGHBOURS + 1, k)
    _, index = scipy.spatial.cKDTree(mean).query(mean, k=nearest)
    index = index.reshape(k, nearest)
    # Neighbours by exact squared distance, then label (k-d tree order is not a tie-break).
    d2 = ((mean[:, None, :] - mean[index]) ** 2).sum(-1)
    d2[index == np.arange(k)[:, None]] = np.inf  # never itself
    rank = np.lexsort((index, d2), axis=-1)
    neighbours = np.take_along_axis(index, rank, -1).tolist()
    used = np.zeros(k, bool)
    target = np.arange(k)
    merges = 0
    for seg in order.tolist():
      if used[seg]:
        continue
      for other in neighbours[seg]:
        if other != seg and not used[other]:
          used[seg] = used[other] = True
          target[seg] = other
          merges += 1
          break
      if merges == k - n:
        break
    _, labels = np.unique(target[labels], return_inverse=True)  # relabel 0..k'-1
    labels = labels.reshape(shape)
    k -= merges
  return labels


def _slic_labels(image: np.ndarray, n_segments: int, compactness: float) -> tuple[np.ndarray, int]:
  """SLIC labels ``[H, W]`` relabelled 0..k-1, and k."""
  from skimage.segmentation import slic  # scikit-image is slow to import

  height, width, channels = image.shape
  if channels == 3:
    labels = slic(image, n_segments=n_segments, compactness=compactness, start_label=0,
                  convert2lab=True, channel_axis=-1)
  elif channels == 1:
    labels = slic(image[..., 0] * 100.0, n_segments=n_segments, compactness=compactness,
                  start_label=0, channel_axis=None)
  else:
    labels = slic(image * 100.0, n_segments=n_segments, compactness=compactness, start_label=0,
                  convert2lab=False, channel_axis=-1)
  # Relabel to 0..k-1 (SLIC can leave gaps after enforcing connectivity).
  _, labels = np.unique(np.asarray(labels, np.int64), return_inverse=True)
  labels = labels.reshape(height, width)
  return labels, int(labels.max()) + 1


def _weight_matrix(means: np.ndarray, chol: np.ndarray, height: int, width: int) -> scipy.sparse.csr_matrix:
  """The sparse ``[H·W, N]`` matrix of rendering weights ``w_i(p)`` (float64).

  The formula of ``gaussjax.constants``, evaluated only inside each Gaussian's
  support box: ``render(g) = W @ colors`` exactly.
  """
  sxx, sxy, syy, det = rendered_covariance(chol)  # the model's covariance, in float64 here
  a, b, c = syy / det, -sxy / det, sxx / det
  rx = np.sqrt(constants.CUTOFF_Q * sxx)
  ry = np.sqrt(constants.CUTOFF_Q * syy)
  x0 = np.clip(np.floor(means[:, 0] - rx - 0.5), 0, width - 1).astype(np.int64)
  x1 = np.clip(np.ceil(means[:, 0] + rx - 0.5), 0, width - 1).astype(np.int64)
  y0 = np.clip(np.floor(means[:, 1] - ry - 0.5), 0, height - 1).astype(np.int64)
  y1 = np.clip(np.ceil(means[:, 1] + ry - 0.5), 0, height - 1).astype(np.int64)
  bw, bh = x1 - x0 + 1, y1 - y0 + 1
  sizes = bw * bh
  gid = np.repeat(np.arange(len(means), dtype=np.int32), sizes)
  local = np.arange(sizes.sum(), dtype=np.int32) - np.repeat((np.cumsum(sizes) - sizes).astype(np.int32), sizes)
  row, col = np.divmod(local, bw.astype(np.int32)[gid])
  py = y0.astype(np.int32)[gid] + row
  px = x0.astype(np.int32)[gid] + col
  dx = px + (0.5 - means[:, 0])[gid]
  dy = py + (0.5 - means[:, 1])[gid]
  q = a[gid] * dx * dx + (2.0 * b)[gid] * dx * dy + c[gid] * dy * dy
  keep = q < constants.CUTOFF_Q  # where the weight is positive
  weight = np.maximum(np.exp(-0.5 * q[keep]) - constants.WEIGHT_CUTOFF, 0.0) * constants.WEIGHT_SCALE
  return scipy.sparse.csr_matrix(
      (weight, (py[keep] * width + px[keep], gid[keep])), shape=(height * width, len(means)))


def _solve_colors(weights, pixels: np.ndarray, prior: np.ndarray) -> np.ndarray:
  """Least-squares colours ``argmin ||W c - I||² + λ ||c - prior||²``.

  The normal equations ``(WᵀW + λI) c = Wᵀ I + λ prior`` are symmetric
  positive definite: Jacobi-preconditioned conjugate gradients from ``prior``,
  all channels at once, in a fixed order of operations (deterministic).
  """
  gram = (weights.T @ weights).tocsr()
  diag = gram.diagonal()
  lam = SLIC_RIDGE * max(float(diag.mean()), 1e-12)
  system = gram + lam * scipy.sparse.identity(gram.shape[0], format="csr")
  rhs = weights.T @ pixels + lam * prior
  inverse_diag = 1.0 / (diag + lam)[:, None]
  x = prior.astype(np.float64).copy()
  r = rhs - system @ x
  z = inverse_diag * r
  p = z.copy()
  rz = (r * z).sum(0)
  goal = SLIC_SOLVE_RTOL * np.linalg.norm(rhs, axis=0)
  for _ in range(SLIC_SOLVE_MAX_ITERATIONS):
    active = np.linalg.norm(r, axis=0) > goal
    if not active.any():
      break
    ap = system @ p
    alpha = np.where(active, rz / np.where(active, (p * ap).sum(0), 1.0), 0.0)
    x += alpha * p
    r -= alpha * ap
    z = inverse_diag * r
    rz_new = (r * z).sum(0)
    p = z + np.where(active, rz_new / np.where(rz > 0, rz, 1.0), 0.0) * p
    rz = rz_new
  return x


def init_slic(
    image,
    n: int,
    *,
    key: jax.Array | None = None,
    compactness: float = 10.0,
    cover_scale: float = SLIC_COVER_SCALE,
    solve_colors: bool = True,
) -> Gaussians:
  """Exactly ``n`` Gaussians from SLIC superpixels of ``image``.

  1. ``skimage.segmentation.slic`` with ``n_segments=n`` (in CIELAB for RGB;
     other channel counts are scaled to the same 0-100 range, so
     ``compactness`` means the same for grey and RGBA). SLIC's grid step is a
     whole number of pixels, so it can return many more than n segments (every
     pixel one, near the pixel count); then it is asked again for fewer.
  2. SLIC returns about, not exactly, n segments: the largest segments are
     split across their principal axis until there are n; if there are still
     too many, segments are merged in pairs, smallest first, each with its
     nearest (by centroid) partner. Both run in O(H·W) per round, about
     ``log2`` of the ratio rounds: bounded time and memory at any n.
  3. Per segment (``numpy.bincount``): centroid → mean; pixel covariance plus
     the 1/12 px² pixel footprint, times ``cover_scale²`` → Cholesky factor.
  4. Colours: rendering is an unnormalised sum, so the colours are the
     least-squares solution of ``render(g) ≈ image`` for these fixed shapes
     (sparse, ridge-regularised towards the segment mean colour; conjugate
     gradients on the normal equations). With
     ``solve_colors=False`` the mean colour of each segment is used, divided
     by the mean total weight: faster, but a lower initial PSNR.

  Runs in NumPy/SciPy on concrete arrays (not under ``jit``).

  Args:
    image: ``[H, W, C]`` (or ``[H, W]``) float image in [0, 1], any C.
    n: number of Gaussians, ``1 <= n <= H·W``.
    key: optional PRNG key. SLIC itself is deterministic; the key only breaks
      ties between equal-sized segments when choosing which to split. With
      ``None`` ties go to the lowest label. The result is a function of
      ``(image, n, key, options)``.
    compactness: SLIC's balance of colour and space (higher: squarer
      segments), in CIELAB units.
    cover_scale: multiplies each segment's standard deviations.
    solve_colors: least-squares colours (default) or scaled mean colours.

  Returns:
    ``Gaussians`` with ``means [n, 2]``, ``chol [n, 3]``, ``colors [n, C]``,
    float32.

  Examples:
    >>> import numpy as np, gaussjax
    >>> image = np.random.default_rng(0).random((32, 40, 3), np.float32)
    >>> gaussjax.init_slic(image, 37).num_gaussians
    37
  """
  array = _check_image(image)
  height, width, channels = array.shape
  _check_positive_int("n", n)
  n = int(n)
  if n > height * width:
    raise ValueError(f"{n=} Gaussians is more than the {height}x{width} = {height * width} pixels")
  if not (isinstance(compactness, (int, float)) and compactness > 0):
    raise ValueError(f"{compactness=} must be a positive number")
  if not (isinstance(cover_scale, (int, float)) and cover_scale > 0):
    raise ValueError(f"{cover_scale=} must be a positive number")
  rng = None
  if key is not None:
    seed = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    rng = np.random.default_rng(seed.astype(np.uint32).ravel().tolist())

  clipped = np.clip(array, 0.0, 1.0)
  labels, k = _slic_labels(clipped, n, compactness)
  # SLIC's grid step is a whole number of pixels, so past ~10k segments on a
  # Kodak image it jumps (43k then 98k segments on kodim23). Splitting a
  # coarser grid beats merging a finer one, so ask again for fewer.
  request, k_request = n, k
  for _ in range(SLIC_RETRIES):
    if k <= n:
      break
    request = max(1, int(request * SLIC_RETRY_FACTOR * n / k_request))
    coarser, k_request = _slic_labels(clipped, request, compactness)
    if k_request <= n:
      labels, k = coarser, k_request
  if k < n:
    labels, k = _split_largest(labels, k, n, rng)
  elif k > n:
    labels = _merge_smallest(labels, k, n)
    k = n

  count, means, cov = _moments(labels, n)
  s2 = float(cover_scale) ** 2
  sxx = s2 * (cov[:, 0] + 1.0 / 12.0)
  sxy = s2 * cov[:, 1]
  syy = s2 * (cov[:, 2] + 1.0 / 12.0)
  l11 = np.sqrt(sxx)
  l21 = sxy / l11
  l22 = np.sqrt(np.maximum(syy - l21 * l21, 1e-6))
  chol = np.stack([l11, l21, l22], -1)

  pixels = array.reshape(-1, channels)
  flat = labels.ravel()
  mean_color = np.stack(
      [np.bincount(flat, pixels[:, c], n) for c in range(channels)], -1) / np.maximum(count, 1.0)[:, None]
  weights = _weight_matrix(means, chol, height, width)
  coverage = max(float(weights.sum()) / (height * width), 1e-6)
  prior = mean_color / coverage
  colors = _solve_colors(weights, pixels, prior) if solve_colors else prior
  return Gaussians(
      jnp.asarray(means, jnp.float32), jnp.asarray(chol, jnp.float32), jnp.asarray(colors, jnp.float32))
