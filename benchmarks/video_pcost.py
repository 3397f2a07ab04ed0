"""How the I/P byte split (``VideoConfig.p_cost``) fares at short and at default fits.

``p_cost`` plans a P-frame's bytes as a share of an I-frame's. Codes the
first ``--frames`` frames of CiscoVT2people as one GOP (no refresh I-frames)
for each ``p_cost``, fit length (the short fits of ``benchmarks/video.py``
and the codec's defaults) and rate, and reports bpp, mean PSNR and the
frames' PSNR. Writes ``results/video_pcost.{json,md}``.

  python benchmarks/video_pcost.py --frames 5 --bpp 0.4,1.0 --p-cost 0.4,0.6
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import video  # noqa: E402

from gaussjax.codec._video import VideoConfig, encode_video  # noqa: E402
from gaussjax.core._video_io import read_video  # noqa: E402

FITS = {"short (100 + 20, P 25)": (100, 20), "default (1500 + 300, P 375)": (1500, 300)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, default=5)
  parser.add_argument("--bpp", default="0.4,1.0")
  parser.add_argument("--p-cost", default="0.4,0.6")
  parser.add_argument("--name", default="video_pcost")
  args = parser.parse_args(argv)
  name, size, _ = video.CLIPS["CiscoVT2people"]
  frames = read_video(os.path.join(video.DATA, name), size=size, max_frames=args.frames)
  t_len, h, w, _ = frames.shape
  load_before, t0 = os.getloadavg(), time.perf_counter()
  rows = []
  for fit, (fit_steps, qat_steps) in FITS.items():
    for bpp in [float(x) for x in args.bpp.split(",")]:
      for p_cost in [float(x) for x in args.p_cost.split(",")]:
        config = VideoConfig(bpp=bpp, gop=t_len, fit_steps=fit_steps, qat_steps=qat_steps,
                             p_cost=p_cost, refresh_db=None)
        infos = []
        data = encode_video(frames, config, callback=infos.append)
        rows.append(dict(fit=fit, target=bpp, p_cost=p_cost, bpp=8 * len(data) / (h * w * t_len),
                         psnr=float(np.mean([i["psnr"] for i in infos])),
                         frame_psnr=" ".join(f"{i['psnr']:.2f}" for i in infos),
                         frame_bytes=" ".join(str(i["bytes"]) for i in infos)))
        print(rows[-1], flush=True)
  meta = dict(clip=f"CiscoVT2people, first {t_len} frames, one GOP, refresh_db=None",
              load_before=load_before, load_after=os.getloadavg(),
              total_s=time.perf_counter() - t0)
  _machine.write_results(args.name, rows, meta)
  print(_machine.format_table(rows))


if __name__ == "__main__":
  main()
