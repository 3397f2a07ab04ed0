"""Progressive files: coarse-to-fine levels of Gaussians (format version 2, FORMAT.md).

A progressive file holds L levels. Level 0 is a small set of large
Gaussians fitted to the image; each next level adds Gaussians fitted to the
error of the decoded levels before it. Any prefix of the file that ends at a
level boundary is a picture: the first k + 1 levels rendered together, and
all levels together are the full picture.

Call chain::

  gaussjax.encode(image, CodecConfig(levels=L))   → encode_progressive
    ├─ level_shares                 geometric split of the bytes (or Gaussians)
    ├─ _fit_level                   level 0: SLIC + gaussjax.fit to the image;
    │                               level k: error-sampled init + gaussjax.fit to
    │                               the residual of the decoded levels before it
    │                               (those stay frozen: they are already written)
    ├─ _finetune_level              sequential quantisation-aware fine-tuning
    │                               (gaussjax.fit with frozen fields)
    └─ _code_level                  encode_gaussians at the level's byte budget
  encode_levels(levels, h, w)       frame level bodies into a version-2 file
  decode_levels(data, level=, partial=)   walk and verify segments, decode levels
  level_table(data)                 segment offsets, sizes and counts (``info``)

Earlier levels are frozen while a later one is fitted: a level is final once
it is coded, so the picture of every prefix is the one the encoder measured.
Measurements are in ``benchmarks/results/progressive_cpu.md``.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import jax
import numpy as np

from gaussjax.codec import _codec
from gaussjax.codec import _quantize as qz
from gaussjax.codec._bitstream import DecodeError, Writer
from gaussjax.core._gaussians import Gaussians, validate
from gaussjax.core._metrics import bpp, bytes_for_bpp
from gaussjax.fitting._density import sample_from_error
from gaussjax.fitting._fit import FitConfig, fit, init_for_fit

VERSION = 2
MAX_LEVELS = 16
# Each level gets LEVEL_RATIO times the bytes (or Gaussians) of the one before.
LEVEL_RATIO = 2.0
# magic, version, channels, width, height, number of levels
HEADER_BYTES = 4 + 1 + 1 + 2 + 2 + 1
# A level body is a version-1 file without its first 10 bytes (magic, version,
# channels, width, height) and its 4-byte checksum.
_V1_PREFIX = 10
_CRC = 4
# Quantisation-aware fine-tuning: learning rates relative to FitConfig's
# defaults (the codec's own fine-tuning runs at about this fraction).
_QAT_LR = 0.03


# ---------------------------------------------------------------------------
# Container


def level_shares(levels: int, ratio: float = LEVEL_RATIO) -> np.ndarray:
  """Fractions of the bytes per level, ``ratio^k`` normalised (they sum to 1)."""
  if not 1 <= levels <= MAX_LEVELS:
    raise ValueError(f"levels={levels} must be in [1, {MAX_LEVELS}]")
  w = ratio ** np.arange(levels, dtype=np.float64)
  return w / w.sum()


def _varint_len(v: int) -> int:
  return max(1, (int(v).bit_length() + 6) // 7)


def level_body(gaussians: Gaussians, height: int, width: int,
               steps: qz.QuantSteps | None = None) -> bytes:
  """One level's body: its version-1 file without the first 10 bytes and the checksum."""
  return _codec.encode_gaussians(gaussians, height, width, steps=steps)[_V1_PREFIX:-_CRC]


def segment_size(body_bytes: int) -> int:
  """Bytes of a level's segment (length, body, checksum) for a body of ``body_bytes``."""
  return _varint_len(body_bytes) + body_bytes + _CRC


def frame(bodies: list[bytes], channels: int, height: int, width: int) -> bytes:
  """A version-2 file from level bodies (``level_body``), in level order."""
  if not 1 <= len(bodies) <= MAX_LEVELS:
    raise ValueError(f"{len(bodies)} levels must be in [1, {MAX_LEVELS}]")
  w = Writer()
  w.raw(_codec.MAGIC)
  w.u8(VERSION)
  w.u8(channels)
  w.u16(width)
  w.u16(height)
  w.u8(len(bodies))
  for body in bodies:
    w.varint(len(body))
    w.raw(body)
    w.u32(zlib.crc32(bytes(w.buf)))
  return bytes(w.buf)


def encode_levels(levels, height: int, width: int, *, steps=None) -> bytes:
  """Codes a list of ``Gaussians``, coarse to fine, into a progressive file.

  Args:
    levels: 1..``MAX_LEVELS`` ``Gaussians`` with the same channel count, in
      the pixel coordinates of a ``height × width`` image.
    height: image rows.
    width: image columns.
    steps: ``QuantSteps`` for every level, a list of one per level, or None
      (``default_steps``).

  Returns:
    The file's bytes (FORMAT.md, version 2).

  Examples:
    >>> import jax, gaussjax
    >>> from gaussjax.codec._progressive import encode_levels
    >>> a = gaussjax.init_random(jax.random.key(0), 10, 32, 48, 3)
    >>> b = gaussjax.init_random(jax.random.key(1), 40, 32, 48, 3)
    >>> data = encode_levels([a, b], 32, 48)
    >>> gaussjax.decode(data, level=0).shape, data[4]
    ((32, 48, 3), 2)
  """
  levels = [validate(g) for g in levels]
  if not 1 <= len(levels) <= MAX_LEVELS:
    raise ValueError(f"{len(levels)} levels must be in [1, {MAX_LEVELS}]")
  channels = {g.channels for g in levels}
  if len(channels) != 1:
    raise ValueError(f"levels have different channel counts {sorted(channels)}")
  total = sum(g.num_gaussians for g in levels)
  if total > _codec.MAX_GAUSSIANS:
    raise ValueError(f"{total} Gaussians in all is over MAX_GAUSSIANS={_codec.MAX_GAUSSIANS}")
  if steps is None or isinstance(steps, qz.QuantSteps):
    steps = [steps] * len(levels)
  if len(steps) != len(levels):
    raise ValueError(f"{len(steps)} steps for {len(levels)} levels")
  bodies = [level_body(g, height, width, s) for g, s in zip(levels, steps)]
  return frame(bodies, channels.pop(), height, width)


@dataclasses.dataclass(frozen=True)
class _Segment:
  offset: int  # first byte of the segment (its length field)
  body_start: int
  body_end: int
  end: int  # one past its checksum


def _walk(data: bytes, partial: bool):
  """Header fields and the complete, verified segments of a version-2 file.

  Returns ``(channels, height, width, num_levels, segments)``. A file that
  ends inside a level is a ``DecodeError`` unless ``partial`` (then the
  levels before it are returned; at least one must be complete). A checksum
  that does not match is always an error.
  """
  if len(data) < HEADER_BYTES:
    raise DecodeError(f"truncated: {len(data)} bytes is shorter than the progressive header "
                      f"({HEADER_BYTES} bytes)")
  c, width, height, num_levels = data[5], int.from_bytes(data[6:8], "little"), \
      int.from_bytes(data[8:10], "little"), data[10]
  if not 1 <= c <= _codec.MAX_CHANNELS:
    raise DecodeError(f"channels={c} must be in [1, {_codec.MAX_CHANNELS}]")
  if width < 1 or height < 1:
    raise DecodeError(f"image size {width}x{height} must be positive")
  if width * height > _codec.constants.MAX_PIXELS:
    raise DecodeError(f"image size {width}x{height} is over "
                      f"MAX_PIXELS={_codec.constants.MAX_PIXELS}")
  if not 1 <= num_levels <= MAX_LEVELS:
    raise DecodeError(f"number of levels {num_levels} must be in [1, {MAX_LEVELS}]")
  min_body = 1 + 1 + 2 * (3 + c)  # N, colour mode, steps
  segments = []
  pos, crc = HEADER_BYTES, zlib.crc32(data[:HEADER_BYTES])
  for k in range(num_levels):
    start = pos
    length, shift = 0, 0
    for i in range(5):  # LEB128 body length, at most 5 bytes
      if pos >= len(data):
        length = None
        break
      b = data[pos]
      pos += 1
      length |= (b & 0x7F) << shift
      shift += 7
      if not b & 0x80:
        break
    else:
      raise DecodeError(f"level {k} length: varint longer than 5 bytes at offset {start}")
    if length is not None and not min_body <= length <= _codec.MAX_FILE_BYTES:
      raise DecodeError(f"level {k} length {length} at offset {start} is outside "
                        f"[{min_body}, {_codec.MAX_FILE_BYTES}]")
    if length is None or pos + length + _CRC > len(data):
      if not partial:
        raise DecodeError(f"truncated: the file ends inside level {k} of {num_levels} "
                          f"(offset {start}); decode with partial=True for the levels before it")
      if not segments:
        raise DecodeError(f"truncated: the file ends inside level 0 (offset {start}); "
                          "no level is complete")
      break
    body_end = pos + length
    crc = zlib.crc32(data[start:body_end], crc)
    stored = int.from_bytes(data[body_end:body_end + _CRC], "little")
    if stored != crc:
      raise DecodeError(f"level {k} checksum mismatch at offset {body_end}: stored "
                        f"{stored:#010x}, computed {crc:#010x} (the file is corrupt)")
    crc = zlib.crc32(data[body_end:body_end + _CRC], crc)
    pos = body_end + _CRC
    segments.append(_Segment(start, body_end - length, body_end, pos))
  if len(segments) == num_levels and pos != len(data):
    raise DecodeError(f"{len(data) - pos} unexpected bytes after the last level "
                      f"(offset {pos})")
  return c, height, width, num_levels, segments


def _check_level(level, num_levels: int | None = None):
  if level is None:
    return
  if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
    raise ValueError(f"level={level!r} must be a non-negative int or None")
  if num_levels is not None and level >= num_levels:
    raise ValueError(f"level={level} but the file has {num_levels} level(s) "
                     f"(0..{num_levels - 1})")


def _level_header(data: bytes, seg: _Segment, c: int, height: int, width: int,
                  max_gaussians: int):
  r = _codec.Reader(data, end=seg.body_end)
  r.pos = seg.body_start
  return _codec._read_body_header(r, VERSION, c, width, height, max_gaussians), r


def decode_levels(data: bytes, *, level: int | None = None,
                  partial: bool = False) -> tuple[list[Gaussians], tuple[int, int], int]:
  """Decodes the levels of a version-2 file.

  Args:
    data: the file's bytes.
    level: decode levels 0..``level`` (None: all).
    partial: accept a file that ends inside a level (a truncated download)
      and decode the complete levels before it.

  Returns:
    ``(levels, (height, width), num_levels)``: float32 numpy ``Gaussians``
    per decoded level, and the number of levels the file declares.

  Raises:
    DecodeError: malformed, corrupt, or truncated without ``partial``.
    ValueError: ``level`` is not a level of the file.
  """
  _check_level(level)
  data, version = _codec._check_container(data)
  if version != VERSION:
    raise DecodeError(f"format version {version} is not a progressive file")
  c, height, width, num_levels, segments = _walk(data, partial)
  _check_level(level, num_levels)
  upto = len(segments) if level is None else min(level + 1, len(segments))
  out, total = [], 0
  for seg in segments[:upto]:
    header, r = _level_header(data, seg, c, height, width, _codec.MAX_GAUSSIANS - total)
    out.append(_codec._decode_v1(header, r))
    total += header.num_gaussians
  return out, (height, width), num_levels


def level_table(data: bytes) -> dict:
  """``info`` of a version-2 file: header fields and one entry per level."""
  data, _ = _codec._check_container(data)
  c, height, width, num_levels, segments = _walk(data, partial=False)
  levels, total = [], 0
  for k, seg in enumerate(segments):
    header, _ = _level_header(data, seg, c, height, width, _codec.MAX_GAUSSIANS - total)
    total += header.num_gaussians
    levels.append({
        "level": k, "offset": seg.offset, "bytes": seg.end - seg.offset, "end": seg.end,
        "num_gaussians": header.num_gaussians, "steps": dataclasses.asdict(header.steps),
        "prefix_bpp": bpp(seg.end, height, width)})
  return {
      "version": VERSION, "width": width, "height": height, "channels": c,
      "num_gaussians": total,
      "color_mode": "ycocg" if c == 3 else "direct",
      "bytes": len(data), "bpp": bpp(len(data), height, width),
      "num_levels": num_levels, "levels": levels,
  }


# ---------------------------------------------------------------------------
# Encoder


def _render(g: Gaussians, height: int, width: int, backend: str) -> np.ndarray:
  if g.num_gaussians == 0:
    return np.zeros((height, width, g.channels), np.float32)
  return np.asarray(_codec.render_safe(g, height, width, backend=backend), np.float32)


# How CodecConfig.fit_steps / qat_steps apply to the levels: "each" level runs
# them all (every Gaussian gets as many optimiser steps as in a single-level
# encode, and as each level renders only its own Gaussians the render work in
# all is about that of a single-level fit), or they are "split" evenly over the
# levels (as many steps in all). benchmarks/results/progressive_cpu.md compares.
LEVEL_STEPS = "each"


def _per_level(steps: int, levels: int) -> int:
  """Optimiser steps of one level (see ``LEVEL_STEPS``)."""
  if LEVEL_STEPS == "split":
    return -(-steps // levels)
  return steps


def _fit_config(config, n: int | None, num_steps: int, densify: bool, **kw):
  extra = {} if densify else {"densify_every": 0}
  return FitConfig(steps=max(num_steps, 1), backend=config.backend, log_every=max(num_steps, 1),
                   replan_every=50, num_gaussians=n, **extra, **kw)


def _from_error(rng, residual: np.ndarray, n: int) -> Gaussians:
  """``n`` Gaussians placed where ``residual`` is largest, half the mean spacing wide."""
  h, w = residual.shape[:2]
  return sample_from_error(rng, residual, n, 0.5 * math.sqrt(h * w / n))


def _fit_level(target: np.ndarray, n: int, first: bool, config, rng, budget, steps):
  """Float fit of one level to ``target`` (the image, or the residual of the levels before).

  Level 0 starts as ``gaussjax.fit_image`` does (``init_for_fit``) and is
  grown to N by ``gaussjax.fit``'s density control, as the single-level codec fits. Later levels start from Gaussians sampled
  where the residual is largest and are fitted without density events (those
  measure the error of a render clipped to [0, 1], which a signed residual
  is not). With a byte budget the fit runs in two halves: N is moved
  between them by the size of the level's real body.
  """
  fit_steps = _per_level(config.fit_steps, config.levels)
  h, w = target.shape[:2]
  n = int(min(max(n, 1), h * w))
  key = jax.random.key(config.seed)
  if first:
    g = init_for_fit(target, n, _fit_config(config, n, 1, True), key=key)
  else:
    g = _from_error(rng, target, n)
  if fit_steps == 0:
    return g
  half = (fit_steps + 1) // 2
  g, _ = fit(target, g, _fit_config(config, n, half, first))
  rest = fit_steps - half
  if budget is not None:
    size = segment_size(len(level_body(g, h, w, steps)))
    n1 = int(min(max(round(n * budget / size), 1), h * w))
    if n1 > n and not first:
      residual = target - _render(g, h, w, config.backend)
      extra = _from_error(rng, residual, n1 - n)
      g = Gaussians(*(np.concatenate([np.asarray(a, np.float32), b]) for a, b in zip(g, extra)))
    n = n1
  if rest:
    g, _ = fit(target, g, _fit_config(config, n, rest, first))
  return g


def _finetune_level(g: Gaussians, target: np.ndarray, steps: qz.QuantSteps, config) -> Gaussians:
  """Sequential quantisation-aware fine-tuning, as the codec's default.

  Snap the means to the decoder's grid and fine-tune factors and colours,
  then snap the factors too and fine-tune the colours (``gaussjax.fit``
  with a zero learning rate on the frozen fields); ``encode_gaussians``
  rounds the colours last.
  """
  num = _per_level(config.qat_steps, config.levels)
  if num == 0 or g.num_gaussians == 0:
    return g
  h, w = target.shape[:2]
  d = FitConfig()
  first = num // 2
  for frozen, n, lrs in ((("means",), first, dict(lr_chol=_QAT_LR * d.lr_chol,
                                                  lr_colors=_QAT_LR * d.lr_colors)),
                         (("means", "chol"), num - first, dict(
                             lr_chol=0.0, lr_colors=2 * _QAT_LR * d.lr_colors))):
    g = _codec._snap(g, h, w, steps, frozen)
    if n:
      g, _ = fit(target, g, _fit_config(config, None, n, False, lr_means=0.0, warmup_steps=0,
                                        **lrs))
  return g


def _code_level(g: Gaussians, height: int, width: int, steps: qz.QuantSteps, lo, hi):
  """``(body, decoded Gaussians, fits)``: the level coded into ``[lo, hi]`` segment bytes.

  Prunes the least contributing Gaussians or refines the steps
  (``_codec._fit_size``) when the segment is out of range; ``fits`` is False
  when even the finest steps give a segment below ``lo`` (then the body at
  ``steps`` is returned).
  """
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  fits = True
  if lo is None:
    data = _codec.encode_gaussians(g, height, width, steps=steps)
  else:
    # Segment bytes = file bytes - 10 - 4 + (length varint) + 4.
    def to_file(seg):
      return seg + _V1_PREFIX - _varint_len(max(int(seg), 1))
    data, _, _ = _codec._fit_size(g, height, width, steps, to_file(lo), to_file(hi))
    if data is None:
      fits = False
      data = _codec.encode_gaussians(g, height, width, steps=steps)
  decoded, _ = _codec.decode_single(data)
  return data[_V1_PREFIX:-_CRC], decoded, fits


def encode_progressive(image, config) -> bytes:
  """``gaussjax.encode`` for ``config.levels > 1``: a version-2 file.

  Level k gets ``level_shares(L)[k]`` of the bytes (with ``bpp``; what a
  level leaves unused goes to the later ones, and the last level brings the
  file within ``config.rate_tolerance`` of the target) or of the Gaussians
  of ``quality``. Each level is fitted, fine-tuned and coded against the
  residual of the decoded levels before it.

  Args:
    image: ``[H, W, C]`` float32 array in [0, 1] (checked by the codec).
    config: ``CodecConfig`` with ``levels > 1``.

  Returns:
    The file's bytes.
  """
  image = np.asarray(image, np.float32)
  h, w, c = image.shape
  num_levels = config.levels
  shares = level_shares(num_levels)
  rng = np.random.default_rng(config.seed)
  tol = config.rate_tolerance
  if config.bpp is None:
    n_total, steps = _codec._quality_settings(config.quality or 50.0, h, w, c)
    n_total = config.num_gaussians or n_total
    counts = [max(1, int(round(s * n_total))) for s in shares]
    target = None
  else:
    steps = qz.default_steps(c)
    target = bytes_for_bpp(config.bpp, h, w)
    one = Gaussians(np.zeros((1, 2), np.float32), np.ones((1, 3), np.float32),
                    np.zeros((1, c), np.float32))
    smallest = HEADER_BYTES + num_levels * segment_size(len(level_body(one, h, w, steps)))
    if smallest > target * (1 + tol):
      raise ValueError(f"bpp={config.bpp} ({target:.0f} bytes) is below the smallest "
                       f"{num_levels}-level file for a {h}x{w} image ({smallest} bytes)")
  prefix = np.zeros_like(image)
  bodies, used = [], HEADER_BYTES
  for k in range(num_levels):
    last = k == num_levels - 1
    budget = lo = hi = None
    if target is None:
      n = counts[k]
    else:
      budget = (target - used) * shares[k] / shares[k:].sum()
      if last:  # the whole file within the tolerance
        lo, hi = target * (1 - tol) - used, target * (1 + tol) - used
      else:
        lo, hi = budget * (1 - tol), budget * (1 + tol)
      n = max(1, int(math.ceil(8 * budget / config.bits_per_gaussian)))
    level_target = image if k == 0 else image - prefix
    for attempt in range(3):
      g = _fit_level(level_target, n, k == 0, config, rng, budget, steps)
      g = _finetune_level(g, level_target, steps, config)
      body, decoded, fits = _code_level(g, h, w, steps, lo, hi)
      if fits or not last:
        break
      # The last level is too small even at the finest steps: fit more Gaussians.
      n = int(math.ceil(g.num_gaussians * 1.15 * hi / segment_size(len(body))))
      if n > _codec.MAX_GAUSSIANS:
        break
    if last and target is not None and not fits:
      raise ValueError(f"could not reach bpp={config.bpp} within {tol:.0%} for a {h}x{w} image")
    bodies.append(body)
    used += segment_size(len(body))
    prefix = prefix + _render(decoded, h, w, config.backend)
  return frame(bodies, c, h, w)

