"""The portable fast rasteriser (``backend="xla"``): size classes on XLA.

Call chain::

  plan_xla(gaussians, H, W)            host, numpy: window classes and capacities
  rasterize_xla(gaussians, H, W, plan) -> (image, overflow)
    ├─ _native.splat  on CPU, where the native kernel builds (``_splat.cc``
    │                 through jax.ffi): each Gaussian on its own support, no
    │                 plan needed, never overflows; otherwise (TPU, GPU, no
    │                 compiler, GAUSSJAX_NATIVE=0) the pure-XLA path:
    ├─ _assign        per Gaussian: clipped pixel box, class, window origin;
    │                 a stable argsort by class gives each class its slots
    └─ _splat         jax.custom_vjp
         forward      per class, per chunk of Gaussians: the weights on a
                      window [K, Sy, Sx], then an in-place loop of
                      dynamic_update_slice adds each patch to the image
         backward     per class, per chunk: the cotangent windows are cut out
                      with a dynamic_slice loop, weights recomputed, and the
                      per-Gaussian gradients reduced on the window

Why this shape (measured on XLA:CPU): scatter-add runs one element at a time,
while an in-place ``dynamic_update_slice`` loop over a chunk is several times
faster; large fresh temporaries are page-fault bound, so the work is chunked,
and the backward is written by hand (autodiff through chunked loops would
stack residuals); the image is kept channels-first so reductions run over
contiguous pixels; each size class is its own static loop.

Both paths compute ``q = (α dx)² + (β (dy - r dx))²`` from ``_shapes``, the
same function as ``render_reference`` but without its float32 cancellation
for long thin tilted Gaussians.

Exactness: a Gaussian's weight is zero outside the exact bounding box of its
support (``gaussjax.extents``). The box is clipped to the image, and the
Gaussian goes to the smallest class whose window holds the clipped box; the
window is shifted to lie inside the image, which still covers the clipped box.
So nothing is cut: a Gaussian that fits no class, or a class with more
Gaussians than its capacity, sets ``overflow`` instead. Gaussians wholly off
the image have an empty box and cost nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants
from gaussjax.core._gaussians import Gaussians, extents, rendered_covariance
from gaussjax.rendering import _native
from gaussjax.rendering._reference import gaussian_weight

_HIGHEST = jax.lax.Precision.HIGHEST
# Start indices of dynamic slices: one integer type, also under jax_enable_x64.
_ZERO = np.int32(0)

# Candidate window sizes (px): steps of 8 up to 64 (most fitted Gaussians),
# then about 25 % apart. Sizes at or past the image's larger side collapse
# into one class whose window is the whole image.
_CANDIDATE_SIZES = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512,
                    640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192, 10240,
                    12288, 16384)

# Elements of one chunk's weight array [K, Sy, Sx]: small enough to stay in
# cache and avoid page faults on fresh temporaries, large enough to amortise
# the loop overhead.
_CHUNK_ELEMENTS = 1 << 14
_MAX_CHUNK = 512

# Class merging in plan_xla: each class is a loop of its own, costing compile
# time (~0.3 s per class on 2 cores) and a little run time. A class is merged
# into the next larger one when that adds fewer window pixels than
# _MERGE_PIXELS plus _MERGE_FRACTION of the total, and always while there are
# more than _MAX_CLASSES.
_MAX_CLASSES = 5
_MERGE_PIXELS = 1 << 16
_MERGE_FRACTION = 0.05

# Window pixels per class of default_plan (beyond 256 per Gaussian): small
# images hold every Gaussian in every class.
_DEFAULT_PIXELS = 1 << 22


@dataclasses.dataclass(frozen=True)
class XlaPlan:
  """Static shapes of the XLA rasteriser: one entry per window class.

  Attributes:
    sizes: nominal window side of each class in pixels, increasing; the
      window of a class is ``min(size, H) x min(size, W)``.
    capacities: Gaussians each class can hold (multiples of ``chunks``).
    chunks: Gaussians processed together in each class.
  """

  sizes: tuple[int, ...]
  capacities: tuple[int, ...]
  chunks: tuple[int, ...]

  def __post_init__(self):
    if not (len(self.sizes) == len(self.capacities) == len(self.chunks)) or not self.sizes:
      raise ValueError(f"XlaPlan needs one capacity and chunk per size, got {self}")
    if list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] <= 0:
      raise ValueError(f"XlaPlan sizes must be positive and increasing, got {self.sizes}")
    for cap, chunk in zip(self.capacities, self.chunks):
      if chunk <= 0 or cap <= 0 or cap % chunk:
        raise ValueError(f"XlaPlan capacities must be positive multiples of chunks, got {self}")


def _class_sizes(height: int, width: int) -> tuple[int, ...]:
  """The candidate classes for an image: every size below the larger side, then that side."""
  side = max(height, width)
  return tuple(s for s in _CANDIDATE_SIZES if s < side) + (side,)


def _chunk(size: int, height: int, width: int) -> int:
  return max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // _pixels(size, height, width)))


def _round_capacity(count: float, chunk: int) -> tuple[int, int]:
  """``(capacity, chunk)``: at least ``count`` slots on a coarse grid, in equal chunks.

  Capacities keep four significant bits (neighbours at most 1/8 apart), so
  re-plans during fitting rarely change the shapes and recompile.
  """
  count = max(int(math.ceil(count)), 1)
  shift = max(count.bit_length() - 4, 0)
  count = -(-count >> shift) << shift
  num_chunks = -(-count // chunk)
  chunk = -(-count // num_chunks)
  return num_chunks * chunk, chunk


def _pixels(size: int, height: int, width: int) -> int:
  return min(size, height) * min(size, width)


def plan_xla(gaussians: Gaussians, height: int, width: int, *, headroom: float = 0.25) -> XlaPlan:
  """Chooses window classes and capacities from concrete Gaussians.

  Every Gaussian goes to the smallest class whose window holds the part of
  its support that lies on the image. Classes with few Gaussians are merged
  into the next larger one while that costs little extra work (each class is
  a loop of its own: compile time and overhead), and the largest class gets
  the next larger window, room to grow during fitting. Each class has
  ``headroom`` spare capacity rounded up to a coarse grid, so small changes
  between fitting steps neither overflow nor recompile.

  Args:
    gaussians: concrete ``Gaussians``, ``means [..., N, 2]``; leading batch
      axes are allowed and the plan fits every element.
    height: output rows.
    width: output columns.
    headroom: spare capacity per class, as a fraction of its count.

  Returns:
    An ``XlaPlan``.
  """
  means = np.asarray(gaussians.means)
  chol = np.asarray(gaussians.chol)
  candidates = _class_sizes(height, width)
  batch = max(int(np.prod(means.shape[:-2], dtype=np.int64)), 1)
  n = means.shape[-2]
  # The same jitted computation as inside rasterize_xla, so the counts agree.
  needs, _ = _needs_jit(means.reshape(-1, 2).astype(np.float32),
                        chol.reshape(-1, 3).astype(np.float32), height, width)
  needs = np.asarray(needs).reshape(batch, n)
  cls = np.searchsorted(np.asarray(candidates), needs, side="left")
  counts = np.stack([np.bincount(c[need > 0], minlength=len(candidates))
                     for c, need in zip(cls, needs)])  # [batch, classes]
  used = [k for k in range(len(candidates)) if counts[:, k].any()] or [0]
  counts = counts[:, used]
  sizes = [candidates[k] for k in used]
  pixels = [_pixels(size, height, width) for size in sizes]
  total = float((counts.max(0) * np.asarray(pixels)).sum())
  while len(sizes) > 1:
    # Merging class i into i + 1 renders its Gaussians on larger windows.
    extra = [counts[:, i].max() * (pixels[i + 1] - pixels[i]) for i in range(len(sizes) - 1)]
    i = int(np.argmin(extra))
    if len(sizes) <= _MAX_CLASSES and extra[i] > _MERGE_PIXELS + _MERGE_FRACTION * total:
      break
    counts[:, i + 1] += counts[:, i]
    counts = np.delete(counts, i, axis=1)
    del sizes[i], pixels[i]
  top = candidates.index(sizes[-1])
  sizes[-1] = candidates[min(top + 1, len(candidates) - 1)]
  capacities, chunks = [], []
  for size, count in zip(sizes, counts.max(0)):
    cap, chunk = _round_capacity(count * (1 + headroom) + 4, _chunk(size, height, width))
    capacities.append(cap)
    chunks.append(chunk)
  return XlaPlan(tuple(sizes), tuple(capacities), tuple(chunks))


def default_plan(n: int, height: int, width: int) -> XlaPlan:
  """A plan valid without seeing the values: for ``render`` under ``jit``/``vmap``.

  Windows of 16, 32, 64, ... pixels up to the whole image. Each class holds
  all ``n`` Gaussians as long as its windows cover at most
  ``max(256 n, _DEFAULT_PIXELS)`` pixels, else as many as fit in that (at
  least one). Ordinary Gaussians fit; crowds of large ones overflow (and
  ``render`` then returns NaN), never a cut image.
  """
  side = max(height, width)
  sizes = [16]
  while sizes[-1] < side:
    sizes.append(min(2 * sizes[-1], side))
  budget = max(n * 256, _DEFAULT_PIXELS)
  capacities, chunks = [], []
  for size in sizes:
    count = min(max(n, 1), max(1, budget // _pixels(size, height, width)))
    cap, chunk = _round_capacity(count, _chunk(size, height, width))
    capacities.append(cap)
    chunks.append(chunk)
  return XlaPlan(tuple(sizes), tuple(capacities), tuple(chunks))


def _needs(means, chol, height, width):
  """Clipped support box of each Gaussian.

  Returns:
    ``(side [N], first pixel [N, 2])``: the larger side of the box in pixels
    (0 when the support misses the image) and its first column and row.
  """
  radii = extents(chol)
  lo = jnp.maximum(jnp.ceil(means - radii - 0.5), 0.0)
  last = jnp.asarray([width - 1, height - 1], means.dtype)
  hi = jnp.minimum(jnp.floor(means + radii - 0.5), last)
  n = hi - lo + 1
  finite = jnp.isfinite(n).all(-1)
  nonempty = finite & (n > 0).all(-1)
  side = jnp.where(nonempty, n.max(-1), 0).astype(jnp.int32)
  lo = jnp.where(nonempty[:, None], lo, 0).astype(jnp.int32)
  return side, lo


_needs_jit = jax.jit(_needs, static_argnums=(2, 3))


def _assign(means, chol, height, width, plan):
  """Slots of every class: indices into the Gaussians, window origins, validity."""
  n = means.shape[0]
  side, lo = _needs(means, chol, height, width)
  sizes = jnp.asarray(plan.sizes, jnp.int32)
  num_classes = len(plan.sizes)
  cls = jnp.searchsorted(sizes, side, side="left").astype(jnp.int32)
  overflow = (side > plan.sizes[-1]).any()
  cls = jnp.where(side > 0, jnp.minimum(cls, num_classes - 1), num_classes)
  order = jnp.argsort(cls, stable=True).astype(jnp.int32)
  counts = jnp.bincount(cls, length=num_classes + 1)
  starts = jnp.cumsum(counts) - counts
  slots = []
  for k, (size, cap) in enumerate(zip(plan.sizes, plan.capacities)):
    overflow |= counts[k] > cap
    pos = jnp.arange(cap, dtype=jnp.int32)
    valid = pos < counts[k]
    index = order[jnp.minimum(starts[k] + pos, n - 1)] if n else jnp.zeros((cap,), jnp.int32)
    sy, sx = min(size, height), min(size, width)
    origin = lo[index] if n else jnp.zeros((cap, 2), jnp.int32)
    origin = jnp.minimum(origin, jnp.asarray([width - sx, height - sy], jnp.int32))
    slots.append((jnp.where(valid, index, n), origin, valid))
  return slots, overflow


def _shapes(chol):
  """``(α, r, β)`` with ``q = (α dx)² + (β (dy - r dx))²``: a cancellation-free radius².

  From the Cholesky factor ``[[1/α, 0], [r/α, 1/β]]`` of the rendered
  covariance ``Σ = L Lᵀ + COV_FLOOR·I``; ``det Σ`` is expanded as a sum of
  positive terms. For long thin tilted Gaussians this is more accurate than
  the conic form ``a dx² + 2b dx dy + c dy²``, which cancels in float32.

  Args:
    chol: ``[N, 3]`` Cholesky factors.

  Returns:
    ``[N, 3]``.
  """
  sxx, sxy, _, det = rendered_covariance(chol)
  return jnp.stack([jax.lax.rsqrt(sxx), sxy / sxx, jnp.sqrt(sxx / det)], -1)


def _window_q(mean, shape, origin, sy, sx):
  """Offsets and radius² on each window: ``dx [K, Sx]``, ``dy [K, Sy]``, ``q [K, Sy, Sx]``."""
  dtype = mean.dtype
  dx = (origin[:, 0:1] + jnp.arange(sx, dtype=jnp.int32)).astype(dtype) + 0.5 - mean[:, 0:1]
  dy = (origin[:, 1:2] + jnp.arange(sy, dtype=jnp.int32)).astype(dtype) + 0.5 - mean[:, 1:2]
  alpha = shape[:, 0, None]
  r = shape[:, 1, None, None]
  beta = shape[:, 2, None, None]
  u = alpha * dx  # [K, Sx]
  v = beta * (dy[:, :, None] - r * dx[:, None, :])  # [K, Sy, Sx]
  return dx, dy, u[:, None, :] * u[:, None, :] + v * v


def _chunked(slot_arrays, chunk):
  return [x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:]) for x in slot_arrays]


def _gather_class(means, shape, colors, index, valid):
  """Parameters of one class's slots; empty slots get colour 0."""
  safe = jnp.minimum(index, max(means.shape[0] - 1, 0))
  col = jnp.where(valid[:, None], colors[safe], 0.0)
  return means[safe], shape[safe], col


def _forward(means, shape, colors, slots, height, width, plan):
  channels = colors.shape[-1]
  image = jnp.zeros((channels, height, width), colors.dtype)
  if means.shape[0] == 0:
    return image
  for size, chunk, (index, origin, valid) in zip(plan.sizes, plan.chunks, slots):
    sy, sx = min(size, height), min(size, width)
    m, cn, col = _gather_class(means, shape, colors, index, valid)

    def chunk_step(image, xs, sy=sy, sx=sx):
      m, cn, col, origin = xs
      _, _, q = _window_q(m, cn, origin, sy, sx)
      w = gaussian_weight(q)  # [K, Sy, Sx]

      def add(i, image):
        at = (_ZERO, origin[i, 1], origin[i, 0])
        window = jax.lax.dynamic_slice(image, at, (channels, sy, sx))
        return jax.lax.dynamic_update_slice(image, window + col[i, :, None, None] * w[i], at)

      return jax.lax.fori_loop(0, w.shape[0], add, image), None

    image, _ = jax.lax.scan(chunk_step, image, _chunked((m, cn, col, origin), chunk))
  return image


def _backward(means, shape, colors, slots, height, width, plan, cotangent):
  """Gradients wrt means, ``_shapes`` and colours from the image cotangent ``[C, H, W]``."""
  n, channels = colors.shape
  dtype = colors.dtype
  grads, indices = [], []
  for size, chunk, (index, origin, valid) in zip(plan.sizes, plan.chunks, slots):
    sy, sx = min(size, height), min(size, width)
    m, cn, col = _gather_class(means, shape, colors, index, valid)

    def chunk_grad(xs, sy=sy, sx=sx):
      m, cn, col, origin, valid = xs
      k = m.shape[0]

      def cut(i, buffer):
        at = (_ZERO, origin[i, 1], origin[i, 0])
        window = jax.lax.dynamic_slice(cotangent, at, (channels, sy, sx))
        return jax.lax.dynamic_update_slice(buffer, window[None], (i.astype(jnp.int32),) + at)

      g = jax.lax.fori_loop(0, k, cut, jnp.zeros((k, channels, sy, sx), dtype))  # [K, C, Sy, Sx]
      dx, dy, q = _window_q(m, cn, origin, sy, sx)
      e = jnp.exp(-0.5 * q)
      w = jnp.maximum(e - constants.WEIGHT_CUTOFF, 0.0) * constants.WEIGHT_SCALE
      g = g.reshape(k, channels, sy * sx)
      # Reductions as batched matrix products: XLA:CPU runs these far faster
      # than the equivalent fused multiply-and-sum.
      d_col = jnp.einsum("kcp,kp->kc", g, w.reshape(k, -1), precision=_HIGHEST)
      d_col = jnp.where(valid[:, None], d_col, 0.0)
      d_w = jnp.einsum("kc,kcp->kp", col, g, precision=_HIGHEST).reshape(k, sy, sx)
      d_q = jnp.where(e > constants.WEIGHT_CUTOFF, d_w * e * (-0.5 * constants.WEIGHT_SCALE), 0.0)
      # Moments Σ d_q dyⁱ dxʲ for i + j ≤ 2 from powers [1, d, d²] of each axis.
      px = jnp.stack([jnp.ones_like(dx), dx, dx * dx], 1)  # [K, 3, Sx]
      py = jnp.stack([jnp.ones_like(dy), dy, dy * dy], 1)  # [K, 3, Sy]
      moments = jnp.einsum("kiy,kyx,kjx->kij", py, d_q, px, precision=_HIGHEST)  # [K, 3, 3]
      s_x, s_xx = moments[:, 0, 1], moments[:, 0, 2]
      s_y, s_yy = moments[:, 1, 0], moments[:, 2, 0]
      s_xy = moments[:, 1, 1]
      # With t = dy - r dx: q = α² dx² + β² t².
      alpha, r, beta = cn[:, 0], cn[:, 1], cn[:, 2]
      s_t = s_y - r * s_x
      s_tx = s_xy - r * s_xx
      s_tt = s_yy - 2.0 * r * s_xy + r * r * s_xx
      beta2 = beta * beta
      d_mean_x = -2.0 * alpha * alpha * s_x + 2.0 * beta2 * r * s_t
      d_mean = jnp.stack([d_mean_x, -2.0 * beta2 * s_t], -1)
      d_shape = jnp.stack([2.0 * alpha * s_xx, -2.0 * beta2 * s_tx, 2.0 * beta * s_tt], -1)
      return jnp.concatenate([d_mean, d_shape, d_col], -1)  # [K, 5 + C]

    xs = _chunked((m, cn, col, origin, valid), chunk)
    per_chunk = jax.lax.map(chunk_grad, xs)
    grads.append(per_chunk.reshape(-1, 5 + channels))
    indices.append(index)
  flat = jnp.zeros((n, 5 + channels), dtype).at[jnp.concatenate(indices)].add(
      jnp.concatenate(grads), mode="drop", unique_indices=True)
  return flat[:, :2], flat[:, 2:5], flat[:, 5:]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _splat(means, shape, colors, slots, height, width, plan):
  return _forward(means, shape, colors, slots, height, width, plan)


def _splat_fwd(means, shape, colors, slots, height, width, plan):
  return _forward(means, shape, colors, slots, height, width, plan), (means, shape, colors, slots)


def _splat_bwd(height, width, plan, residuals, cotangent):
  means, shape, colors, slots = residuals
  grads = _backward(means, shape, colors, slots, height, width, plan, cotangent)
  return (*grads, jax.tree_util.tree_map(lambda _: None, slots))


_splat.defvjp(_splat_fwd, _splat_bwd)


def _all_finite(means, chol, colors):
  """Whether every parameter is finite (else the image is NaN, on every path)."""
  return jnp.isfinite(means).all() & jnp.isfinite(chol).all() & jnp.isfinite(colors).all()


@functools.partial(jax.jit, static_argnums=(3, 4))
def _native_image(means, chol, colors, height, width):
  # Jitted so that an eager render (decode, a plain call) is one compiled
  # call, not a chain of dispatched ops.
  finite = _all_finite(means, chol, colors)
  image = _native.splat(means, _shapes(chol), colors, height, width)
  return jnp.where(finite, image, jnp.nan)


@functools.cache
def _no_overflow():
  """A concrete ``False`` (made once; a fresh ``jnp.zeros`` per render is a dispatch)."""
  with jax.ensure_compile_time_eval():
    return jnp.zeros((), bool)


def rasterize_xla(gaussians: Gaussians, height: int, width: int, plan: XlaPlan | None = None):
  """Renders with size classes on XLA; ``jit``/``vmap``/``grad`` compatible.

  Args:
    gaussians: one set of ``Gaussians`` (``means [N, 2]``, ``chol [N, 3]``,
      ``colors [N, C]``); batch with ``jax.vmap``.
    height: output rows.
    width: output columns.
    plan: from ``plan_xla`` (for these or similar Gaussians), or ``None`` for
      ``default_plan``.

  Returns:
    ``(image [H, W, C], overflow)``; ``overflow`` is a boolean scalar, True
    when some Gaussian fits no class or a class is over capacity (the image is
    then incomplete). Non-finite parameters give an all-NaN image, as in
    ``render_reference``.
  """
  means, chol, colors = gaussians
  if means.ndim != 2:
    raise ValueError(
        f"rasterize_xla takes means [N, 2], got {means.shape}; use jax.vmap for a batch")
  dtype = jnp.result_type(means, chol, colors)
  if plan is not None and not isinstance(plan, XlaPlan):
    raise TypeError(f"plan must be an XlaPlan from plan_xla, got {type(plan).__name__}")
  if _native.usable(dtype, np.shape(colors)[-1]):
    # The native kernel visits each Gaussian's own support box: nothing to plan.
    # numpy inputs (a decoder's) go to the jitted call as they are: converting
    # them here first costs three dispatches.
    means, chol, colors = (np.asarray(x, dtype) if isinstance(x, np.ndarray) else
                           jnp.asarray(x, dtype) for x in (means, chol, colors))
    return _native_image(means, chol, colors, height, width), _no_overflow()
  means, chol, colors = (jnp.asarray(x, dtype) for x in (means, chol, colors))
  if plan is None:
    plan = default_plan(means.shape[0], height, width)
  finite = _all_finite(means, chol, colors)
  slots, overflow = _assign(
      jax.lax.stop_gradient(means), jax.lax.stop_gradient(chol), height, width, plan)
  image = _splat(means, _shapes(chol), colors, slots, height, width, plan)
  image = jnp.where(finite, jnp.transpose(image, (1, 2, 0)), jnp.nan)
  return image, overflow
