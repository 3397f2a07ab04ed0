"""Two ``rd.py`` results on the images they share: BD-rates old against new.

For the Kodak images present in both files: each file's BD-rate of gaussjax
against every classical codec (mean over those images, per image as rd.py
computes it), and the BD-rate of the new gaussjax curve against the old one
per image (negative = the new encoder needs fewer bytes at equal PSNR).
Also the new files' mean PSNR at each target rate with the classical codecs' at
the same rates. Useful when a run was cut short, or to set a rerun against a
stored one.

  python benchmarks/rd_compare.py --old OLD.json --new benchmarks/results/rd.json
  python benchmarks/rd_compare.py --old A.json B.json --new C.json D.json  # disjoint images
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import bd_rate, curve, interp_psnr  # noqa: E402


def _join(paths: list[str]) -> dict:
  """Rows of several rd.py results files (disjoint images, ``_machine.join_results``), with the
  first file's gaussjax settings and every file's settings that differ from them."""
  joined = _machine.join_results(paths)
  settings = [part["meta"].get("gaussjax") for part in joined["parts"]]
  joined["meta"]["gaussjax"] = settings[0]
  for path, other in zip(paths, settings):
    if other != settings[0]:
      joined["meta"].setdefault("gaussjax_of", {})[path] = other
  return joined


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--old", required=True, nargs="+",
                      help="one rd.py results file, or several on disjoint images (joined)")
  parser.add_argument("--new", required=True, nargs="+",
                      help="the same for the new encoder")
  parser.add_argument("--name", default="rd_compare")
  args = parser.parse_args(argv)
  old, new = _join(args.old), _join(args.new)
  images = sorted({r["image"] for r in old["rows"] if r["codec"] == "gaussjax"}
                  & {r["image"] for r in new["rows"] if r["codec"] == "gaussjax"})
  codecs = [c for c in ("jpeg", "webp", "jpeg2000", "avif")
            if any(r["codec"] == c for r in new["rows"])]
  summary = []
  for codec in codecs:
    row = {"reference": codec}
    for label, data in (("old", old), ("new", new)):
      vals = []
      for i in images:
        rg, dg = curve(data["rows"], i, "gaussjax", 0.0, 10.0)
        rc, dc = curve(data["rows"], i, codec, 0.08, 1.5)
        vals.append(bd_rate(rc, dc, rg, dg))
      row[f"{label}_bd_rate_pct"] = float(np.nanmean(vals))
    summary.append(row)
  per_image = []
  for i in images:
    ro, do = curve(old["rows"], i, "gaussjax", 0.0, 10.0)
    rn, dn = curve(new["rows"], i, "gaussjax", 0.0, 10.0)
    err = [abs(r["bpp"] / r["param"] - 1) for r in new["rows"]
           if r["codec"] == "gaussjax" and r["image"] == i]
    enc = [np.mean([r["enc_s"] for r in data["rows"] if r["codec"] == "gaussjax"
                    and r["image"] == i]) for data in (old, new)]
    per_image.append(dict(image=i, new_vs_old_bd_rate_pct=bd_rate(ro, do, rn, dn),
                          new_max_rate_error_pct=100 * float(max(err)),
                          old_enc_s=float(enc[0]), new_enc_s=float(enc[1])))
  mean = float(np.nanmean([p["new_vs_old_bd_rate_pct"] for p in per_image]))
  # The new gaussjax files at each target rate (means over the shared images) and each
  # classical codec at the same rates (interpolated in log-bpp at every file's bpp).
  at_rate = []
  for target in sorted({r["param"] for r in new["rows"] if r["codec"] == "gaussjax"}):
    files = [r for r in new["rows"] if r["codec"] == "gaussjax" and r["param"] == target
             and r["image"] in images]
    row = {"target": target, "gaussjax_bpp": float(np.mean([r["bpp"] for r in files])),
           "gaussjax": float(np.mean([r["psnr"] for r in files]))}
    for codec in codecs:
      row[codec] = float(np.mean([interp_psnr(new["rows"], r["image"], codec, r["bpp"])
                                  for r in files]))
    at_rate.append(row)
  enc_means = [float(np.mean([p[f"{k}_enc_s"] for p in per_image])) for k in ("old", "new")]
  print(f"images {images}")
  print(_machine.format_table(summary))
  print(_machine.format_table(per_image))
  print(f"mean BD-rate of the new gaussjax against the old: {mean:+.2f}%")
  rel = lambda p: os.path.relpath(os.path.abspath(p), os.path.dirname(_machine.RESULTS_DIR))
  meta = {"old": [rel(p) for p in args.old], "new": [rel(p) for p in args.new],
          "images": images, "old_gaussjax": old["meta"].get("gaussjax"),
          "new_gaussjax": new["meta"].get("gaussjax"),
          **{f"{k}_gaussjax_of": d["meta"]["gaussjax_of"]
             for k, d in (("old", old), ("new", new)) if "gaussjax_of" in d["meta"]},
          "bd_rates": summary, "psnr_at_rate": at_rate,
          "new_vs_old_mean_bd_rate_pct": mean,
          "mean_enc_s": {"old": enc_means[0], "new": enc_means[1],
                         "note": "separate runs: compare only where the machines and their "
                                 "loads were alike"}}
  _machine.write_results(args.name, per_image, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write(f"\n## BD-rate of gaussjax against each codec on kodim {images}\n\n"
            + _machine.format_table(summary)
            + f"\nMean BD-rate of the new gaussjax curve against the old one: {mean:+.2f}%\n"
            + "\n## PSNR (dB) of the new files at each target, mean over the images; the "
            "classical codecs interpolated at each file's bpp (nan: outside a codec's range)\n\n"
            + _machine.format_table(at_rate)
            + f"\nMean gaussjax encode time per image and target: old {enc_means[0]:.1f} s, "
            f"new {enc_means[1]:.1f} s (separate runs)\n")


if __name__ == "__main__":
  main()
