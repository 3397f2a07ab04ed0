"""What the training loop costs over bare forward and backward passes (issue 13).

The target (issue 13): ``fit_image(kodim23, 10_000, FitConfig(steps=1000))``
takes at most 1.15x the time of 1,000 bare forward+backward calls.

Method (one process, ratios within one run):

* The fit is the real default: ``init_for_fit`` (SLIC at ``initial_count(N)``, timed
  apart), then ``gaussjax.fit`` with ``FitConfig(steps=S, num_gaussians=N)``,
  density events included, exactly what ``fit_image`` runs.
* The bare reference runs on the Gaussians the fit passes through. A
  separate, untimed run of the same (deterministic) fit records the
  Gaussians at the start of every compiled chunk (after the density event
  of that step, if any) and how many steps the chunk makes. The bare run
  then makes, for each of them, that many jitted calls of
  ``value_and_grad`` of the fit's loss (the MSE, ``l2_weight=1``) through
  ``rasterize``: the same S forward+backward passes on the same Gaussians,
  without optimiser, density events, metrics, checks or the loop. The
  buffer includes the parked slots the fit renders (they cost the renderer
  nothing measurable).
* The fit is timed cold (compilation included: the recording run) and then
  warm, interleaved with the bare runs as fit, bare, bare, fit, ...
  (``--repeats`` pairs), so that a load that drifts during the run biases
  neither side; the ratio is the sum of the warm fits over the sum of the
  warm bare runs (cold: the bare run plus its compilation). Load averages
  are recorded.

With ``--baseline DIR`` (another commit's source tree) the fit is also timed
with that code, in its own process, for an old-versus-new step time.

``--compile`` measures compile time instead: a small fit (``fit_image`` on a
64x64 crop of kodim23, 100 Gaussians, 200 steps, density events on) in fresh
processes, cold (first call, compilation included) and warm (the same call
again), with this tree and with ``--baseline DIR``, alternated
(``--repeats`` each).

Usage:

  python benchmarks/fit_overhead.py            # kodim23 768x512, N=10k, 1,000 steps
  python benchmarks/fit_overhead.py --quick    # 192x128, N=625, 200 steps (a smoke run)
  python benchmarks/fit_overhead.py --compile --baseline OLD_TREE

Writes ``benchmarks/results/fit_overhead_cpu.{json,md}`` (``--quick``:
``fit_overhead_cpu_quick``; ``--compile``: ``fit_compile_cpu``).
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
  if args.crop:
    image = image[:args.crop, :args.crop]
  if args.scale > 1:
    h, w = image.shape[0] // args.scale, image.shape[1] // args.scale
    image = image[:h * args.scale, :w * args.scale].reshape(h, args.scale, w, args.scale, 3).mean((1, 3))
  return np.ascontiguousarray(image, np.float32)


def loads() -> list[float]:
  return [round(v, 2) for v in os.getloadavg()]


def fit_setup(args, image):
  """``(initial Gaussians, config, SLIC seconds)``: what ``fit_image`` fits from."""
  import gaussjax
  from gaussjax.fitting._fit import init_for_fit
  config = gaussjax.FitConfig(steps=args.steps, num_gaussians=args.n)
  start = time.perf_counter()
  initial = init_for_fit(image, args.n, config)
  return initial, config, time.perf_counter() - start


def time_fit(image, initial, config) -> tuple[float, float]:
  """One fit: ``(seconds, final PSNR)``."""
  import gaussjax
  start = time.perf_counter()
  fitted, history = gaussjax.fit(image, initial, config)
  np.asarray(fitted.means)
  return time.perf_counter() - start, float(history.psnr[-1])


def record_path(image, initial, config) -> tuple[list, float]:
  """The Gaussians at the start of every chunk of a fit and the chunk's steps; its PSNR.

  Wraps the loop's compiled chunk for this one (untimed) run.
  """
  import jax

  from gaussjax.fitting import _loop
  chunk = _loop._chunk
  path = []

  def recording(state, data, start, num_valid, **kwargs):
    path.append((jax.device_get(state.gaussians), int(num_valid)))
    return chunk(state, data, start, num_valid, **kwargs)

  _loop._chunk = recording
  try:
    _, psnr = time_fit(image, initial, config)
  finally:
    _loop._chunk = chunk
  return path, psnr


def make_bare(image):
  """Jitted ``value_and_grad`` of the MSE through ``rasterize`` (the fit's renderer)."""
  import jax
  import jax.numpy as jnp

  from gaussjax.rendering._render import rasterize, resolve_backend
  backend = resolve_backend("auto")
  height, width = image.shape[:2]
  target = jnp.asarray(image)

  @jax.jit
  def loss_and_grad(g):
    def mse(g):
      render, _ = rasterize(g, height, width, backend=backend)
      return jnp.mean((render - target) ** 2)
    return jax.value_and_grad(mse)(g)

  return loss_and_grad


def time_bare(loss_and_grad, path) -> float:
  """Bare calls along the fit's path: each recorded set of Gaussians, as many calls as its chunk."""
  import jax
  import jax.numpy as jnp
  path = [(jax.tree_util.tree_map(jnp.asarray, g), count) for g, count in path]
  jax.block_until_ready([g for g, _ in path])
  start = time.perf_counter()
  for g, count in path:
    for _ in range(count):
      out = loss_and_grad(g)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def overhead(args) -> None:
  import _machine
  load_before = loads()
  image = load(args)
  initial, config, slic = fit_setup(args, image)
  # The cold fit (compilation included) records the path; its copies of the
  # Gaussians at chunk starts cost it little.
  start = time.perf_counter()
  path, psnr = record_path(image, initial, config)
  fit_cold = time.perf_counter() - start
  assert sum(count for _, count in path) == args.steps
  loss_and_grad = make_bare(image)
  bare_compile = time_bare(loss_and_grad, path[:1] and [(path[0][0], 1)])
  fits, bares, load_during = [], [], []
  for i in range(args.repeats):  # fit, bare, bare, fit, ...
    order = ("fit", "bare") if i % 2 == 0 else ("bare", "fit")
    for what in order:
      if what == "fit":
        seconds, p = time_fit(image, initial, config)
        assert p == psnr, (p, psnr)
        fits.append(seconds)
      else:
        bares.append(time_bare(loss_and_grad, path))
      load_during.append(loads()[0])
  fit_warm, bare_warm = float(np.sum(fits)), float(np.sum(bares))
  live = [int((np.asarray(g.means)[:, 0] > -1e5).sum()) for g, _ in path]
  rows = [{
      "image": f"kodim23 {image.shape[1]}x{image.shape[0]}", "N": args.n, "steps": args.steps,
      "chunks": len(path), "slic_s": slic, "fit_cold_s": fit_cold,
      "fit_warm_s": fit_warm / len(fits), "bare_cold_s": bare_warm / len(bares) + bare_compile,
      "bare_warm_s": bare_warm / len(bares), "ratio_warm": fit_warm / bare_warm,
      "ratio_with_slic": (fit_warm / len(fits) + slic) / (bare_warm / len(bares)),
      "ratio_cold": fit_cold / (bare_warm / len(bares) + bare_compile), "fit_ms_per_step": 1e3 * fit_warm / len(fits) / args.steps,
      "bare_ms_per_call": 1e3 * bare_warm / len(bares) / args.steps, "psnr": psnr}]
  meta = {
      "target": "fit / bare <= 1.15 (issue 13)",
      "method": "bare = value_and_grad of the MSE through rasterize on the Gaussians at the start "
                "of each of the fit's chunks, as many calls as the chunk's steps (recorded from "
                "an untimed run of the same deterministic fit); warm runs interleaved fit, bare, "
                "bare, fit; ratio_warm = sum of warm fits / sum of warm bare runs; ratio_with_slic "
                "adds fit_image's SLIC (slic_s) to the fit",
      "fit_warm_runs_s": [round(v, 2) for v in fits],
      "bare_warm_runs_s": [round(v, 2) for v in bares],
      "live_gaussians_first_last_chunk": [live[0], live[-1]],
      "load_before": load_before, "load_during": load_during}
  if args.baseline:
    old = baseline_worker(args, ["--worker"])
    rows.append({**{k: "" for k in rows[0]}, "image": "baseline fit", "N": args.n,
                 "steps": args.steps, "slic_s": old["slic_s"], "fit_cold_s": old["fit_cold_s"],
                 "fit_warm_s": old["fit_warm_s"],
                 "ratio_warm": old["fit_warm_s"] / (bare_warm / len(bares)),
                 "fit_ms_per_step": 1e3 * old["fit_warm_s"] / args.steps, "psnr": old["psnr"]})
    meta["baseline"] = os.path.abspath(args.baseline)
  meta["load_after"] = loads()
  print(_machine.format_table(rows))
  print(f"load before {load_before}, during {load_during}, after {meta['load_after']}")
  name = args.name or ("fit_overhead_cpu_quick" if args.quick else "fit_overhead_cpu")
  _machine.write_results(name, rows, meta)


def worker(args) -> None:
  """The fit alone, cold then warm, in a fresh process: prints JSON (``--baseline``, ``--compile``).

  Also the backend compile seconds of the cold fit per compiled function
  (``jax.monitoring``), the largest first.
  """
  import jax

  import gaussjax
  compiles: dict[str, float] = {}

  def listen(event, duration, **kwargs):
    if event.endswith("backend_compile_duration"):
      name = kwargs.get("fun_name", "?")
      compiles[name] = compiles.get(name, 0.0) + duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  image = load(args)
  initial, config, slic = fit_setup(args, image)
  cold, psnr = time_fit(image, initial, config)
  warm, _ = time_fit(image, initial, config)
  top = dict(sorted(((k, round(v, 2)) for k, v in compiles.items()), key=lambda kv: -kv[1])[:4])
  print(json.dumps({"slic_s": slic, "fit_cold_s": cold, "fit_warm_s": warm, "psnr": psnr,
                    "backend_compile_s": round(sum(compiles.values()), 2), "largest": top,
                    "source": os.path.dirname(os.path.dirname(gaussjax.__file__))}))


def baseline_worker(args, extra: list[str], tree: str | None = None) -> dict:
  """``worker`` in a fresh process with the gaussjax of ``tree`` (None: this tree)."""
  tree = os.path.abspath(tree or args.baseline) if tree != "." else ROOT
  env = dict(os.environ, PYTHONPATH=tree)
  command = [sys.executable, os.path.abspath(__file__), *extra, "--n", str(args.n), "--steps",
             str(args.steps), "--scale", str(args.scale), "--crop", str(args.crop)]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd="/")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  if os.path.realpath(result["source"]) != os.path.realpath(tree):
    raise RuntimeError(f"the worker imported gaussjax from {result['source']}, not {tree}")
  return result


def compile_times(args) -> None:
  import _machine
  if not args.baseline:
    raise SystemExit("--compile compares with a baseline: give --baseline DIR")
  load_before = loads()
  rows = []
  for i in range(args.repeats):
    for label, tree in (("this tree", "."), ("baseline", args.baseline)):
      out = baseline_worker(args, ["--worker"], tree)
      rows.append({"code": label, "repeat": i, "fit_cold_s": out["fit_cold_s"],
                   "fit_warm_s": out["fit_warm_s"],
                   "compile_s": out["fit_cold_s"] - out["fit_warm_s"],
                   "backend_compile_s": out["backend_compile_s"], "psnr": out["psnr"],
                   "load": loads()[0], "largest_compiles_s": out["largest"]})
      print(rows[-1], flush=True)
  for label in ("this tree", "baseline"):
    mine = [r for r in rows if r["code"] == label]
    rows.append({"code": f"{label} (median)", "repeat": "", "fit_cold_s": float(np.median(
        [r["fit_cold_s"] for r in mine])), "fit_warm_s": float(np.median(
            [r["fit_warm_s"] for r in mine])), "compile_s": float(np.median(
                [r["compile_s"] for r in mine])), "backend_compile_s": float(np.median(
                    [r["backend_compile_s"] for r in mine])), "psnr": mine[0]["psnr"], "load": "",
                 "largest_compiles_s": ""})
  meta = {"what": f"fit_image on a {args.crop}x{args.crop} crop of kodim23, N={args.n}, "
                  f"{args.steps} steps (density events on), fresh process per run: cold = first "
                  "call (compilation included), warm = the same call again; compile_s = cold - "
                  "warm; backend_compile_s = XLA compile seconds of the cold call "
                  "(jax.monitoring), largest_compiles_s per compiled function",
          "baseline": os.path.abspath(args.baseline), "load_before": load_before,
          "load_after": loads()}
  print(_machine.format_table(rows))
  _machine.write_results(args.name or "fit_compile_cpu", rows, meta)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="192x128, N=625, 200 steps")
  parser.add_argument("--compile", action="store_true",
                      help="compile time of a 64x64 fit, this tree against --baseline")
  parser.add_argument("--n", type=int, default=None, help="Gaussians (default 10,000)")
  parser.add_argument("--steps", type=int, default=None, help="steps (default 1,000)")
  parser.add_argument("--scale", type=int, default=1, help="downscale kodim23 by this factor")
  parser.add_argument("--crop", type=int, default=0, help="crop kodim23 to this square first")
  parser.add_argument("--repeats", type=int, default=2, help="warm fit/bare pairs (or runs)")
  parser.add_argument("--baseline", help="source tree of a baseline gaussjax to time the fit with")
  parser.add_argument("--name", help="results name (default fit_overhead_cpu[_quick])")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.quick:
    args.n, args.steps, args.scale = args.n or 625, args.steps or 200, 4
  if args.compile:
    args.n, args.steps, args.crop = args.n or 100, args.steps or 200, args.crop or 64
  args.n, args.steps = args.n or 10_000, args.steps or 1000
  if args.worker:
    worker(args)
  elif args.compile:
    compile_times(args)
  else:
    overhead(args)


if __name__ == "__main__":
  main()
