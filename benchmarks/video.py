"""The video codec on the two test clips: I+P against intra-only, H.264 and JPEG 2000.

For each clip of ``shared/data/video`` (raw YUV 4:2:0, BT.601 limited range to
RGB, see its SOURCE.md) and each target rate, codes the clip

* with gaussjax I+P (one I-frame per clip, ``gop`` = the clip length, the rest
  P-frames),
* with gaussjax intra-only (``gop=1``: every frame an I-frame, the same
  I-frame settings),
* with a real video codec through PyAV's FFmpeg (libx264, CRF sweep, same
  GOP), bytes = the sum of its packets (no container),
* with JPEG 2000 per frame (Pillow/OpenJPEG, rates mode, as benchmarks/rd.py).

Reports PSNR (RGB) and bytes per frame, the mean bpp per frame and PSNR per
clip, BD-rate (benchmarks/rd.py's ``bd_rate``) of I+P against intra-only and
the others, encode seconds per I- and P-frame, decode frames per second on
this CPU, an RD plot (docs/images/video_rd.png), and results/video.{json,md}.
Results are rewritten after every configuration, so a partial run still
leaves its numbers.

Usage (sized for a shared 2-core CPU, about 20 minutes):

  python benchmarks/video.py --fit-steps 150 --bpp 0.25,0.5,1.0,2.0
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from fractions import Fraction

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import bd_rate, classic_encode  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec._video import VideoConfig, decode_video, encode_video, video_info  # noqa: E402
from gaussjax.core._video_io import read_video  # noqa: E402

# The data beside the repository (../shared/data/video), or GJX_VIDEO.
DATA = os.environ.get("GJX_VIDEO", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "data", "video"))
CLIPS = {
    "bus": ("bus_352x288_f17.yuv", (352, 288), 30.0),
    "CiscoVT2people": ("CiscoVT2people_320x192_12fps.yuv", (320, 192), 12.0),
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT = os.path.join(ROOT, "docs", "images", "video_rd.png")
X264_CRF = [20, 26, 32, 38, 44, 50]
J2K_BPP = [0.15, 0.25, 0.4, 0.6, 1.0, 1.6, 2.5]


def psnrs(out: np.ndarray, ref: np.ndarray) -> list[float]:
  return [float(gaussjax.psnr(np.clip(o, 0, 1), r)) for o, r in zip(out, ref)]


def run_gaussjax(clip, frames, fps, mode, bpp, args, **overrides) -> dict:
  """One encode and decode; ``overrides`` are further ``VideoConfig`` fields."""
  if mode == "intra":
    frames = frames[::args.intra_every[clip]]
  t_len = frames.shape[0]
  cfg = VideoConfig(bpp=bpp, gop=1 if mode == "intra" else t_len, fit_steps=args.fit_steps,
                    qat_steps=args.qat_steps, **overrides)
  infos, times = [], []
  last = [time.perf_counter()]

  def callback(info):
    now = time.perf_counter()
    infos.append(info)
    times.append(now - last[0])
    last[0] = now
    print(f"    frame {info['frame']:2d} {info['type']} {info['bytes']:6d} B "
          f"{info['psnr']:.2f} dB {times[-1]:.1f} s", flush=True)

  t0 = time.perf_counter()
  data = encode_video(frames, cfg, fps=fps, callback=callback)
  enc_s = time.perf_counter() - t0
  out = decode_video(data)  # first call compiles the renderer's plans
  dec_s = float("inf")
  for _ in range(3):  # best of 3 (a shared, loaded CPU)
    t1 = time.perf_counter()
    out = decode_video(data)
    dec_s = min(dec_s, time.perf_counter() - t1)
  frame_psnr = psnrs(out, frames)
  assert np.allclose(frame_psnr, [i["psnr"] for i in infos], atol=0.05), "closed loop broke"
  h, w = frames.shape[1:3]
  segs = video_info(data)["frames"]
  i_t = [t for t, i in zip(times, infos) if i["type"] == "I"]
  p_t = [t for t, i in zip(times, infos) if i["type"] == "P"]
  return dict(
      clip=clip, codec=f"gaussjax {mode}", param=bpp, bytes=len(data), frames=t_len,
      bpp=8 * len(data) / (h * w * t_len), psnr=float(np.mean(frame_psnr)),
      frame_psnr=[round(p, 3) for p in frame_psnr], frame_bytes=[s["bytes"] for s in segs],
      frame_types="".join(s["type"] for s in segs),
      enc_s=enc_s, enc_i_s=float(np.mean(i_t)) if i_t else None,
      enc_p_s=float(np.mean(p_t)) if p_t else None,
      dec_fps=t_len / dec_s, gaussians=[i["gaussians"] for i in infos])


def run_x264(clip, frames, fps, crf) -> dict:
  import av  # optional dependency ([video] extra)
  t_len, h, w, _ = frames.shape
  buf = io.BytesIO()
  sizes = []
  with av.open(buf, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": str(crf), "preset": "medium", "tune": "psnr",
                      "g": str(t_len), "bf": "0", "threads": "1"}
    for f in frames:
      rgb = np.clip(np.rint(f * 255), 0, 255).astype(np.uint8)
      for p in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        sizes.append(p.size)
        container.mux(p)
    for p in stream.encode():
      sizes.append(p.size)
      container.mux(p)
  buf.seek(0)
  with av.open(buf) as c:
    out = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]) / 255.0
  frame_psnr = psnrs(out.astype(np.float32), frames)
  return dict(clip=clip, codec="x264", param=crf, bytes=int(sum(sizes)),
              bpp=8 * sum(sizes) / (h * w * t_len), psnr=float(np.mean(frame_psnr)),
              frame_psnr=[round(p, 3) for p in frame_psnr], frame_bytes=sizes)


def run_j2k(clip, frames, bpp) -> dict:
  t_len, h, w, _ = frames.shape
  sizes, frame_psnr = [], []
  for f in frames:
    im = Image.fromarray(np.clip(np.rint(f * 255), 0, 255).astype(np.uint8))
    data = classic_encode("jpeg2000", bpp, im)
    out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255.0
    sizes.append(len(data))
    frame_psnr.append(float(gaussjax.psnr(out, f)))
  return dict(clip=clip, codec="jpeg2000", param=bpp, bytes=int(sum(sizes)),
              bpp=8 * sum(sizes) / (h * w * t_len), psnr=float(np.mean(frame_psnr)),
              frame_psnr=[round(p, 3) for p in frame_psnr], frame_bytes=sizes)


def curve(rows, clip, codec):
  pts = sorted((r["bpp"], r["psnr"]) for r in rows if r["clip"] == clip and r["codec"] == codec)
  out = []
  for b, p in pts:
    if not out or p > out[-1][1]:
      out.append((b, p))
  return [b for b, _ in out], [p for _, p in out]


def summarise(rows, clips):
  summary = []
  for clip in clips:
    r_ip, d_ip = curve(rows, clip, "gaussjax I+P")
    for ref in ("gaussjax intra", "x264", "jpeg2000"):
      r_ref, d_ref = curve(rows, clip, ref)
      summary.append(dict(clip=clip, reference=ref, bd_rate_of_ip_pct=bd_rate(r_ref, d_ref,
                                                                               r_ip, d_ip)))
  return summary


def timings(rows, clips):
  out = []
  for clip in clips:
    for codec in ("gaussjax I+P", "gaussjax intra"):
      rs = [r for r in rows if r["clip"] == clip and r["codec"] == codec]
      if not rs:
        continue
      i_s = [r["enc_i_s"] for r in rs if r["enc_i_s"] is not None]
      p_s = [r["enc_p_s"] for r in rs if r["enc_p_s"] is not None]
      out.append(dict(clip=clip, codec=codec,
                      enc_i_s_per_frame=float(np.mean(i_s)) if i_s else float("nan"),
                      enc_p_s_per_frame=float(np.mean(p_s)) if p_s else float("nan"),
                      dec_fps=float(np.mean([r["dec_fps"] for r in rs]))))
  return out


def plot(rows, clips, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(clips), figsize=(5.5 * len(clips), 4.2))
  axes = np.atleast_1d(axes)
  styles = {"gaussjax I+P": "o-", "gaussjax intra": "s--", "x264": "^-", "jpeg2000": "v:"}
  for ax, clip in zip(axes, clips):
    for codec, style in styles.items():
      pts = sorted((r["bpp"], r["psnr"]) for r in rows if r["clip"] == clip and r["codec"] == codec)
      if pts:
        ax.plot(*zip(*pts), style, label=codec)
    ax.set_xscale("log")
    ax.set_xlabel("bpp per frame (mean)")
    ax.set_ylabel("PSNR RGB (dB, mean over frames)")
    ax.set_title(clip)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(rows, clips, args, t0, load_before):
  summary = summarise(rows, clips)
  timing = timings(rows, clips)
  table = [{k: r[k] for k in ("clip", "codec", "param", "bytes", "bpp", "psnr")} for r in rows]
  meta = {
      "clips": {c: f"{CLIPS[c][1][0]}x{CLIPS[c][1][1]}, {CLIPS[c][2]} fps, raw YUV 4:2:0 "
                   "to RGB with BT.601 limited range" for c in clips},
      "gaussjax": (f"I-frames: gaussjax.encode with fit_steps={args.fit_steps}, "
                   f"qat_steps={args.qat_steps} (fewer than the image defaults 1500/300, for a "
                   f"2-core CPU); P-frames: (fit, tuning) steps "
                   f"{VideoConfig(fit_steps=args.fit_steps).p_step_split}, a quarter of "
                   "fit_steps in all; block motion field "
                   f"{VideoConfig().p_motion_block} px; I+P: gop = the clip length, plus an I-frame after a "
                   f"P-frame {VideoConfig().refresh_db} dB below its I-frame (refresh_db) or at a "
                   "scene cut; intra: gop=1; "
                   f"targets {args.bpp} bpp per frame; intra-only codes every k-th frame "
                   f"{args.intra_every} (CPU time: see the I-frame encode seconds)"),
      "x264": f"PyAV libx264 preset medium, tune psnr, CRF {X264_CRF}, one GOP, no B-frames, "
              "bytes = packets",
      "jpeg2000": f"Pillow/OpenJPEG per frame, rates mode, bpp {J2K_BPP}",
      "bd_rate": summary, "timing": timing,
      "load_before": load_before, "load_after": os.getloadavg(),
      "total_s": time.perf_counter() - t0,
  }
  _machine.write_results(args.name, table, meta)
  path = os.path.join(_machine.RESULTS_DIR, f"{args.name}.json")
  with open(path) as f:
    doc = json.load(f)
  doc["rows"] = rows  # with per-frame PSNR and bytes
  with open(path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## BD-rate of gaussjax I+P against each (%, PSNR; negative = I+P smaller)\n\n")
    f.write(_machine.format_table(summary))
    f.write("\n## Encode seconds per frame and decode frames per second (CPU)\n\n")
    f.write(_machine.format_table(timing))
    f.write("\n## Per frame (gaussjax): PSNR (dB) and bytes\n\n")
    for r in rows:
      if r["codec"].startswith("gaussjax"):
        f.write(f"- {r['clip']} {r['codec']} {r['param']} bpp ({r['frame_types']}): PSNR "
                f"{r['frame_psnr']}, bytes {r['frame_bytes']}\n")
  if args.plot:
    plot(rows, clips, args.plot)
  print(_machine.format_table(table))
  print(_machine.format_table(summary))
  print(_machine.format_table(timing))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--clips", default=",".join(CLIPS))
  parser.add_argument("--bpp", default="0.2,0.4,0.8,1.6")
  parser.add_argument("--fit-steps", type=int, default=100)
  parser.add_argument("--qat-steps", type=int, default=20)
  parser.add_argument("--frames", type=int, default=None, help="only the first N frames")
  parser.add_argument("--name", default="video")
  parser.add_argument("--plot", default=PLOT)
  parser.add_argument("--skip-intra", action="store_true")
  parser.add_argument("--intra-every", default="bus:4,CiscoVT2people:3",
                      help="intra-only codes every k-th frame of each clip (CPU time)")
  args = parser.parse_args(argv)
  clips = args.clips.split(",")
  every = {c: 1 for c in clips}
  every.update({k: int(v) for k, v in (x.split(":") for x in args.intra_every.split(",") if x)})
  args.intra_every = every
  targets = [float(x) for x in args.bpp.split(",")]
  load_before = os.getloadavg()
  t0 = time.perf_counter()
  videos = {}
  for clip in clips:
    name, size, fps = CLIPS[clip]
    videos[clip] = read_video(os.path.join(DATA, name), size=size, max_frames=args.frames)
  rows = []
  # Cheapest first, so a partial run has every curve it can.
  for clip in clips:
    frames, fps = videos[clip], CLIPS[clip][2]
    for crf in X264_CRF:
      rows.append(run_x264(clip, frames, fps, crf))
    for bpp in J2K_BPP:
      rows.append(run_j2k(clip, frames, bpp))
  for mode in ("I+P", "intra"):
    if mode == "intra" and args.skip_intra:
      continue
    for clip in clips:
      frames, fps = videos[clip], CLIPS[clip][2]
      for bpp in targets:
        print(f"{clip} gaussjax {mode} {bpp} bpp", flush=True)
        rows.append(run_gaussjax(clip, frames, fps, mode, bpp, args))
        r = rows[-1]
        print(f"  {r['bpp']:.3f} bpp, {r['psnr']:.2f} dB, enc {r['enc_s']:.0f} s, "
              f"dec {r['dec_fps']:.0f} fps", flush=True)
        write(rows, clips, args, t0, load_before)
  write(rows, clips, args, t0, load_before)


if __name__ == "__main__":
  main()
