"""What each piece of the P-frame coder buys: one at a time, on both clips.

Variants of ``VideoConfig`` (everything else at its defaults, I-frames as in
``benchmarks/video.py``):

* ``global only, no tuning``: global motion only (``p_motion_block=0``) and
  rounding of the fitted Gaussians without tuning (``p_tune_share=0``), so
  every P-frame step is a fit step: the P-frame coder before the field and
  the tuning existed;
* ``+ tuning``: quantisation-aware tuning (``_video._PFrame``);
* ``+ motion field``: the block motion field (``block_motion``);
* ``default``: both.

For each clip (the first ``--frames`` frames, one GOP) and rate, the mean
PSNR and bpp per frame; BD-rate of each variant against the first. Writes
``results/video_ablation.{json,md}``.

Usage (about 15 minutes on a quiet 2-core CPU):

  python benchmarks/video_ablation.py --frames 6 --bpp 0.2,0.4,0.8,1.6
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import video  # noqa: E402
from rd import bd_rate  # noqa: E402

from gaussjax.core._video_io import read_video  # noqa: E402

VARIANTS = {
    "global only, no tuning": dict(p_motion_block=0, p_tune_share=0.0),
    "+ tuning": dict(p_motion_block=0),
    "+ motion field": dict(p_tune_share=0.0),
    "default": {},
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--clips", default=",".join(video.CLIPS))
  parser.add_argument("--bpp", default="0.2,0.4,0.8,1.6")
  parser.add_argument("--frames", type=int, default=6)
  parser.add_argument("--fit-steps", type=int, default=100)
  parser.add_argument("--qat-steps", type=int, default=20)
  parser.add_argument("--name", default="video_ablation")
  args = parser.parse_args(argv)
  args.intra_every = {}
  clips = args.clips.split(",")
  targets = [float(x) for x in args.bpp.split(",")]
  load_before = os.getloadavg()
  t0 = time.perf_counter()
  rows = []
  for clip in clips:
    name, size, fps = video.CLIPS[clip]
    frames = read_video(os.path.join(video.DATA, name), size=size, max_frames=args.frames)
    for variant, overrides in VARIANTS.items():
      for bpp in targets:
        r = video.run_gaussjax(clip, frames, fps, "I+P", bpp, args, refresh_db=None,
                               **overrides)
        rows.append(dict(clip=clip, variant=variant, target=bpp, bpp=r["bpp"], psnr=r["psnr"],
                         frame_types=r["frame_types"], enc_p_s=r["enc_p_s"]))
        print(f"{clip} {variant} {bpp}: {r['bpp']:.3f} bpp {r['psnr']:.2f} dB", flush=True)
  summary = []
  for clip in clips:
    base = [(r["bpp"], r["psnr"]) for r in rows
            if r["clip"] == clip and r["variant"] == list(VARIANTS)[0]]
    for variant in VARIANTS:
      pts = [(r["bpp"], r["psnr"]) for r in rows if r["clip"] == clip and r["variant"] == variant]
      summary.append(dict(clip=clip, variant=variant, bd_rate_pct=bd_rate(
          [b for b, _ in base], [p for _, p in base], [b for b, _ in pts], [p for _, p in pts])))
  meta = dict(what=__doc__.split("\n\n")[1].replace("\n", " "),
              frames=args.frames, fit_steps=args.fit_steps, qat_steps=args.qat_steps,
              refresh_db=None, summary=summary, load_before=load_before,
              load_after=os.getloadavg(), total_s=time.perf_counter() - t0)
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## BD-rate against `global only, no tuning` (%, PSNR; negative = smaller)\n\n")
    f.write(_machine.format_table(summary))
  print(_machine.format_table(summary))


if __name__ == "__main__":
  main()
