"""Does a longer float fit help, and what in the fit decides it?

``gap_probe.md`` found that on kodim20 a plain float fit of 8,000 steps ends
0.4-0.9 dB *below* the encoder's 2,000-step fit at the same N, while on
kodim01 and kodim13 it gains up to 0.24 dB. This probe fits the same image
and N with ``_codec._fit_float`` (SLIC, then ``gaussjax.fit`` with the codec's
fit settings) for ``--short`` and ``--long`` steps, each three ways:

- ``default``: density control as configured (relocation every 30 steps until
  ``densify_until`` = 60% of the steps);
- ``same_steps``: for the long fit, ``densify_until`` scaled so relocation
  stops at the same step as in the short fit (the extra steps only optimise);
- ``no_density``: ``densify_every=0`` (SLIC at N, plain Adam).

``--restarts`` asks another question: the encoder fits in two halves (the
second a fresh ``fit`` of the first's Gaussians, with its own learning-rate
schedule and density control), and that beats one fit of the same length. So
this fits ``--short`` steps as 1, 2 and 4 such segments of equal length, and
``--long`` steps as segments of ``--short / 2`` (all at the same N).

``--relocation`` asks how much relocation each such segment should do: it
fits ``--short`` steps as 4 segments (the encoder's default: two halves of
two fresh fits each) with the default density control and with more or less
relocation per event (``prune_fraction``) and for longer or shorter
(``densify_until``); with ``--segments K``, as K segments, the default and
``prune_0.1`` only.

PSNR of the float render (no quantisation). Run:
``python benchmarks/fit_length_probe.py`` (kodim20 and kodim12 at 384x256,
N = 1,000) and ``python benchmarks/fit_length_probe.py --restarts --images
20,12,1,13 --long 3000 --name fit_restart_probe``; ``--relocation --images
20,12,1,13 --name fit_relocation_probe`` (and ``--segments 8 ... --name
fit_relocation_probe_8``). Writes
``results/<name>.{json,md}``.
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
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402
from gaussjax.fitting import _fit  # noqa: E402


def fit_psnr(image, ref, n: int, steps: int, segments: int = 1,
             **overrides) -> tuple[float, float]:
  """The float fit's PSNR and seconds: ``steps`` in ``segments`` fresh fits of equal length."""
  config = gaussjax.CodecConfig(fit_steps=steps)
  each = steps // segments
  fit_config = dataclasses.replace(_codec._float_fit_config(config, n, each), **overrides)
  t = time.perf_counter()
  g = _fit.init_for_fit(image, n, fit_config, key=jax.random.key(config.seed))
  for _ in range(segments):
    g, _ = _fit.fit(image, g, fit_config)
  seconds = time.perf_counter() - t
  h, w = ref.shape[:2]
  out = np.clip(np.asarray(_codec.render_safe(g, h, w), np.float64), 0, 1)
  return float(-10 * math.log10(np.mean((out - ref) ** 2))), seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="20,12")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--n", type=int, default=1000)
  parser.add_argument("--short", type=int, default=2000)
  parser.add_argument("--long", type=int, default=4000)
  parser.add_argument("--restarts", action="store_true",
                      help="compare fits in 1, 2 and 4 segments instead")
  parser.add_argument("--relocation", action="store_true",
                      help="vary the relocation of 4-segment fits of --short steps instead")
  parser.add_argument("--segments", type=int, default=4,
                      help="segments of each --relocation fit (4: the encoder's default)")
  parser.add_argument("--name", default="fit_length_probe")
  args = parser.parse_args(argv)
  if args.segments != 4 and not args.relocation:
    parser.error("--segments goes with --relocation")
  base = _fit.FitConfig()
  rows = []
  for index in [int(x) for x in args.images.split(",")]:
    ref = load(index, args.scale).astype(np.float64)
    image = _codec._as_image(ref.astype(np.float32))
    h, w = ref.shape[:2]
    for steps in ((args.short,) if args.relocation else (args.short, args.long)):
      if args.relocation:
        variants = {"default": {}, "prune_0.1": {"prune_fraction": 0.1},
                    "prune_0.025": {"prune_fraction": 0.025},
                    "until_0.8": {"densify_until": 0.8}, "until_0.4": {"densify_until": 0.4}}
        if args.segments != 4:
          variants = {k: variants[k] for k in ("default", "prune_0.1")}
        variants = {k: dict(segments=args.segments, **v) for k, v in variants.items()}
      elif args.restarts:
        counts = [1, 2, 4] if steps == args.short else [2 * steps // args.short]
        variants = {f"segments_{k}": dict(segments=k) for k in counts}
      else:
        variants = {"default": {}, "no_density": {"densify_every": 0}}
        if steps != args.short:
          variants["same_steps"] = {"densify_until": base.densify_until * args.short / steps,
                                    "grow_until": base.grow_until * args.short / steps}
      for name, overrides in variants.items():
        psnr, seconds = fit_psnr(image, ref, args.n, steps, **overrides)
        row = dict(image=index, steps=steps, variant=name, psnr=psnr, fit_s=seconds)
        rows.append(row)
        print(row, flush=True)
  meta = {"images": f"kodim at {w}x{h} (downscaled by {args.scale}, Lanczos)", "n": args.n,
          "fit": "_codec._fit_float's settings (SLIC at part of N, grown to N; FitConfig "
                 "defaults otherwise)", "short": args.short, "long": args.long,
          **({"segments": args.segments} if args.relocation else {}),
          "note": ("segments of short/segments steps each; prune_P: prune_fraction P at each "
                   "event (default 0.05), until_U: densify_until U (default 0.6), per segment"
                   if args.relocation else
                   "segments_K: K fresh fits of steps/K each (each with its own schedule and "
                   "density control)" if args.restarts else
                   "same_steps: densify_until and grow_until scaled by short/long, so growth "
                   "and relocation stop at the same step as in the short fit")}
  _machine.write_results(args.name, rows, meta)


if __name__ == "__main__":
  main()
