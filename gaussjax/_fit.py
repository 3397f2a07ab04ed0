"""Fitting Gaussians to an image with optax.

Call chain::

  fit(image, gaussians, config)            host loop: plans, logging, stopping
    ├─ make_plan(g, H, W, backend)         outside jit, from concrete Gaussians
    └─ fit_step(state, image, config=, plan=)   jitted, pure
         └─ rasterize(g, H, W, backend, plan) -> (image, overflow)

``fit_step`` is pure: users who write their own loop call it directly (jit it
with ``config`` and ``plan`` static). A step whose render overflowed the plan
returns the state unchanged (never a step computed on an incomplete image) and
``overflow=True``; the caller re-plans from the current Gaussians and goes on.
Since an unchanged state with the same plan overflows again, ``fit`` only
reads the step counter at the end of each chunk of steps (up to the next log
or re-plan point), so the device is never synchronised inside a chunk; the
steps lost to an overflow are at most one chunk.

Adaptive density control (``gaussjax._density``, off by default) runs on the
host between chunks: ``fit`` keeps a buffer of exactly ``num_gaussians``
slots, unused ones parked off the image, so the compiled step never changes
shape; an event prunes, splits and adds Gaussians where the error is
largest, and resets the optimiser moments of the slots it wrote. If ``fit``
stops early while growing, the free slots are filled before returning, so
the count is always exactly N.

Plans (xla backend): each new plan is a new compiled step, so ``fit`` keeps
its plan while it still holds the Gaussians (checked on the host), gives new
plans room for Gaussians that grow into larger classes, and never re-plans
when the native kernel (which ignores plans) renders.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaussjax import _density
from gaussjax._gaussians import Gaussians, validate
from gaussjax._metrics import psnr as _psnr
from gaussjax._metrics import ssim as _ssim
from gaussjax._render import _is_concrete, make_plan, rasterize, resolve_backend

Array = jax.Array

# The attributes of Gaussians, in the order of the pytree.
_FIELDS = Gaussians._fields


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """Options of ``fit`` / ``fit_step`` (hashable: a static jit argument).

  Adam steps are about ``lr`` in size. The learning rates of the means and
  Cholesky factors are relative to the mean spacing of the Gaussians,
  ``sqrt(H·W / N)`` pixels, so the same defaults work at any image size and
  Gaussian count; colours are in intensity per step. Each rate follows a
  linear warmup then a cosine decay to ``lr · final_lr_fraction`` at
  ``steps``.

  Defaults (measured, ``benchmarks/represent.py`` ablation: Kodak 03 and 23
  at 1/4 size with 625 Gaussians, the density of 10k at full size, 300
  steps, SLIC init): twice the earlier rates (0.15, 0.03, 0.02) and a decay
  to 0.2 instead of 0.05 of the peak gain 0.46 dB (32.49 -> 32.95 dB); rates
  x3 gain less (32.63), colour rate x2 alone nothing (32.44).

  Density control is on by default: every ``densify_every`` steps up to
  ``densify_until`` of the run, the 5% of Gaussians that contribute least
  are moved to where the error is largest, and when ``fit`` is given fewer
  Gaussians than ``num_gaussians`` (as ``fit_image`` does: SLIC at half of
  N) the count grows to N over the first ``grow_until`` of the run. Set
  ``densify_every=0`` for plain fitting. Measured (``represent.py``
  ablation, Kodak 03/13/23 at 1/4 size, 625 Gaussians): +0.46 dB over plain
  fitting from SLIC at N after 600 steps and +0.91 dB after 2,300 (growth
  alone +0.16 / +0.21, relocation alone +0.01 / +0.25; splitting and events
  every 100 steps gain less).

  Attributes:
    steps: optimisation steps (the schedule's horizon).
    lr_means: Adam learning rate of the means (in units of the spacing).
    lr_chol: Adam learning rate of the Cholesky factors (same units).
    lr_colors: Adam learning rate of the colours.
    warmup_steps: linear warmup length (at most a tenth of ``steps``).
    final_lr_fraction: learning rate at the end, relative to the peak.
    l1_weight: weight of mean |render - image|.
    l2_weight: weight of mean (render - image)².
    ssim_weight: weight of 1 - SSIM (costs a few times a render on CPU;
      0 by default).
    backend: renderer (``"auto"``, ``"reference"``, ``"xla"``, ``"pallas"``).
    replan_every: re-plan the binning from the current Gaussians this often
      (they move and grow; a stale plan would overflow or waste work).
    log_every: record a history entry this often (also the stopping-rule
      check interval).
    time_budget_s: stop after this many seconds (checked every
      ``log_every`` steps), or None.
    target_psnr: stop once the PSNR reaches this (dB), or None.
    plateau_db: stop once the PSNR gained less than this (dB) over the last
      ``log_every`` steps (a plateau), or None.
    num_gaussians: the number of Gaussians ``fit`` returns, exactly; None
      keeps the number it is given. With fewer initial Gaussians the rest
      are added where the error is largest (progressively when
      ``densify_every > 0``, else all at step 0); with more, the least
      contributing are pruned at step 0.
    densify_every: steps between density-control events (0: none). Each
      event prunes, splits and adds Gaussians (``gaussjax._density``).
    densify_until: no events after this fraction of ``steps``.
    grow_until: the count grows linearly from the initial number to
      ``num_gaussians`` over the events up to this fraction of ``steps``.
    prune_fraction: at each event, this fraction of ``num_gaussians`` with
      the least contribution is pruned and re-added where the error is
      largest (the count is unchanged).
    split_fraction: of the Gaussians added at an event, this fraction
      comes from splitting large Gaussians with large positional gradients,
      the rest from error-guided sampling.
  """

  steps: int = 2000
  # Defaults measured on two Kodak images at 1/8 size, N = 150, 150 steps, from
  # SLIC and random init (PSNR within 0.2 dB of the best of 13 settings tried,
  # lr_means 0.05-1.0 px at spacing 6.4 px, lr_chol 0.02-0.3, lr_colors 0.003-0.04).
  # Checked at half size, N = 1000, 200 steps, xla backend (kodim05, kodim23):
  # 22.46 / 29.39 dB; doubling lr_means and lr_chol +0.05-0.09 dB, halving them
  # -0.1-0.2 dB, halving lr_colors -0.03-0.1 dB.
  lr_means: float = 0.3
  lr_chol: float = 0.06
  lr_colors: float = 0.04
  warmup_steps: int = 20
  final_lr_fraction: float = 0.2
  l1_weight: float = 0.0
  l2_weight: float = 1.0
  ssim_weight: float = 0.0
  backend: str = "auto"
  replan_every: int = 100
  log_every: int = 100
  time_budget_s: float | None = None
  target_psnr: float | None = None
  plateau_db: float | None = None
  num_gaussians: int | None = None
  densify_every: int = 30
  densify_until: float = 0.6
  grow_until: float = 0.3
  prune_fraction: float = 0.05
  split_fraction: float = 0.0

  def __post_init__(self):
    for name in ("steps", "replan_every", "log_every"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"FitConfig.{name}={value!r} must be a positive int")
    if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"FitConfig.warmup_steps={self.warmup_steps!r} must be a non-negative int")
    for name in ("lr_means", "lr_chol", "lr_colors", "l1_weight", "l2_weight", "ssim_weight",
                 "final_lr_fraction"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"FitConfig.{name}={value!r} must be a finite number >= 0")
    if self.l1_weight + self.l2_weight + self.ssim_weight <= 0:
      raise ValueError("FitConfig: at least one of l1_weight, l2_weight, ssim_weight must be positive")
    resolve_backend(self.backend)
    if self.num_gaussians is not None and (
        isinstance(self.num_gaussians, bool) or not isinstance(self.num_gaussians, int)
        or self.num_gaussians <= 0):
      raise ValueError(f"FitConfig.num_gaussians={self.num_gaussians!r} must be a positive int or None")
    if isinstance(self.densify_every, bool) or not isinstance(self.densify_every, int) or self.densify_every < 0:
      raise ValueError(f"FitConfig.densify_every={self.densify_every!r} must be a non-negative int")
    for name in ("densify_until", "grow_until", "prune_fraction", "split_fraction"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"FitConfig.{name}={value!r} must be a number in [0, 1]")
    if self.plateau_db is not None and not (
        isinstance(self.plateau_db, (int, float)) and math.isfinite(self.plateau_db)):
      raise ValueError(f"FitConfig.plateau_db={self.plateau_db!r} must be a finite number or None")
    if self.time_budget_s is not None and not self.time_budget_s > 0:
      raise ValueError(f"FitConfig.time_budget_s={self.time_budget_s!r} must be positive or None")


class FitState(NamedTuple):
  """The state carried between ``fit_step`` calls (a pytree)."""

  gaussians: Gaussians  # means [N, 2], chol [N, 3], colors [N, C]
  opt_state: Any  # optax state of make_optimizer(config)
  step: Array  # [] int32, accepted steps so far
  key: Array  # PRNG key, for stochastic extensions (unused by the plain loss)


class FitHistory(NamedTuple):
  """What ``fit`` logged, one entry per logged step (NumPy arrays).

  Attributes:
    step: ``[T]`` step index at which the entry was recorded.
    loss: ``[T]`` training loss at that step.
    psnr: ``[T]`` PSNR (dB) of the clipped render at that step.
    wall_time: ``[T]`` seconds from the start of ``fit`` until the Gaussians
      of that step existed (initialisation of the state and compilation
      included).
    replans: number of plans made (initial, periodic and after overflow).
    overflows: number of overflowed chunks that were re-planned and redone.
  """

  step: np.ndarray
  loss: np.ndarray
  psnr: np.ndarray
  wall_time: np.ndarray
  replans: int
  overflows: int


def _schedule(lr: float, config: FitConfig) -> optax.Schedule:
  # The warmup never takes more than a tenth of the run.
  warmup = min(config.warmup_steps, config.steps // 10)
  return optax.warmup_cosine_decay_schedule(
      init_value=lr / (warmup + 1),  # the first step already moves
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=max(config.steps, warmup + 1),
      end_value=lr * config.final_lr_fraction)


def gaussian_spacing(height: int, width: int, n: int) -> float:
  """The mean spacing ``sqrt(H·W / N)`` in pixels of N Gaussians covering an image."""
  return math.sqrt(height * width / max(n, 1))


def make_optimizer(config: FitConfig, *, spacing: float = 1.0) -> optax.GradientTransformation:
  """Adam with a learning rate and schedule per Gaussian attribute.

  Args:
    config: ``FitConfig`` (learning rates, schedule).
    spacing: pixels per unit of ``lr_means`` and ``lr_chol``
      (``gaussian_spacing(H, W, N)`` in ``fit_step``). The optimiser state does
      not depend on it.

  Returns:
    An optax ``GradientTransformation`` over ``Gaussians``.
  """
  lrs = {"means": config.lr_means * spacing, "chol": config.lr_chol * spacing,
         "colors": config.lr_colors}
  transforms = {name: optax.adam(_schedule(lrs[name], config)) for name in _FIELDS}
  labels = Gaussians(*_FIELDS)
  return optax.multi_transform(transforms, labels)


def init_fit_state(gaussians: Gaussians, config: FitConfig, *, key: Array | None = None) -> FitState:
  """The initial ``FitState`` for ``gaussians`` under ``config``.

  Args:
    gaussians: ``Gaussians`` (``means [N, 2]``...), cast to float32.
    config: ``FitConfig``.
    key: PRNG key kept in the state; ``jax.random.key(0)`` when None.

  Returns:
    ``FitState`` at step 0.
  """
  gaussians = validate(gaussians).astype(jnp.float32)
  if key is None:
    key = jax.random.key(0)
  opt_state = make_optimizer(config).init(gaussians)
  return FitState(gaussians, opt_state, jnp.zeros((), jnp.int32), key)


def masked_mean(values: Array, mask: Array | None) -> Array:
  """Mean of ``values [H, W, C]`` over the pixels where ``mask [H, W]`` is 1.

  ``None`` averages every pixel. Pixels with mask 0 (padding of a batch, see
  ``gaussjax.fit_batch``) change neither the value nor its gradient.
  """
  if mask is None:
    return jnp.mean(values)
  weight = mask[:, :, None].astype(values.dtype)
  return jnp.sum(values * weight) / (jnp.sum(weight) * values.shape[-1])


def _loss_terms(render: Array, image: Array, config: FitConfig, mask: Array | None = None) -> Array:
  loss = jnp.zeros((), render.dtype)
  diff = render - image
  if config.l2_weight:
    loss = loss + config.l2_weight * masked_mean(jnp.square(diff), mask)
  if config.l1_weight:
    loss = loss + config.l1_weight * masked_mean(jnp.abs(diff), mask)
  if config.ssim_weight:
    if mask is not None:
      raise ValueError("a loss mask cannot be combined with ssim_weight > 0: SSIM windows "
                       "would see the masked pixels")
    loss = loss + config.ssim_weight * (1.0 - _ssim(render, image))
  return loss


def fit_loss(gaussians: Gaussians, image: Array, *, config: FitConfig, plan=None,
             mask: Array | None = None) -> tuple[Array, dict]:
  """The training loss of ``gaussians`` against ``image`` and its side outputs.

  The loss is computed on the unclipped render (so gradients flow through
  overshoots); PSNR on the render clipped to [0, 1].

  Args:
    gaussians: ``Gaussians`` fitted at ``image``'s size.
    image: ``[H, W, C]`` target in [0, 1].
    config: ``FitConfig`` (loss weights, backend).
    plan: the backend's plan (from ``make_plan``), or None.
    mask: ``[H, W]``, 1 on pixels that count and 0 on padding (loss and PSNR
      are means over the pixels that count); None: every pixel counts.

  Returns:
    ``(loss, {"psnr": ..., "overflow": ...})``.
  """
  height, width = image.shape[0], image.shape[1]
  render, overflow = rasterize(gaussians, height, width, backend=config.backend, plan=plan)
  loss = _loss_terms(render, image, config, mask)
  if mask is None:
    psnr_value = _psnr(jnp.clip(render, 0.0, 1.0), image)
  else:
    psnr_value = -10.0 * jnp.log10(masked_mean(jnp.square(jnp.clip(render, 0.0, 1.0) - image), mask))
  return loss, {"psnr": psnr_value, "overflow": overflow}


def fit_step(state: FitState, image: Array, *, config: FitConfig, plan=None,
             mask: Array | None = None) -> tuple[FitState, dict]:
  """One optimisation step; pure (jit it with ``config`` and ``plan`` static).

  Args:
    state: ``FitState`` from ``init_fit_state`` or a previous step.
    image: ``[H, W, C]`` float32 target in [0, 1].
    config: ``FitConfig``.
    plan: from ``make_plan(state.gaussians, H, W, backend=config.backend)``.
    mask: ``[H, W]`` loss mask, as in ``fit_loss`` (None: every pixel).

  Returns:
    ``(new_state, metrics)`` with metrics ``loss``, ``psnr`` (of the Gaussians
    before the update) and ``overflow``. When ``overflow`` is True the render
    was incomplete and ``new_state`` is ``state`` unchanged: re-plan and call
    again.

  Examples:
    >>> import jax, gaussjax
    >>> image = jax.random.uniform(jax.random.key(1), (16, 16, 3))
    >>> g = gaussjax.init_random(jax.random.key(0), 20, 16, 16, 3)
    >>> config = gaussjax.FitConfig(steps=10, backend="reference")
    >>> state = gaussjax.init_fit_state(g, config)
    >>> step = jax.jit(gaussjax.fit_step, static_argnames=("config", "plan"))
    >>> state, metrics = step(state, image, config=config)
    >>> int(state.step), bool(metrics["overflow"])
    (1, False)
  """
  (loss, aux), grads = jax.value_and_grad(fit_loss, has_aux=True)(
      state.gaussians, image, config=config, plan=plan, mask=mask)
  n = state.gaussians.means.shape[-2]
  if mask is None:
    optimizer = make_optimizer(config, spacing=gaussian_spacing(image.shape[-3], image.shape[-2], n))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.gaussians)
  else:
    # The spacing of the pixels that count (padding must not change the step)
    # is a traced value here; Adam's update is linear in the learning rate, so
    # the spacing scales the updates of the fields whose rate it multiplies.
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.gaussians)
    spacing = jnp.sqrt(jnp.sum(mask) / max(n, 1))
    updates = Gaussians(updates.means * spacing, updates.chol * spacing, updates.colors)
  gaussians = optax.apply_updates(state.gaussians, updates)
  key, _ = jax.random.split(state.key)
  new_state = FitState(gaussians, opt_state, state.step + 1, key)
  overflow = aux["overflow"]
  # Reject the whole step when the render was incomplete.
  new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(overflow, old, new), new_state, state)
  return new_state, {"loss": loss, "psnr": aux["psnr"], "overflow": overflow}


# FitConfig fields read only by fit's host loop, with their defaults.
_HOST_OPTIONS = {name: FitConfig.__dataclass_fields__[name].default for name in (
    "replan_every", "log_every", "time_budget_s", "target_psnr", "plateau_db", "num_gaussians",
    "densify_every",
    "densify_until", "grow_until", "prune_fraction", "split_fraction")}

_jit_step = jax.jit(fit_step, static_argnames=("config", "plan"))
_jit_loss = jax.jit(fit_loss, static_argnames=("config", "plan"))
_jit_rasterize = jax.jit(rasterize, static_argnames=("height", "width", "backend", "plan"))


# Plans of the xla backend while fitting. Every new plan is a new compiled
# step (seconds to tens of seconds on a loaded 2-core CPU), so fit keeps its
# plan while that still holds the Gaussians with _KEEP_MARGIN spare capacity
# and a fresh plan would not save more than 1 - _KEEP_COST of the window
# pixels; new plans get _FIT_HEADROOM spare capacity (Gaussians grow while
# fitting). Measured on kodim03 at 192x128, N = 625, from random: 6 compiles
# in 40 steps with always-fresh plans of 25 % headroom.
_KEEP_MARGIN = 0.05
_KEEP_COST = 0.6
_FIT_HEADROOM = 0.6
_MIGRATE = 0.5


def _xla_cost(plan) -> int:
  return sum(cap * size * size for size, cap in zip(plan.sizes, plan.capacities))


def _xla_holds(plan, gaussians, height, width) -> bool:
  """Whether an ``XlaPlan`` holds these Gaussians with ``_KEEP_MARGIN`` to spare (host check)."""
  from gaussjax._xla import _needs_jit
  side, _ = _needs_jit(jnp.asarray(gaussians.means, jnp.float32), jnp.asarray(gaussians.chol, jnp.float32),
                       height, width)
  side = np.asarray(side)
  side = side[side > 0]
  if side.size and side.max() > plan.sizes[-1]:
    return False
  counts = np.bincount(np.searchsorted(np.asarray(plan.sizes), side, side="left"), minlength=len(plan.sizes))
  return bool(np.all(counts <= (1.0 - _KEEP_MARGIN) * np.asarray(plan.capacities)))


def _choose_plan(gaussians, height, width, backend, plan):
  """The plan for the next chunk: ``(plan, 1 if a new one was made else 0)``.

  ``plan`` is the current one, or None to force a new plan (after overflow).
  """
  if backend != "xla":
    return make_plan(gaussians, height, width, backend=backend), 1
  from gaussjax import _native
  from gaussjax._xla import XlaPlan, _round_capacity, plan_xla
  if plan is not None and _native.usable(jnp.float32, gaussians.colors.shape[-1]):
    return plan, 0  # the native kernel ignores plans: a new one would only recompile
  fresh = plan_xla(gaussians, height, width, headroom=_FIT_HEADROOM)
  # Gaussians grow into the next class while fitting: each class also gets
  # room for _MIGRATE of the previous class's capacity.
  caps, chunks = [fresh.capacities[0]], [fresh.chunks[0]]
  for k in range(1, len(fresh.sizes)):
    cap, chunk = _round_capacity(fresh.capacities[k] + _MIGRATE * fresh.capacities[k - 1], fresh.chunks[k])
    caps.append(cap)
    chunks.append(chunk)
  fresh = XlaPlan(fresh.sizes, tuple(caps), tuple(chunks))
  if isinstance(plan, XlaPlan) and _xla_holds(plan, gaussians, height, width):
    if _xla_cost(fresh) >= _KEEP_COST * _xla_cost(plan):
      return plan, 0
  return fresh, 1


def _render_fresh(gaussians, height, width, backend, plan):
  """Renders with ``plan``, re-planning if it is None or overflows: ``(image, plan, plans made)``."""
  made = 0
  if plan is None:
    plan, made = _choose_plan(gaussians, height, width, backend, None)
  render, overflow = _jit_rasterize(gaussians, height=height, width=width, backend=backend, plan=plan)
  if bool(overflow):
    plan, more = _choose_plan(gaussians, height, width, backend, None)
    made += more
    render, overflow = _jit_rasterize(gaussians, height=height, width=width, backend=backend, plan=plan)
  return render, plan, made


def _mean_grad_rms(opt_state, n: int) -> np.ndarray | None:
  """``[N]`` RMS of the recent gradients at the means (Adam's second moment)."""
  try:
    nu = opt_state.inner_states["means"].inner_state[0].nu.means
  except (AttributeError, KeyError, IndexError, TypeError):  # a user's own optimiser
    return None
  nu = np.asarray(nu)
  return np.sqrt(nu.sum(-1)) if nu.shape == (n, 2) else None


def _density_event(state: FitState, image, config: FitConfig, plan, rng, *, target, prune, split):
  """One density-control event on ``state`` (host side): ``(state, plan, plans made)``."""
  height, width = image.shape[0], image.shape[1]
  n = state.gaussians.means.shape[0]
  render, plan, made = _render_fresh(state.gaussians, height, width, config.backend, plan)
  residual = np.asarray(image) - np.clip(np.asarray(render), 0.0, 1.0)
  grads = _mean_grad_rms(state.opt_state, n) if split else None
  gaussians, written = _density.densify(
      rng, state.gaussians, residual, target=target, prune=prune, split=split if grads is not None else 0,
      mean_grads=grads)
  gaussians = Gaussians(*(jnp.asarray(x) for x in gaussians))
  opt_state = _density.reset_rows(state.opt_state, written, n)
  state = state._replace(gaussians=gaussians, opt_state=opt_state)
  # Make sure the plan holds the new Gaussians before the next chunk.
  _, plan, made_after = _render_fresh(state.gaussians, height, width, config.backend, plan)
  return state, plan, made + made_after


def host_rng(key: Array) -> np.random.Generator:
  """The NumPy generator of the host-side density events of a fit whose state holds ``key``."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist())


def density_event(state: FitState, image, config: FitConfig, schedule, step: int, rng) -> FitState:
  """The density-control event of ``schedule`` at ``step`` on one image's ``state`` (host side).

  ``gaussjax.fit_batch`` calls this per image, so a batch makes the same
  events as ``fit``.
  """
  target, prune, split = schedule.event(step)
  state, _, _ = _density_event(state, image, config, None, rng, target=target, prune=prune,
                               split=split)
  return state


def _check_image(image) -> Array:
  if not _is_concrete(image):
    raise TypeError("fit runs a host loop; call it on concrete arrays (use fit_step under jit)")
  shape = np.shape(image)
  if len(shape) == 2:
    image = np.asarray(image)[..., None]
    shape = image.shape
  if len(shape) != 3 or 0 in shape:
    raise ValueError(f"image must be [H, W, C], got shape {shape}")
  if not np.issubdtype(np.asarray(image).dtype, np.floating):
    raise TypeError(f"image must be floating point in [0, 1], got dtype {np.asarray(image).dtype}")
  image = jnp.asarray(image, jnp.float32)
  if not bool(jnp.all(jnp.isfinite(image))):
    raise ValueError("image contains NaN or infinite values")
  return image


def fit(
    image,
    gaussians: Gaussians,
    config: FitConfig = FitConfig(),
    *,
    key: Array | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[Gaussians, FitHistory]:
  """Fits ``gaussians`` to ``image`` by gradient descent.

  Runs jitted ``fit_step`` calls in chunks, re-planning the renderer's binning
  every ``config.replan_every`` steps and after any overflow (an overflowed
  step is never accepted). Stops after ``config.steps`` steps, or earlier at
  ``config.time_budget_s``, ``config.target_psnr`` or ``config.plateau_db``. Deterministic for a
  given input and backend (no randomness in the plain loss; ``key`` seeds the
  state's PRNG for stochastic extensions).

  Args:
    image: ``[H, W, C]`` float image in [0, 1] (``[H, W]`` for grey).
    gaussians: initial ``Gaussians`` with C colour channels, in the pixel
      coordinates of ``image``.
    config: ``FitConfig``.
    key: PRNG key of the state (``jax.random.key(0)`` when None).
    callback: called as ``callback(step, metrics)`` at every logged step,
      ``metrics`` holding floats ``loss``, ``psnr``, ``wall_time``.

  Returns:
    ``(fitted Gaussians, FitHistory)``; the last history entry is the
    fitted Gaussians' own loss and PSNR.

  Examples:
    >>> import jax, gaussjax
    >>> image = jax.random.uniform(jax.random.key(1), (16, 16, 3))
    >>> g = gaussjax.init_random(jax.random.key(0), 30, 16, 16, 3)
    >>> config = gaussjax.FitConfig(steps=20, log_every=10, backend="reference")
    >>> fitted, history = gaussjax.fit(image, g, config)
    >>> bool(history.psnr[-1] > history.psnr[0])
    True
  """
  if not isinstance(config, FitConfig):
    raise TypeError(f"config must be a gaussjax.FitConfig, got {type(config).__name__}")
  image = _check_image(image)
  gaussians = validate(gaussians)
  if gaussians.means.ndim != 2:
    raise ValueError(f"fit takes one set of Gaussians with means [N, 2], got {gaussians.means.shape}")
  if gaussians.channels != image.shape[-1]:
    raise ValueError(
        f"gaussians have {gaussians.channels} colour channels but the image has {image.shape[-1]}")
  height, width = image.shape[0], image.shape[1]
  backend = resolve_backend(config.backend)
  config = dataclasses.replace(config, backend=backend)  # one compiled step per backend
  # The step does not read the host-loop options: leaving them out of its
  # static config lets fits that differ only in those share compiled steps.
  step_config = dataclasses.replace(config, **_HOST_OPTIONS)

  start = time.perf_counter()
  schedule = _density.Schedule.make(gaussians.num_gaussians, config)
  # A fixed buffer of N slots: parked slots wait to be filled (see _density).
  gaussians = _density.to_buffer(gaussians, schedule.target)
  state = init_fit_state(gaussians, config, key=key)
  rng = host_rng(state.key)
  steps, losses, psnrs, times = [], [], [], []
  replans = overflows = 0
  plan = None
  last_event = -1
  need_plan = True
  last_plan_step = 0
  done = 0

  def log(step, loss, psnr_value, wall):
    steps.append(step)
    losses.append(float(loss))
    psnrs.append(float(psnr_value))
    times.append(wall)
    if callback is not None:
      callback(step, {"loss": losses[-1], "psnr": psnrs[-1], "wall_time": wall})

  while done < config.steps:
    if done in schedule.events and done != last_event:
      last_event = done
      target, prune, split = schedule.event(done)
      state, plan, made = _density_event(
          state, image, config, plan, rng, target=target, prune=prune, split=split)
      replans += made
      need_plan = False
      if made:
        last_plan_step = done
    chunk_start = time.perf_counter() - start  # the state at step `done` exists now
    if need_plan or done - last_plan_step >= config.replan_every:
      plan, made = _choose_plan(state.gaussians, height, width, backend, None if need_plan else plan)
      need_plan = False
      replans += made
      last_plan_step = done
    # A chunk runs without synchronising, up to the next log or re-plan point.
    next_log = (done // config.log_every + 1) * config.log_every
    end = min(next_log, last_plan_step + config.replan_every, config.steps, schedule.next_event(done))
    first_metrics = None
    for i in range(end - done):
      state, metrics = _jit_step(state, image, config=step_config, plan=plan)
      if i == 0:
        first_metrics = metrics  # metrics of the Gaussians at step `done`
    new_done = int(state.step)  # synchronises once per chunk
    if new_done > done and done % config.log_every == 0:  # the first step was accepted
      log(done, first_metrics["loss"], first_metrics["psnr"], chunk_start)
    if new_done < end:  # a step overflowed: state is the last good one; re-plan
      overflows += 1
      need_plan = True
    done = new_done
    if config.target_psnr is not None and psnrs and psnrs[-1] >= config.target_psnr:
      break
    if config.plateau_db is not None and len(psnrs) >= 2 and steps[-1] - steps[-2] == config.log_every:
      if psnrs[-1] - psnrs[-2] < config.plateau_db:
        break
    if config.time_budget_s is not None and time.perf_counter() - start >= config.time_budget_s:
      break

  if not _density.is_active(state.gaussians).all():  # stopped while growing: fill the rest
    state, _, _ = _density_event(state, image, config, plan, rng, target=schedule.target, prune=0, split=0)
  # Final entry: the fitted Gaussians themselves, through the compiled step
  # (its metrics are those of the Gaussians before the update).
  end_time = time.perf_counter() - start
  if backend == "xla":
    plan, made = _choose_plan(state.gaussians, height, width, backend, plan)
    replans += made
  else:
    plan = make_plan(state.gaussians, height, width, backend=backend)
  _, metrics = _jit_step(state, image, config=step_config, plan=plan)
  if bool(metrics["overflow"]):
    plan = make_plan(state.gaussians, height, width, backend=backend)
    replans += 1
    _, metrics = _jit_step(state, image, config=step_config, plan=plan)
    if bool(metrics["overflow"]):  # pragma: no cover (a fresh plan never overflows)
      raise RuntimeError("the renderer overflowed a fresh plan")
  log(done, metrics["loss"], metrics["psnr"], end_time)
  history = FitHistory(
      np.asarray(steps, np.int64), np.asarray(losses, np.float64), np.asarray(psnrs, np.float64),
      np.asarray(times, np.float64), replans, overflows)
  return state.gaussians, history


GROW_FROM = 0.5
"""Fraction of N that ``fit_image`` initialises with SLIC; ``fit`` grows the rest."""


def initial_count(num_gaussians: int, config: FitConfig) -> int:
  """How many Gaussians ``fit_image`` initialises for a fit to ``num_gaussians``.

  ``GROW_FROM`` of N when ``config`` has density control (``fit`` adds the
  rest where the error is largest), else N.
  """
  if num_gaussians <= 0:
    raise ValueError(f"num_gaussians={num_gaussians} must be positive")
  if not config.densify_every:
    return num_gaussians
  return max(1, int(math.ceil(GROW_FROM * num_gaussians)))


def fit_image(
    image,
    num_gaussians: int,
    config: FitConfig = FitConfig(),
    *,
    key: Array | None = None,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[Gaussians, FitHistory]:
  """Represents ``image`` with exactly ``num_gaussians`` Gaussians: init and fit in one call.

  SLIC-initialises ``initial_count(num_gaussians, config)`` Gaussians
  (``gaussjax.init_slic``), then ``fit`` grows them to ``num_gaussians``
  while fitting (``config.num_gaussians`` is set to it). The recommended way
  to fit an image; use ``init_slic`` and ``fit`` directly for other
  initialisations.

  Args:
    image: ``[H, W, C]`` float image in [0, 1] (``[H, W]`` for grey).
    num_gaussians: N, the number of Gaussians returned.
    config: ``FitConfig``; its ``num_gaussians`` is replaced by N.
    key: PRNG key of the initialisation and the fit state
      (``jax.random.key(0)`` when None).
    callback: as in ``fit``.

  Returns:
    ``(fitted Gaussians with N rows, FitHistory)``.

  Examples:
    >>> import numpy as np, gaussjax
    >>> image = np.random.default_rng(0).random((24, 24, 3), np.float32)
    >>> config = gaussjax.FitConfig(steps=30, log_every=10)
    >>> fitted, history = gaussjax.fit_image(image, 40, config)
    >>> fitted.means.shape
    (40, 2)
  """
  from gaussjax._init import init_slic
  if not isinstance(config, FitConfig):
    raise TypeError(f"config must be a gaussjax.FitConfig, got {type(config).__name__}")
  if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, (int, np.integer)):
    raise TypeError(f"num_gaussians must be an int, got {num_gaussians!r}")
  image = _check_image(image)
  key = jax.random.key(0) if key is None else key
  gaussians = init_slic(np.asarray(image), initial_count(int(num_gaussians), config), key=key)
  config = dataclasses.replace(config, num_gaussians=int(num_gaussians))
  return fit(image, gaussians, config, key=key, callback=callback)
