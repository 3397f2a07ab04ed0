"""The ``gaussjax`` command line: a thin layer over the library.

Subcommands are registered by ``register(subparsers)`` functions: this module
registers ``fit``; other modules (``gaussjax._cli_codec`` for
``encode``/``decode``/``info``, ...) are imported when present and register
theirs, so the CLI grows without editing this file's parser code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from gaussjax import _cli_tiles

# Modules that may add subcommands through a module-level register(subparsers).
PLUGIN_MODULES = ("gaussjax._cli_codec", "gaussjax._cli_batch")

# Built-in images for `sample:NAME` (scikit-image's bundled data, no download).
SAMPLES = ("astronaut", "camera", "coffee", "chelsea", "rocket")

SAMPLE_PREFIX = "sample:"

INPUT_HELP = (
    "input image file (PNG, JPEG, TIFF, ...), or sample:NAME for a built-in image from "
    f"scikit-image ({', '.join(SAMPLES)}), e.g. sample:astronaut")


class CliError(Exception):
  """A user-facing error: printed as one line, exit status 2."""


def read_input_image(spec: str) -> np.ndarray:
  """Loads ``spec``: a file path, or ``sample:NAME`` for a scikit-image sample.

  Returns:
    ``[H, W, C]`` float32 image in [0, 1].
  """
  from gaussjax._io import load_image

  if spec.startswith(SAMPLE_PREFIX):
    name = spec[len(SAMPLE_PREFIX):]
    if name not in SAMPLES:
      raise CliError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array
  return load_image(spec)


def is_same_file(a: str, b: str) -> bool:
  """True when paths ``a`` and ``b`` name the same existing file."""
  if a.startswith(SAMPLE_PREFIX):
    return False
  try:
    return os.path.exists(b) and os.path.samefile(a, b)
  except OSError:
    return os.path.realpath(a) == os.path.realpath(b)


class ProgressBar:
  """A one-line progress bar on stderr (no dependency), redrawn in place."""

  def __init__(self, total: int, *, width: int = 30, stream=None, enabled: bool = True):
    self.total = max(int(total), 1)
    self.width = width
    self.stream = sys.stderr if stream is None else stream
    self.enabled = enabled

  def update(self, step: int, text: str = "") -> None:
    if not self.enabled:
      return
    frac = min(max(step / self.total, 0.0), 1.0)
    filled = round(frac * self.width)
    bar = "#" * filled + "." * (self.width - filled)
    self.stream.write(f"\r[{bar}] {step}/{self.total} {text}")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      self.stream.write("\n")
      self.stream.flush()


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{value} must be positive")
  return value


def _run_fit(args) -> int:
  import jax

  import gaussjax
  from gaussjax._fit import initial_count
  from gaussjax._io import save_image

  if is_same_file(args.image, args.out):
    raise CliError(f"--out {args.out!r} is the input image; refusing to overwrite it")
  image = read_input_image(args.image)
  height, width, channels = image.shape
  _cli_tiles.check(args, image, "fit")  # big images: over the memory budget -> use --tile
  if args.tile:
    return _cli_tiles.fit(args, image)
  if args.gaussians > height * width:
    raise CliError(f"--gaussians {args.gaussians} is more than the {height}x{width} pixels of the image")
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  log_every = max(1, args.steps // 100)
  config = gaussjax.FitConfig(
      steps=args.steps, backend=args.backend, log_every=log_every, num_gaussians=args.gaussians,
      replan_every=max(log_every, 50), time_budget_s=args.time_budget, target_psnr=args.target_psnr)
  # SLIC starts from part of N and fit grows the rest where the error is
  # largest (gaussjax.fit_image); random init starts from all N.
  if args.init == "slic":
    gaussians = gaussjax.init_slic(image, initial_count(args.gaussians, config), key=key)
  else:
    gaussians = gaussjax.init_random(key, args.gaussians, height, width, channels)
  bar = ProgressBar(args.steps, enabled=not args.quiet)
  if not args.quiet:
    backend = gaussjax.default_backend() if args.backend == "auto" else args.backend
    print(f"fitting {args.gaussians} Gaussians to {height}x{width}x{channels} "
          f"({args.init} init, {backend} backend)", file=sys.stderr)
  fitted, history = gaussjax.fit(
      image, gaussians, config, key=key,
      callback=lambda step, m: bar.update(step, f"PSNR {m['psnr']:.2f} dB {m['wall_time']:.1f} s"))
  bar.close()
  elapsed = time.perf_counter() - start
  render = np.clip(np.asarray(gaussjax.render(fitted, height, width, backend=args.backend)), 0.0, 1.0)
  psnr = float(gaussjax.psnr(render, image))
  ssim = float(gaussjax.ssim(render, image)) if min(height, width) >= 11 else float("nan")
  save_image(args.out, render)
  print(f"PSNR {psnr:.2f} dB  SSIM {ssim:.4f}  time {elapsed:.1f} s  "
        f"({args.gaussians} Gaussians, {int(history.step[-1])} steps) -> {args.out}")
  return 0


def register(subparsers) -> None:
  """Adds the ``fit`` subcommand."""
  p = subparsers.add_parser(
      "fit", help="fit Gaussians to an image and write their rendering",
      description="Fit N Gaussians to IMAGE and write the rendered result to --out. "
                  "Prints PSNR, SSIM and time; shows a progress bar on stderr.")
  p.add_argument("image", metavar="IMAGE", help=INPUT_HELP)
  p.add_argument("--gaussians", "-n", type=_positive_int, default=2000, help="number of Gaussians in the result (2000)")
  p.add_argument("--steps", "-s", type=_positive_int, default=1000, help="optimisation steps (1000)")
  p.add_argument("--init", choices=("slic", "random"), default="slic", help="initialisation (slic: superpixels for half of the Gaussians, the rest "
                 "added while fitting where the error is largest; random: all of them at random)")
  p.add_argument("--out", "-o", required=True, help="output image path (PNG recommended); never the input")
  p.add_argument("--backend", default="auto", choices=("auto", "reference", "xla", "pallas"),
                 help="renderer (auto: pallas on GPU, xla elsewhere)")
  p.add_argument("--seed", type=int, default=0, help="PRNG seed (0)")
  p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
  p.add_argument("--target-psnr", type=float, default=None, help="stop once the PSNR reaches this (dB)")
  p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
  _cli_tiles.add_arguments(p)
  p.set_defaults(func=_run_fit)


def registrars() -> list:
  """The ``register(subparsers)`` functions: this module's, then plugins'."""
  found = [register]
  for name in PLUGIN_MODULES:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:  # the plugin exists but one of its imports is missing
        raise
      continue
    found.append(module.register)
  return found


def build_parser() -> argparse.ArgumentParser:
  """The full ``gaussjax`` argument parser."""
  from gaussjax import __version__

  parser = argparse.ArgumentParser(
      prog="gaussjax", description="Images as 2D Gaussians: fit, render, compress.")
  parser.add_argument("--version", action="version", version=f"gaussjax {__version__}")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for register_fn in registrars():
    register_fn(subparsers)
  return parser


def main(argv=None) -> int:
  """Entry point of the ``gaussjax`` command; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
    print(f"gaussjax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
  sys.exit(main())
