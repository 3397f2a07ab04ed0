"""Long decoder fuzz run: N mutated files (default 100,000), writes results/fuzz.{json,md}.

  python benchmarks/fuzz.py --count 100000

Seeds: a real encoded Kodak crop (when the set is present) plus synthetic files
of every channel count and an empty file. Fails loudly if any mutant raises
anything but gaussjax.DecodeError or decodes to non-finite Gaussians.
"""

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

from gaussjax._fuzz import fuzz, seed_files  # noqa: E402


def seeds():
  return seed_files(((2000, 3, (256, 384)), (200, 3, (40, 56)), (60, 1, (17, 33)),
                     (30, 4, (64, 20)), (5, 2, (3, 900))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--count", type=int, default=100_000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  t = time.perf_counter()
  stats = fuzz(seeds(), args.count, seed=args.seed)
  stats.update(count=args.count, seconds=time.perf_counter() - t)
  print(stats)
  _machine.write_results("fuzz", [stats], {"what": "mutants of 6 seed files; see gaussjax/_fuzz.py"})


if __name__ == "__main__":
  main()
