"""``gaussjax encode-dir`` options for many processes: ``--shard I/N`` and ``--merge OUT_DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gaussjax.batch import _shard


def _shard_arg(text: str) -> tuple[int, int]:
  try:
    return _shard.parse_shard(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds ``--shard`` and ``--merge`` to the ``encode-dir`` parser."""
  parser.add_argument(
      "--shard", type=_shard_arg, default=None, metavar="I/N",
      help="encode shard I of N of the sorted file list (0 <= I < N), with its own journal; "
           "the last shard to finish writes the merged manifest. Default: the jax.distributed "
           "process index/count when initialised, else 0/1 (see docs/multihost.md)")
  parser.add_argument(
      "--merge", metavar="OUT_DIR", default=None,
      help="only merge the shard journals of OUT_DIR into manifest.jsonl and manifest.csv "
           "(with IN_DIR: refuse while some image has no row)")


def not_an_encode(args) -> bool:
  """True for ``--merge``, or when an argument that encoding needs is missing."""
  return (args.merge is not None or args.in_dir is None or args.output is None
          or (args.bpp is None and args.quality is None))


def run_merge_or_usage(args) -> int:
  """``encode-dir --merge OUT_DIR [IN_DIR]``, or a one-line error for missing arguments."""
  if args.merge is None:
    missing = ("IN_DIR" if args.in_dir is None else "-o OUT_DIR" if args.output is None
               else "one of --bpp and --quality")
    print(f"gaussjax encode-dir: error: {missing} is required (or --merge OUT_DIR alone)",
          file=sys.stderr)
    return 2
  if args.bpp is not None or args.quality is not None or args.output is not None:
    print("gaussjax encode-dir: error: --merge OUT_DIR takes no -o, --bpp or --quality",
          file=sys.stderr)
    return 2
  from gaussjax.batch._encode_dir import list_images
  try:
    names = list_images(Path(args.in_dir)) if args.in_dir else None
    merged, missing = _shard.merge(args.merge, names, in_dir=args.in_dir, force=names is None)
  except (ValueError, OSError) as e:
    print(f"gaussjax encode-dir: error: {e}", file=sys.stderr)
    return 2
  if not merged:
    print(f"gaussjax encode-dir: error: {len(missing)} images have no row yet "
          f"(e.g. {missing[0]}); run their shards, or merge without IN_DIR to write what "
          "there is", file=sys.stderr)
    return 1
  print(f"merged: {args.merge}/manifest.jsonl and {args.merge}/manifest.csv")
  return 0


def report(args, ok: int, failed: int) -> bool:
  """Prints a sharded run's summary line; False when the run was not sharded."""
  index, count = args.shard if args.shard is not None else _shard.jax_shard()
  if count == 1:
    return False
  merged = (Path(args.output) / "manifest.csv").exists()
  print(f"shard {index}/{count}: {ok} images encoded so far over all shards, {failed} failed; "
        + (f"manifest: {args.output}/manifest.csv" if merged else
           "other shards still running: the last to finish writes manifest.csv"))
  return True
