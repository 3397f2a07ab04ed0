"""Quality of the codec before and after the one training loop (issue 13).

The loop moved density control onto the device (other random draws, an
iterative colour solve), so files differ from those of the host loop. This
checks that quality does not drop: ``gaussjax.encode`` of a few Kodak crops
at a few rates, with this checkout and with a baseline checkout (another
commit's source tree, e.g. ``git archive <commit> | tar -x -C DIR``), each in
its own process, same images, same config; PSNR is compared at equal bytes
(the new curve interpolated in log-rate at the baseline's sizes).

Usage:

  python benchmarks/loop_quality.py --baseline /tmp/loop_base --images 3,13,23 \
      --crop 192x128 --bpp 0.25,0.5,1.0 --fit-steps 800 --qat-steps 200

Writes ``benchmarks/results/loop_quality.{json,md}``.
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


def crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """The centre ``height x width`` of an image."""
  h, w = image.shape[:2]
  top, left = (h - height) // 2, (w - width) // 2
  return np.ascontiguousarray(image[top:top + height, left:left + width])


def worker(args) -> None:
  """Encodes and decodes every (image, bpp) with the gaussjax on ``sys.path``; prints JSON rows."""
  import gaussjax
  width, height = (int(v) for v in args.crop.split("x"))
  rows = []
  for index in (int(i) for i in args.images.split(",")):
    image = crop(gaussjax.load_image(os.path.join(KODAK, f"kodim{index:02d}.png")), width, height)
    for bpp in (float(b) for b in args.bpp.split(",")):
      config = gaussjax.CodecConfig(bpp=bpp, fit_steps=args.fit_steps, qat_steps=args.qat_steps)
      start = time.perf_counter()
      data = gaussjax.encode(image, config)
      seconds = time.perf_counter() - start
      decoded = np.asarray(gaussjax.decode(data))
      psnr = float(gaussjax.psnr(decoded, image))
      rows.append({"image": index, "bpp_target": bpp, "bytes": len(data), "psnr": psnr,
                   "encode_s": seconds})
      print(f"# kodim{index:02d} {bpp} bpp: {len(data)} B, {psnr:.2f} dB, {seconds:.1f} s",
            file=sys.stderr, flush=True)
  print(json.dumps(rows))


def run_worker(path: str, args) -> list[dict]:
  env = dict(os.environ, PYTHONPATH=path)
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--images", args.images,
             "--crop", args.crop, "--bpp", args.bpp, "--fit-steps", str(args.fit_steps),
             "--qat-steps", str(args.qat_steps)]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd="/")
  sys.stderr.write(out.stderr[-2000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def psnr_at(bytes_: np.ndarray, psnr: np.ndarray, at: float) -> float:
  """PSNR of a curve at ``at`` bytes: linear in log-rate, extended by its end segments."""
  order = np.argsort(bytes_)
  x, y = np.log(bytes_[order]), psnr[order]
  k = int(np.clip(np.searchsorted(x, np.log(at)) - 1, 0, len(x) - 2))
  return float(y[k] + (y[k + 1] - y[k]) * (np.log(at) - x[k]) / (x[k + 1] - x[k]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--baseline", help="source tree of the baseline (its gaussjax/ inside)")
  parser.add_argument("--images", default="3,13,23")
  parser.add_argument("--crop", default="192x128", help="WIDTHxHEIGHT of the centre crop")
  parser.add_argument("--bpp", default="0.25,0.5,1.0")
  parser.add_argument("--fit-steps", type=int, default=800)
  parser.add_argument("--qat-steps", type=int, default=200)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  if not args.baseline or not os.path.isdir(os.path.join(args.baseline, "gaussjax")):
    parser.error("--baseline must be a source tree with a gaussjax/ package")
  import _machine
  load_before = os.getloadavg()
  new = run_worker(ROOT, args)
  old = run_worker(os.path.abspath(args.baseline), args)
  rows = []
  for image in sorted({r["image"] for r in old}):
    o = [r for r in old if r["image"] == image]
    n = [r for r in new if r["image"] == image]
    nb = np.asarray([r["bytes"] for r in n], float)
    npsnr = np.asarray([r["psnr"] for r in n], float)
    for ro, rn in zip(o, n):
      at_equal = psnr_at(nb, npsnr, ro["bytes"])
      rows.append({"image": f"kodim{image:02d}", "bpp": ro["bpp_target"],
                   "bytes_old": ro["bytes"], "psnr_old": ro["psnr"], "bytes_new": rn["bytes"],
                   "psnr_new": rn["psnr"], "new_at_old_bytes": at_equal,
                   "delta_db": at_equal - ro["psnr"], "encode_s_old": ro["encode_s"],
                   "encode_s_new": rn["encode_s"]})
  deltas = [r["delta_db"] for r in rows]
  meta = {"images": args.images, "crop": args.crop, "bpp": args.bpp, "fit_steps": args.fit_steps,
          "qat_steps": args.qat_steps, "baseline": os.path.abspath(args.baseline),
          "mean_delta_db": float(np.mean(deltas)), "min_delta_db": float(np.min(deltas)),
          "load_before": [round(v, 2) for v in load_before],
          "load_after": [round(v, 2) for v in os.getloadavg()]}
  print(_machine.format_table(rows))
  print(f"mean PSNR change at equal bytes: {meta['mean_delta_db']:+.3f} dB "
        f"(min {meta['min_delta_db']:+.3f})")
  _machine.write_results("loop_quality", rows, meta)


if __name__ == "__main__":
  main()
