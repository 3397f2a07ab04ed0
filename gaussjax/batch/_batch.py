"""Batches: fit and encode many images at once, on every device.

Call chain::

  fit_batch(images, gaussians, config)        ragged list or [B, H, W, C]
    ├─ bucket_images                          groups of one padded size
    ├─ pad_images                             [B, Hb, Wb, C] + loss mask [B, Hb, Wb]
    ├─ batch_mesh / shard_batch               the batch axis split over devices
    └─ run_batch → _loop.run(_fit._loop_step) the one training loop of gaussjax.fit:
                                              compiled chunks of steps, density events
                                              between them, vmap over each device's images
                                              (lax.map on the CPU without the native
                                              kernel), shard_map over devices; plans
                                              and overflow redo by the render layer
  encode_batch(images, config) -> [bytes]     SLIC initialisation on a thread per core,
                                              the codec's float fit (fit_batch, padded
                                              buckets) and its fine-tuning (_qat_batch:
                                              the codec's _train_step in the same loop,
                                              exact sizes); entropy coding per image on
                                              the host

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gaussjax.codec import _codec, _formats, _rate
from gaussjax.core._gaussians import Gaussians, scale_gaussians, validate
from gaussjax.core._image import check_image
from gaussjax.fitting import _density, _fit, _loop
from gaussjax.fitting._fit import FitConfig, init_fit_state
from gaussjax.rendering._render import resolve_backend, vectorizes

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


def default_vectorize() -> bool:
  """Whether images of a batch are ``vmap``-ed (True) or looped (False) per device.

  ``vmap`` turns a batch into wide array operations: what accelerators are
  built for, and on the CPU what the native kernel of the XLA backend
  (``_splat.cc``) needs to run the images of a batch in parallel, one core
  per image. Without the native kernel the pure-XLA renderer's per-Gaussian
  window updates become scatters under ``vmap``, slower per image than a
  single one, so there each device loops over its images inside the compiled
  step (``lax.map``). The renderer decides (``_render.vectorizes``).
  """
  return vectorizes()


def _loop_batch(vectorize: bool | None) -> str:
  vectorize = default_vectorize() if vectorize is None else bool(vectorize)
  return "vmap" if vectorize else "map"


def run_batch(step, state, data, *, mesh: Mesh | None, **kwargs):
  """``gaussjax.fitting._loop.run`` over a batch: padded to the devices of ``mesh`` and split over them.

  Returns:
    ``(state with the padding dropped, LoopInfo)``.
  """
  size = None
  if mesh is not None:
    (state, data), size = pad_batch((state, data), mesh.devices.size)
    state, data = shard_batch((state, data), mesh)
  state, info = _loop.run(step, state, data, mesh=mesh, **kwargs)
  if size is not None:
    state = jax.tree_util.tree_map(lambda x: x[:size], state)
  return state, info


# --------------------------------------------------------------------------- fitting


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
    arrays.append(check_image(a, name=f"image {i}"))
  if not arrays:
    raise ValueError("fit_batch needs at least one image")
  return arrays


def _as_gaussians(gaussians, count: int) -> list[Gaussians]:
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
    # Density control as in fit: the same events, on the device inside the
    # compiled loop (buffers of N slots keep the shapes).
    schedule = _density.Schedule.make(initial[members[0]].num_gaussians, config)
    state = jax.vmap(lambda g: init_fit_state(g, config))(
        _stack([_density.to_buffer(initial[i], schedule.target) for i in members]))
    static = _fit.loop_static(config, schedule, hb, wb)
    due = _fit.event_due(static)
    state, info = run_batch(
        _fit._loop_step, state, (images_b, masks_b, None), mesh=mesh, num_steps=config.steps,
        static=static, height=hb, width=wb, backend=backend, chunk=_fit.chunk_steps(config),
        replan_every=config.replan_every, batch=_loop_batch(vectorize),
        event=_fit._loop_event if due else None, event_due=due)
    state, group_loss, group_psnr, _ = _fit.finish(state, images_b, masks_b, schedule, config,
                                                   info.plan, batched=True)
    g = state.gaussians
    for k, i in enumerate(members):
      fitted[i] = jax.tree_util.tree_map(lambda x, k=k: x[k], g)
      loss[i], psnr[i] = group_loss[k], group_psnr[k]
  return _stack(fitted), {"loss": loss, "psnr": psnr}


# --------------------------------------------------------------------------- encoding


def _qat_batch(gaussians: Gaussians, images, *, num_steps: int, learning_rate: float, qsteps,
               backend: str, mesh: Mesh | None, vectorize: bool | None,
               frozen: tuple[str, ...] = (), rates=None) -> list[Gaussians]:
  """The codec's ``_train`` for images of one exact size: the same step, batched.

  Args:
    gaussians: ``Gaussians`` with leaves ``[B, N, ...]``.
    images: ``[B, H, W, C]``.
    num_steps: optimiser steps.
    learning_rate: peak learning rate.
    qsteps: ``QuantSteps`` (straight-through training), or None (float).
    backend: renderer.
    mesh: device mesh, or ``None``.
    vectorize: as in ``fit_batch``.
    frozen: fields that stay as they are.
    rates: one ``codec._rate.RateTerm`` per image (the rate term of
      ``_codec._finetune``), or None (distortion only).

  Returns:
    One ``Gaussians`` per image, as ``_codec._train`` chooses them.
  """
  count = images.shape[0]
  g = Gaussians(*(jnp.asarray(x, jnp.float32) for x in gaussians))
  if num_steps == 0:
    return [jax.tree_util.tree_map(lambda x, k=k: x[k], g) for k in range(count)]
  backend = resolve_backend(backend)
  height, width = images.shape[1:3]
  static = (height, width, backend, qsteps, learning_rate, num_steps, frozen)
  state = jax.vmap(lambda g: _codec._train_state(g, static))(g)
  data = (jnp.asarray(images), None)
  if rates is not None:
    data += (jax.tree_util.tree_map(lambda *x: jnp.stack(x), *rates),)
  state, _ = run_batch(
      _codec._train_step, state, data, mesh=mesh, num_steps=num_steps,
      static=static, height=height, width=width, backend=backend,
      view=functools.partial(_codec._train_view, static=static), chunk=_codec.TRAIN_CHUNK,
      replan_every=_codec.TRAIN_REPLAN, batch=_loop_batch(vectorize))
  return [_codec._train_result(jax.tree_util.tree_map(lambda x, k=k: x[k], state), images[k],
                               static, None if rates is None else rates[k])
          for k in range(count)]


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
    return [_formats.encode(image, config) for image in arrays]
  mesh = _resolve_mesh(devices)
  fitted, chosen = _first_fit_all(arrays, config, mesh, vectorize)
  qsteps = [steps for steps, _ in chosen]
  fitted = _finetune_all(arrays, fitted, qsteps, config, mesh, vectorize)

  # Quantisation, entropy coding, rate control: per image on the host.
  return [_codec._code(a, g, steps, config) for a, g, steps in zip(arrays, fitted, qsteps)]


def _first_fit_all(arrays, config, mesh, vectorize):
  """``_codec._first_fit`` of every image, batched: ``(Gaussians, [(steps, N)])`` per image.

  The first half of the float fit (SLIC, then ``fit_batch``, one call per N;
  on the halved image where ``_codec._coarse`` says so, mapped back); steps
  and N per image on the host; the second half with N moved (one
  ``fit_batch`` per pair of old and new N, per length of the half).
  """
  settings = [_codec._fit_settings(*a.shape, config) for a in arrays]
  coarse = [_codec._coarse(a.shape, n, config) for a, (n, _) in zip(arrays, settings)]
  first = _codec._fit_halves(config)[0]
  starts = [_codec._halve(a) if c else a for a, c in zip(arrays, coarse)]
  fitted = _fit_all(starts, None, [n for n, _ in settings], config, first, mesh, vectorize)
  fitted = [scale_gaussians(g, 2.0, 2.0) if c else g for g, c in zip(fitted, coarse)]
  chosen = [_codec._choose(a, g, base, config)
            for a, g, (_, base) in zip(arrays, fitted, settings)]
  for flag in sorted(set(coarse)):
    members = [i for i, c in enumerate(coarse) if c == flag]
    second = _codec._fit_halves(config, flag)[1]
    out = _fit_all([arrays[i] for i in members], [fitted[i] for i in members],
                   [chosen[i][1] for i in members], config, second, mesh, vectorize)
    for i, g in zip(members, out):
      fitted[i] = g
  return fitted, chosen


def _fit_all(arrays, initial, counts, config, num_steps: int, mesh, vectorize) -> list[Gaussians]:
  """``_codec._fit_float`` (``initial`` None) or ``_codec._refit`` of every image, batched.

  Images whose initial and final counts agree share one ``fit_batch`` call.
  """
  groups: dict[tuple[int, int], list[int]] = {}
  for i, n in enumerate(counts):
    start = None if initial is None else initial[i].num_gaussians
    groups.setdefault((start, n), []).append(i)
  fitted: list[Gaussians | None] = [None] * len(arrays)
  cycles = _codec._cycle_lengths(num_steps, config.fit_cycles)  # CodecConfig.fit_cycles
  for (_, n), members in groups.items():
    images = [arrays[i] for i in members]
    fit_config = _codec._float_fit_config(config, n, cycles[0]) if num_steps else None
    if initial is None:
      start = _init_all(images, n, fit_config, config.seed)
    else:
      start = [initial[i] for i in members]
    if fit_config is None:
      out = start if initial is None else [
          _codec._refit(a, g, n, config, 0) for a, g in zip(images, start)]
    else:
      for steps in cycles:
        g, _ = fit_batch(images, start, _codec._float_fit_config(config, n, steps),
                         devices=mesh, vectorize=vectorize)
        start = out = [jax.tree_util.tree_map(lambda x, k=k: x[k], g)
                       for k in range(len(members))]
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
  fitted = list(fitted)
  if config.qat_steps == 0:
    return fitted
  rates = None  # the rate term of each image, as _codec._finetune computes it
  if config.rate_weight:
    rates = [(_codec._finetune_rate(g, a, s, config) if g.num_gaussians else None)
             or _rate.rate_term(0.0, s) for g, a, s in zip(fitted, arrays, qsteps)]
  pick = lambda members: None if rates is None else [rates[i] for i in members]
  if config.finetune == "ste":
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
      groups.setdefault((*a.shape, fitted[i].num_gaussians, qsteps[i]), []).append(i)
    for (*_, steps), members in groups.items():
      out = _qat_batch(_stack([fitted[i] for i in members]),
                       jnp.stack([arrays[i] for i in members]), num_steps=config.qat_steps,
                       learning_rate=_codec.qat_learning_rate(config), qsteps=steps,
                       backend=config.backend, mesh=mesh, vectorize=vectorize,
                       rates=pick(members))
      for i, g in zip(members, out):
        fitted[i] = g
    return _round_all(fitted, arrays, qsteps, config, rates)
  by_shape: dict[tuple, list[int]] = {}
  for i, a in enumerate(arrays):
    by_shape.setdefault(a.shape, []).append(i)
  for frozen, lr, n_steps in _codec._sequential_stages(config.qat_steps):
    for (h, w, _), members in by_shape.items():
      snapped = [_codec._stage_start(fitted[i], arrays[i], qsteps[i], frozen, config,
                                     None if rates is None else rates[i]) for i in members]
      counts = [g.num_gaussians for g in snapped]
      if n_steps == 0 or max(counts) == 0:
        out = snapped
      else:
        padded = [_density.to_buffer(g, max(counts)) for g in snapped]
        out = _qat_batch(_stack(padded), jnp.stack([arrays[i] for i in members]),
                         num_steps=n_steps, learning_rate=lr * config.learning_rate, qsteps=None,
                         backend=config.backend, mesh=mesh, vectorize=vectorize, frozen=frozen,
                         rates=pick(members))
        out = [Gaussians(*(np.asarray(x)[:n] for x in g)) for g, n in zip(out, counts)]
      for i, g in zip(members, out):
        fitted[i] = g
  return _round_all(fitted, arrays, qsteps, config, rates)


def _round_all(fitted, arrays, qsteps, config, rates) -> list[Gaussians]:
  """``_codec._round_stage`` of every image (one at a time: a few renders each)."""
  rates = rates or [None] * len(fitted)
  return [_codec._round_stage(g, a, s, config, r)
          for g, a, s, r in zip(fitted, arrays, qsteps, rates)]


def _init_all(images, n: int, fit_config: FitConfig | None, seed: int) -> list[Gaussians]:
  """``init_for_fit`` of each image, on a few threads (SLIC releases the GIL).

  The images are independent and each result is the same as alone, so a
  batch initialises up to one image per core at a time.
  """
  init = lambda image: _fit.init_for_fit(image, n, fit_config, key=jax.random.key(seed))
  workers = min(len(images), os.cpu_count() or 1, 8)
  if workers <= 1:
    return [init(image) for image in images]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(init, images))


def _stack(trees):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
