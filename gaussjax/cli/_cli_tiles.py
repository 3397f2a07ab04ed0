"""Command-line options for big images: ``--tile``, ``--margin``, ``--memory-budget``.

``gaussjax fit`` and ``gaussjax encode`` call ``add_arguments`` on their
parsers. From the image's header, before any pixel is decoded or JAX is
imported, ``check`` refuses work over the memory budget (and says which
``--tile`` would fit) and ``plan_text`` says how the work is cut, for the
command's first line. Then, with ``--tile``, the image is worked on tile by
tile (``gaussjax.codec._tiles``, imported only then: it imports JAX).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from gaussjax.cli._cli_common import non_negative_int, positive_float, positive_int
from gaussjax.codec import _tile_grid

# Channels assumed for the budget of an input whose channels are unknown until
# it is decoded (an SVG: 3 or 4).
_MOST_CHANNELS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds ``--tile``, ``--margin`` and ``--memory-budget`` to a subcommand's parser."""
  parser.add_argument(
      "--tile", type=positive_int, default=None, metavar="PIXELS",
      help="work on tiles of this side (e.g. 512) for big images: memory bounded by the tile, "
           "not the image")
  parser.add_argument("--margin", type=non_negative_int, default=_tile_grid.DEFAULT_MARGIN,
                      help="with --tile: context around each tile, where tiles blend")
  parser.add_argument(
      "--memory-budget", type=positive_float, default=float(_tile_grid.DEFAULT_MEMORY_BUDGET_MB),
      metavar="MB", help="refuse work estimated over this many MB")


def check(args, height: int, width: int, channels: int | None, command: str) -> None:
  """Raises ``MemoryBudgetError`` (a ``ValueError``) when the work would not fit the budget."""
  _tile_grid.check_budget(height, width, channels or _MOST_CHANNELS,
                          memory_budget_mb=args.memory_budget, tile=args.tile,
                          margin=args.margin, command=command)


def plan_text(args, height: int, width: int, channels: int | None) -> str:
  """How the work is cut and its estimated peak, e.g. ``"in one piece, about 620 MB of ..."``."""
  need, piece = _tile_grid.estimate_mb(height, width, channels or _MOST_CHANNELS,
                                       tile=args.tile, margin=args.margin)
  return (f"{piece.split(' ', 1)[1]}, about {need:.0f} MB of the {args.memory_budget:.0f} MB "
          "memory budget")


def encode(args, image: np.ndarray, config) -> bytes:
  """``gaussjax encode --tile``: the tiled file's bytes."""
  from gaussjax.codec import _tiles  # imports JAX: after the command's first line
  return _tiles.encode_tiled(image, config, tile=args.tile, margin=args.margin,
                             memory_budget_mb=args.memory_budget,
                             progress=None if not getattr(args, "quiet", False) else False)


def fit(args, image: np.ndarray) -> int:
  """``gaussjax fit --tile``: fits tile by tile, writes the blended rendering."""
  # Imported here, after the command's first line: the library imports JAX (seconds).
  import jax

  import gaussjax
  from gaussjax.codec import _tiles
  from gaussjax.core._io import save_image
  start = time.perf_counter()
  config = gaussjax.FitConfig(steps=args.steps, backend=args.backend,
                              log_every=max(1, args.steps // 10), replan_every=50,
                              time_budget_s=args.time_budget, target_psnr=args.target_psnr)
  tiled = gaussjax.fit_tiled(image, args.gaussians, config, tile=args.tile, margin=args.margin,
                             memory_budget_mb=args.memory_budget, key=jax.random.key(args.seed),
                             progress=False if args.quiet else None)
  render = gaussjax.render_tiled(tiled, backend=args.backend)
  psnr = _tiles.psnr_banded(image, render)
  save_image(args.output, render)
  print(f"PSNR {psnr:.2f} dB  time {time.perf_counter() - start:.1f} s  "
        f"({tiled.num_gaussians} Gaussians in {len(tiled.grid)} tiles of {args.tile}) "
        f"-> {args.output}", file=sys.stdout)
  return 0


def is_tiled(data: bytes) -> bool:
  """True for a tiled (version 3) file."""
  from gaussjax.codec import _tiles  # imports JAX; decode imports it anyway
  return _tiles.is_tiled(data)


def decode(data: bytes, *, height: int | None, width: int | None) -> np.ndarray:
  """``gaussjax decode`` of a tiled file: float32 ``[H, W, C]``, a progress bar per tile."""
  from gaussjax.codec import _tiles  # imports JAX; decode imports it anyway
  return _tiles.decode_tiled(data, height=height, width=width, progress=None)


def encode_images(images: list[np.ndarray], config, args) -> list[bytes]:
  """``encode-dir``'s encoder: ``encode_batch`` for images that fit the budget in one piece.

  An image over the budget is encoded in tiles with ``--tile``, and refused
  (``MemoryBudgetError``, before any work; ``encode_dir`` records it as that
  image's error) without it. The batch's estimate is per image: ``--batch``
  multiplies it.
  """
  # Imported here, after the command's first line: both import JAX (seconds).
  from gaussjax.batch._batch import encode_batch
  from gaussjax.codec import _tiles
  big = []
  for i, image in enumerate(images):
    h, w, c = image.shape
    if _tile_grid.fit_memory_mb(h, w) > args.memory_budget:
      if args.tile is None:
        _tile_grid.check_budget(h, w, c, memory_budget_mb=args.memory_budget,
                                margin=args.margin, command="encode-dir")
      check(args, h, w, c, "encode-dir")
      big.append(i)
  small = [i for i in range(len(images)) if i not in big]
  out: list[bytes | None] = [None] * len(images)
  if small:
    for i, data in zip(small, encode_batch([images[i] for i in small], config)):
      out[i] = data
  for i in big:
    out[i] = _tiles.encode_tiled(images[i], config, tile=args.tile, margin=args.margin,
                                 memory_budget_mb=args.memory_budget, progress=False)
  return out
