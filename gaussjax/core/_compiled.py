"""Keeps a long-running process within the operating system's memory-map limit.

Every program XLA compiles for the CPU is loaded into memory maps of its own
(per distinct encode configuration: ``benchmarks/results/compiled_maps_cpu.md``).
A process that encodes many images of different sizes or rates (a
dataset, a benchmark sweep, a video) keeps each of them cached, and Linux
refuses new maps past ``vm.max_map_count`` (65,530 by default): XLA then dies
with "LLVM ERROR: Unable to allocate section memory", taking the process with
it. This was seen in ``benchmarks/progressive.py`` after a few dozen encodes.

``release_if_crowded`` is called where a new piece of work starts (each run of
the training loop, each decode): when the process holds more than
``MAP_FRACTION`` of the limit, it drops JAX's caches of compiled programs
(``jax.clear_caches``), which frees their maps; later calls compile again. On
systems without ``/proc`` it does nothing.
"""

from __future__ import annotations

import jax

# Release the compiled programs when this fraction of vm.max_map_count is in use.
MAP_FRACTION = 0.5

_MAPS = "/proc/self/maps"
_MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"


def map_count() -> int | None:
  """The memory maps this process holds (None where ``/proc`` is absent)."""
  try:
    with open(_MAPS, "rb") as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def map_limit() -> int | None:
  """The system's per-process memory-map limit (None where unknown)."""
  try:
    with open(_MAX_MAP_COUNT) as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return None


def release_if_crowded() -> bool:
  """Clears JAX's compiled-program caches when the map count nears the limit.

  Returns:
    Whether the caches were cleared.
  """
  limit = map_limit()
  if limit is None:
    return False
  count = map_count()
  if count is None or count < MAP_FRACTION * limit:
    return False
  jax.clear_caches()
  return True
