"""Fuzzing the decoder: 1,200 mutated files, each decodes or raises DecodeError."""

import time

import jax
import numpy as np

import gaussjax
from gaussjax._fuzz import fuzz


def _seeds():
  out = []
  for n, c, (h, w) in ((200, 3, (40, 56)), (60, 1, (17, 33)), (30, 4, (64, 20))):
    g = gaussjax.init_random(jax.random.key(n), n, h, w, c)
    chol = g.chol * jax.random.uniform(jax.random.key(c), (n, 3), minval=-1.5, maxval=1.5)
    out.append(gaussjax.encode_gaussians(gaussjax.Gaussians(g.means, chol, g.colors), h, w))
  empty = gaussjax.Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                             np.zeros((0, 3), np.float32))
  out.append(gaussjax.encode_gaussians(empty, 9, 9))
  return out


def test_fuzz_1200_mutants():
  t = time.perf_counter()
  stats = fuzz(_seeds(), 1200, seed=1234)
  elapsed = time.perf_counter() - t
  assert stats["accepted"] + stats["rejected"] == 1200
  assert stats["rejected"] > 600  # most corruptions are detected
  assert stats["slowest_s"] < 2.0, stats  # no hang on any mutant
  assert elapsed < 60, elapsed
