"""Would a richer primitive pay? Float fits of three primitives at equal bits, before any format work.

The codec's gap to JPEG 2000 is representational: the unquantised float fit
at the codec's N already stays below JPEG 2000 (``results/fit_lr_probe.md``),
and the schedule, step count and quantisers are near their best
(``results/fit_schedule_probe.md``, ``results/codec_ablation*.md``). This
probe asks whether a different primitive represents more per bit:

* ``gauss``: the library's primitive (``render_reference``'s model:
  ``Σ_i w_i(p) c_i``).
* ``shape``: one learned exponent β for the whole image,
  ``w = exp(-q^β / 2)`` (β > 1 flatter tops and sharper edges); one number
  per file, so no bits per Gaussian.
* ``grad``: a linear colour ramp per Gaussian, ``c_i + G_i (p - μ_i) / s``
  (``G_i`` 3x2, s the mean spacing): six more numbers per Gaussian.

Every variant is fitted the same way: ``init_slic`` at N, then plain Adam
(the ``FitConfig`` learning rates, cosine decay to 0.2, no density control)
on the MSE, ``--steps`` steps, rendered densely (no truncation, so the
fitted model is the same for all variants). Crops of the full-size images
keep the full-size detail per pixel; N is set from a target rate at
``--bits`` bits per Gaussian (the codec's mean, ``results/quantizers.md``),
``gauss`` is fitted at a grid of N around it, the others at N.

The comparison is at equal bits per pixel, not at equal N: ``grad`` is
charged ``--bits + 6 b`` bits per Gaussian for b in ``--grad-bits`` (the
ramp's six numbers coded at b bits each), and its PSNR is compared with
``gauss``'s curve interpolated (linearly in log N) at the same bits. The
float fits ignore quantisation, so this bounds what each primitive could
give; a gain well above the codec's gap (about 0.5 dB at 384x256 for
+15%) would justify the format and renderer work.

  python benchmarks/primitive_probe.py --images 1,13,20 --crops 2 --size 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

from gaussjax.core._gaussians import conics  # noqa: E402
from gaussjax.fitting._fit import FitConfig, gaussian_spacing  # noqa: E402
from gaussjax.fitting._init import init_slic  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
N_FACTORS = (0.6, 0.8, 1.0, 1.25, 1.6)  # gauss's curve; the others at 1.0 only


def crops(image: np.ndarray, count: int, size: int) -> list[tuple[str, np.ndarray]]:
  """``count`` square crops of ``size`` px along the image's diagonal (centre first)."""
  h, w = image.shape[:2]
  out = []
  for k in range(count):
    t = 0.5 if count == 1 else (k + 1) / (count + 1)
    y = int(round(t * (h - size)))
    x = int(round(t * (w - size)))
    out.append((f"{y},{x}", image[y:y + size, x:x + size]))
  return out


def render(params: dict, height: int, width: int, spacing: float, variant: str) -> jax.Array:
  """Dense render of one primitive variant, ``[H, W, 3]``."""
  means, chol, colors = params["means"], params["chol"], params["colors"]
  conic = conics(chol)
  ys = jnp.arange(height, dtype=jnp.float32) + 0.5
  xs = jnp.arange(width, dtype=jnp.float32) + 0.5
  dx = xs[None, :, None] - means[:, 0]  # [1, W, N]
  dy = ys[:, None, None] - means[:, 1]  # [H, 1, N]
  q = conic[:, 0] * dx * dx + 2.0 * conic[:, 1] * dx * dy + conic[:, 2] * dy * dy
  if variant == "shape":
    beta = jnp.exp(params["log_beta"])
    w = jnp.exp(-0.5 * jnp.exp(beta * jnp.log(q + 1e-12)))
  else:
    w = jnp.exp(-0.5 * q)
  out = jnp.einsum("hwn,nc->hwc", w, colors)
  if variant == "grad":
    g = params["grad"]  # [N, 3, 2]
    out += (jnp.einsum("hwn,nc->hwc", w * dx / spacing, g[:, :, 0])
            + jnp.einsum("hwn,nc->hwc", w * dy / spacing, g[:, :, 1]))
  return out


def fit(image: np.ndarray, n: int, variant: str, steps: int) -> float:
  """PSNR (dB, clipped to [0, 1]) of one variant fitted at N Gaussians."""
  height, width = image.shape[:2]
  spacing = gaussian_spacing(height, width, n)
  g = init_slic(image, n)
  params = {"means": jnp.asarray(g.means, jnp.float32), "chol": jnp.asarray(g.chol, jnp.float32),
            "colors": jnp.asarray(g.colors, jnp.float32)}
  config = FitConfig()
  lrs = {"means": config.lr_means * spacing, "chol": config.lr_chol * spacing,
         "colors": config.lr_colors}
  if variant == "shape":
    params["log_beta"] = jnp.zeros(())
    lrs["log_beta"] = 0.03
  if variant == "grad":
    params["grad"] = jnp.zeros((n, 3, 2), jnp.float32)
    lrs["grad"] = config.lr_colors
  opt = optax.multi_transform(
      {k: optax.adam(optax.cosine_decay_schedule(v, steps, alpha=0.2)) for k, v in lrs.items()},
      {k: k for k in params})
  target = jnp.asarray(image)

  def loss(p):
    return jnp.mean((render(p, height, width, spacing, variant) - target) ** 2)

  @jax.jit
  def run(p):
    def body(_, carry):
      p, s = carry
      grads = jax.grad(loss)(p)
      updates, s = opt.update(grads, s, p)
      return optax.apply_updates(p, updates), s
    p, _ = jax.lax.fori_loop(0, steps, body, (p, opt.init(p)))
    out = jnp.clip(render(p, height, width, spacing, variant), 0.0, 1.0)
    return -10.0 * jnp.log10(jnp.mean((out - target) ** 2)), p.get("log_beta", jnp.zeros(()))

  psnr, log_beta = run(params)
  return float(psnr), float(jnp.exp(log_beta))


def interp_log(ns: list[float], psnrs: list[float], n: float) -> float:
  """PSNR at N from a curve over N, linear in log N; nan outside the curve (no extrapolation)."""
  x = np.log(ns)
  if not x[0] <= math.log(n) <= x[-1]:
    return float("nan")
  return float(np.interp(math.log(n), x, psnrs))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", default="1,13,20")
  parser.add_argument("--crops", type=int, default=2)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--bpp", default="0.25,1.0")
  parser.add_argument("--bits", type=float, default=44.0)
  parser.add_argument("--grad-bits", default="2,3,4")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--name", default="primitive_probe")
  args = parser.parse_args()
  grad_bits = [float(b) for b in args.grad_bits.split(",")]
  rows, raw = [], []
  t_start = time.perf_counter()
  for index in [int(i) for i in args.images.split(",")]:
    image = load(index, 1)
    for where, crop in crops(image, args.crops, args.size):
      for bpp in [float(b) for b in args.bpp.split(",")]:
        n0 = args.size * args.size * bpp / args.bits
        ns = [max(8, int(round(n0 * f))) for f in N_FACTORS]
        curves = {}
        n1 = ns[N_FACTORS.index(1.0)]
        curves, betas = {}, {}
        for variant in ("gauss", "shape", "grad"):
          results = [fit(crop, n, variant, args.steps) for n in (ns if variant == "gauss" else [n1])]
          curves[variant] = [r[0] for r in results]
          betas[variant] = results[-1][1]
          raw.append({"image": f"kodim{index:02d}", "crop": where, "bpp": bpp, "variant": variant,
                      "n": ns if variant == "gauss" else [n1], "psnr": curves[variant],
                      "beta": [r[1] for r in results]})
        at_n1 = curves["gauss"][N_FACTORS.index(1.0)]
        row = {"image": f"kodim{index:02d}", "crop": where, "bpp": bpp, "n": n1,
               "gauss_dB": at_n1,
               "shape_dB": curves["shape"][0] - at_n1,
               "beta": betas["shape"],
               "grad_equal_n_dB": curves["grad"][0] - at_n1}
        for b in grad_bits:
          # grad at ns[2] costs as many bits as gauss at this N:
          n_equal = n1 * (args.bits + 6 * b) / args.bits
          row[f"grad_{b:g}b_dB"] = curves["grad"][0] - interp_log(ns, curves["gauss"], n_equal)
        rows.append(row)
        print(_machine.format_table([row]), flush=True)
  keys = [k for k in rows[0] if k.endswith("_dB") and k != "gauss_dB"]
  mean = {"image": "mean", "crop": "", "bpp": float("nan"), "n": "", "gauss_dB": float("nan"),
          "beta": float(np.mean([r["beta"] for r in rows]))}
  for k in keys:
    mean[k] = float(np.nanmean([r[k] for r in rows]))
  rows.append({k: mean.get(k, "") for k in rows[0]})
  info = _machine.machine_info()
  info["load"] = os.getloadavg()
  seconds = time.perf_counter() - t_start
  table = _machine.format_table(rows)
  print(table)
  with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
    json.dump({"machine": info, "args": vars(args), "rows": rows, "fits": raw,
               "seconds": seconds}, f, indent=1)
  with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
    f.write(f"# Primitive probe: float fits of three primitives at equal bits\n\n"
            f"`python benchmarks/primitive_probe.py {' '.join(sys.argv[1:])}` "
            f"({seconds:.0f} s)\n\nMachine: {info}\n\n"
            "Crops of the full-size images (`crop` = top,left). `gauss_dB`: PSNR of the library's "
            f"primitive at N (= size² · bpp / {args.bits:g} bits). `shape_dB`: one learned "
            "exponent per image (`beta`), minus gauss, same N. `grad_equal_n_dB`: a colour ramp "
            "per Gaussian, minus gauss, same N (no charge for the ramp). `grad_<b>b_dB`: the "
            "ramp charged 6·b bits per Gaussian, against gauss's curve at the same bits "
            "(interpolated in log N over N × "
            f"{N_FACTORS}; nan outside). Plain Adam, {args.steps} steps, no density "
            "control, dense rendering, float parameters.\n\n")
    f.write(table)


if __name__ == "__main__":
  main()
