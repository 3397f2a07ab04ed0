"""A 24 MP photo encoded and decoded in bounded memory (issue 17), on this machine.

The photo: Kodak kodim23 (768x512) upscaled 7.8125x with Pillow's Lanczos
filter to 6000x4000 (24 MP, the size of the issue's phone photo), saved as
PNG. An upscaled photo is smoother than a native one (its fine detail is
interpolated), which flatters PSNR; the memory and time do not depend on it.

Runs, as a user would, in fresh processes (``python -m gaussjax.cli._cli``):

1. ``gaussjax encode big.png --bpp 0.5`` *without* tiles: must be refused up
   front by the memory guard (time to the error and its message recorded);
2. ``gaussjax encode big.png --bpp 0.5 --tile T --margin M --fit-steps F
   --qat-steps Q``: wall time, peak RSS (the child's own ``VmHWM``), time to
   the first progress line on stderr;
3. ``gaussjax decode big.gjx -o decoded.png``: wall time, peak RSS;
4. PSNR of the decoded image against the photo over everything, over a band
   of ``±margin`` pixels around the inner tile boundaries (where crops blend)
   and over the rest.

Optionally (``--memory-model``) the peak RSS of a one-piece ``gaussjax.encode``
at a few sizes, in fresh processes, which ``gaussjax.codec._tiles`` bounds by
``FIT_BASE_MB + FIT_BYTES_PER_PIXEL * pixels``.

  python benchmarks/big.py                 # ~25-40 min on the 2-core CPU
  python benchmarks/big.py --scale 3 --tile 512   # a quick 2304x1536 run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from gaussjax.codec import _tiles  # noqa: E402

KODAK = os.environ.get("KODAK_DIR", "/work/shared/data/kodak")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Runs a Python module or -c code and, at exit, reports the process's own peak
# RSS: VmHWM of /proc/self/status. (Not ru_maxrss: Linux carries the parent's
# RSS at fork into the child's ru_maxrss across exec, so it would be at least
# what this benchmark process holds.)
PEAK_WRAPPER = """
import atexit, runpy, sys
def _peak():
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        sys.stderr.write('__VmHWM_kB ' + line.split()[1] + chr(10))
atexit.register(_peak)
if sys.argv[1] == '-c':
  code = sys.argv[2]
  sys.argv = ['-c'] + sys.argv[3:]
  exec(compile(code, '<child>', 'exec'), {'__name__': '__main__'})
else:
  sys.argv = sys.argv[1:]
  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def run_child(argv: list[str], *, timeout: float | None = None) -> dict:
  """Runs ``python ARGS`` (``-m MODULE ...`` or ``-c CODE ...``) in a fresh process.

  Returns wall seconds, the child's own peak RSS (MB, VmHWM), rc, stderr and
  the time of its first stderr line.
  """
  if argv[0] == "-m":
    argv = argv[1:]
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-c", PEAK_WRAPPER] + argv, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  first = {}
  err_lines = []

  peak = {}

  def read_err():
    for line in proc.stderr:
      if line.startswith("__VmHWM_kB "):
        peak["kb"] = int(line.split()[1])
        continue
      first.setdefault("t", time.perf_counter() - start)
      err_lines.append(line)
      sys.stderr.write("  | " + line)

  reader = threading.Thread(target=read_err, daemon=True)
  reader.start()
  out = proc.stdout.read()
  proc.wait()
  reader.join(timeout=5)
  return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak.get("kb", 0) / 1024,
          "rc": proc.returncode, "stdout": out, "stderr": "".join(err_lines),
          "first_output_s": first.get("t")}


def make_photo(path: str, scale: float) -> tuple[int, int]:
  with Image.open(os.path.join(KODAK, "kodim23.png")) as im:
    im = im.convert("RGB")
    size = (round(im.width * scale), round(im.height * scale))
    im.resize(size, Image.Resampling.LANCZOS).save(path, compress_level=1)
  return size[1], size[0]


def memory_model(sizes, steps) -> list[dict]:
  code = ("import sys, json, resource, time, numpy as np, gaussjax\n"
          "from PIL import Image\n"
          "side = int(sys.argv[1])\n"
          f"im = Image.open({os.path.join(KODAK, 'kodim23.png')!r}).convert('RGB')\n"
          "a = np.asarray(im.resize((side, side), Image.Resampling.LANCZOS), np.float32) / 255\n"
          "t = time.time()\n"
          f"gaussjax.encode(a, gaussjax.CodecConfig(bpp=0.5, fit_steps={steps}, qat_steps=4))\n"
          "print(time.time() - t)\n")
  rows = []
  for side in sizes:
    r = run_child(["-c", code, str(side)])
    rows.append({"side": side, "pixels": side * side, "peak_rss_mb": round(r["peak_rss_mb"], 1),
                 "estimate_mb": round(_tiles.fit_memory_mb(side, side), 1),
                 "seconds": round(r["seconds"], 1)})
    print(rows[-1], flush=True)
  return rows


def guard(cli, photo, encoded, args, rows, meta) -> None:
  """The untiled encode: must be refused up front (exit 2, nothing written)."""
  r = run_child(cli + ["encode", photo, "-o", encoded, "--bpp", str(args.bpp)])
  meta["guard_message"] = r["stderr"].strip().splitlines()[-1] if r["stderr"].strip() else ""
  rows.append({"step": "encode, no --tile (guard)", "rc": r["rc"], "seconds": r["seconds"],
               "peak_rss_mb": r["peak_rss_mb"], "first_output_s": r["first_output_s"] or 0.0})
  if r["rc"] != 2 or os.path.exists(encoded):
    raise SystemExit(f"the guard did not refuse the untiled encode: rc={r['rc']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--scale", type=float, default=7.8125,
                      help="upscale factor of kodim23 (7.8125: 6000x4000, 24 MP)")
  parser.add_argument("--bpp", type=float, default=0.5)
  parser.add_argument("--tile", type=int, default=1024)
  parser.add_argument("--margin", type=int, default=32)
  parser.add_argument("--fit-steps", type=int, default=24)
  parser.add_argument("--qat-steps", type=int, default=4)
  parser.add_argument("--memory-model", action="store_true",
                      help="also measure one-piece encode memory at 256/544/1024 px squares")
  parser.add_argument("--work-dir", default=None, help="where the photo and outputs go (temp)")
  parser.add_argument("--name", default="big_cpu")
  args = parser.parse_args()

  work = args.work_dir or tempfile.mkdtemp(prefix="gaussjax-big-")
  os.makedirs(work, exist_ok=True)
  photo = os.path.join(work, "big.png")
  encoded = os.path.join(work, "big.gjx")
  decoded = os.path.join(work, "decoded.png")
  load_before = os.getloadavg()
  t0 = time.perf_counter()
  h, w = make_photo(photo, args.scale)
  print(f"photo: kodim23 x{args.scale} Lanczos -> {w}x{h} ({h * w / 1e6:.1f} MP) "
        f"in {time.perf_counter() - t0:.1f} s", flush=True)

  cli = ["-m", "gaussjax.cli._cli"]
  meta = {
      "photo": f"kodim23 upscaled x{args.scale} with Pillow Lanczos to {w}x{h} "
               f"({h * w / 1e6:.1f} MP), PNG",
      "settings": f"--bpp {args.bpp} --tile {args.tile} --margin {args.margin} "
                  f"--fit-steps {args.fit_steps} --qat-steps {args.qat_steps}",
      "load_average_before": [round(x, 2) for x in load_before],
      "memory_model_constants": {"FIT_BASE_MB": _tiles.FIT_BASE_MB,
                                 "FIT_BYTES_PER_PIXEL": _tiles.FIT_BYTES_PER_PIXEL},
  }
  rows = []

  print("1. untiled encode (expect the memory guard)", flush=True)
  if _tiles.fit_memory_mb(h, w) <= _tiles.DEFAULT_MEMORY_BUDGET_MB:
    print("   (skipped: this image fits the default budget in one piece)")
  else:
    guard(cli, photo, encoded, args, rows, meta)
  print("2. tiled encode", flush=True)
  r = run_child(cli + ["encode", photo, "-o", encoded, "--bpp", str(args.bpp), "--tile",
                       str(args.tile), "--margin", str(args.margin), "--fit-steps",
                       str(args.fit_steps), "--qat-steps", str(args.qat_steps)])
  if r["rc"] != 0:
    raise SystemExit(f"encode failed: {r['stderr'][-2000:]}")
  size = os.path.getsize(encoded)
  rows.append({"step": "encode --tile", "rc": r["rc"], "seconds": r["seconds"],
               "peak_rss_mb": r["peak_rss_mb"], "first_output_s": r["first_output_s"] or 0.0})
  with open(encoded, "rb") as f:
    info = _tiles.info_tiled(f.read())
  meta["file"] = {"bytes": size, "bpp": round(8 * size / (h * w), 4),
                  "tiles": f"{info['tile_rows']}x{info['tile_cols']}", "crop": info["crop"]}

  print("3. decode", flush=True)
  r = run_child(cli + ["decode", encoded, "-o", decoded])
  if r["rc"] != 0:
    raise SystemExit(f"decode failed: {r['stderr'][-2000:]}")
  rows.append({"step": "decode", "rc": r["rc"], "seconds": r["seconds"],
               "peak_rss_mb": r["peak_rss_mb"], "first_output_s": r["first_output_s"] or 0.0})

  print("4. PSNR at seams and elsewhere", flush=True)
  with Image.open(photo) as a, Image.open(decoded) as b:
    expected = np.asarray(a.convert("RGB"))
    actual = np.asarray(b.convert("RGB"))
  grid = _tiles.TileGrid(h, w, info["tile_rows"], info["tile_cols"], args.margin)
  seams = grid.seam_mask(args.margin)
  meta["psnr_db"] = {
      "all": round(_tiles.psnr_banded(expected, actual), 3),
      f"seam band (+-{args.margin} px of inner tile boundaries, "
      f"{seams.mean():.1%} of pixels)": round(_tiles.psnr_banded(expected, actual, mask=seams), 3),
      "rest": round(_tiles.psnr_banded(expected, actual, mask=~seams), 3),
  }
  del expected, actual, seams

  if args.memory_model:
    print("5. memory model: one-piece encode", flush=True)
    meta["memory_model"] = memory_model((256, 544, 1024), 20)
  meta["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  meta["target"] = "peak RSS <= 4096 MB for encode and decode"
  meta["peak_rss_ok"] = all(0 < row["peak_rss_mb"] <= 4096 for row in rows)
  json_path, md_path = _machine.write_results(args.name, rows, meta)
  print(_machine.format_table(rows))
  print(json.dumps(meta, indent=2))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  main()
