"""core._cache: the command line keeps compiled programs between runs, and the files stay the same.

The suite runs with ``GAUSSJAX_XLA_CACHE=0`` (conftest), so no test writes
to the user's cache; the tests here turn it on in child processes, in a
temporary directory. The time it saves is measured by
``benchmarks/compile_cache.py`` (``benchmarks/results/compile_cache.md``).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gaussjax.core import _cache

ROOT = Path(__file__).resolve().parent.parent


def encode(tmp_path: Path, output: str, env: dict) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "gaussjax", "encode", "in.png", "-o", output, "--quality", "50",
       "--fit-steps", "40", "--qat-steps", "10", "-q"],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True,
      text=True, timeout=600, check=False)


def test_second_run_reuses_every_program_and_writes_the_same_file(tmp_path):
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(tmp_path / "in.png")
  cache = tmp_path / "cache"
  # Every program is kept (the default keeps those over 0.2 s to compile, a
  # time that varies from run to run), so the second run must find them all.
  env = {"GAUSSJAX_XLA_CACHE": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  first = encode(tmp_path, "a.gjx", env)
  assert first.returncode == 0, first.stderr
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "the first run stored no compiled program"
  second = encode(tmp_path, "b.gjx", env)
  assert second.returncode == 0, second.stderr
  # Every program the second run needed was found: it added no entry.
  assert sorted(p.name for p in cache.iterdir()) == entries
  assert (tmp_path / "a.gjx").read_bytes() == (tmp_path / "b.gjx").read_bytes()
  # And the cached run wrote what an uncached one writes.
  off = encode(tmp_path, "c.gjx", {"GAUSSJAX_XLA_CACHE": "0"})
  assert off.returncode == 0, off.stderr
  assert (tmp_path / "c.gjx").read_bytes() == (tmp_path / "a.gjx").read_bytes()


def test_off_and_unusable_directories_change_nothing(tmp_path, monkeypatch):
  before = dict(os.environ)
  for value in ("0", "off"):
    monkeypatch.setenv("GAUSSJAX_XLA_CACHE", value)
    assert _cache.enable_compilation_cache() is None
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  monkeypatch.setenv("GAUSSJAX_XLA_CACHE", str(blocker / "xla"))  # under a file: cannot be made
  assert _cache.enable_compilation_cache() is None
  assert {k: v for k, v in os.environ.items() if k != "GAUSSJAX_XLA_CACHE"} == {
      k: v for k, v in before.items() if k != "GAUSSJAX_XLA_CACHE"}


def test_the_users_own_jax_cache_directory_is_kept(tmp_path):
  code = ("import os, jax; from gaussjax.core._cache import enable_compilation_cache as e; "
          "print(e()); print(jax.config.jax_compilation_cache_dir)")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}
  env.pop("GAUSSJAX_XLA_CACHE", None)
  env["GAUSSJAX_CACHE"] = str(tmp_path / "ours")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, check=True).stdout.split()
  assert out == [str(tmp_path / "mine")] * 2
  assert not (tmp_path / "ours").exists()
