"""The README's pictures, made by the library: fit progression and RD plot.

  python benchmarks/figures.py                       # both figures
  python benchmarks/figures.py --only fit --steps 300 --gaussians 1500

1. ``docs/images/fit_progression.png``: one Kodak image (downscaled by
   ``--scale``) fitted from ``init_slic`` with a ``fit_step`` loop; renders at
   several steps with their PSNR, the original, and the fitted Gaussians drawn
   as ellipses. The numbers go to ``benchmarks/results/fit_progression.json|md``
   (with the machine) and the titles are read back from there.
2. ``docs/images/rd_kodak.png``: rate (bpp) against PSNR from the RD results
   of ``benchmarks/rd.py`` (``benchmarks/results/rd.json``, or ``--rd-results``; ``A.json+B.json``
   joins runs on disjoint images; rows with a codec
   name, ``bpp`` and ``psnr``, optionally ``image`` and a parameter ``param``),
   averaged per codec and parameter over images. ``rd.py`` measures the
   classical codecs on the same images; only when a results file has none are
   the codecs of ``--classic`` (the shared ``kodak_classic.csv``, full-size
   Kodak) drawn, labelled as such. Without an RD results file the figure is
   skipped with a message.

The PNGs are kept small (downscaled panels, 8-bit palette PNG when that keeps
them under ``--max-kb``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _machine import format_table, join_results, kodak_images, write_results  # noqa: E402

ROOT = os.path.dirname(HERE)
IMAGES = os.path.join(ROOT, "docs", "images")
RESULTS = os.path.join(HERE, "results")
KODAK_DIRS = (os.path.join(ROOT, "..", "shared", "data", "kodak"), "/work/shared/data/kodak")
CLASSIC_CSV = next((p for p in (os.path.join(ROOT, "..", "shared", "reference", "kodak_classic.csv"),
                                "/work/shared/reference/kodak_classic.csv") if os.path.exists(p)), None)


def _kodak(index: int, scale: int) -> np.ndarray:
  import gaussjax
  for directory in KODAK_DIRS:
    path = os.path.join(directory, f"kodim{index:02d}.png")
    if os.path.exists(path):
      image = gaussjax.load_image(path)
      if scale > 1:  # box downscale
        h, w = image.shape[0] // scale * scale, image.shape[1] // scale * scale
        image = image[:h, :w].reshape(h // scale, scale, w // scale, scale, -1).mean((1, 3))
      return np.ascontiguousarray(image, np.float32)
  raise FileNotFoundError(f"kodim{index:02d}.png not found in {KODAK_DIRS}")


def _save(fig, path: str, max_kb: int) -> None:
  """Saves ``fig`` as PNG; quantises to a 256-colour palette if it is over ``max_kb``."""
  from PIL import Image
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  data = buffer.getvalue()
  if len(data) > max_kb * 1024:
    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  print(f"wrote {os.path.relpath(path, ROOT)} ({len(data) / 1024:.0f} KB)")


def fit_progression(args) -> None:
  import jax
  import jax.numpy as jnp
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.collections import EllipseCollection
  from matplotlib.patches import Rectangle

  import gaussjax

  image = _kodak(args.image, args.scale)
  height, width, _ = image.shape
  snapshots = sorted({0, *(int(s) for s in args.snapshots.split(",") if int(s) < args.steps), args.steps})
  config = gaussjax.FitConfig(steps=args.steps, backend=args.backend)
  step_fn = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))

  start = time.perf_counter()
  init = gaussjax.init_slic(image, args.gaussians, key=jax.random.key(0))
  init_seconds = time.perf_counter() - start
  state = gaussjax.init_fit_state(init, config)
  plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
  renders, rows = {}, []
  last_plan = 0
  while True:
    done = int(state.step)
    if done in snapshots and done not in renders:
      out = jnp.clip(gaussjax.render(state.gaussians, height, width, backend=config.backend), 0.0, 1.0)
      renders[done] = np.asarray(out)
      rows.append({"step": done, "psnr": float(gaussjax.psnr(out, image)),
                   "seconds": time.perf_counter() - start})
      print(f"step {done:5d}  PSNR {rows[-1]['psnr']:.2f} dB  {rows[-1]['seconds']:.1f} s", flush=True)
    if done >= args.steps:
      break
    if done - last_plan >= config.replan_every:
      plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
      last_plan = done
    state, metrics = step_fn(state, image, config=config, plan=plan)
    if bool(metrics["overflow"]):
      plan = gaussjax.make_plan(state.gaussians, height, width, backend=config.backend)
      last_plan = int(state.step)
  fitted = state.gaussians
  meta = {"image": f"kodim{args.image:02d}", "scale": args.scale, "size": f"{width}x{height}",
          "gaussians": args.gaussians, "steps": args.steps,
          "backend": gaussjax.default_backend() if config.backend == "auto" else config.backend,
          "init_slic_seconds": round(init_seconds, 2)}
  json_path, _ = write_results("fit_progression", rows, meta)
  print(format_table(rows))

  # The figure: every title number read back from the results file.
  with open(json_path) as f:
    saved = json.load(f)
  psnr_at = {r["step"]: r["psnr"] for r in saved["rows"]}
  panels = [(f"step {s}" + (" (SLIC init)" if s == 0 else ""), renders[s], psnr_at[s]) for s in snapshots]
  cols = (len(panels) + 3) // 2  # two rows: the renders, then the original and the ellipses
  aspect = height / width
  fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 2 * (3.2 * aspect + 0.4)), dpi=args.dpi)
  axes = list(axes.ravel())
  for ax in axes[len(panels) + 2:]:
    ax.remove()
  axes = axes[:len(panels) + 2]
  for ax, (title, img, value) in zip(axes, panels):
    ax.imshow(img, interpolation="lanczos")
    ax.set_title(f"{title}: {value:.2f} dB", fontsize=9)
  axes[-2].imshow(image, interpolation="lanczos")
  axes[-2].set_title(f"original (kodim{args.image:02d}, {width}x{height})", fontsize=9)
  cov = np.asarray(gaussjax.covariances(fitted.chol))
  eigval, eigvec = np.linalg.eigh(cov)
  radii = np.sqrt(np.maximum(eigval, 0.0))
  angles = np.degrees(np.arctan2(eigvec[:, 1, 1], eigvec[:, 0, 1]))
  colors = np.clip(np.asarray(fitted.colors)[:, :3], 0.0, 1.0)
  ax = axes[-1]
  ax.imshow(np.zeros_like(image))  # black canvas: each Gaussian a translucent ellipse in its colour
  ellipses = ax.add_collection(EllipseCollection(
      2 * radii[:, 1], 2 * radii[:, 0], angles, units="xy", offsets=np.asarray(fitted.means),
      offset_transform=ax.transData, facecolors=np.concatenate([colors, np.full((len(colors), 1), 0.5)], 1),
      edgecolors=colors, linewidths=0.4))
  ellipses.set_clip_path(Rectangle((0, 0), width, height, transform=ax.transData))  # image only
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.set_title(f"the {args.gaussians} fitted Gaussians (1σ)", fontsize=9)
  for ax in axes:
    ax.axis("off")
  fig.subplots_adjust(left=0.005, right=0.995, bottom=0.015, top=0.93, wspace=0.03, hspace=0.16)
  _save(fig, os.path.join(IMAGES, "fit_progression.png"), args.max_kb)
  plt.close(fig)


def _first(row: dict, *keys):
  for key in keys:
    if key in row and row[key] not in (None, ""):
      return row[key]
  return None


def _average_curves(rows, codec_keys, param_keys):
  """``{codec: [(bpp, psnr, images)]}``: mean over images per (codec, parameter)."""
  groups = defaultdict(list)
  for row in rows:
    codec = _first(row, *codec_keys)
    bpp, psnr = _first(row, "bpp", "actual_bpp", "bpp_actual"), _first(row, "psnr", "psnr_db")
    if codec is None or bpp is None or psnr is None:
      continue
    param = _first(row, *param_keys)
    if param is None and _first(row, "image") is None:
      param = len(groups[str(codec), None])  # one point per row
    groups[str(codec), str(param)].append((float(bpp), float(psnr)))
  curves = defaultdict(list)
  for (codec, _), points in groups.items():
    if not points:
      continue
    b, p = np.mean(points, axis=0)
    curves[codec].append((float(b), float(p), len(points)))
  return {codec: sorted(points) for codec, points in curves.items()}


def _short_images(text: str) -> str:
  """``"kodim [1, 2, ..., 24] at ..."`` as ``"24 Kodak images at ..."`` (a title that fits)."""
  parsed = kodak_images(text)
  if parsed and len(parsed[0]) > 6:
    return f"{len(parsed[0])} Kodak images{parsed[1].split(' (')[0]}"
  return text


def _load_rd(name: str) -> tuple[list, dict]:
  """Rows and meta of ``benchmarks/results/NAME``; ``A.json+B.json``: runs on disjoint images
  joined into one (``_machine.join_results``: rows of both, the first's meta with the images
  of all)."""
  joined = join_results([os.path.join(RESULTS, part) for part in name.split("+")])
  return joined["rows"], joined["meta"]


def rd_plot(args) -> None:
  names = getattr(args, "rd_results", "rd.json").split(",")
  files = [name for name in names
           if all(os.path.exists(os.path.join(RESULTS, part)) for part in name.split("+"))]
  if not files:
    print(f"rd_kodak.png skipped: no {names} in benchmarks/results (run benchmarks/rd.py first)")
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=args.dpi)
  subtitles, classical_seen, drawn = [], False, 0
  for path in files:
    rows, meta = _load_rd(path)
    name = "+".join(os.path.splitext(part)[0] for part in path.split("+"))
    curves = _average_curves(rows, ("codec", "method"), ("param", "target_bpp", "bpp_target", "quality"))
    if not curves:
      print(f"{path}: no rows with a codec, bpp and psnr; skipped")
      continue
    if isinstance(meta.get("images"), str):
      subtitles.append(_short_images(meta["images"]))
    # A codec run on only some of the images (rd.py --compare-old) would be a
    # mean over other pictures: left out.
    covered = {c: {r.get("image") for r in rows if r.get("codec") == c} for c in curves}
    everyone = set().union(*covered.values())
    for codec in [c for c in curves if covered[c] != everyone]:
      print(f"{codec}: on {len(covered[codec])} of {len(everyone)} images, not drawn")
      del curves[codec]
    for codec, points in curves.items():
      ours = "gauss" in codec.lower()
      classical_seen |= not ours
      label = codec if len(files) == 1 else f"{codec} ({name})"
      points = [p for p in points if p[0] <= args.max_bpp]
      ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if ours else ".",
              lw=2.2 if ours else 1.2, color="black" if ours and len(files) == 1 else None,
              label=label, zorder=3 if ours else 2)
      drawn += 1
    print(f"{path}: " + ", ".join(f"{c} ({len(p)} points)" for c, p in curves.items()))
  if not drawn:
    plt.close(fig)
    print("rd_kodak.png skipped: the RD results have no usable rows")
    return
  # The shared classical-codec table is on full-size Kodak: drawn only when the RD
  # results have no classical codec of their own, and labelled as such.
  if not classical_seen and args.classic and os.path.exists(args.classic):
    with open(args.classic) as f:
      classic = _average_curves(list(csv.DictReader(f)), ("codec",), ("param",))
    for codec, points in classic.items():
      if args.classic_codecs and codec not in args.classic_codecs.split(","):
        continue
      points = [p for p in points if p[0] <= args.max_bpp]
      ax.plot([p[0] for p in points], [p[1] for p in points], ls="--", lw=1, marker=".", ms=3,
              label=f"{codec} (24 Kodak images, 768x512)")
  ax.set_xlim(0, args.max_bpp)
  ax.set_xlabel("bits per pixel")
  ax.set_ylabel("PSNR (dB, RGB), mean over images")
  title = "Kodak: rate-distortion"
  if subtitles:
    title += "\n" + "; ".join(dict.fromkeys(subtitles))
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, os.path.join(IMAGES, "rd_kodak.png"), args.max_kb)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", choices=("fit", "rd"), default=None, help="make one figure only")
  parser.add_argument("--image", type=int, default=23, help="Kodak index of the fit figure")
  parser.add_argument("--scale", type=int, default=2, help="downscale factor (2: 384x256)")
  parser.add_argument("--gaussians", type=int, default=3000)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--snapshots", default="20,100", help="steps to show besides 0 and the last")
  parser.add_argument("--backend", default="auto")
  parser.add_argument("--classic", default=CLASSIC_CSV, help="classical codecs CSV (kodak_classic.csv)")
  parser.add_argument("--classic-codecs", default="jpeg,webp,jpeg2000,avif")
  parser.add_argument("--rd-results", default="rd.json",
                      help="rd.py results files in benchmarks/results to plot, comma-separated; "
                           "A.json+B.json: runs on disjoint images joined into one")
  parser.add_argument("--max-bpp", type=float, default=2.0)
  parser.add_argument("--dpi", type=int, default=110)
  parser.add_argument("--max-kb", type=int, default=280, help="PNG size limit before palette quantisation")
  args = parser.parse_args(argv)
  if args.only in (None, "fit"):
    fit_progression(args)
  if args.only in (None, "rd"):
    rd_plot(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
