"""Which Gaussians the rate controller should drop: energy against distortion change per bit.

When a file comes out too large, ``encode``'s rate controller (``_codec._fit_size``)
keeps the most important Gaussians and drops the rest. This compares the two
orders on the same fitted Gaussians, one piece alone (no fine-tuning after):

* ``energy``: ``fitting._density.contributions`` (the rule before issue 14);
* ``rd``: ``_codec._prune_order``, the exact squared-error increase of
  removing each Gaussian alone (``_removal_delta``) per estimated bit
  (``_rate.gaussian_bits``); the default (``CodecConfig.rd_prune``).

Each image is fitted once (``_codec._fit_float``, the default quantiser steps)
and pruned to a share of its file's bytes by bisection (``_fit_size``) with
each order; PSNR of the decoded file against the bytes.

  python benchmarks/prune_rule.py --images 5,13,21,23 --bpp 1.0
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402
from gaussjax.codec import _quantize as qz  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="5,13,21,23")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", type=float, default=1.0, help="rate of the fitted Gaussians")
  parser.add_argument("--shares", default="0.9,0.75,0.5", help="bytes kept, relative")
  parser.add_argument("--fit-steps", type=int, default=800)
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  shares = [float(x) for x in args.shares.split(",")]
  rows = []
  for index in images:
    ref = load(index, args.scale)
    h, w = ref.shape[:2]
    steps = qz.default_steps(3)
    n = int(args.bpp * h * w / 46.0)
    t = time.perf_counter()
    g = _codec._fit_float(jnp.asarray(ref), n, gaussjax.CodecConfig(fit_steps=args.fit_steps))
    fit_s = time.perf_counter() - t
    full = len(gaussjax.encode_gaussians(g, h, w, steps=steps))
    orders = {"energy": None, "rd": _codec._prune_order(g, jnp.asarray(ref), steps, "auto")}
    for share in shares:
      target = share * full
      for rule, order in orders.items():
        data, sub, _ = _codec._fit_size(g, h, w, steps, 0.98 * target, 1.0 * target, order=order)
        if data is None:
          continue
        out = np.clip(np.asarray(gaussjax.decode(data)), 0, 1)
        rows.append(dict(image=index, share=share, rule=rule, bytes=len(data),
                         bpp=8 * len(data) / (h * w), psnr=float(gaussjax.psnr(out, ref)),
                         kept=sub.num_gaussians, of=g.num_gaussians, fit_s=fit_s))
        print(rows[-1], flush=True)
  summary = []
  for share in shares:
    diffs, rate = [], []
    for index in images:
      pair = {r["rule"]: r for r in rows if r["image"] == index and r["share"] == share}
      if len(pair) == 2:
        diffs.append(pair["rd"]["psnr"] - pair["energy"]["psnr"])
        rate.append(pair["rd"]["bytes"] / pair["energy"]["bytes"])
    summary.append(dict(bytes_kept=share, rd_minus_energy_db=float(np.mean(diffs)),
                        worst_db=float(np.min(diffs)), best_db=float(np.max(diffs)),
                        bytes_ratio=float(np.mean(rate))))
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale}, Lanczos)",
          "fit": f"_codec._fit_float, {args.fit_steps} steps, N = bpp·H·W/46 at {args.bpp} bpp, "
                 "default quantiser steps, no fine-tuning after pruning",
          "summary": summary}
  _machine.write_results("prune_rule", rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, "prune_rule.md"), "a") as f:
    f.write("\n## rd against energy, mean over images (PSNR at the same bytes, within 2%)\n\n"
            + _machine.format_table(summary))


if __name__ == "__main__":
  main()
