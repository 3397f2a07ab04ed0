"""Where the gap to JPEG 2000 lies: the fit, its coding, or what a decoder could add.

Issue 14 (close the gap to JPEG 2000). For each image and target this encodes
with the default ``CodecConfig`` and splits the file's PSNR deficit against
JPEG 2000 at the same bytes into parts, all measured on that one encode:

- ``coding_db``: the float Gaussians that the fit handed to the fine-tuning
  (captured from ``_codec._finetune``'s first call), rendered without
  quantisation, minus the file. What all the quantisation, fine-tuning and
  pruning lose; an upper bound on what any better quantiser or fine-tuning
  could win back at this N.
- ``converge_db`` (with ``--long-steps``): a plain float fit (``_fit_float``,
  SLIC then ``gaussjax.fit``) to the same N for ``--long-steps`` steps, minus
  the encode's float fit. How far the encode's fit is from converged, or
  negative where the longer plain fit ends lower (``fit_length_probe.py``
  looks into that).
- ``j2k_minus_float_db``: JPEG 2000 at the file's rate (Pillow/OpenJPEG as in
  ``rd.py``, interpolated in log-rate) minus the encode's float fit: what
  even an unquantised representation at this N leaves behind.

And two things a decoder could add to the same file, at their ideal:

- ``postfilter_db``: a least-squares ``k × k`` filter per channel plus a bias,
  fitted on the decoded image against the original (the best linear post-filter
  the encoder could send; k = 3, 5, 7, the best kept), and ``postfilter_net_db``
  after charging its coefficients at 16 bits each at ``--slope`` dB per doubling
  of the bytes.
- ``context_pct``: the bits that context-conditioned entropy models would save,
  in % of the file. Each symbol stream (the three Cholesky latents and the
  colours) is coded, as the file does, by the cheapest of the codec's models
  (``choose_model``, its own bytes included), then again (a) split into 2 or 4
  classes by a decoder-side feature and (b) after subtracting a linear
  prediction from features (coefficients charged 16 bits each), the best of the
  three kept per stream. Features are ones the decoder has before the stream:
  the distance to the 4th nearest Gaussian (positions are decoded first), the
  same Gaussian's earlier latents and colours, and for a colour the mean of the
  same colour over the Gaussians among its 8 nearest that come earlier in
  Morton (decode) order. Savings are ideal (two-pass, adaptive to the file);
  ``context_net_db`` converts them to dB at ``--slope``.

Run: ``python benchmarks/gap_probe.py`` (kodim01/13/20 at 384x256, 0.25/0.5/1.0
bpp, with 8,000-step float fits), or ``--scale 1 --images 1,13 --bpp 0.5,1.0
--long-steps 0 --name gap_probe_full``. Writes ``results/<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
import rd  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.codec import _bitstream as bs  # noqa: E402
from gaussjax.codec import _codec  # noqa: E402
from gaussjax.codec import _quantize as qz  # noqa: E402

COEF_BITS = 16  # charged per post-filter or prediction coefficient


def psnr(out, ref) -> float:
  out = np.clip(np.asarray(out, np.float64), 0, 1)
  return float(-10 * math.log10(np.mean((out - np.asarray(ref, np.float64)) ** 2)))


def encode_capturing_float(ref: np.ndarray, bpp: float):
  """``(file bytes, float Gaussians handed to the fine-tuning, seconds)``."""
  captured = []
  original = _codec._finetune

  def spy(g, *args, **kwargs):
    if not captured:
      captured.append(g)
    return original(g, *args, **kwargs)

  _codec._finetune = spy
  try:
    t = time.perf_counter()
    data = gaussjax.encode(ref, gaussjax.CodecConfig(bpp=bpp))
    seconds = time.perf_counter() - t
  finally:
    _codec._finetune = original
  return data, captured[0], seconds


def postfilter(dec: np.ndarray, ref: np.ndarray, k: int) -> np.ndarray:
  """The least-squares ``k × k`` filter plus bias per channel, applied to ``dec``."""
  h, w, c = dec.shape
  r = k // 2
  pad = np.pad(dec, ((r, r), (r, r), (0, 0)), mode="edge")
  out = np.empty_like(dec)
  for ch in range(c):
    cols = [pad[dy:dy + h, dx:dx + w, ch].ravel() for dy in range(k) for dx in range(k)]
    a = np.stack(cols + [np.ones(h * w)], 1)
    x, *_ = np.linalg.lstsq(a, ref[..., ch].ravel(), rcond=None)
    out[..., ch] = (a @ x).reshape(h, w)
  return out


def stream_bits(s: np.ndarray) -> float:
  m = bs.choose_model(s)
  return 8 * bs.model_bytes(m) + bs.coded_bits(np.asarray(s, np.int64), m)


def classed_bits(s: np.ndarray, feature: np.ndarray, classes: int) -> float:
  """Each class of ``feature`` (equal-count bins) coded by its own model; edges charged."""
  if classes == 1:
    return stream_bits(s)
  edges = np.quantile(feature, np.linspace(0, 1, classes + 1)[1:-1])
  cls = np.searchsorted(edges, feature)
  return (sum(stream_bits(s[cls == k]) for k in range(classes) if (cls == k).any())
          + COEF_BITS * (classes - 1))


def predicted_bits(s: np.ndarray, features: np.ndarray, classify: np.ndarray,
                   classes: int) -> float:
  a = np.concatenate([features, np.ones((len(s), 1))], 1)
  x, *_ = np.linalg.lstsq(a, s.astype(np.float64), rcond=None)
  residual = s - np.round(a @ x).astype(np.int64)
  return classed_bits(residual, classify, classes) + COEF_BITS * a.shape[1]


def context_saving(data: bytes) -> tuple[float, float]:
  """``(bits of the shape and colour streams, bits context models would save)``."""
  header, _ = _codec._read_header(data)
  g, (h, w) = _codec.decode_single(data)
  sym, _ = qz.quantize(g, h, w, header.steps)
  pos = np.asarray(g.means, np.float64)
  chol, col = np.asarray(sym.chol), np.asarray(sym.color)
  n = len(pos)
  tree = cKDTree(pos)
  dist, _ = tree.query(pos, min(5, n))
  density = np.log(dist[:, -1] + 1e-3)
  codes, _ = qz.position_codes(sym.pos, h, w, header.steps)
  rank = np.empty(n, np.int64)
  rank[np.argsort(codes, kind="stable")] = np.arange(n)
  _, near = tree.query(pos, min(9, n))
  near = near[:, 1:]
  earlier = rank[near] < rank[:, None]

  def earlier_mean(v):
    m = (v[near] * earlier).sum(1) / np.maximum(earlier.sum(1), 1)
    return np.where(earlier.any(1), m, np.median(v))

  size = chol[:, 0] + chol[:, 2]
  streams = [(chol[:, 0], [density], density), (chol[:, 1], [density, chol[:, 0]], density),
             (chol[:, 2], [density, chol[:, 0], np.abs(chol[:, 1])], density)]
  for k in range(col.shape[1]):
    streams.append((col[:, k], [size, earlier_mean(col[:, k])] + [col[:, j] for j in range(k)],
                    size))
  base = saved = 0.0
  for s, feats, classify in streams:
    plain = stream_bits(s)
    best = min([plain] + [classed_bits(s, classify, m) for m in (2, 4)]
               + [predicted_bits(s, np.stack(feats, 1), classify, m) for m in (1, 2, 4)])
    base += plain
    saved += plain - best
  return base, saved


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="1,13,20")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--bpp", default="0.25,0.5,1.0")
  parser.add_argument("--long-steps", type=int, default=8000,
                      help="steps of the plain float fit to the same N (0: skip it)")
  parser.add_argument("--slope", type=float, default=2.2,
                      help="dB per doubling of the bytes, to price bytes in dB")
  parser.add_argument("--name", default="gap_probe")
  args = parser.parse_args(argv)
  images = [int(x) for x in args.images.split(",")]
  targets = [float(x) for x in args.bpp.split(",")]
  if args.long_steps < 0:
    parser.error("--long-steps must be >= 0")
  rows = []
  for index in images:
    ref = rd.load(index, args.scale)
    h, w = ref.shape[:2]
    j2k = []
    rd.run_classic("jpeg2000", ref, index, j2k)
    for bpp in targets:
      data, g_float, seconds = encode_capturing_float(ref, bpp)
      rate = 8 * len(data) / (h * w)
      dec = np.asarray(gaussjax.decode(data), np.float64)
      file_db = psnr(dec, ref)
      float_db = psnr(_codec.render_safe(g_float, h, w), ref)
      row = dict(image=index, target=bpp, bytes=len(data), bpp=rate,
                 n_float=int(g_float.num_gaussians),
                 n_file=int(_codec.decode_single(data)[0].num_gaussians),
                 file_db=file_db, float_db=float_db, coding_db=float_db - file_db)
      if args.long_steps:
        config = gaussjax.CodecConfig(bpp=bpp, fit_steps=args.long_steps)
        g_long = _codec._fit_float(_codec._as_image(ref), row["n_float"], config)
        row["long_db"] = psnr(_codec.render_safe(g_long, h, w), ref)
        row["converge_db"] = row["long_db"] - float_db
      row["j2k_db"] = rd.interp_psnr(j2k, index, "jpeg2000", rate)
      row["gap_db"] = row["j2k_db"] - file_db
      row["j2k_minus_float_db"] = row["j2k_db"] - float_db
      gains = {k: psnr(postfilter(dec, ref, k), ref) - file_db for k in (3, 5, 7)}
      best_k = max(gains, key=lambda k: gains[k] - args.slope * math.log2(
          1 + COEF_BITS * (k * k + 1) * dec.shape[2] / 8 / len(data)))
      row["postfilter_k"] = best_k
      row["postfilter_db"] = gains[best_k]
      row["postfilter_net_db"] = gains[best_k] - args.slope * math.log2(
          1 + COEF_BITS * (best_k * best_k + 1) * dec.shape[2] / 8 / len(data))
      base, saved = context_saving(data)
      row["context_pct"] = 100 * saved / (8 * len(data))
      row["context_net_db"] = -args.slope * math.log2(1 - saved / (8 * len(data)))
      row["enc_s"] = seconds
      rows.append(row)
      print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
  keys = ["gap_db", "coding_db", "converge_db", "j2k_minus_float_db", "postfilter_db",
          "postfilter_net_db", "context_pct", "context_net_db"]
  summary = []
  for bpp in targets + [None]:
    mine = [r for r in rows if bpp is None or r["target"] == bpp]
    entry = {"target": "all" if bpp is None else bpp}
    entry.update({k: float(np.mean([r[k] for r in mine])) for k in keys if k in mine[0]})
    summary.append(entry)
  print(_machine.format_table(summary))
  meta = {"images": f"kodim {images} at {w}x{h} (downscaled by {args.scale}, Lanczos)",
          "targets": targets, "config": "CodecConfig defaults",
          "long_steps": args.long_steps, "slope_db_per_doubling": args.slope,
          "coef_bits": COEF_BITS,
          "jpeg2000": "Pillow/OpenJPEG as rd.py (irreversible, mct=1, rates mode), "
                      "PSNR interpolated in log-rate at the file's bpp"}
  _machine.write_results(args.name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{args.name}.md"), "a") as f:
    f.write("\n## Means (per target, then over all)\n\n" + _machine.format_table(summary))


if __name__ == "__main__":
  main()
