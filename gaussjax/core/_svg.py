"""SVG input: vector drawings rasterised at super-resolution, then area-averaged.

``load_svg`` is what ``gaussjax.load_image`` calls for ``.svg`` / ``.svgz``
files. The drawing is rendered by resvg (the ``resvg-py`` binding, the
optional extra ``pip install "gaussjax[svg]"``) at ``supersample`` times the
output size, then every ``supersample x supersample`` block of pixels is
averaged (a box filter: the exact area coverage of each output pixel, up to
the super-sampling), which gives anti-aliased edges as the drawing's own
geometry defines them.

Why resvg: its wheel is one self-contained file (about 1.4 MB, Rust, no
system library), and it is the reference renderer of the resvg SVG test
suite. CairoSVG is pure Python but needs the system cairo library (through
``cairocffi``) and renders fewer features of that suite.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from gaussjax import constants

SVG_EXTENSIONS = (".svg", ".svgz")

# Default and largest super-sampling factor per axis (the seed asks for 4-8x).
DEFAULT_SUPERSAMPLE = 4
MAX_SUPERSAMPLE = 16

# The largest super-sampled raster rendered (RGBA, 4 bytes a pixel: 1 GiB).
MAX_RASTER_PIXELS = constants.MAX_PIXELS

_MISSING = ('reading SVG files needs the optional dependency resvg-py: '
            'pip install "gaussjax[svg]" (or pip install resvg-py)')


class MissingExtraError(ImportError, ValueError):
  """An optional dependency is not installed (a ``ValueError`` too, so the CLI prints one line)."""


def is_svg(path) -> bool:
  """True when ``path`` names an SVG file (by extension)."""
  return os.fspath(path).lower().endswith(SVG_EXTENSIONS)


def _resvg():
  # Imported on use: an optional dependency (the "svg" extra).
  try:
    import resvg_py
  except ImportError as e:
    raise MissingExtraError(_MISSING) from e
  return resvg_py


def _render(resvg_py, path: str, **size) -> Image.Image:
  try:
    data = resvg_py.svg_to_bytes(svg_path=path, **size)
  except (ValueError, RuntimeError) as e:  # resvg: invalid SVG or render failure
    raise ValueError(f"cannot render SVG {path!r}: {e}") from e
  image = Image.open(io.BytesIO(bytes(data)))
  image.load()
  return image


def load_svg(path, *, supersample: int = DEFAULT_SUPERSAMPLE,
             size: tuple[int, int] | None = None,
             max_pixels: int = constants.MAX_PIXELS) -> np.ndarray:
  """Rasterises an SVG file as float32 ``[H, W, C]`` in [0, 1].

  Args:
    path: ``.svg`` or ``.svgz`` file.
    supersample: rendered at this many times the output size per axis, then
      each block averaged (1 = no super-sampling).
    size: output ``(height, width)``; defaults to the SVG's own size (its
      ``width``/``height``, or its ``viewBox``). A size of another aspect
      ratio stretches the drawing.
    max_pixels: refuse outputs with more pixels than this.

  Returns:
    ``[H, W, 3]`` when every pixel is opaque, else ``[H, W, 4]`` (RGBA, not
    premultiplied, transparent where the drawing leaves the canvas empty).

  Raises:
    MissingExtraError: resvg-py is not installed (an ``ImportError`` and a
      ``ValueError``; the message says how to install it).
    ValueError: not a valid SVG, a bad option, or too many pixels.
  """
  path = os.fspath(path)
  if (isinstance(supersample, bool) or not isinstance(supersample, int)
      or not 1 <= supersample <= MAX_SUPERSAMPLE):
    raise ValueError(f"supersample={supersample!r} must be an int in 1..{MAX_SUPERSAMPLE}")
  if size is not None:
    if (len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0
                              for v in size)):
      raise ValueError(f"size={size!r} must be (height, width), two positive ints")
  resvg_py = _resvg()
  if size is None:
    approx_h, approx_w = _natural_size(resvg_py, path)
  else:
    approx_h, approx_w = size
  if approx_w * approx_h > max_pixels:
    raise ValueError(f"SVG {path!r} at about {approx_w}x{approx_h} is over the limit of "
                     f"{max_pixels} pixels; choose a smaller size")
  if approx_w * approx_h * supersample ** 2 > MAX_RASTER_PIXELS:
    raise ValueError(
        f"SVG {path!r} at about {approx_w}x{approx_h} with supersample={supersample} needs "
        f"{approx_w * approx_h * supersample ** 2} pixels, over {MAX_RASTER_PIXELS}; "
        "lower supersample or the size")
  if size is None:
    big = _render(resvg_py, path, zoom=float(supersample))
    width = max(1, round(big.size[0] / supersample))
    height = max(1, round(big.size[1] / supersample))
  else:
    height, width = size
    big = _render(resvg_py, path, width=width * supersample, height=height * supersample)
  target = (width * supersample, height * supersample)
  if big.size != target:  # rounding of the natural size, or another aspect ratio
    big = big.resize(target, Image.Resampling.BILINEAR)
  rgba = np.asarray(big.convert("RGBA"), np.float32) / 255.0
  del big
  image = _area_average(rgba, supersample)
  if np.all(image[..., 3] >= 1.0 - 0.5 / 255.0):
    return np.ascontiguousarray(image[..., :3])
  return image


def svg_size(path, *, size: tuple[int, int] | None = None) -> tuple[int, int]:
  """``(height, width)`` that ``load_svg`` will return, without rendering the drawing.

  ``size`` when given; else the drawing's own size from small renders (to
  within ``max(1, side / PROBE_SIDE)`` pixels, see ``_natural_size``). Needs resvg-py
  (``MissingExtraError`` otherwise), so a missing extra is reported before
  any work.
  """
  resvg_py = _resvg()
  return tuple(size) if size is not None else _natural_size(resvg_py, os.fspath(path))


# Side (pixels) of the probe render that measures a drawing's own size: the
# size is then known to within max(1, side / PROBE_SIDE) pixels.
PROBE_SIDE = 512


def _natural_size(resvg_py, path: str) -> tuple[int, int]:
  """``(height, width)`` of the drawing, from small renders (cheap, before the big one).

  A coarse probe (resvg refuses a zoom that makes a side vanish, so coarser
  zooms fall back to finer ones) gives the size to within 64 pixels; a
  second one at ``PROBE_SIDE`` pixels, unless the first was as fine, to
  within ``max(1, side / PROBE_SIDE)`` pixels.
  """
  for inverse_zoom in (64, 8, 1):
    try:
      probe = _render(resvg_py, path, zoom=1.0 / inverse_zoom)
    except ValueError:
      if inverse_zoom == 1:
        raise
      continue
    height, width = probe.size[1] * inverse_zoom, probe.size[0] * inverse_zoom
    zoom = min(1.0, PROBE_SIDE / max(height, width))
    if zoom > 1.0 / inverse_zoom:
      probe = _render(resvg_py, path, zoom=zoom)
      height, width = round(probe.size[1] / zoom), round(probe.size[0] / zoom)
    return height, width
  raise AssertionError("unreachable")


def _area_average(rgba: np.ndarray, factor: int) -> np.ndarray:
  """Box-filters ``[H·f, W·f, 4]`` RGBA to ``[H, W, 4]``, averaging colours by alpha.

  Colours are averaged premultiplied (a half-covered pixel of a red shape on
  nothing is red at half alpha, not dark red) and divided back.
  """
  h, w = rgba.shape[0] // factor, rgba.shape[1] // factor
  alpha = rgba[..., 3:]
  premultiplied = np.concatenate([rgba[..., :3] * alpha, alpha], axis=-1)
  mean = premultiplied.reshape(h, factor, w, factor, 4).mean(axis=(1, 3))
  out = np.empty_like(mean)
  a = mean[..., 3:]
  with np.errstate(divide="ignore", invalid="ignore"):
    out[..., :3] = np.where(a > 0, mean[..., :3] / np.maximum(a, 1e-12), 0.0)
  out[..., 3:] = a
  return np.clip(out, 0.0, 1.0).astype(np.float32)
