"""Two refinements of per-Gaussian steps, probed on real files before any format work.

Per-Gaussian position steps (``CodecConfig.pos_levels``) pay because a
position error costs about ``|c|² tr Σ / (2 sqrt det Σ)`` of SSE per unit
of its square, and that spreads over orders of magnitude between Gaussians.
An error of the Cholesky latents (``log l11``, ``log l22``: relative;
the shear: scale-free) costs about ``|c|² sqrt det Σ`` per unit of its
square, which also spreads. And a thin Gaussian's position error costs
``|c|² Σyy / sqrt det Σ`` per unit of square along x and ``|c|² Σxx / sqrt
det Σ`` along y, which the one step per Gaussian averages. The probe asks
whether coarser steps where the error costs least would buy more bytes
than they cost PSNR:

* ``chol``: it encodes each image with the defaults, then re-rounds the
  file's Cholesky symbols of each Gaussian to a multiple ``2^(K - r)`` of its step, ``r =
clip(K + floor(log4(s / t) + 1/2), 0, K)`` for a sensitivity ``s`` and a
threshold ``t`` (a multiple of the mean ``s``), exactly as the position rule
does. Bits: the codec's own stream coder and model choice
  (``_bitstream.choose_model``), one model per step class (symbols divided
  by their multiple).
* ``pos_axis``: each axis of a position gets its own level from its own
  sensitivity (the file's ``pos_ref`` and K), never finer than the file's
  (the file holds no finer bits); bits: one refinement bit less per level
  coarser.

Each row is the PSNR change of the decoded render (real), the bit change,
and a score ``dPSNR - slope · log2(new bytes / old
bytes)`` at the encoder's ``rd_slope``: positive means the rule pays at the
operating point. Nothing is re-fitted after the re-rounding, so a rule's
score is a little pessimistic (``chol uniform_x2``, every Cholesky step
doubled, shows what the fine-tuning would then have to win back).

  python benchmarks/codec_probe.py --images 1,13 --bpp 0.5,1.0
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _bitstream as bs  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402
from gaussjax.codec import _quantize as qz  # noqa: E402
from gaussjax.core._gaussians import rendered_covariance  # noqa: E402

KEYS = ("c2_sqrtdet", "c2", "c2_trace")
LEVELS = (1, 2)
THRESHOLDS = (0.25, 1.0, 4.0)


def _stream_bits(symbols: np.ndarray) -> float:
  """Bits of one symbol stream as the file codes it (model table included)."""
  symbols = np.asarray(symbols, np.int64)
  if not len(symbols):
    return 0.0
  model = bs.choose_model(symbols)
  return 8.0 * bs.model_bytes(model) + float(bs.coded_bits(symbols, model))


def _chol_bits(q: np.ndarray, mult: np.ndarray) -> float:
  """Bits of the three Cholesky streams, one model per step class."""
  return sum(_stream_bits(q[mult == m, j] // m) for m in np.unique(mult) for j in range(3))


def _psnr(g, h, w, ref) -> float:
  out = np.clip(np.asarray(_codec.render_safe(g, h, w)), 0, 1)
  return float(gaussjax.psnr(out, ref))


def _sensitivity(key: str, chol: np.ndarray, colors: np.ndarray) -> np.ndarray:
  sxx, _, syy, det = rendered_covariance(chol)
  c2 = np.sum(colors * colors, -1)
  return {"c2_sqrtdet": c2 * np.sqrt(det), "c2": c2, "c2_trace": c2 * (sxx + syy) / 2}[key]


def probe(data: bytes, ref: np.ndarray, slope: float) -> list[dict]:
  """The rows of one file: every rule's bit and PSNR change and its score."""
  header, _ = _codec._read_header(data)
  steps = header.steps
  g, (h, w) = _codec.decode_single(data)
  sym, order = qz.quantize(g, h, w, steps)
  g = type(g)(*(np.asarray(x)[order] for x in g))
  q = sym.chol
  n = len(q)
  ones = np.ones(n, np.int64)
  bits0 = _chol_bits(q, ones)
  psnr0 = _psnr(g, h, w, ref)
  chol = np.asarray(g.chol, np.float64)
  colors = np.asarray(g.colors, np.float64)

  def row(rule, mult):
    qn = np.rint(q / mult[:, None]).astype(np.int64) * mult[:, None]
    logs = qn[:, 0::2].astype(np.float64)
    _, new_chol, _ = qz._reconstruct(logs, logs, qn[:, 1].astype(np.float64),
                                     np.zeros((n, len(steps.color))), h, w, steps, np)
    p = _psnr(g._replace(chol=new_chol.astype(np.float32)), h, w, ref)
    dbits = _chol_bits(qn, mult) - bits0
    ratio = (8 * len(data) + dbits) / (8 * len(data))
    return dict(rule=rule, coarse_share=float(np.mean(mult > 1)), dbits_per_gaussian=dbits / n,
                dpsnr_db=p - psnr0, score_db=p - psnr0 - slope * math.log2(ratio))

  rows = [row("chol uniform_x2", 2 * ones)]
  for key in KEYS:
    s = np.maximum(_sensitivity(key, chol, colors), 1e-30)
    for k in LEVELS:
      for t in THRESHOLDS:
        r = np.clip(k + np.floor(0.5 * np.log2(s / (t * s.mean())) + 0.5), 0, k)
        rows.append(row(f"chol {key} K={k} t={t:g}·mean", (2 ** (k - r)).astype(np.int64)))
  rows += _position_rows(data, ref, slope, g, sym, steps, h, w, psnr0)
  return rows


def _position_rows(data, ref, slope, g, sym, steps, h, w, psnr0) -> list[dict]:
  """``pos_axis`` rows: per-axis position levels, the threshold times 1, 1/2, 1/4."""
  k = steps.pos_levels
  if not k:
    return []
  current = qz.symbol_multiple(sym, h, w, steps)
  sxx, _, syy, det = rendered_covariance(np.asarray(g.chol, np.float64))
  c2 = np.sum(np.asarray(g.colors, np.float64) ** 2, -1)
  pos = sym.pos.astype(np.float64)
  n = len(pos)
  rows = []
  for boost in (1.0, 0.5, 0.25):
    mult = []
    for s in (c2 * syy / np.sqrt(det), c2 * sxx / np.sqrt(det)):  # x, y
      r = np.clip(k + np.floor(0.5 * np.log2(np.maximum(boost * s, 1e-30) / steps.pos_ref)
                               + 0.5), 0, k)
      mult.append(np.maximum(2.0 ** (k - r), current))
    mult = np.stack(mult, -1)
    means = np.rint(pos / mult) * mult * steps.pos - qz.margin(h, w)
    p = _psnr(g._replace(means=means.astype(np.float32)), h, w, ref)
    dbits = -float(np.sum(np.log2(mult) - np.log2(current)[:, None]))
    ratio = (8 * len(data) + dbits) / (8 * len(data))
    rows.append(dict(rule=f"pos_axis t={1 / boost:g}·pos_ref",
                     coarse_share=float(np.mean(mult > current[:, None])),
                     dbits_per_gaussian=dbits / n, dpsnr_db=p - psnr0,
                     score_db=p - psnr0 - slope * math.log2(ratio)))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="1,13")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", default="0.5,1.0")
  parser.add_argument("--name", default="codec_probe")
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  slope = gaussjax.CodecConfig().rd_slope
  rows = []
  for index in images:
    ref = load(index, args.scale)
    h, w = ref.shape[:2]
    for bpp in targets:
      t = time.perf_counter()
      data = gaussjax.encode(ref, gaussjax.CodecConfig(bpp=bpp))
      enc_s = time.perf_counter() - t
      for r in probe(data, ref, slope):
        rows.append(dict(image=index, target=bpp, bytes=len(data), **r, enc_s=enc_s))
        print(rows[-1], flush=True)
  summary = []
  for rule in dict.fromkeys(r["rule"] for r in rows):
    mine = [r for r in rows if r["rule"] == rule]
    summary.append(dict(rule=rule, dbits_per_gaussian=float(np.mean([r["dbits_per_gaussian"] for r in mine])),
                        dpsnr_db=float(np.mean([r["dpsnr_db"] for r in mine])),
                        score_db=float(np.mean([r["score_db"] for r in mine])),
                        best_score_db=float(np.max([r["score_db"] for r in mine]))))
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale}, Lanczos)",
          "targets": targets, "slope_db_per_doubling": slope,
          "encoder": "CodecConfig defaults (bpp only)"}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Mean over images and rates\n\n" + _machine.format_table(summary))


if __name__ == "__main__":
  main()
