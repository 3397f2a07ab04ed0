"""core._compiled: compiled programs are released before the memory-map limit."""

import sys

import numpy as np
import pytest

import gaussjax
from gaussjax.core import _compiled

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux
def test_counts_this_process():
  count, limit = _compiled.map_count(), _compiled.map_limit()
  assert count is not None and count > 10
  assert limit is not None and limit > count


@linux
def test_clears_only_when_crowded(monkeypatch):
  cleared = []
  monkeypatch.setattr(_compiled.jax, "clear_caches", lambda: cleared.append(1))
  monkeypatch.setattr(_compiled, "map_limit", lambda: 1000)
  monkeypatch.setattr(_compiled, "map_count", lambda: 499)
  assert not _compiled.release_if_crowded() and not cleared
  monkeypatch.setattr(_compiled, "map_count", lambda: 500)
  assert _compiled.release_if_crowded() and cleared == [1]


def test_no_proc_does_nothing(monkeypatch):
  monkeypatch.setattr(_compiled, "_MAX_MAP_COUNT", "/nonexistent/max_map_count")
  assert _compiled.map_limit() is None
  assert not _compiled.release_if_crowded()


@linux
def test_fit_and_decode_release_and_still_agree(monkeypatch):
  # With the threshold at zero every loop run and decode clears the caches: the
  # maps of the programs go and the results are those of a run that kept them.
  rng = np.random.default_rng(0)
  image = rng.random((24, 32, 3), dtype=np.float32)
  config = gaussjax.CodecConfig(quality=50, fit_steps=20, qat_steps=4)
  data = gaussjax.encode(image, config)
  kept = np.asarray(gaussjax.decode(data))
  calls = []
  real = _compiled.jax.clear_caches
  monkeypatch.setattr(_compiled, "MAP_FRACTION", 0.0)
  monkeypatch.setattr(_compiled.jax, "clear_caches", lambda: (calls.append(1), real()))
  assert gaussjax.encode(image, config) == data
  np.testing.assert_array_equal(np.asarray(gaussjax.decode(data)), kept)
  assert len(calls) >= 2
