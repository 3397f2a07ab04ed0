"""Adaptive density control: error-guided addition, splitting and pruning.

``fit`` keeps a fixed buffer of N slots (N = the final count), so the jitted
step never changes shape while the number of live Gaussians grows:

  * an *inactive* slot holds a Gaussian parked off the image with colour 0; it
    renders nothing, gets zero gradients and costs the rasteriser nothing;
  * a densification event
    1. prunes the live Gaussians that contribute least (``contributions``),
    2. splits the largest live Gaussians among those with the largest
       positional gradient (``split_gaussians``),
    3. fills the remaining free slots with new Gaussians sampled where the
       blurred residual is largest (``sample_from_error``),
    and resets the optimiser moments of every slot it wrote.

Two implementations of the event: ``densify`` (NumPy/SciPy on concrete
arrays, host side, a reference and a tool) and ``densify_device`` (jnp with
static shapes: the one ``fit`` runs, on the device between the compiled chunks
of ``gaussjax.fitting._loop`` at the steps of a ``Schedule``, described statically by
an ``EventSpec``; random choices from the fit state's PRNG key). Both make
the same counts of pruned, split and added Gaussians. Enable it through
``FitConfig`` (``num_gaussians``, ``densify_every``, ``prune_fraction``,
``split_fraction``, ``grow_until``, ``densify_until``).

Density control is on by default (``FitConfig.densify_every``; 0 turns it
off). The ablation that chose the defaults is ``benchmarks/represent.py``,
its numbers in ``benchmarks/results/represent_cpu.md``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from gaussjax import constants
from gaussjax.core._gaussians import Gaussians
from gaussjax.fitting._init import SLIC_RIDGE

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
  det = rendered_det(gaussians.chol)
  energy = np.sum(np.asarray(gaussians.colors, np.float64) ** 2, -1) * math.pi * np.sqrt(det)
  return np.where(is_active(gaussians), energy, 0.0)


def rendered_det(chol, xp=np) -> np.ndarray:
  """``[N]`` ``det Σ`` of the rendered covariance ``L Lᵀ + COV_FLOOR · I``.

  numpy (``xp=np``, the default): in float64. ``xp=jnp``: in ``chol``'s dtype.
  """
  chol = np.asarray(chol, np.float64) if xp is np else chol
  l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
  floor = constants.COV_FLOOR
  return (l11 * l22) ** 2 + floor * (l11 * l11 + l21 * l21 + l22 * l22) + floor * floor


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
    from gaussjax.fitting._init import _solve_colors, _weight_matrix
    weights = _weight_matrix(means, chol, height, width)
    colors = _solve_colors(weights, residual.reshape(-1, channels).astype(np.float64), prior)
  return Gaussians(means.astype(np.float32), chol.astype(np.float32), colors.astype(np.float32))


def _split_offset(chol, xp):
  """``[K, 2]``: one standard deviation along the major axis of each ``L Lᵀ``.

  ``xp`` is ``numpy`` (``split_gaussians``) or ``jax.numpy`` (``_split_jnp``).
  """
  l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
  sxx, sxy, syy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
  # Major axis of [[sxx, sxy], [sxy, syy]].
  half = 0.5 * (sxx + syy)
  lam = half + xp.sqrt(xp.maximum(0.25 * (sxx - syy) ** 2 + sxy * sxy, 0.0))
  angle = 0.5 * xp.arctan2(2.0 * sxy, sxx - syy)
  return xp.sqrt(lam)[:, None] * xp.stack([xp.cos(angle), xp.sin(angle)], -1)


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
  offset = _split_offset(chol, np)
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


# --------------------------------------------------------------------------- on the device
#
# The same event as ``densify``, in jnp with static shapes, so that it runs
# on the device in the training loop (``gaussjax.fitting._loop``: a compiled
# program of its own between two chunks of steps) with no host round trip
# of data. Counts (how many are pruned, split
# and added) follow the same ``Schedule``; the random choices come from the
# PRNG key of the fit state, so runs are deterministic. The colours of new
# Gaussians are the same ridge least-squares fit to the residual as on the
# host, solved by a fixed number of preconditioned iterations through the
# renderer (its forward and transpose) instead of a sparse factorisation.

# Iterations of the colour solve of new Gaussians (each a render of them and
# its transpose), and its ridge relative to a Gaussian's squared norm.
SOLVE_ITERATIONS = 12
RIDGE = SLIC_RIDGE
# Lower end of the spectrum the Chebyshev iteration of the solve is tuned for
# (the upper end is 1 after its preconditioning).
SOLVE_SPECTRUM_MIN = 0.03


@dataclasses.dataclass(frozen=True)
class EventSpec:
  """Static description of the density events of a fit (hashable).

  Attributes:
    steps: event steps, increasing.
    targets: live Gaussians after each event.
    splits: Gaussians split at each event (at most).
    prune: Gaussians pruned at each event (at most the live ones).
    max_prune: static bound of ``prune`` (array shapes).
    max_new: static bound of the Gaussians added by one event (shapes).
    max_split: static bound of the splits of one event.
    radius: static radius of the residual blur (pixels).
    backend: renderer of the colour solve.
  """

  steps: tuple[int, ...]
  targets: tuple[int, ...]
  splits: tuple[int, ...]
  prune: int
  max_new: int
  max_split: int
  radius: int
  backend: str

  @staticmethod
  def make(schedule: "Schedule", height: int, width: int, backend: str, *,
           fill: bool = False, sigma_scale: float = 0.5) -> "EventSpec":
    """The events of ``schedule`` for images of at most ``height x width`` pixels.

    ``fill``: one event (at no step) that fills every free slot, for a fit
    stopped early while growing.
    """
    pixels = height * width
    if fill:
      steps, targets, splits, new = (), (), (), [schedule.target]
    else:
      steps = schedule.events
      targets, splits, new = [], [], []
      live = schedule.initial  # what the buffer holds before each event
      for step in steps:
        target, prune, split = schedule.event(step)
        targets.append(target)
        splits.append(split)
        new.append(target - (live - min(prune, live)))
        live = max(target, live - min(prune, live))
    smallest = min([schedule.initial, *targets] if targets else [schedule.initial]) or 1
    sigma = sigma_scale * math.sqrt(pixels / max(smallest, 1))
    radius = int(min(4.0 * sigma + 1.5, max(height, width)))
    max_new = int(min(max(new + [0]), schedule.target, pixels))
    return EventSpec(tuple(steps), tuple(targets), tuple(splits), schedule.prune if not fill else 0,
                     max_new, int(min(max(splits + [0]), max_new)) if not fill else 0, radius,
                     backend)


def _contributions_jnp(gaussians: Gaussians, active):
  chol = gaussians.chol
  l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
  floor = constants.COV_FLOOR
  det = (l11 * l22) ** 2 + floor * (l11 * l11 + l21 * l21 + l22 * l22) + floor * floor
  energy = jnp.sum(gaussians.colors ** 2, -1) * math.pi * jnp.sqrt(det)
  return jnp.where(active, energy, 0.0)


def _active_jnp(gaussians: Gaussians):
  return gaussians.means[:, 0] > PARK_POSITION / 2


def _real_size(residual, mask):
  """Rows and columns of the real (unpadded) image, as int32 scalars."""
  height, width = residual.shape[:2]
  if mask is None:
    return jnp.int32(height), jnp.int32(width)
  return (jnp.sum(mask[:, 0] > 0).astype(jnp.int32), jnp.sum(mask[0, :] > 0).astype(jnp.int32))


def _blur(residual, mask, sigma, radius: int):
  """``scipy.ndimage.gaussian_filter(mode="nearest")`` of each channel on the real pixels.

  ``sigma`` is traced; ``radius`` (static) bounds the kernel, whose taps past
  ``round(4 sigma)`` are zero, as scipy truncates. Padding (``mask``) is
  first filled with its nearest real pixel, so real pixels blur as alone.
  """
  height, width, channels = residual.shape
  real_h, real_w = _real_size(residual, mask)
  rows = jnp.minimum(jnp.arange(height), real_h - 1)
  cols = jnp.minimum(jnp.arange(width), real_w - 1)
  x = residual[rows][:, cols]
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * taps * taps / (sigma * sigma))
  weights = jnp.where(jnp.abs(taps) <= jnp.floor(4.0 * sigma + 0.5), weights, 0.0)
  weights = weights / jnp.sum(weights)
  # A loop of shifted multiply-adds per axis (XLA:CPU runs a grouped
  # convolution with a long kernel element by element).
  for axis, size in ((0, height), (1, width)):
    pad = [(0, 0)] * 3
    pad[axis] = (radius, radius)
    padded = jnp.pad(x, pad, mode="edge")

    def tap(k, out, padded=padded, axis=axis, size=size):
      return out + weights[k] * jax.lax.dynamic_slice_in_dim(padded, k, size, axis)

    x = jax.lax.fori_loop(0, 2 * radius + 1, tap, jnp.zeros_like(x))
  return x


def _mix32(h):
  """The finaliser of MurmurHash3: a bijective mix of uint32 values."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _pixel_uniform(key, height: int, width: int):
  """``[H, W]`` uniforms in (0, 1) that depend on the pixel coordinates only, not the array shape.

  A padded image draws the same numbers at its real pixels as the image
  alone. A hash of (key, row, column): cheap, and plenty for sampling.
  """
  data = jax.random.key_data(key).ravel().astype(jnp.uint32)
  ys = jnp.arange(height, dtype=jnp.uint32)[:, None]
  xs = jnp.arange(width, dtype=jnp.uint32)[None, :]
  h = _mix32(ys * jnp.uint32(0x9E3779B1) ^ _mix32(xs ^ data[0]))
  h = _mix32(h ^ data[-1])
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24)) + 0.5 / (1 << 24)


def _solve_colors_device(means, chol, valid, residual, mask, prior, sigma, backend):
  """Ridge least squares ``argmin ||W c - r||² + λ ||c - prior||²``, iteratively.

  ``W c`` is the render of these Gaussians with colours ``c`` (linear in
  ``c``); its transpose is the render's VJP. Falls back to ``prior`` where
  the renderer's default plan overflows.
  """
  from gaussjax.rendering._render import rasterize
  height, width = residual.shape[:2]
  weight = 1.0 if mask is None else mask[:, :, None]
  park = jnp.asarray([PARK_POSITION, PARK_POSITION], means.dtype)
  means = jnp.where(valid[:, None], means, park)

  def forward(colors):
    image, overflow = rasterize(Gaussians(means, chol, colors), height, width, backend=backend)
    return image * weight, overflow

  _, vjp_fn, overflow = jax.vjp(forward, prior, has_aux=True)
  normal = lambda c: vjp_fn(forward(c)[0])[0]
  lam = RIDGE * math.pi * (sigma * sigma + constants.COV_FLOOR)
  keep = valid[:, None].astype(prior.dtype)
  matvec = lambda c: (normal(c) + lam * c) * keep
  rhs = (vjp_fn(residual * weight)[0] + lam * prior) * keep
  # Chebyshev iteration preconditioned by the row sums of the (nonnegative)
  # normal matrix, which puts its spectrum in (0, 1]: it converges for any
  # overlap, and unlike conjugate gradients its coefficients do not depend on
  # the data, so float rounding (a padded image in a batch) changes the
  # result by rounding only. Directions with eigenvalues below
  # SOLVE_SPECTRUM_MIN (Gaussians that overlap almost completely) converge
  # slowly; the ridge would hold them near the prior anyway.
  rows = matvec(jnp.ones_like(prior))
  rows = jnp.where(rows > 0, rows, 1.0)
  theta = 0.5 * (1.0 + SOLVE_SPECTRUM_MIN)
  delta = 0.5 * (1.0 - SOLVE_SPECTRUM_MIN)
  sigma1 = theta / delta
  x = prior * keep
  r = rhs - matvec(x)
  d = r / rows / theta
  rho = 1.0 / sigma1

  def body(_, carry):
    x, r, d, rho = carry
    x = x + d
    r = r - matvec(d)
    rho_next = 1.0 / (2.0 * sigma1 - rho)
    d = rho_next * rho * d + (2.0 * rho_next / delta) * (r / rows)
    return x, r, d, rho_next

  x, _, _, _ = jax.lax.fori_loop(0, SOLVE_ITERATIONS, body, (x, r, d, rho))
  ok = jnp.logical_not(overflow) & jnp.all(jnp.isfinite(x))
  return jnp.where(ok, x, prior)


def _split_jnp(means, chol, shrink: float = 1.6):
  """``split_gaussians`` in jnp: ``(first means, second means, new chol)``."""
  offset = _split_offset(chol, jnp)
  return means + offset, means - offset, chol / shrink


def _reset_rows_jnp(tree, written, n: int):
  """``reset_rows`` on the device: ``written [N]`` bool marks the rows to reset."""
  rows = lambda x: hasattr(x, "ndim") and x.ndim >= 1 and x.shape[0] == n
  is_nu = lambda path: any(getattr(key, "name", None) == "nu" for key in path)
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  # The medians of every nu leaf's columns, from one sort (one compiled
  # sort instead of one per leaf; each column's median is its own).
  nus = [x.reshape(n, -1) for path, x in leaves if rows(x) and is_nu(path)]
  medians = []
  if nus:
    columns = jnp.concatenate([x.astype(jnp.float32) for x in nus], axis=1)
    median = jnp.nanmedian(jnp.where(written[:, None], jnp.nan, columns), axis=0)
    median = jnp.where(jnp.isfinite(median), median, 0.0)
    medians = list(jnp.split(median, np.cumsum([x.shape[1] for x in nus])[:-1]))

  def reset(path, x):
    if not rows(x):
      return x
    mark = written.reshape((n,) + (1,) * (x.ndim - 1))
    value = jnp.zeros((), x.dtype)
    if is_nu(path):
      value = medians.pop(0).reshape(x.shape[1:]).astype(x.dtype)
    return jnp.where(mark, value, x)
  return jax.tree_util.tree_map_with_path(reset, tree)


def densify_device(key, gaussians: Gaussians, residual, mask, target, prune, split, *,
                   spec: EventSpec, mean_grads=None, power: float = 1.0,
                   color_gain: float = 0.5, sigma_scale: float = 0.5):
  """``densify`` on the device, with static shapes: ``(gaussians, written [N] bool)``.

  Args:
    key: PRNG key of the event.
    gaussians: the buffer of N slots (``means [N, 2]`` ...).
    residual: ``[H, W, C]`` image minus the clipped render (0 on padding).
    mask: ``[H, W]`` 1 on real pixels (None: all real).
    target: live Gaussians after the event (traced int).
    prune: how many to prune first (traced, at most ``spec.prune``).
    split: how many to split (traced, at most ``spec.max_split``).
    spec: ``EventSpec`` (static bounds).
    mean_grads: ``[N]`` gradient magnitudes at the means (needed when
      ``spec.max_split > 0``).
    power, color_gain, sigma_scale: as in ``densify``.
  """
  n = gaussians.means.shape[0]
  height, width, channels = residual.shape
  key_noise, key_jitter = jax.random.split(key)
  active = _active_jnp(gaussians)
  means, chol, colors = gaussians
  park_mean = jnp.full((2,), PARK_POSITION, means.dtype)
  park_chol = jnp.asarray([1.0, 0.0, 1.0], chol.dtype)

  # 1. Prune the least contributing live Gaussians.
  if spec.prune > 0:
    energy = _contributions_jnp(gaussians, active)
    count = jnp.minimum(prune, jnp.sum(active))
    _, drop = jax.lax.top_k(jnp.where(active, -energy, -jnp.inf), min(spec.prune, n))
    drop = jnp.where(jnp.arange(drop.shape[0]) < count, drop, n)
    means = means.at[drop].set(park_mean, mode="drop")
    chol = chol.at[drop].set(park_chol, mode="drop")
    colors = colors.at[drop].set(0.0, mode="drop")
    active = active.at[drop].set(False, mode="drop")
  live = jnp.sum(active).astype(jnp.int32)
  need = jnp.clip(target - live, 0, spec.max_new)
  # The free slots in index order, then n (jnp.nonzero's result; a stable
  # sort compiles in a fraction of its time).
  free = jnp.argsort(active, stable=True)
  free = jnp.where(jnp.arange(n) < n - jnp.sum(active), free, n)
  written = jnp.zeros((n,), bool)

  # 2. Split the largest of the live Gaussians with the largest positional gradients.
  used = jnp.int32(0)
  if spec.max_split > 0:
    split = jnp.minimum(split, need)
    grads = jnp.where(active, mean_grads, -jnp.inf)
    order = jnp.argsort(-grads, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    pool = active & (rank < jnp.maximum(split, live // 4))
    floor = constants.COV_FLOOR
    l11, l21, l22 = chol[:, 0], chol[:, 1], chol[:, 2]
    size = jnp.sqrt((l11 * l22) ** 2 + floor * (l11 * l11 + l21 * l21 + l22 * l22) + floor * floor)
    _, chosen = jax.lax.top_k(jnp.where(pool, size, -jnp.inf), spec.max_split)
    ok = jnp.arange(spec.max_split) < split
    chosen = jnp.where(ok, chosen, n)
    slots = jnp.where(ok, free[jnp.arange(spec.max_split)], n)
    first, second, new_chol = _split_jnp(means[jnp.minimum(chosen, n - 1)],
                                         chol[jnp.minimum(chosen, n - 1)])
    halves_colors = colors[jnp.minimum(chosen, n - 1)]
    means = means.at[chosen].set(first, mode="drop").at[slots].set(second, mode="drop")
    chol = chol.at[chosen].set(new_chol, mode="drop").at[slots].set(new_chol, mode="drop")
    colors = colors.at[slots].set(halves_colors, mode="drop")
    written = written.at[chosen].set(True, mode="drop").at[slots].set(True, mode="drop")
    used = split
    need = need - split

  # 3. Fill free slots where the blurred residual is largest (Gumbel top-k).
  if spec.max_new > 0:
    real_h, real_w = _real_size(residual, mask)
    sigma = sigma_scale * jnp.sqrt((real_h * real_w).astype(jnp.float32)
                                   / jnp.maximum(target, 1).astype(jnp.float32))
    blurred = _blur(residual, mask, sigma, spec.radius)
    density = jnp.sqrt(jnp.sum(blurred * blurred, -1))
    logp = power * jnp.log(density + 1e-12)
    if mask is not None:
      logp = jnp.where(mask > 0, logp, -jnp.inf)
    gumbel = -jnp.log(-jnp.log(_pixel_uniform(key_noise, height, width)))
    count = min(spec.max_new, height * width)
    _, pick = jax.lax.top_k((logp + gumbel).ravel(), count)
    ys, xs = jnp.divmod(pick, width)
    jitter = jax.random.uniform(key_jitter, (count, 2), jnp.float32, -0.5, 0.5)
    new_means = jnp.stack([xs + 0.5, ys + 0.5], -1).astype(jnp.float32) + jitter
    new_chol = jnp.broadcast_to(jnp.stack([sigma, 0.0, sigma]), (count, 3)).astype(jnp.float32)
    prior = color_gain * 2.0 * blurred[ys, xs]
    ok = jnp.arange(count) < need
    new_colors = _solve_colors_device(new_means, new_chol, ok, residual, mask, prior, sigma,
                                      spec.backend)
    slots = jnp.where(ok, free[jnp.minimum(used + jnp.arange(count), n - 1)], n)
    means = means.at[slots].set(new_means, mode="drop")
    chol = chol.at[slots].set(new_chol, mode="drop")
    colors = colors.at[slots].set(new_colors.astype(colors.dtype), mode="drop")
    written = written.at[slots].set(True, mode="drop")
  return Gaussians(means, chol, colors), written
