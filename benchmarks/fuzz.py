"""Decoder fuzz run: N bad files (default 100,000), writes results/fuzz.{json,md}.

  python benchmarks/fuzz.py --count 100000 --workers 2 --memory-gb 3

Cases (see gaussjax/codec/_fuzz.py): mutants of valid files (half with the checksum
recomputed, so the parser behind it is exercised), header mutants whose image
size is rewritten to extreme values (decoded to pixels: the decompression-bomb
path), and random files. Each worker process runs under an address-space
ceiling (RLIMIT_AS), so a header that made the decoder allocate gigabytes
would fail as MemoryError / RESOURCE_EXHAUSTED instead of passing unnoticed.
Only acceptance and gaussjax.DecodeError are allowed; the run exits 1 otherwise.
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402


def seeds():
  from gaussjax.codec._fuzz import seed_files
  return seed_files(((2000, 3, (256, 384)), (200, 3, (40, 56)), (60, 1, (17, 33)),
                     (30, 4, (64, 20)), (5, 2, (3, 900))))


def header_seeds():
  """Small files to resize: no Gaussians (each channel count) and a few Gaussians."""
  from gaussjax.codec._fuzz import bomb, seed_files
  return [bomb(9, 9, c) for c in (1, 2, 3, 4)] + seed_files(((5, 3, (12, 16)),))[:1]


def worker(job):
  """One process's share, under the memory ceiling."""
  count, seed, memory_bytes, files, small_files, last_case = job
  import resource
  if memory_bytes:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
  from gaussjax.codec._fuzz import campaign
  return campaign(files, small_files, count, seed=seed, last_case=last_case)


def merge(parts):
  out = {"count": 0, "seconds": 0.0, "slowest_s": 0.0, "outcomes": {}, "errors": {},
         "examples": []}
  for p in parts:
    out["count"] += p["count"]
    out["seconds"] = max(out["seconds"], p["seconds"])
    out["slowest_s"] = max(out["slowest_s"], p["slowest_s"])
    for kind, counts in p["outcomes"].items():
      mine = out["outcomes"].setdefault(kind, {})
      for outcome, n in counts.items():
        mine[outcome] = mine.get(outcome, 0) + n
    for error, n in p["errors"].items():
      out["errors"][error] = out["errors"].get(error, 0) + n
    out["examples"] += p["examples"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--count", type=int, default=100_000, help="cases in all")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=2, help="processes")
  parser.add_argument("--memory-gb", type=float, default=4.0,
                      help="address-space ceiling per worker (0: none); the largest header asks "
                           "for 4.3 GB of pixels")
  parser.add_argument("--name", default="fuzz", help="results file name")
  args = parser.parse_args()
  load_before = os.getloadavg()
  files, small_files = seeds(), header_seeds()
  memory = int(args.memory_gb * (1 << 30))
  shares = [args.count // args.workers + (i < args.count % args.workers)
            for i in range(args.workers)]
  last = [os.path.join(_machine.RESULTS_DIR, f".{args.name}-last-case-{i}.gjx")
          for i in range(args.workers)]
  jobs = [(n, args.seed * 1000 + i, memory, files, small_files, last[i])
          for i, n in enumerate(shares)]
  # Few malloc arenas: under RLIMIT_AS, glibc's 64 MB arena per thread (XLA
  # runs many) would use up the ceiling without any allocation of the decoder.
  os.environ["MALLOC_ARENA_MAX"] = "2"
  start = time.perf_counter()
  with concurrent.futures.ProcessPoolExecutor(
      args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    try:
      stats = merge(list(pool.map(worker, jobs)))
    except concurrent.futures.process.BrokenProcessPool:
      sys.exit(f"a worker died (a crash is a failure of the decoder or of the ceiling); the case "
               f"it was decoding, if a header case, is in {last}")
  wall = time.perf_counter() - start
  for path in last:
    if os.path.exists(path):
      os.remove(path)
  rows = []
  for kind, counts in stats["outcomes"].items():
    rows.append({"kind": kind, "cases": sum(counts.values()),
                 "accepted": counts.get("accepted", 0),
                 "DecodeError": counts.get("DecodeError", 0),
                 "other errors": sum(n for o, n in counts.items()
                                     if o not in ("accepted", "DecodeError"))})
  rows.append({"kind": "all", "cases": stats["count"],
               "accepted": sum(r["accepted"] for r in rows),
               "DecodeError": sum(r["DecodeError"] for r in rows),
               "other errors": sum(r["other errors"] for r in rows)})
  print(_machine.format_table(rows))
  print(f"errors by type: {stats['errors'] or 'none'}; wall {wall:.0f} s; "
        f"slowest case {stats['slowest_s']:.2f} s")
  meta = {
      "what": "mutants of 6 valid files (half with a recomputed checksum), header-size mutants "
              "decoded to pixels, random files; see gaussjax/codec/_fuzz.py",
      "count": stats["count"], "workers": args.workers,
      "memory ceiling per worker (RLIMIT_AS)": f"{args.memory_gb:g} GB" if memory else "none",
      "errors other than DecodeError, by type": stats["errors"] or "none",
      "wall seconds": round(wall, 1), "slowest case seconds": round(stats["slowest_s"], 3),
      "load average before / after": f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f}",
      "examples": stats["examples"],
  }
  _machine.write_results(args.name, rows, meta)
  sys.exit(1 if stats["errors"] else 0)


if __name__ == "__main__":
  main()
