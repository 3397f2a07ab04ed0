"""Reading and writing image files through Pillow.

Images in gaussjax are float32 ``[H, W, C]`` arrays in [0, 1]: C = 1 for grey,
3 for RGB, 4 for RGBA. ``load_image`` converts any common file to that form:
8- and 16-bit, bilevel, grey, grey+alpha, palette (with or without
transparency), RGB, RGBA, CMYK, with the EXIF orientation applied.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from gaussjax import constants
from gaussjax.core import _svg

# Formats ``save_image`` writes, by file extension.
SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".ppm": "PPM",
    ".pgm": "PPM",
}


def load_image(path, *, max_pixels: int = constants.MAX_PIXELS, svg_supersample: int = 4,
               svg_size: tuple[int, int] | None = None) -> np.ndarray:
  """Reads an image file as float32 ``[H, W, C]`` in [0, 1].

  Grey (and bilevel) files give C = 1, colour files C = 3, files with an alpha
  channel or palette transparency C = 4 (grey + alpha becomes RGBA). 16-bit
  grey files keep their precision (divided by 65535); 16-bit colour PNGs are
  read by Pillow at 8 bits per channel (a Pillow limitation). The EXIF
  orientation tag is applied, so the array is upright as a viewer shows it.

  Args:
    path: file path (``str`` or ``os.PathLike``).
    max_pixels: refuse images with more pixels than this
      (``gaussjax.constants.MAX_PIXELS``, 2**28, by default); checked from the
      header before any pixel is decoded.
    svg_supersample: ``.svg``/``.svgz`` files only: rendered at this many
      times the output size per axis, then area-averaged (``gaussjax.core._svg``;
      needs ``pip install "gaussjax[svg]"``).
    svg_size: SVG files only: output ``(height, width)``; defaults to the
      SVG's own size.

  Returns:
    ``[H, W, C]`` float32 NumPy array.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ValueError: the file is empty, is not an image Pillow can read, is
      truncated, or has more than ``max_pixels`` pixels.
  """
  path = _checked_path(path)
  if _svg.is_svg(path):
    return _svg.load_svg(path, supersample=svg_supersample, size=svg_size, max_pixels=max_pixels)
  with _open_raster(path, max_pixels) as img:
    img = ImageOps.exif_transpose(img)
    return _to_float(img)


def image_header(path, *, max_pixels: int = constants.MAX_PIXELS,
                 svg_size: tuple[int, int] | None = None) -> tuple[int, int, int | None]:
  """``(height, width, channels)`` that ``load_image`` would return, without decoding pixels.

  Read from the file's header (Pillow opens files lazily), with the EXIF
  orientation applied, and checked as ``load_image`` checks it (the same
  errors, raised before any pixel is decoded). For an SVG, ``channels`` is
  None (3 or 4 is known once it is rendered) and the size is its own to
  within ``max(1, side / 512)`` pixels unless ``svg_size`` is given
  (``gaussjax.core._svg.svg_size``).

  Args:
    path: file path.
    max_pixels: as ``load_image``.
    svg_size: as ``load_image``.

  Raises:
    FileNotFoundError, ValueError: as ``load_image``.
  """
  path = _checked_path(path)
  if _svg.is_svg(path):
    height, width = _svg.svg_size(path, size=svg_size)
    return height, width, None
  with _open_raster(path, max_pixels) as img:
    width, height = img.size
    if _orientation(img) in _TRANSPOSED:
      width, height = height, width
    return height, width, _channels(img)


# EXIF orientations that swap width and height (transposed, rotated 90 or 270 degrees).
_TRANSPOSED = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int | None:
  """The EXIF orientation tag from the header, without decoding pixels.

  A PNG's EXIF may follow its pixel data, where Pillow's ``getexif`` would
  decode the whole image to reach it: only an ``eXIf`` chunk before the
  pixels is read (a PNG with its EXIF after the pixels, rare, is reported
  unrotated here; ``load_image`` still applies it).
  """
  if img.format == "PNG" and "exif" not in img.info:
    return None
  return img.getexif().get(ExifTags.Base.Orientation)


def _checked_path(path) -> str:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"image file {path!r} does not exist")
  if os.path.isdir(path):
    raise ValueError(f"image path {path!r} is a directory, not a file")
  if os.path.getsize(path) == 0:
    raise ValueError(f"image file {path!r} is empty (0 bytes)")
  return path


@contextlib.contextmanager
def _open_raster(path: str, max_pixels: int):
  """Pillow's lazy open of ``path`` (header read, no pixels yet), its size checked.

  Pillow's errors, there or in the ``with`` body (decoding), become ``ValueError``.
  """
  try:
    with warnings.catch_warnings():
      # Pillow's own decompression-bomb guard is replaced by max_pixels below.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      with Image.open(path) as img:
        w, h = img.size
        if w * h > max_pixels:
          raise ValueError(
              f"image {path!r} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
              "(raise it with load_image(..., max_pixels=...))")
        yield img
  except UnidentifiedImageError as e:
    raise ValueError(f"{path!r} is not an image file Pillow can read") from e
  except Image.DecompressionBombError as e:
    raise ValueError(f"image {path!r} is too large to decode: {e}") from e
  except (OSError, SyntaxError) as e:  # truncated or corrupt data
    raise ValueError(f"cannot decode image {path!r}: {e}") from e


def _channels(img: Image.Image) -> int:
  """The channels ``_to_float`` gives an image of ``img``'s mode."""
  mode = img.mode
  if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
    return 1
  if mode == "P":
    return 4 if "transparency" in img.info else 3
  if mode in ("PA", "LA", "La", "RGBA", "RGBa"):
    return 4
  if mode in ("RGB", "CMYK", "YCbCr", "LAB", "HSV"):
    return 3
  return 4 if "A" in mode else 3


def _to_float(img: Image.Image) -> np.ndarray:
  mode = img.mode
  if mode == "P" or mode == "PA":
    has_alpha = mode == "PA" or "transparency" in img.info
    img = img.convert("RGBA" if has_alpha else "RGB")
  elif mode == "LA" or mode == "La":
    img = img.convert("RGBA")
  elif mode == "1":
    img = img.convert("L")
  elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
    img = img.convert("RGB")
  elif mode == "RGBa":
    img = img.convert("RGBA")
  mode = img.mode
  if mode in ("L", "RGB", "RGBA"):
    return (np.asarray(img, np.float32) / 255.0)[..., None] if mode == "L" else np.asarray(img, np.float32) / 255.0
  if mode.startswith("I;16") or mode == "I":
    # 16-bit grey (PNG, TIFF). Pillow reports 16-bit PNGs as "I" or "I;16".
    array = np.asarray(img).astype(np.float32)
    return np.clip(array / 65535.0, 0.0, 1.0)[..., None]
  if mode == "F":
    return np.clip(np.asarray(img, np.float32), 0.0, 1.0)[..., None]
  if mode in ("RGB;16", "RGBA;16") or mode.endswith(";16"):  # pragma: no cover (Pillow version dependent)
    array = np.asarray(img).astype(np.float32)
    return array / 65535.0
  return np.asarray(img.convert("RGBA" if "A" in mode else "RGB"), np.float32) / 255.0


def save_image(path, image, *, bits: int = 8) -> None:
  """Writes a ``[H, W, C]`` (or ``[H, W]``) image in [0, 1] to a file.

  Values are clipped to [0, 1] and rounded. The format follows the extension
  (``SAVE_FORMATS``). The file is written atomically: to a temporary file in
  the same directory, then renamed over ``path``, so a crash never leaves a
  half-written image.

  Args:
    path: output file path.
    image: ``[H, W, C]`` array with C in (1, 2, 3, 4) (grey, grey + alpha,
      RGB, RGBA), or ``[H, W]`` grey.
    bits: 8, or 16 for grey PNG/TIFF.

  Raises:
    ValueError: bad shape, non-finite values, unknown extension or bit depth.
  """
  path = os.fspath(path)
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or 0 in array.shape:
    raise ValueError(f"image must be [H, W, C] with C in (1, 2, 3, 4), got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.floating):
    raise TypeError(f"image must be floating point in [0, 1], got dtype {array.dtype}")
  if not np.all(np.isfinite(array)):
    raise ValueError("image contains NaN or infinite values")
  ext = os.path.splitext(path)[1].lower()
  if ext not in SAVE_FORMATS:
    raise ValueError(f"unknown image extension {ext!r} in {path!r}; use one of {sorted(SAVE_FORMATS)}")
  fmt = SAVE_FORMATS[ext]
  channels = array.shape[-1]
  if bits == 8:
    data = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    img = Image.fromarray(data[..., 0] if channels == 1 else data)  # L, LA, RGB or RGBA
    if fmt == "JPEG" and channels in (2, 4):
      raise ValueError(f"JPEG cannot store an alpha channel; save {path!r} as PNG")
  elif bits == 16:
    if channels != 1 or fmt not in ("PNG", "TIFF"):
      raise ValueError(f"bits=16 is supported for grey PNG/TIFF only, got C={channels} and {ext!r}")
    data = np.round(np.clip(array[..., 0], 0.0, 1.0) * 65535.0).astype(np.uint16)
    img = Image.fromarray(data)  # I;16
  else:
    raise ValueError(f"{bits=} must be 8 or 16")
  buffer = io.BytesIO()
  img.save(buffer, format=fmt)
  write_atomic(Path(path), buffer.getvalue())


# Temporary files of write_atomic are named ``<TMP_PREFIX><pid>-<final name>``
# (hidden, and traceable to their target, so a job can remove the leftovers of
# a killed run).
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
  if os.name == "nt":  # directories cannot be opened for fsync on Windows
    return
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
  """Writes ``data`` to ``path`` so that ``path`` is never partial.

  A temporary file in the same folder is written, ``fsync``-ed and renamed over
  ``path`` (``os.replace``, atomic); the folder is then ``fsync``-ed so the
  rename itself survives a power cut.
  """
  path = Path(path)
  tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise
  _fsync_dir(path.parent)
