"""The ``gaussjax`` command line: a thin layer over the library.

One parser, ``build_parser``, with one subcommand per ``register_*`` function
of ``SUBCOMMANDS``: ``fit``, ``encode``, ``decode``, ``info``, ``encode-dir``.
A new subcommand lives in its own module, built from the blocks of
``gaussjax.cli._cli_common`` (``add_subcommand``, ``add_output_argument``,
``check_output``, ``progress_bar``, ...), and is added to ``SUBCOMMANDS``
here by a plain import.

Every command checks its inputs and outputs before any work, writes its
outputs atomically (never over an input), prints errors as one line (exit
status 2) and Ctrl-C as one line (exit status 130, no partial file).

Import cost: this module imports no JAX at the top (nor do the modules it
imports), so ``fit`` and ``encode`` print their first line (the input, its
size from the file's header and the memory plan) within the first second;
each run function imports the library after that line, with a comment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from gaussjax import __version__, constants
from gaussjax.cli import _cli_shard, _cli_tiles, _cli_video
from gaussjax.cli._cli_common import (
  EXIT_INTERRUPTED,
  FOLDER,
  GJX,
  IMAGE,
  INPUT_HELP,
  SAMPLES,  # noqa: F401 - the names of sample:NAME, for callers
  CliError,
  HelpFormatter,
  LibraryDefault,
  add_output_argument,
  add_quiet_argument,
  add_subcommand,
  add_svg_arguments,
  backend_note,
  bpp_value,
  check_input,
  check_output,
  input_text,
  non_negative_int,
  note,
  positive_float,
  positive_int,
  progress_bar,
  psnr_text,
  quality_value,
  read_input_file,
  read_input_header,
  read_input_image,
  resolve,
  size_text,
  ssim_text,
  svg_options,
)
from gaussjax.core._cache import enable_compilation_cache
from gaussjax.core._io import load_image, save_image, write_atomic
from gaussjax.core._svg import is_svg

# Where CodecConfig is defined; importing it imports JAX, so its defaults are
# read only for --help and after the first line (LibraryDefault).
_CODEC = "gaussjax.codec._codec"


def _add_backend_argument(parser: argparse.ArgumentParser, what: str) -> None:
  parser.add_argument("--backend", default="auto", choices=constants.BACKENDS,
                      help=f"renderer {what} (auto: pallas on a GPU, xla elsewhere)")


def _add_rate_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
  """``--bpp`` / ``--quality`` and the step counts: the same for encode and encode-dir."""
  rate = parser.add_mutually_exclusive_group(required=required)
  rate.add_argument("--bpp", type=bpp_value,
                    help="target bits per pixel of the whole file, in (0, 64]")
  rate.add_argument("--quality", type=quality_value,
                    help="quality 1..100 (no rate target; the only choice for images of a few "
                         "pixels, whose smallest file is over 64 bpp)")
  parser.add_argument("--fit-steps", type=non_negative_int,
                      default=LibraryDefault(_CODEC, "CodecConfig.fit_steps"),
                      help="optimiser steps of the float fit")
  parser.add_argument("--qat-steps", type=non_negative_int,
                      default=LibraryDefault(_CODEC, "CodecConfig.qat_steps"),
                      help="steps of quantisation-aware fine-tuning")


def _codec_config(args):
  """The ``CodecConfig`` of ``encode`` / ``encode-dir``'s flags (imports the codec: JAX)."""
  from gaussjax.codec._codec import CodecConfig  # import cost (JAX): after the first line
  return CodecConfig(bpp=args.bpp, quality=None if args.bpp is not None else args.quality,
                     fit_steps=resolve(args.fit_steps), qat_steps=resolve(args.qat_steps),
                     backend=args.backend, levels=getattr(args, "levels", 1))


def _announce(args, command: str, what: str = "", *, max_gaussians: int | None = None) -> None:
  """The command's first line, from the header of IMAGE: before JAX and any pixel decoding.

  Checks first, before any work: the memory budget (``MemoryBudgetError``)
  and, for ``fit``, that ``max_gaussians`` is not more than the pixels.
  """
  options = svg_options(args, args.image)
  height, width, channels = read_input_header(args.image, **options)
  if max_gaussians is not None and channels is not None:  # an SVG's size is approximate here
    _check_gaussians(max_gaussians, height, width)
  _cli_tiles.check(args, height, width, channels, command)  # over budget -> use --tile
  note(command, f"{input_text(args.image, height, width, channels, **options)}{what}; "
       f"{_cli_tiles.plan_text(args, height, width, channels)}", quiet=args.quiet)


def _check_gaussians(gaussians: int, height: int, width: int) -> None:
  if gaussians > height * width:
    raise CliError(f"--gaussians {gaussians} is more than the {height * width} pixels of "
                   f"the {size_text(height, width)} image")


def _render_metrics(render: np.ndarray, image: np.ndarray) -> tuple[float, str, str]:
  """``(psnr, "PSNR text", "SSIM text")`` of a rendering against its source image."""
  from gaussjax.core._metrics import psnr  # import cost (JAX): after the first line
  value = float(psnr(render, image))
  return value, psnr_text(value), ssim_text(render, image)


# --------------------------------------------------------------------------- fit


def _run_fit(args) -> int:
  check_input(args.image)
  check_output(args.output, IMAGE, inputs=[args.image])
  _announce(args, "fit", f", {args.gaussians} Gaussians", max_gaussians=args.gaussians)
  # Imported after the first line: the library imports JAX (seconds).
  import jax

  import gaussjax
  from gaussjax.fitting._fit import init_for_fit

  backend_note("fit", args.backend, quiet=args.quiet)
  image = read_input_image(args.image, **svg_options(args))
  height, width, channels = image.shape
  if args.tile:
    return _cli_tiles.fit(args, image)
  _check_gaussians(args.gaussians, height, width)  # again: an SVG's exact size
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  log_every = max(1, args.steps // 100)
  config = gaussjax.FitConfig(
      steps=args.steps, backend=args.backend, log_every=log_every, num_gaussians=args.gaussians,
      replan_every=max(log_every, 50), time_budget_s=args.time_budget, target_psnr=args.target_psnr)
  # SLIC starts from part of N and fit grows the rest where the error is
  # largest (as gaussjax.fit_image does); random init starts from all N.
  if args.init == "slic":
    gaussians = init_for_fit(image, args.gaussians, config, key=key)
  else:
    gaussians = gaussjax.init_random(key, args.gaussians, height, width, channels)
  backend = gaussjax.default_backend() if args.backend == "auto" else args.backend
  note("fit", f"fitting {args.gaussians} Gaussians to {size_text(height, width, channels)} "
       f"({args.init} init, {backend} backend)", quiet=args.quiet)
  with progress_bar(args.steps, desc="fit", quiet=args.quiet) as bar:

    def callback(step, metrics):
      bar.update(step - bar.n)
      bar.set_postfix_str(f"PSNR {psnr_text(metrics['psnr'])}", refresh=False)

    fitted, history = gaussjax.fit(image, gaussians, config, key=key, callback=callback)
  elapsed = time.perf_counter() - start
  render = np.clip(np.asarray(gaussjax.render(fitted, height, width, backend=args.backend)),
                   0.0, 1.0)
  _, psnr, ssim = _render_metrics(render, image)
  save_image(args.output, render)
  print(f"PSNR {psnr}  SSIM {ssim}  time {elapsed:.1f} s  "
        f"({args.gaussians} Gaussians, {int(history.step[-1])} steps, "
        f"{size_text(height, width, channels)}) -> {args.output}")
  return 0


def register_fit(subparsers) -> None:
  """Adds ``fit``."""
  p = add_subcommand(
      subparsers, "fit", run=_run_fit, help="fit Gaussians to an image and write their rendering",
      description="Fit N Gaussians to IMAGE and write the rendered result to --output. "
                  "Prints PSNR, SSIM and time; shows a progress bar on stderr (on a terminal).")
  p.add_argument("image", metavar="IMAGE", help=INPUT_HELP)
  add_output_argument(p, "output image (.png, .jpg, .tif, ...); never the input")
  p.add_argument("-n", "--gaussians", type=positive_int, default=2000,
                 help="number of Gaussians in the result")
  p.add_argument("-s", "--steps", type=positive_int, default=1000, help="optimisation steps")
  p.add_argument("--init", choices=("slic", "random"), default="slic",
                 help="initialisation (slic: superpixels for half of the Gaussians, the rest "
                      "added while fitting where the error is largest; random: all at random)")
  _add_backend_argument(p, "for fitting")
  p.add_argument("--seed", type=int, default=0, help="PRNG seed")
  p.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                 help="stop after this many seconds")
  p.add_argument("--target-psnr", type=positive_float, default=None, metavar="DB",
                 help="stop once the PSNR reaches this")
  _cli_tiles.add_arguments(p)
  add_svg_arguments(p)
  add_quiet_argument(p)


# --------------------------------------------------------------------------- encode


def _run_encode(args) -> int:
  check_input(args.image)
  check_output(args.output, GJX, inputs=[args.image])
  _announce(args, "encode", ", " + (f"target {args.bpp} bpp" if args.bpp is not None
                                    else f"quality {args.quality:g}"))
  # Imported after the first line: the codec imports JAX (seconds).
  from gaussjax.codec._formats import _encode, decode
  from gaussjax.core._metrics import bpp

  config = _codec_config(args)
  backend_note("encode", args.backend, quiet=args.quiet)
  image = np.asarray(read_input_image(args.image, **svg_options(args)))
  h, w, c = image.shape
  # The bar counts optimiser steps; the last unit is the coding (and the rate search).
  weights = {"fit": 0, "fine-tune": config.fit_steps,
             "code": config.fit_steps + config.qat_steps}
  start = time.perf_counter()
  with progress_bar(config.fit_steps + config.qat_steps + 1, desc="encode",
                    quiet=args.quiet) as bar:

    def progress(stage: str) -> None:
      bar.update(weights[stage] - bar.n)
      bar.set_description_str(f"encode: {'rate search' if stage == 'code' and args.bpp else stage}")

    if args.tile:  # tile by tile (gaussjax.codec._tiles), its own progress per tile
      data = _cli_tiles.encode(args, image, config)
    else:
      data = _encode(image, config, progress=progress)
    bar.update(bar.total - bar.n)
  elapsed = time.perf_counter() - start
  decoded = np.asarray(decode(data, backend=args.backend, max_pixels=h * w))  # our own file
  _, psnr, ssim = _render_metrics(decoded, image)
  write_atomic(args.output, data)
  print(f"{len(data)} bytes  {bpp(len(data), h, w):.4f} bpp  PSNR {psnr}  SSIM {ssim}  "
        f"time {elapsed:.1f} s  ({size_text(h, w, c)}) -> {args.output}")
  return 0


def register_encode(subparsers) -> None:
  """Adds ``encode``."""
  p = add_subcommand(
      subparsers, "encode", run=_run_encode,
      help="fit and compress an image into a .gjx file",
      description="Fit Gaussians to IMAGE, quantise and entropy-code them into a .gjx file at "
                  "a target rate (--bpp) or quality (--quality). Prints the size, bpp, PSNR "
                  "and SSIM of the decoded file; shows a progress bar on stderr (fit, "
                  "fine-tuning, rate search) on a terminal.")
  p.add_argument("image", metavar="IMAGE", help=INPUT_HELP)
  add_output_argument(p, "output .gjx file (never the input)")
  _add_rate_arguments(p)
  _add_backend_argument(p, "for fitting")
  _cli_tiles.add_arguments(p)
  p.add_argument("--levels", type=positive_int, default=1, metavar="L",
                 help="1: a single-level file; 2..16: a progressive file of coarse-to-fine "
                      "levels, each prefix a picture (decode --level / --partial)")
  add_svg_arguments(p)
  add_quiet_argument(p)


# --------------------------------------------------------------------------- decode / info


def _read_gjx(path: str) -> bytes:
  return read_input_file(path, constants.MAX_FILE_BYTES)


def _run_decode(args) -> int:
  check_input(args.input)
  check_output(args.output, IMAGE, inputs=[args.input])
  data = _read_gjx(args.input)
  # The first line, before JAX: what is decoded, and to where.
  note("decode", f"{args.input}: {len(data)} bytes -> {args.output}", quiet=args.quiet)
  from gaussjax.codec._formats import decode  # import cost (JAX): after the first line

  backend_note("decode", args.backend, quiet=args.quiet)
  if _cli_tiles.is_tiled(data):  # a tiled file: rendered band by band, with progress
    image = _cli_tiles.decode(data, height=args.height, width=args.width)
  else:
    image = np.asarray(decode(data, height=args.height, width=args.width,
                              backend=args.backend, max_pixels=args.max_pixels,
                              level=args.level, partial=args.partial))
  save_image(args.output, image)
  print(f"{size_text(*image.shape)} -> {args.output}")
  return 0


def register_decode(subparsers) -> None:
  """Adds ``decode``."""
  p = add_subcommand(
      subparsers, "decode", run=_run_decode, help="render a .gjx file to an image",
      description="Render the Gaussians of a .gjx file to an image file, at the encoded size "
                  "or any other (--width / --height; one of them keeps the aspect ratio).")
  p.add_argument("input", metavar="FILE", help="input .gjx file")
  add_output_argument(p, "output image; the format follows the extension (.png, .jpg, ...)")
  p.add_argument("--width", type=positive_int, default=None, help="output width in pixels")
  p.add_argument("--height", type=positive_int, default=None, help="output height in pixels")
  p.add_argument("--max-pixels", type=positive_int, default=constants.MAX_DECODE_PIXELS,
                 help="refuse to render more pixels than this (a guard against files whose "
                      "header asks for a huge image); raise it for files you trust")
  p.add_argument("--level", type=non_negative_int, default=None, metavar="K",
                 help="of a progressive file: render levels 0..K only (default: all)")
  p.add_argument("--partial", action="store_true",
                 help="of a truncated progressive file: render its complete levels")
  _add_backend_argument(p, "for decoding")
  add_quiet_argument(p)


def _run_info(args) -> int:
  # Imported here: the codec imports JAX (seconds), only for the commands that use it.
  from gaussjax.codec._formats import info
  from gaussjax.codec._video import MAGIC as VIDEO_MAGIC
  from gaussjax.codec._video import video_info
  check_input(args.input)
  with open(args.input, "rb") as f:
    is_video = f.read(len(VIDEO_MAGIC)) == VIDEO_MAGIC
  if is_video:  # a .gjv video (gaussjax.codec._video)
    print(json.dumps(video_info(_cli_video._read_gjv(args.input)), indent=2))
    return 0
  header = info(_read_gjx(args.input))
  header = {"size": size_text(header["height"], header["width"]), **header}
  print(json.dumps(header, indent=2))
  return 0


def register_info(subparsers) -> None:
  """Adds ``info``."""
  p = add_subcommand(
      subparsers, "info", run=_run_info, help="print a .gjx or .gjv file's header as JSON",
      description="Print the header of a .gjx file (size as WxH, channels, number of "
                  "Gaussians, quantiser steps, bytes, bpp, entropy models) as JSON, without "
                  "rendering it.")
  p.add_argument("input", metavar="FILE", help="input .gjx or .gjv file")


# --------------------------------------------------------------------------- encode-dir


def _settings(config, svg: dict | None = None) -> str:
  """The settings string the manifest records: the ``CodecConfig`` as sorted JSON.

  The SVG flags, when given, are recorded too (under ``"svg"``); without them
  the string is the ``CodecConfig``'s alone, as before they existed.
  """
  settings = dataclasses.asdict(config)
  if svg:
    settings["svg"] = {name: list(value) if isinstance(value, tuple) else value
                       for name, value in svg.items()}
  return json.dumps(settings, sort_keys=True)


def _run_encode_dir(args) -> int:
  if _cli_shard.not_an_encode(args):
    return _cli_shard.run_merge_or_usage(args)  # --merge OUT_DIR, or what is missing
  if not os.path.isdir(args.in_dir):
    raise CliError(f"IN_DIR {args.in_dir!r} is not a folder" if os.path.exists(args.in_dir)
                   else f"IN_DIR {args.in_dir!r} does not exist")
  check_output(args.output, FOLDER)
  if os.path.realpath(args.output) == os.path.realpath(args.in_dir):
    raise CliError(f"--output {args.output!r} is IN_DIR; use another folder")
  # Imported here: the directory encoder imports JAX (seconds), which fit and
  # encode must not pay before their first line.
  from gaussjax.batch._encode_dir import (
    IMAGE_EXTENSIONS,
    SettingsChanged,
    encode_dir,
    list_images,
  )

  names = list_images(Path(args.in_dir))
  if not names:
    raise CliError(f"no images found in {args.in_dir!r} (looked for "
                   f"{', '.join(IMAGE_EXTENSIONS)})")
  svg = svg_options(args)
  svgs = sum(1 for name in names if is_svg(name))
  if svg and not svgs:
    raise CliError(f"--svg-supersample / --svg-size apply to .svg files; {args.in_dir!r} has "
                   "none")
  note("encode-dir", f"{len(names)} images in {args.in_dir}"
       + (f" ({svgs} SVG)" if svgs else "") + f" -> {args.output}", quiet=args.quiet)
  # Imported after the first line: the codec imports JAX (seconds).
  from gaussjax.codec._formats import decode

  config = _codec_config(args)
  backend_note("encode-dir", args.backend, quiet=args.quiet)
  try:
    report = encode_dir(
        args.in_dir, args.output,
        encode_fn=lambda images: _cli_tiles.encode_images(images, config, args),
        # The files are our own: decoded whatever their size (the limit guards foreign files).
        decode_fn=lambda data: decode(data, backend=args.backend,
                                      max_pixels=constants.MAX_PIXELS),
        settings=_settings(config, svg), batch_size=args.batch, overwrite=args.overwrite,
        progress=not (args.quiet or args.no_progress), shard=args.shard,
        read_fn=(lambda path: np.asarray(load_image(path, **svg))) if svg else None)
  except SettingsChanged as e:
    raise CliError(f"{e.summary}; run again with the same settings to resume, or add "
                   "--overwrite to re-encode them") from e
  failed = [row for row in report.rows if row.status != "ok"]
  parts = [f"{report.encoded} encoded", f"{report.failed} failed"]
  if report.skipped:
    parts.append(f"{report.skipped} already done")
  if not _cli_shard.report(args, report.encoded, report.failed):
    print(", ".join(parts) + f"; manifest: {os.path.join(args.output, 'manifest.csv')}")
  for row in failed:
    print(f"  {row.name}: {row.reason}", file=sys.stderr)
  return 1 if failed else 0


def register_encode_dir(subparsers) -> None:
  """Adds ``encode-dir``."""
  p = add_subcommand(
      subparsers, "encode-dir", run=_run_encode_dir,
      help="encode every image of a folder into .gjx files, with a manifest",
      interrupted="finished images are kept; run the same command again to resume",
      description=(
          "Encodes every image of IN_DIR into OUTPUT/<stem>.gjx, many at once on every device. "
          "Writes OUTPUT/manifest.csv (name, width, height, bytes, bpp, PSNR, time, status) "
          "and the journal OUTPUT/manifest.jsonl (one line per finished image, with its "
          "settings). Re-running the same command skips finished images, so the job can be "
          "killed at any moment and resumed; re-running with other settings is refused "
          "unless --overwrite is given."))
  # Not required by argparse: `--merge OUT_DIR` stands alone (gaussjax.cli._cli_shard
  # says what is missing otherwise).
  p.add_argument("in_dir", metavar="IN_DIR", nargs="?", help="folder of images")
  add_output_argument(p, "folder for the .gjx files and the manifest (created)",
                      metavar="OUT_DIR", required=False)
  _add_rate_arguments(p, required=False)
  _cli_shard.add_arguments(p)
  _cli_tiles.add_arguments(p)
  add_svg_arguments(p, folder=True)
  p.add_argument("--batch", type=positive_int, default=8, metavar="K",
                 help="images fitted at once")
  _add_backend_argument(p, "for fitting and for the PSNR check")
  p.add_argument("--overwrite", action="store_true",
                 help="re-encode images that OUT_DIR's manifest.jsonl records with other "
                      "settings (otherwise refused)")
  add_quiet_argument(p)
  p.add_argument("--no-progress", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- the parser

SUBCOMMANDS = (register_fit, register_encode, register_decode, register_info,
               register_encode_dir, _cli_video.register)


def build_parser() -> argparse.ArgumentParser:
  """The full ``gaussjax`` argument parser."""
  parser = argparse.ArgumentParser(
      prog="gaussjax", description="Images as 2D Gaussians: fit, render, compress.",
      formatter_class=HelpFormatter)
  parser.add_argument("--version", action="version", version=f"gaussjax {__version__}")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for register in SUBCOMMANDS:
    register(subparsers)
  return parser


def main(argv=None) -> int:
  """Entry point of the ``gaussjax`` command; returns the exit status."""
  args = build_parser().parse_args(argv)
  enable_compilation_cache()  # compiled programs are kept between runs (GAUSSJAX_XLA_CACHE=0: not)
  try:
    return int(args.func(args) or 0)
  except (CliError, ValueError, OSError) as e:  # DecodeError is a ValueError
    print(f"gaussjax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    start = "\n" if sys.stderr.isatty() else ""  # off the line of a progress bar
    print(f"{start}gaussjax {args.command}: interrupted; {args.interrupted}", file=sys.stderr)
    return EXIT_INTERRUPTED


def entry_point() -> None:
  """The ``gaussjax`` console script and ``python -m gaussjax``: ``main``, then exit.

  After Ctrl-C the process leaves at once (``os._exit``): interpreter
  shutdown while XLA still runs work of the interrupted computation can crash
  (a segmentation fault seen on CPU), and there is nothing left to save, since
  every output is written atomically or not at all.
  """
  status = main()
  if status == EXIT_INTERRUPTED:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
  entry_point()
