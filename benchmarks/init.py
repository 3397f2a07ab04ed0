"""SLIC vs random initialisation: PSNR along a fit, same N and steps.

For each Kodak image (downscaled by --scale on the CPU), fits N Gaussians for S
steps from ``init_slic`` and from ``init_random`` and records the PSNR at step
0 and every --log-every steps. Writes ``benchmarks/results/init.json|md``.

  python benchmarks/init.py --images 1,5,15,23 --scale 8 --gaussians 150 --steps 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import format_table, write_results

import gaussjax

KODAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "kodak")


def _kodak(index: int, scale: int) -> np.ndarray:
  for directory in (KODAK, "/work/shared/data/kodak"):
    path = os.path.join(directory, f"kodim{index:02d}.png")
    if os.path.exists(path):
      image = gaussjax.load_image(path)
      if scale > 1:  # box downscale (mean over scale x scale blocks)
        h, w = image.shape[0] // scale * scale, image.shape[1] // scale * scale
        image = image[:h, :w].reshape(h // scale, scale, w // scale, scale, -1).mean((1, 3))
      return np.ascontiguousarray(image, np.float32)
  raise FileNotFoundError(f"kodim{index:02d}.png not found")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", default="1,5,15,23", help="Kodak indices (1-24)")
  parser.add_argument("--scale", type=int, default=8, help="downscale factor (8: 96x64)")
  parser.add_argument("--gaussians", type=int, default=150)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--log-every", type=int, default=25)
  parser.add_argument("--backend", default="reference")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--name", default="init", help="results file name")
  args = parser.parse_args(argv)

  config = gaussjax.FitConfig(steps=args.steps, log_every=args.log_every, backend=args.backend)
  rows, ahead = [], {}
  for index in (int(i) for i in args.images.split(",")):
    image = _kodak(index, args.scale)
    height, width, channels = image.shape
    curves = {}
    for init in ("slic", "random"):
      t0 = time.perf_counter()
      if init == "slic":
        g = gaussjax.init_slic(image, args.gaussians, key=jax.random.key(args.seed))
      else:
        g = gaussjax.init_random(jax.random.key(args.seed), args.gaussians, height, width, channels)
      init_s = time.perf_counter() - t0
      _, history = gaussjax.fit(image, g, config)
      curves[init] = history.psnr
      row = {"image": f"kodim{index:02d}", "size": f"{width}x{height}", "init": init, "init_s": init_s}
      row.update({f"psnr@{s}": float(p) for s, p in zip(history.step, history.psnr)})
      row["fit_s"] = float(history.wall_time[-1])
      rows.append(row)
      print(format_table([row]).splitlines()[-1], flush=True)
    ahead[f"kodim{index:02d}"] = bool(np.all(curves["slic"] > curves["random"]))
  table = format_table(rows)
  print(table)
  final = {init: np.mean([r[f"psnr@{args.steps}"] for r in rows if r["init"] == init]) for init in ("slic", "random")}
  verdict = all(ahead.values())
  print(f"mean final PSNR: slic {final['slic']:.2f} dB, random {final['random']:.2f} dB; "
        f"SLIC ahead at every logged step on every image: {verdict}")
  meta = {
      "what": "PSNR (dB) along fit from init_slic vs init_random, same N, steps and FitConfig",
      "images": f"Kodak {args.images}, box-downscaled by {args.scale}",
      "gaussians": args.gaussians, "steps": args.steps, "backend": args.backend,
      "config": repr(config),
      "mean_final_psnr_slic": round(float(final["slic"]), 3),
      "mean_final_psnr_random": round(float(final["random"]), 3),
      "slic_ahead_at_every_logged_step": ahead,
  }
  for path in write_results(args.name, rows, meta):
    print("wrote", path)
  return 0 if verdict else 1


if __name__ == "__main__":
  sys.exit(main())
