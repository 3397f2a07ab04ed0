"""Would a transform-coded residual layer on top of the Gaussians pay? A probe before any format work.

The codec's gap to JPEG 2000 grows with rate (``results/rd_pos_24.md``), and
even the unquantised float fit at the same N stays below JPEG 2000
(``results/fit_lr_probe.md``), so the Gaussians themselves code fine
texture poorly. A common remedy is a second layer: code the residual
``image - decode(file)`` with a block transform. This probe measures that
layer at its best before building it:

* the residual, in an orthonormal colour basis (luma and two opponent
  channels, so the squared error is the RGB one), is cut into 8x8 blocks,
  transformed by an orthonormal DCT, and every coefficient is rounded to a
  multiple of one step ``q`` (``q = 2^(-e/4)``, e = 0..40, on pixel values in
  [0, 1]);
* its bits are the ideal code length of an adaptive arithmetic coder with a
  Krichevsky-Trofimov estimate per colour channel and frequency
  (64 × 3 contexts), plus the alphabet bound of each; a real coder needs a
  few more bytes, so the probe favours the layer;
* every file of the Gaussians (the defaults at each of ``--gauss-bpp``) is
  combined with every ``q``, and ``hybrid`` is the frontier of all these
  points and the files alone (each point kept only if no cheaper one is as
  good): the best split of the bytes between the two layers, chosen per
  rate with hindsight;
* ``dct_only`` codes the image itself (the residual of mid-grey) the same
  way, a JPEG-like coder with ideal adaptive entropy coding.

``hybrid`` also holds the ``dct_only`` points (no Gaussians at all) and,
between the files, the Gaussians' own curve (interpolated in log-rate: a file
encoded at that rate), so it is never below the files alone.
BD-rates (``bd_rate_linear``) are over 0.1-1.1 bpp against JPEG 2000 (its
rows in the rd results file of the same size, same CPU) and against the
Gaussian files alone; PSNR at a rate is interpolated in log-rate.

  python benchmarks/residual_probe.py --images 1,13,20 --scale 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from scipy.fft import dctn, idctn
from scipy.special import gammaln

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import load  # noqa: E402

import gaussjax  # noqa: E402

_BASIS = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], np.float64)
_BASIS /= np.linalg.norm(_BASIS, axis=1, keepdims=True)  # orthonormal: SSE is preserved
STEPS = tuple(2.0 ** (-e / 4) for e in range(41))
RATES = (0.12, 0.25, 0.5, 0.9)
# Classical anchors of the same images, measured by rd.py on this CPU.
ANCHORS = {2: "rd_pos_24.json", 1: "rd_pos_full.json"}


def _blocks(x: np.ndarray) -> np.ndarray:
  h, w = x.shape
  return x.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)


def _unblocks(b: np.ndarray, h: int, w: int) -> np.ndarray:
  return b.reshape(h // 8, w // 8, 8, 8).transpose(0, 2, 1, 3).reshape(h, w)


def kt_bits(symbols: np.ndarray) -> float:
  """Ideal adaptive code length (bits) of integer ``symbols`` under a KT estimator.

  The alphabet is ``[-m, m]``, ``m = max |symbol|``, sent with about
  ``2 log2(m + 1) + 1`` bits.
  """
  s = symbols.astype(np.int64).ravel()
  m = int(np.abs(s).max()) if s.size else 0
  if m == 0:
    return 1.0
  a = 2 * m + 1
  counts = np.bincount(s + m, minlength=a)
  nats = (gammaln(s.size + a / 2) - gammaln(a / 2)
          - np.sum(gammaln(counts + 0.5) - gammaln(0.5)))
  return float(nats / math.log(2) + 2 * math.log2(m + 1) + 1)


def residual_layer(residual: np.ndarray, q: float) -> tuple[np.ndarray, float]:
  """``(decoded residual, bits)`` of the 8x8 DCT layer at step ``q``."""
  h, w, c = residual.shape
  if h % 8 or w % 8 or c != 3:
    raise ValueError(f"the probe needs an RGB image with sides divisible by 8, not {residual.shape}")
  opp = residual @ _BASIS.T
  out = np.zeros_like(opp)
  bits = 0.0
  for ch in range(3):
    coef = dctn(_blocks(opp[..., ch]), axes=(1, 2), norm="ortho")
    sym = np.rint(coef / q).astype(np.int64)
    flat = sym.reshape(-1, 64)
    bits += sum(kt_bits(flat[:, k]) for k in range(64))
    out[..., ch] = _unblocks(idctn(sym * q, axes=(1, 2), norm="ortho"), h, w)
  return out @ _BASIS, bits


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
  return -10 * math.log10(float(np.mean((np.clip(x, 0, 1) - ref) ** 2)))


def _hull(points):
  """Points of the rate-PSNR set that no cheaper point beats."""
  out = []
  for r, p in sorted(points):
    if not out or p > out[-1][1]:
      out.append((r, p))
  return out


def _at(curve, rate: float) -> float:
  """PSNR interpolated in log-rate (nan outside the curve)."""
  r = [x for x, _ in curve]
  if not r or rate < r[0] or rate > r[-1]:
    return float("nan")
  return float(np.interp(math.log(rate), np.log(r), [p for _, p in curve]))


def bd_rate_linear(curve, anchor, lo=0.1, hi=1.1) -> float:
  """BD-rate (%) of ``curve`` against ``anchor``, both hulls, over ``lo..hi`` bpp.

  Log-rate is interpolated piecewise-linearly in PSNR (not ``rd.bd_rate``'s
  cubic fits, which swing on a hull of many close points) and averaged over
  the PSNR range the two curves share.
  """
  c = [(r, p) for r, p in curve if lo <= r <= hi]
  a = [(r, p) for r, p in anchor if lo <= r <= hi]
  if len(c) < 2 or len(a) < 2:
    return float("nan")
  d_lo, d_hi = max(c[0][1], a[0][1]), min(c[-1][1], a[-1][1])
  if d_hi <= d_lo:
    return float("nan")
  d = np.linspace(d_lo, d_hi, 256)
  lc = np.interp(d, [p for _, p in c], np.log([r for r, _ in c]))
  la = np.interp(d, [p for _, p in a], np.log([r for r, _ in a]))
  return float((np.exp(np.mean(lc - la)) - 1) * 100)


def _gauss_file(index: int, scale: int, bpp: float, ref: np.ndarray, cache: str | None) -> bytes:
  """The default encoder's file at ``bpp``, read from ``cache`` when there, else encoded (and kept)."""
  path = os.path.join(cache, f"k{index:02d}_s{scale}_{bpp}.gjx") if cache else None
  if path and os.path.exists(path):
    with open(path, "rb") as f:
      return f.read()
  data = gaussjax.encode(ref, gaussjax.CodecConfig(bpp=bpp))
  if path:
    os.makedirs(cache, exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
  return data


def probe_image(index: int, scale: int, gauss_bpp, anchors, cache=None) -> list[dict]:
  ref = np.asarray(load(index, scale), np.float64)
  h, w = ref.shape[:2]
  pixels = h * w
  dct_only = [(b / pixels, _psnr(d + 0.5, ref))
              for d, b in (residual_layer(ref - 0.5, q) for q in STEPS)]
  gauss, points = [], list(dct_only)
  for bpp in gauss_bpp:
    data = _gauss_file(index, scale, bpp, ref, cache)
    dec = np.asarray(gaussjax.decode(data), np.float64)
    rate = 8 * len(data) / pixels
    gauss.append((rate, _psnr(dec, ref)))
    points.append(gauss[-1])
    for q in STEPS:
      res, bits = residual_layer(ref - dec, q)
      points.append((rate + bits / pixels, _psnr(dec + res, ref)))
  gauss = _hull(gauss)
  # Between the files, the Gaussians alone reach their curve's interpolation
  # (encode at that rate); the hybrid keeps it where no residual point beats it.
  grid = np.exp(np.linspace(math.log(gauss[0][0]), math.log(gauss[-1][0]), 400))
  grid = np.clip(grid, gauss[0][0], gauss[-1][0])  # exp(log(r)) may round outside
  points += [(float(r), _at(gauss, r)) for r in grid]
  curves = {"gauss": gauss, "hybrid": _hull(points), "dct_only": _hull(dct_only)}
  for codec in ("jpeg2000", "jpeg"):
    curves[codec] = _hull((r["bpp"], r["psnr"]) for r in anchors
                          if r["image"] == index and r["codec"] == codec)
  rows = []
  for name, curve in curves.items():
    row = dict(image=index, curve=name, bd_vs_jpeg2000=bd_rate_linear(curve, curves["jpeg2000"]),
               bd_vs_gauss=bd_rate_linear(curve, gauss))
    row.update({f"psnr_{r}": _at(curve, r) for r in RATES})
    rows.append(row)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", default="1,13,20")
  parser.add_argument("--scale", type=int, default=2, choices=sorted(ANCHORS))
  parser.add_argument("--gauss-bpp", default="0.06,0.12,0.25,0.5,1.0")
  parser.add_argument("--cache", default=None,
                      help="folder for the Gaussian files (reused when present)")
  parser.add_argument("--name", default=None)
  args = parser.parse_args(argv)
  name = args.name or ("residual_probe" if args.scale == 2 else "residual_probe_full")
  images = [int(x) for x in args.images.split(",")]
  gauss_bpp = [float(x) for x in args.gauss_bpp.split(",")]
  with open(os.path.join(_machine.RESULTS_DIR, ANCHORS[args.scale])) as f:
    anchors = json.load(f)["rows"]
  rows = []
  for index in images:
    for row in probe_image(index, args.scale, gauss_bpp, anchors, args.cache):
      rows.append(row)
      print(row, flush=True)
  summary = []
  for curve in dict.fromkeys(r["curve"] for r in rows):
    mine = [r for r in rows if r["curve"] == curve]
    means = {}
    for k in mine[0]:
      if k not in ("image", "curve"):
        v = [r[k] for r in mine if not math.isnan(r[k])]
        means[k] = float(np.mean(v)) if len(v) == len(mine) else float("nan")
    summary.append({"curve": curve, **means})
  print(_machine.format_table(summary))
  ref = load(images[0], args.scale)
  meta = {"images": f"kodim {images} at {ref.shape[1]}x{ref.shape[0]} (downscaled by {args.scale})",
          "gauss_files": f"CodecConfig(bpp=b) defaults, b in {gauss_bpp}",
          "residual": "8x8 orthonormal DCT of the residual in an orthonormal opponent colour "
                      "basis, one step q = 2^(-e/4), e = 0..40; ideal adaptive (KT) code lengths",
          "anchors": ANCHORS[args.scale], "bd_range_bpp": [0.1, 1.1]}
  _machine.write_results(name, rows, meta)
  with open(os.path.join(_machine.RESULTS_DIR, f"{name}.md"), "a") as f:
    f.write("\n## Mean over images\n\n" + _machine.format_table(summary))


if __name__ == "__main__":
  main()
