"""Fuzzing the decoder: 1,200 mutated files, each decodes or raises DecodeError."""

import time


from gaussjax._fuzz import fuzz, seed_files


def _seeds():
  return seed_files(((200, 3, (40, 56)), (60, 1, (17, 33)), (30, 4, (64, 20))))


def test_fuzz_1200_mutants():
  t = time.perf_counter()
  stats = fuzz(_seeds(), 1200, seed=1234)
  elapsed = time.perf_counter() - t
  assert stats["accepted"] + stats["rejected"] == 1200
  assert stats["rejected"] > 600  # most corruptions are detected
  # Hang guards, generous for a loaded 2-core machine (an unloaded run decodes
  # the 1,200 mutants in about 6 s); speed itself is measured in benchmarks/fuzz.py.
  assert stats["slowest_s"] < 10.0, stats
  assert elapsed < 300, elapsed
