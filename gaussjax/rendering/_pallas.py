"""The ``"pallas"`` backend: tile binning, the custom VJP, and the plan.

Call chain::

  rasterize_pallas(gaussians, height, width, plan) -> (image, overflow)
    ├─ conics(chol)                      shared formula, autodiff to chol
    ├─ _bin(...)                         jnp, static shapes: sorted (tile, Gaussian) pairs
    └─ _render_tiles  (jax.custom_vjp)
         ├─ fwd: gather pair rows → kernels.rasterize.rasterize_forward
         └─ bwd: kernels.rasterize.rasterize_backward → per-pair partials
                 → deterministic segment sum per Gaussian (no atomics)

Binning. Each Gaussian's footprint is the exact bounding box of its cut-off
ellipse (``gaussjax.extents``), widened to whole pixels; it is intersected
with the grid of ``tile × tile`` pixel tiles (16×16). Every covered
(tile, Gaussian) pair gets a slot in a pair buffer of static size
``plan.pair_capacity``, in Gaussian-major order; a stable sort by tile index
groups the pairs per tile (Gaussians ascending within a tile), and
``searchsorted`` gives each tile's ``[start, start + count)`` run. Each tile's
kernel program processes at most ``plan.tile_capacity`` pairs.

Overflow. Capacities are static so that everything works under ``jit``. When
the Gaussians need more pair slots than ``pair_capacity``, or some tile holds
more than ``tile_capacity`` pairs, contributions would be lost; this is never
silent: ``rasterize_pallas`` returns ``overflow = True`` (the image is then
incomplete), ``render`` turns the image into NaN, and ``fit`` / ``encode``
call ``plan_pallas`` again on the current Gaussians (a larger plan) and
re-render. With concrete Gaussians ``render`` plans from them and never
overflows.

Determinism. The backward kernel writes one partial gradient per pair slot
(each slot owned by one tile program); the partials are gathered back to
Gaussian-major order and summed per Gaussian with a segmented
``associative_scan``: a fixed reduction tree, so gradients are bit-for-bit
reproducible run to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax.core._gaussians import Gaussians, conics, extents, validate
from gaussjax.kernels import rasterize as _kernels

Array = jax.Array

DEFAULT_CONFIG = _kernels.RasterizeConfig()

# Headroom of a plan over what the Gaussians it was made from need: a fit
# moves and grows Gaussians between re-plans.
PLAN_HEADROOM = 1.25

# Pairs per Gaussian that the default plan (``plan=None``) allows for.
DEFAULT_PAIRS_PER_GAUSSIAN = 16

# None: interpret mode unless the default backend is a GPU. Set by
# ``interpret_mode`` (tests lower the compiled kernels for CUDA on a CPU host).
_INTERPRET: bool | None = None


@contextlib.contextmanager
def interpret_mode(interpret: bool | None):
  """Forces (``True``/``False``) or restores (``None``) Pallas interpret mode.

  Read at trace time. The default, interpret mode exactly when no GPU is the
  default backend, is right for running; ``interpret_mode(False)`` lets a
  CPU-only machine trace the compiled (Triton) kernels, e.g. for
  ``jax.export`` with ``platforms=["cuda"]``.
  """
  global _INTERPRET
  previous = _INTERPRET
  _INTERPRET = interpret
  try:
    yield
  finally:
    _INTERPRET = previous


def _use_interpret() -> bool:
  if _INTERPRET is not None:
    return _INTERPRET
  return jax.default_backend() not in ("gpu", "cuda")


@dataclasses.dataclass(frozen=True)
class PallasPlan:
  """Static capacities of the Pallas backend's binning (hashable).

  Attributes:
    pair_capacity: slots in the (tile, Gaussian) pair buffer.
    tile_capacity: most pairs one tile may hold, a power of two and a multiple
      of the kernels' block sizes; bounds the work of one kernel program.
    config: kernel launch parameters (tile size, block sizes, warps).
  """

  pair_capacity: int
  tile_capacity: int
  config: _kernels.RasterizeConfig = DEFAULT_CONFIG

  def __post_init__(self):
    for name in ("pair_capacity", "tile_capacity"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive int")
    blocks = max(self.config.block, self.config.backward_block)
    if self.tile_capacity % blocks or self.tile_capacity & (self.tile_capacity - 1):
      raise ValueError(
          f"tile_capacity={self.tile_capacity} must be a power of two and a multiple of {blocks}")


def _size_class(n: int) -> int:
  """``n`` rounded up to one of 8 sizes per octave (few distinct jit shapes)."""
  n = max(int(n), 256)
  step = 1 << max(n.bit_length() - 4, 0)
  return -(-n // step) * step


def _next_power_of_two(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _tile_grid(height: int, width: int, tile: int) -> tuple[int, int]:
  return -(-height // tile), -(-width // tile)


def _tile_ranges(means, chol, height, width, tile):
  """Inclusive tile ranges ``(tx0, tx1, ty0, ty1)`` and pair counts ``[N]``.

  Pixel ``j`` (centre ``j + 0.5``) can be reached by a Gaussian when
  ``|j + 0.5 - μ| ≤ r``; floor/ceil widen the range to whole pixels, so the
  footprint only errs on the safe side (an extra, all-zero pair).
  """
  radius = extents(chol)  # [N, 2]
  lo = jnp.floor(means - radius - 0.5)
  hi = jnp.ceil(means + radius - 0.5)
  limit = jnp.asarray([width - 1, height - 1], lo.dtype)
  finite = jnp.all(jnp.isfinite(lo) & jnp.isfinite(hi), axis=-1)
  visible = finite & jnp.all((hi >= 0) & (lo <= limit), axis=-1)
  lo = jnp.clip(jnp.where(jnp.isfinite(lo), lo, 0), 0, limit).astype(jnp.int32) // tile
  hi = jnp.clip(jnp.where(jnp.isfinite(hi), hi, 0), 0, limit).astype(jnp.int32) // tile
  n_x = jnp.where(visible, hi[:, 0] - lo[:, 0] + 1, 0)
  n_y = jnp.where(visible, hi[:, 1] - lo[:, 1] + 1, 0)
  return lo, hi, n_x, n_y * n_x


def _footprint_stats(means, chol, height, width, tile):
  """Total pairs and the largest tile's pair count of one set of Gaussians."""
  tiles_y, tiles_x = _tile_grid(height, width, tile)
  lo, hi, _, counts = _tile_ranges(means, chol, height, width, tile)
  # 2-D difference array of the tile rectangles, integrated by two cumsums.
  on = (counts > 0).astype(jnp.int32)
  grid = jnp.zeros((tiles_y + 1, tiles_x + 1), jnp.int32)
  grid = grid.at[lo[:, 1], lo[:, 0]].add(on)
  grid = grid.at[lo[:, 1], hi[:, 0] + 1].add(-on)
  grid = grid.at[hi[:, 1] + 1, lo[:, 0]].add(-on)
  grid = grid.at[hi[:, 1] + 1, hi[:, 0] + 1].add(on)
  per_tile = jnp.cumsum(jnp.cumsum(grid, axis=0), axis=1)
  return jnp.sum(counts), jnp.max(per_tile)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _batched_footprint_stats(gaussians, height, width, tile):
  means = gaussians.means.reshape(-1, *gaussians.means.shape[-2:]).astype(jnp.float32)
  chol = gaussians.chol.reshape(-1, *gaussians.chol.shape[-2:]).astype(jnp.float32)
  total, largest = jax.vmap(lambda m, c: _footprint_stats(m, c, height, width, tile))(means, chol)
  return jnp.max(total), jnp.max(largest)


def plan_pallas(gaussians: Gaussians, height: int, width: int, *,
                config: _kernels.RasterizeConfig = DEFAULT_CONFIG,
                headroom: float = PLAN_HEADROOM) -> PallasPlan:
  """A plan that fits these concrete Gaussians with headroom.

  Args:
    gaussians: concrete ``Gaussians`` (``means [..., N, 2]``); with leading
      batch axes the plan fits every element.
    height: image rows.
    width: image columns.
    config: kernel launch parameters.
    headroom: capacity relative to what these Gaussians need (at least 1).

  Returns:
    ``PallasPlan`` with ``headroom`` (default ``PLAN_HEADROOM``) times the
    pairs and per-tile pairs these Gaussians need.
  """
  gaussians = validate(gaussians)
  if gaussians.means.size == 0:
    return default_plan(gaussians.num_gaussians, height, width, config=config)
  total, largest = _batched_footprint_stats(gaussians, height, width, config.tile)
  total, largest = int(total), int(largest)
  blocks = max(config.block, config.backward_block)
  return PallasPlan(
      pair_capacity=_size_class(math.ceil(total * max(headroom, 1.0))),
      tile_capacity=_next_power_of_two(max(math.ceil(largest * max(headroom, 1.0)), blocks)),
      config=config,
  )


def plan_holds(plan: PallasPlan, gaussians: Gaussians, height: int, width: int, *,
               margin: float = 0.0) -> bool:
  """Whether ``plan`` holds these concrete Gaussians with ``margin`` of its capacities to spare."""
  gaussians = validate(gaussians)
  if gaussians.means.size == 0:
    return True
  total, largest = _batched_footprint_stats(gaussians, height, width, plan.config.tile)
  return (int(total) <= (1.0 - margin) * plan.pair_capacity
          and int(largest) <= (1.0 - margin) * plan.tile_capacity)


def default_plan(num_gaussians: int, height: int, width: int, *,
                 config: _kernels.RasterizeConfig = DEFAULT_CONFIG) -> PallasPlan:
  """The plan used when none is given: from N and the image size only.

  N equal Gaussians that cover the image as ``init_random`` places them
  (standard deviation half their spacing) need about
  ``(√N + 3.33 √T)²`` pairs on ``T`` tiles; the default allows twice that, and
  at least ``DEFAULT_PAIRS_PER_GAUSSIAN`` per Gaussian (never more than every
  Gaussian in every tile). A tile may hold all N Gaussians.
  """
  tiles_y, tiles_x = _tile_grid(height, width, config.tile)
  num_tiles = tiles_y * tiles_x
  n = max(num_gaussians, 1)
  covering = 2.0 * (math.sqrt(n) + 3.33 * math.sqrt(num_tiles)) ** 2
  pairs = min(n * num_tiles, max(DEFAULT_PAIRS_PER_GAUSSIAN * n, math.ceil(covering)))
  blocks = max(config.block, config.backward_block)
  return PallasPlan(
      pair_capacity=_size_class(pairs),
      tile_capacity=_next_power_of_two(max(n, blocks)),
      config=config,
  )


class _Bins(NamedTuple):
  """Static-shaped binning of one set of Gaussians (``P`` pair slots, ``T`` tiles)."""

  pair_gaussian: Array  # [P + pad] int32, Gaussian of each tile-sorted slot (N: none)
  start: Array  # [T] int32, first tile-sorted slot of each tile
  count: Array  # [T] int32, pairs of each tile
  position: Array  # [P] int32, tile-sorted position of each Gaussian-major slot
  slot_gaussian: Array  # [P] int32, Gaussian of each Gaussian-major slot (N: none)
  last_slot: Array  # [N] int32, last Gaussian-major slot of each Gaussian (-1: none)


def _bin(means, chol, height, width, plan: PallasPlan):
  """Bins one set of Gaussians into tiles; returns ``(_Bins, overflow)``."""
  config = plan.config
  tile = config.tile
  tiles_y, tiles_x = _tile_grid(height, width, tile)
  num_tiles = tiles_y * tiles_x
  n = means.shape[0]
  capacity = plan.pair_capacity
  lo, _, n_x, counts = _tile_ranges(means, chol, height, width, tile)
  ends = jnp.cumsum(counts, dtype=jnp.int32)  # [N] inclusive
  total = ends[-1] if n else jnp.zeros((), jnp.int32)
  slot = jnp.arange(capacity, dtype=jnp.int32)
  gaussian = jnp.searchsorted(ends, slot, side="right").astype(jnp.int32)  # N where slot >= total
  first = jnp.take(ends - counts, gaussian, mode="fill", fill_value=0)
  local = slot - first
  width_in_tiles = jnp.maximum(jnp.take(n_x, gaussian, mode="fill", fill_value=1), 1)
  tx = jnp.take(lo[:, 0], gaussian, mode="fill", fill_value=0) + local % width_in_tiles
  ty = jnp.take(lo[:, 1], gaussian, mode="fill", fill_value=0) + local // width_in_tiles
  key = jnp.where(gaussian < n, ty * tiles_x + tx, num_tiles).astype(jnp.int32)
  sorted_key, order = jax.lax.sort((key, slot), num_keys=1, is_stable=True)
  tiles = jnp.arange(num_tiles, dtype=jnp.int32)
  start = jnp.searchsorted(sorted_key, tiles, side="left").astype(jnp.int32)
  end = jnp.searchsorted(sorted_key, tiles, side="right").astype(jnp.int32)
  count = end - start
  pad = max(config.block, config.backward_block)
  pair_gaussian = jnp.concatenate([gaussian[order], jnp.full((pad,), n, jnp.int32)])
  position = jnp.zeros((capacity,), jnp.int32).at[order].set(slot, unique_indices=True)
  last_slot = jnp.where((counts > 0) & (ends <= capacity), ends - 1, -1).astype(jnp.int32)
  overflow = (total > capacity) | jnp.any(count > plan.tile_capacity)
  bins = _Bins(pair_gaussian, start, count, position, gaussian, last_slot)
  return bins, overflow


@dataclasses.dataclass(frozen=True)
class _Static:
  height: int
  width: int
  channels: int
  tile_capacity: int
  config: _kernels.RasterizeConfig
  interpret: bool

  @property
  def channels_padded(self) -> int:
    return _next_power_of_two(self.channels)

  def kernel_args(self):
    return dict(config=self.config, height=self.height, width=self.width,
                channels=self.channels, capacity=self.tile_capacity, interpret=self.interpret)


def _pair_rows(means, conic, colors, bins: _Bins, channels_padded: int):
  """Per-slot kernel inputs: geometry ``[5, P + pad]`` and colours ``[Cp, P + pad]``."""
  geometry = jnp.concatenate([means, conic], axis=1)  # [N, 5]
  geometry = jnp.take(geometry, bins.pair_gaussian, axis=0, mode="fill", fill_value=0).T
  colors = jnp.pad(colors, ((0, 0), (0, channels_padded - colors.shape[1])))
  colors = jnp.take(colors, bins.pair_gaussian, axis=0, mode="fill", fill_value=0).T
  return geometry, colors


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _render_tiles(static: _Static, means, conic, colors, bins: _Bins):
  """``[T, Cp, tile²]`` image tiles; differentiable in means, conic, colors."""
  geometry, pair_colors = _pair_rows(means, conic, colors, bins, static.channels_padded)
  return _kernels.rasterize_forward(
      bins.start, bins.count, geometry, pair_colors, **static.kernel_args())


def _render_tiles_fwd(static, means, conic, colors, bins):
  return _render_tiles(static, means, conic, colors, bins), (means, conic, colors, bins)


def _segment_sums(partial, bins: _Bins, n: int):
  """Per-Gaussian sums ``[K, N]`` of per-slot partials ``[K, P]`` (Gaussian-major).

  A segmented inclusive scan (reset where the Gaussian changes) read at each
  Gaussian's last slot: a fixed reduction tree, hence deterministic.
  """
  gaussian = bins.slot_gaussian
  partial = jnp.where(gaussian[None, :] < n, partial, 0.0)
  head = jnp.concatenate([jnp.ones((1,), bool), gaussian[1:] != gaussian[:-1]])[None, :]

  def combine(left, right):
    left_value, left_head = left
    right_value, right_head = right
    return jnp.where(right_head, right_value, left_value + right_value), left_head | right_head

  sums, _ = jax.lax.associative_scan(combine, (partial, head), axis=1)
  picked = jnp.take(sums, bins.last_slot, axis=1, mode="fill", fill_value=0)
  return jnp.where(bins.last_slot[None, :] >= 0, picked, 0.0)


def _render_tiles_bwd(static, residuals, cotangent):
  means, conic, colors, bins = residuals
  n = means.shape[0]
  geometry, pair_colors = _pair_rows(means, conic, colors, bins, static.channels_padded)
  partial = _kernels.rasterize_backward(
      bins.start, bins.count, geometry, pair_colors, cotangent, **static.kernel_args())
  capacity = bins.position.shape[0]
  partial = jnp.take(partial[:, :capacity], bins.position, axis=1)  # Gaussian-major order
  sums = _segment_sums(partial, bins, n)  # [5 + Cp, N]
  k = _kernels.NUM_GEOMETRY
  return sums[:2].T, sums[2:k].T, sums[k:k + static.channels].T, None


_render_tiles.defvjp(_render_tiles_fwd, _render_tiles_bwd)


def _untile(tiles, height, width, channels, tile):
  """``[T, Cp, tile²]`` → ``[H, W, C]``."""
  tiles_y, tiles_x = _tile_grid(height, width, tile)
  image = tiles.reshape(tiles_y, tiles_x, -1, tile, tile)
  image = image.transpose(0, 3, 1, 4, 2).reshape(tiles_y * tile, tiles_x * tile, -1)
  return image[:height, :width, :channels]


def rasterize_pallas(gaussians: Gaussians, height: int, width: int,
                     plan: PallasPlan | None = None) -> tuple[Array, Array]:
  """Renders one set of Gaussians with the Pallas tile kernels.

  Computes the function of ``gaussjax.constants`` (the same as
  ``render_reference``) in float32. Differentiable (``jax.custom_vjp``) in
  all fields; works under ``jit``, ``grad`` and ``vmap`` (batched Gaussians).
  Without a GPU the kernels run in Pallas interpret mode (slow; for tests).

  Args:
    gaussians: ``Gaussians`` with ``means [N, 2]``, ``chol [N, 3]``,
      ``colors [N, C]``.
    height: image rows.
    width: image columns.
    plan: capacities from ``plan_pallas``; ``None`` uses ``default_plan``.

  Returns:
    ``(image [H, W, C], overflow)``. ``overflow`` is a boolean scalar, True
    when the Gaussians need more pair slots or more pairs in one tile than the
    plan holds: the image is then incomplete (some contributions are missing),
    its gradients are undefined, and the caller must re-plan
    (``plan_pallas``) and render again.
  """
  gaussians = validate(gaussians)
  if gaussians.means.ndim != 2:
    raise ValueError(
        f"rasterize_pallas takes means [N, 2], got {gaussians.means.shape}; use jax.vmap")
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")
  height, width = int(height), int(width)
  if plan is None:
    plan = default_plan(gaussians.num_gaussians, height, width)
  elif not isinstance(plan, PallasPlan):
    raise TypeError(f"plan must be a PallasPlan from plan_pallas, got {type(plan).__name__}")
  return _rasterize(gaussians, height, width, plan, _use_interpret())


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _rasterize(gaussians, height, width, plan, interpret):
  # Jitted so that eager calls compile once per shape and plan.
  means, chol, colors = gaussians
  dtype = jnp.result_type(means, chol, colors)
  means = means.astype(jnp.float32)
  chol = chol.astype(jnp.float32)
  colors = colors.astype(jnp.float32)
  channels = colors.shape[1]
  if means.shape[0] == 0:  # nothing to bin; the kernels need at least one slot
    return jnp.zeros((height, width, channels), dtype), jnp.zeros((), bool)
  bins, overflow = _bin(jax.lax.stop_gradient(means), jax.lax.stop_gradient(chol),
                        height, width, plan)
  static = _Static(height, width, channels, plan.tile_capacity, plan.config, interpret)
  tiles = _render_tiles(static, means, conics(chol), colors, bins)
  image = _untile(tiles, height, width, channels, plan.config.tile)
  return image.astype(dtype), overflow
