"""Tile rasteriser kernels: forward and backward, written in Pallas.

One program per 16×16 pixel tile. A tile's Gaussians are a contiguous run of
the tile-sorted (tile, Gaussian) pair list, ``[start, start + count)``; the
program walks that run in blocks of ``block`` pairs. The per-pair parameters
are gathered into pair order outside the kernel, so every load is a contiguous
``pl.ds`` row slice (no gathers in the kernel).

Layouts (``P`` pair slots, ``T`` tiles, ``K = 5`` geometry rows, ``Cp`` the
channel count padded to a power of two):

  ``geometry``  ``[5, P + block]``   rows ``mx, my, a, b, c`` (mean, conic)
  ``colors``    ``[Cp, P + block]``  per-pair colour, channel-major
  ``start``, ``count``  ``[T]``      the tile's run in the pair list
  image tiles   ``[T, Cp, tile²]``   channel-major pixels, row-major in a tile

The ``+ block`` padding lets the last block of the last tile load without
reading past the buffer; masked lanes never contribute.

The weight is the one of ``gaussjax.constants``:
``w = max(exp(-q/2) - WEIGHT_CUTOFF, 0) · WEIGHT_SCALE`` with
``q = a dx² + 2 b dx dy + c dy²`` at pixel centres ``(j + 0.5, i + 0.5)``.

The backward kernel writes one partial gradient per pair slot (each slot is
owned by exactly one program, so there are no atomics); the caller reduces
them per Gaussian with a deterministic segment sum.

Every shape that a kernel holds in registers (``[tile², block]``, ``[block]``,
``[tile²]``) is a power of two, as the Triton lowering requires; the Triton
lowering is requested explicitly through ``plt.CompilerParams``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from gaussjax import constants

NUM_GEOMETRY = 5  # mx, my, a, b, c


def _is_power_of_two(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class RasterizeConfig:
  """Static launch parameters of the tile kernels.

  Attributes:
    tile: tile side in pixels (a tile is ``tile × tile`` pixels).
    block: pairs per loop step of the forward kernel.
    backward_block: pairs per loop step of the backward kernel (smaller: it
      keeps more ``[tile², block]`` temporaries live).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """

  tile: int = 16
  block: int = 32
  backward_block: int = 16
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    for name in ("tile", "block", "backward_block"):
      value = getattr(self, name)
      if not _is_power_of_two(value):
        raise ValueError(f"{name}={value} must be a power of two")
    if self.tile * self.tile < 16:
      raise ValueError(f"tile={self.tile} is too small; use at least 4")

  @property
  def pixels(self) -> int:
    """Pixels per tile, ``tile²``."""
    return self.tile * self.tile


def _row(k: int):
  # A row index as an int32 scalar array: interpret mode's masked store rejects
  # Python ints among the indices.
  return jnp.asarray(k, jnp.int32)


def _num_steps(count, block: int):
  # jnp ops (weak Python ints), not pl.cdiv: stays int32 when x64 is enabled.
  return (count + (block - 1)) // block


def _tile_pixels(tiles_x: int, tile: int, height: int, width: int):
  """Pixel-centre coordinates ``[tile²]`` of this program's tile and the in-image mask."""
  t = pl.program_id(0)
  ty = t // tiles_x
  tx = t - ty * tiles_x
  i = jax.lax.broadcasted_iota(jnp.int32, (tile * tile,), 0)
  row = ty * tile + i // tile
  col = tx * tile + i % tile
  inside = (row < height) & (col < width)
  return col.astype(jnp.float32) + 0.5, row.astype(jnp.float32) + 0.5, inside


def _pair_block(geometry_ref, offset, block):
  """Rows of one block of pairs: five ``[block]`` vectors."""
  return tuple(geometry_ref[k, pl.ds(offset, block)] for k in range(NUM_GEOMETRY))


def _weights(px, py, inside, valid, mx, my, a, b, c):
  """``[tile², block]`` weights, ``dx``, ``dy`` and the live (untruncated) mask."""
  dx = px[:, None] - mx[None, :]
  dy = py[:, None] - my[None, :]
  q = a[None, :] * dx * dx + 2.0 * b[None, :] * dx * dy + c[None, :] * dy * dy
  e = jnp.exp(-0.5 * q)
  live = (e > constants.WEIGHT_CUTOFF) & inside[:, None] & valid[None, :]
  w = jnp.where(live, (e - constants.WEIGHT_CUTOFF) * constants.WEIGHT_SCALE, 0.0)
  return w, e, dx, dy, live


def _forward_kernel(start_ref, count_ref, geometry_ref, colors_ref, out_ref, *,
                    block, tile, tiles_x, height, width, channels, capacity):
  """One tile: ``out[c, p] = Σ_pairs colors[c] · w(p)`` over the tile's run."""
  start = start_ref[0]
  count = jnp.minimum(count_ref[0], capacity)
  px, py, inside = _tile_pixels(tiles_x, tile, height, width)
  lane = jax.lax.broadcasted_iota(jnp.int32, (block,), 0)

  def body(step, acc):
    offset = start + step * block
    valid = step * block + lane < count
    w, _, _, _, _ = _weights(px, py, inside, valid, *_pair_block(geometry_ref, offset, block))
    return tuple(
        acc[ch] + jnp.sum(w * colors_ref[ch, pl.ds(offset, block)][None, :], axis=1)
        for ch in range(channels))

  zero = jnp.zeros((tile * tile,), jnp.float32)
  acc = jax.lax.fori_loop(0, _num_steps(count, block), body, (zero,) * channels)
  for ch in range(out_ref.shape[0]):
    out_ref[ch, :] = acc[ch] if ch < channels else zero


def _backward_kernel(start_ref, count_ref, geometry_ref, colors_ref, cotangent_ref, partial_ref,
                     *, block, tile, tiles_x, height, width, channels, capacity):
  """One tile: per-pair partial gradients ``d/d(mx, my, a, b, c, colors)``.

  ``partial[:, slot]`` is written for exactly the slots of this tile's run
  (masked store), so programs never write the same location.
  """
  start = start_ref[0]
  count = jnp.minimum(count_ref[0], capacity)
  px, py, inside = _tile_pixels(tiles_x, tile, height, width)
  lane = jax.lax.broadcasted_iota(jnp.int32, (block,), 0)
  cotangent = [cotangent_ref[ch, :] for ch in range(channels)]  # [tile²] each

  def body(step, carry):
    offset = start + step * block
    valid = step * block + lane < count
    mx, my, a, b, c = _pair_block(geometry_ref, offset, block)
    w, e, dx, dy, live = _weights(px, py, inside, valid, mx, my, a, b, c)
    grad_w = jnp.zeros_like(w)
    for ch in range(channels):
      color = colors_ref[ch, pl.ds(offset, block)]
      grad_w = grad_w + cotangent[ch][:, None] * color[None, :]
      plt.store(partial_ref.at[_row(NUM_GEOMETRY + ch), pl.ds(offset, block)],
                jnp.sum(cotangent[ch][:, None] * w, axis=0), mask=valid)
    # dw/dq = -½ e · WEIGHT_SCALE where the weight is not truncated.
    grad_q = jnp.where(live, grad_w * e * (-0.5 * constants.WEIGHT_SCALE), 0.0)
    gx = grad_q * dx
    gy = grad_q * dy
    # q = a dx² + 2 b dx dy + c dy², dx = px - mx, dy = py - my.
    rows = (
        -2.0 * (a * jnp.sum(gx, axis=0) + b * jnp.sum(gy, axis=0)),  # d/d mx
        -2.0 * (b * jnp.sum(gx, axis=0) + c * jnp.sum(gy, axis=0)),  # d/d my
        jnp.sum(gx * dx, axis=0),  # d/d a
        2.0 * jnp.sum(gx * dy, axis=0),  # d/d b
        jnp.sum(gy * dy, axis=0),  # d/d c
    )
    for k, row in enumerate(rows):
      plt.store(partial_ref.at[_row(k), pl.ds(offset, block)], row, mask=valid)
    return carry

  jax.lax.fori_loop(0, _num_steps(count, block), body, 0)


def _common(config, tiles_y, tiles_x, channels_padded):
  num_tiles = tiles_y * tiles_x
  scalar = pl.BlockSpec((1,), lambda t: (t,))
  whole = pl.BlockSpec()  # the whole array, indexed by hand
  tile_spec = pl.BlockSpec((pl.squeezed, channels_padded, config.pixels), lambda t: (t, 0, 0))
  compiler_params = plt.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
  return num_tiles, scalar, whole, tile_spec, compiler_params


def rasterize_forward(start, count, geometry, colors, *, config: RasterizeConfig, height: int,
                      width: int, channels: int, capacity: int, interpret: bool):
  """Launches the forward kernel.

  Args:
    start: ``[T]`` int32 first pair slot of each tile.
    count: ``[T]`` int32 pairs of each tile.
    geometry: ``[5, P + block]`` float32 pair rows ``mx, my, a, b, c``.
    colors: ``[Cp, P + block]`` float32 pair colours, ``Cp`` a power of two.
    config: launch parameters.
    height: image rows.
    width: image columns.
    channels: real channels ``C ≤ Cp``; padded channels are written as zero.
    capacity: most pairs a tile may hold (the loop bound).
    interpret: run in Pallas interpret mode (CPU).

  Returns:
    ``[T, Cp, tile²]`` float32 image tiles.
  """
  tiles_y = pl.cdiv(height, config.tile)
  tiles_x = pl.cdiv(width, config.tile)
  channels_padded = colors.shape[0]
  num_tiles, scalar, whole, tile_spec, compiler_params = _common(
      config, tiles_y, tiles_x, channels_padded)
  kernel = functools.partial(
      _forward_kernel, block=config.block, tile=config.tile, tiles_x=tiles_x, height=height,
      width=width, channels=channels, capacity=capacity)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((num_tiles, channels_padded, config.pixels), jnp.float32),
      grid=(num_tiles,),
      in_specs=[scalar, scalar, whole, whole],
      out_specs=tile_spec,
      interpret=interpret,
      name="gaussjax_rasterize_forward",
      compiler_params=compiler_params,
  )(start, count, geometry, colors)


def rasterize_backward(start, count, geometry, colors, cotangent, *, config: RasterizeConfig,
                       height: int, width: int, channels: int, capacity: int, interpret: bool):
  """Launches the backward kernel.

  Args:
    start, count, geometry, colors: as for ``rasterize_forward``.
    cotangent: ``[T, Cp, tile²]`` float32 gradient of the loss w.r.t. the image
      tiles (zero outside the image).
    config, height, width, channels, capacity, interpret: as for
      ``rasterize_forward``.

  Returns:
    ``[5 + Cp, P + block]`` float32 per-pair partial gradients, rows
    ``mx, my, a, b, c`` then the colours; slots outside every tile's run are
    left unwritten (undefined) and must be ignored.
  """
  tiles_y = pl.cdiv(height, config.tile)
  tiles_x = pl.cdiv(width, config.tile)
  channels_padded = colors.shape[0]
  num_tiles, scalar, whole, tile_spec, compiler_params = _common(
      config, tiles_y, tiles_x, channels_padded)
  kernel = functools.partial(
      _backward_kernel, block=config.backward_block, tile=config.tile, tiles_x=tiles_x,
      height=height, width=width, channels=channels, capacity=capacity)
  slots = geometry.shape[1]
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((NUM_GEOMETRY + channels_padded, slots), jnp.float32),
      grid=(num_tiles,),
      in_specs=[scalar, scalar, whole, whole, tile_spec],
      out_specs=whole,
      interpret=interpret,
      name="gaussjax_rasterize_backward",
      compiler_params=compiler_params,
  )(start, count, geometry, colors, cotangent)
