"""What the training loop costs over bare forward and backward passes (issue 13).

Times the fit part of ``fit_image(kodim23, N, FitConfig(steps=S))`` (SLIC
timed separately: ``init_for_fit`` (SLIC at ``initial_count(N)``), then ``fit``
growing to N with the default density events) against S bare jitted calls
of ``value_and_grad`` of the MSE through ``rasterize`` on the fitted N
Gaussians, in the same process. The target (issue 13): fit / bare <= 1.15.

Both are timed cold (compilation included) and warm (a second identical run,
compilations cached); the warm bare loop runs before the fits (on SLIC
Gaussians at N) and after them (on the fitted ones) and its mean is used,
since the machine may be shared (load averages recorded).
With ``--baseline DIR`` (another commit's source tree) the fit is also timed
with that code, in its own process, for an old-versus-new step time.

Usage:

  python benchmarks/fit_overhead.py            # kodim23 768x512, N=10k, 1,000 steps
  python benchmarks/fit_overhead.py --quick    # 192x128, N=625, 200 steps (a smoke run)

Writes ``benchmarks/results/fit_overhead_cpu.{json,md}`` (``--quick``:
``fit_overhead_cpu_quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The data beside the repository (../shared/data/kodak), or GJX_KODAK.
KODAK = os.environ.get("GJX_KODAK", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "data", "kodak"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(args):
  import gaussjax
  image = gaussjax.load_image(os.path.join(KODAK, "kodim23.png"))
  if args.scale > 1:
    h, w = image.shape[0] // args.scale, image.shape[1] // args.scale
    image = image[:h * args.scale, :w * args.scale].reshape(h, args.scale, w, args.scale, 3).mean((1, 3))
  return np.ascontiguousarray(image, np.float32)


def time_fit(args, image) -> dict:
  """SLIC, then the fit twice (cold and warm): seconds and the final PSNR."""
  import gaussjax
  from gaussjax.fitting._fit import init_for_fit
  config = gaussjax.FitConfig(steps=args.steps, num_gaussians=args.n)
  start = time.perf_counter()
  initial = init_for_fit(image, args.n, config)
  slic = time.perf_counter() - start
  out = {"slic_s": slic}
  for name in ("cold", "warm"):
    start = time.perf_counter()
    fitted, history = gaussjax.fit(image, initial, config)
    np.asarray(fitted.means)
    out[f"fit_{name}_s"] = time.perf_counter() - start
    out["psnr"] = float(history.psnr[-1])
  out["fitted"] = fitted
  return out


def time_bare(image, gaussians, steps: int) -> tuple[float, float]:
  """``steps`` jitted value_and_grad calls of the MSE through rasterize: (cold s, warm s)."""
  import jax
  import jax.numpy as jnp

  from gaussjax.rendering._render import rasterize, resolve_backend
  backend = resolve_backend("auto")
  height, width = image.shape[:2]
  target = jnp.asarray(image)
  g = jax.tree_util.tree_map(jnp.asarray, gaussians)

  @jax.jit
  def loss_and_grad(g):
    def mse(g):
      render, _ = rasterize(g, height, width, backend=backend)
      return jnp.mean((render - target) ** 2)
    return jax.value_and_grad(mse)(g)

  times = []
  for _ in range(2):
    start = time.perf_counter()
    for _ in range(steps):
      value, grads = loss_and_grad(g)
    jax.block_until_ready((value, grads))
    times.append(time.perf_counter() - start)
  return times[0], times[1]


def worker(args) -> None:
  """The fit timing alone (for ``--baseline``): prints JSON."""
  image = load(args)
  out = time_fit(args, image)
  del out["fitted"]
  print(json.dumps(out))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="192x128, N=625, 200 steps")
  parser.add_argument("--n", type=int, default=10_000)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--scale", type=int, default=1, help="downscale kodim23 by this factor")
  parser.add_argument("--baseline", help="source tree of a baseline gaussjax to time the fit with")
  parser.add_argument("--name", help="results name (default fit_overhead_cpu[_quick])")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.n, args.steps, args.scale = 625, 200, 4
  if args.worker:
    worker(args)
    return
  import _machine
  load_before = [round(v, 2) for v in os.getloadavg()]
  image = load(args)
  # Bare runs before and after the fits, their mean against the fit: a load
  # that drifts during the run biases neither side.
  import gaussjax
  slic = gaussjax.init_slic(image, args.n)  # N Gaussians of the fit's kind, for the first bare run
  bare_cold, bare_warm = time_bare(image, slic, args.steps)
  fit = time_fit(args, image)
  _, bare_warm_after = time_bare(image, fit["fitted"], args.steps)
  bare = 0.5 * (bare_warm + bare_warm_after)
  rows = [{
      "image": f"kodim23 {image.shape[1]}x{image.shape[0]}", "N": args.n, "steps": args.steps,
      "slic_s": fit["slic_s"], "fit_cold_s": fit["fit_cold_s"], "fit_warm_s": fit["fit_warm_s"],
      "bare_cold_s": bare_cold, "bare_warm_s": bare, "ratio_warm": fit["fit_warm_s"] / bare,
      "ratio_cold": fit["fit_cold_s"] / bare_cold, "fit_ms_per_step": 1e3 * fit["fit_warm_s"] / args.steps,
      "bare_ms_per_call": 1e3 * bare / args.steps, "psnr": fit["psnr"]}]
  meta = {"target": "fit / bare <= 1.15 (issue 13)", "bare_warm_runs_s": [bare_warm, bare_warm_after],
          "load_before": load_before}
  if args.baseline:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline))
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--n", str(args.n),
               "--steps", str(args.steps), "--scale", str(args.scale)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd="/")
    old = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append({**{k: "" for k in rows[0]}, "image": "baseline fit", "N": args.n,
                 "steps": args.steps, "slic_s": old["slic_s"], "fit_cold_s": old["fit_cold_s"],
                 "fit_warm_s": old["fit_warm_s"], "ratio_warm": old["fit_warm_s"] / bare,
                 "ratio_cold": old["fit_cold_s"] / bare_cold,
                 "fit_ms_per_step": 1e3 * old["fit_warm_s"] / args.steps, "psnr": old["psnr"]})
    meta["baseline"] = os.path.abspath(args.baseline)
  meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
  print(_machine.format_table(rows))
  print(f"load before {load_before}, after {meta['load_after']}")
  name = args.name or ("fit_overhead_cpu_quick" if args.quick else "fit_overhead_cpu")
  _machine.write_results(name, rows, meta)


if __name__ == "__main__":
  main()
