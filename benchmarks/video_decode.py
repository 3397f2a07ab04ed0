"""Decode speed of ``.gjv`` files on this CPU: frames per second at CIF.

Codes the ``bus`` clip (CIF 352x288, 17 frames; see benchmarks/video.py) with
I+P at a few rates (short fits: decode speed depends on the number of
Gaussians, not on how well they were fitted), then decodes the whole clip
``--repeats`` times with ``gaussjax.decode_video`` (parse, entropy decoding,
state updates, rendering) and reports the best and median frames per second,
with the load average before and after. Writes results/video_decode.{json,md}.

  python benchmarks/video_decode.py --bpp 0.4,1.6 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from gaussjax.codec._video import VideoConfig, decode_video, encode_video, video_info  # noqa: E402
from gaussjax.core._video_io import read_video  # noqa: E402

# The data beside the repository (../shared/data/video), or GJX_VIDEO.
DATA = os.environ.get("GJX_VIDEO", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "data", "video"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--bpp", default="0.4,1.6")
  parser.add_argument("--fit-steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--name", default="video_decode")
  args = parser.parse_args(argv)
  frames = read_video(os.path.join(DATA, "bus_352x288_f17.yuv"), size=(352, 288))
  rows = []
  load_before = os.getloadavg()
  for bpp in (float(x) for x in args.bpp.split(",")):
    cfg = VideoConfig(bpp=bpp, gop=frames.shape[0], fit_steps=args.fit_steps,
                      qat_steps=args.fit_steps // 5)
    data = encode_video(frames, cfg)
    meta = video_info(data)
    decode_video(data)  # compiles the renderer's plans
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      decode_video(data)
      times.append(time.perf_counter() - t)
    t_len = frames.shape[0]
    rows.append(dict(clip="bus 352x288", bpp=meta["bpp_per_frame"],
                     frame_types="".join(f["type"] for f in meta["frames"]),
                     fps_best=t_len / min(times), fps_median=t_len / float(np.median(times)),
                     ms_per_frame_best=1e3 * min(times) / t_len))
    print(rows[-1], flush=True)
  meta = {"what": "gaussjax.decode_video of the whole clip (warm), best and median of "
                  f"{args.repeats}; encoded with fit_steps={args.fit_steps} I+P, one GOP",
          "load_before": load_before, "load_after": os.getloadavg()}
  _machine.write_results(args.name, rows, meta)
  print(_machine.format_table(rows))


if __name__ == "__main__":
  main()
