"""CPU decode time of a full-size Kodak image: gaussjax vs Pillow's decoders.

The Gaussians come from init_slic (no fit: decode time depends on N and the
Gaussians' sizes, not on how well they were fitted), coded with the default
quantisers; N is chosen so the file is near the given rate. Pillow files are
encoded at the same rates. Best of 20 warm decodes, in milliseconds; the
first gaussjax call (compiling the renderer) is reported separately.
``gaussjax_ms`` decodes the Gaussians and renders them to a float image;
``gaussjax_decode_ms`` is the public ``gaussjax.decode`` (the same, clipped
to [0, 1]). The 1-minute load average before the run is recorded: other
processes on the machine slow every codec, gaussjax's two threads most.

  python benchmarks/decode_time.py --image 23 --gaussians 3000,6000
"""

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import classic_encode, load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec._codec import render_safe  # noqa: E402
from gaussjax.codec._formats import decode_gaussians  # noqa: E402


def best_of(fn, k=20):
  """Best wall time of ``k`` calls, in milliseconds."""
  t_best = float("inf")
  for _ in range(k):
    t = time.perf_counter()
    fn()
    t_best = min(t_best, time.perf_counter() - t)
  return 1e3 * t_best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--image", type=int, default=23)
  parser.add_argument("--gaussians", default="3000,6000")
  args = parser.parse_args()
  load_before = os.getloadavg()[0]
  ref = load(args.image, 1)
  h, w = ref.shape[:2]
  rows = []
  for n in (int(x) for x in args.gaussians.split(",")):
    g = gaussjax.init_slic(ref, n, solve_colors=False)
    data = gaussjax.encode_gaussians(g, h, w)
    bpp = 8 * len(data) / (h * w)

    def dec():
      gg, (h0, w0) = decode_gaussians(data)
      return np.asarray(render_safe(gg, h0, w0))

    t = time.perf_counter()
    dec()
    first = 1e3 * (time.perf_counter() - t)
    np.asarray(gaussjax.decode(data))
    row = dict(gaussians=n, bpp=bpp, gaussjax_first_ms=first, gaussjax_ms=best_of(dec),
               gaussjax_decode_ms=best_of(lambda: np.asarray(gaussjax.decode(data))))
    im = Image.fromarray(np.rint(ref * 255).astype(np.uint8))
    for codec, param in (("jpeg2000", bpp), ("jpeg", 50), ("webp", 50), ("avif", 50)):
      try:
        blob = classic_encode(codec, param, im)
      except Exception as e:  # noqa: BLE001 - codec missing in this Pillow
        print(codec, "unavailable:", e)
        continue
      row[f"{codec}_ms"] = best_of(lambda: np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
    rows.append(row)
    print(row, flush=True)
  _machine.write_results("decode_time", rows, {
      "image": f"kodim{args.image:02d} {w}x{h} (full size)",
      "load_average_1min_before": round(load_before, 2),
      "note": "gaussjax = parse + entropy-decode + render (xla backend) to float; "
              "Pillow = decode to uint8 RGB; JPEG 2000 at the same bpp as the gaussjax file"})


if __name__ == "__main__":
  main()
