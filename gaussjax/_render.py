"""The rasteriser: ``render`` and its plain-jnp oracle ``render_reference``.

Call chain::

  render(gaussians, height, width, backend=...)        validates, picks a backend
    ├─ "reference" → render_reference                   dense jnp, autodiff
    ├─ "xla"       → gaussjax._xla.render_xla            portable fast path
    └─ "pallas"    → gaussjax._pallas.render_pallas      GPU kernels (kernels/)

All backends compute the function written in ``gaussjax.constants``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants
from gaussjax._gaussians import Gaussians, conics, scale_gaussians, validate

Array = jax.Array

BACKENDS = ("auto", "reference", "xla", "pallas")

# The dense reference materialises an [H·W, N] weight matrix; past this many
# elements (4 GiB of float32) it refuses and points at the fast backends.
REFERENCE_MAX_ELEMENTS = 1 << 30


def default_backend() -> str:
  """The backend ``"auto"`` resolves to on the current default device."""
  platform = jax.default_backend()
  if platform == "gpu" or platform == "cuda":
    return "pallas"
  return "xla"


def pixel_centres(height: int, width: int, dtype=jnp.float32) -> tuple[Array, Array]:
  """``(x, y)`` coordinates of pixel centres, each ``[H, W]``."""
  ys = jnp.arange(height, dtype=dtype) + 0.5
  xs = jnp.arange(width, dtype=dtype) + 0.5
  return jnp.broadcast_to(xs[None, :], (height, width)), jnp.broadcast_to(ys[:, None], (height, width))


def gaussian_weight(q: Array) -> Array:
  """The truncated, continuous Gaussian profile of ``constants`` at radius² ``q``."""
  w = jnp.exp(-0.5 * q) - constants.WEIGHT_CUTOFF
  return jnp.maximum(w, 0.0) * constants.WEIGHT_SCALE


def render_reference(gaussians: Gaussians, height: int, width: int) -> Array:
  """Dense, obviously correct rendering: every Gaussian at every pixel.

  Args:
    gaussians: ``Gaussians`` with ``means [N, 2]``, ``chol [N, 3]``,
      ``colors [N, C]``.
    height: output rows.
    width: output columns.

  Returns:
    ``[height, width, C]`` image, not clipped.
  """
  means, chol, colors = gaussians
  dtype = jnp.result_type(means, chol, colors)
  conic = conics(chol.astype(dtype))  # [N, 3]
  px, py = pixel_centres(height, width, dtype)
  dx = px[:, :, None] - means[:, 0].astype(dtype)  # [H, W, N]
  dy = py[:, :, None] - means[:, 1].astype(dtype)
  q = conic[:, 0] * dx * dx + 2.0 * conic[:, 1] * dx * dy + conic[:, 2] * dy * dy
  w = gaussian_weight(q)  # [H, W, N]
  return jnp.einsum("hwn,nc->hwc", w, colors.astype(dtype), precision=jax.lax.Precision.HIGHEST)


def _check_size(height, width):
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{name} must be a Python int, got {value!r}")
    if value <= 0:
      raise ValueError(f"{name}={value} must be positive")
  if height * width > constants.MAX_PIXELS:
    raise ValueError(
        f"{height}x{width} = {height * width} pixels is over the limit of "
        f"{constants.MAX_PIXELS} (gaussjax.constants.MAX_PIXELS)")


def render(
    gaussians: Gaussians,
    height: int,
    width: int,
    *,
    backend: str = "auto",
    source_size: tuple[int, int] | None = None,
) -> Array:
  """Renders Gaussians to an image.

  ``I(p) = Σ_i c_i w_i(p)`` at every pixel centre, as written in
  ``gaussjax.constants``; no sorting, no depth. The result is not clipped:
  clip to [0, 1] for display and metrics.

  Args:
    gaussians: ``Gaussians`` (``means [N, 2]``, ``chol [N, 3]``, ``colors
      [N, C]``) in the pixel coordinates of a ``source_size`` image.
    height: output rows.
    width: output columns.
    backend: ``"auto"`` (Pallas on GPU, XLA elsewhere), ``"reference"``,
      ``"xla"`` or ``"pallas"`` (interpret mode when no GPU is present).
    source_size: ``(H0, W0)`` of the grid the Gaussians were fitted on, when
      rendering at another size (zoom, thumbnail): the same continuous picture
      is sampled on the new grid. Defaults to ``(height, width)``.

  Returns:
    ``[height, width, C]`` float image.

  Examples:
    >>> import jax, gaussjax
    >>> g = gaussjax.init_random(jax.random.key(0), 50, 32, 48, 3)
    >>> gaussjax.render(g, 32, 48, backend="reference").shape
    (32, 48, 3)
  """
  gaussians = validate(gaussians)
  _check_size(height, width)
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
  if gaussians.means.ndim != 2:
    raise ValueError(
        f"render takes one set of Gaussians with means [N, 2], got {gaussians.means.shape}; "
        "use jax.vmap for a batch")
  if source_size is not None:
    h0, w0 = source_size
    _check_size(h0, w0)
    if (h0, w0) != (height, width):
      gaussians = scale_gaussians(gaussians, height / h0, width / w0)
  if backend == "auto":
    backend = default_backend()
  if backend == "reference":
    n = gaussians.num_gaussians
    if height * width * max(n, 1) > REFERENCE_MAX_ELEMENTS:
      raise ValueError(
          f"backend='reference' would build a {height}x{width}x{n} weight array; "
          "use backend='xla' or 'pallas' for images this large")
    return render_reference(gaussians, height, width)
  if backend == "xla":
    from gaussjax._xla import render_xla
    return render_xla(gaussians, height, width)
  from gaussjax._pallas import render_pallas
  return render_pallas(gaussians, height, width)
