"""``gaussjax encode-dir``: encode a folder of images, resumably."""

from __future__ import annotations

import argparse
import sys

from gaussjax import _cli_shard
from gaussjax import _cli_tiles
from gaussjax._render import BACKENDS


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not value > 0:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
  return value


def register(subparsers) -> None:
  """Adds the ``encode-dir`` subcommand to an ``argparse`` subparsers object."""
  parser = subparsers.add_parser(
      "encode-dir",
      help="encode every image of a folder into .gjx files, with a manifest",
      description=(
          "Encodes every image of IN_DIR into OUT_DIR/<stem>.gjx, many at once on every "
          "device. Writes OUT_DIR/manifest.csv (name, size, bytes, bpp, PSNR, time). "
          "Re-running skips finished images; the job can be killed at any moment."))
  parser.add_argument("in_dir", metavar="IN_DIR", nargs="?", help="folder of images")
  parser.add_argument("-o", "--output", dest="out_dir", metavar="OUT_DIR", default=None,
                      help="folder for the .gjx files and the manifest")
  _cli_shard.add_arguments(parser)
  _cli_tiles.add_arguments(parser)
  target = parser.add_mutually_exclusive_group()
  target.add_argument("--bpp", type=_positive_float, help="target bits per pixel")
  target.add_argument("--quality", type=_positive_float, help="quality 1..100 (no rate target)")
  parser.add_argument("--batch", type=_positive_int, default=8, metavar="K",
                      help="images fitted at once (default 8)")
  parser.add_argument("--fit-steps", type=_positive_int, default=None, help="float fit steps")
  parser.add_argument("--qat-steps", type=_positive_int, default=None,
                      help="quantisation-aware steps")
  parser.add_argument("--backend", choices=BACKENDS, default="auto",
                      help="renderer for fitting and for the PSNR check (default auto)")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  parser.set_defaults(func=run)


def codec_config(args: argparse.Namespace):
  """The ``CodecConfig`` the command line asks for."""
  from gaussjax._codec import CodecConfig
  steps = {name: value for name, value in (("fit_steps", args.fit_steps),
                                           ("qat_steps", args.qat_steps)) if value is not None}
  if args.bpp is not None:
    return CodecConfig(bpp=args.bpp, backend=args.backend, **steps)
  return CodecConfig(quality=args.quality, backend=args.backend, **steps)


def run(args: argparse.Namespace) -> int:
  """Runs ``encode-dir``; returns the exit status (1 when some image failed)."""
  from gaussjax._codec import decode
  from gaussjax._encode_dir import encode_dir

  if _cli_shard.not_an_encode(args):
    return _cli_shard.run_merge_or_usage(args)  # --merge OUT_DIR, or what is missing
  try:
    config = codec_config(args)
  except ValueError as e:
    print(f"gaussjax encode-dir: error: {e}", file=sys.stderr)
    return 2
  try:
    rows = encode_dir(
        args.in_dir, args.out_dir,
        encode_fn=lambda images: _cli_tiles.encode_images(images, config, args),
        decode_fn=lambda data: decode(data, backend=args.backend),
        settings=repr(config),
        batch_size=args.batch,
        progress=False if args.no_progress else None,
        shard=args.shard)
  except (ValueError, RuntimeError, OSError) as e:  # bad folders, a second job: one line
    print(f"gaussjax encode-dir: error: {e}", file=sys.stderr)
    return 2
  failed = [row for row in rows if row.status != "ok"]
  ok = len(rows) - len(failed)
  if _cli_shard.report(args, ok, len(failed)):
    pass
  else:
    print(f"{ok} encoded, {len(failed)} failed; manifest: {args.out_dir}/manifest.csv")
  for row in failed:
    print(f"  {row.name}: {row.reason}", file=sys.stderr)
  return 1 if failed else 0


def main(argv=None) -> int:
  """Stand-alone entry point (``python -m gaussjax._cli_batch``)."""
  parser = argparse.ArgumentParser(prog="gaussjax")
  register(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
