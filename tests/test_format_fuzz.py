"""Fuzzing the decoder, and the decompression-bomb guard under a memory ceiling."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gaussjax
from gaussjax import constants
from gaussjax.codec._fuzz import bomb, campaign, fuzz, header_mutant, seed_files


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


def test_campaign_of_every_kind_finds_only_decode_errors():
  small = [bomb(9, 9, c) for c in (1, 3)]
  stats = campaign(_seeds(), small, 300, seed=7,
                   shares={"mutant": 0.5, "header": 0.2, "random": 0.3})
  assert stats["count"] == 300 and stats["errors"] == {} and stats["examples"] == []
  assert set(stats["outcomes"]) == {"mutant", "header", "random"}
  for kind, counts in stats["outcomes"].items():
    assert counts.get("DecodeError", 0) > 0, (kind, counts)  # each kind reaches the checks
  assert stats["outcomes"]["header"].get("accepted", 0) > 0  # ... and past them


def test_campaign_counts_what_escapes(monkeypatch):
  """The fuzzer can fail: an exception other than DecodeError is counted, with an example."""
  from gaussjax.codec import _formats

  def broken(data):
    raise IndexError("a parser bug")

  monkeypatch.setattr(_formats, "decode_gaussians", broken)
  stats = campaign(_seeds(), [bomb(9, 9)], 20, seed=0, shares={"mutant": 1.0})
  assert stats["errors"] == {"IndexError": 20} and len(stats["examples"]) == 5


def test_header_mutants_keep_a_valid_checksum():
  rng = np.random.default_rng(0)
  for _ in range(50):
    data = header_mutant(bomb(9, 9), rng)
    try:
      info = gaussjax.codec._formats.info(data)
    except gaussjax.DecodeError as e:
      assert "checksum" not in str(e)
    else:
      assert info["num_gaussians"] == 0


def test_bomb_is_refused_before_allocation():
  data = bomb()
  assert len(data) == 28
  g, (h, w) = gaussjax.decode_gaussians(data)  # the header itself is valid
  assert (w, h) == (65535, 4096) and g.num_gaussians == 0
  with pytest.raises(gaussjax.DecodeError, match="65535x4096 = 268431360 pixels.*max_pixels"):
    gaussjax.decode(data)
  # A smaller output of the same file is fine (the Gaussians are O(N), not O(pixels)).
  assert gaussjax.decode(data, height=4, width=64).shape == (4, 64, 3)
  small = bomb(20, 10)
  assert gaussjax.decode(small, max_pixels=200).shape == (10, 20, 3)
  with pytest.raises(gaussjax.DecodeError, match="20x10 = 200 pixels"):
    gaussjax.decode(small, max_pixels=199)
  with pytest.raises(ValueError, match="over max_pixels=100"):
    gaussjax.decode(small, height=20, max_pixels=100)
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="max_pixels"):
      gaussjax.decode(small, max_pixels=bad)
  assert 0 < constants.MAX_DECODE_PIXELS < constants.MAX_PIXELS


CEILING = textwrap.dedent("""
    import resource, sys
    limit = 3 << 30  # 3 GiB of address space: the bomb asks for 3.2 GB of pixels
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from gaussjax.cli._cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_bomb_under_a_memory_ceiling_fails_cleanly(tmp_path):
  path = tmp_path / "bomb.gjx"
  path.write_bytes(bomb())
  result = subprocess.run(
      [sys.executable, "-c", CEILING, "decode", str(path), "-o", str(tmp_path / "b.png")],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr
  first, error = result.stderr.splitlines()  # the first line (input, bytes), then the error
  assert first.startswith("gaussjax decode: ") and first.endswith("28 bytes -> " + str(
      tmp_path / "b.png"))
  assert "decode: error: the file's image is 65535x4096" in error
  assert "MemoryError" not in result.stderr and "RESOURCE_EXHAUSTED" not in result.stderr
  assert not (tmp_path / "b.png").exists()
