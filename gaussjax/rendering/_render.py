"""The rasteriser: ``render`` and its plain-jnp oracle ``render_reference``.

Call chain::

  render(gaussians, height, width, backend=...)      validates, picks a backend
    └─ rasterize(gaussians, height, width, backend, plan) -> (image, overflow)
         ├─ "reference" → render_reference            dense jnp, autodiff
         ├─ "xla"       → gaussjax.rendering._xla.rasterize_xla  portable fast path
         └─ "pallas"    → gaussjax.rendering._pallas.rasterize_pallas   kernels/ (Pallas)

All backends compute the function written in ``gaussjax.constants``.

Plans. The fast backends bin Gaussians into static-shaped buffers (size
classes, tile lists). A *plan* is the hashable, static description of those
shapes, chosen from concrete Gaussians by ``make_plan`` outside ``jit``.
``rasterize`` renders with a given plan and returns an ``overflow`` flag that is
True when some Gaussian did not fit the plan; then the image is incomplete and
the caller must re-plan and render again (the training loop, ``gaussjax.fitting._loop``,
does this with ``replan``).
``render`` hides all this: with concrete Gaussians it plans from them, so it
never overflows; under a transformation (``jit``, ``grad``, ``vmap``), where the
values are unknown, it uses the backend's default plan and returns an image
full of NaN if that plan overflows: contributions are never dropped silently.

The renderer owns plans and overflow; callers above it (the training loop in
``gaussjax.fitting._loop``, the codec) never look inside a plan:

  plan_for(gaussians, H, W, backend, previous)   the plan for the next run of
                                                 steps: the previous one kept
                                                 while it holds them with a
                                                 margin (a new plan is a new
                                                 compiled program), else a fresh
                                                 one with headroom for growth
  replan(gaussians, H, W, backend, attempt)      the one redo policy after an
                                                 overflow: a fresh plan with
                                                 2^attempt times the headroom,
                                                 an error after MAX_REPLANS
  render_complete(gaussians, H, W, backend)      render concrete Gaussians,
                                                 re-planning until complete
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gaussjax import constants
from gaussjax.core._gaussians import Gaussians, scale_gaussians, validate
from gaussjax.rendering._reference import render_reference

Array = jax.Array

BACKENDS = constants.BACKENDS

# The dense reference materialises an [H·W, N] weight matrix; past this many
# elements (4 GiB of float32) it refuses and points at the fast backends.
REFERENCE_MAX_ELEMENTS = 1 << 30


def default_backend() -> str:
  """The backend ``"auto"`` resolves to on the current default device."""
  platform = jax.default_backend()
  if platform == "gpu" or platform == "cuda":
    return "pallas"
  return "xla"


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
    from gaussjax.rendering import _native
    from gaussjax.rendering._xla import plan_xla
    if _native.usable(jnp.result_type(*gaussians), np.shape(gaussians.colors)[-1]):
      return None  # the native CPU kernel bins nothing and never overflows
    return plan_xla(gaussians, height, width)
  from gaussjax.rendering._pallas import plan_pallas
  return plan_pallas(gaussians, height, width)


# Plans while fitting. Every new plan is a new compiled program (seconds to
# tens of seconds on a loaded 2-core CPU), so plan_for keeps the previous plan
# while it still holds the Gaussians with _KEEP_MARGIN spare capacity and a
# fresh plan would not save more than 1 - _KEEP_COST of its work; fresh plans
# get _FIT_HEADROOM spare capacity (Gaussians grow while fitting), and XLA
# size classes room for _MIGRATE of the next smaller class's capacity.
# Measured on kodim03 at 192x128, N = 625, from random: 6 compiles in 40 steps
# with always-fresh plans of 25 % headroom.
_KEEP_MARGIN = 0.05
_KEEP_COST = 0.6
_FIT_HEADROOM = 0.6
_MIGRATE = 0.5

# Fresh plans tried after an overflow before giving up (each with twice the
# headroom of the one before).
MAX_REPLANS = 4


def uses_plans(backend: str, channels: int) -> bool:
  """Whether ``backend`` renders differently with different plans (else plans are None).

  False for the dense reference and for the native CPU kernel of the XLA
  backend, which bins nothing and never overflows.
  """
  backend = resolve_backend(backend)
  if backend == "reference":
    return False
  if backend == "xla":
    from gaussjax.rendering import _native
    return not _native.usable(jnp.float32, channels)
  return True


def vectorizes(backend: str = "auto") -> bool:
  """Whether a batch renders faster ``vmap``-ed (True) than looped per image (False).

  True on accelerators, and on the CPU with the native kernel of the XLA
  backend (it runs the images of a batch in parallel); False for the
  pure-XLA path on the CPU, whose window updates become scatters under
  ``vmap``.
  """
  if jax.default_backend() != "cpu":
    return True
  from gaussjax.rendering import _native
  return resolve_backend(backend) != "xla" or _native.usable(jnp.float32, 3)


def _xla_fit_plan(gaussians, height, width, headroom):
  from gaussjax.rendering._xla import XlaPlan, _round_capacity, plan_xla
  fresh = plan_xla(gaussians, height, width, headroom=headroom)
  # Gaussians grow into the next class while fitting: each class also gets
  # room for _MIGRATE of the previous class's capacity.
  caps, chunks = [fresh.capacities[0]], [fresh.chunks[0]]
  for k in range(1, len(fresh.sizes)):
    cap, chunk = _round_capacity(fresh.capacities[k] + _MIGRATE * fresh.capacities[k - 1],
                                 fresh.chunks[k])
    caps.append(cap)
    chunks.append(chunk)
  return XlaPlan(fresh.sizes, tuple(caps), tuple(chunks))


def _xla_cost(plan) -> int:
  return sum(cap * size * size for size, cap in zip(plan.sizes, plan.capacities))


def _xla_holds(plan, gaussians, height, width) -> bool:
  """Whether an ``XlaPlan`` holds these Gaussians with ``_KEEP_MARGIN`` to spare (host check)."""
  from gaussjax.rendering._xla import _needs_jit
  means = np.asarray(gaussians.means, np.float32).reshape(-1, 2)
  chol = np.asarray(gaussians.chol, np.float32).reshape(-1, 3)
  batch = max(means.shape[0] // max(np.shape(gaussians.means)[-2], 1), 1)
  side, _ = _needs_jit(means, chol, height, width)
  side = np.asarray(side).reshape(batch, -1)
  if side.size and side.max() > plan.sizes[-1]:
    return False
  limit = (1.0 - _KEEP_MARGIN) * np.asarray(plan.capacities)
  for row in side:
    row = row[row > 0]
    counts = np.bincount(np.searchsorted(np.asarray(plan.sizes), row, side="left"),
                         minlength=len(plan.sizes))
    if not np.all(counts <= limit):
      return False
  return True


def plan_for(gaussians: Gaussians, height: int, width: int, *, backend: str, previous=None,
             boost: float = 1.0):
  """The plan for the next run of fitting steps: ``(plan, made)``.

  Keeps ``previous`` while it holds these Gaussians with a margin (a new
  plan is a new compiled program); otherwise makes a fresh plan with
  headroom for Gaussians that grow and move while fitting. Backends that
  ignore plans (``uses_plans`` False) always get None.

  Args:
    gaussians: concrete ``Gaussians``, leading batch axes allowed (the plan
      then fits every element).
    height: output rows.
    width: output columns.
    backend: as in ``render``.
    previous: the plan in use, or None to force a fresh one.
    boost: multiplies the headroom of a fresh plan (``replan`` after overflow).

  Returns:
    ``(plan, made)``: ``made`` is True when the plan is new.
  """
  backend = resolve_backend(backend)
  if not uses_plans(backend, np.shape(gaussians.colors)[-1]):
    return None, previous is None
  if backend == "xla":
    from gaussjax.rendering._xla import XlaPlan
    if isinstance(previous, XlaPlan) and _xla_holds(previous, gaussians, height, width):
      fresh = _xla_fit_plan(gaussians, height, width, _FIT_HEADROOM)
      if _xla_cost(fresh) >= _KEEP_COST * _xla_cost(previous):
        return previous, False
      return fresh, True
    return _xla_fit_plan(gaussians, height, width, _FIT_HEADROOM * boost), True
  from gaussjax.rendering._pallas import PallasPlan, plan_holds, plan_pallas
  if isinstance(previous, PallasPlan) and plan_holds(previous, gaussians, height, width,
                                                     margin=_KEEP_MARGIN):
    return previous, False
  return plan_pallas(gaussians, height, width, headroom=1.0 + _FIT_HEADROOM * boost), True


def replan(gaussians: Gaussians, height: int, width: int, *, backend: str, attempt: int):
  """The redo policy after an overflow: a fresh plan with ``2^attempt`` times the headroom.

  Callers discard what was computed with the overflowed plan and redo it
  with this one (``gaussjax.fitting._loop`` redoes the whole chunk of steps).

  Raises:
    RuntimeError: after ``MAX_REPLANS`` attempts (a plan made for these
      Gaussians keeps overflowing).
  """
  if attempt > MAX_REPLANS:
    raise RuntimeError(f"the {backend} renderer overflowed {MAX_REPLANS} fresh plans made for "
                       "these Gaussians")
  plan, _ = plan_for(gaussians, height, width, backend=backend, previous=None,
                     boost=2.0 ** attempt)
  return plan


def render_complete(gaussians: Gaussians, height: int, width: int, *, backend: str = "auto"):
  """Renders concrete Gaussians completely: ``rasterize`` with ``replan`` until no overflow."""
  backend = resolve_backend(backend)
  if backend == "reference":
    return render(gaussians, height, width, backend=backend)  # its size checks
  plan = make_plan(gaussians, height, width, backend=backend)
  for attempt in range(1, MAX_REPLANS + 2):
    image, overflow = _rasterize_jit(gaussians, height, width, backend, plan)
    if not bool(overflow):
      return image
    plan = replan(gaussians, height, width, backend=backend, attempt=attempt)
  raise AssertionError("unreachable")  # pragma: no cover (replan raises first)


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
    from gaussjax.rendering._xla import rasterize_xla
    return rasterize_xla(gaussians, height, width, plan)
  from gaussjax.rendering._pallas import rasterize_pallas
  return rasterize_pallas(gaussians, height, width, plan)


_rasterize_jit = jax.jit(lambda g, h, w, b, p: rasterize(g, h, w, backend=b, plan=p),
                         static_argnums=(1, 2, 3, 4))


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
