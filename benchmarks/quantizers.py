"""How each quantiser's step trades bits for PSNR, on one fitted Kodak image.

Fits once (float), then quantises with one attribute's step scaled by
0.25x..4x (others at the defaults), without fine-tuning, and records the real
file size and the PSNR of the decoded Gaussians. Also measures, on the same
Gaussians: the seed's colour quantiser (two-stage residual vector
quantisation, k-means codebooks stored as fp16, indices entropy-coded)
against the scalar YCoCg colour quantiser; the bits/Gaussian of the seed's
whole scheme; the position coder against fixed-length codes; the steps that
``choose_steps`` picks; and the fine-tuning modes at those steps. Writes
results/quantizers.*.

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
from gaussjax.codec import _quantize as qz  # noqa: E402
from gaussjax.codec._codec import CodecConfig, _fit_float, render_safe  # noqa: E402


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
  sym, order = qz.quantize(g, h, w, base)
  bits = qz.grid_bits(h, w, base.pos)
  codes = qz.morton_encode(sym.pos[:, 0], sym.pos[:, 1], bits)
  from gaussjax.codec._bitstream import choose_model, coded_bits, model_bytes
  deltas = np.diff(codes, prepend=0)
  from gaussjax.codec._codec import _bit_length
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
  # Colour: the seed's residual VQ against the scalar YCoCg quantiser, the
  # positions and factors quantised as the file does (default steps).
  decoded, _ = gaussjax.decode_gaussians(gaussjax.encode_gaussians(g, h, w, steps=base))
  colors = np.asarray(g.colors)[order]  # the float colours in the file's (Morton) order
  sym_colors = sym.color
  scalar_bits = sum(coded_bits(sym_colors[:, k], m) + 8 * model_bytes(m)
                    for k in range(3) for m in [choose_model(sym_colors[:, k])]) / n
  colour_rows = [dict(colour="scalar YCoCg (gaussjax)", codebook="-", bits_per_gaussian=scalar_bits,
                      psnr=psnr(decoded))]
  for k in (16, 64, 256):
    recon, index_bits, book_bits = residual_vq(colors, k, stages=2)
    g_vq = decoded._replace(colors=recon.astype(np.float32))
    colour_rows.append(dict(colour="residual VQ, 2 stages (seed)", codebook=f"2 x {k}",
                            bits_per_gaussian=(index_bits + book_bits) / n, psnr=psnr(g_vq)))
    print(colour_rows[-1], flush=True)
  meta["colour_quantisers"] = colour_rows

  # The steps choose_steps picks here, and fine-tuning at those steps.
  from gaussjax.codec._codec import _finetune
  chosen = gaussjax.choose_steps(g, ref, slope=CodecConfig().rd_slope)
  meta["chosen_steps"] = dataclasses.asdict(chosen)
  tuning = []
  for mode in ("none", "ste", "sequential"):
    t = time.perf_counter()
    gq = g if mode == "none" else _finetune(
        g, jax.numpy.asarray(ref), chosen, CodecConfig(qat_steps=args.qat_steps, finetune=mode))
    data = gaussjax.encode_gaussians(gq, h, w, steps=chosen)
    dec, _ = gaussjax.decode_gaussians(data)
    tuning.append(dict(finetune=mode, steps=0 if mode == "none" else args.qat_steps,
                       seconds=time.perf_counter() - t, bytes=len(data), psnr=psnr(dec)))
    print(tuning[-1], flush=True)
  meta["finetune"] = tuning
  print(meta)
  _machine.write_results("quantizers", rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, "quantizers.md"), "a") as f:
    f.write("\n## Colour quantisers (positions and factors at the default steps)\n\n"
            + _machine.format_table(colour_rows))
    f.write(f"\n## Fine-tuning at the steps choose_steps picks ({chosen})\n\n"
            + _machine.format_table(tuning))


def residual_vq(x: np.ndarray, k: int, *, stages: int, iters: int = 25, seed: int = 0):
  """Residual vector quantisation of ``x [N, C]``: ``(reconstruction, index bits, codebook bits)``.

  Each stage is k-means (k-means++ start, Lloyd iterations) on the residual of
  the stages before; codebooks are stored as fp16, indices coded with the
  cheapest of the codec's entropy models.
  """
  from gaussjax.codec._bitstream import choose_model, coded_bits, model_bytes
  rng = np.random.default_rng(seed)
  residual = x.astype(np.float64)
  recon = np.zeros_like(residual)
  index_bits = book_bits = 0.0
  for _ in range(stages):
    k_eff = min(k, len(residual))
    centres = [residual[rng.integers(len(residual))]]
    for _ in range(k_eff - 1):
      d = np.min(((residual[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
      centres.append(residual[rng.choice(len(residual), p=d / d.sum()) if d.sum() > 0 else 0])
    centres = np.asarray(centres)
    for _ in range(iters):
      assign = np.argmin(((residual[:, None] - centres[None]) ** 2).sum(-1), 1)
      for j in range(k_eff):
        members = residual[assign == j]
        if len(members):
          centres[j] = members.mean(0)
    centres = centres.astype(np.float16).astype(np.float64)
    assign = np.argmin(((residual[:, None] - centres[None]) ** 2).sum(-1), 1)
    model = choose_model(assign)
    index_bits += coded_bits(assign, model) + 8 * model_bytes(model)
    book_bits += 16 * centres.size
    recon += centres[assign]
    residual = residual - centres[assign]
  return recon, index_bits, book_bits


if __name__ == "__main__":
  main()
