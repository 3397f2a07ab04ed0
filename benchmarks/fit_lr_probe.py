"""Does the codec's float fit lose PSNR that its file could keep?

Two questions, one run:

* ``float`` rows: one ``gaussjax.fit`` of ``fit_steps`` steps at a fixed N
  (the SLIC start and settings of ``encode``'s float fit,
  ``_codec._float_fit_config``), with ``FitConfig.lr_means`` at its default
  and at each ``--lr-means`` value; plus, on the first image, the default
  at ``--long-steps`` (is the fit near its optimum at N?).
* ``encode`` rows: ``gaussjax.encode`` at each target with the float fit's
  ``lr_means`` at its default and at each ``--lr-means`` value (both halves
  of the fit; ``CodecConfig`` has no field for it, so the probe replaces
  ``_codec._float_fit_config`` for the run). Rate from real files; each
  variant's PSNR difference to the default at equal rate uses ``--slope``
  dB per doubling.

  python benchmarks/fit_lr_probe.py --float-images 1,2,3,13 --encode-images 1,13
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from codec_probe import _psnr  # noqa: E402
from fit_schedule_probe import encode_variant  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402
from gaussjax.fitting._fit import FitConfig, fit, init_for_fit  # noqa: E402


def float_fit(ref, n: int, steps: int, lr_means: float) -> tuple[float, float]:
  """``(PSNR, seconds)`` of one float fit of ``encode``'s settings at ``n`` Gaussians."""
  image = _codec._as_image(ref)
  config = gaussjax.CodecConfig(bpp=0.5)
  fc = dataclasses.replace(_codec._float_fit_config(config, n, steps), lr_means=lr_means)
  t = time.perf_counter()
  g = init_for_fit(image, n, fc, key=jax.random.key(config.seed))
  g, _ = fit(image, g, fc)
  return _psnr(g, *ref.shape[:2], ref), time.perf_counter() - t


def encode_with(ref, bpp: float, lr_means: float) -> tuple[int, float, float]:
  """``(bytes, PSNR, seconds)`` of ``encode`` with the float fit's ``lr_means`` replaced (both halves)."""
  fields = {"lr_means": lr_means}
  return encode_variant(ref, bpp, fields, fields, {})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--float-images", default="1,2,3,13")
  parser.add_argument("--encode-images", default="1,13")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--n", type=int, default=1250, help="N of the float fits")
  parser.add_argument("--lr-means", default="0.15")
  parser.add_argument("--long-steps", type=int, default=8000)
  parser.add_argument("--bpp", default="0.25,1.0")
  parser.add_argument("--slope", type=float, default=2.2,
                      help="dB per doubling for the equal-rate difference")
  parser.add_argument("--name", default="fit_lr_probe")
  args = parser.parse_args(argv)
  default_lr = FitConfig().lr_means
  lrs = [default_lr] + [float(x) for x in args.lr_means.split(",")]
  steps = gaussjax.CodecConfig().fit_steps
  rows = []
  for k, index in enumerate(int(x) for x in args.float_images.split(",") if x):
    ref = load(index, args.scale)
    runs = [(lr, steps) for lr in lrs] + ([(default_lr, args.long_steps)] if k == 0 else [])
    for lr, s in runs:
      p, sec = float_fit(ref, args.n, s, lr)
      rows.append(dict(part="float", image=index, target="", lr_means=lr, steps=s, bpp=math.nan,
                       psnr=p, minus_default_db=math.nan, seconds=sec))
      print(rows[-1], flush=True)
    base = next(r["psnr"] for r in rows if (r["part"], r["image"], r["lr_means"], r["steps"])
                == ("float", index, default_lr, steps))
    for r in rows:
      if r["part"] == "float" and r["image"] == index:
        r["minus_default_db"] = r["psnr"] - base
  for index in (int(x) for x in args.encode_images.split(",") if x):
    ref = load(index, args.scale)
    h, w = ref.shape[:2]
    for bpp in (float(x) for x in args.bpp.split(",")):
      mine = []
      for lr in lrs:
        size, p, sec = encode_with(ref, bpp, lr)
        mine.append(dict(part="encode", image=index, target=bpp, lr_means=lr, steps=steps,
                         bpp=8 * size / (h * w), psnr=p, minus_default_db=math.nan,
                         seconds=sec))
        print(mine[-1], flush=True)
      for r in mine:  # at equal rate, against the default
        r["minus_default_db"] = (r["psnr"] - mine[0]["psnr"]
                                 - args.slope * math.log2(r["bpp"] / mine[0]["bpp"]))
      rows += mine
  summary = []
  for part in ("float", "encode"):
    for lr in lrs[1:]:
      d = [r["minus_default_db"] for r in rows
           if r["part"] == part and r["lr_means"] == lr and r["steps"] == steps]
      if d:
        summary.append(dict(part=part, lr_means=lr, mean_db=float(np.mean(d)),
                            worst_db=float(np.min(d)), best_db=float(np.max(d)), points=len(d)))
  long = [r for r in rows if r["steps"] != steps]
  if long:
    summary.append(dict(part=f"float {args.long_steps} steps", lr_means=default_lr,
                        mean_db=long[0]["minus_default_db"], worst_db=long[0]["minus_default_db"],
                        best_db=long[0]["minus_default_db"], points=1))
  print(_machine.format_table(summary))
  meta = {"float_images": args.float_images, "encode_images": args.encode_images,
          "scale": args.scale, "n": args.n, "fit_steps": steps, "long_steps": args.long_steps,
          "lr_means_default": default_lr, "targets": args.bpp, "slope": args.slope,
          "summary": summary}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Against the default lr_means (equal rate for encode rows)\n\n"
            + _machine.format_table(summary))


if __name__ == "__main__":
  main()
