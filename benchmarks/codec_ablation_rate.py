"""What each rate-aware piece of the encoder adds, one at a time (issue 14).

Encodes a small fixed subset of Kodak at four target rates with one
``CodecConfig`` variant at a time and reports, per variant, the BD-rate
against the ``baseline`` variant (the encoder without the rate-aware pieces)
and against JPEG 2000 on the same images, the rate error against the target
(real file bytes) and the encode time relative to ``baseline`` in the same
results file. Variants run one invocation at a time and accumulate in
``results/codec_ablation_rate.json`` (a rerun of a variant replaces its rows),
so each piece can be measured as it is built.

  python benchmarks/codec_ablation_rate.py --variants baseline
  python benchmarks/codec_ablation_rate.py --variants rate_qat
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import CLASSIC, bd_rate, classic_encode, curve, load, metrics  # noqa: E402

import gaussjax  # noqa: E402

# Each variant: CodecConfig fields that differ from the defaults. ``baseline``
# switches every rate-aware piece off (the encoder before issue 14).
VARIANTS = {
    "baseline": {"rate_weight": 0.0, "rd_prune": False},
    "rate_qat": {"rate_weight": 1.0, "rd_prune": False},
    "rd_prune": {"rate_weight": 0.0, "rd_prune": True},
    "default": {},
}

NAME = "codec_ablation_rate"


def _commit() -> str:
  if os.environ.get("GJX_COMMIT"):  # run from a copy of the code outside the repository
    return os.environ["GJX_COMMIT"]
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except OSError:
    return "?"


def _config(bpp, args, overrides) -> gaussjax.CodecConfig:
  known = {f.name for f in dataclasses.fields(gaussjax.CodecConfig)}
  unknown = sorted(set(overrides) - known)
  for k in unknown:  # an encoder older than the piece: only "off" values mean the same
    if overrides[k]:
      raise SystemExit(f"CodecConfig has no field {k!r} (variant needs a newer encoder)")
  return gaussjax.CodecConfig(bpp=bpp, fit_steps=args.fit_steps, qat_steps=args.qat_steps,
                              **{k: v for k, v in overrides.items() if k in known})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="5,13,21,23")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", default="0.12,0.25,0.5,1.0")
  parser.add_argument("--fit-steps", type=int, default=1000)
  parser.add_argument("--qat-steps", type=int, default=200)
  parser.add_argument("--variants", default="baseline")
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  # "report": no encoding, the tables and files rebuilt from the rows stored.
  variants = [] if args.variants == "report" else args.variants.split(",")
  commit = _commit()  # of the code imported now
  path = os.path.join(_machine.RESULTS_DIR, NAME + ".json")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    rows = [r for r in old["rows"] if r["variant"] not in variants]
    if old["meta"].get("settings") != vars(args) | {"variants": None}:
      if any(r["variant"] != "jpeg2000" for r in rows):
        print("note: earlier rows were run with other settings; dropping them", flush=True)
      rows = []
  if not any(r["variant"] == "jpeg2000" for r in rows):
    for index in images:
      ref = load(index, args.scale)
      im = Image.fromarray(np.round(ref * 255).astype(np.uint8))
      for q in CLASSIC["jpeg2000"]:
        data = classic_encode("jpeg2000", q, im)
        out = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB"), np.float32)
        ps, _ = metrics(out / 255.0, ref)
        rows.append(dict(image=index, target=None, variant="jpeg2000",
                         bpp=8 * len(data) / (ref.shape[0] * ref.shape[1]), psnr=ps))
  h, w = load(images[0], args.scale).shape[:2]
  for name in variants:
    for index in images:
      ref = load(index, args.scale)
      for bpp in targets:
        config = _config(bpp, args, VARIANTS[name])
        t = time.perf_counter()
        data = gaussjax.encode(ref, config)
        enc_s = time.perf_counter() - t
        out = np.clip(np.asarray(gaussjax.decode(data)), 0, 1)
        head = gaussjax.codec._formats.info(data)
        rows.append(dict(image=index, target=bpp, variant=name, bpp=8 * len(data) / (h * w),
                         psnr=float(gaussjax.psnr(out, ref)), gaussians=head["num_gaussians"],
                         enc_s=enc_s, commit=commit, load=os.getloadavg()[0]))
        print(rows[-1], flush=True)
  summary = _summary(rows, images)
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale}, Lanczos)",
          "targets": targets, "fit_steps": args.fit_steps, "qat_steps": args.qat_steps,
          "settings": vars(args) | {"variants": None}, "variants": VARIANTS,
          "summary": summary,
          "bd_method": "rd.bd_rate per image (cubic fit of log-rate against PSNR over the "
                       "shared PSNR range), averaged over images; JPEG 2000 curves restricted "
                       "to 0.08-1.5 bpp as in rd.py"}
  _machine.write_results(NAME, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, NAME + ".md"), "a") as f:
    f.write("\n## Per variant (BD-rate: negative = fewer bytes at equal PSNR)\n\n"
            + _machine.format_table(summary)
            + "\nenc_time_ratio compares runs made at different times on a shared machine "
              "(mean_load: its 1-minute load average during the variant's encodes); the encode "
              "time of the defaults against the old encoder, measured interleaved in one run, is "
              "in rd.md.\n")


def _curve(rows, image, variant, lo=0.0, hi=10.0):
  sub = [dict(r, codec=r["variant"]) for r in rows if r["variant"] == variant]
  return curve(sub, image, variant, lo, hi)


def _summary(rows, images) -> list[dict]:
  names = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "jpeg2000"]
  out = []
  for name in names:
    vs_base, vs_j2k, err, time_ratio = [], [], [], []
    for index in images:
      rv, dv = _curve(rows, index, name)
      if not rv:
        continue
      rb, db = _curve(rows, index, "baseline")
      rj, dj = _curve(rows, index, "jpeg2000", 0.08, 1.5)
      vs_base.append(bd_rate(rb, db, rv, dv) if rb else float("nan"))
      vs_j2k.append(bd_rate(rj, dj, rv, dv))
      for r in rows:
        if r["variant"] == name and r["image"] == index:
          err.append(abs(r["bpp"] / r["target"] - 1))
          base = [b for b in rows if b["variant"] == "baseline" and b["image"] == index
                  and b["target"] == r["target"]]
          if base:
            time_ratio.append(r["enc_s"] / base[0]["enc_s"])
    out.append(dict(variant=name, bd_vs_baseline_pct=float(np.nanmean(vs_base)),
                    bd_vs_jpeg2000_pct=float(np.nanmean(vs_j2k)),
                    per_image_vs_baseline=", ".join(f"{v:+.1f}" for v in vs_base),
                    max_rate_error_pct=100 * float(np.max(err)),
                    enc_time_ratio=float(np.mean(time_ratio)) if time_ratio else float("nan"),
                    mean_load=float(np.mean([r["load"] for r in rows if r["variant"] == name])),
                    commit=next(r["commit"] for r in rows if r["variant"] == name)))
  return out


if __name__ == "__main__":
  main()
