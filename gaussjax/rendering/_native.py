"""The optional native CPU kernel of the XLA backend (``_splat.cc`` via ``jax.ffi``).

Built on first use from the package's own source with the system C++
compiler and the jax.ffi headers (``-march=native``, falling back to the
baseline ISA), into a cache directory (``$GAUSSJAX_CACHE`` or
``~/.cache/gaussjax``) keyed by the source, jax version, compiler and
CPU. Where it cannot be built (no compiler, no headers, a
read-only cache), or with ``GAUSSJAX_NATIVE=0``, ``available()`` is False and
``rasterize_xla`` uses the pure-XLA path: same function, same tests.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants
from gaussjax.core._cache import cache_dir

_SOURCE = pathlib.Path(__file__).with_name("_splat.cc")
# Colour channels the kernel accumulates (a fixed-size array in _splat.cc).
MAX_CHANNELS = 16


def _cpu_tag() -> bytes:
  """The host CPU (model and feature flags): the build uses -march=native."""
  try:
    with open("/proc/cpuinfo", "rb") as f:
      return b"".join(line for line in f if line.startswith((b"model name", b"flags")))[:4096]
  except OSError:
    return platform.processor().encode()


def _compile(compiler: str, output: pathlib.Path, native: bool) -> bool:
  # Reassociation lets the compiler vectorise the reductions; the order is
  # still fixed per build, so results are deterministic.
  flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fassociative-math",
           "-fno-signed-zeros", "-fno-trapping-math"] + (["-march=native"] if native else [])
  try:
    command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(output)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
  except (OSError, subprocess.SubprocessError):
    return False
  return True


def _build() -> pathlib.Path | None:
  compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
  if compiler is None or not _SOURCE.exists():
    return None
  tag = hashlib.sha256(_SOURCE.read_bytes() + jax.__version__.encode() + platform.machine().encode()
                       + compiler.encode() + _cpu_tag()).hexdigest()[:16]
  library = cache_dir() / f"libgaussjax_splat_{tag}.so"
  if library.exists():
    return library
  try:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
      built = pathlib.Path(tmp) / library.name
      if not (_compile(compiler, built, native=True) or _compile(compiler, built, native=False)):
        return None
      os.replace(built, library)  # atomic: concurrent builders agree
  except OSError:
    return None
  return library


@functools.cache
def available() -> bool:
  """True when the native kernel is built and registered for the CPU."""
  if os.environ.get("GAUSSJAX_NATIVE", "1") == "0":
    return False
  library = _build()
  if library is None:
    return False
  try:
    lib = ctypes.cdll.LoadLibrary(str(library))
    jax.ffi.register_ffi_target("gaussjax_splat_forward",
                                jax.ffi.pycapsule(lib.GaussjaxSplatForward), platform="cpu")
    jax.ffi.register_ffi_target("gaussjax_splat_backward",
                                jax.ffi.pycapsule(lib.GaussjaxSplatBackward), platform="cpu")
    jax.ffi.register_ffi_target("gaussjax_splat_color_grad",
                                jax.ffi.pycapsule(lib.GaussjaxSplatColorGrad), platform="cpu")
  except (OSError, AttributeError, ValueError):
    return False
  return True


def _constants():
  return jnp.asarray([constants.WEIGHT_CUTOFF, constants.WEIGHT_SCALE, constants.CUTOFF_Q],
                     jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def splat(means, shapes, colors, height, width):
  """``[H, W, C]`` image of Gaussians given by means, shapes ``(α, r, β)`` and colours (float32)."""
  out = jax.ShapeDtypeStruct((height, width, colors.shape[-1]), jnp.float32)
  return jax.ffi.ffi_call("gaussjax_splat_forward", out, vmap_method="broadcast_all")(
      means, shapes, colors, _constants())


def _splat_fwd(means, shapes, colors, height, width):
  # Symbolic zeros: when only the colours are differentiated (a colour solve,
  # ``_density._solve_colors_device``), the backward is the colour transpose
  # alone, at about the cost of a forward.
  geometry = means.perturbed or shapes.perturbed
  means, shapes, colors = means.value, shapes.value, colors.value
  image = splat(means, shapes, colors, height, width)
  return image, ((means, shapes, colors) if geometry else (means, shapes))


def _splat_bwd(height, width, residuals, cotangent):
  means, shapes = residuals[:2]
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    cotangent = jnp.zeros(cotangent.shape, cotangent.dtype)
  cotangent = jnp.transpose(cotangent, (2, 0, 1)).astype(jnp.float32)
  if len(residuals) == 2:
    channels = cotangent.shape[-3]
    out = jax.ShapeDtypeStruct(means.shape[:-1] + (channels,), jnp.float32)
    d_colors = jax.ffi.ffi_call("gaussjax_splat_color_grad", out, vmap_method="broadcast_all")(
        means, shapes, _constants(), cotangent)
    return None, None, d_colors
  colors = residuals[2]
  outs = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (means, shapes, colors))
  return jax.ffi.ffi_call("gaussjax_splat_backward", outs, vmap_method="broadcast_all")(
      means, shapes, colors, _constants(), cotangent)


splat.defvjp(_splat_fwd, _splat_bwd, symbolic_zeros=True)


def usable(dtype, channels: int) -> bool:
  """Whether the native kernel serves this call (CPU, float32, few channels)."""
  return (jax.default_backend() == "cpu" and np.dtype(dtype) == np.float32
          and channels <= MAX_CHANNELS and available())
