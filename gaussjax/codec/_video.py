"""The video codec: I-frames from the image codec, P-frames as changes (``.gjv``, FORMAT.md).

Call chain::

  encode_video(frames, config)               one pass over the frames (any iterable)
    ├─ _encode_i  → gaussjax.encode          a whole .gjx file per I-frame
    └─ _encode_p                             warm start from the decoder's state:
         ├─ global_motion, block_motion      a pan, and a block motion field on top
         ├─ gaussjax.fit                     a short fit (with the tuning below, ≤ a
         │                                   quarter of the I-frame's steps); density
         │                                   control may relocate and add
         ├─ _PFrame.code                     skip / delta / remove per Gaussian, new
         │                                   Gaussians (encode_gaussians); rounding
         │                                   with quantisation-aware tuning
         └─ _write_p                         one entropy model per stream (constriction)
  iter_video_frames(data, start=, stop=)     decode from the I-frame at or before start
  decode_video(data) / decode_video_frame(data, k)
  video_info(data)                           header and per-frame segment sizes

The decoder's state between frames is the integer symbols of every Gaussian
(``gaussjax.codec._quantize.Symbols`` on the I-frame's quantiser grid). An I-frame
sets it from its ``.gjx`` payload; a P-frame adds quantised deltas, removes
and appends Gaussians. The encoder keeps exactly that state (closed loop): it
warm-starts each P-frame from the decoded Gaussians, never from its own float
fit, so quantisation errors do not drift.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Iterator

import numpy as np

from gaussjax.codec import _quantize as qz
from gaussjax.codec._bitstream import (
  MAX_ALPHABET,
  DecodeError,
  Decoder,
  Encoder,
  Model,
  Reader,
  Writer,
  choose_model,
)
from gaussjax.codec._codec import (
  MAX_CHANNELS,
  MAX_DIM,
  MAX_FILE_BYTES,
  MAX_GAUSSIANS,
  CodecConfig,
  _output_size,
  encode_gaussians,
  render_safe,
)
from gaussjax.codec._formats import decode_gaussians, encode
from gaussjax.codec._formats import info as gjx_info
from gaussjax.core import _metrics
from gaussjax.core._gaussians import Gaussians
from gaussjax.core._metrics import psnr
from gaussjax.fitting._density import contributions
from gaussjax.fitting._fit import FitConfig, fit

MAGIC = b"\x89GJV"
VERSION = 2  # 2: P-frames may carry a block motion field (FORMAT.md)
READ_VERSIONS = (1, 2)
MAX_FRAMES = 1 << 20
MAX_VIDEO_BYTES = 1 << 34
SEGMENT_I = 0
SEGMENT_P = 1
SEGMENT_NAMES = {SEGMENT_I: "I", SEGMENT_P: "P"}
# P-frame modes of a previous Gaussian.
MODE_SKIP, MODE_DELTA, MODE_REMOVE = 0, 1, 2
# Delta multipliers (P-frame header) are 1..MAX_MULTIPLIER quantiser steps.
MAX_MULTIPLIER = 16
# A delta symbol larger than this is coded as remove + add instead.
MAX_DELTA = 1000
# Motion field blocks (pixels): at most this side, and at most this many blocks.
MAX_MOTION_BLOCK = 255
MAX_MOTION_BLOCKS = 1 << 16
_FIELDS = ("pos", "chol", "color")

# Rate levels of a P-frame, finest first: (delta step in quantiser steps,
# fraction of the Gaussians, by importance of their change, that get a delta).
P_LEVELS = ((1, 1.0), (1, 0.7), (1, 0.5), (1, 0.35), (2, 0.35), (2, 0.25), (3, 0.2), (4, 0.15),
            (6, 0.1), (8, 0.05), (16, 0.0))


# ---------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class VideoConfig:
  """How ``encode_video`` codes a clip.

  Exactly one of ``bpp`` and ``quality`` is used (``bpp`` wins; neither
  means ``quality=50``).

  Attributes:
    bpp: target rate in bits per pixel per frame, on average over each group
      of pictures (I-frame plus its P-frames).
    quality: 1..100: the I-frames' ``CodecConfig.quality``, and the P-frames'
      delta step (``p_multiplier``) from it.
    gop: an I-frame every ``gop`` frames (1: every frame an I-frame).
    scene_cut_db: also an I-frame when the previous reconstruction is below
      this PSNR (dB) against the new frame (a scene change); None: never.
    refresh_db: also an I-frame after a P-frame whose reconstruction is
      this many dB below its group's I-frame (the P-frames no longer keep
      up, e.g. fast motion); None: never.
    fit_steps: float-fit steps of an I-frame (``CodecConfig.fit_steps``).
    qat_steps: fine-tuning steps of an I-frame (``CodecConfig.qat_steps``).
    p_steps: fit steps of a P-frame; None: ``fit_steps // 4``. Must be at
      most a quarter of ``fit_steps``.
    p_lr_scale: learning rates of the P-frame fit relative to
      ``FitConfig``'s (a warm start needs small steps).
    p_tune_share: share of the P-frame's steps spent on quantisation-aware
      tuning after the fit (``_PFrame``); the fit gets the rest.
    p_relocate_fraction: share of the Gaussians the P-frame fit's density
      control may relocate at each event (each costs a removal and an
      added Gaussian).
    p_motion_block: block side (pixels) of the P-frames' motion field
      (``block_motion``; 0: global motion only).
    p_motion_search: search range (pixels) of the block motion, around both
      zero and the global motion.
    p_add_fraction: Gaussians a P-frame may add (where the error is
      largest), relative to the current count.
    p_move_limit: a Gaussian that moved further (pixels) is coded as
      removed and added again (it was relocated by density control).
    p_deadzone: deltas under ``0.5 + p_deadzone`` steps are rounded to 0,
      so Gaussians that barely changed are skipped.
    p_cost: planned size of a P-frame relative to an I-frame (``bpp``
      mode): an I-frame gets ``1 / (1 + (L - 1) · p_cost)`` of the bytes
      left for its group of L frames (the sequence's budget up to the
      group's end, less what was spent), the P-frames share the rest.
    p_level: rate level of the P-frames, an index in ``P_LEVELS`` (delta
      step and share of Gaussians updated); None: chosen per frame (``bpp``:
      the finest that fits the frame's budget; ``quality``: from the
      quality).
    backend: renderer for fitting and decoding checks.
    seed: PRNG seed of the I-frames' initialisation.
  """

  bpp: float | None = None
  quality: float | None = None
  gop: int = 16
  scene_cut_db: float | None = 12.0
  refresh_db: float | None = 3.0
  fit_steps: int = 1500
  qat_steps: int = 300
  p_steps: int | None = None
  p_lr_scale: float = 0.3
  p_tune_share: float = 0.4
  p_relocate_fraction: float = 0.02
  p_motion_block: int = 32
  p_motion_search: int = 10
  p_add_fraction: float = 0.02
  p_move_limit: float = 4.0
  p_deadzone: float = 0.2
  p_cost: float = 0.4
  p_level: int | None = None
  backend: str = "auto"
  seed: int = 0

  def __post_init__(self):
    if self.bpp is not None and not (0.0 < self.bpp <= 64.0):
      raise ValueError(f"bpp={self.bpp} must be in (0, 64]")
    if self.quality is not None and not (1.0 <= self.quality <= 100.0):
      raise ValueError(f"quality={self.quality} must be in [1, 100]")
    if isinstance(self.gop, bool) or not isinstance(self.gop, int) or not 1 <= self.gop <= 65535:
      raise ValueError(f"gop={self.gop!r} must be an int in [1, 65535]")
    if self.fit_steps < 1 or self.qat_steps < 0:
      raise ValueError(f"fit_steps={self.fit_steps} must be >= 1 and qat_steps="
                       f"{self.qat_steps} >= 0")
    if self.p_steps is not None and not 1 <= self.p_steps <= max(1, self.fit_steps // 4):
      raise ValueError(f"p_steps={self.p_steps} must be in [1, fit_steps // 4 = "
                       f"{max(1, self.fit_steps // 4)}]")
    for name, hi in (("p_motion_block", MAX_MOTION_BLOCK), ("p_motion_search", 64)):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise ValueError(f"{name}={v!r} must be an int in [0, {hi}]")
    if self.p_level is not None and not 0 <= self.p_level < len(P_LEVELS):
      raise ValueError(f"p_level={self.p_level} must be in [0, {len(P_LEVELS) - 1}]")
    for name, lo, hi in (("p_lr_scale", 0.0, 10.0), ("p_tune_share", 0.0, 0.9),
                         ("p_relocate_fraction", 0.0, 0.5), ("p_add_fraction", 0.0, 1.0),
                         ("p_move_limit", 0.0, 1e6), ("p_deadzone", 0.0, 0.5),
                         ("p_cost", 0.01, 1.0)):
      v = getattr(self, name)
      if not (isinstance(v, (int, float)) and lo <= v <= hi):
        raise ValueError(f"{name}={v!r} must be in [{lo}, {hi}]")

  @property
  def p_fit_steps(self) -> int:
    """Fit steps of a P-frame."""
    return self.p_steps if self.p_steps is not None else max(1, self.fit_steps // 4)

  @property
  def p_step_split(self) -> tuple[int, int]:
    """``(fit steps, tuning steps)`` of a P-frame; they sum to ``p_fit_steps``."""
    total = self.p_fit_steps
    tune = min(int(round(self.p_tune_share * total)), total - 1)
    return total - tune, tune

  def codec_config(self, bpp: float | None) -> CodecConfig:
    """The ``CodecConfig`` of an I-frame at ``bpp`` (None: this config's quality).

    One colour step per channel (``color_size=0``): P-frames move the latents
    of the I-frame's Gaussians in its step units, shapes included, and a
    size-scaled colour step would change under them; for the same reason one
    position step for all (``pos_levels=0``). The means and factors are
    rounded to the nearest step (``rd_round_means=False``,
    ``rd_round_chol=False``), and the float fit is one fit per half, both at
    full size (``fit_cycles=1``, ``coarse_fit=False``), as when the video codec
    was measured (``benchmarks/results/video*.md``).
    """
    return CodecConfig(bpp=bpp, quality=None if bpp is not None else (self.quality or 50.0),
                       fit_steps=self.fit_steps, qat_steps=self.qat_steps,
                       backend=self.backend, seed=self.seed, color_size=0.0,
                       rd_round_means=False, rd_round_chol=False, pos_levels=0,
                       fit_cycles=1, coarse_fit=False)


# ---------------------------------------------------------------------------
# The decoder's state


@dataclasses.dataclass
class _State:
  """Integer symbols of the current Gaussians on the GOP's quantiser grid."""

  sym: qz.Symbols
  steps: qz.QuantSteps
  height: int
  width: int

  @property
  def count(self) -> int:
    return self.sym.pos.shape[0]

  def gaussians(self) -> Gaussians:
    return qz.dequantize(self.sym, self.height, self.width, self.steps)


def _steps_of(payload: bytes) -> qz.QuantSteps:
  s = gjx_info(payload)["steps"]
  if s.get("pos_levels"):  # P-frames move positions in one step for all (codec_config)
    raise DecodeError("a video frame's Gaussians have per-Gaussian position steps "
                      f"(pos_levels={s['pos_levels']}), which the video format does not use")
  return qz.QuantSteps(s["pos"], s["scale"], s["shear"], tuple(s["color"]), s["color_size"])


def _gjx_state(payload: bytes, steps: qz.QuantSteps | None, h: int, w: int, c: int) -> _State:
  """The state of a ``.gjx`` payload (an I-frame, or a P-frame's new Gaussians).

  Encoder and decoder both run this on the same bytes, so they agree exactly.
  """
  g, (gh, gw) = decode_gaussians(payload)
  if (gh, gw) != (h, w) or g.channels != c:
    raise DecodeError(f"embedded image is {gw}x{gh}x{g.channels}, the video {w}x{h}x{c}")
  steps = steps or _steps_of(payload)
  sym, _ = qz.quantize(g, h, w, steps)
  return _State(qz.clip_symbols(sym, h, w, steps), steps, h, w)


def _concat(a: qz.Symbols, b: qz.Symbols) -> qz.Symbols:
  return qz.Symbols(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in _FIELDS))


def _columns(s: qz.Symbols) -> np.ndarray:
  """``[N, 5 + C]``: x, y, log l11, shear, log l22, colours."""
  return np.concatenate([s.pos, s.chol, s.color], 1)


def _from_columns(a: np.ndarray) -> qz.Symbols:
  return qz.Symbols(a[:, :2], a[:, 2:5], a[:, 5:])


def _multipliers(m: int) -> np.ndarray:
  """Per-field multipliers ``[pos, scale, shear, colour]`` of a P-frame at level ``m``."""
  return np.array([m, m, m, m], np.int64)


def _column_multipliers(mult: np.ndarray, c: int) -> np.ndarray:
  return np.concatenate([[mult[0]] * 2, [mult[1], mult[2], mult[1]], [mult[3]] * c])


# ---------------------------------------------------------------------------
# Container


@dataclasses.dataclass(frozen=True)
class VideoHeader:
  """The ``.gjv`` header fields (FORMAT.md)."""

  version: int
  channels: int
  width: int
  height: int
  num_frames: int
  fps: float | None
  gop: int


def _header_bytes(h: VideoHeader) -> bytes:
  w = Writer()
  w.raw(MAGIC)
  w.u8(h.version)
  w.u8(h.channels)
  w.u16(h.width)
  w.u16(h.height)
  w.varint(h.num_frames)
  w.u32(0 if not h.fps else min(int(round(h.fps * 1000)), 0xFFFFFFFF))
  w.u16(h.gop)
  w.u32(zlib.crc32(bytes(w.buf)))
  return bytes(w.buf)


def _segment_bytes(kind: int, payload: bytes) -> bytes:
  w = Writer()
  w.u8(kind)
  w.varint(len(payload))
  w.raw(payload)
  w.u32(zlib.crc32(bytes(w.buf)))
  return bytes(w.buf)


def _parse(data) -> tuple[VideoHeader, list[tuple[int, bytes]]]:
  """Header and ``(kind, payload)`` of every segment, all checksums verified."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) > MAX_VIDEO_BYTES:
    raise DecodeError(f"file of {len(data)} bytes is over the limit of {MAX_VIDEO_BYTES}")
  r = Reader(data)
  magic = r.take(4, "magic")
  if magic != MAGIC:
    raise DecodeError(f"wrong magic {magic!r}: not a gaussjax video (expected {MAGIC!r})")
  version = r.u8("version")
  if version not in READ_VERSIONS:
    raise DecodeError(f"unsupported video format version {version} (this gaussjax reads "
                      f"{list(READ_VERSIONS)})")
  c = r.u8("channels")
  width, height = r.u16("width"), r.u16("height")
  num_frames = r.varint("number of frames", MAX_FRAMES)
  fps_milli = r.u32("frame rate")
  gop = r.u16("gop")
  end = r.pos
  stored = r.u32("header checksum")
  if stored != zlib.crc32(data[:end]):
    raise DecodeError("header checksum mismatch (the file is corrupt)")
  if not 1 <= c <= MAX_CHANNELS:
    raise DecodeError(f"channels={c} must be in [1, {MAX_CHANNELS}]")
  if width < 1 or height < 1:
    raise DecodeError(f"frame size {width}x{height} must be positive")
  header = VideoHeader(version, c, width, height, num_frames,
                       fps_milli / 1000 if fps_milli else None, gop)
  segments = []
  for k in range(num_frames):
    start = r.pos
    kind = r.u8(f"frame {k} type")
    if kind not in SEGMENT_NAMES:
      raise DecodeError(f"frame {k}: unknown segment type {kind}")
    if k == 0 and kind != SEGMENT_I:
      raise DecodeError("the first frame must be an I-frame")
    length = r.varint(f"frame {k} length", MAX_FILE_BYTES)
    payload = r.take(length, f"frame {k} payload")
    crc_end = r.pos
    if r.u32(f"frame {k} checksum") != zlib.crc32(data[start:crc_end]):
      raise DecodeError(f"frame {k}: checksum mismatch (the file is corrupt)")
    segments.append((kind, payload))
  if r.pos != len(data):
    raise DecodeError(f"{len(data) - r.pos} unexpected bytes after the last frame")
  return header, segments


# ---------------------------------------------------------------------------
# P-frames: writing and reading


def _write_p(n_prev: int, mult: np.ndarray, motion: tuple[int, int], modes: np.ndarray,
             deltas: np.ndarray, added: bytes, field: MotionField | None = None) -> bytes:
  """A P-frame payload (FORMAT.md, "P-frames")."""
  w = Writer()
  w.varint(n_prev)
  for m in mult:
    w.u8(int(m))
  w.svarint(int(motion[0]))
  w.svarint(int(motion[1]))
  use_field = field is not None and n_prev > 0
  w.u8(field.block if use_field else 0)
  enc = Encoder()
  if n_prev:
    if use_field:
      for k in range(2):
        model = choose_model(field.vectors[..., k].ravel())
        model.write(w)
        enc.add(field.vectors[..., k].ravel(), model)
    mode_model = choose_model(modes)
    mode_model.write(w)
    enc.add(modes, mode_model)
    w.u8(deltas.shape[1] if len(deltas) else 0)
    if len(deltas):
      for k in range(deltas.shape[1]):
        model = choose_model(deltas[:, k])
        model.write(w)
        enc.add(deltas[:, k], model)
  payload = enc.finish() if n_prev else b""
  w.varint(len(payload))
  w.raw(payload)
  w.raw(added)
  return bytes(w.buf)


@dataclasses.dataclass(frozen=True)
class MotionField:
  """Block motion of a P-frame: every previous Gaussian moves by its block's vector.

  Attributes:
    block: block side in pixels (1..``MAX_MOTION_BLOCK``).
    vectors: ``int64 [ceil(H / block), ceil(W / block), 2]`` (x, y) in position
      quantiser steps, added after the global motion.
  """

  block: int
  vectors: np.ndarray


def _field_shape(h: int, w: int, block: int) -> tuple[int, int]:
  return -(-h // block), -(-w // block)


def _field_offsets(cols: np.ndarray, field: MotionField, h: int, w: int,
                   steps: qz.QuantSteps) -> np.ndarray:
  """``[N, 2]`` symbol offsets of Gaussians at position symbols ``cols[:, :2]``.

  A Gaussian's block is that of its position *before* any motion, in pixels
  (``pos · step − margin``, float64, the same on encoder and decoder),
  clipped into the grid.
  """
  gh, gw = field.vectors.shape[:2]
  px = cols[:, :2].astype(np.float64) * steps.pos - qz.margin(h, w)
  bx = np.clip(np.floor(px[:, 0] / field.block), 0, gw - 1).astype(np.int64)
  by = np.clip(np.floor(px[:, 1] / field.block), 0, gh - 1).astype(np.int64)
  return field.vectors[by, bx]


def _read_p(payload: bytes, state: _State, c: int, version: int = VERSION) -> _State:
  """Applies a P-frame payload to the decoder's state; returns the new state."""
  r = Reader(payload)
  n_prev = r.varint("previous Gaussian count", MAX_GAUSSIANS)
  if n_prev != state.count:
    raise DecodeError(f"P-frame refers to {n_prev} Gaussians, the decoder holds {state.count}")
  mult = np.array([r.u8("delta multiplier") for _ in range(4)], np.int64)
  if (mult < 1).any() or (mult > MAX_MULTIPLIER).any():
    raise DecodeError(f"delta multipliers {mult.tolist()} must be in [1, {MAX_MULTIPLIER}]")
  h, w, steps = state.height, state.width, state.steps
  limit = 1 << qz.grid_bits(h, w, steps.pos)
  motion = np.array([r.svarint("global motion x", limit), r.svarint("global motion y", limit)])
  block = r.u8("motion block") if version >= 2 else 0
  if block and not n_prev:
    raise DecodeError("a P-frame of an empty picture has a motion field")
  if block > MAX_MOTION_BLOCK:
    raise DecodeError(f"motion block {block} is over {MAX_MOTION_BLOCK}")
  models, field_models = [], []
  if block:
    gh, gw = _field_shape(h, w, block)
    if gh * gw > MAX_MOTION_BLOCKS:
      raise DecodeError(f"a motion field of {gw}x{gh} blocks is over {MAX_MOTION_BLOCKS}")
    field_models = [Model.read(r, f"motion {a}", limit) for a in "xy"]
  if n_prev:
    mode_model = Model.read(r, "mode", MAX_ALPHABET * 16)
    if mode_model.lo < 0 or mode_model.lo + mode_model.n - 1 > MODE_REMOVE:
      raise DecodeError(f"mode alphabet [{mode_model.lo}, {mode_model.lo + mode_model.n}) "
                        f"is outside [0, {MODE_REMOVE}]")
    count = r.u8("delta model count")
    if count not in (0, 5 + c):
      raise DecodeError(f"delta model count {count} must be 0 or {5 + c}")
    names = ["dx", "dy", "d log l11", "d shear", "d log l22"] + [
        f"d colour {k}" for k in range(c)]
    models = [Model.read(r, names[k], MAX_ALPHABET * 16) for k in range(count)]
  length = r.varint("P-frame payload length", MAX_FILE_BYTES)
  ans = r.take(length, "P-frame payload")
  sym = state.sym
  if n_prev:
    dec = Decoder(ans)
    field = None
    if block:
      vec = np.stack([dec.read(m, gh * gw) for m in field_models], -1).reshape(gh, gw, 2)
      if np.abs(vec).max() > limit:
        raise DecodeError(f"motion vectors over the position grid of {limit} steps")
      field = MotionField(block, vec)
    modes = dec.read(mode_model, n_prev)
    n_delta = int(np.count_nonzero(modes == MODE_DELTA))
    if bool(n_delta) != bool(models):
      raise DecodeError(f"{n_delta} Gaussians have deltas but the frame has {len(models)} "
                        "delta models")
    cols = _columns(sym)
    if field is not None:
      cols[:, :2] += _field_offsets(cols, field, h, w, steps)
    cols[:, :2] += motion
    if n_delta:
      d = np.stack([dec.read(m, n_delta) for m in models], -1)
      cols = cols.copy()
      cols[modes == MODE_DELTA] += d * _column_multipliers(mult, c)
    sym = _from_columns(cols[modes != MODE_REMOVE])
  elif ans:
    raise DecodeError("a P-frame of an empty picture has an entropy-coded payload")
  added = r.take(r.end - r.pos, "new Gaussians")
  if added:
    new = _gjx_state(added, steps, h, w, c)
    if sym.pos.shape[0] + new.count > MAX_GAUSSIANS:
      raise DecodeError(f"{sym.pos.shape[0] + new.count} Gaussians is over MAX_GAUSSIANS")
    sym = _concat(sym, new.sym)
  return _State(qz.clip_symbols(sym, h, w, steps), steps, h, w)


# ---------------------------------------------------------------------------
# Encoding


def _as_frame(frame, shape=None) -> np.ndarray:
  arr = np.asarray(frame)
  if arr.ndim == 2:
    arr = arr[:, :, None]
  if arr.ndim != 3:
    raise ValueError(f"a frame must have shape [H, W, C], got {arr.shape}")
  if arr.dtype == np.uint8:
    arr = arr.astype(np.float32) / 255.0
  elif not np.issubdtype(arr.dtype, np.floating):
    raise TypeError(f"frames must be float in [0, 1] or uint8, got {arr.dtype}")
  arr = arr.astype(np.float32)
  if shape is not None and arr.shape != shape:
    raise ValueError(f"frame of shape {arr.shape} differs from the first frame's {shape}")
  h, w, c = arr.shape
  if not (1 <= h <= MAX_DIM and 1 <= w <= MAX_DIM and 1 <= c <= MAX_CHANNELS):
    raise ValueError(f"frame shape {arr.shape} must be within {MAX_DIM} per side and "
                     f"{MAX_CHANNELS} channels")
  if not np.all(np.isfinite(arr)):
    raise ValueError("a frame contains NaN or infinite values")
  return arr


def _render(state: _State, backend: str) -> np.ndarray:
  g = state.gaussians()
  if g.num_gaussians == 0:
    return np.zeros((state.height, state.width, g.channels), np.float32)
  return np.clip(np.asarray(render_safe(g, state.height, state.width, backend=backend)), 0, 1)


def _quality_level(quality: float) -> int:
  """Index in ``P_LEVELS`` for a quality 1..100 (100: the finest)."""
  return int(np.clip(round((100.0 - quality) / 100.0 * (len(P_LEVELS) - 1)), 0,
                     len(P_LEVELS) - 1))


class _Encoder:
  """The encoder's loop state (closed loop: ``state`` is what the decoder holds)."""

  def __init__(self, config: VideoConfig, shape, num_frames: int | None):
    self.config = config
    self.h, self.w, self.c = shape
    self.num_frames = num_frames
    self.state: _State | None = None
    self.recon: np.ndarray | None = None
    self.gop_left = 0  # frames left in the current GOP after this one
    self.spent = 0  # bytes of the frames coded so far
    self.gop_end = 0  # one past the last frame the current GOP plans for
    self.i_psnr = 0.0  # PSNR of the current GOP's I-frame
    self.refresh = False  # the next frame is an I-frame (P-frame quality fell)
    self.field: MotionField | None = None  # the last P-frame's motion field

  def frame_bytes(self) -> float:
    return _metrics.bytes_for_bpp(self.config.bpp, self.h, self.w)

  def encode(self, index: int, frame: np.ndarray) -> tuple[int, bytes, dict]:
    cfg = self.config
    scene_cut = False
    if self.state is not None and self.gop_left > 0 and cfg.scene_cut_db is not None:
      scene_cut = float(psnr(self.recon, frame)) < cfg.scene_cut_db
    if self.state is None or self.gop_left <= 0 or scene_cut or self.refresh:
      kind, payload = SEGMENT_I, self._encode_i(index, frame)
    else:
      kind, payload = SEGMENT_P, self._encode_p(frame)
      self.gop_left -= 1
    self.spent += len(payload)
    self.recon = _render(self.state, cfg.backend)
    quality = float(psnr(self.recon, frame))
    if kind == SEGMENT_I:
      self.i_psnr = quality
    # P-frames that fell too far below their I-frame: the next frame is an I-frame.
    self.refresh = (kind == SEGMENT_P and cfg.refresh_db is not None
                    and quality < self.i_psnr - cfg.refresh_db)
    info = dict(frame=index, type=SEGMENT_NAMES[kind], bytes=len(payload), psnr=quality,
                gaussians=self.state.count, scene_cut=scene_cut,
                motion_field=kind == SEGMENT_P and self.field is not None)
    return kind, payload, info

  def _encode_i(self, index: int, frame: np.ndarray) -> bytes:
    cfg = self.config
    length = cfg.gop
    if self.num_frames is not None:
      length = max(1, min(length, self.num_frames - index))
    self.gop_left = length - 1
    self.gop_end = index + length
    bpp = None
    if cfg.bpp is not None:
      # The sequence's account: what the frames up to the GOP's end may cost,
      # less what was spent (a GOP cut short passes its unspent bytes on).
      left = self.gop_end * self.frame_bytes() - self.spent
      share = 1.0 / (1.0 + (length - 1) * cfg.p_cost)
      bpp = _metrics.bpp(max(left * share, 0.0), self.h, self.w)  # overspent: the floor below
      bpp = float(np.clip(bpp, 0.5 * cfg.bpp, 64.0))
    payload = encode(frame, cfg.codec_config(bpp))
    self.state = _gjx_state(payload, None, self.h, self.w, self.c)
    self.slots = int(math.ceil(self.state.count * (1.0 + cfg.p_add_fraction)))
    return payload

  def _prediction_mse(self, cols: np.ndarray, frame: np.ndarray) -> float:
    """MSE against ``frame`` of the state with position symbols moved to ``cols``."""
    st = self.state
    g = qz.dequantize(qz.clip_symbols(_from_columns(cols), st.height, st.width, st.steps), st.height,
                      st.width, st.steps)
    out = np.clip(np.asarray(render_safe(g, st.height, st.width, backend=self.config.backend)),
                  0, 1)
    return float(np.mean((out - frame) ** 2))

  def _fit_p(self, frame: np.ndarray, start: Gaussians, steps: int) -> Gaussians:
    """The short warm-started fit; rows ``< N`` continue ``start``'s Gaussians."""
    cfg = self.config
    # A fixed slot count per GOP (the I-frame's count plus p_add_fraction):
    # every P-frame of the GOP fills the slots that removals freed, and shares
    # one compiled fit step (a new shape would compile anew).
    s = cfg.p_lr_scale
    base = FitConfig()
    fit_config = FitConfig(
        steps=steps, lr_means=base.lr_means * s, lr_chol=base.lr_chol * s,
        lr_colors=base.lr_colors * s, warmup_steps=min(base.warmup_steps, steps // 10),
        backend=cfg.backend, replan_every=max(1, min(base.replan_every, steps)),
        log_every=steps, num_gaussians=self.slots,
        densify_every=max(1, steps // 4) if steps >= 4 else 0, grow_until=0.5,
        densify_until=0.6, prune_fraction=cfg.p_relocate_fraction)
    fitted, _ = fit(frame, start, fit_config)
    return Gaussians(*(np.asarray(x, np.float32) for x in fitted))

  def _encode_p(self, frame: np.ndarray) -> bytes:
    cfg = self.config
    st = self.state
    h, w, c, steps = self.h, self.w, self.c, st.steps
    n = st.count
    # Global motion (a camera pan), in position steps: the decoder moves every
    # Gaussian by it before the deltas, so a pan costs two numbers.
    dx, dy = global_motion(self.recon, frame) if n else (0.0, 0.0)
    limit = (1 << qz.grid_bits(h, w, steps.pos)) - 1
    motion = (int(np.clip(round(dx / steps.pos), -limit, limit)),
              int(np.clip(round(dy / steps.pos), -limit, limit)))
    base_cols = _columns(st.sym)
    prev_cols = base_cols.copy()
    still = float(np.mean((self.recon - frame) ** 2)) if n else 0.0
    if motion != (0, 0):
      prev_cols[:, :2] += motion
      # Keep the motion only when it predicts the frame clearly better (0.2 dB).
      shifted = self._prediction_mse(prev_cols, frame)
      if shifted < still * 10 ** (-0.02):
        still = shifted
      else:
        motion = (0, 0)
        prev_cols = base_cols.copy()
    field = None
    if cfg.p_motion_block and n:
      # Block motion on top (objects moving against the pan or a still camera).
      vec = block_motion(self.recon, frame, cfg.p_motion_block, cfg.p_motion_search,
                         (motion[0] * steps.pos, motion[1] * steps.pos))
      vec = np.rint(vec / steps.pos).astype(np.int64) - np.asarray(motion, np.int64)
      vec = np.clip(vec, -limit, limit)
      if vec.any():
        candidate = MotionField(cfg.p_motion_block, vec)
        cols = base_cols.copy()
        cols[:, :2] += _field_offsets(base_cols, candidate, h, w, steps) + motion
        # Kept when it predicts the frame better by 0.1 dB than global motion alone.
        if self._prediction_mse(cols, frame) < still * 10 ** (-0.01):
          field, prev_cols = candidate, cols
    self.field = field
    start = qz.dequantize(qz.clip_symbols(_from_columns(prev_cols), h, w, steps), h, w, steps)
    fit_steps, tune_steps = cfg.p_step_split
    if n:
      fitted = self._fit_p(frame, start, fit_steps)
    else:
      fitted = Gaussians(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                         np.zeros((0, c), np.float32))
    old, new = fitted.select(np.arange(n)), fitted.select(np.arange(n, fitted.num_gaussians))
    lat = _latent_columns(old, h, w, steps)  # the fitted Gaussians, in quantiser steps
    diff = lat - prev_cols
    moved = np.hypot(diff[:, 0], diff[:, 1]) * steps.pos > cfg.p_move_limit
    energy = contributions(old) if n else np.zeros(0)
    faded = energy < 1e-3 * (np.median(energy) if n else 0.0)
    # Gaussians that left the picture (a pan) are retired.
    means = np.asarray(old.means, np.float64)
    reach = 3.0 * np.abs(np.asarray(old.chol, np.float64)).max(1) if n else np.zeros(0)
    outside = ((means[:, 0] + reach < 0) | (means[:, 0] - reach > w) |
               (means[:, 1] + reach < 0) | (means[:, 1] - reach > h)) if n else np.zeros(0, bool)
    gone = faded | outside
    # A moved Gaussian (relocated by density control) is removed and added again.
    relocated = moved & ~gone
    # How much each Gaussian's change matters: its energy times the squared
    # change in quantiser steps (a rough distortion saving per Gaussian).
    score = energy * np.sum(np.minimum(diff ** 2, 1e4), 1) if n else np.zeros(0)
    rank = np.argsort(-score, kind="stable")
    if cfg.p_level is not None:
      levels = [cfg.p_level]
    elif cfg.bpp is None:
      levels = [_quality_level(cfg.quality or 50.0)]
    else:
      levels = list(range(len(P_LEVELS)))
    target = None
    if cfg.bpp is not None:
      target = (self.gop_end * self.frame_bytes() - self.spent) / max(self.gop_left, 1)
    plan = _PFrame(frame, old, new, lat, prev_cols, rank, gone, relocated, motion, field, steps,
                   cfg, tune_steps)
    # The coarsest level whose untuned frame fits is the first guess; the
    # quantisation-aware tuning then runs at it (and at coarser levels while
    # the tuned frame is over the budget).
    k = 0
    if target is not None:
      while k < len(levels) - 1 and len(plan.code(levels[k], tune=False)) > target:
        k += 1
    while True:
      best = plan.code(levels[k], tune=True)
      if target is None or len(best) <= target or k == len(levels) - 1:
        break
      k += 1
    # The decoder's state, computed as the decoder computes it (closed loop).
    self.state = _read_p(best, st, c)
    return best


def _peak_offset(lo, mid, hi):
  """Where a parabola through a maximum ``mid`` and its neighbours peaks, in [-0.5, 0.5].

  Elementwise; 0 where the three values do not bend down (no peak).
  """
  lo, mid, hi = (np.asarray(v) for v in (lo, mid, hi))
  den = lo - 2 * mid + hi
  return np.where(den < 0, np.clip(0.5 * (lo - hi) / np.where(den < 0, den, -1), -0.5, 0.5), 0.0)


def block_motion(previous: np.ndarray, current: np.ndarray, block: int, search: int,
                 center: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """Motion ``[ceil(H / block), ceil(W / block), 2]`` (x, y pixels) of each block.

  For each ``block``-pixel block of ``previous``, the shift ``v`` with
  ``current(p + v) ≈ previous(p)`` of least mean absolute difference (channel
  means), over whole-pixel shifts within ``search`` pixels of both zero and
  ``center`` (the global motion, rounded; of ``center`` alone when it is
  more than ``2 · search`` pixels away), refined to a fraction of a pixel
  by a parabola through the best shift and its neighbours on each axis. A
  small penalty per pixel away from ``center`` keeps flat blocks, where every
  shift matches, on the global motion.
  """
  a = np.asarray(previous, np.float32).mean(-1)
  b = np.asarray(current, np.float32).mean(-1)
  hh, ww = a.shape
  gh, gw = _field_shape(hh, ww, block)
  cx, cy = int(round(center[0])), int(round(center[1]))
  # One box holding both windows while the pan is small; around the pan alone
  # when it is large (the search grows with the box's area).
  both = max(abs(cx), abs(cy)) <= 2 * search
  xs = np.arange(min(0, cx) - search, max(0, cx) + search + 1) if both else \
      np.arange(cx - search, cx + search + 1)
  ys = np.arange(min(0, cy) - search, max(0, cy) + search + 1) if both else \
      np.arange(cy - search, cy + search + 1)
  pad = int(max(np.abs(xs).max(), np.abs(ys).max()))
  bp = np.pad(b, pad, mode="edge")
  ph, pw = gh * block - hh, gw * block - ww
  count = np.pad(np.ones_like(a), ((0, ph), (0, pw))).reshape(gh, block, gw, block).sum((1, 3))
  costs = np.empty((len(ys), len(xs), gh, gw), np.float32)
  for i, dy in enumerate(ys):
    for j, dx in enumerate(xs):
      shifted = bp[pad + dy:pad + dy + hh, pad + dx:pad + dx + ww]
      diff = np.pad(np.abs(a - shifted), ((0, ph), (0, pw)))
      costs[i, j] = diff.reshape(gh, block, gw, block).sum((1, 3)) / count
  penalty = 2e-3 * (np.abs(xs - cx)[None, :] + np.abs(ys - cy)[:, None])
  flat = (costs + penalty[:, :, None, None]).reshape(-1, gh, gw)
  best = np.argmin(flat, 0)  # the first of equal costs
  iy, ix = np.divmod(best, len(xs))
  rows, cols = np.indices((gh, gw))

  # The least cost is the greatest negated cost.
  fx = np.zeros((gh, gw))
  inner = (ix > 0) & (ix < len(xs) - 1)
  fx[inner] = _peak_offset(-costs[iy, np.maximum(ix - 1, 0), rows, cols],
                           -costs[iy, ix, rows, cols],
                           -costs[iy, np.minimum(ix + 1, len(xs) - 1), rows, cols])[inner]
  fy = np.zeros((gh, gw))
  inner = (iy > 0) & (iy < len(ys) - 1)
  fy[inner] = _peak_offset(-costs[np.maximum(iy - 1, 0), ix, rows, cols],
                           -costs[iy, ix, rows, cols],
                           -costs[np.minimum(iy + 1, len(ys) - 1), ix, rows, cols])[inner]
  return np.stack([xs[ix] + fx, ys[iy] + fy], -1)


def _latent_columns(g: Gaussians, h: int, w: int, steps: qz.QuantSteps) -> np.ndarray:
  """``[N, 5 + C]`` continuous latents of ``g`` in quantiser steps (``_columns``' order)."""
  if g.num_gaussians == 0:
    return np.zeros((0, 5 + g.channels))
  pos, logs, shear, col = qz._latents(tuple(np.asarray(a, np.float64) for a in g), h, w, steps,
                                      np)
  return np.concatenate([pos, logs[:, :1], shear[:, None], logs[:, 1:], col], 1)


# Columns of each Gaussians field in ``_columns``.
_FIELD_COLUMNS = {"means": slice(0, 2), "chol": slice(2, 5), "colors": slice(5, None)}


class _PFrame:
  """The choices of one P-frame at a rate level, with quantisation-aware tuning.

  Rows of the fit fall in three groups: *kept* previous Gaussians (coded as
  skip or a delta on the level's grid around their previous symbols),
  *removed* ones (left the picture, faded, or relocated by density control),
  and *added* ones (relocated and new, coded as a ``.gjx`` payload on the
  I-frame's grid). A level keeps the share of the Gaussians whose change
  matters most; the rest keep their symbols. ``code`` with ``tune`` then
  refits the Gaussians that may change, with the others held fixed, and
  rounds them in the image codec's sequential order (``P_STAGES``): snap the
  means, tune the Cholesky factors and colours; snap the factors, tune the
  colours; snap the colours. Each stage repairs the rounding of the one
  before. What this buys over rounding the fit: ``benchmarks/results/
  video_ablation.md``.
  """

  def __init__(self, frame, old, new, lat, prev_cols, rank, gone, relocated, motion, field,
               steps, cfg, tune_steps):
    self.frame, self.old, self.new, self.lat = frame, old, new, lat
    self.prev_cols, self.rank, self.gone, self.relocated = prev_cols, rank, gone, relocated
    self.motion, self.field, self.steps = motion, field, steps
    self.cfg, self.tune_steps = cfg, tune_steps
    self.h, self.w, self.c = frame.shape
    self.n = prev_cols.shape[0]

  def _deltas(self, cols: np.ndarray, mult: int, keep: np.ndarray) -> np.ndarray:
    """Deadzone-rounded deltas (in steps of ``mult``) of latent columns; 0 outside ``keep``."""
    return _delta_symbols(cols, self.prev_cols, mult, self.cfg.p_deadzone, keep)

  def code(self, level: int, *, tune: bool) -> bytes:
    """The P-frame payload at ``P_LEVELS[level]``; ``tune``: with quantisation-aware tuning."""
    h, w, n, steps = self.h, self.w, self.n, self.steps
    m, keep_fraction = P_LEVELS[level]
    mult = _multipliers(m)
    keep = np.zeros(n, bool)
    keep[self.rank[:int(math.ceil(keep_fraction * n))]] = True
    cols = self.lat
    too_big = (np.abs(self._deltas(cols, m, np.ones(n, bool))) > MAX_DELTA).any(1) & ~self.gone
    readd = self.relocated | too_big
    stay = ~(self.gone | readd)
    keep &= stay
    added = Gaussians(*(np.concatenate([a[readd], b]) for a, b in zip(self.old, self.new)))
    if tune and self.tune_steps and (keep.any() or added.num_gaussians):
      cols, added = self._tune(cols, added, m, keep, stay)
    d = self._deltas(cols, m, keep)
    modes = np.where(stay, np.where((d != 0).any(1), MODE_DELTA, MODE_SKIP), MODE_REMOVE)
    payload = encode_gaussians(added, h, w, steps=steps) if added.num_gaussians else b""
    return _write_p(n, mult, self.motion, modes, d[modes == MODE_DELTA], payload, self.field)

  def _tune(self, cols, added, m, keep, stay):
    """Sequential quantisation-aware tuning of the kept and added Gaussians.

    The staying Gaussians without a delta keep their previous symbols
    exactly: they are rendered once as a fixed background, and the tuned
    Gaussians fit what the background leaves (the renderer adds Gaussians,
    so this is the loss of the whole picture).
    """
    from gaussjax.codec._codec import _sequential_stages, _snap, _train
    h, w, steps, cfg = self.h, self.w, self.steps, self.cfg
    rows = np.flatnonzero(keep)  # keep ⊆ stay
    prev = self.prev_cols[rows]
    cols = cols[rows]
    k = rows.size
    image = np.asarray(self.frame, np.float32)
    still = stay & ~keep
    if still.any():
      kept = qz.clip_symbols(_from_columns(self.prev_cols[still]), h, w, steps)
      background = qz.dequantize(kept, h, w, steps)
      image = image - np.asarray(render_safe(background, h, w, backend=cfg.backend), np.float32)

    def decoded(cols, fields):
      """The kept rows with ``fields`` rounded as the decoder will hold them."""
      d = _delta_symbols(cols, prev, m, cfg.p_deadzone)
      sym = qz.clip_symbols(_from_columns((prev + m * d).astype(np.int64)), h, w, steps)
      snapped = qz.dequantize(sym, h, w, steps)
      free = qz._reconstruct(*_split_latents(cols), h, w, steps, np)
      out = Gaussians(*(np.asarray(a, np.float32) for a in free))
      return out._replace(**{f: getattr(snapped, f) for f in fields})

    g = Gaussians(*(np.concatenate([a, b]) for a, b in zip(decoded(cols, ()), added)))
    if g.num_gaussians == 0:
      return np.array(self.prev_cols, np.float64), added
    lr = CodecConfig().learning_rate
    for frozen, rel_lr, iters in _sequential_stages(self.tune_steps, P_STAGES):
      snapped = decoded(_latent_columns(g.select(np.arange(k)), h, w, steps), frozen)
      new_g = _snap(g.select(np.arange(k, g.num_gaussians)), h, w, steps, frozen)
      g = Gaussians(*(np.concatenate([a, b]) for a, b in zip(snapped, new_g)))
      if iters:
        g = _train(g, image, iterations=iters, learning_rate=rel_lr * lr, qsteps=None,
                   backend=cfg.backend, frozen=frozen)
        g = Gaussians(*(np.asarray(x, np.float32) for x in g))
    out = np.array(self.prev_cols, np.float64)
    out[rows] = _latent_columns(g.select(np.arange(k)), h, w, steps)
    return out, g.select(np.arange(k, g.num_gaussians))


# Stages of a P-frame's tuning: (fields rounded and frozen, learning rate
# relative to CodecConfig.learning_rate, share of the tuning steps). The first
# refits the kept Gaussians in float with the others fixed, then the image
# codec's sequential stages (``_codec._SEQUENTIAL``) round them.
P_STAGES = (((), 0.1, 1 / 3), (("means",), 0.1, 1 / 3), (("means", "chol"), 0.2, 1 / 3))


def _delta_symbols(cols: np.ndarray, prev: np.ndarray, mult: int, deadzone: float,
                   keep: np.ndarray | None = None) -> np.ndarray:
  """Deltas of latent columns against ``prev`` in steps of ``mult``, rounded with a deadzone.

  A delta under ``0.5 + deadzone`` steps rounds to 0 (the Gaussian is
  skipped); rows outside ``keep`` are 0.
  """
  x = (cols - prev) / mult
  d = (np.sign(x) * np.maximum(np.floor(np.abs(x) + 0.5 - deadzone), 0)).astype(np.int64)
  if keep is not None:
    d[~keep] = 0
  return d


def _split_latents(cols: np.ndarray):
  """``_columns``' order back to ``_latents``' ``(pos, logs, shear, col)``."""
  return cols[:, :2], cols[:, [2, 4]], cols[:, 3], cols[:, 5:]


def global_motion(previous: np.ndarray, current: np.ndarray) -> tuple[float, float]:
  """Global translation ``(dx, dy)`` in pixels with ``current(p) ≈ previous(p - (dx, dy))``.

  Phase correlation of the channel means (windowed), refined to a fraction
  of a pixel by a parabola through the peak and its neighbours. Returns
  ``(0, 0)`` when the peak is weak (no single motion).
  """
  a = np.asarray(current, np.float64).mean(-1)
  b = np.asarray(previous, np.float64).mean(-1)
  hh, ww = a.shape
  if hh < 8 or ww < 8:
    return 0.0, 0.0
  win = np.outer(np.hanning(hh), np.hanning(ww))
  fa, fb = np.fft.fft2((a - a.mean()) * win), np.fft.fft2((b - b.mean()) * win)
  cross = fa * np.conj(fb)
  r = np.fft.ifft2(cross / (np.abs(cross) + 1e-12)).real
  iy, ix = np.unravel_index(np.argmax(r), r.shape)
  peak = r[iy, ix]
  if peak < 5.0 * np.sqrt(np.mean(r ** 2)):
    return 0.0, 0.0

  fx = float(_peak_offset(r[iy, (ix - 1) % ww], peak, r[iy, (ix + 1) % ww]))
  fy = float(_peak_offset(r[(iy - 1) % hh, ix], peak, r[(iy + 1) % hh, ix]))
  dx = (ix if ix <= ww // 2 else ix - ww) + fx
  dy = (iy if iy <= hh // 2 else iy - hh) + fy
  return float(dx), float(dy)


def _iter_frames(frames) -> tuple[Iterator[np.ndarray], int | None]:
  """An iterator over the frames and their count (None when unknown)."""
  if hasattr(frames, "shape") and hasattr(frames, "ndim"):  # a NumPy or JAX array
    arr = np.asarray(frames)
    if arr.ndim not in (3, 4):
      raise ValueError(f"frames must have shape [T, H, W, C], got {arr.shape}")
    if arr.ndim == 3:  # [T, H, W] grey
      arr = arr[..., None]
    if arr.shape[0] == 0:
      raise ValueError("the video has no frames")
    return iter(arr), arr.shape[0]
  count = getattr(frames, "num_frames", None)
  if isinstance(frames, (list, tuple)):  # all in memory: check the shapes before any work
    shapes = {np.shape(f) for f in frames}
    if len(shapes) > 1:
      raise ValueError(f"frames have different shapes: {sorted(shapes)}; each frame differs "
                       "from the first frame's shape")
    count = len(frames)
  elif count is None and hasattr(frames, "__len__"):
    count = len(frames)
  return iter(frames), count


def encode_video(frames, config: VideoConfig = VideoConfig(), *, fps: float | None = None,
                 callback: Callable[[dict], None] | None = None) -> bytes:
  """Codes a clip into a ``.gjv`` file: I-frames and P-frames (FORMAT.md).

  Every ``config.gop`` frames (and at a scene change) an I-frame is coded by
  ``gaussjax.encode``; the frames between are P-frames: the previous
  frame's *decoded* Gaussians are moved by the global motion and a block
  motion field, fitted to the new frame (density control may relocate and
  add Gaussians) and tuned for the quantisers, ``config.p_fit_steps`` steps
  in all, and only what changed is coded: per Gaussian skip, a quantised
  delta or removal, plus new Gaussians. Rate-distortion against intra-only
  coding, x264 and JPEG 2000: ``benchmarks/results/video.md``; what each
  piece buys: ``video_ablation.md``.

  Args:
    frames: ``[T, H, W, C]`` float in [0, 1] (or uint8), or any iterable of
      ``[H, W, C]`` frames (e.g. ``open_video(path)``), read one at a time.
    config: ``VideoConfig``.
    fps: frame rate stored in the file (None: unknown).
    callback: called after each frame with a dict (``frame``, ``type``,
      ``bytes``, ``psnr`` of the reconstruction, ``gaussians``,
      ``scene_cut``, ``motion_field``: a P-frame that carries one).

  Returns:
    The file's bytes.

  Raises:
    ValueError: no frames, frames of different shapes, or a bad config.
  """
  if not isinstance(config, VideoConfig):
    raise TypeError(f"config must be a VideoConfig, got {type(config).__name__}")
  it, count = _iter_frames(frames)
  encoder, shape, segments = None, None, []
  for index, frame in enumerate(it):
    frame = _as_frame(frame, shape)
    if encoder is None:
      shape = frame.shape
      encoder = _Encoder(config, shape, count)
    if index >= MAX_FRAMES:
      raise ValueError(f"more than MAX_FRAMES={MAX_FRAMES} frames")
    kind, payload, info = encoder.encode(index, frame)
    segments.append(_segment_bytes(kind, payload))
    if callback is not None:
      callback(info)
  if encoder is None:
    raise ValueError("the video has no frames")
  h, w, c = shape
  header = VideoHeader(VERSION, c, w, h, len(segments), fps, min(config.gop, 65535))
  return _header_bytes(header) + b"".join(segments)


# ---------------------------------------------------------------------------
# Decoding


def _apply(kind: int, payload: bytes, state: _State | None, header: VideoHeader) -> _State:
  h, w, c = header.height, header.width, header.channels
  if kind == SEGMENT_I:
    return _gjx_state(payload, None, h, w, c)
  return _read_p(payload, state, c, header.version)


def iter_video_frames(data: bytes, *, start: int = 0, stop: int | None = None,
                      height: int | None = None, width: int | None = None,
                      backend: str = "auto") -> Iterator[np.ndarray]:
  """Decodes frames ``start .. stop - 1`` one at a time (from the I-frame at or before ``start``).

  Args:
    data: the ``.gjv`` file's bytes.
    start: first frame to yield.
    stop: one past the last frame (default: the end).
    height: output rows (default: the encoded height; keeps the aspect ratio
      when only ``width`` is given).
    width: output columns (likewise).
    backend: renderer, as in ``gaussjax.render``.

  Yields:
    float32 ``[height, width, C]`` frames in [0, 1].

  Raises:
    DecodeError: the bytes are not a valid ``.gjv`` file (raised before the
      first frame is yielded: every checksum is verified up front).
    IndexError: ``start`` or ``stop`` outside the clip.
  """
  header, segments = _parse(data)
  t = header.num_frames
  stop = t if stop is None else stop
  if not (0 <= start <= stop <= t):
    raise IndexError(f"frames [{start}, {stop}) are outside the clip of {t} frames")
  oh, ow = _output_size((header.height, header.width), height, width)
  return _decode_range(header, segments, start, stop, oh, ow, backend)


def _states(header, segments, start, stop) -> Iterator[tuple[int, _State]]:
  """``(k, decoder state)`` for frames ``start .. stop - 1``, from the I-frame before ``start``."""
  first = start
  while first > 0 and segments[first][0] != SEGMENT_I:
    first -= 1
  state = None
  for k in range(first, stop):
    kind, payload = segments[k]
    state = _apply(kind, payload, state, header)
    if k >= start:
      yield k, state


def decode_video_gaussians(data: bytes) -> Iterator[Gaussians]:
  """The decoded Gaussians of every frame, without rendering (for tools and fuzzing).

  Raises:
    DecodeError: the bytes are not a valid ``.gjv`` file.
  """
  header, segments = _parse(data)
  for _, state in _states(header, segments, 0, header.num_frames):
    yield state.gaussians()


def _decode_range(header, segments, start, stop, oh, ow, backend):
  for _, state in _states(header, segments, start, stop):
    g = state.gaussians()
    if g.num_gaussians == 0:
      yield np.zeros((oh, ow, header.channels), np.float32)
      continue
    image = render_safe(g, oh, ow, backend=backend, source_size=(header.height, header.width))
    yield np.clip(np.asarray(image, np.float32), 0.0, 1.0)


def decode_video(data: bytes, *, height: int | None = None, width: int | None = None,
                 backend: str = "auto") -> np.ndarray:
  """Decodes every frame of a ``.gjv`` file: float32 ``[T, H, W, C]`` in [0, 1].

  ``iter_video_frames`` does the same one frame at a time.

  Raises:
    DecodeError: the bytes are not a valid ``.gjv`` file.
  """
  return np.stack(list(iter_video_frames(data, height=height, width=width, backend=backend)))


def decode_video_frame(data: bytes, index: int, *, height: int | None = None,
                       width: int | None = None, backend: str = "auto") -> np.ndarray:
  """Frame ``index`` alone (decodes its group from the I-frame): ``[H, W, C]``."""
  header, _ = _parse(data)
  if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
    raise TypeError(f"index must be an int, got {type(index).__name__}")
  if index < 0:
    index += header.num_frames
  return next(iter_video_frames(data, start=index, stop=index + 1, height=height, width=width,
                                backend=backend))


def video_info(data: bytes) -> dict:
  """Header fields and per-frame segment types and sizes of a ``.gjv`` file."""
  header, segments = _parse(data)
  return {
      "format": "gjv", "version": header.version, "width": header.width,
      "height": header.height, "channels": header.channels, "num_frames": header.num_frames,
      "fps": header.fps, "gop": header.gop, "bytes": len(data),
      "bpp_per_frame": _metrics.bpp(len(data), header.height, header.width)
                       / max(header.num_frames, 1),
      "frames": [{"type": SEGMENT_NAMES[k], "bytes": len(p)} for k, p in segments],
  }
