"""Fitting Gaussians to an image with optax.

Call chain::

  fit(image, gaussians, config)             host: validation, history, stopping rules
    └─ _loop.run(_loop_step, state, ...)    the one training loop: compiled chunks
         │                                  of steps; plans and overflow redo by
         │                                  the render layer (_render.plan_for /
         │                                  replan); logging at chunk boundaries
         ├─ _loop_event(state, data, t)     jitted on its own, dispatched between
         │    └─ _event                     chunks where event_due(t): density
         │         └─ _density.densify_device   control on the device
         └─ _loop_step(state, data, t)      jitted, pure, inside a lax.scan
              └─ fit_step(state, image, config=, plan=)   pure, public
                   └─ rasterize(g, H, W, backend, plan) -> (image, overflow)
  finish(...)                               free slots filled (a run stopped while
                                            growing), the last history entry

``fit_step`` is pure: users who write their own loop call it directly (jit it
with ``config`` and ``plan`` static). A step whose render overflowed the plan
returns the state unchanged (never a step computed on an incomplete image) and
``overflow=True``. ``fit`` never sees that: the training loop redoes any chunk
of steps that overflowed from its start state with a fresh plan.

Adaptive density control (``gaussjax.fitting._density``) runs on the device in
the training loop, a compiled event between two chunks of steps: ``fit`` keeps a buffer of exactly ``num_gaussians`` slots, unused ones
parked off the image, so the compiled step never changes shape; at the event
steps of the ``Schedule`` an event prunes, splits and adds Gaussians where
the error is largest (random choices from the state's PRNG key), and resets
the optimiser moments of the slots it wrote. If ``fit`` stops early while
growing, the free slots are filled before returning, so the count is always
exactly N.

The host reads the device once per chunk (metrics of every step of it, for
the history and the stopping rules); ``benchmarks/results/fit_overhead_cpu.md``
measures what the loop costs over bare forward and backward passes.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaussjax.core._gaussians import Gaussians, validate
from gaussjax.core._image import check_image
from gaussjax.core._metrics import psnr as _psnr
from gaussjax.core._metrics import ssim as _ssim
from gaussjax.fitting import _density, _loop
from gaussjax.fitting._init import init_slic
from gaussjax.rendering import _render
from gaussjax.rendering._render import _is_concrete, rasterize, resolve_backend

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

  The default rates and decay were chosen with the ``benchmarks/represent.py``
  ablation (Kodak at 1/4 size, SLIC init).

  Density control is on by default: every ``densify_every`` steps up to
  ``densify_until`` of the run, the 5% of Gaussians that contribute least
  are moved to where the error is largest, and when ``fit`` is given fewer
  Gaussians than ``num_gaussians`` (as ``fit_image`` does: SLIC at
  ``initial_count``) the count grows to N over the first ``grow_until`` of the run. Set
  ``densify_every=0`` for plain fitting. What growth, relocation and
  splitting each add: the ablation tables of
  ``benchmarks/results/represent_cpu.md``.

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
      (at the first chunk boundary after it; they move and grow; a stale plan
      would overflow or waste work; a plan that still holds is kept).
    log_every: record a history entry this often (also the stopping-rule
      check interval; compiled chunks of steps end at these points).
    time_budget_s: fit in about this many seconds, or None. After the
      first chunks (the first one compiles) ``fit`` estimates the steps that
      fit the budget and runs the learning-rate schedule and the density
      events over that horizon instead of ``steps`` (a shorter schedule,
      not a cut one); it also stops once the budget is spent.
    target_psnr: stop once the PSNR reaches this (dB), or None.
    plateau_db: stop once the PSNR gained less than this (dB) over the last
      ``log_every`` steps (a plateau), or None.
    num_gaussians: the number of Gaussians ``fit`` returns, exactly; None
      keeps the number it is given. With fewer initial Gaussians the rest
      are added where the error is largest (progressively when
      ``densify_every > 0``, else all at step 0); with more, the least
      contributing are pruned at step 0.
    densify_every: steps between density-control events (0: none). Each
      event prunes, splits and adds Gaussians (``gaussjax.fitting._density``).
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


def lr_shape(step, horizon, config: FitConfig):
  """``make_optimizer``'s learning-rate schedule over its peak, for a run of ``horizon`` steps.

  ``step`` and ``horizon`` may be traced: the same warmup and cosine decay
  as ``_schedule`` (optax's ``warmup_cosine_decay_schedule``) in jnp.
  """
  step = jnp.asarray(step, jnp.float32)
  horizon = jnp.asarray(horizon, jnp.int32)
  warmup = jnp.minimum(config.warmup_steps, horizon // 10).astype(jnp.float32)
  decay = jnp.maximum(horizon.astype(jnp.float32), warmup + 1.0)
  start = 1.0 / (warmup + 1.0)
  rising = start + (1.0 - start) * step / jnp.maximum(warmup, 1.0)
  progress = jnp.clip((step - warmup) / (decay - warmup), 0.0, 1.0)
  end = config.final_lr_fraction
  falling = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup, rising, falling)


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
             mask: Array | None = None, horizon: Array | None = None) -> tuple[FitState, dict]:
  """One optimisation step; pure (jit it with ``config`` and ``plan`` static).

  Args:
    state: ``FitState`` from ``init_fit_state`` or a previous step.
    image: ``[H, W, C]`` float32 target in [0, 1].
    config: ``FitConfig``.
    plan: from ``make_plan(state.gaussians, H, W, backend=config.backend)``.
    mask: ``[H, W]`` loss mask, as in ``fit_loss`` (None: every pixel).
    horizon: the step at which the learning-rate schedule ends (a traced
      int scalar; None: ``config.steps``). ``fit`` shortens it to the steps
      that fit ``config.time_budget_s``.

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
  if horizon is not None:
    # The schedule of `horizon` steps instead of `config.steps`: Adam's update
    # is linear in the learning rate, and every field has the same shape.
    planned = lr_shape(state.step, config.steps, config)
    ratio = jnp.where(planned > 0, lr_shape(state.step, horizon, config) / planned, 0.0)
    updates = jax.tree_util.tree_map(lambda u: u * ratio, updates)
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

_jit_loss = jax.jit(fit_loss, static_argnames=("config", "plan"))


def _mean_grad_rms(opt_state, n: int) -> Array | None:
  """``[N]`` RMS of the recent gradients at the means (Adam's second moment), or None."""
  try:
    nu = opt_state.inner_states["means"].inner_state[0].nu.means
  except (AttributeError, KeyError, IndexError, TypeError):  # a user's own optimiser
    return None
  return jnp.sqrt(nu.sum(-1)) if nu.shape == (n, 2) else None


def _event(state: FitState, image, mask, target, split, plan, config: FitConfig,
           spec: _density.EventSpec) -> tuple[FitState, Array]:
  """One density-control event on the device: ``(state, overflow of its render)``."""
  height, width = image.shape[0], image.shape[1]
  n = state.gaussians.means.shape[0]
  render, overflow = rasterize(state.gaussians, height, width, backend=config.backend, plan=plan)
  residual = image - jnp.clip(render, 0.0, 1.0)
  if mask is not None:
    residual = residual * mask[:, :, None]
  grads = _mean_grad_rms(state.opt_state, n) if spec.max_split else None
  split = split if grads is not None else jnp.int32(0)
  if grads is None:
    grads = jnp.zeros((n,), jnp.float32)
  key = jax.random.fold_in(state.key, 0x0DE5)  # the event's own stream
  gaussians, written = _density.densify_device(
      key, state.gaussians, residual, mask, target, spec.prune, split, spec=spec, mean_grads=grads)
  opt_state = _density._reset_rows_jnp(state.opt_state, written, n)
  return state._replace(gaussians=gaussians, opt_state=opt_state), overflow


def _loop_step(state: FitState, data, t, plan, static):
  """The step of the training loop (``gaussjax.fitting._loop``): ``fit_step``."""
  config, _ = static
  image, mask, horizon = data
  new_state, metrics = fit_step(state, image, config=config, plan=plan, mask=mask,
                                horizon=horizon)
  return new_state, {"loss": metrics["loss"], "psnr": metrics["psnr"],
                     "overflow": metrics["overflow"]}


def _loop_event(state: FitState, data, t, plan, static):
  """The density event before step ``t`` of the training loop, where ``event_due`` says.

  Returns ``(state, overflow of its render)``. With a horizon (the data's
  third field) the events sit at the same fractions of the shorter run: the
  event is the last one passed since the previous step (its target includes
  the growth of any event passed with it).
  """
  config, spec = static
  image, mask, horizon = data
  steps = jnp.asarray(spec.steps, jnp.int32)
  if horizon is None:
    index = jnp.clip(jnp.searchsorted(steps, t), 0, len(spec.steps) - 1)
  else:
    virtual = (t * config.steps) // horizon
    index = jnp.maximum(jnp.searchsorted(steps, virtual, side="right") - 1, 0)
  target = jnp.asarray(spec.targets, jnp.int32)[index]
  split = jnp.asarray(spec.splits, jnp.int32)[index]
  return _event(state, image, mask, target, split, plan, config, spec)


def event_due(static, horizon: Callable[[], int] | None = None) -> Callable[[int], bool] | None:
  """The host side of ``_loop_event``: ``due(t)``, whether an event runs before step ``t``.

  Args:
    static: ``loop_static(...)``.
    horizon: the current horizon of a run fitted to a time budget (it
      changes between chunks, as the data's horizon), or None.

  Returns:
    ``due(t) -> bool``, or None when the run has no events.
  """
  config, spec = static
  if spec is None or not spec.steps:
    return None
  if horizon is None:
    return frozenset(spec.steps).__contains__
  steps = spec.steps

  def due(t: int) -> bool:
    h = horizon()
    virtual = lambda u: -1 if u < 0 else (u * config.steps) // h
    index = bisect.bisect_right(steps, virtual(t)) - 1
    return index >= 0 and steps[index] > virtual(t - 1)

  return due


@functools.partial(jax.jit, static_argnames=("plan", "config", "spec"))
def _fill(state: FitState, image, mask, *, plan, config, spec):
  """Fills every free slot (a fit stopped while growing): ``(state, overflow)``."""
  target = jnp.int32(state.gaussians.means.shape[0])
  return _event(state, image, mask, target, jnp.int32(0), plan, config, spec)


def finish(state: FitState, image, mask, schedule, config: FitConfig, plan, *, batched: bool):
  """The end of a fit: free slots filled, and the loss and PSNR of the fitted Gaussians.

  ``fit`` and ``gaussjax.fit_batch`` share it. The renderer's redo policy
  (``_render.replan``) applies on overflow.

  Returns:
    ``(state, loss, psnr, plans made)``.
  """
  height, width = image.shape[-3], image.shape[-2]
  made = 0
  active = np.asarray(state.gaussians.means)[..., 0] > _density.PARK_POSITION / 2
  if not active.all():  # stopped while growing: fill the rest
    spec = _density.EventSpec.make(schedule, height, width, config.backend, fill=True)
    for attempt in range(_render.MAX_REPLANS + 2):
      fill = lambda s, i, m, plan=plan: _fill(s, i, m, plan=plan, config=config, spec=spec)
      function = jax.vmap(fill) if batched else fill
      new_state, overflow = function(state, image, mask)
      if not bool(jnp.any(overflow)):
        state = new_state
        break
      plan = _render.replan(state.gaussians, height, width, backend=config.backend,
                            attempt=attempt + 1)
      made += 1
  for attempt in range(_render.MAX_REPLANS + 2):
    if batched:
      loss, aux = jax.vmap(lambda g, i, m: _jit_loss(g, i, config=config, plan=plan, mask=m))(
          state.gaussians, image, mask)
    else:
      loss, aux = _jit_loss(state.gaussians, image, config=config, plan=plan, mask=mask)
    if not bool(jnp.any(aux["overflow"])):
      return state, loss, aux["psnr"], made
    plan = _render.replan(state.gaussians, height, width, backend=config.backend,
                          attempt=attempt + 1)
    made += 1
  raise AssertionError("unreachable")  # pragma: no cover (replan raises first)


def chunk_steps(config: FitConfig) -> int:
  """Steps per compiled chunk of a fit: at most ``_loop.CHUNK_STEPS``, at most ``log_every``."""
  return max(1, min(_loop.CHUNK_STEPS, config.log_every, config.steps))


def loop_static(config: FitConfig, schedule, height: int, width: int):
  """``(step config, event spec)``: the static argument of ``_loop_step``.

  The step does not read the host-loop options: leaving them out of its
  static config lets fits that differ only in those share compiled steps.
  """
  step_config = dataclasses.replace(config, **_HOST_OPTIONS)
  spec = _density.EventSpec.make(schedule, height, width, config.backend) if schedule.events \
      else None
  return step_config, spec


def _check_image(image) -> Array:
  if not _is_concrete(image):
    raise TypeError("fit runs a host loop; call it on concrete arrays (use fit_step under jit)")
  return jnp.asarray(check_image(image))


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

  start = time.perf_counter()
  schedule = _density.Schedule.make(gaussians.num_gaussians, config)
  # A fixed buffer of N slots: parked slots wait to be filled (see _density).
  gaussians = _density.to_buffer(gaussians, schedule.target)
  state = init_fit_state(gaussians, config, key=key)
  steps, losses, psnrs, times = [], [], [], []
  chunk_start = [time.perf_counter() - start]

  def log(step, loss, psnr_value, wall):
    steps.append(step)
    losses.append(float(loss))
    psnrs.append(float(psnr_value))
    times.append(wall)
    if callback is not None:
      callback(step, {"loss": losses[-1], "psnr": psnrs[-1], "wall_time": wall})

  # With a time budget the learning-rate schedule (and the density events)
  # are fitted to the steps that the budget allows, estimated from the speed
  # of the chunks after the first (which compiles), instead of cutting a
  # schedule planned for more steps.
  budget = config.time_budget_s
  horizon = [config.steps]
  timing = []  # (seconds, steps done) at the end of each chunk

  def on_chunk(first, count, state, metrics):
    # One synchronisation per chunk; the chunk's steps share its time span
    # (the Gaussians of step `first` existed when the chunk started).
    loss, psnr_values = np.asarray(metrics["loss"]), np.asarray(metrics["psnr"])
    now = time.perf_counter() - start
    began = chunk_start[0]
    chunk_start[0] = now
    stop = False
    for i in range(count):
      step = first + i
      if step % config.log_every:
        continue
      log(step, loss[i], psnr_values[i], began + (now - began) * i / count)
      if config.target_psnr is not None and psnrs[-1] >= config.target_psnr:
        stop = True
      if (config.plateau_db is not None and len(psnrs) >= 2
          and steps[-1] - steps[-2] == config.log_every
          and psnrs[-1] - psnrs[-2] < config.plateau_db):
        stop = True
    done = first + count
    if budget is not None:
      timing.append((now, done))
      if now >= budget or done >= horizon[0]:
        stop = True
      elif len(timing) >= 2:
        (t0, s0), (t1, s1) = timing[0], timing[-1]
        per_step = (t1 - t0) / max(s1 - s0, 1)
        fits = done + int((budget - now) / max(per_step, 1e-9))
        horizon[0] = int(min(max(fits, done + 1), config.steps))
    return stop

  def refresh(data):
    return data[:2] + (jnp.asarray(horizon[0], jnp.int32),)

  static = loop_static(config, schedule, height, width)
  due = event_due(static, None if budget is None else lambda: horizon[0])
  state, info = _loop.run(
      _loop_step, state, (image, None, None if budget is None else jnp.int32(config.steps)),
      num_steps=config.steps, static=static, height=height, width=width, backend=backend,
      chunk=chunk_steps(config), replan_every=config.replan_every,
      boundary=lambda done: min((done // config.log_every + 1) * config.log_every, horizon[0]),
      on_chunk=on_chunk, refresh=None if budget is None else refresh,
      event=_loop_event if due else None, event_due=due)
  # Final entry: the fitted Gaussians themselves (free slots filled first).
  end_time = time.perf_counter() - start
  state, loss, psnr_value, made = finish(state, image, None, schedule, config, info.plan,
                                         batched=False)
  log(info.done, loss, psnr_value, end_time)
  history = FitHistory(
      np.asarray(steps, np.int64), np.asarray(losses, np.float64), np.asarray(psnrs, np.float64),
      np.asarray(times, np.float64), info.replans + made, info.overflows)
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


def init_for_fit(image, num_gaussians: int, config: FitConfig | None, *,
                 key: Array | None = None) -> Gaussians:
  """The Gaussians ``fit_image`` starts from: SLIC at ``initial_count(num_gaussians, config)``.

  ``fit`` with ``config`` (its ``num_gaussians`` set to ``num_gaussians``)
  grows them to ``num_gaussians``. ``config`` None: no fit follows, so SLIC
  at ``num_gaussians``. The one place of this recipe: the codec, the batch
  encoder and the CLI start their fits here too.
  """
  count = num_gaussians if config is None else initial_count(num_gaussians, config)
  return init_slic(np.asarray(image), count, key=key)


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
  (``init_for_fit``), then ``fit`` grows them to ``num_gaussians``
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
  if not isinstance(config, FitConfig):
    raise TypeError(f"config must be a gaussjax.FitConfig, got {type(config).__name__}")
  if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, (int, np.integer)):
    raise TypeError(f"num_gaussians must be an int, got {num_gaussians!r}")
  image = _check_image(image)
  key = jax.random.key(0) if key is None else key
  gaussians = init_for_fit(image, int(num_gaussians), config, key=key)
  config = dataclasses.replace(config, num_gaussians=int(num_gaussians))
  return fit(image, gaussians, config, key=key, callback=callback)
