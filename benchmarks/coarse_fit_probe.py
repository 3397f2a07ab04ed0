"""Can the encoder's first half fit at half resolution, and buy steps with the time?

At full size longer float fits pay more than at 384x256 (1,500 -> 2,000 steps:
-3.0% BD-rate at 768x512, ``codec_ablation_fit2000_full.md``, against -1.2% at
384x256), but issue 14 caps the encode time at 1.5x the encoder before it, and
the defaults are at 1.36x (``rd_cycles2_r15.md``): more full-resolution steps do
not fit. The first half of the encoder's float fit only finds a starting point
and the rate of its Gaussians (``_codec._first_fit``); the second half refits
them as fresh fits (``CodecConfig.fit_cycles``). This probe asks whether that
first half can run on the image downscaled by 2 (a quarter of the pixels),
its Gaussians mapped back with ``scale_gaussians``, and what the second half
gains with the time saved. At one N, float PSNR at full size (no quantisation):

- ``full``: the encoder's float fit: ``fit_steps / 2`` at full size from SLIC
  (``_codec._fit_float``), then ``fit_steps / 2`` more (``_codec._refit``);
- ``coarse``: the first half on the half-size image (Lanczos), then the same
  second half at full size;
- ``coarse_more``: as ``coarse``, the second half ``--more`` times as long.

``first_db`` is the PSNR at full size of the first half's Gaussians (mapped
back for the coarse variants). Each variant's first image includes its
compiles. Run: ``python benchmarks/coarse_fit_probe.py`` (kodim01/13/20 at
768x512, N = 5,000, CodecConfig defaults). Writes ``results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
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
from gaussjax.core._gaussians import scale_gaussians  # noqa: E402


def psnr(g, ref) -> float:
  h, w = ref.shape[:2]
  out = np.clip(np.asarray(_codec.render_safe(g, h, w), np.float64), 0, 1)
  return float(-10 * math.log10(np.mean((out - ref) ** 2)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="1,13,20")
  parser.add_argument("--n", type=int, default=5000)
  parser.add_argument("--more", type=float, default=1.5,
                      help="second-half length of coarse_more, in multiples of fit_steps / 2")
  parser.add_argument("--name", default="coarse_fit_probe")
  args = parser.parse_args(argv)
  if args.n < 1 or args.more <= 0:
    parser.error("--n must be >= 1 and --more > 0")
  config = gaussjax.CodecConfig()
  first, second = _codec._fit_halves(config)
  rows = []
  for index in [int(x) for x in args.images.split(",")]:
    ref = load(index, 1).astype(np.float64)
    full = _codec._as_image(ref.astype(np.float32))
    half = _codec._as_image(load(index, 2))
    sy, sx = full.shape[0] / half.shape[0], full.shape[1] / half.shape[1]
    variants = {"full": (full, second), "coarse": (half, second),
                "coarse_more": (half, int(round(second * args.more)))}
    for name, (start, steps) in variants.items():
      t = time.perf_counter()
      g = _codec._fit_float(start, args.n, config, first)
      if start is half:
        g = scale_gaussians(g, sy, sx)
      first_s = time.perf_counter() - t
      first_db = psnr(g, ref)
      t = time.perf_counter()
      g = _codec._refit(full, g, args.n, config, steps)
      second_s = time.perf_counter() - t
      row = dict(image=index, variant=name, first_steps=first, second_steps=steps,
                 first_db=first_db, psnr=psnr(g, ref), first_s=first_s, second_s=second_s,
                 fit_s=first_s + second_s)
      rows.append(row)
      print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
  summary = []
  for name in variants:
    mine = [r for r in rows if r["variant"] == name]
    base = [r for r in rows if r["variant"] == "full"]
    summary.append(dict(variant=name,
                        psnr_minus_full_db=float(np.mean([m["psnr"] - b["psnr"]
                                                          for m, b in zip(mine, base)])),
                        time_over_full=float(np.sum([m["fit_s"] for m in mine]) /
                                             np.sum([b["fit_s"] for b in base]))))
  print(_machine.format_table(summary))
  meta = {"images": "kodim at 768x512; the coarse first half on the image downscaled by 2 "
                    "(Lanczos)", "n": args.n, "config": "CodecConfig defaults",
          "note": "float PSNR at full size; each variant's first image includes its compiles"}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Mean over images, against `full` (time: sum of fit_s over sum)\n\n" +
            _machine.format_table(summary))


if __name__ == "__main__":
  main()
