"""Progressive (multi-level) files against single-level files on Kodak.

For each image (downscaled by ``--scale``; 2 gives 384x256, run on the CPU):

1. a ``--levels``-level file at ``--bpp`` (0.5): the PSNR of each prefix
   (levels 0..k) against a single-level file encoded at the prefix's byte
   count (interpolated in log-rate on that image's single-level points, which
   include files encoded at exactly the prefix sizes);
2. progressive and single-level files at each rate of ``--curve``
   (0.12-1.0 bpp): the BD-rate of the full progressive file against
   single-level files (``rd.bd_rate``, cubic fit of log-rate against PSNR).

Targets (issue 15): each prefix within 1.0 dB of a single-level file of the
same size; the full file within +5% BD-rate of single-level. Progressive and
single-level files use the same ``--fit-steps`` / ``--qat-steps``.

  python benchmarks/progressive.py --images 1,13 --fit-steps 100 --qat-steps 20   # smoke
  nohup python benchmarks/progressive.py --every 3 --fit-steps 400 --qat-steps 80 &

Results are written after every image to ``benchmarks/results/<name>.json|md``;
``--figure`` draws the levels of the first image to
``docs/images/progressive_levels.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import rd  # noqa: E402  (load, bd_rate, curve, interp_psnr)

import gaussjax  # noqa: E402
import gaussjax.codec._progressive  # noqa: E402  (LEVEL_STEPS)
from gaussjax.codec._formats import info  # noqa: E402

FIGURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                      "images", "progressive_levels.png")


def _psnr(out, ref) -> float:
  return float(gaussjax.psnr(np.clip(np.asarray(out, np.float32), 0, 1), ref))


def run_image(index, args, rows, prefix_rows):
  ref = rd.load(index, args.scale)
  h, w = ref.shape[:2]
  pixels = h * w

  def single(bpp, tag):
    cfg = gaussjax.CodecConfig(bpp=bpp, fit_steps=args.fit_steps, qat_steps=args.qat_steps)
    t = time.perf_counter()
    data = gaussjax.encode(ref, cfg)
    rows.append(dict(image=index, codec=tag, param=bpp, bytes=len(data),
                     bpp=8 * len(data) / pixels, psnr=_psnr(gaussjax.decode(data), ref),
                     enc_s=time.perf_counter() - t, load=os.getloadavg()[0]))
    print(f"  kodim{index:02d} {tag} {bpp:.4f}: {rows[-1]['bpp']:.4f} bpp "
          f"{rows[-1]['psnr']:.2f} dB, {rows[-1]['enc_s']:.0f}s", flush=True)

  progressive = {}
  for bpp in args.curve:
    cfg = gaussjax.CodecConfig(bpp=bpp, levels=args.levels, fit_steps=args.fit_steps,
                               qat_steps=args.qat_steps)
    t = time.perf_counter()
    data = gaussjax.encode(ref, cfg)
    progressive[bpp] = data
    rows.append(dict(image=index, codec="progressive", param=bpp, bytes=len(data),
                     bpp=8 * len(data) / pixels, psnr=_psnr(gaussjax.decode(data), ref),
                     enc_s=time.perf_counter() - t, load=os.getloadavg()[0]))
    print(f"  kodim{index:02d} progressive {bpp}: {rows[-1]['bpp']:.4f} bpp "
          f"{rows[-1]['psnr']:.2f} dB, {rows[-1]['enc_s']:.0f}s", flush=True)
    single(bpp, "single")
  data = progressive[args.bpp]
  levels = info(data)["levels"]
  for lv in levels[:-1]:
    single(8 * lv["end"] / pixels, "single_prefix")
  for lv in levels:
    out = gaussjax.decode(data[:lv["end"]], level=lv["level"], partial=True)
    bpp = 8 * lv["end"] / pixels
    ps = _psnr(out, ref)
    both = [r for r in rows if r["image"] == index and r["codec"] in ("single", "single_prefix")]
    ref_psnr = rd.interp_psnr([dict(r, codec="s") for r in both], index, "s", bpp)
    if not np.isfinite(ref_psnr):  # outside the single-level points: the nearest one
      near = min(both, key=lambda r: abs(np.log(r["bpp"] / bpp)))
      ref_psnr = near["psnr"]
    prefix_rows.append(dict(image=index, level=lv["level"], gaussians=lv["num_gaussians"],
                            bytes=lv["end"], bpp=bpp, psnr=ps, single_psnr=ref_psnr,
                            delta_db=ps - ref_psnr))
    print(f"  kodim{index:02d} prefix {lv['level']}: {lv['end']} bytes ({bpp:.3f} bpp) "
          f"{ps:.2f} dB, single-level {ref_psnr:.2f} dB", flush=True)
  return ref, data


def figure(ref, data, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  h, w = ref.shape[:2]
  levels = info(data)["levels"]
  fig, axes = plt.subplots(1, len(levels) + 1, figsize=(3.2 * (len(levels) + 1), 3.2 * h / w + 0.5))
  for ax, lv in zip(axes, levels):
    out = np.asarray(gaussjax.decode(data[:lv["end"]], level=lv["level"], partial=True))
    ax.imshow(np.clip(out, 0, 1))
    ax.set_title(f"level {lv['level']}: first {lv['end']} bytes\n{lv['num_gaussians']} new "
                 f"Gaussians, {8 * lv['end'] / (h * w):.3f} bpp, {_psnr(out, ref):.2f} dB",
                 fontsize=8)
  axes[-1].imshow(ref)
  axes[-1].set_title("original", fontsize=8)
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  from PIL import Image
  Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)  # a small PNG


def summarise(rows, prefix_rows, args):
  images = sorted({r["image"] for r in prefix_rows})
  bd = []
  for i in images:
    r1, d1 = rd.curve(rows, i, "single", 0.0, 10.0)
    r2, d2 = rd.curve(rows, i, "progressive", 0.0, 10.0)
    bd.append(dict(image=i, bd_rate=rd.bd_rate(r1, d1, r2, d2)))
  finite = [b["bd_rate"] for b in bd if np.isfinite(b["bd_rate"])]
  per_level = []
  for k in range(args.levels):
    sel = [p for p in prefix_rows if p["level"] == k]
    if sel:
      d = np.array([p["delta_db"] for p in sel])
      per_level.append(dict(level=k, images=len(sel), bpp=float(np.mean([p["bpp"] for p in sel])),
                            psnr=float(np.mean([p["psnr"] for p in sel])),
                            single_psnr=float(np.mean([p["single_psnr"] for p in sel])),
                            mean_delta_db=float(d.mean()), worst_delta_db=float(d.min()),
                            within_1db=int((d >= -1.0).sum())))
  times = []
  for codec in ("progressive", "single"):
    sel = [r["enc_s"] for r in rows if r["codec"] == codec and r["image"] in images]
    if sel:
      times.append(dict(codec=codec, files=len(sel), mean_encode_s=float(np.mean(sel))))
  return bd, finite, per_level, times


NOTES = """
## Notes

- CPU only (jax CPU backend), 384x256 (Kodak downscaled by 2), on a 2-core machine shared
  with other jobs (load averages in the JSON and per row). Encode times are only comparable
  within this run.
- Both kinds of file use the same reduced `--fit-steps` / `--qat-steps` (not the codec's
  defaults, `CodecConfig.fit_steps` + `qat_steps`). With `level_steps=each` every level of
  the progressive file runs all of them (each Gaussian gets as many optimiser steps as in a
  single-level file, and each level renders only its own Gaussians), so its encode takes
  longer (mean encode times above); at these reduced steps neither kind of fit has
  converged, which favours the progressive file.
  `progressive_cpu_split200.md` (same steps, kodim01 and 07) and `progressive_cpu_split.md`
  (300 + 60 steps, kodim01 and 03) split the steps over the levels instead (as many steps in
  all), which disfavours it. Files at the codec's full steps were not measured.
- BD-rate: per image over the progressive and single-level files at the `curve` rates,
  then the mean; negative means the progressive file needs fewer bytes for the same PSNR.
"""


def write_md(name, rows, prefix_rows, meta, args):
  bd, finite, per_level, times = summarise(rows, prefix_rows, args)
  meta.update(images_done=[b["image"] for b in bd],
              mean_bd_rate_pct=float(np.mean(finite)) if finite else float("nan"),
              per_level=per_level, bd_rate_per_image=bd, prefixes=prefix_rows, encode_times=times)
  _machine.write_results(name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{name}.md"), "a") as f:
    f.write(f"\n## Prefixes of the {args.levels}-level file at {args.bpp} bpp against "
            "single-level files of the same size (mean over images)\n\n"
            + _machine.format_table(per_level))
    f.write("\n## BD-rate of the full progressive file against single-level files (%)\n\n"
            + _machine.format_table(bd)
            + f"\nMean over {len(finite)} images: "
            + (f"{np.mean(finite):+.2f}%\n" if finite else "n/a\n"))
    f.write("\n## Mean encode time per file (s)\n\n" + _machine.format_table(times))
    f.write(NOTES)
  return meta


SAME = ("scale", "levels", "bpp", "curve", "fit_steps", "qat_steps", "level_steps")


def combine(name, parts, args):
  """Joins the results of runs on disjoint images (same settings) into one file.

  A long run on a shared machine may be cut (it was: LLVM ran out of memory
  maps, ``gaussjax.core._compiled``) and rerun on the images left; each part
  keeps its own date, load and images in ``meta["parts"]``.
  """
  rows, prefixes, meta_parts, machine = [], [], [], None
  for part in parts:
    with open(os.path.join(_machine.RESULTS_DIR, f"{part}.json")) as f:
      old = json.load(f)
    meta = old["meta"]
    if meta_parts:
      first = meta_parts[0]["settings"]
      differ = {k: (first[k], meta.get(k)) for k in SAME if first[k] != meta.get(k)}
      if differ:
        raise SystemExit(f"{part}: other settings than {parts[0]}: {differ}")
    done = set(meta["images_done"])
    if done & {r["image"] for r in rows}:
      raise SystemExit(f"{part}: images {sorted(done & {r['image'] for r in rows})} twice")
    rows += [r for r in old["rows"] if r["image"] in done]
    prefixes += [p for p in meta["prefixes"] if p["image"] in done]
    machine = old["machine"]
    meta_parts.append(dict(name=part, date=old["machine"]["date"], images=sorted(done),
                           settings={k: meta.get(k) for k in SAME},
                           load_average_start=meta.get("load_average_start"),
                           load_average_now=meta.get("load_average_now"),
                           wall_s=meta.get("wall_s")))
  settings = meta_parts[0]["settings"]
  args.levels, args.bpp = settings["levels"], settings["bpp"]
  meta = dict(settings, images=sorted({r["image"] for r in rows}),
              device="CPU (jax CPU backend)", parts=meta_parts)
  _machine.machine_info = lambda: machine  # the machine (and date) of the last part
  meta = write_md(name, rows, prefixes, meta, args)
  print(_machine.format_table(meta["per_level"]))
  print(f"{len(meta['images_done'])} images, mean BD-rate {meta['mean_bd_rate_pct']:+.2f}%")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default=",".join(str(i) for i in range(1, 25)),
                      help="Kodak indices (1..24), comma separated")
  parser.add_argument("--every", type=int, default=1, help="keep every n-th of --images")
  parser.add_argument("--scale", type=int, default=2, help="downscale (2: 384x256)")
  parser.add_argument("--levels", type=int, default=3)
  parser.add_argument("--bpp", type=float, default=0.5, help="rate of the prefix test")
  parser.add_argument("--curve", default="0.12,0.25,0.5,1.0", help="rates of the BD-rate")
  defaults = gaussjax.CodecConfig()
  parser.add_argument("--fit-steps", type=int, default=defaults.fit_steps)
  parser.add_argument("--qat-steps", type=int, default=defaults.qat_steps)
  parser.add_argument("--name", default="progressive_cpu")
  parser.add_argument("--figure", action="store_true", help="draw " + FIGURE)
  parser.add_argument("--level-steps", choices=("each", "split"), default="each",
                      help="each level runs all fit/QAT steps, or they are split over the "
                           "levels (gaussjax.codec._progressive.LEVEL_STEPS)")
  parser.add_argument("--rewrite", action="store_true",
                      help="encode nothing: rewrite <name>.md (and the summary) from <name>.json")
  parser.add_argument("--combine", default=None,
                      help="encode nothing: NAME1,NAME2,... results of runs with the same "
                           "settings on other images, joined into <name>.md/.json")
  args = parser.parse_args(argv)
  if args.combine:
    combine(args.name, args.combine.split(","), args)
    return
  gaussjax.codec._progressive.LEVEL_STEPS = args.level_steps
  args.curve = sorted({float(b) for b in args.curve.split(",")} | {args.bpp})
  if args.rewrite:
    with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.json")) as f:
      old = json.load(f)
    meta = old["meta"]
    args.levels, args.bpp = meta["levels"], meta["bpp"]
    _machine.machine_info = lambda: old["machine"]  # the machine (and date) of the run
    write_md(args.name, old["rows"], meta["prefixes"], meta, args)
    return
  images = [int(i) for i in args.images.split(",")][::args.every]
  meta = dict(images=images, scale=args.scale, levels=args.levels, bpp=args.bpp,
              curve=args.curve, fit_steps=args.fit_steps, qat_steps=args.qat_steps,
              level_steps=args.level_steps,
              device="CPU (jax CPU backend)", load_average_start=list(os.getloadavg()))
  rows, prefix_rows = [], []
  start = time.perf_counter()
  for n, index in enumerate(images):
    ref, data = run_image(index, args, rows, prefix_rows)
    if args.figure and n == 0:
      figure(ref, data, FIGURE)
    meta.update(wall_s=round(time.perf_counter() - start), load_average_now=list(os.getloadavg()))
    meta = write_md(args.name, rows, prefix_rows, meta, args)
  print(_machine.format_table(meta["per_level"]))
  print(f"mean BD-rate {meta['mean_bd_rate_pct']:+.2f}%")


if __name__ == "__main__":
  main()
