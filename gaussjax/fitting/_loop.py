"""The training loop: many steps per dispatch as one compiled program.

Every training in gaussjax runs through ``run``: ``gaussjax.fit`` and
``fit_image`` (one image), ``fit_batch`` (a batch), and the codec's
quantisation-aware fine-tuning (``_codec._train``, one image or a batch).

Call chain::

  run(step, state, data, num_steps=, ...)       host, at chunk boundaries only:
    ├─ _render.plan_for(view(state), ...)       the plan of the next chunk (kept
    │                                           while it holds; None for the
    │                                           backends that need none)
    ├─ _event_call(state, data, t)              jit, only where event_due(t): an
    │    └─ event(state, data, t, plan, static) event between steps (density
    │                                           control), on the device
    ├─ _chunk(state, data, start, num_valid)    jit: lax.scan over `length` steps
    │    └─ step(state, data, t, plan, static)  one image; vmap (or lax.map) over
    │                                           a batch; shard_map over devices
    ├─ on overflow: _render.replan              the chunk (and its event) is
    │                                           discarded and redone from its
    │                                           start state with a fresh plan
    │                                           (never accepted)
    └─ on_chunk(start, count, state, metrics)   logging and stopping rules

A step is a pure function ``step(state, data, t, plan, static) -> (state,
metrics)`` of one image, ``t`` the step index (an int32 scalar shared by the
batch), ``metrics`` a dict of scalars that holds ``"overflow"``. The chunk
has a fixed, static length; its last steps are masked off (``num_valid``,
a traced count) so a partial chunk does not compile again: one compilation
per (shapes, step, static, plan, length). The per-step metrics come back
stacked ``[length, ...]``; the host reads them once per chunk.

An event (``event(state, data, t, plan, static) -> (state, overflow)``, e.g.
a density-control event) runs before step ``t`` where ``event_due(t)`` (a
host predicate): chunks end before event steps, and the event is its own
compiled program, dispatched between two chunks with no data leaving the
device. Keeping it out of the chunk keeps the chunk small to compile and
its steps free of a branch that is rarely taken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from gaussjax.core._compiled import release_if_crowded
from gaussjax.core._gaussians import Gaussians
from gaussjax.rendering import _render

# Steps per compiled chunk (one dispatch, one host round trip) unless the
# caller asks for other boundaries.
CHUNK_STEPS = 50

# The mesh axis a batch is split over (as in gaussjax.batch._batch).
BATCH_AXIS = "batch"


class LoopInfo(NamedTuple):
  """What ``run`` did.

  Attributes:
    done: steps made.
    replans: plans made (the first one included; 0 or 1 for backends that
      ignore plans).
    overflows: chunks that overflowed their plan and were redone.
    plan: the last plan (it holds the final state).
  """

  done: int
  replans: int
  overflows: int
  plan: Any


def _gaussians_of(state) -> Gaussians:
  """The Gaussians of a loop state: the state itself, its ``gaussians`` or its first field."""
  if isinstance(state, Gaussians):
    return state
  return state.gaussians if hasattr(state, "gaussians") else state[0]


def _batched_step(step, state, data, t, plan, static, batch):
  if batch is None:
    return step(state, data, t, plan, static)
  if batch == "vmap":
    return jax.vmap(step, in_axes=(0, 0, None, None, None))(state, data, t, plan, static)
  return jax.lax.map(lambda args: step(*args, t, plan, static), (state, data))


@functools.partial(jax.jit, static_argnames=("event", "static", "plan", "batch", "mesh"))
def _event_call(state, data, t, *, event, static, plan, batch, mesh):
  """``event`` before step ``t``: ``(state, overflowed)`` (any image of a batch)."""

  def local(state, data, t):
    state, overflow = _batched_step(event, state, data, t, plan, static, batch)
    return state, jnp.any(overflow)

  if mesh is None:
    return local(state, data, t)
  spec = PartitionSpec(BATCH_AXIS)
  state, overflowed = jax.shard_map(
      lambda s, d, a: (lambda r: (r[0], r[1][None]))(local(s, d, a)),
      mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=(spec, spec),
      check_vma=False)(state, data, t)
  return state, jnp.any(overflowed)


@functools.partial(jax.jit, static_argnames=("step", "static", "plan", "length", "batch", "mesh"))
def _chunk(state, data, start, num_valid, *, step, static, plan, length, batch, mesh):
  """``num_valid`` (traced, at most ``length``) steps from ``start``.

  Returns ``(state, metrics, overflowed)``.

  Steps past ``num_valid`` or after an overflow are skipped (``lax.cond``);
  their metrics are zeros. On overflow the state stays that of the last good
  step, and ``overflowed`` is True: the caller discards the chunk.
  """

  def local(state, data, start, num_valid):
    def run_step(s, t):
      new, metrics = _batched_step(step, s, data, t, plan, static, batch)
      overflow = jnp.any(metrics["overflow"])
      new = jax.tree_util.tree_map(lambda a, b: jnp.where(overflow, b, a), new, s)
      return new, metrics, overflow

    shapes = jax.eval_shape(run_step, state, start)[1]

    def skip(s, t):
      zeros = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
      return s, zeros, jnp.zeros((), bool)

    def body(carry, i):
      s, overflowed = carry
      active = (i < num_valid) & jnp.logical_not(overflowed)
      s, metrics, overflow = jax.lax.cond(active, run_step, skip, s, start + i)
      return (s, overflowed | overflow), metrics

    (state, overflowed), metrics = jax.lax.scan(
        body, (state, jnp.zeros((), bool)), jnp.arange(length, dtype=jnp.int32))
    return state, metrics, overflowed

  if mesh is None:
    return local(state, data, start, num_valid)
  spec = PartitionSpec(BATCH_AXIS)
  # Each device runs the loop on its own images: no communication in a step.
  # Metrics are [length, B] per device: split on their second axis.
  state, metrics, overflowed = jax.shard_map(
      lambda s, d, a, n: (lambda r: (r[0], r[1], r[2][None]))(local(s, d, a, n)),
      mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()),
      out_specs=(spec, PartitionSpec(None, BATCH_AXIS), spec), check_vma=False)(
          state, data, start, num_valid)
  return state, metrics, jnp.any(overflowed)


def run(
    step: Callable,
    state,
    data,
    *,
    num_steps: int,
    static: Any,
    height: int,
    width: int,
    backend: str,
    view: Callable | None = None,
    start: int = 0,
    chunk: int = CHUNK_STEPS,
    boundary: Callable[[int], int] | None = None,
    replan_every: int = 100,
    batch: str | None = None,
    mesh: Mesh | None = None,
    plan=None,
    on_chunk: Callable | None = None,
    refresh: Callable | None = None,
    event: Callable | None = None,
    event_due: Callable[[int], bool] | None = None,
):
  """Runs ``num_steps`` steps of ``step`` in compiled chunks: ``(state, LoopInfo)``.

  Args:
    step: ``step(state, data, t, plan, static) -> (state, metrics)`` for one
      image, pure and hashable (a top-level function), ``metrics["overflow"]``
      a boolean scalar.
    state: pytree (leaves ``[B, ...]`` with ``batch``).
    data: pytree of per-image inputs (leaves ``[B, ...]`` with ``batch``).
    num_steps: steps to make (``t`` runs from ``start`` to ``start + num_steps``).
    static: hashable extra argument of ``step``.
    height: rows of the rendered images (for plans).
    width: columns.
    backend: the renderer (resolved).
    view: ``view(state) -> Gaussians`` to plan from (default: the state's
      Gaussians, ``_gaussians_of``); called only for backends that use plans.
    start: index of the first step.
    chunk: steps per compiled chunk (static: one compilation).
    boundary: ``boundary(done) -> step`` where the chunk starting at ``done``
      must end at the latest (logging points); None: none.
    replan_every: re-plan (``plan_for``, which keeps a plan that holds) at the
      first chunk boundary at least this many steps after the last plan.
    batch: None (one image), ``"vmap"`` or ``"map"`` (a loop over the images
      inside the compiled step).
    mesh: split the batch axis over these devices (``shard_map``); the
      batch must be a multiple of the device count.
    plan: a plan to start with (None: make one).
    on_chunk: ``on_chunk(first, count, state, metrics) -> stop`` after each
      accepted chunk: steps ``first ... first + count - 1`` were made,
      ``metrics`` stacked ``[chunk, ...]`` (the first ``count`` valid),
      ``state`` the state after them. Returning True stops the loop.
    refresh: ``refresh(data) -> data`` before each chunk (traced inputs that
      the host adjusts between chunks, e.g. a schedule's horizon; same
      shapes, so nothing compiles again).
    event: ``event(state, data, t, plan, static) -> (state, overflow)`` for
      one image, pure and hashable: run before step ``t`` wherever
      ``event_due(t)`` (compiled once, apart from the steps).
    event_due: ``event_due(t) -> bool`` on the host (it may follow what
      ``refresh`` follows); None: no events.

  Returns:
    ``(state, LoopInfo)``.

  Raises:
    RuntimeError: fresh plans keep overflowing (``_render.replan``).
  """
  if (event is None) != (event_due is None):
    raise ValueError("run takes an event together with event_due, or neither")
  release_if_crowded()  # a long process: free compiled programs near the map limit
  if view is None:
    view = _gaussians_of
  # The channels of the parameters (a view, e.g. fake quantisation, keeps them).
  uses_plans = _render.uses_plans(backend, _gaussians_of(state).colors.shape[-1])
  replans = overflows = 0
  planned = plan is not None or not uses_plans
  if not uses_plans:
    plan, replans = None, 1
  planned_at = 0
  done = 0
  attempt = 0
  while done < num_steps:
    if uses_plans and (not planned or done - planned_at >= replan_every):
      plan, made = _render.plan_for(view(state), height, width, backend=backend,
                                    previous=plan if planned else None)
      planned, planned_at, replans = True, done, replans + int(made)
    if refresh is not None:
      data = refresh(data)
    end = min(done + chunk, num_steps)
    if boundary is not None:
      end = min(end, max(boundary(start + done) - start, done + 1))
    first_state, event_overflowed = state, False
    if event_due is not None:
      # The chunk ends before the next event; the event of its first step runs first.
      end = next((u for u in range(done + 1, end) if event_due(start + u)), end)
      if event_due(start + done):
        first_state, event_overflowed = _event_call(
            state, data, jnp.asarray(start + done, jnp.int32), event=event, static=static,
            plan=plan, batch=batch, mesh=mesh)
    new_state, metrics, overflowed = _chunk(
        first_state, data, jnp.asarray(start + done, jnp.int32),
        jnp.asarray(end - done, jnp.int32), step=step, static=static, plan=plan, length=chunk,
        batch=batch, mesh=mesh)
    # One read of the device per chunk (the event's flag is ready by then).
    if bool(overflowed) or bool(event_overflowed):  # redo from the start state, a fresh plan
      overflows += 1
      attempt += 1
      plan = _render.replan(view(state), height, width, backend=backend, attempt=attempt)
      planned, planned_at, replans = True, done, replans + 1
      continue
    attempt = 0
    first, state, done = start + done, new_state, end
    if on_chunk is not None and on_chunk(first, start + end - first, state, metrics):
      break
  return state, LoopInfo(done, replans, overflows, plan)
