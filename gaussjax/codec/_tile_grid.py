"""The tile grid of big images and the memory budget: arithmetic only, no JAX.

``gaussjax.codec._tiles`` fits, encodes and decodes big images tile by tile
on this grid; the command line (``gaussjax.cli._cli_tiles``) plans with it
and refuses work over the budget before it imports JAX or decodes a pixel,
which is why these live apart from ``_tiles`` (importing JAX takes seconds).

Grid rule (also in FORMAT.md, version 3): an axis of length ``L`` cut into
``k`` tiles has tile boundaries ``b_i = floor(i · L / k)``; every crop has the
same size ``P = min(L, max_i(b_{i+1} - b_i) + 2 · margin)`` and starts at
``clip(b_i - margin, 0, L - P)``.

Memory budget: ``FIT_BASE_MB + FIT_BYTES_PER_PIXEL · crop pixels`` for one
crop's work (a conservative bound of one-piece encodes measured on the CPU
machine, ``benchmarks/results/big_cpu.json``, ``memory_model``), plus, when
tiled, ``IMAGE_BYTES_PER_SAMPLE`` per image sample and ``TILES_EXTRA_MB``.
``check_budget`` refuses work over the budget up front, with the tile size
that would fit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Most tiles in one image (the tiled format's limit too, FORMAT.md).
MAX_TILES = 1 << 16

# Default tile (interior) side and context margin, in pixels: a 544x544 crop,
# whose work is estimated at under 1 GB (fit_memory_mb).
DEFAULT_TILE = 512
DEFAULT_MARGIN = 16

# Peak memory of fitting or encoding one piece of P pixels, in MB, is at most
# FIT_BASE_MB + FIT_BYTES_PER_PIXEL · P / 2**20. Measured on this 2-core machine
# (jax 0.10, CPU, xla backend): see benchmarks/results/big_cpu.json ("memory_model"),
# which lists the measured peaks next to these estimates.
FIT_BASE_MB = 600.0
FIT_BYTES_PER_PIXEL = 1000.0

# Default budget for one process (MB): the whole job, image included.
DEFAULT_MEMORY_BUDGET_MB = 4096


class MemoryBudgetError(ValueError):
  """The work asked for would exceed the memory budget (raised before any work)."""


# --------------------------------------------------------------------------- budget


def fit_memory_mb(height: int, width: int) -> float:
  """Estimated peak memory (MB) of fitting or encoding a ``height x width`` piece at once."""
  return FIT_BASE_MB + FIT_BYTES_PER_PIXEL * height * width / 2**20


# Bytes per image sample that a tiled job holds besides one crop's work: the
# float32 image, the transient copies of reading it (8-bit decode, a float
# temporary) and the 8-bit output: 9. (5, the image and output alone, fell
# short of the tiled encode's peak in benchmarks/results/big_cpu.json.)
IMAGE_BYTES_PER_SAMPLE = 9
# Compiled programs and caches that build up over many tiles (MB).
TILES_EXTRA_MB = 256.0


def _image_mb(height: int, width: int, channels: int) -> float:
  return height * width * channels * IMAGE_BYTES_PER_SAMPLE / 2**20 + TILES_EXTRA_MB


def largest_tile(memory_budget_mb: float, *, height: int = 0, width: int = 0, channels: int = 3,
                 margin: int = DEFAULT_MARGIN) -> int:
  """The largest tile side whose crop fits the budget (a multiple of 64, or of 16 below 64).

  ``height, width, channels`` count the image held alongside (0: not counted).
  Returns 0 when no tile of at least ``max(16, 4 · margin)`` fits.
  """
  free = memory_budget_mb - _image_mb(height, width, channels) - FIT_BASE_MB
  if free <= 0:
    return 0
  side = math.isqrt(int(free * 2**20 / FIT_BYTES_PER_PIXEL)) - 2 * margin
  side = (side // 64) * 64 if side >= 64 else (side // 16) * 16
  return side if side >= max(16, 4 * margin) else 0


def estimate_mb(height: int, width: int, channels: int = 3, *, tile: int | None = None,
                margin: int = DEFAULT_MARGIN) -> tuple[float, str]:
  """``(MB, "WxH in ...")``: the estimated peak memory of the work, and how it is cut.

  ``tile`` None: the image in one piece; else in tiles of that side (the
  grid of ``TileGrid.make``, whose errors it raises).
  """
  if tile is None:
    return fit_memory_mb(height, width), f"{width}x{height} in one piece"
  grid = TileGrid.make(height, width, tile=tile, margin=margin)
  need = fit_memory_mb(grid.crop_height, grid.crop_width) + _image_mb(height, width, channels)
  return need, f"{width}x{height} in {grid.cols}x{grid.rows} tiles of {tile}"


def check_budget(height: int, width: int, channels: int = 3, *,
                 memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                 tile: int | None = None, margin: int = DEFAULT_MARGIN,
                 command: str = "encode") -> None:
  """Raises ``MemoryBudgetError`` when the work would exceed ``memory_budget_mb``.

  Args:
    height: image rows.
    width: image columns.
    channels: image channels.
    memory_budget_mb: the budget (MB).
    tile: tile side of a tiled job; None for the image in one piece.
    margin: the tiled job's context margin.
    command: the CLI command named in the advice.
  """
  if not (isinstance(memory_budget_mb, (int, float)) and memory_budget_mb > 0):
    raise ValueError(f"memory_budget_mb={memory_budget_mb!r} must be a positive number")
  need, piece = estimate_mb(height, width, channels, tile=tile, margin=margin)
  if need <= memory_budget_mb:
    return
  advice = largest_tile(memory_budget_mb, height=height, width=width, channels=channels,
                        margin=margin)
  if advice:
    what = (f"use tiles: gaussjax {command} --tile {advice} (or smaller; "
            f"gaussjax.{command}_tiled(..., tile={advice})), or raise the budget "
            "(--memory-budget MB)")
  else:
    what = ("no tile fits beside the image: raise the budget (--memory-budget MB) or use a "
            "smaller image")
  raise MemoryBudgetError(
      f"{command} of {piece} needs about {need:.0f} MB, over the memory budget of "
      f"{memory_budget_mb:.0f} MB; {what}")


# --------------------------------------------------------------------------- grid


def _axis(length: int, count: int, margin: int) -> tuple[np.ndarray, int, np.ndarray]:
  """Tile boundaries ``[count + 1]``, the crop size and crop starts ``[count]`` of one axis."""
  bounds = (np.arange(count + 1, dtype=np.int64) * length) // count
  crop = int(min(length, int(np.diff(bounds).max()) + 2 * margin))
  starts = np.clip(bounds[:-1] - margin, 0, length - crop)
  return bounds, crop, starts


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """The tiles of an image: interiors that partition it and equal-sized crops around them.

  Attributes:
    height: image rows.
    width: image columns.
    rows: tiles per column.
    cols: tiles per row.
    margin: context around each tile (pixels), where neighbouring crops blend.
  """

  height: int
  width: int
  rows: int
  cols: int
  margin: int

  @staticmethod
  def make(height: int, width: int, *, tile: int = DEFAULT_TILE,
           margin: int = DEFAULT_MARGIN) -> "TileGrid":
    """The grid with tiles of at most ``tile x tile`` pixels."""
    for name, v in (("height", height), ("width", width), ("tile", tile)):
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}={v!r} must be a positive int")
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < 0:
      raise ValueError(f"margin={margin!r} must be a non-negative int")
    if tile < 4 * margin:
      raise ValueError(f"tile={tile} must be at least 4 times the margin ({margin})")
    return TileGrid(int(height), int(width), -(-int(height) // tile), -(-int(width) // tile),
                    int(margin))

  def __post_init__(self):
    if not (1 <= self.rows <= self.height and 1 <= self.cols <= self.width):
      raise ValueError(f"{self.rows}x{self.cols} tiles do not fit {self.height}x{self.width}")
    if self.rows * self.cols > MAX_TILES:
      raise ValueError(f"{self.rows}x{self.cols} tiles is over {MAX_TILES}; use larger tiles")
    for length, count in ((self.height, self.rows), (self.width, self.cols)):
      # Blend bands of one tile's two sides must not overlap (weights sum to 1).
      if count > 1 and length // count < 2 * self.margin:
        raise ValueError(f"tiles of {length // count} pixels are too small for margin "
                         f"{self.margin}; use larger tiles or a smaller margin")

  @property
  def y(self):
    return _axis(self.height, self.rows, self.margin)

  @property
  def x(self):
    return _axis(self.width, self.cols, self.margin)

  @property
  def crop_height(self) -> int:
    return self.y[1]

  @property
  def crop_width(self) -> int:
    return self.x[1]

  def __len__(self) -> int:
    return self.rows * self.cols

  def crop(self, index: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of tile ``index``'s crop (row-major tile order)."""
    (_, ch, ys), (_, cw, xs) = self.y, self.x
    r, c = divmod(index, self.cols)
    return int(ys[r]), int(ys[r]) + ch, int(xs[c]), int(xs[c]) + cw

  def interior(self, index: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of tile ``index`` itself."""
    (yb, _, _), (xb, _, _) = self.y, self.x
    r, c = divmod(index, self.cols)
    return int(yb[r]), int(yb[r + 1]), int(xb[c]), int(xb[c + 1])

  def seam_mask(self, band: int) -> np.ndarray:
    """``[H, W]`` bool: pixels within ``band`` of an inner tile boundary."""
    (yb, _, _), (xb, _, _) = self.y, self.x
    rows = np.zeros(self.height, bool)
    cols = np.zeros(self.width, bool)
    for b in yb[1:-1]:
      rows[max(0, b - band):b + band] = True
    for b in xb[1:-1]:
      cols[max(0, b - band):b + band] = True
    return rows[:, None] | cols[None, :]
