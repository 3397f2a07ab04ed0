"""``gaussjax encode | decode | info``: the codec's command-line subcommands.

``register(subparsers)`` adds them to the main ``gaussjax`` parser
(``gaussjax._cli``); ``main`` runs them standalone. Outputs are written
atomically (a temporary file in the same folder, then ``os.replace``), and an
output path that names the input file is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


from gaussjax._cli import INPUT_HELP, CliError, is_same_file, read_input_image
from gaussjax._io import write_atomic


def _cmd_encode(args) -> int:
  import gaussjax
  if is_same_file(args.image, args.output):
    raise CliError(f"output {args.output!r} is the input file; refusing to overwrite it")
  image = np.asarray(read_input_image(args.image))
  kwargs = {}
  if args.fit_steps is not None:
    kwargs["fit_steps"] = args.fit_steps
  if args.qat_steps is not None:
    kwargs["qat_steps"] = args.qat_steps
  config = gaussjax.CodecConfig(bpp=args.bpp, quality=args.quality, levels=args.levels, **kwargs)
  data = gaussjax.encode(image, config)
  write_atomic(args.output, data)
  h, w = image.shape[:2]
  print(f"{args.output}: {len(data)} bytes, {8 * len(data) / (h * w):.4f} bpp")
  return 0


def _read(path: str) -> bytes:
  from gaussjax._codec import MAX_FILE_BYTES
  size = os.path.getsize(path)
  if size > MAX_FILE_BYTES:
    raise CliError(f"{path}: {size} bytes is over the limit of {MAX_FILE_BYTES}")
  with open(path, "rb") as f:
    return f.read()


def _cmd_decode(args) -> int:
  import gaussjax
  if is_same_file(args.input, args.output):
    raise CliError(f"output {args.output!r} is the input file; refusing to overwrite it")
  image = gaussjax.decode(_read(args.input), height=args.height, width=args.width,
                          level=args.level, partial=args.partial)
  gaussjax.save_image(args.output, np.asarray(image))
  print(f"{args.output}: {image.shape[1]}x{image.shape[0]}, {image.shape[2]} channels")
  return 0


def _cmd_info(args) -> int:
  from gaussjax._codec import info
  print(json.dumps(info(_read(args.input)), indent=2))
  return 0


def register(subparsers) -> None:
  """Adds ``encode``, ``decode`` and ``info`` to an argparse subparsers object."""
  p = subparsers.add_parser("encode", help="fit and compress an image into a .gjx file")
  p.add_argument("image", help=INPUT_HELP)
  p.add_argument("-o", "--output", required=True, help="output .gjx file")
  rate = p.add_mutually_exclusive_group(required=True)
  rate.add_argument("--bpp", type=float, help="target bits per pixel of the whole file")
  rate.add_argument("--quality", type=float, help="quality 1..100 (no rate target)")
  p.add_argument("--fit-steps", type=int, default=None, help="float fit steps")
  p.add_argument("--qat-steps", type=int, default=None, help="quantisation-aware steps")
  p.add_argument("--levels", type=int, default=1,
                 help="1: a single-level file; 2..16: a progressive file of coarse-to-fine levels")
  p.set_defaults(func=_guarded(_cmd_encode))

  p = subparsers.add_parser("decode", help="render a .gjx file to an image")
  p.add_argument("input", help="input .gjx file")
  p.add_argument("-o", "--output", required=True, help="output image (PNG by extension)")
  p.add_argument("--width", type=int, default=None, help="output width (any size)")
  p.add_argument("--height", type=int, default=None, help="output height (any size)")
  p.add_argument("--level", type=int, default=None,
                 help="of a progressive file: render levels 0..K only (default: all)")
  p.add_argument("--partial", action="store_true",
                 help="of a truncated progressive file: render its complete levels")
  p.set_defaults(func=_guarded(_cmd_decode))

  p = subparsers.add_parser("info", help="print a .gjx file's header (and levels) as JSON")
  p.add_argument("input", help="input .gjx file")
  p.set_defaults(func=_guarded(_cmd_info))


def _guarded(fn):
  """Wraps a subcommand so expected errors print one line and return 2."""
  def run(args) -> int:
    from gaussjax._bitstream import DecodeError
    try:
      return fn(args)
    except (CliError, DecodeError, ValueError, TypeError, OSError) as e:
      print(f"gaussjax {args.command}: error: {e}", file=sys.stderr)
      return 2
  return run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="gaussjax")
  sub = parser.add_subparsers(dest="command", required=True)
  register(sub)
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
