"""Batched encoding throughput: ``encode_batch`` at batch sizes K vs a loop of ``encode``.

The same 256x256 Kodak crops are encoded, in the same run, by a sequential
loop of ``gaussjax.encode`` and by ``gaussjax.encode_batch`` in batches of K
(1, 4, 16; more on an accelerator), and at the largest K also with the
other ``vectorize`` setting (``lax.map`` where ``vmap`` is the default).
Each variant makes a first, cold pass over all images (compiling what they
need; reported too), then a warm pass that is timed; the best of
``--repeats`` warm passes counts. Writes
``benchmarks/results/batch_<platform>.json`` and ``.md`` with the machine.

Usage: python benchmarks/batch.py [--images 16] [--fit-steps 40] [--qat-steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
for candidate in (ROOT / "shared" / "data" / "kodak", Path("/work/shared/data/kodak")):
  if candidate.is_dir():
    KODAK = candidate
    break


def kodak_crops(count: int, size: int = 256) -> list[np.ndarray]:
  """``count`` centre crops ``size``x``size`` of the Kodak images, cycling."""
  from PIL import Image
  files = sorted(KODAK.glob("kodim*.png"))
  if not files:
    raise SystemExit(f"no Kodak images in {KODAK}")
  crops = []
  for i in range(count):
    with Image.open(files[i % len(files)]) as im:
      a = np.asarray(im.convert("RGB"), np.float32) / 255.0
    h, w = a.shape[:2]
    # Different images, and different offsets when the set repeats.
    dy = (h - size) // 2 + (i // len(files)) * 16 % max(h - size, 1)
    dx = (w - size) // 2
    crops.append(a[dy:dy + size, dx:dx + size])
  return crops


def time_it(fn):
  """``(wall seconds, process CPU seconds of all threads, fn())``."""
  start, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return time.perf_counter() - start, time.process_time() - cpu, out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--sizes", type=int, nargs="*", default=None,
                      help="batch sizes (default 1 4 16; 1 4 16 64 on an accelerator)")
  parser.add_argument("--fit-steps", type=int, default=40)
  parser.add_argument("--qat-steps", type=int, default=8)
  parser.add_argument("--quality", type=float, default=50.0)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out", default=None, help="results name (default batch_<platform>)")
  args = parser.parse_args(argv)

  import jax

  import gaussjax

  load_start = [round(x, 2) for x in os.getloadavg()]  # a shared machine: report its load
  platform = jax.default_backend()
  sizes = args.sizes or ([1, 4, 16] if platform == "cpu" else [1, 4, 16, 64])
  count = max(args.images, max(sizes))
  images = kodak_crops(count)
  config = gaussjax.CodecConfig(quality=args.quality, fit_steps=args.fit_steps,
                                qat_steps=args.qat_steps)
  print(f"{count} Kodak crops 256x256, quality {args.quality}, fit {args.fit_steps} + "
        f"QAT {args.qat_steps} steps, {jax.device_count()} {platform} device(s)", flush=True)

  def loop():
    return [gaussjax.encode(im, config) for im in images]

  def batched(k, vectorize=None):
    out = []
    for i in range(0, count, k):
      out += gaussjax.encode_batch(images[i:i + k], config, vectorize=vectorize)
    return out

  variants = [("loop of encode", 1, loop)] + [
      ("encode_batch", k, lambda k=k: batched(k)) for k in sizes if count % k == 0]
  # The other way of running a device's images (a loop where vmap is the
  # default: accelerators, the CPU with the native kernel), at the largest batch.
  other = not gaussjax.batch._batch.default_vectorize()
  variants.append((f"encode_batch, vectorize={other}", variants[-1][1],
                   lambda k=variants[-1][1]: batched(k, other)))
  rows, outputs = [], {}
  for name, k, fn in variants:
    # The first pass compiles (every plan the images need); the timed passes
    # after it measure the steady state of a long job.
    cold, _, outputs[(name, k)] = time_it(fn)
    warm, warm_cpu, _ = min(time_it(fn) for _ in range(args.repeats))
    rows.append({"variant": name, "batch": k, "seconds": warm, "images_per_s": count / warm,
                 "cpu_seconds": warm_cpu, "cold_seconds": cold,
                 "cold_images_per_s": count / cold})
    print(f"{name} K={k}: {count / warm:.3f} images/s warm, {count / cold:.3f} cold", flush=True)
  for r in rows:
    r["speedup"] = rows[0]["seconds"] / r["seconds"]
    r["cold_speedup"] = rows[0]["cold_seconds"] / r["cold_seconds"]

  # Quality check: the batched files decode like the looped ones.
  psnr = lambda x, y: float(-10 * np.log10(np.mean((np.asarray(x) - y) ** 2)))
  largest = ("encode_batch", max(k for _, k, _ in variants))  # default vectorize
  quality = [{"batch_psnr": psnr(gaussjax.decode(x), im), "loop_psnr": psnr(gaussjax.decode(y), im),
              "batch_bytes": len(x), "loop_bytes": len(y)}
             for x, y, im in zip(outputs[largest][:4], outputs[("loop of encode", 1)][:4], images)]

  result = {
      "benchmark": "batch", "machine": machine_info(), "images": count, "size": [256, 256],
      "config": {"quality": args.quality, "fit_steps": args.fit_steps,
                 "qat_steps": args.qat_steps, "backend": gaussjax.default_backend()},
      "repeats": args.repeats, "rows": rows, "quality_check": quality,
      "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
      "note": ("seconds: a pass after a first (cold, compiling) pass over the same images, "
               "best of `repeats`; cold_seconds: the first pass"),
  }
  name = args.out or f"batch_{platform}"
  out = ROOT / "benchmarks" / "results"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  machine = result["machine"]
  lines = [
      f"# Batched encoding throughput ({platform})", "",
      f"Machine: {machine['cpu']}, {machine['cores']} cores, devices {machine['devices']}, "
      f"jax {machine['jax']}, {machine['date']}. Load average (1, 5, 15 min) at the start "
      f"{result['load_average']['start']}, at the end {result['load_average']['end']}.", "",
      f"{count} Kodak centre crops 256x256, quality {args.quality}, fit {args.fit_steps} + QAT "
      f"{args.qat_steps} steps, backend {result['config']['backend']}. Warm: a second pass "
      "over the same images (compiled), best of "
      f"{args.repeats}; warm CPU s: process CPU time of that pass (all threads; above warm s "
      "when it ran on several cores); cold: the first pass, compilation included.", "",
      "| variant | batch | warm s | images/s | vs loop | warm CPU s | cold s | cold images/s "
      "| vs loop |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['batch']} | {r['seconds']:.2f} | {r['images_per_s']:.3f} "
                 f"| {r['speedup']:.2f}x | {r['cpu_seconds']:.2f} | {r['cold_seconds']:.2f} | {r['cold_images_per_s']:.3f} "
                 f"| {r['cold_speedup']:.2f}x |")
  lines += ["", f"Decoded PSNR (dB) / bytes of the first crops, batch K={largest[1]} vs loop: " + ", ".join(
      f"{q['batch_psnr']:.2f}/{q['batch_bytes']} vs {q['loop_psnr']:.2f}/{q['loop_bytes']}"
      for q in quality), ""]
  (out / f"{name}.md").write_text("\n".join(lines))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
