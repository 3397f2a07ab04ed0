"""Does the float fit inside ``encode`` use its 2,000 steps well? Schedule variants, probed on real files.

``encode``'s float fit runs in two halves (``_codec._first_fit``): SLIC and
``fit`` at a first guess of N, then, once the quantiser steps and N are
chosen, ``fit`` again (``_codec._refit``) with the count moved to N. Each
half is a whole ``FitConfig`` schedule: warmup, cosine decay to
``final_lr_fraction``, density events up to ``densify_until``. So the second
half re-warms the learning rates to their peak and relocates 5% of the
Gaussians every 30 steps again. More steps pay inside ``encode`` (+50%
steps: see the ``steps`` rows), but cost time; a schedule that spends the
same steps better would be free.

Each variant replaces ``FitConfig`` fields of the first half, the second, or
both (``_codec._float_fit_config``, swapped for the run; ``CodecConfig``
has no fields for them) and encodes each image at each target. Rate from
real files; ``dpsnr_equal_rate`` is the PSNR difference to the default at
equal rate, using ``--slope`` dB per doubling of the bytes. Times include
compilation, and the default, encoded first for each image and target,
compiles the most, so ``time_ratio`` flatters the variants.

  python benchmarks/fit_schedule_probe.py --images 1,13,20 --bpp 0.25,1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402

# name: (fields of the first half, fields of the second half, CodecConfig fields)
VARIANTS = {
  "default": ({}, {}, {}),
  "second_lr_x0.5": ({}, {"lr_means": 0.15, "lr_chol": 0.03, "lr_colors": 0.02}, {}),
  "second_densify_0.3": ({}, {"densify_until": 0.3}, {}),
  "final_lr_0.05": ({"final_lr_fraction": 0.05}, {"final_lr_fraction": 0.05}, {}),
  "steps_3000": ({}, {}, {"fit_steps": 3000}),
}


def encode_variant(ref, bpp: float, first: dict, second: dict, codec: dict):
  """``(bytes, PSNR, seconds)`` of ``encode`` with the halves' ``FitConfig`` fields replaced."""
  original_config, original_refit = _codec._float_fit_config, _codec._refit
  half = {"fields": first}

  def config(c, n, iterations=None):
    return dataclasses.replace(original_config(c, n, iterations), **half["fields"])

  def refit(*args, **kwargs):
    half["fields"] = second
    return original_refit(*args, **kwargs)

  _codec._float_fit_config, _codec._refit = config, refit
  try:
    t = time.perf_counter()
    data = gaussjax.encode(ref, gaussjax.CodecConfig(bpp=bpp, **codec))
    seconds = time.perf_counter() - t
  finally:
    _codec._float_fit_config, _codec._refit = original_config, original_refit
  out = np.clip(np.asarray(gaussjax.decode(data)), 0.0, 1.0)
  return len(data), float(gaussjax.psnr(out, ref)), seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="1,13,20")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", default="0.25,1.0")
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--slope", type=float, default=2.2,
                      help="dB per doubling of the bytes, for PSNR at equal rate")
  parser.add_argument("--name", default="fit_schedule_probe")
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  names = args.variants.split(",")
  unknown = [v for v in names if v not in VARIANTS]
  if unknown or names[0] != "default":
    parser.error(f"variants must start with 'default' and come from {list(VARIANTS)}")
  rows = []
  for index in images:
    ref = load(index, args.scale)
    h, w = ref.shape[:2]
    for bpp in targets:
      base = None
      for name in names:
        size, psnr, seconds = encode_variant(ref, bpp, *VARIANTS[name])
        row = dict(image=index, target=bpp, variant=name, bytes=size, bpp=8 * size / (h * w),
                   psnr=psnr, enc_s=seconds)
        base = base or row
        row["dpsnr_equal_rate"] = (psnr - base["psnr"]) - args.slope * math.log2(size / base["bytes"])
        row["time_ratio"] = seconds / base["enc_s"]
        rows.append(row)
        print(row, flush=True)
  summary = []
  for name in names:
    mine = [r for r in rows if r["variant"] == name]
    summary.append(dict(variant=name,
                        dpsnr_equal_rate=float(np.mean([r["dpsnr_equal_rate"] for r in mine])),
                        worst=float(np.min([r["dpsnr_equal_rate"] for r in mine])),
                        best=float(np.max([r["dpsnr_equal_rate"] for r in mine])),
                        time_ratio=float(np.mean([r["enc_s"] for r in mine])
                                         / np.mean([r["enc_s"] for r in rows
                                                    if r["variant"] == "default"]))))
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale})",
          "targets": targets, "slope_db_per_doubling": args.slope,
          "variants": {n: dict(zip(("first_half", "second_half", "codec"), VARIANTS[n]))
                       for n in names},
          "note": "each encode in its own order after the default of the same image and target; "
                  "time includes compilation (the first encode of a shape compiles)"}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Mean over images and targets\n\n" + _machine.format_table(summary))


if __name__ == "__main__":
  main()
