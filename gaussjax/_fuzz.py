"""Mutation fuzzing of the decoder (used by tests and benchmarks/fuzz.py)."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np

from gaussjax._bitstream import DecodeError


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
  """One random corruption of a file: flips, overwrites, cuts, splices, noise.

  Half of the mutants get their checksum recomputed, so that they reach the
  parser behind the checksum instead of being rejected by it.
  """
  d = bytearray(data)
  kind = rng.integers(0, 8)
  if kind == 0:  # flip 1..8 random bits
    for _ in range(rng.integers(1, 9)):
      i = rng.integers(0, len(d))
      d[i] ^= 1 << rng.integers(0, 8)
  elif kind == 1:  # overwrite random bytes
    for _ in range(rng.integers(1, 5)):
      d[rng.integers(0, len(d))] = rng.integers(0, 256)
  elif kind == 2:  # truncate
    d = d[:rng.integers(0, len(d))]
  elif kind == 3:  # append garbage
    d += rng.integers(0, 256, rng.integers(1, 64)).astype(np.uint8).tobytes()
  elif kind == 4:  # pure noise, with or without the magic
    d = bytearray(rng.integers(0, 256, rng.integers(0, 2 * len(data))).astype(np.uint8).tobytes())
    if rng.random() < 0.5:
      d[:5] = data[:5]
  elif kind == 5:  # header field set to an extreme value
    i = rng.integers(4, min(40, len(d)))
    d[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
  elif kind == 6:  # delete or duplicate a slice
    i, j = sorted(rng.integers(0, len(d), 2))
    d = d[:i] + d[j:] if rng.random() < 0.5 else d[:j] + d[i:j] + d[j:]
  else:  # flip bits in the payload only (deep in the entropy-coded stream)
    for _ in range(rng.integers(1, 4)):
      i = rng.integers(max(0, len(d) - 64), len(d))
      d[i] ^= 1 << rng.integers(0, 8)
  if rng.random() < 0.5 and len(d) >= 8:
    d = d[:-4] + struct.pack("<I", zlib.crc32(bytes(d[:-4])))
  return bytes(d)


def fuzz(seeds: list[bytes], count: int, *, seed: int = 0, decode=None) -> dict:
  """Decodes ``count`` mutants; anything but success or ``DecodeError`` fails.

  Args:
    seeds: valid files to mutate.
    count: number of mutants.
    seed: PRNG seed.
    decode: the function under test (default ``decode_gaussians``).

  Returns:
    Counts of ``accepted`` and ``rejected`` mutants and the slowest decode (s).

  Raises:
    AssertionError: a mutant raised another exception, or decoded to
      non-finite or oversized Gaussians.
  """
  from gaussjax._codec import MAX_GAUSSIANS, decode_gaussians
  decode = decode or decode_gaussians
  rng = np.random.default_rng(seed)
  accepted = rejected = 0
  slowest = 0.0
  for k in range(count):
    data = mutate(seeds[k % len(seeds)], rng)
    t = time.perf_counter()
    try:
      g, (h, w) = decode(data)
    except DecodeError:
      rejected += 1
    except Exception as e:  # noqa: BLE001 - the point of the fuzzer
      raise AssertionError(f"mutant {k} raised {type(e).__name__}: {e}") from e
    else:
      accepted += 1
      assert g.num_gaussians <= MAX_GAUSSIANS
      for arr in g:
        assert np.all(np.isfinite(arr)), f"mutant {k} decoded to non-finite values"
    slowest = max(slowest, time.perf_counter() - t)
  return {"accepted": accepted, "rejected": rejected, "slowest_s": slowest}


def seed_files(cases) -> list[bytes]:
  """Valid ``.gjx`` files to mutate: one per ``(n, channels, (height, width))``, plus an empty one.

  Random Gaussians with Cholesky factors of both signs, so every field of the
  format takes varied values.
  """
  import jax

  from gaussjax._codec import encode_gaussians
  from gaussjax._gaussians import Gaussians
  from gaussjax._init import init_random

  out = []
  for n, c, (h, w) in cases:
    g = init_random(jax.random.key(n), n, h, w, c)
    chol = g.chol * jax.random.uniform(jax.random.key(c), (n, 3), minval=-1.5, maxval=1.5)
    out.append(encode_gaussians(Gaussians(g.means, chol, g.colors), h, w))
  empty = Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                    np.zeros((0, 3), np.float32))
  out.append(encode_gaussians(empty, 9, 9))
  return out


def progressive_seed_files(cases) -> list[bytes]:
  """Valid version-2 (progressive) files: one per ``(level counts, channels, (height, width))``.

  Each level holds random Gaussians as in ``seed_files`` (an empty level
  when its count is 0).
  """
  import jax

  from gaussjax._gaussians import Gaussians
  from gaussjax._init import init_random
  from gaussjax._progressive import encode_levels

  out = []
  for counts, c, (h, w) in cases:
    levels = []
    for k, n in enumerate(counts):
      if n == 0:
        levels.append(Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                                np.zeros((0, c), np.float32)))
        continue
      g = init_random(jax.random.key(100 * k + n), n, h, w, c)
      chol = g.chol * jax.random.uniform(jax.random.key(k), (n, 3), minval=-1.5, maxval=1.5)
      levels.append(Gaussians(g.means, chol, g.colors))
    out.append(encode_levels(levels, h, w))
  return out
