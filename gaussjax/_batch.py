"""Batches: fit and encode many images at once, on every device.

Call chain::

  fit_batch(images, gaussians, config)        ragged list or [B, H, W, C]
    ├─ bucket_images                          groups of one padded size
    ├─ pad_images                             [B, Hb, Wb, C] + loss mask [B, Hb, Wb]
    ├─ batch_mesh / shard_batch               the batch axis split over devices
    └─ run_steps(fit_step)                    under one jit: shard_map over devices,
                                              vmap over each device's images (a
                                              loop on the CPU without the native
                                              kernel); one plan per batch,
                                              re-planned on overflow (none for the
                                              native kernel, which ignores plans)
  encode_batch(images, config) -> [bytes]     SLIC initialisation on a thread per core,
                                              the codec's float fit (padded buckets)
                                              and quantisation-aware fine-tuning
                                              (exact sizes), batched the same way;
                                              entropy coding per image on the host

Padding never influences a result: images are padded at the bottom and right
(pixel coordinates of the real pixels do not move) and the loss of every padded
pixel is masked out, so a padded image fits the same Gaussians as the image
alone, up to float rounding (sums over differently sized arrays).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gaussjax._gaussians import Gaussians
from gaussjax._render import make_plan, resolve_backend

Array = jax.Array

# Padded sizes are rounded up to a multiple of this (pixels). Coarser buckets
# put more images of nearby sizes into one vmapped batch; finer ones waste less
# compute on padding. 32 is a tile multiple of the fast renderers and wastes at
# most 31 rows / columns.
BUCKET_MULTIPLE = 32

# Name of the mesh axis the batch is split over.
BATCH_AXIS = "batch"


def bucket_shape(height: int, width: int, *, multiple: int = BUCKET_MULTIPLE) -> tuple[int, int]:
  """The padded ``(height, width)`` of the bucket an image of this size goes to.

  Args:
    height: image rows.
    width: image columns.
    multiple: sizes are rounded up to a multiple of this.

  Returns:
    ``(Hb, Wb)``, each the smallest multiple of ``multiple`` that is ≥ the size.
  """
  for name, value in (("height", height), ("width", width), ("multiple", multiple)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive int")
  return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def bucket_images(
    shapes: Sequence[tuple[int, ...]], *, multiple: int = BUCKET_MULTIPLE,
) -> dict[tuple[int, int, int], list[int]]:
  """Groups images by bucket: same padded size and channel count.

  Args:
    shapes: ``(H, W, C)`` of each image.
    multiple: as in ``bucket_shape``.

  Returns:
    ``{(Hb, Wb, C): [indices into shapes, ascending]}``, buckets in order of
    their first image.
  """
  buckets: dict[tuple[int, int, int], list[int]] = {}
  for i, shape in enumerate(shapes):
    if len(shape) != 3:
      raise ValueError(f"image {i} must have shape [H, W, C], got {tuple(shape)}")
    h, w, c = (int(s) for s in shape)
    buckets.setdefault((*bucket_shape(h, w, multiple=multiple), c), []).append(i)
  return buckets


def pad_images(
    images: Sequence[Array], *, shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Stacks images of different sizes, zero-padded at the bottom and right.

  Args:
    images: ``[H_i, W_i, C]`` float images, one channel count.
    shape: ``(Hb, Wb)`` to pad to; defaults to the largest height and width.

  Returns:
    ``(padded [B, Hb, Wb, C] float32, mask [B, Hb, Wb] float32)`` where the
    mask is 1 on real pixels and 0 on padding.
  """
  if len(images) == 0:
    raise ValueError("pad_images needs at least one image")
  arrays = [np.asarray(image, np.float32) for image in images]
  for i, a in enumerate(arrays):
    if a.ndim != 3:
      raise ValueError(f"image {i} must have shape [H, W, C], got {a.shape}")
  channels = {a.shape[2] for a in arrays}
  if len(channels) != 1:
    raise ValueError(f"images in one batch must share the channel count, got {sorted(channels)}")
  if shape is None:
    shape = (max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays))
  hb, wb = shape
  padded = np.zeros((len(arrays), hb, wb, channels.pop()), np.float32)
  mask = np.zeros((len(arrays), hb, wb), np.float32)
  for i, a in enumerate(arrays):
    h, w = a.shape[:2]
    if h > hb or w > wb:
      raise ValueError(f"image {i} of size {h}x{w} does not fit the padded size {hb}x{wb}")
    padded[i, :h, :w] = a
    mask[i, :h, :w] = 1.0
  return padded, mask


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis device mesh that splits the batch axis over ``devices``.

  Every image of a batch is independent, so the batch axis is simply split
  across devices (data parallelism): no communication inside a step.

  Multi-host (several machines, e.g. a TPU pod slice or a multi-node GPU job):
  call ``jax.distributed.initialize()`` at the start of every process (on Cloud
  TPU and under SLURM / Open MPI it finds the coordinator by itself; elsewhere
  pass ``coordinator_address``, ``num_processes`` and ``process_id``). Then
  give each process its own share of the images and a mesh of its *local*
  devices, ``batch_mesh(jax.local_devices())``: images never need to cross
  hosts, so a global mesh buys nothing. ``gaussjax encode-dir`` does this by
  itself: with ``jax.process_count() > 1`` process ``k`` takes every
  ``process_count``-th file starting at ``k`` and writes its own journal
  (see ``docs/batch.md``).

  Args:
    devices: devices to use; defaults to ``jax.local_devices()``.

  Returns:
    A ``jax.sharding.Mesh`` with the single axis ``"batch"``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("batch_mesh needs at least one device")
  return Mesh(np.asarray(devices, dtype=object), (BATCH_AXIS,))


def shard_batch(tree, mesh: Mesh):
  """Places a pytree whose leaves have a leading batch axis on ``mesh``.

  The batch axis is split evenly over the mesh's devices, so its size must be
  a multiple of the device count (see ``pad_batch``).

  Args:
    tree: pytree of arrays ``[B, ...]``.
    mesh: from ``batch_mesh``.

  Returns:
    The same tree as ``jax.Array``s with a ``NamedSharding(mesh, P("batch"))``.
  """
  sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  count = mesh.devices.size
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = getattr(leaf, "shape", np.shape(leaf))
    size = shape[0] if shape else None
    if size is None or size % count:
      raise ValueError(
          f"the batch axis ({size}) must be a multiple of the {count} devices of the mesh; "
          "pad it with pad_batch")
  return jax.device_put(tree, sharding)


def pad_batch(tree, multiple: int):
  """Pads the leading (batch) axis to a multiple by repeating the first element.

  Repeats are real data, so they fit like any image and never produce NaNs;
  callers drop them afterwards (``[:size]``).

  Args:
    tree: pytree of arrays ``[B, ...]``.
    multiple: e.g. the device count.

  Returns:
    ``(padded tree, B)``.
  """
  leaves = jax.tree_util.tree_leaves(tree)
  size = int(leaves[0].shape[0])
  extra = -size % multiple
  if extra == 0:
    return tree, size

  def pad(x):  # jnp, not np: also pads PRNG key arrays
    x = jnp.asarray(x)
    return jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)], axis=0)

  return jax.tree_util.tree_map(pad, tree), size


# --------------------------------------------------------------------------- the batched loop

# Steps per jitted chunk: one loop on the device runs up to this many steps of
# the whole batch between two host round trips (overflow check, re-plan).
CHUNK_STEPS = 25

# Re-plan from the current Gaussians at least this often (steps); in between,
# the plan's headroom absorbs their motion, and an overflow re-plans at once.
# Each new plan compiles the step again, so plans are kept while they fit.
REPLAN_STEPS = 100


def default_vectorize() -> bool:
  """Whether images of a batch are ``vmap``-ed (True) or looped (False) per device.

  ``vmap`` turns a batch into wide array operations: what accelerators are
  built for, and on the CPU what the native kernel of the XLA backend
  (``_splat.cc``) needs to run the images of a batch in parallel, one core
  per image (a lone small image leaves the other cores idle). Without the
  native kernel the pure-XLA renderer's per-Gaussian window updates become
  scatters under ``vmap``, slower per image than a single one, so there each
  device loops over its images inside the compiled step (``lax.map``), which
  still saves the per-image host round trips, plans and compilations.
  """
  if jax.default_backend() != "cpu":
    return True
  from gaussjax import _native
  return _native.usable(jnp.float32, 3)


def _native_renders(backend: str, channels: int) -> bool:
  """Whether ``backend`` renders with the native CPU kernel, which ignores plans."""
  from gaussjax import _native
  return backend == "xla" and _native.usable(jnp.float32, channels)


@functools.partial(jax.jit, static_argnames=("step", "plan", "static", "mesh", "vectorize"))
def _run_chunk(state, batch, count, *, step, plan, static, mesh, vectorize):
  """``count`` (traced) steps of ``step`` on every image; the state and whether any overflowed.

  The trip count is a traced value, so one compilation serves every chunk
  length (a ``while`` loop on the device). With a mesh, each device runs the
  loop on its own images (``shard_map``): no communication inside a step.
  """
  def one(s, example):
    return step(s, example, plan, static)

  def local(state, batch, count):
    def body(_, carry):
      s, overflowed = carry
      if vectorize:
        s, overflow = jax.vmap(one)(s, batch)
      else:
        s, overflow = jax.lax.map(lambda args: one(*args), (s, batch))
      return s, overflowed | overflow

    size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    return jax.lax.fori_loop(0, count, body, (state, jnp.zeros((size,), bool)))

  if mesh is None:
    state, overflowed = local(state, batch, count)
  else:
    spec = PartitionSpec(BATCH_AXIS)
    state, overflowed = jax.shard_map(
        local, mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=(spec, spec),
        check_vma=False)(state, batch, count)
  return state, jnp.any(overflowed)


def run_steps(step, state, batch, *, num_steps: int, plan_fn, static, mesh: Mesh | None = None,
              chunk: int = CHUNK_STEPS, replan_steps: int = REPLAN_STEPS,
              vectorize: bool | None = None):
  """Runs ``num_steps`` steps of a one-image ``step`` on a whole batch at once.

  The step runs on every image of the batch (``vmap``, or a loop inside the
  compiled step, see ``vectorize``), looped on the device over chunks of
  ``chunk`` steps under one ``jit``; the batch axis is split over ``mesh``'s
  devices (``shard_map``, each device on its own images). One rendering plan (``plan_fn``, outside jit, from the
  concrete batched state) serves the whole batch; it is remade every
  ``replan_steps`` steps and whenever it overflows: then the chunk is
  discarded and redone one step at a time, re-planning before each step that
  overflows; a fresh plan that still overflows is an error. So every image
  makes exactly ``num_steps`` steps and no contribution is ever dropped.

  Args:
    step: ``step(state, example, plan, static) -> (state, overflow)`` for one
      image; a top-level (hashable) function so compilations are cached.
    state: pytree, leaves ``[B, ...]``.
    batch: pytree, leaves ``[B, ...]`` (e.g. ``(image, mask)``).
    num_steps: steps to make.
    plan_fn: ``plan_fn(state) -> plan`` (hashable).
    static: hashable extra argument of ``step`` (config, sizes, backend).
    mesh: from ``batch_mesh``; ``None`` runs on the default device.
    chunk: steps per device loop (host round trip).
    replan_steps: re-plan at least this often.
    vectorize: ``vmap`` the images (True) or loop over them per device
      (False); ``None``: ``default_vectorize()``.

  Returns:
    The state after ``num_steps`` steps, leaves ``[B, ...]``.
  """
  size = None
  if mesh is not None:
    (state, batch), size = pad_batch((state, batch), mesh.devices.size)
    state, batch = shard_batch((state, batch), mesh)

  vectorize = default_vectorize() if vectorize is None else bool(vectorize)

  def run(state, count, plan):
    return _run_chunk(state, batch, jnp.asarray(count, jnp.int32), step=step, plan=plan,
                      static=static, mesh=mesh, vectorize=vectorize)

  done, plan, planned_at = 0, None, 0
  while done < num_steps:
    if plan is None or done - planned_at >= replan_steps:
      plan, planned_at = plan_fn(state), done
    count = min(chunk, num_steps - done)
    new_state, overflowed = run(state, count, plan)
    if not bool(overflowed):
      state, done = new_state, done + count
      continue
    for _ in range(count):  # slow path: one step at a time, re-plan on overflow
      new_state, overflowed = run(state, 1, plan)
      if bool(overflowed):
        plan, planned_at = plan_fn(state), done
        new_state, overflowed = run(state, 1, plan)
        if bool(overflowed):
          raise RuntimeError(f"a plan made for this batch overflowed on it: {plan!r}")
      state, done = new_state, done + 1
  if size is not None:
    state = jax.tree_util.tree_map(lambda x: x[:size], state)
  return state


# --------------------------------------------------------------------------- fitting


def _fit_step(state, example, plan, config):
  """``gaussjax.fit_step`` on one padded image with its loss mask."""
  from gaussjax._fit import fit_step
  image, mask = example
  state, metrics = fit_step(state, image, config=config, plan=plan, mask=mask)
  return state, metrics["overflow"]


@functools.partial(jax.jit, static_argnames=("config", "plan"))
def _final_metrics(gaussians, images, masks, *, config, plan):
  from gaussjax._fit import fit_loss
  loss, aux = jax.vmap(lambda g, image, mask: fit_loss(g, image, config=config, plan=plan,
                                                       mask=mask))(gaussians, images, masks)
  return loss, aux["psnr"], jnp.any(aux["overflow"])


def _as_images(images) -> list[np.ndarray]:
  if isinstance(images, (np.ndarray, jax.Array)):
    if np.ndim(images) != 4:
      raise ValueError(f"images must be [B, H, W, C] or a list of [H, W, C], got shape "
                       f"{np.shape(images)}")
    images = list(images)
  arrays = []
  for i, image in enumerate(images):
    try:
      a = np.asarray(image)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      raise TypeError("fit_batch runs a host loop; call it on concrete arrays") from None
    if a.ndim == 2:
      a = a[:, :, None]
    if a.ndim != 3 or 0 in a.shape:
      raise ValueError(f"image {i} must be [H, W, C], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
      raise TypeError(f"image {i} must be floating point in [0, 1], got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"image {i} contains NaN or infinite values")
    arrays.append(a.astype(np.float32))
  if not arrays:
    raise ValueError("fit_batch needs at least one image")
  return arrays


def _as_gaussians(gaussians, count: int) -> list[Gaussians]:
  from gaussjax._gaussians import validate
  if isinstance(gaussians, Gaussians) and np.ndim(gaussians.means) == 3:
    gaussians = [jax.tree_util.tree_map(lambda x, i=i: x[i], gaussians)
                 for i in range(np.shape(gaussians.means)[0])]
  elif isinstance(gaussians, Gaussians):
    raise ValueError(f"gaussians must be batched, means [B, N, 2], got {np.shape(gaussians.means)}")
  gaussians = [validate(g, name=f"gaussians[{i}]") for i, g in enumerate(gaussians)]
  if len(gaussians) != count:
    raise ValueError(f"got {len(gaussians)} sets of Gaussians for {count} images")
  sizes = {g.num_gaussians for g in gaussians}
  if len(sizes) != 1:
    raise ValueError(f"every image needs the same number of Gaussians, got {sorted(sizes)}")
  return gaussians


def fit_batch(images, gaussians, config=None, *, devices=None, vectorize: bool | None = None):
  """Fits many images at once: ``gaussjax.fit`` for a batch.

  Each image makes exactly ``config.steps`` steps of ``gaussjax.fit_step``,
  as ``fit`` would make alone; the whole batch runs under one ``jit``
  (``vmap`` over images, or a compiled loop over them, see ``vectorize``;
  a device loop over chunks of steps) with one rendering plan,
  split over ``devices``. Images of different sizes are padded at the bottom
  and right into size buckets (multiples of ``BUCKET_MULTIPLE``) with a loss
  mask, so padding never influences a result; with ``config.ssim_weight > 0``
  (SSIM windows cannot be masked) only images of the same exact size share a
  batch.

  Results equal ``fit(image_i, gaussians_i, config)`` up to float rounding
  (tests: 1e-4 relative on every parameter after a short fit).

  Args:
    images: ``[B, H, W, C]`` float array in [0, 1], or a sequence of ``[H_i,
      W_i, C_i]`` images of any sizes.
    gaussians: initial ``Gaussians`` per image, in that image's pixel
      coordinates: batched (``means [B, N, 2]``) or a sequence; the same N
      for every image (channels must match each image).
    config: ``FitConfig`` (``time_budget_s`` and ``target_psnr`` are per-image
      stopping rules that a batch cannot follow: they must be None).
    devices: devices or a ``Mesh`` to split the batch over; defaults to every
      local device.
    vectorize: ``vmap`` the images of a device (True) or loop over them inside
      the compiled step (False); default: ``vmap``, except on a CPU without
      the native kernel (``default_vectorize``).

  Returns:
    ``(gaussians, metrics)``: fitted ``Gaussians`` with leaves ``[B, N, ...]``
    in input order, and ``{"loss": [B], "psnr": [B]}`` NumPy arrays of the
    fitted Gaussians on their own (unpadded) pixels.

  Examples:
    >>> import jax, numpy as np, gaussjax
    >>> images = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    >>> g = [gaussjax.init_random(jax.random.key(i), 20, 16, 16) for i in range(2)]
    >>> config = gaussjax.FitConfig(steps=10, backend="reference")
    >>> fitted, metrics = gaussjax.fit_batch(images, g, config)
    >>> fitted.means.shape, metrics["psnr"].shape
    ((2, 20, 2), (2,))
  """
  from gaussjax import _density
  from gaussjax._fit import FitConfig, density_event, host_rng, init_fit_state
  config = FitConfig() if config is None else config
  if not isinstance(config, FitConfig):
    raise TypeError(f"config must be a gaussjax.FitConfig, got {type(config).__name__}")
  if config.time_budget_s is not None or config.target_psnr is not None:
    raise ValueError("fit_batch runs config.steps steps for every image: time_budget_s="
                     f"{config.time_budget_s} and target_psnr={config.target_psnr} must be None")
  arrays = _as_images(images)
  initial = _as_gaussians(gaussians, len(arrays))
  for i, (a, g) in enumerate(zip(arrays, initial)):
    if g.channels != a.shape[2]:
      raise ValueError(f"gaussians[{i}] have {g.channels} colour channels but image {i} has "
                       f"{a.shape[2]}")
  backend = resolve_backend(config.backend)
  config = dataclasses.replace(config, backend=backend)
  mesh = _resolve_mesh(devices)

  if config.ssim_weight:  # exact sizes only: no padding, no mask
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
      groups.setdefault(a.shape, []).append(i)
  else:
    groups = bucket_images([a.shape for a in arrays])
  fitted: list = [None] * len(arrays)
  loss = np.zeros(len(arrays), np.float32)
  psnr = np.zeros(len(arrays), np.float32)
  for (hb, wb, _), members in groups.items():
    padded, masks = pad_images([arrays[i] for i in members], shape=(hb, wb))
    images_b, masks_b = jnp.asarray(padded), jnp.asarray(masks)
    # Density control as in fit: the same events, run per image on the host
    # between the compiled stretches of steps (buffers of N slots keep shapes).
    schedule = _density.Schedule.make(initial[members[0]].num_gaussians, config)
    state = jax.vmap(lambda g: init_fit_state(g, config))(
        _stack([_density.to_buffer(initial[i], schedule.target) for i in members]))
    rngs = [host_rng(key) for key in state.key]
    # With the native CPU kernel make_plan gives None every time, so every
    # batch of this shape reuses one compiled step.
    plan_fn = lambda state, hb=hb, wb=wb: make_plan(state.gaussians, hb, wb, backend=backend)
    done = 0
    for event in (*schedule.events, config.steps):
      if event > done:
        state = run_steps(_fit_step, state, (images_b, masks_b), num_steps=event - done,
                          plan_fn=plan_fn, static=config, mesh=mesh,
                          replan_steps=config.replan_every, vectorize=vectorize)
        done = event
      if event < config.steps:
        state = _stack([density_event(jax.tree_util.tree_map(lambda x, k=k: x[k], state),
                                      arrays[i], config, schedule, event, rngs[k])
                        for k, i in enumerate(members)])
    g = state.gaussians
    group_loss, group_psnr, overflow = _final_metrics(g, images_b, masks_b, config=config,
                                                      plan=plan_fn(state))
    if bool(overflow):  # pragma: no cover (a fresh plan never overflows)
      raise RuntimeError("the renderer overflowed a fresh plan")
    for k, i in enumerate(members):
      fitted[i] = jax.tree_util.tree_map(lambda x, k=k: x[k], g)
      loss[i], psnr[i] = group_loss[k], group_psnr[k]
  return _stack(fitted), {"loss": loss, "psnr": psnr}


# --------------------------------------------------------------------------- encoding


def _qat_step(state, image, plan, static):
  """One step of the codec's quantisation-aware fine-tuning on one image.

  As ``gaussjax._codec._train`` with quantiser steps: Adam on the MSE of the
  fake-quantised rendering, remembering the best iterate (by its loss).
  """
  from gaussjax import _codec
  g, opt_state, best, best_loss = state
  height, width, backend, qsteps, learning_rate, num_steps, frozen = static
  optimizer = _codec._optimizer(learning_rate, num_steps, frozen)
  (loss, overflow), grads = jax.value_and_grad(_codec._loss, has_aux=True)(
      g, image, None, height=height, width=width, backend=backend, steps=qsteps, plan=plan)
  updates, opt_state = optimizer.update(grads, opt_state, g)
  better = loss < best_loss  # `loss` is that of `g`, before the update
  best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), g, best)
  best_loss = jnp.where(better, loss, best_loss)
  return (optax.apply_updates(g, updates), opt_state, best, best_loss), overflow


def _qat_batch(gaussians: Gaussians, images, *, num_steps: int, learning_rate: float, qsteps,
               backend: str, mesh: Mesh | None, vectorize: bool | None,
               frozen: tuple[str, ...] = ()) -> list[Gaussians]:
  """The codec's ``_train`` for images of one exact size.

  Args:
    gaussians: ``Gaussians`` with leaves ``[B, N, ...]``.
    images: ``[B, H, W, C]``.
    num_steps: optimiser steps.
    learning_rate: peak learning rate.
    qsteps: ``QuantSteps`` (straight-through training), or None (float).
    backend: renderer.
    mesh: device mesh, or ``None``.
    vectorize: as in ``run_steps``.
    frozen: fields that stay as they are.

  Returns:
    One ``Gaussians`` per image: the last iterate, or with ``qsteps`` the
    best one when its loss is lower (as ``_codec._train`` chooses).
  """
  from gaussjax import _codec
  count = images.shape[0]
  g = Gaussians(*(jnp.asarray(x, jnp.float32) for x in gaussians))
  if num_steps == 0:
    return [jax.tree_util.tree_map(lambda x, k=k: x[k], g) for k in range(count)]
  backend = resolve_backend(backend)
  height, width = images.shape[1:3]
  opt_state = jax.vmap(_codec._optimizer(learning_rate, num_steps, frozen).init)(g)

  native = _native_renders(backend, images.shape[3])

  def plan_fn(state):
    if backend == "reference" or native:  # no binning, or a kernel that ignores plans
      return None
    # Plan for what is rendered: the fake-quantised Gaussians.
    view = state[0] if qsteps is None else _fake_quantize_batch(state[0], height, width, qsteps)
    return make_plan(view, height, width, backend=backend)

  state = (g, opt_state, g, jnp.full((count,), jnp.inf, jnp.float32))
  g, _, best, best_loss = run_steps(
      _qat_step, state, jnp.asarray(images), num_steps=num_steps, plan_fn=plan_fn,
      static=(height, width, backend, qsteps, learning_rate, num_steps, frozen), mesh=mesh,
      vectorize=vectorize)
  if qsteps is None:  # float training: the last iterate
    return [jax.tree_util.tree_map(lambda x, k=k: x[k], g) for k in range(count)]
  if native:  # the losses of the last iterates in one batched render
    final_loss = np.asarray(_quantized_loss_batch(g, jnp.asarray(images), qsteps))
  else:
    final_loss = [_codec._quantized_loss(jax.tree_util.tree_map(lambda x, k=k: x[k], g),
                                         images[k], qsteps, backend) for k in range(count)]
  chosen = []
  for k in range(count):
    last, kept = (jax.tree_util.tree_map(lambda x, k=k: x[k], t) for t in (g, best))
    chosen.append(kept if float(best_loss[k]) <= float(final_loss[k]) else last)
  return chosen


@functools.partial(jax.jit, static_argnums=(2,))
def _quantized_loss_batch(gaussians, images, qsteps):
  """``_codec._quantized_loss`` of each image (native kernel: no plan, no overflow)."""
  from gaussjax._quantize import fake_quantize
  from gaussjax._render import rasterize

  def one(g, image):
    height, width = image.shape[:2]
    out, _ = rasterize(fake_quantize(g, height, width, qsteps), height, width, backend="xla")
    return jnp.mean((out - image) ** 2)

  return jax.vmap(one)(gaussians, images)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake_quantize_batch(gaussians, height, width, qsteps):
  from gaussjax._quantize import fake_quantize
  return jax.vmap(lambda g: fake_quantize(g, height, width, qsteps))(gaussians)


def _resolve_mesh(devices) -> Mesh:
  if isinstance(devices, Mesh):
    return devices
  return batch_mesh(devices)


def encode_batch(images: Sequence, config=None, *, devices=None,
                 vectorize: bool | None = None) -> list[bytes]:
  """Encodes many images at once; each result decodes like ``encode``'s.

  The expensive parts of ``gaussjax.encode`` run batched: the SLIC
  initialisation (a thread per core), the two halves of the float fit
  (images padded into size buckets, padding masked out of the loss; the
  second half batches the images whose N stayed equal, so with a ``bpp``
  target it often runs image by image) and the quantisation-aware
  fine-tuning (images of one exact size), each ``vmap``-ed and split over
  ``devices``; on the CPU the native kernel renders the images of a batch in
  parallel, one core per image. The step search, quantisation, entropy
  coding and the rate controller (which may prune, fine-tune or, rarely, fit
  one image again) run per image on the host.

  Each file matches what ``encode(image, config)`` gives within float
  rounding: batched and single fits sum in different orders, so files may
  differ in a few quantised values (tests bound the decoded PSNR difference).

  Args:
    images: sequence of ``[H, W, C]`` images (float in [0, 1], uint8 or
      uint16), any sizes, or one ``[B, H, W, C]`` array.
    config: ``CodecConfig`` (defaults to ``CodecConfig()``).
    devices: devices or a ``Mesh`` to split each batch over; defaults to
      every local device.
    vectorize: as in ``fit_batch``.

  Returns:
    One ``bytes`` per image, in order.

  Raises:
    ValueError / TypeError: as ``encode``, for the first bad image or config.
  """
  from gaussjax import _codec
  config = _codec.CodecConfig() if config is None else config
  if not isinstance(config, _codec.CodecConfig):
    raise TypeError(f"config must be a CodecConfig, got {type(config).__name__}")
  arrays = []
  for i, image in enumerate(images):
    try:
      arrays.append(_codec._as_image(image))
    except (ValueError, TypeError) as e:
      raise type(e)(f"image {i}: {e}") from None
  if not arrays:
    return []
  if config.levels > 1:  # progressive files fit level by level: one image at a time
    return [_codec.encode(image, config) for image in arrays]
  mesh = _resolve_mesh(devices)
  settings = [_codec._fit_settings(*a.shape, config) for a in arrays]
  first, second = _codec._fit_halves(config)

  # As _codec._first_fit: the first half of the float fit (SLIC, then
  # fit_batch, one call per N); steps and N per image on the host; the second
  # half with N moved (one fit_batch per pair of old and new N).
  fitted = _fit_all(arrays, None, [n for n, _ in settings], config, first, mesh, vectorize)
  chosen = [_codec._choose(a, g, base, config)
            for a, g, (_, base) in zip(arrays, fitted, settings)]
  fitted = _fit_all(arrays, fitted, [n for _, n in chosen], config, second, mesh, vectorize)
  qsteps = [steps for steps, _ in chosen]
  fitted = _finetune_all(arrays, fitted, qsteps, config, mesh, vectorize)

  # Quantisation, entropy coding, rate control: per image on the host.
  return [_codec._code(a, g, steps, config) for a, g, steps in zip(arrays, fitted, qsteps)]


def _fit_all(arrays, initial, counts, config, num_steps: int, mesh, vectorize) -> list[Gaussians]:
  """``_codec._fit_float`` (``initial`` None) or ``_codec._refit`` of every image, batched.

  Images whose initial and final counts agree share one ``fit_batch`` call.
  """
  from gaussjax import _codec
  from gaussjax._fit import initial_count
  groups: dict[tuple[int, int], list[int]] = {}
  for i, n in enumerate(counts):
    start = None if initial is None else initial[i].num_gaussians
    groups.setdefault((start, n), []).append(i)
  fitted: list[Gaussians | None] = [None] * len(arrays)
  for (_, n), members in groups.items():
    images = [arrays[i] for i in members]
    fit_config = _codec._float_fit_config(config, n, num_steps) if num_steps else None
    if initial is None:
      count = initial_count(n, fit_config) if fit_config is not None else n
      start = _init_all(images, count, config.seed)
    else:
      start = [initial[i] for i in members]
    if fit_config is None:
      out = start if initial is None else [
          _codec._refit(a, g, n, config, 0) for a, g in zip(images, start)]
    else:
      g, _ = fit_batch(images, start, fit_config, devices=mesh, vectorize=vectorize)
      out = [jax.tree_util.tree_map(lambda x, k=k: x[k], g) for k in range(len(members))]
    for i, g in zip(members, out):
      fitted[i] = g
  return fitted


def _finetune_all(arrays, fitted, qsteps, config, mesh, vectorize) -> list[Gaussians]:
  """``_codec._finetune`` of every image, batched.

  Straight-through training batches images of one exact size, N and steps
  (the steps are static). The sequential stages train in float: images of
  one exact size share a batch, padded to the largest N with parked
  Gaussians (off-image, colour 0: they render nothing and never move).
  """
  from gaussjax import _codec, _density
  fitted = list(fitted)
  if config.qat_steps == 0:
    return fitted
  if config.finetune == "ste":
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
      groups.setdefault((*a.shape, fitted[i].num_gaussians, qsteps[i]), []).append(i)
    for (*_, steps), members in groups.items():
      out = _qat_batch(_stack([fitted[i] for i in members]),
                       jnp.stack([arrays[i] for i in members]), num_steps=config.qat_steps,
                       learning_rate=_codec.qat_learning_rate(config), qsteps=steps,
                       backend=config.backend, mesh=mesh, vectorize=vectorize)
      for i, g in zip(members, out):
        fitted[i] = g
    return fitted
  by_shape: dict[tuple, list[int]] = {}
  for i, a in enumerate(arrays):
    by_shape.setdefault(a.shape, []).append(i)
  for frozen, lr, n_steps in _codec._sequential_stages(config.qat_steps):
    for (h, w, _), members in by_shape.items():
      snapped = [_codec._snap(fitted[i], h, w, qsteps[i], frozen) for i in members]
      counts = [g.num_gaussians for g in snapped]
      if n_steps == 0 or max(counts) == 0:
        out = snapped
      else:
        padded = [_density.to_buffer(g, max(counts)) for g in snapped]
        out = _qat_batch(_stack(padded), jnp.stack([arrays[i] for i in members]),
                         num_steps=n_steps, learning_rate=lr * config.learning_rate, qsteps=None,
                         backend=config.backend, mesh=mesh, vectorize=vectorize, frozen=frozen)
        out = [Gaussians(*(np.asarray(x)[:n] for x in g)) for g, n in zip(out, counts)]
      for i, g in zip(members, out):
        fitted[i] = g
  return fitted


def _init_all(images, n: int, seed: int) -> list[Gaussians]:
  """``init_slic`` of each image, on a few threads (SLIC releases the GIL).

  The images are independent and each result is the same as alone, so a
  batch initialises up to one image per core at a time.
  """
  from gaussjax._init import init_slic
  init = lambda image: init_slic(np.asarray(image), n, key=jax.random.key(seed))
  workers = min(len(images), os.cpu_count() or 1, 8)
  if workers <= 1:
    return [init(image) for image in images]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(init, images))


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
