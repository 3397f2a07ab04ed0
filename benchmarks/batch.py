"""Batched encoding throughput: ``encode_batch`` at batch sizes K vs a loop of ``encode``.

The same 256x256 Kodak crops are encoded, in the same run, by a sequential
loop of ``gaussjax.encode`` and by ``gaussjax.encode_batch`` in batches of K
(1, 4, 16; more on an accelerator). Each variant is compiled first on the
same shapes (a warm-up batch that is not timed), then timed over all images;
the best of ``--repeats`` timings counts. Writes
``benchmarks/results/batch_<platform>.json`` and ``.md`` with the machine.

Usage: python benchmarks/batch.py [--images 16] [--fit-steps 60] [--qat-steps 12]
"""

from __future__ import annotations

import argparse
import json
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


def time_it(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--sizes", type=int, nargs="*", default=None,
                      help="batch sizes (default 1 4 16; 1 4 16 64 on an accelerator)")
  parser.add_argument("--fit-steps", type=int, default=60)
  parser.add_argument("--qat-steps", type=int, default=12)
  parser.add_argument("--quality", type=float, default=50.0)
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--out", default=None, help="results name (default batch_<platform>)")
  args = parser.parse_args(argv)

  import jax
  import gaussjax

  platform = jax.default_backend()
  sizes = args.sizes or ([1, 4, 16] if platform == "cpu" else [1, 4, 16, 64])
  count = max(args.images, max(sizes))
  images = kodak_crops(count)
  config = gaussjax.CodecConfig(quality=args.quality, fit_steps=args.fit_steps,
                                qat_steps=args.qat_steps)
  print(f"{count} Kodak crops 256x256, quality {args.quality}, fit {args.fit_steps} + "
        f"QAT {args.qat_steps} steps, {jax.device_count()} {platform} device(s)", flush=True)

  rows = []
  gaussjax.encode(images[0], config)  # compile
  loop_s = time_it(lambda: [gaussjax.encode(im, config) for im in images], args.repeats)
  rows.append({"variant": "loop of encode", "batch": 1, "seconds": loop_s,
               "images_per_s": count / loop_s, "speedup": 1.0})
  print(f"loop of encode: {count / loop_s:.3f} images/s", flush=True)
  for k in sizes:
    if count % k:
      continue
    gaussjax.encode_batch(images[:k], config)  # compile for this batch shape

    def run(k=k):
      for i in range(0, count, k):
        gaussjax.encode_batch(images[i:i + k], config)

    s = time_it(run, args.repeats)
    rows.append({"variant": "encode_batch", "batch": k, "seconds": s, "images_per_s": count / s,
                 "speedup": loop_s / s})
    print(f"encode_batch K={k}: {count / s:.3f} images/s ({loop_s / s:.2f}x the loop)", flush=True)

  # Quality check: a batched file decodes like the looped one.
  a = gaussjax.encode_batch(images[:2], config)
  b = [gaussjax.encode(im, config) for im in images[:2]]
  psnr = lambda x, y: float(-10 * np.log10(np.mean((np.asarray(x) - y) ** 2)))
  quality = [{"batch_psnr": psnr(gaussjax.decode(x), im), "loop_psnr": psnr(gaussjax.decode(y), im),
              "batch_bytes": len(x), "loop_bytes": len(y)} for x, y, im in zip(a, b, images)]

  result = {
      "benchmark": "batch", "machine": machine_info(), "images": count, "size": [256, 256],
      "config": {"quality": args.quality, "fit_steps": args.fit_steps,
                 "qat_steps": args.qat_steps, "backend": gaussjax.default_backend()},
      "repeats": args.repeats, "rows": rows, "quality_check": quality,
      "note": "wall time after compilation (a warm-up per variant); best of `repeats`",
  }
  name = args.out or f"batch_{platform}"
  out = ROOT / "benchmarks" / "results"
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  machine = result["machine"]
  lines = [
      f"# Batched encoding throughput ({platform})", "",
      f"Machine: {machine['cpu']}, {machine['cores']} cores, devices {machine['devices']}, "
      f"jax {machine['jax']}.", "",
      f"{count} Kodak centre crops 256x256, quality {args.quality}, fit {args.fit_steps} + QAT "
      f"{args.qat_steps} steps, backend {result['config']['backend']}; wall time after "
      "compilation, best of "
      f"{args.repeats}.", "",
      "| variant | batch | seconds | images/s | vs loop |", "|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['variant']} | {r['batch']} | {r['seconds']:.2f} | {r['images_per_s']:.3f} "
                 f"| {r['speedup']:.2f}x |")
  lines += ["", "Decoded PSNR (dB) / bytes of the first two crops, batch vs loop: " + ", ".join(
      f"{q['batch_psnr']:.2f}/{q['batch_bytes']} vs {q['loop_psnr']:.2f}/{q['loop_bytes']}"
      for q in quality), ""]
  (out / f"{name}.md").write_text("\n".join(lines))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
