"""Adaptive density control: error-guided addition, splitting and pruning.

``fit`` keeps a fixed buffer of N slots (N = the final count), so the jitted
step never changes shape while the number of live Gaussians grows:

  * an *inactive* slot holds a Gaussian parked off the image with colour 0; it
    renders nothing, gets zero gradients and costs the rasteriser nothing;
  * a densification event (host side, between chunks of jitted steps)
    1. prunes the live Gaussians that contribute least (``contributions``),
    2. splits the largest live Gaussians among those with the largest
       positional gradient (``split_gaussians``),
    3. fills the remaining free slots with new Gaussians sampled where the
       blurred residual is largest (``sample_from_error``),
    and resets the optimiser moments of every slot it wrote.

All functions here are NumPy on concrete arrays (they choose indices, which
is host work); ``fit`` calls them between chunks of jitted steps, so the
compiled step never changes shape (N is fixed) and only re-plans, at most.
Enable it through ``FitConfig`` (``num_gaussians``, ``densify_every``,
``prune_fraction``, ``split_fraction``, ``grow_until``, ``densify_until``).

Measured (``benchmarks/represent.py`` ablation, Kodak 03 and 23 at 1/4 size,
625 Gaussians, 300 steps): from SLIC at N, pruning and re-adding 2 % per
event changes PSNR by +0.05 dB, growing from N/2 by -0.1 to -0.2 dB, and
splitting adds nothing; from a random init, pruning 5 % adds +0.2 dB. Error
placement pays off where Gaussians are wasted, not after a good SLIC init at
these step counts, so ``fit`` leaves it off by default.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import scipy.ndimage

from gaussjax import constants
from gaussjax._gaussians import Gaussians

# Where inactive slots are parked: far off any image (their support box is
# empty, so the rasterisers skip them), with unit size and colour 0.
PARK_POSITION = -1.0e6


def park(gaussians: Gaussians, index) -> Gaussians:
  """Gaussians with the slots at ``index`` made inactive (off-image, colour 0)."""
  means = np.array(gaussians.means, np.float32)
  chol = np.array(gaussians.chol, np.float32)
  colors = np.array(gaussians.colors, np.float32)
  means[index] = PARK_POSITION
  chol[index] = (1.0, 0.0, 1.0)
  colors[index] = 0.0
  return Gaussians(means, chol, colors)


def is_active(gaussians: Gaussians) -> np.ndarray:
  """``[N]`` bool: the slots that are not parked."""
  return np.asarray(gaussians.means)[:, 0] > PARK_POSITION / 2


def contributions(gaussians: Gaussians) -> np.ndarray:
  """``[N]`` energy each Gaussian adds to the render: ``|c|² · ∫w²``.

  ``∫ w² = π sqrt(det Σ)`` for a Gaussian of peak 1 (cut-off neglected), with
  the rendered covariance (prefilter included). Removing Gaussian i changes
  the squared error by about this much (neglecting overlaps), so the smallest
  ones are pruned first.

  Args:
    gaussians: ``Gaussians`` (``means [N, 2]``, ``chol [N, 3]``, ``colors [N, C]``).

  Returns:
    ``[N]`` float64, 0 for parked slots.
  """
  chol = np.asarray(gaussians.chol, np.float64)
  l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
  floor = constants.COV_FLOOR
  det = (l11 * l22) ** 2 + floor * (l11 * l11 + l21 * l21 + l22 * l22) + floor * floor
  energy = np.sum(np.asarray(gaussians.colors, np.float64) ** 2, -1) * math.pi * np.sqrt(det)
  return np.where(is_active(gaussians), energy, 0.0)


def sample_from_error(
    rng: np.random.Generator,
    residual: np.ndarray,
    count: int,
    sigma: float,
    *,
    power: float = 1.0,
    color_gain: float = 0.5,
) -> Gaussians:
  """``count`` new isotropic Gaussians placed where the residual is largest.

  The residual is blurred at the new Gaussians' scale ``sigma``; pixels are
  drawn without replacement with probability proportional to
  ``|blurred residual|^power`` (Gumbel top-k). The colours are the joint
  least-squares fit of the new Gaussians to the residual (sparse, ridge-
  regularised towards ``color_gain`` times a lone Gaussian's least-squares
  colour ``2 · blur(residual)``), so crowds of new Gaussians do not overshoot.

  Args:
    rng: NumPy generator (positions within the pixel are jittered).
    residual: ``[H, W, C]`` target minus render.
    count: number of Gaussians to make.
    sigma: their standard deviation in pixels.
    power: sharpening of the sampling density (``0``: uniform).
    color_gain: scale of the initial colours (``< 1`` damps overshoot when
      neighbours are added together).

  Returns:
    ``Gaussians`` with ``count`` entries, float32.
  """
  height, width, channels = residual.shape
  count = int(min(count, height * width))
  blurred = np.stack([scipy.ndimage.gaussian_filter(residual[..., c], sigma, mode="nearest")
                      for c in range(channels)], -1)
  density = np.sqrt(np.sum(blurred * blurred, -1)).ravel()
  with np.errstate(divide="ignore"):
    logp = power * np.log(density + 1e-12)
  keys = logp + rng.gumbel(size=logp.shape)
  pick = np.argpartition(-keys, count - 1)[:count] if count else np.zeros(0, np.int64)
  ys, xs = np.divmod(pick, width)
  jitter = rng.uniform(-0.5, 0.5, (count, 2))
  means = np.stack([xs + 0.5, ys + 0.5], -1) + jitter
  chol = np.tile(np.asarray([[sigma, 0.0, sigma]]), (count, 1))
  prior = color_gain * 2.0 * blurred.reshape(-1, channels)[pick]
  colors = prior
  if count:
    from gaussjax._init import _solve_colors, _weight_matrix
    weights = _weight_matrix(means, chol, height, width)
    colors = _solve_colors(weights, residual.reshape(-1, channels).astype(np.float64), prior)
  return Gaussians(means.astype(np.float32), chol.astype(np.float32), colors.astype(np.float32))


def split_gaussians(
    gaussians: Gaussians, index: np.ndarray, *, shrink: float = 1.6) -> tuple[Gaussians, Gaussians]:
  """Splits each Gaussian at ``index`` into two along its major axis.

  The halves sit at ``±σ_major`` from the old centre, their factors divided by
  ``shrink`` (the 3D Gaussian splatting rule), colours kept.

  Args:
    gaussians: ``Gaussians``.
    index: ``[K]`` integer indices.
    shrink: factor by which both axes shrink.

  Returns:
    ``(first halves, second halves)``, each ``Gaussians`` with K entries.
  """
  means = np.asarray(gaussians.means, np.float64)[index]
  chol = np.asarray(gaussians.chol, np.float64)[index]
  colors = np.asarray(gaussians.colors, np.float32)[index]
  l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
  sxx, sxy, syy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
  # Major axis of [[sxx, sxy], [sxy, syy]].
  half = 0.5 * (sxx + syy)
  lam = half + np.sqrt(np.maximum(0.25 * (sxx - syy) ** 2 + sxy * sxy, 0.0))
  angle = 0.5 * np.arctan2(2.0 * sxy, sxx - syy)
  offset = np.sqrt(lam)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
  new_chol = (chol / shrink).astype(np.float32)
  first = Gaussians((means + offset).astype(np.float32), new_chol, colors)
  second = Gaussians((means - offset).astype(np.float32), new_chol.copy(), colors.copy())
  return first, second


def reset_rows(tree, index: np.ndarray, n: int):
  """Resets rows ``index`` of every ``[n, ...]`` array leaf (optimiser moments).

  First moments (and anything else) become 0. Adam's second moments (leaves
  under a ``nu`` field) become the median of the other rows: zero would let
  the next updates of a fresh Gaussian be about ``1/sqrt(1 - b2)`` (3x) too
  large, since Adam's bias correction is shared by all rows.
  """
  index = np.asarray(index, np.int64)
  if index.size == 0:
    return tree

  def reset(path, x):
    if not (hasattr(x, "ndim") and x.ndim >= 1 and x.shape[0] == n):
      return x
    value = 0.0
    if any(getattr(key, "name", None) == "nu" for key in path) and index.size < n:
      keep = np.ones(n, bool)
      keep[index] = False
      value = np.median(np.asarray(x)[keep], axis=0)
    x = np.array(x)
    x[index] = value
    return jax.numpy.asarray(x)

  return jax.tree_util.tree_map_with_path(reset, tree)


def write_rows(gaussians: Gaussians, index: np.ndarray, new: Gaussians) -> Gaussians:
  """Gaussians with rows ``index`` replaced by ``new`` (NumPy, float32)."""
  fields = []
  for old, value in zip(gaussians, new):
    old = np.array(old, np.float32)
    old[index] = np.asarray(value, np.float32)
    fields.append(old)
  return Gaussians(*fields)


def densify(
    rng: np.random.Generator,
    gaussians: Gaussians,
    residual: np.ndarray,
    *,
    target: int,
    prune: int = 0,
    split: int = 0,
    mean_grads: np.ndarray | None = None,
    power: float = 1.0,
    color_gain: float = 0.5,
    sigma_scale: float = 0.5,
) -> tuple[Gaussians, np.ndarray]:
  """One density-control event on a buffer of slots.

  1. The ``prune`` live Gaussians of least ``contributions`` are parked.
  2. Up to ``split`` live Gaussians are split (``split_gaussians``): among the
     quarter with the largest ``mean_grads``, the largest ones.
  3. Free slots are filled with ``sample_from_error`` until ``target`` are
     live, each of standard deviation ``sigma_scale · sqrt(H·W / target)``.

  Args:
    rng: NumPy generator.
    gaussians: ``Gaussians`` buffer (``means [N, 2]`` ...), parked slots included.
    residual: ``[H, W, C]`` image minus the current render.
    target: live Gaussians after the event (at most N).
    prune: how many to prune first.
    split: how many to split (each takes one free slot).
    mean_grads: ``[N]`` magnitude of the loss gradient at each mean (needed
      when ``split > 0``).
    power: as in ``sample_from_error``.
    color_gain: as in ``sample_from_error``.
    sigma_scale: size of new Gaussians relative to the spacing.

  Returns:
    ``(gaussians, written)``: the new buffer (NumPy float32) and the indices
    of the slots written (whose optimiser moments should be reset).
  """
  n = gaussians.means.shape[0]
  height, width, _ = residual.shape
  if not 0 <= target <= n:
    raise ValueError(f"{target=} must be between 0 and the buffer size {n}")
  active = is_active(gaussians)
  written = []
  if prune > 0:
    energy = np.where(active, contributions(gaussians), np.inf)
    prune = min(prune, int(active.sum()))
    drop = np.argpartition(energy, prune - 1)[:prune]
    gaussians = park(gaussians, drop)
    active = is_active(gaussians)
  free = np.flatnonzero(~active)
  need = target - int(active.sum())
  if need <= 0:
    return Gaussians(*(np.asarray(x, np.float32) for x in gaussians)), np.zeros(0, np.int64)
  split = min(split, need)
  if split > 0:
    if mean_grads is None:
      raise ValueError("split > 0 needs mean_grads")
    live = np.flatnonzero(active)
    grads = np.asarray(mean_grads)[live]
    pool = live[np.argsort(-grads)[: max(split, len(live) // 4)]]
    unit = Gaussians(gaussians.means, gaussians.chol, np.ones_like(gaussians.colors))
    size = contributions(Gaussians(*(np.asarray(x)[pool] for x in unit)))  # area, colour 1
    chosen = pool[np.argsort(-size)[:split]]
    first, second = split_gaussians(gaussians, chosen)
    slots = free[:len(chosen)]
    gaussians = write_rows(gaussians, chosen, first)
    gaussians = write_rows(gaussians, slots, second)
    written += [chosen, slots]
    free = free[len(chosen):]
    need -= len(chosen)
  if need > 0:
    sigma = sigma_scale * math.sqrt(height * width / max(target, 1))
    new = sample_from_error(rng, residual, need, sigma, power=power, color_gain=color_gain)
    slots = free[:need]
    gaussians = write_rows(gaussians, slots, new)
    written.append(slots)
  written = np.concatenate(written) if written else np.zeros(0, np.int64)
  return Gaussians(*(np.asarray(x, np.float32) for x in gaussians)), written


def to_buffer(gaussians: Gaussians, n: int) -> Gaussians:
  """``n`` slots from ``gaussians``: the least contributing dropped, or parked slots appended."""
  m = gaussians.means.shape[0]
  if m > n:
    keep = np.sort(np.argsort(-contributions(gaussians), kind="stable")[:n])
    return Gaussians(*(np.asarray(x, np.float32)[keep] for x in gaussians))
  if m < n:
    channels = gaussians.colors.shape[-1]
    extra = park(Gaussians(np.zeros((n - m, 2), np.float32), np.zeros((n - m, 3), np.float32),
                           np.zeros((n - m, channels), np.float32)), slice(None))
    return Gaussians(*(np.concatenate([np.asarray(a, np.float32), b])
                       for a, b in zip(gaussians, extra)))
  return gaussians


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When ``fit`` runs density-control events and what each one does.

  Attributes:
    initial: live Gaussians at step 0 (at most ``target``).
    target: the final count N.
    events: steps at which an event runs (step 0 fills the buffer at once
      when there is no progressive schedule).
    grow_end: the event step from which all ``target`` slots are live.
    prune: Gaussians pruned and re-added per event.
    split_fraction: fraction of the added Gaussians that come from splits.
  """

  initial: int
  target: int
  events: tuple[int, ...]
  grow_end: int
  prune: int
  split_fraction: float

  @staticmethod
  def make(initial: int, config) -> "Schedule":
    """The schedule of a ``FitConfig`` for ``initial`` Gaussians."""
    target = config.num_gaussians or initial
    initial = min(initial, target)
    events = ()
    if config.densify_every:
      last = int(config.densify_until * config.steps)
      every = config.densify_every
      events = tuple(range(every, min(last, config.steps - 1) + 1, every))
    growing = [e for e in events if e <= config.grow_until * config.steps] or list(events[:1])
    grow_end = growing[-1] if growing else 0
    if initial < target and not events:
      events, grow_end = (0,), 0
    prune = int(round(config.prune_fraction * target)) if config.densify_every else 0
    return Schedule(initial, target, events, grow_end, prune, config.split_fraction)

  def live(self, step: int) -> int:
    """Live Gaussians after the event at ``step``."""
    if step >= self.grow_end:
      return self.target
    return self.initial + int(round((self.target - self.initial) * step / self.grow_end))

  def event(self, step: int) -> tuple[int, int, int]:
    """``(live target, prune, split)`` of the event at ``step``."""
    previous = self.live(max(step - 1, 0)) if step else self.initial
    target = self.live(step)
    added = target - min(previous, target) + self.prune
    return target, self.prune, int(round(self.split_fraction * added))

  def next_event(self, step: int) -> int:
    """The first event step after ``step`` (a large number when none is left)."""
    return next((e for e in self.events if e > step), 1 << 62)
