"""init_slic at scale: time, peak memory and initial PSNR, this tree against an older one.

Every run is a fresh child process (so its peak RSS is its own): it loads the
Kodak image, times one ``init_slic(image, N)``, reads the peak resident set
size (``resource.getrusage``) against the RSS just before the call, renders
the result (``backend="xla"``) for its PSNR, and hashes the Gaussians so that
repeated runs show determinism. The older ``gaussjax/fitting/_init.py`` (``--old-ref``,
by default the commit before the rewrite) runs from a copy under a temporary
directory, with a memory cap: where its dense merge table would need more than
``--old-cap-gib`` (or than the machine has free) the run is skipped and the
needed size recorded. Writes ``benchmarks/results/<name>.json|md``.

  python benchmarks/init_scale.py                 # kodim23 at 10k, 35k, 70k; quality at 1k, 10k
  python benchmarks/init_scale.py --sizes 2000 --quality-images 23 --quality-sizes 500 \
      --name init_scale_smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import format_table, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KODAK_DIRS = (os.path.join(ROOT, "..", "..", "shared", "data", "kodak"), "/work/shared/data/kodak")
GIB = 1024**3


def _kodak_path(index: int) -> str:
  for directory in KODAK_DIRS:
    path = os.path.join(directory, f"kodim{index:02d}.png")
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"kodim{index:02d}.png not found in {KODAK_DIRS}")


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  return 0


class _Skipped(Exception):
  pass


def child(module_path: str | None, image_index: int, n: int, cap_bytes: int) -> dict:
  """One timed ``init_slic`` in this process; returns its record."""
  import resource

  import numpy as np

  import gaussjax

  if module_path is None:
    init_module = gaussjax.fitting._init
  else:
    import importlib.util

    spec = importlib.util.spec_from_file_location("old_init", module_path)
    init_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(init_module)
    dense_merge = init_module._merge_smallest

    def capped_merge(labels, k, n_out):
      need = (k - n_out) * n_out * 2 * 8  # the old [k - n, n, 2] float64 table
      if need > cap_bytes:
        raise _Skipped(f"dense merge table {need / GIB:.1f} GiB > cap {cap_bytes / GIB:.1f} GiB")
      return dense_merge(labels, k, n_out)

    init_module._merge_smallest = capped_merge
  image = gaussjax.load_image(_kodak_path(image_index))
  init_module.init_slic(image[:16, :16], 4)  # imports and first calls outside the timing
  rss_before = _rss_bytes()
  record = {"rss_before_mib": rss_before / 2**20}
  usage = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  try:
    g = init_module.init_slic(image, n)
  except _Skipped as e:
    record["skipped"] = str(e)
    return record
  except MemoryError as e:
    record["skipped"] = f"MemoryError: {e}"
    return record
  record["seconds"] = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  # CPU seconds (user + system) of this process: less sensitive than wall time
  # to the other jobs of a shared machine.
  record["cpu_s"] = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  record["peak_rss_mib"] = peak / 2**20
  record["peak_extra_mib"] = max(peak - rss_before, 0) / 2**20
  height, width = image.shape[:2]
  rendered = np.clip(np.asarray(gaussjax.render(g, height, width, backend="xla")), 0, 1)
  record["psnr"] = float(gaussjax.psnr(rendered, image))
  record["num_gaussians"] = int(g.num_gaussians)
  digest = hashlib.sha256()
  for x in g:
    digest.update(np.asarray(x).tobytes())
  record["sha256"] = digest.hexdigest()[:16]
  return record


def _run_child(version: str, module_path: str | None, image_index: int, n: int, cap_bytes: int,
               timeout_s: float) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--child", str(image_index), str(n),
             "--child-module", module_path or "", "--old-cap-gib", str(cap_bytes / GIB)]
  row = {"version": version, "image": f"kodim{image_index:02d}", "n": n}
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    row["skipped"] = f"timed out after {timeout_s:.0f} s"
    return row
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode != 0 or not lines:
    row["skipped"] = f"child failed (rc {done.returncode}): {done.stderr.strip()[-300:]}"
    return row
  row.update(json.loads(lines[-1]))
  return row


def _old_module(ref: str, directory: str) -> str | None:
  try:
    source = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:gaussjax/fitting/_init.py"],
                            capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  path = os.path.join(directory, "old_init.py")
  with open(path, "w") as f:
    f.write(source)
  return path


def _fmt(row: dict) -> dict:
  out = {"version": row["version"], "image": row["image"], "n": row["n"]}
  if "skipped" in row:
    out.update({"seconds": "-", "cpu_s": "-", "peak_extra_mib": "-", "psnr": "-",
                "note": row["skipped"][:80]})
  else:
    out.update({"seconds": row["seconds"], "cpu_s": row["cpu_s"],
                "peak_extra_mib": row["peak_extra_mib"],
                "psnr": row["psnr"], "note": f"sha {row['sha256']}"})
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--image", type=int, default=23, help="Kodak index of the scale runs")
  parser.add_argument("--sizes", default="10000,35000,70000")
  parser.add_argument("--repeats", type=int, default=2,
                      help="runs per version and size (minimum reported; determinism)")
  parser.add_argument("--quality-images", default="1,15,23")
  parser.add_argument("--quality-sizes", default="1000,10000")
  parser.add_argument("--old-ref", default="ddc914d",
                      help="git ref of the older _init.py ('' to skip)")
  parser.add_argument("--old-cap-gib", type=float, default=5.0)
  parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
  parser.add_argument("--name", default="init_scale_cpu")
  parser.add_argument("--child", nargs=2, type=int, metavar=("IMAGE", "N"), help=argparse.SUPPRESS)
  parser.add_argument("--child-module", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child:
    cap = int(args.old_cap_gib * GIB)
    record = child(args.child_module or None, args.child[0], args.child[1], cap)
    print(json.dumps(record), flush=True)
    return 0

  load_start = [round(x, 2) for x in os.getloadavg()]  # a shared machine: report its load
  cap_bytes = int(args.old_cap_gib * GIB)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    old_path = _old_module(args.old_ref, tmp) if args.old_ref else None
    # Each run repeated (minimum taken: the machine is shared), except the old
    # code's slow large runs.
    pairs = [(args.image, int(s)) for s in args.sizes.split(",")]
    pairs += [(int(i), int(s)) for i in args.quality_images.split(",")
              for s in args.quality_sizes.split(",") if (int(i), int(s)) not in pairs]
    plan = []
    for index, n in pairs:
      plan += [("new", index, n)] * args.repeats
      plan += [("old", index, n)] * (args.repeats if n <= 10_000 else 1)
    for version, index, n in plan:
      if version == "old" and old_path is None:
        continue
      # Leave the shared machine 2 GiB besides the cap.
      cap = min(cap_bytes, max(_available_bytes() - 2 * GIB, 0)) if version == "old" else 0
      row = _run_child(version, old_path if version == "old" else None, index, n, cap, args.timeout)
      rows.append(row)
      print(format_table([_fmt(row)]).splitlines()[-1], flush=True)

  def runs(version, image, n, done=True):
    key = (version, image, n)
    return [r for r in rows
            if (r["version"], r["image"], r["n"]) == key and ("seconds" in r) == done]

  summary = []
  for image, n in dict.fromkeys((r["image"], r["n"]) for r in rows):
    new, old = runs("new", image, n), runs("old", image, n)
    entry = {"image": image, "n": n}
    if new:
      entry["new_s"] = min(r["seconds"] for r in new)
      entry["new_cpu_s"] = min(r["cpu_s"] for r in new)
      entry["new_peak_extra_mib"] = max(r["peak_extra_mib"] for r in new)
      entry["new_psnr"] = new[0]["psnr"]
      entry["new_deterministic"] = len({r["sha256"] for r in new}) == 1 if len(new) > 1 else "-"
    if old:
      entry["old_s"] = min(r["seconds"] for r in old)
      entry["old_cpu_s"] = min(r["cpu_s"] for r in old)
      entry["old_peak_extra_mib"] = max(r["peak_extra_mib"] for r in old)
      entry["old_psnr"] = old[0]["psnr"]
      entry["psnr_gain_db"] = entry.get("new_psnr", float("nan")) - old[0]["psnr"]
      entry["cpu_speedup"] = entry["old_cpu_s"] / entry["new_cpu_s"] if new else "-"
    else:
      skipped = [r["skipped"] for r in runs("old", image, n, done=False)]
      entry["old_s"] = f"skipped: {skipped[0]}" if skipped else "-"
    summary.append(entry)
  keys = ["image", "n", "new_s", "old_s", "new_cpu_s", "old_cpu_s", "cpu_speedup",
          "new_peak_extra_mib", "old_peak_extra_mib",
          "new_psnr", "old_psnr", "psnr_gain_db", "new_deterministic"]
  summary = [{k: e.get(k, "-") for k in keys} for e in summary]
  print(format_table(summary))
  meta = {
      "what": ("init_slic(image, n): wall and CPU (user + system) seconds of one call (min "
               "over repeats), peak RSS above "
               "the RSS before the call (MiB), PSNR of its render (backend xla), each run a "
               "fresh process; 'old' is gaussjax/fitting/_init.py at --old-ref"),
      "old_ref": args.old_ref,
      "old_cap_gib": args.old_cap_gib,
      "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
  }
  json_path, md_path = write_results(args.name, summary, meta)
  with open(json_path) as f:  # every run, raw, next to the summary rows
    result = json.load(f)
  result["runs"] = rows
  with open(json_path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  with open(md_path, "a") as f:
    f.write("\nEvery run (a fresh process each):\n\n" + format_table([_fmt(r) for r in rows]))
  print("wrote", json_path, md_path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
