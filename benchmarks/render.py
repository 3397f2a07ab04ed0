"""Render speed: forward and forward+backward of each backend, 768x512.

Gaussians from a SLIC initialisation of a Kodak image (``gaussjax.init_slic``)
and from a fitted result (``gaussjax.fit`` from that initialisation), N = 10k
and 50k. For each set: forward and value_and_grad (MSE wrt all parameters)
in ms (median of ``--repeats``), compile time, XLA's peak memory estimate,
and the speed-up over a tile-list autodiff baseline (16x16 tiles, fixed
slots per tile, plain autodiff) measured in the same run. Also the end-to-end
time of fitting kodim23 with 10k Gaussians for 1,000 steps.

  python benchmarks/render.py [--sizes 10000 50000] [--fit-steps 1000]

Writes benchmarks/results/render_<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _machine import machine_info  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.rendering import _native  # noqa: E402
from gaussjax.rendering._reference import gaussian_weight  # noqa: E402
from gaussjax.rendering._render import make_plan, rasterize  # noqa: E402

KODAK = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"
RESULTS = pathlib.Path(__file__).parent / "results"
TILE = 16
# The baseline materialises [tiles, slots, 256] weights (and autodiff keeps
# several such arrays): past this many elements it is skipped, not run out of
# memory on a shared machine.
BASELINE_MAX_ELEMENTS = 1 << 26


def tile_plan(gaussians, height, width):
  """Static shapes of the baseline from concrete Gaussians: tile span and slots per tile."""
  means = np.asarray(gaussians.means, np.float64)
  radii = np.asarray(gaussjax.extents(gaussians.chol), np.float64)
  lo = np.clip(np.floor((means - radii) / TILE), 0, [(width - 1) // TILE, (height - 1) // TILE])
  hi = np.clip(np.floor((means + radii) / TILE), 0, [(width - 1) // TILE, (height - 1) // TILE])
  span = int((hi - lo).max()) + 1
  tiles_x = -(-width // TILE)
  counts = np.zeros(tiles_x * -(-height // TILE), np.int64)
  for (x0, y0), (x1, y1) in zip(lo.astype(int), hi.astype(int)):
    for ty in range(y0, y1 + 1):
      counts[ty * tiles_x + x0:ty * tiles_x + x1 + 1] += 1
  return span, int(-(-counts.max() // 16) * 16)


def render_tiles(gaussians, height, width, span, slots):
  """The baseline: per-tile lists of Gaussians in fixed slots, dense per tile, autodiff."""
  means, chol, colors = gaussians
  tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
  num_tiles = tiles_x * tiles_y
  radii = jax.lax.stop_gradient(gaussjax.extents(chol))
  m = jax.lax.stop_gradient(means)
  lo = jnp.floor((m - radii) / TILE).astype(jnp.int32)
  hi = jnp.floor((m + radii) / TILE).astype(jnp.int32)
  offsets = jnp.stack(jnp.meshgrid(jnp.arange(span), jnp.arange(span)), -1).reshape(-1, 2)
  tile = lo[:, None, :] + offsets[None]  # [N, span², 2]
  ok = (tile <= hi[:, None, :]).all(-1) & (tile >= 0).all(-1) & (tile[..., 0] < tiles_x) & (
      tile[..., 1] < tiles_y)
  key = jnp.where(ok, tile[..., 1] * tiles_x + tile[..., 0], num_tiles).reshape(-1)
  order = jnp.argsort(key)
  sorted_key = key[order]
  start = jnp.searchsorted(sorted_key, jnp.arange(num_tiles))
  end = jnp.searchsorted(sorted_key, jnp.arange(num_tiles), side="right")
  pos = start[:, None] + jnp.arange(slots)
  n = means.shape[0]
  owner = order[jnp.minimum(pos, order.shape[0] - 1)] // (span * span)
  index = jnp.where(pos < end[:, None], owner, n)
  conic = gaussjax.conics(chol)
  pad = lambda x: jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])  # noqa: E731
  mu, cn, col = pad(means)[index], pad(conic)[index], pad(colors)[index]  # [T, S, ...]
  py, px = jnp.meshgrid(jnp.arange(TILE), jnp.arange(TILE), indexing="ij")
  ty, tx = jnp.divmod(jnp.arange(num_tiles), tiles_x)
  x = (tx[:, None] * TILE + px.reshape(-1)[None]).astype(jnp.float32) + 0.5  # [T, 256]
  y = (ty[:, None] * TILE + py.reshape(-1)[None]).astype(jnp.float32) + 0.5
  dx = x[:, None, :] - mu[..., 0:1]  # [T, S, 256]
  dy = y[:, None, :] - mu[..., 1:2]
  q = cn[..., 0:1] * dx * dx + 2.0 * cn[..., 1:2] * dx * dy + cn[..., 2:3] * dy * dy
  w = gaussian_weight(q)
  out = jnp.einsum("tsp,tsc->tpc", w, col)  # [T, 256, C]
  out = out.reshape(tiles_y, tiles_x, TILE, TILE, -1).transpose(0, 2, 1, 3, 4)
  return out.reshape(tiles_y * TILE, tiles_x * TILE, -1)[:height, :width]


def timed(fn, args, repeats):
  """(compile s, median wall ms, median CPU ms, peak bytes) of a jitted function.

  CPU ms is this process's CPU time per call (all threads): on a shared,
  oversubscribed machine it shows the cost better than the wall time.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak = None
  if memory is not None:
    peak = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
               + memory.output_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  walls, cpus = [], []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    walls.append(1e3 * (time.perf_counter() - start))
    cpus.append(1e3 * (time.process_time() - cpu))
  return compile_s, statistics.median(walls), statistics.median(cpus), peak


def measure(name, render_fn, gaussians, target, repeats):
  def forward(g):
    return render_fn(g)

  def loss(g):
    return jnp.mean((render_fn(g) - target) ** 2)

  row = {"method": name}
  try:
    row["fwd_compile_s"], row["fwd_ms"], row["fwd_cpu_ms"], row["fwd_peak_bytes"] = timed(
        forward, (gaussians,), repeats)
    row["compile_s"], row["fwd_bwd_ms"], row["fwd_bwd_cpu_ms"], row["peak_bytes"] = timed(
        jax.value_and_grad(loss), (gaussians,), repeats)
  except Exception as error:  # noqa: BLE001 (report, e.g. out of memory, and go on)
    row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
  return row


def backends():
  names = ["xla"]
  if jax.default_backend() == "gpu":
    names.append("pallas")
  return names


def pure_xla(fn):
  """``fn`` traced with the native kernel switched off: the pure-XLA size classes."""
  def wrapped(g):
    usable = _native.usable
    _native.usable = lambda *args: False
    try:
      return fn(g)
    finally:
      _native.usable = usable

  return wrapped


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image", default="kodim23")
  parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--fit-steps", type=int, default=1000,
                      help="steps of the timed 10k fit (its result is the 10k 'fitted' set)")
  parser.add_argument("--fitted-steps", type=int, default=200,
                      help="steps that make the 'fitted' set at other sizes")
  parser.add_argument("--no-baseline", action="store_true")
  args = parser.parse_args()

  load_start = list(os.getloadavg())  # other work on the machine skews timings
  image = gaussjax.load_image(KODAK / f"{args.image}.png")
  height, width, _ = image.shape
  target = jnp.asarray(image)
  rows, fits = [], []
  for n in args.sizes:
    start = time.perf_counter()
    slic = gaussjax.init_slic(image, n)
    init_s = time.perf_counter() - start
    steps = args.fit_steps if n == 10_000 else args.fitted_steps
    config = gaussjax.FitConfig(steps=steps, backend="xla")
    start, cpu = time.perf_counter(), time.process_time()
    fitted, history = gaussjax.fit(image, slic, config)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    fits.append({"n": n, "steps": steps, "init_slic_s": init_s, "fit_s": fit_s,
                 "fit_cpu_s": fit_cpu_s,
                 "end_to_end_s": init_s + fit_s, "psnr_start": float(history.psnr[0]),
                 "psnr_end": float(history.psnr[-1]), "replans": history.replans,
                 "overflows": history.overflows})
    print(f"fit n={n} {steps} steps: init {init_s:.1f} s, fit {fit_s:.1f} s, "
          f"PSNR {history.psnr[0]:.2f} -> {history.psnr[-1]:.2f} dB", flush=True)
    for source, gaussians in (("slic", slic), (f"fitted_{steps}", fitted)):
      sides = 2 * np.asarray(gaussjax.extents(gaussians.chol)).max(-1)
      base = {"n": n, "gaussians": source, "support_px_median": float(np.median(sides)),
              "support_px_max": float(sides.max())}
      start = time.perf_counter()
      methods = {}
      for backend in backends():
        plan = make_plan(gaussians, height, width, backend=backend)
        plan_ms = 1e3 * (time.perf_counter() - start)
        def fn(g, b=backend, p=plan):
          return rasterize(g, height, width, backend=b, plan=p)[0]
        extra = {"plan_ms": plan_ms, "plan": repr(plan)}
        if backend == "xla" and _native.usable(np.float32, gaussians.channels):
          methods["xla (native kernel)"] = (fn, extra)
          methods["xla (pure XLA)"] = (pure_xla(fn), extra)
        else:
          methods[backend] = (fn, extra)
      if not args.no_baseline:
        span, slots = tile_plan(gaussians, height, width)
        extra = {"tile_span": span, "slots": slots}
        elements = -(-height // TILE) * -(-width // TILE) * slots * TILE * TILE
        if elements <= BASELINE_MAX_ELEMENTS:
          methods["tile_lists_autodiff"] = (
              lambda g, s=span, k=slots: render_tiles(g, height, width, s, k), extra)
        else:
          rows.append({**base, "method": "tile_lists_autodiff", **extra,
                       "error": f"skipped: {elements} weight elements > {BASELINE_MAX_ELEMENTS}"})
      baseline_ms = None
      for name, (fn, extra) in reversed(list(methods.items())):
        row = {**base, **measure(name, fn, gaussians, target, args.repeats), **extra}
        if name == "tile_lists_autodiff":
          baseline_ms = row.get("fwd_bwd_ms")
        elif baseline_ms and "fwd_bwd_ms" in row:
          row["speedup_fwd_bwd"] = baseline_ms / row["fwd_bwd_ms"]
        rows.append(row)
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
        print({k: v for k, v in shown.items() if k != "plan"}, flush=True)

  machine = {**machine_info(), "load_average_at_start": load_start,
             "load_average_at_end": list(os.getloadavg())}
  result = {"machine": machine, "image": args.image, "size": [height, width],
            "repeats": args.repeats, "renders": rows, "fits": fits}
  RESULTS.mkdir(exist_ok=True)
  name = f"render_{jax.default_backend()}"
  (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
  lines = [f"# Render benchmark ({args.image}, {width}x{height})", "",
           "Machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()), "",
           "Wall ms: median of the repeats; CPU ms: process CPU time per call (all threads).", "",
           "| N | Gaussians | method | fwd ms | fwd+bwd ms | fwd CPU ms | fwd+bwd CPU ms | "
           "speed-up | peak MB | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    def fmt(key, scale=1.0, digits=1, r=r):
      return "—" if r.get(key) is None else f"{r[key] * scale:.{digits}f}"
    lines.append(f"| {r['n']} | {r['gaussians']} | {r['method']} | {fmt('fwd_ms')} | "
                 f"{fmt('fwd_bwd_ms')} | {fmt('fwd_cpu_ms')} | {fmt('fwd_bwd_cpu_ms')} | "
                 f"{fmt('speedup_fwd_bwd')} | {fmt('peak_bytes', 1e-6, 0)} | "
                 f"{fmt('compile_s', 1, 2)} |" + (f" {r['error']}" if "error" in r else ""))
  lines += ["", "| N | steps | init_slic s | fit s | fit CPU s | end to end s | PSNR start → end dB |",
            "|---|---|---|---|---|---|---|"]
  for f in fits:
    lines.append(f"| {f['n']} | {f['steps']} | {f['init_slic_s']:.1f} | {f['fit_s']:.1f} | "
                 f"{f['fit_cpu_s']:.1f} | "
                 f"{f['end_to_end_s']:.1f} | {f['psnr_start']:.2f} → {f['psnr_end']:.2f} |")
  (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
