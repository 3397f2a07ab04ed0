"""Bit-identical files before and after a refactoring (issue 19).

Encodes the test images of ``tests/data`` (the SVGs, rasterised small) and
two small Kodak crops with a few settings (``bpp``, ``quality``, ``levels``,
tiled, ``encode_batch``), decodes the stored ``.gjx`` files of ``tests/data``,
and fits one image with ``fit_image``; records the SHA-256 of every output.
Fast settings (few fit steps): this checks that the code paths compute the
same thing, not the quality of the files.

  git archive OLD | tar -x -C /tmp/old   # each tree as a snapshot, run with one venv
  (cd /tmp/old && PYTHONPATH=. python benchmarks/bit_identical.py --record /tmp/before.json)
  (cd /tmp/new && PYTHONPATH=. python benchmarks/bit_identical.py --record /tmp/after.json)
  python benchmarks/bit_identical.py --compare /tmp/before.json /tmp/after.json \
      --before-label OLD --after-label NEW

``--compare`` writes ``benchmarks/results/bit_identical.json|md``: each output
with both hashes and whether they are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

import gaussjax  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(ROOT, "tests", "data")
KODAK = os.environ.get("GAUSSJAX_KODAK", "/work/shared/data/kodak")


def _sha(data) -> str:
  if not isinstance(data, bytes):
    data = np.ascontiguousarray(np.asarray(data)).tobytes()
  return hashlib.sha256(data).hexdigest()


def _images() -> dict[str, np.ndarray]:
  images = {}
  for name in ("shapes.svg", "logo.svg", "gradient_alpha.svg"):
    images[name] = gaussjax.load_image(os.path.join(TEST_DATA, name), svg_size=(40, 48))
  for name, (y, x) in (("kodim23.png", (200, 300)), ("kodim05.png", (120, 200))):
    full = gaussjax.load_image(os.path.join(KODAK, name))
    images[f"{name}[{y}:{y + 48},{x}:{x + 64}]"] = full[y:y + 48, x:x + 64]
  return images


def record() -> dict[str, str]:
  fast = dict(fit_steps=40, qat_steps=12)
  configs = {
      "bpp1": gaussjax.CodecConfig(bpp=1.0, **fast),
      "quality50": gaussjax.CodecConfig(quality=50, **fast),
      "levels3": gaussjax.CodecConfig(bpp=1.5, levels=3, **fast),
      "ste_q70": gaussjax.CodecConfig(quality=70, finetune="ste", rd_slope=None, **fast),
  }
  out = {}
  images = _images()
  for name, image in images.items():
    for tag, config in configs.items():
      out[f"encode {name} {tag}"] = _sha(gaussjax.encode(image, config))
  kodak = [v for k, v in images.items() if k.startswith("kodim")]
  for tag in ("bpp1", "quality50"):
    files = gaussjax.encode_batch(kodak, configs[tag])
    for k, data in enumerate(files):
      out[f"encode_batch kodak[{k}] {tag}"] = _sha(data)
  full = gaussjax.load_image(os.path.join(KODAK, "kodim23.png"))[200:296, 300:380]
  out["encode_tiled kodim23[96x80] tile=48 bpp1"] = _sha(gaussjax.encode_tiled(
      full, configs["bpp1"], tile=48, margin=8, progress=False))
  out["encode_tiled kodim23[96x80] tile=48 quality50"] = _sha(gaussjax.encode_tiled(
      full, configs["quality50"], tile=48, margin=8, progress=False))
  for name in ("v1_rgb.gjx", "v2_levels.gjx"):
    with open(os.path.join(TEST_DATA, name), "rb") as f:
      data = f.read()
    out[f"decode {name}"] = _sha(gaussjax.decode(data))
    out[f"decode_gaussians {name}"] = _sha(b"".join(
        np.asarray(a).tobytes() for a in gaussjax.decode_gaussians(data)[0]))
  g, _ = gaussjax.fit_image(images["shapes.svg"], 60,
                            gaussjax.FitConfig(steps=40, log_every=20))
  out["fit_image shapes.svg N=60"] = _sha(b"".join(np.asarray(a).tobytes() for a in g))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--record", help="write the hashes of this tree to this JSON file")
  parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                      help="compare two records; writes results/bit_identical.json|md")
  parser.add_argument("--before-label", default="before")
  parser.add_argument("--after-label", default="after")
  args = parser.parse_args()
  if args.record:
    t = time.perf_counter()
    hashes = record()
    with open(args.record, "w") as f:
      json.dump({"hashes": hashes, "seconds": round(time.perf_counter() - t, 1),
                 "load_average": os.getloadavg()}, f, indent=2)
    print(f"{len(hashes)} outputs in {time.perf_counter() - t:.0f} s -> {args.record}")
  if args.compare:
    before, after = (json.load(open(p))["hashes"] for p in args.compare)
    rows = [dict(output=k, before=before.get(k, "-")[:16], after=after.get(k, "-")[:16],
                 equal=before.get(k) == after.get(k)) for k in sorted(set(before) | set(after))]
    same = sum(r["equal"] for r in rows)
    meta = {"before": args.before_label, "after": args.after_label,
            "method": "each record from a git-archive snapshot of its commit (PYTHONPATH), "
                      "same venv and machine; full hashes in bit_identical_before/after.json",
            "identical": f"{same} of {len(rows)}"}
    _machine.write_results("bit_identical", rows, meta)
    print(_machine.format_table(rows))
    print(f"identical: {same} of {len(rows)}")


if __name__ == "__main__":
  main()
