"""Time to the first line of ``gaussjax fit`` / ``encode`` on a 24 MP photo (issue 17).

The photo is made as ``benchmarks/big.py`` makes it: Kodak kodim23 (768x512)
upscaled 7.8125x with Pillow's Lanczos filter to 6000x4000, saved as PNG.

Each command runs as a user runs it, in a fresh process (``python -m
gaussjax ...``); the time is from starting the process to the first line on
its stderr (the input, its size read from the file's header and the memory
plan). Once that line has come, the process is stopped (SIGINT), since the
work itself is ``big.py``'s to measure. For comparison, in the same run:
the time a fresh process takes to ``import gaussjax`` (all of it, JAX
included) and decode the PNG, what the first line waited for before it was
moved ahead of both.

  python benchmarks/first_line.py            # ~2 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from big import make_photo  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_line(argv: list[str]) -> tuple[float, str, int]:
  """``(seconds to the first stderr line, the line, exit status)`` of ``python ARGV``.

  The process is interrupted (SIGINT) once the line has come.
  """
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  line = proc.stderr.readline()
  seconds = time.perf_counter() - start
  if proc.poll() is None:
    proc.send_signal(signal.SIGINT)
  try:
    proc.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
  return seconds, line.strip(), proc.returncode


def whole_run(argv: list[str]) -> float:
  """Wall seconds of ``python ARGV`` to its end (it must succeed)."""
  start = time.perf_counter()
  subprocess.run([sys.executable, *argv], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--scale", type=float, default=7.8125,
                      help="upscale factor of kodim23 (7.8125: 6000x4000, 24 MP)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--name", default="first_line_cpu")
  args = parser.parse_args()

  work = tempfile.mkdtemp(prefix="gaussjax-first-line-")
  photo = os.path.join(work, "big.png")
  h, w = make_photo(photo, args.scale)
  print(f"photo: kodim23 x{args.scale} Lanczos -> {w}x{h} ({h * w / 1e6:.1f} MP)", flush=True)
  load_before = os.getloadavg()
  cli = ["-m", "gaussjax"]
  commands = {
      "encode --bpp 0.5 --tile 1024": cli + ["encode", photo, "-o", os.path.join(work, "a.gjx"),
                                             "--bpp", "0.5", "--tile", "1024"],
      "fit --tile 1024": cli + ["fit", photo, "-o", os.path.join(work, "a.png"), "--tile",
                                "1024"],
      "encode --bpp 0.5 (no --tile: the guard's error)": cli + [
          "encode", photo, "-o", os.path.join(work, "b.gjx"), "--bpp", "0.5"],
  }
  rows = []
  lines = {}
  for what, argv in commands.items():
    times = []
    for _ in range(args.repeats):
      seconds, line, rc = first_line(argv)
      times.append(seconds)
      lines[what] = line
      print(f"{what}: {seconds:.2f} s, rc {rc}: {line}", flush=True)
    rows.append({"run": f"gaussjax {what}: first stderr line", "median_s": statistics.median(times),
                 "min_s": min(times), "max_s": max(times)})
  # What the first line waited for before: the whole package (JAX) and the pixels.
  baseline = ["-c", f"import gaussjax; gaussjax.load_image({photo!r})"]
  times = [whole_run(baseline) for _ in range(args.repeats)]
  rows.append({"run": "python -c 'import gaussjax; gaussjax.load_image(photo)' (whole process)",
               "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
  meta = {
      "photo": f"kodim23 upscaled x{args.scale} with Pillow Lanczos to {w}x{h} "
               f"({h * w / 1e6:.1f} MP), PNG (as benchmarks/big.py)",
      "measured": "seconds from starting a fresh `python -m gaussjax ...` process to its first "
                  f"stderr line; {args.repeats} runs each",
      "first_lines": lines,
      "target": "first line within 1 s",
      "target_met": all(row["median_s"] <= 1.0 for row in rows[:-1]),
      "load_average_before": [round(x, 2) for x in load_before],
      "load_average_after": [round(x, 2) for x in os.getloadavg()],
  }
  shutil.rmtree(work, ignore_errors=True)
  json_path, md_path = _machine.write_results(args.name, rows, meta)
  print(_machine.format_table(rows))
  print(json.dumps(meta, indent=2))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  main()
