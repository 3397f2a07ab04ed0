"""The rasteriser: ``render`` and its plain-jnp oracle ``render_reference``.

Call chain::

  render(gaussians, height, width, backend=...)      validates, picks a backend
    └─ rasterize(gaussians, height, width, backend, plan) -> (image, overflow)
         ├─ "reference" → render_reference            dense jnp, autodiff
         ├─ "xla"       → gaussjax._xla.rasterize_xla  portable fast path
         └─ "pallas"    → gaussjax._pallas.rasterize_pallas   kernels/ (Pallas)

All backends compute the function written in ``gaussjax.constants``.

Plans. The fast backends bin Gaussians into static-shaped buffers (size
classes, tile lists). A *plan* is the hashable, static description of those
shapes, chosen from concrete Gaussians by ``make_plan`` outside ``jit``.
``rasterize`` renders with a given plan and returns an ``overflow`` flag that is
True when some Gaussian did not fit the plan; then the image is incomplete and
the caller must re-plan and render again (``fit`` and ``encode`` do this).
``render`` hides all this: with concrete Gaussians it plans from them, so it
never overflows; under a transformation (``jit``, ``grad``, ``vmap``), where the
values are unknown, it uses the backend's default plan and returns an image
full of NaN if that plan overflows: contributions are never dropped silently.
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


def make_plan(gaussians: Gaussians, height: int, width: int, *, backend: str = "auto"):
  """The static binning plan of ``backend`` for these (concrete) Gaussians.

  Args:
    gaussians: concrete ``Gaussians``; leading batch axes are allowed, the plan
      then fits every element of the batch.
    height: output rows.
    width: output columns.
    backend: as in ``render``.

  Returns:
    A hashable plan for ``rasterize`` (``None`` for ``"reference"``).
  """
  backend = resolve_backend(backend)
  if backend == "reference":
    return None
  if backend == "xla":
    from gaussjax import _native
    from gaussjax._xla import plan_xla
    if _native.usable(jnp.result_type(*gaussians), np.shape(gaussians.colors)[-1]):
      return None  # the native CPU kernel bins nothing and never overflows
    return plan_xla(gaussians, height, width)
  from gaussjax._pallas import plan_pallas
  return plan_pallas(gaussians, height, width)


def rasterize(gaussians: Gaussians, height: int, width: int, *, backend: str = "auto", plan=None):
  """Renders with an explicit plan; the building block of ``render``.

  Args:
    gaussians: one set of ``Gaussians`` (``means [N, 2]``); batch with vmap.
    height: output rows.
    width: output columns.
    backend: as in ``render``.
    plan: from ``make_plan`` for the same backend and size, or ``None`` for the
      backend's default plan.

  Returns:
    ``(image [H, W, C], overflow)``: ``overflow`` is a boolean scalar array,
    True when some Gaussian did not fit the plan (the image is then
    incomplete: re-plan and render again).
  """
  backend = resolve_backend(backend)
  if backend == "reference":
    return render_reference(gaussians, height, width), jnp.zeros((), bool)
  if backend == "xla":
    from gaussjax._xla import rasterize_xla
    return rasterize_xla(gaussians, height, width, plan)
  from gaussjax._pallas import rasterize_pallas
  return rasterize_pallas(gaussians, height, width, plan)


def resolve_backend(backend: str) -> str:
  """Checks a backend name and resolves ``"auto"``."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
  return default_backend() if backend == "auto" else backend


def _is_concrete(tree) -> bool:
  """True when every leaf has a value (not traced by jit, grad or vmap)."""
  try:
    for leaf in jax.tree_util.tree_leaves(tree):
      np.asarray(leaf)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return False
  return True


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
  backend = resolve_backend(backend)
  if gaussians.means.ndim != 2:
    raise ValueError(
        f"render takes one set of Gaussians with means [N, 2], got {gaussians.means.shape}; "
        "use jax.vmap for a batch")
  if source_size is not None:
    h0, w0 = source_size
    _check_size(h0, w0)
    if (h0, w0) != (height, width):
      gaussians = scale_gaussians(gaussians, height / h0, width / w0)
  if backend == "reference":
    n = gaussians.num_gaussians
    if height * width * max(n, 1) > REFERENCE_MAX_ELEMENTS:
      raise ValueError(
          f"backend='reference' would build a {height}x{width}x{n} weight array; "
          "use backend='xla' or 'pallas' for images this large")
    return render_reference(gaussians, height, width)
  plan = make_plan(gaussians, height, width, backend=backend) if _is_concrete(gaussians) else None
  image, overflow = rasterize(gaussians, height, width, backend=backend, plan=plan)
  return jnp.where(overflow, jnp.nan, image)
