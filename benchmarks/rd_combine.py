"""Joins ``benchmarks/rd.py`` runs on disjoint Kodak images into one BD-rate table.

``rd.py`` averages per-image BD-rates, so runs with the same settings on
disjoint images join exactly: the mean of all their per-image values. Each
part's machine, date, load and images are kept. Refuses parts with different
gaussjax settings, scales or overlapping images.

  python benchmarks/rd_combine.py rd_issue14 rd_issue14_19to24 --name rd_issue14_24
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("parts", nargs="+", help="result names in benchmarks/results")
  parser.add_argument("--name", required=True)
  args = parser.parse_args(argv)
  docs = _machine.join_results(
      [os.path.join(_machine.RESULTS_DIR, f"{part}.json") for part in args.parts])["parts"]
  settings = {d["meta"]["gaussjax"] for d in docs}
  if len(settings) != 1:
    raise SystemExit(f"parts differ in their gaussjax settings: {sorted(settings)}")
  images = [sorted({r["image"] for r in d["rows"]}) for d in docs]
  flat = [i for part in images for i in part]
  if len(flat) != len(set(flat)):
    raise SystemExit(f"parts overlap in their images: {images}")
  rows = []
  for ref in [b["reference"] for b in docs[0]["meta"]["bd_rate"]]:
    values = []
    for d in docs:
      entry = next(b for b in d["meta"]["bd_rate"] if b["reference"] == ref)
      values += [float(v) for v in entry["per_image"].split(", ")]
    rows.append(dict(reference=ref, images=len(values),
                     bd_rate_pct=sum(values) / len(values),
                     per_image=", ".join(f"{v:+.1f}" for v in values)))
  meta = dict(
      parts=[dict(name=p, images=i, machine=d["machine"], subset=d["meta"]["images"],
                  total_s=d["meta"].get("total_s")) for p, i, d in zip(args.parts, images, docs)],
      gaussjax=settings.pop(), images=sorted(flat),
      method="mean of the parts' per-image BD-rates (rd.py's own average)")
  _machine.write_results(args.name, rows, meta)
  print(_machine.format_table(rows))


if __name__ == "__main__":
  main()
