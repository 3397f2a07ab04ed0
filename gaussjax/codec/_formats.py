"""The public ``encode`` / ``decode`` / ``decode_gaussians`` / ``info``: every format.

A ``.gjx`` file is single-level (format version 1, ``_codec``), progressive
(version 2, ``_progressive``, which builds on ``_codec``) or tiled (version 3,
``_tiles``, whose tiles are version-1 files). This module sits
above the three and sends each call to its format, so none of them needs to
know the ones built on it.

Call chain::

  encode(image, config)          _codec._encode, or _progressive.encode_progressive
                                 (levels > 1)
  decode_gaussians(data)         _codec.decode_single or _progressive.decode_levels
                                 (tiled files refused)
  decode(data, height=, width=)  _tiles.decode_tiled, or decode_gaussians → render
                                 (in bands when big: _tiles.render_banded)
  info(data)                     _tiles.info_tiled, _progressive.level_table or
                                 _codec.info_single
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants
from gaussjax.codec import _codec, _progressive, _tiles
from gaussjax.codec._bitstream import DecodeError
from gaussjax.core._compiled import release_if_crowded
from gaussjax.core._gaussians import Gaussians


def encode(image, config: _codec.CodecConfig = _codec.CodecConfig()) -> bytes:
  """Fits Gaussians to an image and codes them into a gaussjax file.

  Steps: half of the float fit at a first guess of N; the quantiser steps
  chosen by a rate-distortion search on those Gaussians (``choose_steps``)
  and, with ``config.bpp``, N rescaled from the size of their real file; the
  other half of the fit at that N; quantisation-aware fine-tuning
  (``config.finetune``); quantisation and ANS coding. With ``bpp`` a rate
  controller then measures the real file size and prunes the least
  important Gaussians or refines the steps (fine-tuning again) until the
  file is within ``config.rate_tolerance`` of ``bpp · H · W / 8`` bytes.
  With ``config.levels > 1`` the file is progressive (format version 2,
  ``gaussjax.codec._progressive``): levels fitted coarse to fine, each prefix at a
  level boundary a picture (``decode(data, level=k)``).

  Args:
    image: ``[H, W, C]`` float in [0, 1] (or uint8/uint16), C ≤ 4.
    config: ``CodecConfig``.

  Returns:
    The file's bytes (``gaussjax.bpp(len(result), H, W)`` is their rate).

  Raises:
    ValueError: the image or config is invalid, or the rate target cannot be
      met (e.g. smaller than the header).
  """
  return _encode(image, config)


def _encode(image, config: _codec.CodecConfig, progress=None) -> bytes:
  """``encode``; a single-level encode calls ``progress(stage)`` as each of
  ``_codec.ENCODE_STAGES`` starts (the ``gaussjax encode`` command's progress bar)."""
  if isinstance(config, _codec.CodecConfig) and config.levels > 1:
    return _progressive.encode_progressive(_codec._as_image(image), config)
  return _codec._encode(image, config, progress)


def decode_gaussians(data: bytes, *, level: int | None = None,
                     partial: bool = False) -> tuple[Gaussians, tuple[int, int]]:
  """Parses a gaussjax file into Gaussians.

  Args:
    data: the file's bytes.
    level: of a progressive file, the Gaussians of levels 0..``level``
      (None: all; a single-level file has only level 0).
    partial: of a progressive file, accept a truncated file and return the
      levels that are complete (FORMAT.md, version 2).

  Returns:
    ``(gaussians, (height, width))``: float32 numpy ``Gaussians`` in the
    pixel coordinates of the encoded image size, in Morton order (per level,
    coarse to fine, for a progressive file).

  Raises:
    DecodeError: the bytes are not a valid file (see FORMAT.md for limits).
    ValueError: ``level`` is not a level of the file.
  """
  if _tiles.is_tiled(data):
    raise DecodeError("a tiled file (format version 3) has one set of Gaussians per tile: "
                      "decode it with gaussjax.decode, or read its tiles with gaussjax.codec._tiles")
  _progressive._check_level(level)
  data, version = _codec._check_container(data)
  if version == _progressive.VERSION:
    levels, size, _ = _progressive.decode_levels(data, level=level, partial=partial)
    return Gaussians(*(np.concatenate(parts) for parts in zip(*levels))), size
  _progressive._check_level(level, 1)
  return _codec.decode_single(data)


def info(data: bytes) -> dict:
  """Header fields and stream models of a gaussjax file, without rendering.

  Of a progressive file: the levels, each with its byte offset, size and
  number of Gaussians; of a tiled file: the grid and each tile's bytes.
  """
  if _tiles.is_tiled(data):
    return _tiles.info_tiled(data)
  data, version = _codec._check_container(data)
  if version == _progressive.VERSION:
    return _progressive.level_table(data)
  return _codec.info_single(data)


def decode(data: bytes, *, height: int | None = None, width: int | None = None,
           backend: str = "auto", max_pixels: int = constants.MAX_DECODE_PIXELS,
           level: int | None = None, partial: bool = False) -> jax.Array:
  """Decodes a gaussjax file to an image, at the encoded or any other size.

  Args:
    data: the file's bytes.
    height: output rows (default: the encoded height, or keep the aspect
      ratio when only ``width`` is given).
    width: output columns (likewise).
    backend: renderer, as in ``gaussjax.render``.
    max_pixels: the most pixels the output may have
      (``gaussjax.constants.MAX_DECODE_PIXELS`` by default), checked before
      anything of the image's size is allocated; raise it for files you trust.
    level: render levels 0..``level`` of a progressive file (None: all).
    partial: a progressive file cut short (e.g. a download in progress)
      decodes to its last complete level instead of raising.

  Returns:
    ``[height, width, C]`` float32 image clipped to [0, 1].

  Raises:
    DecodeError: the bytes are not a valid gaussjax file (or are truncated,
      without ``partial``), or the header's image size is over
      ``max_pixels`` (when no output size is given).
    ValueError: the requested output size is invalid or over ``max_pixels``,
      or ``level`` is not a level of the file.
  """
  release_if_crowded()  # a long process: free compiled programs near the map limit
  if _tiles.is_tiled(data):  # a tiled file (gaussjax.encode_tiled): rendered band by band
    grid = _tiles.unpack(data).grid  # checks the header before anything of its size exists
    h, w = _codec._output_size((grid.height, grid.width), height, width, max_pixels)
    return jnp.asarray(_tiles.decode_tiled(data, height=h, width=w, backend=backend))
  gaussians, (h0, w0) = decode_gaussians(data, level=level, partial=partial)
  h, w = _codec._output_size((h0, w0), height, width, max_pixels)
  if gaussians.num_gaussians == 0:
    return jnp.zeros((h, w, gaussians.channels), jnp.float32)
  if h * w > _tiles.BAND_PIXELS:  # big outputs: rendered in bands (bounded working memory)
    return jnp.asarray(_tiles.render_banded(gaussians, h, w, source_size=(h0, w0),
                                            backend=backend))
  image = _codec.render_safe(gaussians, h, w, backend=backend, source_size=(h0, w0))
  return jnp.clip(image, 0.0, 1.0)
