"""Rate-distortion of the gaussjax codec on Kodak against Pillow's codecs.

Every codec runs in the same process on exactly the same images (same subset,
same downscale): gaussjax at target rates, JPEG / WebP / JPEG 2000 / AVIF
swept over their quality parameters. bpp is always 8 · file bytes / pixels.
Reports PSNR (RGB) and MS-SSIM, BD-rate (Bjøntegaard, cubic fit of log-rate
against PSNR, per image then averaged) against each classical codec over the
shared PSNR range, decode time per image, an RD plot and a table.

Usage (the defaults are sized for a 2-core CPU; see --help):

  python benchmarks/rd.py --images 1,15,23 --scale 2 --bpp 0.12,0.25,0.5,1.0

Environment variables GJX_RD_IMAGES, GJX_RD_SCALE, GJX_RD_BPP, GJX_RD_FIT_STEPS
set the same knobs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image, features

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec._codec import render_safe  # noqa: E402
from gaussjax.codec._formats import decode_gaussians  # noqa: E402

KODAK = os.environ.get("GJX_KODAK", "/work/shared/data/kodak")
ANCHORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "anchors.json")


def load_anchors() -> dict:
  """Published Kodak points (``anchors.json``: bpp, psnr, source), mean over 24 images at 768x512."""
  with open(ANCHORS) as f:
    return json.load(f)["anchors"]
CLASSIC = {
    "jpeg": [3, 5, 8, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90],
    "webp": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
    "jpeg2000": [0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0],
    "avif": [5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
}


def load(index: int, scale: int) -> np.ndarray:
  im = Image.open(os.path.join(KODAK, f"kodim{index:02d}.png")).convert("RGB")
  if scale > 1:
    im = im.resize((im.width // scale, im.height // scale), Image.LANCZOS)
  return np.asarray(im, np.float32) / 255.0


def metrics(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  out = np.clip(np.asarray(out, np.float32), 0, 1)
  ps = float(gaussjax.psnr(out, ref))
  try:
    ms = float(gaussjax.ms_ssim(out, ref))
  except ValueError:  # image too small for five scales
    ms = float("nan")
  return ps, ms


def classic_encode(codec: str, param, im: Image.Image) -> bytes:
  buf = io.BytesIO()
  if codec == "jpeg":
    im.save(buf, "JPEG", quality=param, optimize=True)
  elif codec == "webp":
    im.save(buf, "WEBP", quality=param, method=6)
  elif codec == "jpeg2000":
    # Irreversible 9/7 wavelet with the colour transform (mct=1), one layer at
    # the compression ratio 24 / bpp; raw J2K codestream (no JP2 boxes).
    im.save(buf, "JPEG2000", irreversible=True, mct=1, quality_mode="rates",
            quality_layers=[24.0 / param], no_jp2=True)
  elif codec == "avif":
    im.save(buf, "AVIF", quality=param, speed=4)
  return buf.getvalue()


def timed_decode(fn, repeats: int = 3) -> tuple[object, float]:
  best, out = float("inf"), None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return out, best


def run_classic(codec, ref, index, rows):
  im = Image.fromarray(np.rint(ref * 255).astype(np.uint8))
  h, w = ref.shape[:2]
  for param in CLASSIC[codec]:
    data = classic_encode(codec, param, im)
    out, dec_s = timed_decode(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    ps, ms = metrics(out.astype(np.float32) / 255.0, ref)
    rows.append(dict(image=index, codec=codec, param=param, bytes=len(data),
                     bpp=8 * len(data) / (h * w), psnr=ps, msssim=ms, dec_s=dec_s))


# The encoder before issue 14 (no rate term, pruning by energy, nearest rounding, one colour
# step per channel, one position step, its fit and fine-tuning steps): --compare-old
# times it against the defaults on the same images in the same run.
OLD_ENCODER = {"rate_weight": 0.0, "rd_prune": False, "rd_round": False, "rd_round_chol": False,
               "rd_round_means": False, "color_size": 0.0, "pos_levels": 0, "fit_steps": 1500,
               "qat_steps": 300, "fit_cycles": 1, "coarse_fit": False}


def run_gaussjax(ref, index, targets, args, rows, codec="gaussjax", overrides=None):
  h, w = ref.shape[:2]
  for bpp in targets:
    settings = {"fit_steps": args.fit_steps, "qat_steps": args.qat_steps, **args.set,
                **(overrides or {})}
    cfg = gaussjax.CodecConfig(bpp=bpp, **settings)
    t = time.perf_counter()
    data = gaussjax.encode(ref, cfg)
    enc_s = time.perf_counter() - t

    def dec():
      g, (h0, w0) = decode_gaussians(data)
      return np.asarray(np.clip(render_safe(g, h0, w0), 0, 1))

    t = time.perf_counter()
    dec()  # first call includes compiling the renderer for this plan
    first_s = time.perf_counter() - t
    out, dec_s = timed_decode(dec)
    ps, ms = metrics(out, ref)
    n = gaussjax.codec._formats.info(data)["num_gaussians"]
    rows.append(dict(image=index, codec=codec, param=bpp, bytes=len(data),
                     bpp=8 * len(data) / (h * w), psnr=ps, msssim=ms, dec_s=dec_s,
                     dec_first_s=first_s, enc_s=enc_s, gaussians=n))
    print(f"  kodim{index:02d} {codec} target {bpp}: {rows[-1]['bpp']:.4f} bpp, {ps:.2f} dB, "
          f"MS-SSIM {ms:.4f}, N={n}, enc {enc_s:.0f}s, dec {dec_s * 1e3:.1f} ms", flush=True)


def bd_rate(r1, d1, r2, d2) -> float:
  """Bjøntegaard delta rate of curve 2 against curve 1 (%, negative = 2 smaller).

  Cubic fits of log(rate) as a function of distortion (PSNR), integrated over
  the overlap of the two PSNR ranges.
  """
  r1, d1, r2, d2 = (np.asarray(x, np.float64) for x in (r1, d1, r2, d2))
  if len(r1) < 4 or len(r2) < 4:
    return float("nan")
  p1 = np.polyfit(d1, np.log(r1), 3)
  p2 = np.polyfit(d2, np.log(r2), 3)
  lo, hi = max(d1.min(), d2.min()), min(d1.max(), d2.max())
  if hi <= lo:
    return float("nan")
  i1 = np.polyval(np.polyint(p1), hi) - np.polyval(np.polyint(p1), lo)
  i2 = np.polyval(np.polyint(p2), hi) - np.polyval(np.polyint(p2), lo)
  return float((np.exp((i2 - i1) / (hi - lo)) - 1) * 100)


def curve(rows, image, codec, lo, hi):
  pts = sorted((r["bpp"], r["psnr"]) for r in rows
               if r["image"] == image and r["codec"] == codec and lo <= r["bpp"] <= hi)
  # Monotone in PSNR for the fit (drop points that do not improve).
  out = []
  for b, p in pts:
    if not out or p > out[-1][1]:
      out.append((b, p))
  return [b for b, _ in out], [p for _, p in out]


def interp_psnr(rows, image, codec, bpp):
  b, p = curve(rows, image, codec, 0, 10)
  if not b or bpp < b[0] or bpp > b[-1]:
    return float("nan")
  return float(np.interp(np.log(bpp), np.log(b), p))


def _config_fields(parser, items: list[str]) -> dict:
  """``--set FIELD=VALUE`` items as CodecConfig overrides, checked before any work."""
  fields = {f.name for f in dataclasses.fields(gaussjax.CodecConfig)}
  out = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or name not in fields or name in ("bpp", "quality"):
      parser.error(f"--set {item!r}: expected FIELD=VALUE with a CodecConfig field "
                   "other than bpp and quality")
    try:
      out[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parser.error(f"--set {item!r}: {value!r} is not a Python literal")
  try:
    gaussjax.CodecConfig(bpp=1.0, **out)
  except (TypeError, ValueError) as e:
    parser.error(f"--set: {e}")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default=os.environ.get("GJX_RD_IMAGES", "1,5,9,13,17,21"),
                      help="Kodak indices (1..24), comma separated")
  parser.add_argument("--scale", type=int, default=int(os.environ.get("GJX_RD_SCALE", "2")),
                      help="downscale factor (1 = full 768x512)")
  parser.add_argument("--bpp", default=os.environ.get("GJX_RD_BPP", "0.12,0.25,0.5,1.0"))
  defaults = gaussjax.CodecConfig()
  parser.add_argument("--fit-steps", type=int,
                      default=int(os.environ.get("GJX_RD_FIT_STEPS", defaults.fit_steps)))
  parser.add_argument("--qat-steps", type=int, default=defaults.qat_steps)
  parser.add_argument("--name", default="rd")
  parser.add_argument("--compare-old", type=int, default=0,
                      help="also encode the first K images with the encoder before issue 14 "
                           "(rate_weight=0, rd_prune=False, rd_round=False, "
                           "rd_round_chol=False, rd_round_means=False, color_size=0, "
                           "pos_levels=0, fit_steps=1500, qat_steps=300, fit_cycles=1, "
                           "coarse_fit=False), "
                           "interleaved, to compare encode times")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a CodecConfig field of the gaussjax encodes, e.g. pos_levels=0 "
                           "(repeatable; the value as a Python literal); for ablations")
  parser.add_argument("--anchors-of", metavar="RUN[,RUN...]",
                      help="encode nothing: the anchors' table and figure against the gaussjax "
                           "rows of earlier runs (results/RUN.json; disjoint images), written to "
                           "results/NAME.{json,md,png} (--name; RUN_anchors by default)")
  args = parser.parse_args(argv)
  if args.anchors_of:
    runs = args.anchors_of.split(",")
    return anchors_of(runs, args.name if args.name != "rd" else f"{runs[0]}_anchors")
  args.set = _config_fields(parser, args.set)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  codecs = [c for c in CLASSIC if c != "avif" or features.check("avif")]
  rows = []
  t0 = time.perf_counter()
  for k, index in enumerate(images):
    ref = load(index, args.scale)
    print(f"kodim{index:02d} {ref.shape[1]}x{ref.shape[0]}", flush=True)
    for codec in codecs:
      run_classic(codec, ref, index, rows)
    if k < args.compare_old:
      # Interleaved, old-new then new-old (compiles and the machine's load hit both alike).
      for j, bpp in enumerate(targets):
        pair = [("gaussjax_old", OLD_ENCODER), ("gaussjax", None)]
        for codec, overrides in pair[::(-1) ** (j + k)]:
          run_gaussjax(ref, index, [bpp], args, rows, codec, overrides)
    else:
      run_gaussjax(ref, index, targets, args, rows)
    # The results so far, rewritten after every image (a run cut short still reports).
    report(rows, images[:k + 1], targets, codecs, args, t0)


def anchors_of(runs: list[str], name: str):
  """The anchors' table against earlier runs' gaussjax rows (``--anchors-of``).

  Several runs join when they have the same settings and size and disjoint
  images (as ``rd_combine.py`` joins their BD-rates).
  """
  docs = []
  for run in runs:
    with open(os.path.join(_machine.RESULTS_DIR, f"{run}.json")) as f:
      docs.append(json.load(f))
  if len({d["meta"]["gaussjax"] for d in docs}) != 1:
    raise SystemExit("the runs differ in their gaussjax settings")
  sizes = {d["meta"]["images"].split(" at ")[1] for d in docs}
  if len(sizes) != 1:
    raise SystemExit(f"the runs differ in image size: {sorted(sizes)}")
  images = [i for d in docs for i in sorted({r["image"] for r in d["rows"]})]
  if len(images) != len(set(images)):
    raise SystemExit("the runs overlap in their images")
  rows = [r for d in docs for r in d["rows"]]
  targets = sorted({r["param"] for r in rows if r["codec"] == "gaussjax"})
  full_size = sizes.pop().startswith("768x512")
  table = anchor_rows(rows, targets, full_size)
  title = f"kodim {sorted(images)} at {docs[0]['meta']['images'].split(' at ')[1]}"
  meta = {"rows_from": [f"results/{run}.json: {d['meta']['images']}; run on "
                        f"{d['machine'].get('cpu')} ({d['machine'].get('date')})"
                        for run, d in zip(runs, docs)],
          "gaussjax": docs[0]["meta"]["gaussjax"],
          "anchors": "benchmarks/anchors.json (not measured here; 'kind' says where each is from)",
          "bd_over": "'the same images': per-image BD-rates on the runs' images, averaged as for "
                     "the codecs; 'mean curves': the runs' mean curve against the anchor's mean "
                     "over its 24 images (biased when the runs are a subset)"}
  print(_machine.format_table(table))
  _machine.write_results(name, table, meta)
  codecs = [c for c in CLASSIC if any(r["codec"] == c for r in rows)]
  plot(rows, codecs, os.path.join(_machine.RESULTS_DIR, f"{name}.png"), title, load_anchors(),
       full_size=full_size)


def anchor_rows(rows, targets, full_size: bool) -> list[dict]:
  """The anchors' table: each anchor's PSNR at the target rates (interpolated
  in log-bpp) and, when ``rows`` are at full size too, gaussjax's BD-rate
  against it: per image where the anchor has this run's images
  (``per_image_psnr``), else from the mean curves (anchors are means over all
  24 images, so on a subset that is biased by the subset's difficulty)."""
  out = []
  for name, a in load_anchors().items():
    row = {"published": name, "kind": a.get("kind", "published"),
           "resolution": "768x512 (24 images)"}
    for bpp in targets:
      inside = a["bpp"][0] <= bpp <= a["bpp"][-1]
      row[f"psnr@{bpp}"] = float(np.interp(np.log(bpp), np.log(a["bpp"]), a["psnr"])) \
          if inside else float("nan")
    images = sorted({r["image"] for r in rows if r["codec"] == "gaussjax"})
    per_image = a.get("per_image_psnr", {})
    if not full_size:
      row["gaussjax_bd_rate_pct"], row["bd_over"] = "n/a (other resolution)", ""
    elif all(str(i) in per_image for i in images):
      # Per image on this run's images, averaged like the codecs' BD-rates.
      row["gaussjax_bd_rate_pct"] = float(np.mean([
          bd_rate(a["bpp"], per_image[str(i)], *curve(rows, i, "gaussjax", 0.0, 10.0))
          for i in images]))
      row["bd_over"] = "the same images"
    else:
      rg = [np.mean([r["bpp"] for r in rows if r["codec"] == "gaussjax" and r["param"] == t])
            for t in targets]
      dg = [np.mean([r["psnr"] for r in rows if r["codec"] == "gaussjax" and r["param"] == t])
            for t in targets]
      row["gaussjax_bd_rate_pct"] = bd_rate(a["bpp"], a["psnr"], rg, dg)
      row["bd_over"] = ("mean curves, 24 images" if len(images) == 24 else
                        f"mean curves: {len(images)} images against the anchor's 24")
    row["source"] = a["source"].split(" (")[0]
    out.append(row)
  return out


def report(rows, images, targets, codecs, args, t0):
  """Tables, results files and figure of the images done so far."""
  # BD-rate of gaussjax against each codec, per image, over 0.08..1.5 bpp.
  summary = []
  for codec in codecs:
    vals = []
    for index in images:
      rg, dg = curve(rows, index, "gaussjax", 0.0, 10.0)
      rc, dc = curve(rows, index, codec, 0.08, 1.5)
      vals.append(bd_rate(rc, dc, rg, dg))
    summary.append(dict(reference=codec, bd_rate_pct=float(np.nanmean(vals)) if
                        not all(np.isnan(vals)) else float("nan"),
                        per_image=", ".join(f"{v:+.1f}" for v in vals)))
  # PSNR at each target rate, averaged over images (classical: interpolated in log-bpp).
  at_rate = []
  for bpp in targets:
    row = {"bpp": bpp}
    for codec in ["gaussjax"] + codecs:
      if codec == "gaussjax":
        vals = [r["psnr"] for r in rows if r["codec"] == codec and r["param"] == bpp]
        rates = [r["bpp"] for r in rows if r["codec"] == codec and r["param"] == bpp]
        row["gaussjax_actual_bpp"] = float(np.mean(rates))
      else:
        vals = [interp_psnr(rows, i, codec, bpp) for i in images]
      row[codec] = float(np.mean(vals))
    at_rate.append(row)
  dec = {c: float(np.mean([r["dec_s"] for r in rows if r["codec"] == c])) for c in ["gaussjax"] + codecs}
  total = time.perf_counter() - t0

  print("\nPSNR (dB) at target rate, mean over images")
  print(_machine.format_table(at_rate))
  print("BD-rate of gaussjax vs each codec (PSNR; negative = gaussjax smaller)")
  print(_machine.format_table(summary))
  print("Mean decode time per image (s, best of 3):", {k: round(v, 4) for k, v in dec.items()})

  h, w = load(images[0], args.scale).shape[:2]
  meta = {
      "images": f"kodim {images} at {w}x{h} (Kodak 768x512 downscaled by {args.scale}, Lanczos)",
      "subset": ("all 24 Kodak images" if sorted(images) == list(range(1, 25)) else
                 "a subset (each gaussjax encode's time is in the rows' enc_s)"),
      "gaussjax": (f"fit_steps={args.fit_steps}, qat_steps={args.qat_steps}, targets {targets}, "
                   f"rd_slope={gaussjax.CodecConfig().rd_slope}, "
                   f"finetune={gaussjax.CodecConfig().finetune!r}, "
                   f"rd_round={gaussjax.CodecConfig().rd_round}, "
                   f"rd_round_chol={gaussjax.CodecConfig().rd_round_chol}, "
                   f"rd_round_means={gaussjax.CodecConfig().rd_round_means}, "
                   f"color_size={gaussjax.CodecConfig().color_size}, "
                   f"pos_levels={gaussjax.CodecConfig().pos_levels}, "
                   f"fit_cycles={gaussjax.CodecConfig().fit_cycles}, "
                   f"coarse_fit={gaussjax.CodecConfig().coarse_fit}"
                   + "".join(f", --set {k}={v!r}" for k, v in args.set.items())),
      "jpeg": "Pillow quality sweep, optimize=True, 4:2:0",
      "webp": "Pillow method=6", "jpeg2000": "Pillow/OpenJPEG irreversible=True mct=1, rates mode",
      "avif": "Pillow speed=4" if "avif" in codecs else "not available",
      "bd_rate_method": "Bjontegaard, cubic log-rate vs PSNR, classical curves restricted to 0.08-1.5 bpp",
      "decode_time_s": dec, "total_s": total, "psnr_at_rate": at_rate, "bd_rate": summary,
  }
  published = anchor_rows(rows, targets, full_size=args.scale == 1)
  meta["published_anchors"] = published
  old = [r for r in rows if r["codec"] == "gaussjax_old"]
  if old:
    pairs = [(r["enc_s"], next(n["enc_s"] for n in rows if n["codec"] == "gaussjax" and
                               (n["image"], n["param"]) == (r["image"], r["param"])))
             for r in old if any(n["codec"] == "gaussjax" and (n["image"], n["param"]) ==
                                 (r["image"], r["param"]) for n in rows)]
    meta["encode_time_new_over_old"] = {
        "images": sorted({r["image"] for r in old}), "pairs": len(pairs),
        "old_s": float(np.mean([a for a, _ in pairs])), "new_s": float(np.mean([b for _, b in pairs])),
        "ratio_of_means": float(np.sum([b for _, b in pairs]) / np.sum([a for a, _ in pairs])),
        "old_psnr_db": float(np.mean([r["psnr"] for r in old])),
        "new_psnr_db_same_points": float(np.mean(
            [n["psnr"] for r in old for n in rows if n["codec"] == "gaussjax"
             and (n["image"], n["param"]) == (r["image"], r["param"])])),
    }
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## PSNR (dB) at target rate, mean over images\n\n" + _machine.format_table(at_rate))
    f.write("\n## BD-rate of gaussjax against each codec (%)\n\n" + _machine.format_table(summary))
    f.write("\n## Published anchors (not measured here; mean over the 24 Kodak images at "
            "768x512, from benchmarks/anchors.json; the BD-rate only when this run is at full "
            "size, from the mean curves)\n\n" + _machine.format_table(published))
    if "encode_time_new_over_old" in meta:
      f.write("\n## Encode time, defaults against the encoder before issue 14 (same images, "
              "interleaved, same run)\n\n" + _machine.format_table([meta["encode_time_new_over_old"]]))
    f.write("\n## Mean decode time per image (ms, best of 3, gaussjax warm)\n\n" + _machine.format_table(
        [{"codec": k, "decode_ms": 1e3 * v} for k, v in dec.items()]))
  plot(rows, codecs, os.path.join(_machine.RESULTS_DIR, f"{args.name}.png"), meta["images"],
       load_anchors(), full_size=args.scale == 1)


def plot(rows, codecs, path, title, anchors=None, full_size=False):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
  images = sorted({r["image"] for r in rows})
  grid = np.geomspace(0.08, 1.5, 24)
  for codec in codecs + ["gaussjax"]:
    if codec == "gaussjax":
      params = sorted({r["param"] for r in rows if r["codec"] == codec})
      b = [np.mean([r["bpp"] for r in rows if r["codec"] == codec and r["param"] == p]) for p in params]
      p_ = [np.mean([r["psnr"] for r in rows if r["codec"] == codec and r["param"] == p]) for p in params]
      m_ = [np.mean([r["msssim"] for r in rows if r["codec"] == codec and r["param"] == p]) for p in params]
      ax[0].plot(b, p_, "o-", lw=2.5, label=codec, color="k")
      ax[1].plot(b, m_, "o-", lw=2.5, label=codec, color="k")
      continue
    p_ = [np.nanmean([interp_psnr(rows, i, codec, g) for i in images]) for g in grid]
    ax[0].plot(grid, p_, ".-", label=codec)
    ms = []
    for g in grid:
      vals = []
      for i in images:
        pts = sorted((r["bpp"], r["msssim"]) for r in rows if r["image"] == i and r["codec"] == codec)
        bb, mm = zip(*pts)
        vals.append(np.interp(np.log(g), np.log(bb), mm) if bb[0] <= g <= bb[-1] else np.nan)
      ms.append(np.nanmean(vals))
    ax[1].plot(grid, ms, ".-", label=codec)
  for name, a in (anchors or {}).items():
    label = f"{name} ({a.get('kind', 'published')}, 768x512" + \
        ("" if full_size else ", other resolution") + ")"
    ax[0].plot(a["bpp"], a["psnr"], "x--", ms=7, lw=1, alpha=0.8, label=label)
  for a, name, corner in zip(ax, ("PSNR (dB)", "MS-SSIM"), ("upper left", "lower right")):
    a.set_xscale("log")
    a.set_xlabel("bpp (whole file)")
    a.set_ylabel(name)
    a.grid(alpha=0.3)
    a.legend(fontsize=7, loc=corner)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
