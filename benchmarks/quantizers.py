"""How each quantiser's step trades bits for PSNR, on one fitted Kodak image.

Fits once (float), then quantises with one attribute's step scaled by
0.5x..4x (others at the defaults), without QAT, and records the real file
size and the PSNR of the decoded Gaussians. Also reports the bits/Gaussian of
the seed's scheme for the same Gaussians (fp16 positions, 6-bit Cholesky;
colour as fp16, since the seed's residual VQ is not reimplemented here) and
of the position coder against fixed-length codes. Writes results/quantizers.*.

  python benchmarks/quantizers.py --image 23 --scale 2 --gaussians 1200 --steps 400
"""

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax import _quantize as qz  # noqa: E402
from gaussjax._codec import CodecConfig, _fit_float, render_safe  # noqa: E402


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--image", type=int, default=23)
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--gaussians", type=int, default=1200)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--qat-steps", type=int, default=100)
  args = parser.parse_args()
  ref = load(args.image, args.scale)
  h, w = ref.shape[:2]
  t = time.perf_counter()
  g = _fit_float(jax.numpy.asarray(ref), args.gaussians, CodecConfig(fit_steps=args.steps))
  g = gaussjax.Gaussians(*(np.asarray(x, np.float32) for x in g))
  fit_s = time.perf_counter() - t
  n = g.num_gaussians

  def psnr(gs):
    return float(gaussjax.psnr(np.clip(np.asarray(render_safe(gs, h, w)), 0, 1), ref))

  float_psnr = psnr(g)
  base = qz.default_steps(3)
  rows = []
  for attr in ("pos", "scale", "shear", "color"):
    for f in (0.25, 0.5, 1.0, 2.0, 4.0):
      if attr == "color":
        steps = dataclasses.replace(base, color=tuple(c * f for c in base.color))
      else:
        steps = dataclasses.replace(base, **{attr: getattr(base, attr) * f})
      data = gaussjax.encode_gaussians(g, h, w, steps=steps)
      dec, _ = gaussjax.decode_gaussians(data)
      rows.append(dict(attribute=attr, step_factor=f, bytes=len(data),
                       bits_per_gaussian=8 * len(data) / n, psnr=psnr(dec),
                       psnr_drop=float_psnr - psnr(dec)))
      print(rows[-1], flush=True)
  # Position coder vs fixed-length codes, at the default step.
  sym, _ = qz.quantize(g, h, w, base)
  bits = qz.grid_bits(h, w, base.pos)
  codes = qz.morton_encode(sym.pos[:, 0], sym.pos[:, 1], bits)
  from gaussjax._bitstream import choose_model, coded_bits, model_bytes
  deltas = np.diff(codes, prepend=0)
  from gaussjax._codec import _bit_length
  buckets = _bit_length(deltas)
  m = choose_model(buckets)
  pos_bits = (coded_bits(buckets, m) + 8 * model_bytes(m) + np.maximum(buckets - 1, 0).sum()) / n
  seed_bits = 32 + 18 + 48  # fp16 x,y; 6-bit l11,l21,l22; fp16 RGB
  ours = 8 * len(gaussjax.encode_gaussians(g, h, w, steps=base)) / n
  meta = {
      "image": f"kodim{args.image:02d} at {w}x{h}", "gaussians": n, "fit_steps": args.steps,
      "fit_s": fit_s, "float_psnr": float_psnr,
      "position_bits_per_gaussian": {"morton_delta_ans": pos_bits,
                                     "fixed_length_grid": 2 * bits, "fp16": 32},
      "total_bits_per_gaussian": {"gaussjax_v1_default": ours,
                                  "seed_fp16pos_6bitchol_fp16colour": seed_bits},
  }
  # Quantisation-aware fine-tuning: same Gaussians, default steps, with/without QAT.
  from gaussjax._codec import _train
  t = time.perf_counter()
  gq = _train(g, jax.numpy.asarray(ref), num_steps=args.qat_steps, learning_rate=0.0005,
              steps=base, backend="auto")
  qat_s = time.perf_counter() - t
  data_q = gaussjax.encode_gaussians(gq, h, w, steps=base)
  dec_q, _ = gaussjax.decode_gaussians(data_q)
  data_0 = gaussjax.encode_gaussians(g, h, w, steps=base)
  dec_0, _ = gaussjax.decode_gaussians(data_0)
  meta["qat"] = {"steps": args.qat_steps, "seconds": qat_s,
                 "without": {"bytes": len(data_0), "psnr": psnr(dec_0)},
                 "with": {"bytes": len(data_q), "psnr": psnr(dec_q)}}
  print(meta)
  _machine.write_results("quantizers", rows, meta)


if __name__ == "__main__":
  main()
