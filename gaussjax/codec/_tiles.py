"""Big images in bounded memory: tiled fitting, encoding and decoding.

Fitting holds per pixel the image, its rendering, the loss's intermediates
and their gradients: peak memory grows with the pixel count (a 6000x4000
photo reached 23 GB, issue 17). Here an image is cut into a grid of tiles;
each tile is fitted (or encoded) on its *crop*, the tile plus a ``margin``
of context on every side, so a fit's peak memory is that of one crop, never
of the image.

Seams: neighbouring crops overlap by ``2 · margin`` pixels around each tile
boundary; both fits see that band, and the renderer blends them there with
linear weights that fall from 1 to 0 across the band (a partition of unity:
the weights of all crops sum to 1 at every pixel). Each fit's own crop edge
(where a fit is worst) has weight 0, and no pixel switches abruptly from one
fit to the other. ``benchmarks/big.py`` measures the PSNR of a band around
the seams against the rest (``benchmarks/results/big_cpu.md``).

The grid (crops of one size around tiles that partition the image) and the
memory budget (``check_budget``, which refuses work over it up front with the
tile size that would fit) are in ``gaussjax.codec._tile_grid``, apart because
the command line plans with them before it imports JAX.

Call chain::

  encode_tiled(image, config, tile=, margin=)   per tile: _codec._encode(crop) (a version-1
                                                file) → a version-3 file
  decode_tiled(data, height=, width=)           per band of tiles: _codec.decode_single,
                                                render, blend
  fit_tiled(image, n, config, tile=)            per tile: fit_image(crop) → TiledGaussians
  render_tiled(tiled, height=, width=)          per band: render each crop, blend
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from gaussjax import constants
from gaussjax.codec._bitstream import DecodeError, Reader, Writer
from gaussjax.codec._codec import (
  MAX_FILE_BYTES,
  CodecConfig,
  _encode,
  _output_size,
  _read_header,
  decode_single,
  render_safe,
)
from gaussjax.codec._tile_grid import (  # noqa: F401 - the grid and budget, re-exported
  DEFAULT_MARGIN,
  DEFAULT_MEMORY_BUDGET_MB,
  DEFAULT_TILE,
  FIT_BASE_MB,
  FIT_BYTES_PER_PIXEL,
  IMAGE_BYTES_PER_SAMPLE,
  MAX_TILES,
  TILES_EXTRA_MB,
  MemoryBudgetError,
  TileGrid,
  check_budget,
  fit_memory_mb,
  largest_tile,
)
from gaussjax.core._gaussians import Gaussians, scale_gaussians
from gaussjax.core._metrics import bpp
from gaussjax.core._progress import progress_bar

MAGIC = b"\x89GJX"
TILED_VERSION = 3
MAX_SIDE = 1 << 20


def _ramp(n_out: int, scale: float, crop0: int, crop1: int, bounds_lo: int, bounds_hi: int,
          length: int, margin: int, out0: int) -> np.ndarray:
  """Blend weights ``[n_out]`` of one crop along one axis, at output pixels ``out0 + k``.

  In source pixels ``u`` (pixel centres), the weight rises linearly from 0 at
  ``bounds_lo - margin`` to 1 at ``bounds_lo + margin`` (unless the tile starts
  the axis), and falls likewise around ``bounds_hi``; it is 0 outside the crop.
  Neighbouring crops' weights sum to 1.
  """
  u = (out0 + np.arange(n_out) + 0.5) / scale
  w = np.ones(n_out, np.float32)
  if bounds_lo > 0:
    w = np.minimum(w, np.clip((u - (bounds_lo - margin)) / max(2 * margin, 1e-9), 0.0, 1.0)
                   if margin else (u >= bounds_lo).astype(np.float32))
  if bounds_hi < length:
    w = np.minimum(w, np.clip(((bounds_hi + margin) - u) / max(2 * margin, 1e-9), 0.0, 1.0)
                   if margin else (u < bounds_hi).astype(np.float32))
  w[(u < crop0) | (u >= crop1)] = 0.0
  return w.astype(np.float32)


# --------------------------------------------------------------------------- progress


def _progress(total: int, desc: str, enabled) -> Callable[[str], None]:
  """A per-tile progress bar (the library's one, ``core._progress``); returns ``tick(text)``.

  ``tick(None)`` closes it. ``enabled=False``: no bar; otherwise the bar shows
  when stderr is a terminal.
  """
  if enabled is False:
    return lambda text=None: None
  bar = progress_bar(total, desc=desc, unit="tile")

  def tick(text=""):
    if text is None:
      bar.close()
      return
    bar.set_postfix_str(text, refresh=False)
    bar.update(1)
  return tick


# --------------------------------------------------------------------------- images


def _as_array(image) -> np.ndarray:
  """A ``[H, W, C]`` array, kept as it is (uint8 stays uint8: 1 byte a sample)."""
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or 0 in array.shape:
    raise ValueError(f"image must have shape [H, W, C], got {array.shape}")
  if not 1 <= array.shape[2] <= 4:
    raise ValueError(f"image has {array.shape[2]} channels; gaussjax holds 1 to 4")
  if array.dtype not in (np.uint8, np.uint16) and not np.issubdtype(array.dtype, np.floating):
    raise TypeError(f"image must be float in [0, 1], uint8 or uint16, got {array.dtype}")
  return array


def _crop_float(image: np.ndarray, box) -> np.ndarray:
  y0, y1, x0, x1 = box
  crop = image[y0:y1, x0:x1]
  if crop.dtype == np.uint8:
    return crop.astype(np.float32) / 255.0
  if crop.dtype == np.uint16:
    return crop.astype(np.float32) / 65535.0
  crop = crop.astype(np.float32)
  if not np.all(np.isfinite(crop)):
    raise ValueError("image contains NaN or infinite values")
  return crop


# --------------------------------------------------------------------------- container


def is_tiled(data) -> bool:
  """True when ``data`` starts like a tiled (version-3) gaussjax file."""
  return len(data) >= 5 and bytes(data[:4]) == MAGIC and data[4] == TILED_VERSION


@dataclasses.dataclass(frozen=True)
class TiledFile:
  """A parsed tiled file: its grid and the byte range of each tile's version-1 file."""

  grid: TileGrid
  channels: int
  segments: tuple[tuple[int, int], ...]  # (offset, length) per tile, row-major
  data: bytes

  def segment(self, index: int) -> bytes:
    offset, length = self.segments[index]
    return self.data[offset:offset + length]


def pack(grid: TileGrid, channels: int, segments: Sequence[bytes]) -> bytes:
  """Frames per-tile version-1 files into one tiled (version-3) file (FORMAT.md)."""
  if len(segments) != len(grid):
    raise ValueError(f"{len(segments)} segments for {len(grid)} tiles")
  w = Writer()
  w.raw(MAGIC)
  w.u8(TILED_VERSION)
  w.u8(channels)
  w.u32(grid.width)
  w.u32(grid.height)
  w.varint(grid.rows)
  w.varint(grid.cols)
  w.varint(grid.margin)
  for s in segments:
    w.varint(len(s))
  w.u32(zlib.crc32(bytes(w.buf)))
  return bytes(w.buf) + b"".join(segments)


def unpack(data) -> TiledFile:
  """Parses and checks a tiled file's header and index (segments are checked when decoded)."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) > MAX_FILE_BYTES:
    raise DecodeError(f"file of {len(data)} bytes is over the limit of {MAX_FILE_BYTES}")
  if not is_tiled(data):
    raise DecodeError("not a tiled gaussjax file (version 3)")
  r = Reader(data)
  r.take(5, "magic and version")
  channels = r.u8("channels")
  if not 1 <= channels <= 4:
    raise DecodeError(f"channels={channels} must be in [1, 4]")
  width, height = r.u32("width"), r.u32("height")
  if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
    raise DecodeError(f"image size {width}x{height} must be within 1..{MAX_SIDE} per side")
  if width * height > constants.MAX_PIXELS:
    raise DecodeError(f"image size {width}x{height} is over MAX_PIXELS={constants.MAX_PIXELS}")
  rows = r.varint("tile rows", MAX_TILES)
  cols = r.varint("tile columns", MAX_TILES)
  margin = r.varint("margin", 1 << 16)
  if not (1 <= rows <= height and 1 <= cols <= width and rows * cols <= MAX_TILES):
    raise DecodeError(f"{rows}x{cols} tiles are invalid for {width}x{height}")
  try:
    grid = TileGrid(height, width, rows, cols, margin)
  except ValueError as e:
    raise DecodeError(f"invalid tile grid: {e}") from e
  lengths = [r.varint("segment length", MAX_FILE_BYTES) for _ in range(rows * cols)]
  header_end = r.pos
  stored = r.u32("header checksum")
  if stored != zlib.crc32(data[:header_end]):
    raise DecodeError("header checksum mismatch (the file is corrupt or truncated)")
  offset, segments = r.pos, []
  for length in lengths:
    segments.append((offset, length))
    offset += length
  if offset != len(data):
    raise DecodeError(f"segments end at byte {offset} but the file has {len(data)} bytes")
  if grid.crop_height > 65535 or grid.crop_width > 65535:
    raise DecodeError(f"tile crops of {grid.crop_height}x{grid.crop_width} are over 65535")
  # Every segment's own checksum and header, before the output is allocated.
  for index, (offset, length) in enumerate(segments):
    try:
      header, _ = _read_header(data[offset:offset + length])
    except DecodeError as e:
      raise DecodeError(f"tile {index}: {e}") from e
    if header.version != 1 or (header.height, header.width) != (grid.crop_height, grid.crop_width) \
        or header.channels != channels:
      raise DecodeError(f"tile {index} is a {header.width}x{header.height}x{header.channels} "
                        f"version-{header.version} file; expected the "
                        f"{grid.crop_width}x{grid.crop_height}x{channels} crop in version 1")
  return TiledFile(grid, channels, tuple(segments), data)


# --------------------------------------------------------------------------- encode


def encode_tiled(image, config=None, *, tile: int = DEFAULT_TILE, margin: int = DEFAULT_MARGIN,
                 memory_budget_mb: float | None = DEFAULT_MEMORY_BUDGET_MB,
                 progress=None) -> bytes:
  """Encodes an image tile by tile into one tiled gaussjax file (format version 3).

  Each tile's crop (the tile and ``margin`` pixels of context around it) is
  encoded as by ``gaussjax.encode`` into a version-1 file (so ``config.levels``
  must be 1); with ``config.bpp``
  each crop gets ``bpp · tile area / crop area`` so the whole file lands at
  ``bpp`` over the image (the overlap is paid for once per side). Peak
  memory: one crop's encode plus the image (``check_budget``).

  Args:
    image: ``[H, W, C]`` float in [0, 1], uint8 or uint16 (uint8 keeps the
      held image small: 1 byte a sample).
    config: ``CodecConfig`` (default ``CodecConfig()``).
    tile: tile side in pixels.
    margin: context around each tile, where neighbours blend.
    memory_budget_mb: refuse up front when the estimate is over this
      (None: no check).
    progress: ``None`` (a bar on stderr), ``False`` (none) or a stream.

  Returns:
    The file's bytes.

  Raises:
    MemoryBudgetError: the crops (and image) would not fit the budget.
    ValueError: bad image or options.
  """
  config = CodecConfig() if config is None else config
  if not isinstance(config, CodecConfig):
    raise TypeError(f"config must be a CodecConfig, got {type(config).__name__}")
  if config.levels > 1:  # the decoder (unpack) reads version-1 tiles only, as FORMAT.md says
    raise ValueError(f"levels={config.levels}: the tiles of a tiled file are single-level "
                     "(FORMAT.md, version 3); encode with levels=1 or without tiles")
  array = _as_array(image)
  h, w, c = array.shape
  grid = TileGrid.make(h, w, tile=tile, margin=margin)
  if grid.crop_height > 65535 or grid.crop_width > 65535:
    raise ValueError(f"tile={tile} gives crops over 65535 pixels a side")
  if memory_budget_mb is not None:
    check_budget(h, w, c, memory_budget_mb=memory_budget_mb, tile=tile, margin=margin)
  crop_area = grid.crop_height * grid.crop_width
  tick = _progress(len(grid), "encode", progress)
  segments = []
  try:
    for index in range(len(grid)):
      y0, y1, x0, x1 = grid.interior(index)
      tile_config = config
      if config.bpp is not None:
        share = (y1 - y0) * (x1 - x0) / crop_area
        tile_config = dataclasses.replace(config, bpp=config.bpp * share)
      segments.append(_encode(_crop_float(array, grid.crop(index)), tile_config))
      tick(f"{bpp(sum(map(len, segments)), h, w):.3f} bpp so far")
  finally:
    tick(None)
  return pack(grid, c, segments)


# --------------------------------------------------------------------------- decode


def _blend_bands(grid: TileGrid, channels: int, gaussians_of: Callable[[int], Gaussians],
                 out_h: int, out_w: int, backend: str, tick) -> Iterator[tuple[int, np.ndarray]]:
  """Yields ``(row0, band)``: finished ``[rows, out_w, C]`` float32 bands, top to bottom.

  Tile row ``r``'s crops are rendered and added (weighted) into a buffer of
  the rows they touch; rows that no later tile row touches are yielded. The
  buffer holds at most about two crop heights of the output.
  """
  sy, sx = out_h / grid.height, out_w / grid.width
  (yb, _, _), (xb, _, _) = grid.y, grid.x
  buffer = np.zeros((0, out_w, channels), np.float32)
  buffer_y0 = 0
  for r in range(grid.rows):
    crops = [grid.crop(r * grid.cols + c) for c in range(grid.cols)]
    cy0, cy1 = crops[0][0], crops[0][1]
    oy0, oy1 = max(0, int(math.floor(cy0 * sy))), min(out_h, int(math.ceil(cy1 * sy)))
    if oy1 > buffer_y0 + buffer.shape[0]:
      grow = oy1 - (buffer_y0 + buffer.shape[0])
      buffer = np.concatenate([buffer, np.zeros((grow, out_w, channels), np.float32)])
    wy = _ramp(oy1 - oy0, sy, cy0, cy1, int(yb[r]), int(yb[r + 1]), grid.height, grid.margin,
               oy0)
    for c, (_, _, cx0, cx1) in enumerate(crops):
      index = r * grid.cols + c
      ox0, ox1 = max(0, int(math.floor(cx0 * sx))), min(out_w, int(math.ceil(cx1 * sx)))
      wx = _ramp(ox1 - ox0, sx, cx0, cx1, int(xb[c]), int(xb[c + 1]), grid.width, grid.margin,
                 ox0)
      g = gaussians_of(index)
      if g.num_gaussians:
        # Crop coordinates → output pixels of the box [oy0, oy1) x [ox0, ox1).
        g = scale_gaussians(Gaussians(*(np.asarray(a, np.float32) for a in g)), sy, sx)
        shift = np.asarray([cx0 * sx - ox0, cy0 * sy - oy0], np.float32)
        g = Gaussians(np.asarray(g.means) + shift, np.asarray(g.chol), np.asarray(g.colors))
        piece = np.asarray(render_safe(g, oy1 - oy0, ox1 - ox0, backend=backend))
        buffer[oy0 - buffer_y0:oy1 - buffer_y0, ox0:ox1] += piece * (wy[:, None, None]
                                                                    * wx[None, :, None])
      tick("")
    if r + 1 < grid.rows:
      next_y0 = max(0, int(math.floor(grid.crop((r + 1) * grid.cols)[0] * sy)))
    else:
      next_y0 = out_h
    done = next_y0 - buffer_y0
    if done > 0:
      yield buffer_y0, np.clip(buffer[:done], 0.0, 1.0)
      buffer = buffer[done:].copy()
      buffer_y0 = next_y0


def decode_tiled(data, *, height: int | None = None, width: int | None = None,
                 backend: str = "auto", progress=False, dtype=np.float32) -> np.ndarray:
  """Decodes a tiled file to an image, rendering one band of tiles at a time.

  Besides the output (``dtype``: float32, or uint8 for a quarter of the
  memory), memory holds one band of about two crop heights in float32 and
  one tile's Gaussians.

  Args:
    data: the file's bytes.
    height: output rows (default: the encoded height; the aspect ratio is
      kept when only ``width`` is given).
    width: output columns.
    backend: renderer.
    progress: as in ``encode_tiled`` (default: none).
    dtype: ``np.float32`` (values in [0, 1]) or ``np.uint8`` (rounded).

  Returns:
    ``[height, width, C]`` image.
  """
  parsed = unpack(data)
  grid = parsed.grid
  out_h, out_w = _output_size((grid.height, grid.width), height, width)
  dtype = np.dtype(dtype)
  if dtype not in (np.dtype(np.float32), np.dtype(np.uint8)):
    raise ValueError(f"dtype={dtype} must be float32 or uint8")
  out = np.empty((out_h, out_w, parsed.channels), dtype)
  tick = _progress(len(grid), "decode", progress)
  try:
    for y0, band in _blend_bands(grid, parsed.channels, lambda i: _segment_gaussians(parsed, i),
                                 out_h, out_w, backend, tick):
      if dtype == np.uint8:
        out[y0:y0 + band.shape[0]] = np.round(band * 255.0).astype(np.uint8)
      else:
        out[y0:y0 + band.shape[0]] = band
  finally:
    tick(None)
  return out


# Outputs larger than this (pixels) are rendered in bands of BAND_ROWS rows.
BAND_PIXELS = 1 << 22
BAND_ROWS = 256


def render_banded(gaussians: Gaussians, height: int, width: int, *,
                  source_size: tuple[int, int] | None = None, backend: str = "auto",
                  rows: int | None = None) -> np.ndarray:
  """Renders Gaussians ``rows`` (``BAND_ROWS``) output rows at a time into ``[H, W, C]`` float32.

  The same image as ``render`` (each band is the full render's rows: the means
  are shifted up by the band's first row), clipped to [0, 1], with the
  renderer's working memory bounded by one band instead of the whole output.
  """
  g = Gaussians(*(np.asarray(a, np.float32) for a in gaussians))
  if source_size is not None and tuple(source_size) != (height, width):
    g = scale_gaussians(g, height / source_size[0], width / source_size[1])
    g = Gaussians(*(np.asarray(a, np.float32) for a in g))
  out = np.empty((height, width, g.channels), np.float32)
  rows = BAND_ROWS if rows is None else rows
  for y0 in range(0, height, rows):
    y1 = min(y0 + rows, height)
    band = g._replace(means=g.means - np.asarray([0.0, y0], np.float32))
    out[y0:y1] = np.clip(np.asarray(render_safe(band, y1 - y0, width, backend=backend)), 0, 1)
  return out


def _segment_gaussians(parsed: TiledFile, index: int) -> Gaussians:
  g, size = decode_single(parsed.segment(index))
  expected = (parsed.grid.crop_height, parsed.grid.crop_width)
  if size != expected:
    raise DecodeError(f"tile {index} is {size[0]}x{size[1]}, expected the crop size "
                      f"{expected[0]}x{expected[1]}")
  if g.channels != parsed.channels:
    raise DecodeError(f"tile {index} has {g.channels} channels, the file {parsed.channels}")
  return g


def info_tiled(data) -> dict:
  """Header fields of a tiled file and each tile's size in bytes."""
  parsed = unpack(data)
  grid = parsed.grid
  return {"version": TILED_VERSION, "width": grid.width, "height": grid.height,
          "channels": parsed.channels, "tile_rows": grid.rows, "tile_cols": grid.cols,
          "margin": grid.margin, "crop": [grid.crop_height, grid.crop_width],
          "tile_bytes": [length for _, length in parsed.segments], "bytes": len(parsed.data),
          "bpp": bpp(len(parsed.data), grid.height, grid.width)}


# --------------------------------------------------------------------------- fit


@dataclasses.dataclass(frozen=True)
class TiledGaussians:
  """Gaussians of a tiled fit: one set per tile, in its crop's pixel coordinates."""

  grid: TileGrid
  tiles: tuple[Gaussians, ...]

  @property
  def num_gaussians(self) -> int:
    return sum(g.num_gaussians for g in self.tiles)


def fit_tiled(image, num_gaussians: int, config=None, *, tile: int = DEFAULT_TILE,
              margin: int = DEFAULT_MARGIN,
              memory_budget_mb: float | None = DEFAULT_MEMORY_BUDGET_MB,
              key=None, progress=None) -> TiledGaussians:
  """Fits an image tile by tile (``gaussjax.fit_image`` on each crop).

  Each crop gets ``num_gaussians · crop area / image area`` Gaussians (at
  least 1), the density of an untiled fit of ``num_gaussians``; the overlaps
  are fitted twice, so the total is a little over ``num_gaussians``.

  Args:
    image: ``[H, W, C]`` float in [0, 1], uint8 or uint16.
    num_gaussians: Gaussians for the whole image (see above).
    config: ``FitConfig`` of each crop's fit.
    tile: tile side; margin: context around each tile.
    memory_budget_mb: refuse up front when over it (None: no check).
    key: PRNG key (``jax.random.key(0)`` when None), the same for every tile.
    progress: as in ``encode_tiled``.

  Returns:
    ``TiledGaussians``; ``render_tiled`` renders them.
  """
  import jax

  from gaussjax.fitting._fit import FitConfig, fit_image
  config = FitConfig() if config is None else config
  array = _as_array(image)
  h, w, c = array.shape
  grid = TileGrid.make(h, w, tile=tile, margin=margin)
  if memory_budget_mb is not None:
    check_budget(h, w, c, memory_budget_mb=memory_budget_mb, tile=tile, margin=margin,
                 command="fit")
  key = jax.random.key(0) if key is None else key
  per_tile = max(1, round(num_gaussians * grid.crop_height * grid.crop_width / (h * w)))
  tick = _progress(len(grid), "fit", progress)
  tiles = []
  try:
    for index in range(len(grid)):
      g, history = fit_image(_crop_float(array, grid.crop(index)), per_tile, config, key=key)
      tiles.append(Gaussians(*(np.asarray(a, np.float32) for a in g)))
      tick(f"PSNR {float(history.psnr[-1]):.2f} dB")
  finally:
    tick(None)
  return TiledGaussians(grid, tuple(tiles))


def render_tiled(tiled: TiledGaussians, *, height: int | None = None, width: int | None = None,
                 backend: str = "auto", dtype=np.float32, progress=False) -> np.ndarray:
  """Renders ``TiledGaussians`` band by band, blending the crops (as ``decode_tiled``)."""
  grid = tiled.grid
  out_h, out_w = _output_size((grid.height, grid.width), height, width)
  channels = tiled.tiles[0].channels
  out = np.empty((out_h, out_w, channels), dtype)
  tick = _progress(len(grid), "render", progress)
  try:
    for y0, band in _blend_bands(grid, channels, lambda i: tiled.tiles[i], out_h, out_w, backend,
                                 tick):
      out[y0:y0 + band.shape[0]] = (np.round(band * 255.0).astype(np.uint8)
                                    if np.dtype(dtype) == np.uint8 else band)
  finally:
    tick(None)
  return out


# --------------------------------------------------------------------------- metrics


def psnr_banded(expected, actual, *, rows: int = 256, mask: np.ndarray | None = None) -> float:
  """PSNR (dB) of ``actual`` against ``expected``, in bands of ``rows`` rows.

  Works on uint8 or float images without a float copy of the whole image
  (values are compared in [0, 1]); ``mask`` ``[H, W]`` restricts it to
  some pixels.
  """
  expected, actual = _as_array(expected), _as_array(actual)
  if expected.shape != actual.shape:
    raise ValueError(f"shapes differ: {expected.shape} and {actual.shape}")
  total, count = 0.0, 0
  for y0 in range(0, expected.shape[0], rows):
    box = (y0, min(y0 + rows, expected.shape[0]), 0, expected.shape[1])
    diff = (np.clip(_crop_float(actual, box), 0, 1) - _crop_float(expected, box)) ** 2
    if mask is not None:
      m = mask[box[0]:box[1]]
      total += float(diff[m].sum())
      count += int(m.sum()) * expected.shape[2]
    else:
      total += float(diff.sum())
      count += diff.size
  mse = total / max(count, 1)
  return float("inf") if mse == 0 else -10.0 * math.log10(mse)

