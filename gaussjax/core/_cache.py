"""The library's cache directory, and JAX's persistent compilation cache in it.

``cache_dir()`` is ``$GAUSSJAX_CACHE`` or ``~/.cache/gaussjax``: the native
CPU kernel is built there (``rendering._native``), and the command line keeps
the programs XLA compiles under ``xla/`` (``enable_compilation_cache``). A
fresh process otherwise compiles every program of an encode again
(what a second run saves: ``benchmarks/results/compile_cache.md``).

JAX keys each entry by the program, its shapes, the jax and XLA versions and
the device, so an entry is only reused where it is the same program; an
encode writes the same bytes with or without the cache (the same benchmark
and ``tests/test_cache.py`` check this). This module imports no JAX: the
command line calls it before JAX is imported, so the settings reach JAX
through its environment variables (and its config, if it is already
imported).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

# Keep programs whose compilation took at least this long. JAX's default, 1 s,
# would leave out the many programs of an encode that compile in under a
# second; below 0.2 s an entry saves little against reading it back.
MIN_COMPILE_SECONDS = 0.2
# The cache's size bound; JAX evicts the least recently used entries past it.
# JAX needs the ``filelock`` package for the bound (not a dependency): without
# it the cache is unbounded, about 0.6 MB per image size (compile_cache.md),
# and can be deleted at any time.
MAX_BYTES = 1 << 30
_OFF = ("0", "off", "false", "no")


def cache_dir() -> pathlib.Path:
  """``$GAUSSJAX_CACHE``, or ``~/.cache/gaussjax``."""
  return pathlib.Path(os.environ.get("GAUSSJAX_CACHE", pathlib.Path.home() / ".cache" / "gaussjax"))


def enable_compilation_cache() -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache under ``cache_dir() / "xla"``.

  Does nothing, and returns None, where ``GAUSSJAX_XLA_CACHE`` is ``0``
  (or ``off``, ``false``, ``no``) or the directory cannot be created. Where the user has already
  chosen a cache directory (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``), that one is kept. ``GAUSSJAX_XLA_CACHE`` set to a path
  uses that path instead of the default.

  Returns:
    The directory in use, or None.
  """
  choice = os.environ.get("GAUSSJAX_XLA_CACHE")
  if choice is not None and choice.strip().lower() in _OFF:
    return None
  jax = sys.modules.get("jax")
  chosen = (jax.config.jax_compilation_cache_dir if jax is not None
            else os.environ.get("JAX_COMPILATION_CACHE_DIR"))
  if chosen:
    return pathlib.Path(chosen)
  directory = pathlib.Path(choice) if choice else cache_dir() / "xla"
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  if not os.access(directory, os.W_OK):
    return None
  settings = {"jax_compilation_cache_dir": str(directory),
              "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS}
  if importlib.util.find_spec("filelock") is not None:
    settings["jax_compilation_cache_max_size"] = MAX_BYTES
  for name, value in settings.items():
    if name.upper() in os.environ:  # the user's own setting
      continue
    os.environ[name.upper()] = str(value)  # read when JAX is imported (and by child processes)
    if jax is not None:
      jax.config.update(name, value)
  return directory
