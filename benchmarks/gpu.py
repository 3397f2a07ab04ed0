"""The GPU benchmark: one script, at most ~8 minutes on one H100/H200, install included.

Sections, in order, each under its own time budget and ``try``/``except`` (an
error or a timeout is recorded and the next section runs); the results file
is rewritten after every section, so a run cut short still leaves numbers:

1. ``pytest tests/test_render_pallas.py`` (compiled Triton kernels on a GPU):
   passed / failed and seconds.
2. Render speed with the Pallas backend at 10k / 50k / 70k SLIC Gaussians on
   kodim23: forward and forward+backward (``value_and_grad`` of the MSE), ms,
   median of repeated jitted calls after a warm-up, ``block_until_ready``.
   ``init_slic`` time at each N is recorded too.
3. ``fit_image(kodim23, 10_000, FitConfig(steps=2000))``: wall time, PSNR,
   ms per step.
4. ``fit_batch`` of 16 256x256 Kodak crops against a loop of ``fit`` (both
   warm: compiled once before the timed run): the speed ratio.
5. ``encode(kodim23, CodecConfig(bpp=0.5))``: seconds, bytes, bpp, PSNR; and
   ``decode`` (first call and warm median).
6. ``fit_image(kodim23, 70_000, FitConfig(steps=2000))``.

Only public ``gaussjax`` names are used. Writes
``benchmarks/results/gpu_<device>.json|md`` (e.g. ``gpu_nvidia_h200``); with
``--small`` (tiny sizes and steps, to check the script on a CPU in about a
minute) or without a GPU the name says so (``gpu_script_cpu_small``).

  python3 -P benchmarks/gpu.py                 # on the GPU machine (benchmarks/gpu_run.sh)
  python benchmarks/gpu.py --small             # end-to-end check on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import write_results

import gaussjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KODAK_DIRS = [os.path.join(ROOT, "shared", "data", "kodak"),
              os.path.join(ROOT, "..", "shared", "data", "kodak"),
              os.path.join(ROOT, "..", "..", "shared", "data", "kodak"), "/work/shared/data/kodak"]

# Targets of issue 13 and the figures of the library before it (commit ddc914d,
# ../shared/reference/gpu_h200_2026-11-28.md), for the table.
TARGETS = {
    "fit_image_10k_s": ("<= 6", 41.2),
    "fit_image_70k_s": ("<= 10", 68.6),
    "fit_step_10k_ms": ("<= 2.5", 20.6),
    "batch_speedup": (">= 4", 2.29),
    "encode_s": ("<= 10", 58.2),
    "fwd_ms_10k": ("0.2 (aim)", 1.64),
}


class SectionTimeout(Exception):
  pass


def _on_alarm(signum, frame):
  del signum, frame
  raise SectionTimeout()


def _kodak(index: int) -> np.ndarray:
  for directory in KODAK_DIRS:
    path = os.path.join(directory, f"kodim{index:02d}.png")
    if os.path.exists(path):
      return np.asarray(gaussjax.load_image(path), np.float32)
  raise FileNotFoundError(f"kodim{index:02d}.png not found in {KODAK_DIRS}")


def _device_name() -> str:
  device = jax.devices()[0]
  kind = device.device_kind if device.platform == "gpu" else device.platform
  return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def _fit_config(**kwargs) -> gaussjax.FitConfig:
  """A FitConfig with those fields it has (the training loop is being rewritten)."""
  names = {f.name for f in dataclasses.fields(gaussjax.FitConfig)}
  return gaussjax.FitConfig(**{k: v for k, v in kwargs.items() if k in names})


def _median_ms(fn, *args, repeats: int) -> tuple[float, float]:
  """(median, min) milliseconds of ``fn(*args)`` after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), min(times)


class Bench:
  """Runs sections, records rows and section status, writes after each."""

  def __init__(self, name: str, meta: dict, total_budget_s: float, targets: dict):
    self.name = name
    self.targets = targets
    self.meta = meta
    self.rows: list[dict] = []
    self.sections: dict[str, dict] = {}
    self.start = time.perf_counter()
    self.total_budget_s = total_budget_s

  def add(self, section: str, item: str, value, unit: str = "", note: str = ""):
    row = {"section": section, "item": item, "value": value, "unit": unit, "note": note}
    target = self.targets.get(item)
    row["target"], row["before (ddc914d H200)"] = target if target else ("", "")
    self.rows.append(row)
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"  {item}: {shown} {unit} {note}", flush=True)

  def left_s(self) -> float:
    return self.total_budget_s - (time.perf_counter() - self.start)

  def run(self, section: str, budget_s: float, fn, *args):
    budget = min(budget_s, self.left_s())
    print(f"[{section}] budget {budget:.0f} s", flush=True)
    status = {"budget_s": round(budget, 1)}
    start = time.perf_counter()
    if budget < 5:
      status["status"] = "skipped: total time budget spent"
    else:
      signal.signal(signal.SIGALRM, _on_alarm)
      signal.setitimer(signal.ITIMER_REAL, budget)
      try:
        fn(self, *args)
        status["status"] = "ok"
      except SectionTimeout:
        status["status"] = f"timed out after {budget:.0f} s (rows so far kept)"
      except Exception as e:  # a benchmark records the failure and goes on
        status["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
      finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    status["seconds"] = round(time.perf_counter() - start, 1)
    self.sections[section] = status
    print(f"[{section}] {status['status']} ({status['seconds']} s)", flush=True)
    self.write()

  def write(self):
    meta = dict(self.meta)
    meta["elapsed_s"] = round(time.perf_counter() - self.start, 1)
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["sections"] = self.sections
    write_results(self.name, self.rows, meta)


def section_pallas_tests(bench: Bench, small: bool, budget_s: float):
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             os.path.join(ROOT, "tests", "test_render_pallas.py")]
  if small:  # interpret mode on a CPU is slow: one test checks the plumbing
    command += ["-k", "test_bad_input"]
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(budget_s - 5, 1))
    out = done.stdout + done.stderr
    rc = done.returncode
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    rc = "timeout"
  seconds = time.perf_counter() - start
  found = re.findall(r"(\d+) (passed|failed|errors?|skipped)", out)
  counts = {word: int(num) for num, word in found}
  bench.add("pallas_tests", "passed", counts.get("passed", 0), "tests")
  bench.add("pallas_tests", "failed", counts.get("failed", 0) + counts.get("error", 0)
            + counts.get("errors", 0), "tests", f"rc {rc}")
  bench.add("pallas_tests", "seconds", seconds, "s", "subset (-k test_bad_input)" if small else "")
  if rc not in (0, "timeout") or counts.get("failed"):
    tail = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))][:5]
    bench.meta["pallas_test_failures"] = tail or out.splitlines()[-5:]


def section_render(bench: Bench, image: np.ndarray, sizes, backend: str, repeats: int):
  height, width = image.shape[:2]
  target = jnp.asarray(image)
  for n in sizes:
    start = time.perf_counter()
    g = gaussjax.init_slic(image, n)
    bench.add("render", f"init_slic_s_{n // 1000}k" if n >= 1000 else f"init_slic_s_{n}",
              time.perf_counter() - start, "s", "host CPU")
    plan = gaussjax.make_plan(g, height, width, backend=backend)

    def forward(gaussians):
      return gaussjax.rasterize(gaussians, height, width, backend=backend, plan=plan)

    def loss(gaussians):
      rendered, overflow = forward(gaussians)
      return jnp.mean((rendered - target) ** 2), overflow

    fwd = jax.jit(forward)
    fwd_bwd = jax.jit(jax.value_and_grad(loss, has_aux=True))
    tag = f"{n // 1000}k" if n >= 1000 else str(n)
    start = time.perf_counter()
    _, overflow = jax.block_until_ready(fwd(g))
    compile_fwd = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fwd_bwd(g))
    compile_bwd = time.perf_counter() - start
    median, fastest = _median_ms(fwd, g, repeats=repeats)
    bench.add("render", f"fwd_ms_{tag}", median, "ms",
              f"min {fastest:.3f}; {1e3 / median:.0f} renders/s; first call {compile_fwd:.1f} s"
              + ("; OVERFLOW" if bool(overflow) else ""))
    median, fastest = _median_ms(fwd_bwd, g, repeats=repeats)
    bench.add("render", f"fwd_bwd_ms_{tag}", median, "ms",
              f"min {fastest:.3f}; first call {compile_bwd:.1f} s")


def section_fit_image(bench: Bench, image: np.ndarray, n: int, steps: int, cap_s: float):
  tag = f"{n // 1000}k" if n >= 1000 else str(n)
  # time_budget_s only as a safety cap (a run stopped by it is flagged).
  config = _fit_config(steps=steps, time_budget_s=cap_s)
  start = time.perf_counter()
  fitted, history = gaussjax.fit_image(image, n, config)
  jax.block_until_ready(fitted)
  wall = time.perf_counter() - start
  done = int(np.asarray(history.step)[-1])
  note = f"{done} steps, SLIC and compilation included"
  if done < steps:
    note += f"; STOPPED EARLY by the {cap_s:.0f} s cap"
  bench.add("fit_image", f"fit_image_{tag}_s", wall, "s", note)
  bench.add("fit_image", f"fit_image_{tag}_psnr", float(np.asarray(history.psnr)[-1]), "dB")
  bench.add("fit_image", f"fit_step_{tag}_ms", wall / max(done, 1) * 1e3, "ms",
            "wall / steps (everything included)")
  wall_time = np.asarray(getattr(history, "wall_time", [np.nan]))
  if wall_time.size and np.isfinite(wall_time[-1]):
    bench.add("fit_image", f"fit_{tag}_history_wall_s", float(wall_time[-1]), "s",
              "FitHistory.wall_time at the last entry (the fit without SLIC)")


def _crops(count: int, size: int) -> list[np.ndarray]:
  crops = []
  for i in range(count):
    image = _kodak(i % 24 + 1)
    h, w = image.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2 + (i // 24) * 7
    crops.append(np.ascontiguousarray(image[y:y + size, x:x + size]))
  return crops


def section_batch(bench: Bench, count: int, size: int, n: int, steps: int):
  crops = _crops(count, size)
  inits = [gaussjax.init_slic(c, n) for c in crops]
  config = _fit_config(steps=steps, log_every=steps, densify_every=0)
  # Warm-ups (compilation) with the same shapes and config, then the timed runs.
  jax.block_until_ready(gaussjax.fit(crops[0], inits[0], config)[0])
  start = time.perf_counter()
  loop = [gaussjax.fit(c, g, config)[0] for c, g in zip(crops, inits)]
  jax.block_until_ready(loop)
  loop_s = time.perf_counter() - start
  what = f"{count} crops {size}x{size}, {n} Gaussians, {steps} steps, densify off"
  bench.add("batch", "loop_s", loop_s, "s", f"{what}; warm")
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *inits)
  start = time.perf_counter()
  jax.block_until_ready(gaussjax.fit_batch(np.stack(crops), stacked, config)[0])
  batch_cold_s = time.perf_counter() - start
  start = time.perf_counter()
  batched, metrics = gaussjax.fit_batch(np.stack(crops), stacked, config)
  jax.block_until_ready(batched)
  batch_s = time.perf_counter() - start
  bench.add("batch", "batch_s", batch_s, "s", f"warm; first call {batch_cold_s:.1f} s")
  bench.add("batch", "batch_speedup", loop_s / batch_s, "x", "loop / batch, both warm")
  loop_psnr = [float(gaussjax.psnr(jnp.clip(gaussjax.render(g, size, size), 0, 1), c))
               for g, c in zip(loop, crops)]
  bench.add("batch", "psnr_loop_mean", float(np.mean(loop_psnr)), "dB")
  bench.add("batch", "psnr_batch_mean", float(np.mean(np.asarray(metrics["psnr"]))), "dB")


def section_codec(bench: Bench, image: np.ndarray, config: gaussjax.CodecConfig, repeats: int):
  height, width = image.shape[:2]
  start = time.perf_counter()
  data = gaussjax.encode(image, config)
  encode_s = time.perf_counter() - start
  bench.add("codec", "encode_s", encode_s, "s", repr(config))
  bench.add("codec", "bytes", len(data), "B")
  bench.add("codec", "bpp", float(gaussjax.bpp(len(data), height, width)), "bpp")
  start = time.perf_counter()
  decoded = jax.block_until_ready(gaussjax.decode(data))
  first_s = time.perf_counter() - start
  bench.add("codec", "psnr", float(gaussjax.psnr(decoded, image)), "dB")
  median, fastest = _median_ms(gaussjax.decode, data, repeats=repeats)
  bench.add("codec", "decode_ms", median, "ms", f"min {fastest:.2f}; first call {first_s:.2f} s")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--small", action="store_true", help="tiny sizes and steps (CPU check)")
  parser.add_argument("--budget-s", type=float, default=None,
                      help="total seconds for all sections (default 420; --small 210)")
  parser.add_argument("--install-s", type=float, default=None,
                      help="seconds the install took (gpu_run.sh passes it), recorded")
  parser.add_argument("--name", default=None, help="results file name")
  parser.add_argument("--kodak", default=None, help="folder of kodim01.png ... kodim24.png")
  args = parser.parse_args(argv)
  if args.kodak:
    KODAK_DIRS.insert(0, args.kodak)

  on_gpu = jax.default_backend() == "gpu"
  device = _device_name()
  name = args.name or (f"gpu_{device}" if on_gpu else f"gpu_script_{device}")
  if args.small and not args.name:
    name += "_small"
  image = _kodak(23)
  if args.small:
    image = np.ascontiguousarray(image[::8, ::8])  # 96x64
    render_sizes, render_repeats = (100, 300), 5
    fit_small, fit_large, fit_steps = 200, 600, 40
    batch = (4, 32, 30, 20)  # crops, size, Gaussians, steps
    codec = gaussjax.CodecConfig(bpp=2.0, fit_steps=40, qat_steps=10)
  else:
    render_sizes, render_repeats = (10_000, 50_000, 70_000), 30
    fit_small, fit_large, fit_steps = 10_000, 70_000, 2000
    batch = (16, 256, 1000, 200)
    codec = gaussjax.CodecConfig(bpp=0.5)
  backend = "pallas" if on_gpu else gaussjax.default_backend()
  total = args.budget_s or (210.0 if args.small else 420.0)
  meta = {
      "what": ("gaussjax on one accelerator: compiled Pallas tests, render fwd / fwd+bwd, "
               "fit_image, fit_batch vs a loop of fit, encode / decode (benchmarks/gpu.py)"),
      "small": args.small,
      "image": f"kodim23 {image.shape[1]}x{image.shape[0]}",
      "render_backend": backend,
      "gaussjax": gaussjax.__version__,
      "install_s": args.install_s,
      "load_average_start": [round(x, 2) for x in os.getloadavg()],
      "total_budget_s": total,
  }
  if not on_gpu:
    meta["note"] = "no GPU: a check of the script, not GPU figures"
  # The targets and the earlier H200 figures are for the full sizes on a GPU.
  bench = Bench(name, meta, total, TARGETS if on_gpu and not args.small else {})
  # Seconds per section: on the GPU they add up to the 420 s default total; the
  # small CPU check is bound by compilation, not by its tiny sizes.
  budget = (dict(tests=30, render=25, fit=30, batch=45, codec=45, fit_large=30) if args.small else
            dict(tests=100, render=80, fit=50, batch=60, codec=60, fit_large=70))
  bench.run("pallas_tests", budget["tests"], section_pallas_tests, args.small, budget["tests"])
  bench.run("render", budget["render"], section_render, image, render_sizes, backend,
            render_repeats)
  bench.run("fit_image_small", budget["fit"], section_fit_image, image, fit_small, fit_steps,
            budget["fit"] - 5)
  bench.run("batch", budget["batch"], section_batch, *batch)
  bench.run("codec", budget["codec"], section_codec, image, codec, 10)
  bench.run("fit_image_large", budget["fit_large"], section_fit_image, image, fit_large, fit_steps,
            budget["fit_large"] - 10)
  print(f"wrote benchmarks/results/{name}.json|md in {time.perf_counter() - bench.start:.0f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
