"""Fuzzing the decoder (used by tests and benchmarks/fuzz.py).

Three kinds of bad file, each of which must decode or raise ``DecodeError``:

- ``mutant``: a valid file flipped, overwritten, cut, spliced or padded
  (``mutate``), half of them with the checksum recomputed so they reach the
  parser behind it; parsed by ``decode_gaussians``.
- ``header``: a valid file whose image size (and channels) are rewritten to
  extreme values, checksum recomputed (``header_mutant``): the decompression
  bomb family; decoded to pixels by ``decode``, whose ``max_pixels`` must
  refuse what is too large before allocating it (run under a memory ceiling).
- ``random``: random bytes of random length, some behind a valid magic and
  version, some with a valid checksum (``random_file``).
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import time
import zlib

import jax
import numpy as np

from gaussjax.codec import _formats
from gaussjax.codec import _quantize as qz
from gaussjax.codec._bitstream import DecodeError
from gaussjax.codec._codec import MAGIC, MAX_GAUSSIANS, encode_gaussians
from gaussjax.codec._progressive import encode_levels
from gaussjax.constants import MAX_DECODE_PIXELS
from gaussjax.core._gaussians import Gaussians
from gaussjax.fitting._init import init_random


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
    return with_checksum(d)
  return bytes(d)


def with_checksum(data) -> bytes:
  """``data`` with its last 4 bytes replaced by the crc32 of the rest (as the format stores it)."""
  data = bytes(data)
  return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


# Image sides a header mutant takes: edges of the u16 field and of the limits.
_EXTREME_SIDES = (0, 1, 2, 255, 256, 4095, 4096, 4097, 5792, 5793, 8191, 8192, 16384, 32767,
                  32768, 65534, 65535)


def header_mutant(data: bytes, rng: np.random.Generator) -> bytes:
  """``data`` with its image size (sometimes its channels too) rewritten, checksum valid.

  The sides are extreme (``_EXTREME_SIDES``), uniform over the u16 range, or
  small, in equal shares; header bytes 5 (channels) and 6-9 (width, height,
  little-endian u16) are those of FORMAT.md.
  """
  d = bytearray(data)
  sides = []
  for _ in range(2):
    pick = rng.integers(0, 3)
    if pick == 0:
      sides.append(int(rng.choice(_EXTREME_SIDES)))
    elif pick == 1:
      sides.append(int(rng.integers(0, 65536)))
    else:
      sides.append(int(rng.integers(1, 513)))
  d[6:10] = struct.pack("<HH", *sides)
  if rng.random() < 0.1:
    d[5] = int(rng.integers(0, 6))
  return with_checksum(d)


def random_file(magic: bytes, rng: np.random.Generator) -> bytes:
  """Random bytes (0-300 long); half behind ``magic`` and a version byte, half with a checksum."""
  d = bytearray(rng.integers(0, 256, rng.integers(0, 301)).astype(np.uint8).tobytes())
  if rng.random() < 0.5 and len(d) > len(magic):
    d[:len(magic) + 1] = magic + bytes([int(rng.integers(0, 3))])
  if rng.random() < 0.5 and len(d) >= 8:
    return with_checksum(d)
  return bytes(d)


def check_case(data: bytes, kind: str) -> str:
  """Decodes one case; returns ``"accepted"``, ``"DecodeError"`` or the name of what went wrong.

  ``mutant`` and ``random`` cases are parsed (``decode_gaussians``) and the
  Gaussians checked finite; ``header`` cases are decoded to pixels
  (``decode`` with its default ``max_pixels`` and renderer).
  """
  try:
    if kind == "header":
      image = np.asarray(_formats.decode(data))
      if image.shape[0] * image.shape[1] > MAX_DECODE_PIXELS:
        return "over MAX_DECODE_PIXELS"
      if not np.all(np.isfinite(image)):
        return "non-finite pixels"
    else:
      g, _ = _formats.decode_gaussians(data)
      if g.num_gaussians > MAX_GAUSSIANS or not all(np.all(np.isfinite(a)) for a in g):
        return "non-finite or oversized Gaussians"
  except DecodeError:
    return "DecodeError"
  except Exception as e:  # noqa: BLE001 - the point of the fuzzer: count what escapes
    return type(e).__name__
  return "accepted"


def campaign(seeds: list[bytes], header_seeds: list[bytes], count: int, *, seed: int = 0,
             shares: dict[str, float] | None = None, last_case: str | None = None) -> dict:
  """Runs ``count`` cases of every kind; counts outcomes instead of stopping at the first.

  Args:
    seeds: valid files that ``mutate`` corrupts.
    header_seeds: valid files that ``header_mutant`` resizes (small ones:
      accepted headers are rendered).
    count: number of cases.
    seed: PRNG seed.
    shares: fraction of each kind (default 87% mutants, 3% headers, 10%
      random files: a header case that is accepted renders up to
      ``MAX_DECODE_PIXELS`` pixels, a hundred times the cost of a mutant).
    last_case: a file that each header case is written to before it is
      decoded, so that one that kills the process can be found.

  Returns:
    ``{"count", "seconds", "slowest_s", "outcomes": {kind: {outcome: n}},
    "errors": {type: n}, "examples": [...]}``: ``errors`` counts every
    outcome that is neither acceptance nor ``DecodeError`` (it must stay
    empty), with up to 5 ``examples`` (kind, error, file as hex).
  """
  shares = shares or {"mutant": 0.87, "header": 0.03, "random": 0.1}
  kinds = list(shares)
  probabilities = np.asarray([shares[k] for k in kinds], np.float64)
  rng = np.random.default_rng(seed)
  outcomes = {kind: collections.Counter() for kind in kinds}
  errors = collections.Counter()
  examples = []
  slowest = 0.0
  start = time.perf_counter()
  for k in range(count):
    kind = kinds[rng.choice(len(kinds), p=probabilities / probabilities.sum())]
    if kind == "mutant":
      data = mutate(seeds[k % len(seeds)], rng)
    elif kind == "header":
      data = header_mutant(header_seeds[k % len(header_seeds)], rng)
    else:
      data = random_file(MAGIC, rng)
    if last_case and kind == "header":
      with open(last_case, "wb") as f:
        f.write(data)
    t = time.perf_counter()
    outcome = check_case(data, kind)
    slowest = max(slowest, time.perf_counter() - t)
    outcomes[kind][outcome] += 1
    if outcome not in ("accepted", "DecodeError"):
      errors[outcome] += 1
      if len(examples) < 5:
        examples.append({"kind": kind, "error": outcome, "file": data.hex()})
  return {"count": count, "seconds": time.perf_counter() - start, "slowest_s": slowest,
          "outcomes": {kind: dict(c) for kind, c in outcomes.items()}, "errors": dict(errors),
          "examples": examples}


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
  decode = decode or _formats.decode_gaussians
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
  format takes varied values; the k-th file has ``k mod 4`` levels of
  per-Gaussian position steps (``QuantSteps.pos_levels``).
  """
  out = []
  for k, (n, c, (h, w)) in enumerate(cases):
    g = init_random(jax.random.key(n), n, h, w, c)
    chol = g.chol * jax.random.uniform(jax.random.key(c), (n, 3), minval=-1.5, maxval=1.5)
    g = Gaussians(g.means, chol, g.colors)
    steps = dataclasses.replace(qz.default_steps(c), pos_levels=k % (qz.POS_LEVELS_MAX + 1),
                                pos_ref=qz.reference_sensitivity(g) if n else 1.0)
    out.append(encode_gaussians(g, h, w, steps=steps))
  empty = Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                    np.zeros((0, 3), np.float32))
  out.append(encode_gaussians(empty, 9, 9))
  return out


def bomb(width: int = 65535, height: int = 4096, channels: int = 3) -> bytes:
  """A valid file of no Gaussians whose header asks for ``width`` x ``height`` pixels.

  With the defaults, 28 bytes that ask a decoder for 65535x4096x3 float32
  values (3.2 GB): the decompression bomb that ``decode``'s ``max_pixels``
  refuses before allocating anything.
  """
  empty = Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                    np.zeros((0, channels), np.float32))
  return encode_gaussians(empty, height, width)


def progressive_seed_files(cases) -> list[bytes]:
  """Valid version-2 (progressive) files: one per ``(level counts, channels, (height, width))``.

  Each level holds random Gaussians as in ``seed_files`` (an empty level
  when its count is 0).
  """
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
