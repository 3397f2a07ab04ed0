"""What each part of the encoder adds: the step search and the fine-tuning mode.

Encodes the same images at the same target rates with the encoder's parts
switched on and off (everything else as ``CodecConfig`` defaults, with the
fit and fine-tuning steps of ``rd.py``):

* ``default``: rate-distortion step search (``rd_slope=1.75``) and
  sequential fine-tuning;
* ``no_search``: default quantiser steps (``rd_slope=None``);
* ``ste``: straight-through fine-tuning (``finetune="ste"``);
* ``no_search_ste``: both off (the encoder before the search existed, apart
  from the fit in two halves and the rate controller);
* ``color_size_0``, ``color_size_0.5``: one colour step for every Gaussian,
  or steps scaled by size with β = 0.5 (``CodecConfig.color_size``).

Reports bpp from real files, PSNR, the steps in each file, and per variant
the mean PSNR difference to ``default``, the mean rate ratio, and the PSNR
difference at equal rate: the difference less ``default``'s own slope
(dB per doubling, between its lowest and highest target on that image) times
log2 of the rate ratio.

  python benchmarks/codec_ablation.py --images 5,13,21 --bpp 0.25,1.0
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402

VARIANTS = {
    "default": {},
    "no_search": {"rd_slope": None},
    "ste": {"finetune": "ste"},
    "no_search_ste": {"rd_slope": None, "finetune": "ste"},
    "color_size_0": {"color_size": 0.0},
    "color_size_0.5": {"color_size": 0.5},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="5,13,21")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", default="0.25,1.0")
  parser.add_argument("--fit-steps", type=int, default=1200)
  parser.add_argument("--qat-steps", type=int, default=150)
  parser.add_argument("--variants", default="default,no_search,ste,no_search_ste")
  parser.add_argument("--name", default="codec_ablation")
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  variants = args.variants.split(",")
  rows = []
  for index in images:
    ref = load(index, args.scale)
    h, w = ref.shape[:2]
    for bpp in targets:
      for name in variants:
        config = gaussjax.CodecConfig(bpp=bpp, fit_steps=args.fit_steps,
                                      qat_steps=args.qat_steps, **VARIANTS[name])
        t = time.perf_counter()
        data = gaussjax.encode(ref, config)
        enc_s = time.perf_counter() - t
        out = np.clip(np.asarray(gaussjax.decode(data)), 0, 1)
        head = gaussjax.codec._formats.info(data)
        steps = head["steps"]
        rows.append(dict(image=index, target=bpp, variant=name, bpp=8 * len(data) / (h * w),
                         psnr=float(gaussjax.psnr(out, ref)), gaussians=head["num_gaussians"],
                         pos_step=steps["pos"], scale_step=steps["scale"],
                         shear_step=steps["shear"], color_step_y=steps["color"][0],
                         enc_s=enc_s))
        print(rows[-1], flush=True)
  def slope(index):  # default's dB per doubling of the rate on this image
    mine = sorted((r["bpp"], r["psnr"]) for r in rows
                  if (r["image"], r["variant"]) == (index, "default"))
    if len(mine) < 2 or mine[-1][0] <= mine[0][0]:
      return float("nan")
    return (mine[-1][1] - mine[0][1]) / np.log2(mine[-1][0] / mine[0][0])

  summary = []
  for name in variants:
    d_psnr, ratio, equal = [], [], []
    for index in images:
      for bpp in targets:
        mine = [r for r in rows if (r["image"], r["target"], r["variant"]) == (index, bpp, name)]
        base = [r for r in rows if (r["image"], r["target"], r["variant"]) == (index, bpp, "default")]
        if mine and base:
          d_psnr.append(mine[0]["psnr"] - base[0]["psnr"])
          ratio.append(mine[0]["bpp"] / base[0]["bpp"])
          equal.append(d_psnr[-1] - slope(index) * np.log2(ratio[-1]))
    summary.append(dict(variant=name, psnr_minus_default_db=float(np.mean(d_psnr)),
                        worst_db=float(np.min(d_psnr)), best_db=float(np.max(d_psnr)),
                        rate_ratio=float(np.mean(ratio)),
                        at_equal_rate_db=float(np.mean(equal))))
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale}, Lanczos)",
          "targets": targets, "fit_steps": args.fit_steps, "qat_steps": args.qat_steps,
          "summary": summary}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Mean over images and rates, against `default`\n\n" + _machine.format_table(summary))


if __name__ == "__main__":
  main()
