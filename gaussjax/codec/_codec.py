"""The single-level codec (format version 1): Gaussians to bytes and back (FORMAT.md).

The progressive (version 2, ``_progressive``) and tiled (version 3,
``_tiles``) formats build on this module; ``_formats`` holds the public
``encode`` / ``decode`` / ``decode_gaussians`` / ``info`` that dispatch
between the three. Call chain of a single-level file::

  _encode(image, config)                      fit → steps → refit → fine-tune → code
    ├─ _first_fit                             float fit in two halves:
    │    ├─ _fit_float                        SLIC + gaussjax.fit at the first guess of N
    │    │                                    (on the halved image: _coarse, _halve)
    │    ├─ _choose                           choose_steps (RD search) and N for the rate
    │    └─ _refit                            gaussjax.fit again, N moved to its new value
    ├─ _finetune                              quantisation-aware fine-tuning:
    │    ├─ _train → _loop.run(_train_step)   the training loop of gaussjax.fit with
    │    │                                    the codec's step (fake quantisation,
    │    │                                    frozen fields)
    │    ├─ _stage_start → _rd_round_means,   means, then Cholesky factors, onto the grid
    │    │                 _rd_round_chol     by descent (_footprint_descent)
    │    └─ _round_stage → _rd_round_colors   colours onto the grid by descent on MSE + λR
    └─ _code → encode_gaussians               quantise, Morton order, ANS-code, frame;
                                              the rate controller (_encode_rate)
  decode_single(data)                         parse, validate, entropy-decode, dequantise
  info_single(data)                           header fields, no decoding
  render_safe(gaussians, height, width)       the decoder's render (at any size)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gaussjax import constants
from gaussjax.codec import _quantize as qz
from gaussjax.codec import _rate
from gaussjax.codec._bitstream import (
  MAX_ALPHABET,
  AlphabetError,
  DecodeError,
  Decoder,
  Encoder,
  Model,
  Reader,
  Writer,
  choose_model,
)
from gaussjax.core._gaussians import Gaussians, scale_gaussians, validate
from gaussjax.core._image import check_image
from gaussjax.core._metrics import _downsample2, bpp, bytes_for_bpp

MAGIC = b"\x89GJX"
VERSION = 1
MAX_DIM = 65535
MAX_GAUSSIANS = 1 << 20
MAX_CHANNELS = 4
MAX_FILE_BYTES = constants.MAX_FILE_BYTES
COLOR_MODE_DIRECT = 0
COLOR_MODE_YCOCG = 1
FINETUNE_MODES = ("sequential", "ste")
MAX_FIT_CYCLES = 16
_MIN_FILE = len(MAGIC) + 1 + 1 + 4 + 1 + 1 + 4  # magic ver C W H N mode crc


# ---------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class CodecConfig:
  """How ``encode`` fits and codes an image.

  Exactly one of ``bpp`` and ``quality`` is used (``bpp`` wins when both are
  set; neither means ``quality=50``).

  Attributes:
    bpp: target rate in bits per pixel of the *whole file*; the encoder lands
      within ``rate_tolerance`` of it by choosing the number of Gaussians and
      the quantiser steps.
    quality: 1..100. Sets the Gaussian density (``N = H·W·0.02·(q/50)²``,
      at least 16) and the starting steps of the step search
      (``default_steps`` × 2^((50 - q)/25)); no rate target.
    num_gaussians: force N (with ``bpp``: N of the float fit, which the
      rate controller may still prune).
    fit_steps: optimiser steps of the float fit (``gaussjax.fit``), run in
      two halves: the quantiser steps and N are chosen between them. What
      2000 steps buy against 1500, and at what encode time:
      ``benchmarks/results/codec_ablation_fit2000.md`` and
      ``rd_fit2000_24.md``.
    fit_cycles: each half of the float fit runs as this many fresh fits of
      equal length (``gaussjax.fit`` again from the last one's Gaussians: its
      own warm-up, learning-rate decay, growth and relocation), each of at
      least ``MIN_CYCLE_STEPS`` steps (fewer fits when a half is shorter, so
      short fits run one per half). 1: one fit per half (a rate-control
      refit runs its whole fit in this many).
      Single-level files only (progressive levels fit their own way; video
      I-frames use 1). The default 2 against 1: the float fits alone
      ``benchmarks/results/fit_restart_probe.md``, encodes of all 24 Kodak
      images ``benchmarks/results/rd_cycles2_24_compare.md``.
    coarse_fit: the first half of the float fit runs on the image halved
      (2×2 means, a quarter of the pixels), its Gaussians mapped back with
      ``scale_gaussians``, and the second half, at full size, gets the time
      saved: ``fit_steps - first // 4`` steps for a first half of ``first``
      (2000: 1000 halved, then 1750), a halved step counted as a quarter of
      one (it costs more than that: the first halves' times in
      ``benchmarks/results/coarse_fit_probe.md``). Only where the halved image has at
      least ``COARSE_MIN_PIXELS`` pixels (256×256; Kodak at 768×512 does,
      at 384×256 does not) and ``COARSE_PIXELS_PER_GAUSSIAN`` pixels per
      Gaussian of the first guess of N; False (or smaller images): two
      halves of ``fit_steps / 2`` at full size.
      Single-level files only (video I-frames fit at full size). What it
      changes: the float fits alone ``benchmarks/results/coarse_fit_probe.md``;
      encodes ``benchmarks/results/codec_ablation_coarse.md``.
    qat_steps: steps of quantisation-aware fine-tuning.
    learning_rate: Adam learning rate of the fine-tuning (the float fit
      uses ``FitConfig``'s rates).
    bits_per_gaussian: first guess of bits per Gaussian, which sets N of the
      first half of the fit (the second half corrects it from a real file).
    rate_tolerance: relative tolerance on the file size for ``bpp``.
    rd_slope: PSNR (dB) that doubling the file size is assumed to buy;
      ``choose_steps`` trades bytes for PSNR at this rate. The default errs
      below the codec's own PSNR per doubling on Kodak at 384x256 (the
      curves in ``benchmarks/results/rd.json``), towards fine steps.
      ``None``: no search (the default, or quality, steps).
    finetune: ``"sequential"`` (quantise the means, fine-tune the rest in
      float; quantise the Cholesky factors, fine-tune the colours) or
      ``"ste"`` (every attribute through straight-through rounding). See
      ``_finetune`` for the measurement that chose the default.
    backend: renderer used for fitting (``"auto"``: the fastest here).
    seed: PRNG seed of the initialisation.
    levels: 1 (a version-1 file) or 2..16: a progressive version-2 file of
      coarse-to-fine levels, each a prefix that decodes to a picture
      (``gaussjax.codec._progressive``; ``decode(data, level=k)``).
    rate_weight: the fine-tuning minimises ``MSE + rate_weight · λ · R``,
      ``R`` the estimated bits per pixel of the Gaussians' symbols
      (``gaussjax.codec._rate``) and ``λ`` the MSE a bit per pixel buys at
      ``rd_slope`` (``_rate.rd_lambda``). 0: distortion only (exactly the
      fine-tuning before the term existed). What it changes:
      ``benchmarks/results/codec_ablation_rate.md``.
    rd_prune: the rate controller drops the Gaussians of least distortion
      change per estimated bit (``_prune_order``); False: least energy
      (``fitting._density.contributions``). Compared on the same Gaussians:
      ``benchmarks/results/prune_rule.md``.
    rd_round: after the fine-tuning, the colours are put on the quantiser
      grid by integer coordinate descent on ``MSE + rate_weight · λ · R``
      (``_rd_round_colors``) instead of rounding each to the nearest step.
      What it changes: ``benchmarks/results/codec_ablation_round.md``.
    rd_round_chol: where the sequential fine-tuning quantises the Cholesky
      factors, they are put on the grid by integer descent on ``MSE +
      rate_weight · λ · R`` (``_rd_round_chol``) instead of rounding each to
      the nearest step; the colours are then fine-tuned for them. No effect
      with ``finetune="ste"``. What it changes:
      ``benchmarks/results/codec_ablation_chol.md``.
    rd_round_means: likewise for the means where the fine-tuning quantises
      them (``_rd_round_means``, on MSE alone), before the factors and colours
      are fine-tuned for them. What it changes:
      ``benchmarks/results/codec_ablation_means.md``.
    color_size: exponent β of size-scaled colour steps
      (``QuantSteps.color_size``): a Gaussian's colour steps times
      ``(sqrt det Σ / 16 px²)^-β`` (clipped to [1/4, 4]), finer for large
      Gaussians, whose colour error covers more pixels. A multiple of 1/8 in
      [0, 15/8]; 0: one step per channel for all. What it changes:
      ``benchmarks/results/codec_ablation_size.md``.
    pos_levels: K of per-Gaussian position steps (``QuantSteps.pos_levels``):
      each Gaussian's position step is the header's times ``2^(K - r)``, ``r``
      in ``0..K`` from its position sensitivity (``|c|²`` times how thin it
      is, ``qz.position_sensitivity``), so that faint, round Gaussians spend
      fewer bits on positions; the threshold ``pos_ref`` is searched with the
      steps. 0..3; 0: one position step for all. What it changes:
      ``benchmarks/results/codec_ablation_pos.md``.
  """

  bpp: float | None = None
  quality: float | None = None
  num_gaussians: int | None = None
  fit_steps: int = 2000
  fit_cycles: int = 2
  coarse_fit: bool = True
  qat_steps: int = 300
  learning_rate: float = 0.01
  bits_per_gaussian: float = 46.0
  rate_tolerance: float = 0.05
  rd_slope: float | None = 1.75
  finetune: str = "sequential"
  backend: str = "auto"
  seed: int = 0
  levels: int = 1
  rate_weight: float = 1.0
  rd_prune: bool = True
  rd_round: bool = True
  rd_round_chol: bool = True
  rd_round_means: bool = True
  color_size: float = 0.375
  pos_levels: int = 3

  def __post_init__(self):
    qz.check_color_size(self.color_size)
    qz.check_pos_levels(self.pos_levels)
    if isinstance(self.levels, bool) or not isinstance(self.levels, int) or \
        not 1 <= self.levels <= 16:
      raise ValueError(f"levels={self.levels!r} must be an int in [1, 16]")
    if self.bpp is not None and not (0.0 < self.bpp <= 64.0):
      raise ValueError(f"bpp={self.bpp} must be in (0, 64]")
    if self.quality is not None and not (1.0 <= self.quality <= 100.0):
      raise ValueError(f"quality={self.quality} must be in [1, 100]")
    if self.num_gaussians is not None and not (1 <= self.num_gaussians <= MAX_GAUSSIANS):
      raise ValueError(f"num_gaussians={self.num_gaussians} must be in [1, {MAX_GAUSSIANS}]")
    for name in ("fit_steps", "qat_steps"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
    if isinstance(self.fit_cycles, bool) or not isinstance(self.fit_cycles, int) or \
        not 1 <= self.fit_cycles <= MAX_FIT_CYCLES:
      raise ValueError(f"fit_cycles={self.fit_cycles!r} must be an int in [1, {MAX_FIT_CYCLES}]")
    if not isinstance(self.coarse_fit, bool):
      raise ValueError(f"coarse_fit={self.coarse_fit!r} must be True or False")
    if not 0.005 <= self.rate_tolerance <= 0.5:
      raise ValueError(f"rate_tolerance={self.rate_tolerance} must be in [0.005, 0.5]")
    if self.rd_slope is not None and not (0.0 < self.rd_slope <= 20.0):
      raise ValueError(f"rd_slope={self.rd_slope} must be in (0, 20] or None")
    if not (isinstance(self.rate_weight, (int, float)) and math.isfinite(self.rate_weight)
            and 0.0 <= self.rate_weight <= 100.0):
      raise ValueError(f"rate_weight={self.rate_weight!r} must be in [0, 100]")
    if self.finetune not in FINETUNE_MODES:
      raise ValueError(f"finetune={self.finetune!r} must be one of {FINETUNE_MODES}")


# ---------------------------------------------------------------------------
# Container


@dataclasses.dataclass(frozen=True)
class Header:
  version: int
  channels: int
  width: int
  height: int
  num_gaussians: int
  color_mode: int
  steps: qz.QuantSteps


def _f16(w: Writer, v: float):
  w.raw(struct.pack("<e", v))


def encode_gaussians(gaussians: Gaussians, height: int, width: int, *,
                     steps: qz.QuantSteps | None = None) -> bytes:
  """Quantises and entropy-codes Gaussians into a gaussjax file (FORMAT.md).

  Args:
    gaussians: ``Gaussians`` (``means [N, 2]``, ``chol [N, 3]``, ``colors
      [N, C]``) in the pixel coordinates of a ``height × width`` image.
    height: image rows.
    width: image columns.
    steps: quantiser steps (``default_steps(C)`` if ``None``).

  Returns:
    The file's bytes.

  Examples:
    >>> import jax, gaussjax
    >>> g = gaussjax.init_random(jax.random.key(0), 100, 32, 48, 3)
    >>> data = gaussjax.encode_gaussians(g, 32, 48)
    >>> decoded, size = gaussjax.decode_gaussians(data)
    >>> decoded.num_gaussians, size, data[:4]
    (100, (32, 48), b'\x89GJX')
  """
  gaussians = validate(gaussians)
  n, c = gaussians.num_gaussians, gaussians.channels
  if not (1 <= height <= MAX_DIM and 1 <= width <= MAX_DIM):
    raise ValueError(f"{height=} and {width=} must be in [1, {MAX_DIM}]")
  if height * width > constants.MAX_PIXELS:
    raise ValueError(f"{height}x{width} is over MAX_PIXELS={constants.MAX_PIXELS}")
  if not 1 <= c <= MAX_CHANNELS:
    raise ValueError(f"channels={c} must be in [1, {MAX_CHANNELS}]")
  if n > MAX_GAUSSIANS:
    raise ValueError(f"{n} Gaussians is over MAX_GAUSSIANS={MAX_GAUSSIANS}")
  steps = (steps or qz.default_steps(c)).rounded()
  if len(steps.color) != c:
    raise ValueError(f"steps.color has {len(steps.color)} entries for {c} channels")
  qz.check_color_size(steps.color_size)
  qz.check_pos_levels(steps.pos_levels)
  for arr in gaussians:
    if not np.all(np.isfinite(np.asarray(arr))):
      raise ValueError("gaussians contain NaN or infinite values")
  sym, _ = qz.quantize(gaussians, height, width, steps)

  w = Writer()
  w.raw(MAGIC)
  w.u8(VERSION)
  w.u8(c)
  w.u16(width)
  w.u16(height)
  w.varint(n)
  w.u8((COLOR_MODE_YCOCG if c == 3 else COLOR_MODE_DIRECT) | steps.pos_levels << 2
       | round(steps.color_size * qz.COLOR_SIZE_DENOM) << 4)
  _f16(w, steps.pos)
  _f16(w, steps.scale)
  _f16(w, steps.shear)
  for s in steps.color:
    _f16(w, s)
  if steps.pos_levels:
    _f16(w, steps.pos_ref)
  enc = Encoder()
  if n:
    codes, _ = qz.position_codes(sym.pos, height, width, steps)
    deltas = np.diff(codes, prepend=0)
    buckets = _bit_length(deltas)
    streams = [buckets] + [sym.chol[:, k] for k in range(3)] + [sym.color[:, k] for k in range(c)]
    models = [choose_model(s) for s in streams]
    for m in models:
      m.write(w)
    enc.add(buckets, models[0])
    low_bits = np.maximum(buckets - 1, 0)
    low = deltas - np.where(buckets > 0, np.int64(1) << low_bits, 0)
    for shift in (0, 16, 32):
      nb = np.clip(low_bits - shift, 0, 16)
      enc.add_uniform((low >> shift) & ((np.int64(1) << nb) - 1), nb)
    for s, m in zip(streams[1:], models[1:]):
      enc.add(s, m)
    if steps.pos_levels:
      refine, nb = _refinement(sym, height, width, steps)
      for axis in range(2):
        enc.add_uniform(refine[:, axis], nb)
  w.raw(enc.finish())
  w.u32(zlib.crc32(bytes(w.buf)))
  return bytes(w.buf)


def _refinement(sym: qz.Symbols, height: int, width: int,
                steps: qz.QuantSteps) -> tuple[np.ndarray, np.ndarray]:
  """``(bits [N, 2], r [N])``: the refinement bits of each position below its coarse
  cell, and how many per axis (``r``, from the decoded factors and colours)."""
  k = steps.pos_levels
  shift = qz.symbol_shift(sym, height, width, steps)
  return (sym.pos & ((1 << k) - 1)) >> shift[:, None], k - shift


def _bit_length(x: np.ndarray) -> np.ndarray:
  out = np.zeros(x.shape, np.int64)
  x = x.copy()
  while (x > 0).any():
    nz = x > 0
    out[nz] += 1
    x >>= 1
  return out


def _check_container(data) -> tuple[bytes, int]:
  """Type, size limit, magic and version of a file: ``(bytes, version)``."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) > MAX_FILE_BYTES:
    raise DecodeError(f"file of {len(data)} bytes is over the limit of {MAX_FILE_BYTES}")
  if len(data) < 5:
    raise DecodeError(f"truncated: {len(data)} bytes is shorter than magic and version")
  if data[:4] != MAGIC:
    raise DecodeError(f"wrong magic {data[:4]!r}: not a gaussjax file (expected {MAGIC!r})")
  version = data[4]
  if version not in _DECODERS and version != _PROGRESSIVE_VERSION:
    raise DecodeError(f"unsupported format version {version} (this gaussjax reads "
                      f"{sorted(set(_DECODERS) | {_PROGRESSIVE_VERSION})})")
  return data, version


def _read_header(data) -> tuple[Header, Reader]:
  data, version = _check_container(data)
  if version == _PROGRESSIVE_VERSION:
    raise DecodeError("a version-2 (progressive) file has no single header; "
                      "read it with gaussjax.codec._progressive")
  if len(data) < _MIN_FILE:
    raise DecodeError(f"truncated: {len(data)} bytes is shorter than the smallest file "
                      f"({_MIN_FILE} bytes)")
  stored = struct.unpack("<I", data[-4:])[0]
  actual = zlib.crc32(data[:-4])
  if stored != actual:
    raise DecodeError(f"checksum mismatch: stored crc32 {stored:#010x}, computed {actual:#010x} "
                      "(the file is corrupt or truncated)")
  r = Reader(data, end=len(data) - 4)
  r.take(5, "magic and version")
  c = r.u8("channels")
  if not 1 <= c <= MAX_CHANNELS:
    raise DecodeError(f"channels={c} must be in [1, {MAX_CHANNELS}]")
  width, height = r.u16("width"), r.u16("height")
  if width < 1 or height < 1:
    raise DecodeError(f"image size {width}x{height} must be positive")
  if width * height > constants.MAX_PIXELS:
    raise DecodeError(f"image size {width}x{height} is over MAX_PIXELS={constants.MAX_PIXELS}")
  return _read_body_header(r, version, c, width, height), r


def _read_body_header(r: Reader, version: int, c: int, width: int, height: int,
                      max_gaussians: int = MAX_GAUSSIANS) -> Header:
  """N, colour mode and steps: the fields after the image size (FORMAT.md).

  A version-1 file and each level of a version-2 file start with them.
  """
  n = r.varint("number of Gaussians", max_gaussians)
  byte = r.u8("colour mode")
  # the transform; the position refinement levels K; β · COLOR_SIZE_DENOM
  mode, levels, size = byte & 3, (byte >> 2) & 3, byte >> 4
  if mode not in (COLOR_MODE_DIRECT, COLOR_MODE_YCOCG) or (mode == COLOR_MODE_YCOCG) != (c == 3):
    raise DecodeError(f"colour mode {mode} is invalid for {c} channels")
  vals = []
  for name, rng in (("position step", qz.POS_STEP_RANGE), ("scale step", qz.SCALE_STEP_RANGE),
                    ("shear step", qz.SHEAR_STEP_RANGE)) + (
                        ("colour step", qz.COLOR_STEP_RANGE),) * c:
    v = struct.unpack("<e", r.take(2, name))[0]
    if not (np.isfinite(v) and rng[0] <= v <= rng[1]):
      raise DecodeError(f"{name} {v} is outside [{rng[0]}, {rng[1]}]")
    vals.append(float(v))
  ref = 1.0
  if levels:
    ref = struct.unpack("<e", r.take(2, "position reference"))[0]
    lo, hi = qz.POS_REF_RANGE
    if not (np.isfinite(ref) and lo <= ref <= hi):
      raise DecodeError(f"position reference {ref} is outside [{lo}, {hi}]")
  steps = qz.QuantSteps(vals[0], vals[1], vals[2], tuple(vals[3:]),
                        size / qz.COLOR_SIZE_DENOM, levels, float(ref))
  return Header(version, c, width, height, n, mode, steps)


def _decode_v1(header: Header, r: Reader) -> Gaussians:
  n, c, h, w, steps = (header.num_gaussians, header.channels, header.height, header.width,
                       header.steps)
  if n == 0:
    if r.pos != r.end:
      raise DecodeError(f"{r.end - r.pos} unexpected bytes after the header of an empty file")
    z = np.zeros((0, 2), np.float32)
    return Gaussians(z, np.zeros((0, 3), np.float32), np.zeros((0, c), np.float32))
  k = steps.pos_levels
  bits = max(qz.grid_bits(h, w, steps.pos) - k, 0)  # of the coarse grid (qz.position_codes)
  names = ["position buckets", "log l11", "shear", "log l22"] + [f"colour {k}" for k in range(c)]
  models = [Model.read(r, name, MAX_ALPHABET * 16) for name in names]
  b = models[0]
  if b.lo < 0 or b.lo + b.n - 1 > 2 * bits:
    raise DecodeError(f"position bucket range [{b.lo}, {b.lo + b.n}) is outside [0, {2 * bits}]")
  # Each Gaussian costs at least ... nothing in a constant model, so N is bounded only by
  # MAX_GAUSSIANS (checked); the arrays below are O(N) with N <= 2^20.
  dec = Decoder(r.take(r.end - r.pos, "payload"))
  buckets = dec.read(models[0], n)
  low_bits = np.maximum(buckets - 1, 0)
  low = np.zeros(n, np.int64)
  for shift in (0, 16, 32):
    nb = np.clip(low_bits - shift, 0, 16)
    low |= dec.read_uniform(nb) << shift
  deltas = np.where(buckets > 0, (np.int64(1) << low_bits) + low, 0)
  codes = np.cumsum(deltas)
  if codes[-1] >= (1 << (2 * bits)):
    raise DecodeError(f"position code {codes[-1]} is outside the {2 * bits}-bit grid")
  pos = np.stack(qz.morton_decode(codes, bits), -1) << k
  chol = np.stack([dec.read(models[j], n) for j in (1, 2, 3)], -1)
  color = np.stack([dec.read(models[4 + j], n) for j in range(c)], -1)
  sym = qz.clip_symbols(qz.Symbols(pos, chol, color), h, w, steps)
  if k:
    shift = qz.symbol_shift(sym, h, w, steps)
    refine = np.stack([dec.read_uniform(k - shift) for _ in range(2)], -1)
    sym = qz.clip_symbols(qz.Symbols(pos | (refine << shift[:, None]), chol, color), h, w, steps)
  return qz.dequantize(sym, h, w, steps)


_DECODERS = {1: _decode_v1}
# Version 2, progressive files of levels, is read by gaussjax.codec._progressive.
_PROGRESSIVE_VERSION = 2


def decode_single(data: bytes) -> tuple[Gaussians, tuple[int, int]]:
  """Parses a single-level (version-1) gaussjax file into Gaussians.

  ``gaussjax.decode_gaussians`` (``gaussjax.codec._formats``) reads every
  version; this is its version-1 part.

  Returns:
    ``(gaussians, (height, width))``: float32 numpy ``Gaussians`` in the
    pixel coordinates of the encoded image size, in Morton order.

  Raises:
    DecodeError: the bytes are not a valid version-1 file.
  """
  header, r = _read_header(data)
  return _DECODERS[header.version](header, r), (header.height, header.width)


def info_single(data: bytes) -> dict:
  """Header fields and stream models of a single-level (version-1) file, without rendering.

  ``gaussjax.codec._formats.info`` reads every version; this is its version-1 part.
  """
  header, r = _read_header(data)
  out = {
      "version": header.version, "width": header.width, "height": header.height,
      "channels": header.channels, "num_gaussians": header.num_gaussians,
      "color_mode": {COLOR_MODE_DIRECT: "direct", COLOR_MODE_YCOCG: "ycocg"}[header.color_mode],
      "steps": dataclasses.asdict(header.steps), "bytes": len(data),
      "bpp": bpp(len(data), header.height, header.width),
  }
  if header.num_gaussians:
    names = ["position buckets", "log l11", "shear", "log l22"] + [
        f"colour {k}" for k in range(header.channels)]
    out["models"] = {name: Model.read(r, name, MAX_ALPHABET * 16).describe() for name in names}
    out["payload_bytes"] = r.end - r.pos
  return out


def _output_size(header_hw, height, width, max_pixels=None):
  h0, w0 = header_hw
  if max_pixels is not None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or \
        max_pixels < 1:
      raise ValueError(f"max_pixels={max_pixels!r} must be a positive int")
    if height is None and width is None and h0 * w0 > max_pixels:
      # Checked before anything of the image's size is allocated: a file of a
      # few bytes can ask for 65535x4096 pixels (a decompression bomb).
      raise DecodeError(
          f"the file's image is {w0}x{h0} = {h0 * w0} pixels, over the decoder's limit of "
          f"{max_pixels} (gaussjax.constants.MAX_DECODE_PIXELS); if you trust the file, raise "
          "the limit (decode(..., max_pixels=...), gaussjax decode --max-pixels) or decode it "
          "smaller (height=/width=)")
  if height is None and width is None:
    return h0, w0
  if height is None:
    height = max(1, round(width * h0 / w0))
  if width is None:
    width = max(1, round(height * w0 / h0))
  for name, v in (("height", height), ("width", width)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name}={v!r} must be a positive int")
  if height * width > constants.MAX_PIXELS:
    raise ValueError(f"output {height}x{width} is over MAX_PIXELS={constants.MAX_PIXELS}")
  if max_pixels is not None and height * width > max_pixels:
    raise ValueError(f"output {width}x{height} = {height * width} pixels is over "
                     f"max_pixels={max_pixels}")
  return int(height), int(width)


# ---------------------------------------------------------------------------
# Fitting and quantisation-aware fine-tuning

# Learning-rate multipliers per field (pixels for means and factors, [0, 1]
# units for colours), applied after Adam's normalisation.
_FIELD_LR = Gaussians(means=20.0, chol=5.0, colors=1.0)


def _optimizer(learning_rate: float, iterations: int, frozen: tuple[str, ...] = ()):
  """Adam with per-field learning rates and a cosine decay over ``iterations``.

  The fields named in ``frozen`` (``"means"``, ``"chol"``, ``"colors"``) are
  not changed.
  """
  schedule = optax.cosine_decay_schedule(learning_rate, iterations, alpha=0.05)
  return optax.chain(
      optax.scale_by_adam(),
      optax.transforms.partition(
          {f: optax.scale(0.0 if f in frozen else s) for f, s in zip(Gaussians._fields, _FIELD_LR)},
          Gaussians(*Gaussians._fields)),
      optax.scale_by_schedule(lambda t: -schedule(t)))


def _loss(g, image, mask=None, *, height, width, backend, qsteps, plan, rate=None):
  """MSE of the (fake-quantised) rendering (+ λ·R); returns ``(loss, overflow)``.

  ``mask [H, W]`` (1 on real pixels, 0 on padding) restricts the mean to real
  pixels, so padding changes neither the loss nor its gradient (used by
  ``gaussjax.fit_batch`` / ``encode_batch``); ``None`` averages every pixel.
  ``rate`` (a ``_rate.RateTerm``) adds ``rate.weight`` times the estimated
  bits per pixel of the Gaussians' symbols.
  """
  from gaussjax.fitting._fit import masked_mean
  from gaussjax.rendering._render import rasterize
  gq = qz.fake_quantize(g, height, width, qsteps) if qsteps is not None else g
  out, overflow = rasterize(gq, image.shape[0], image.shape[1], backend=backend, plan=plan)
  loss = masked_mean((out - image) ** 2, mask)
  if rate is not None:
    loss = loss + rate.weight * _rate.rate_bpp(g, image.shape[0], image.shape[1], rate)
  return loss, overflow


# Steps per compiled chunk and re-plan interval of the fine-tuning loop.
TRAIN_CHUNK = 50
TRAIN_REPLAN = 50


class _TrainState(NamedTuple):
  gaussians: Gaussians  # the iterate, leaves [N, ...]
  opt_state: Any  # state of _optimizer
  best: Gaussians  # the iterate of least loss so far (straight-through training)
  best_loss: jax.Array  # [] its loss (inf before the first step)


def _train_state(g: Gaussians, static) -> _TrainState:
  _, _, _, _, learning_rate, iterations, frozen = static
  opt_state = _optimizer(learning_rate, iterations, frozen).init(g)
  return _TrainState(g, opt_state, g, jnp.full((), jnp.inf, jnp.float32))


def _train_view(state: _TrainState, static) -> Gaussians:
  """What a step renders (to plan for): the fake-quantised Gaussians with quantiser steps."""
  height, width, _, qsteps, _, _, _ = static
  if qsteps is None:
    return state.gaussians
  return _fake_quantize_jit(state.gaussians, height, width, qsteps)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _fake_quantize_jit(g, height, width, qsteps):
  quantize = lambda x: qz.fake_quantize(x, height, width, qsteps)
  return jax.vmap(quantize)(g) if g.means.ndim == 3 else quantize(g)


def _train_step(state: _TrainState, data, t, plan, static):
  """One step of the codec's fine-tuning (a step of ``gaussjax.fitting._loop``).

  Adam (``_optimizer``: per-field rates, ``frozen`` fields fixed) on the MSE
  of the rendering of the parameter transform: ``fake_quantize``
  (straight-through rounding) with quantiser steps, the identity without.
  Remembers the best iterate by its loss.
  """
  del t  # the optimiser counts its own steps
  image, mask, *rate = data  # (image, mask) or (image, mask, RateTerm)
  height, width, backend, qsteps, learning_rate, iterations, frozen = static
  optimizer = _optimizer(learning_rate, iterations, frozen)
  g = state.gaussians
  (loss, overflow), grads = jax.value_and_grad(_loss, has_aux=True)(
      g, image, mask, height=height, width=width, backend=backend, qsteps=qsteps, plan=plan,
      rate=rate[0] if rate else None)
  updates, opt_state = optimizer.update(grads, state.opt_state, g)
  better = loss < state.best_loss  # `loss` is that of `g`, before the update
  best = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), g, state.best)
  new = _TrainState(optax.apply_updates(g, updates), opt_state, best,
                    jnp.where(better, loss, state.best_loss))
  return new, {"loss": loss, "overflow": overflow}


def _train_result(state: _TrainState, image, static, rate=None) -> Gaussians:
  """The trained Gaussians: the last iterate, or with quantiser steps the best one if better."""
  _, _, backend, qsteps, _, _, _ = static
  if qsteps is None:
    return state.gaussians
  # With quantisation the loss is that of the decoded file: keep the best iterate
  # (the rounding makes the last one no better than any other).
  last = _quantized_loss(state.gaussians, image, qsteps, backend)
  if rate is not None:
    last += float(rate.weight * _rate.rate_bpp(state.gaussians, *image.shape[:2], rate))
  return state.best if float(state.best_loss) <= last else state.gaussians


def _train(gaussians: Gaussians, image: jax.Array, *, iterations: int, learning_rate: float,
           qsteps: qz.QuantSteps | None, backend: str,
           frozen: tuple[str, ...] = (), rate: _rate.RateTerm | None = None) -> Gaussians:
  """Adam on the MSE of the rendering; with ``qsteps``, through ``fake_quantize``.

  ``frozen`` names fields that stay as they are (see ``_optimizer``). ``rate``
  adds λ times the estimated rate (``_loss``); None is the distortion-only
  fit. Runs ``_train_step`` in the training loop (``gaussjax.fitting._loop``),
  which owns the plans and redoes any chunk that overflowed, so no
  contribution is dropped.
  """
  from gaussjax.fitting._loop import run
  from gaussjax.rendering._render import resolve_backend
  backend = resolve_backend(backend)
  if iterations == 0 or gaussians.num_gaussians == 0:
    return gaussians
  height, width = image.shape[:2]
  g = Gaussians(*(jnp.asarray(x, jnp.float32) for x in gaussians))
  static = (height, width, backend, qsteps, learning_rate, iterations, frozen)
  data = (image, None) if rate is None else (image, None, rate)
  state, _ = run(_train_step, _train_state(g, static), data, num_steps=iterations,
                 static=static, height=height, width=width, backend=backend,
                 view=functools.partial(_train_view, static=static), chunk=TRAIN_CHUNK,
                 replan_every=TRAIN_REPLAN)
  return _train_result(state, image, static, rate)


def _quantized_loss(g, image, qsteps, backend) -> float:
  height, width = image.shape[:2]
  out = render_safe(qz.fake_quantize(g, height, width, qsteps), height, width, backend=backend)
  return float(jnp.mean((out - image) ** 2))


def _fit_float(image: jax.Array, n: int, config: CodecConfig,
               iterations: int | None = None) -> Gaussians:
  """``init_for_fit`` (SLIC), then ``_refit``: ``gaussjax.fit`` growing to ``n`` for ``iterations``.

  ``iterations`` defaults to ``config.fit_steps``; 0 returns SLIC at ``n``.
  """
  from gaussjax.fitting._fit import init_for_fit
  iterations = config.fit_steps if iterations is None else iterations
  first = _cycle_lengths(iterations, config.fit_cycles)[0]
  fit_config = _float_fit_config(config, n, first) if iterations else None
  g = init_for_fit(image, n, fit_config, key=jax.random.key(config.seed))
  return _refit(image, g, n, config, iterations) if iterations else g


# Fewest steps of one fresh fit of CodecConfig.fit_cycles: shorter fits spend
# their steps on warm-up and decay (a 20-step encode as four 5-step fits barely
# fits at all). 500 is the only length measured to pay
# (benchmarks/results/fit_restart_probe.md, rd_cycles2_24_compare.md).
MIN_CYCLE_STEPS = 500


def _cycle_lengths(iterations: int, cycles: int) -> list[int]:
  """Steps of each fresh fit when ``iterations`` run as ``cycles`` (``CodecConfig.fit_cycles``):
  equal lengths, the first ones a step longer, none shorter than ``MIN_CYCLE_STEPS`` (fewer
  cycles instead; one when ``iterations`` is below twice that; ``[0]`` for none)."""
  cycles = max(1, min(cycles, iterations // MIN_CYCLE_STEPS))
  return [iterations // cycles + (k < iterations % cycles) for k in range(cycles)]


def _float_fit_config(config: CodecConfig, n: int, iterations: int | None = None):
  """``FitConfig`` of a float fit to ``n`` Gaussians (also used by ``gaussjax.encode_batch``)."""
  from gaussjax.fitting._fit import FitConfig
  iterations = config.fit_steps if iterations is None else iterations
  return FitConfig(steps=iterations, backend=config.backend, log_every=max(iterations, 1),
                   replan_every=50, num_gaussians=n)


def _fit_halves(config: CodecConfig, coarse: bool = False) -> tuple[int, int]:
  """Steps of the two halves of the float fit (before and after ``_choose``); with
  ``coarse`` (``CodecConfig.coarse_fit``) the first on the halved image, each of its
  steps counted as a quarter of one in the second."""
  first = (config.fit_steps + 1) // 2
  return first, config.fit_steps - (first // 4 if coarse else first)


# CodecConfig.coarse_fit: the halved image needs at least this many pixels per
# Gaussian of the first guess of N (SLIC and the fit's density control need
# room; at 4, one Gaussian per 16 pixels at full size, about 2.5 bpp at the
# codec's ~40 bits per Gaussian).
COARSE_PIXELS_PER_GAUSSIAN = 4
# ... and at least this many pixels (256 x 256): on smaller images a step's fixed
# costs dominate, a halved step saves little, and the longer second half made
# encodes at 384x256 take more than issue 14's 1.5x the time of the encoder
# before it (benchmarks/results/rd_coarse1750_2.md); Kodak at 768x512 is
# halved to 384x256 = 98,304 pixels.
COARSE_MIN_PIXELS = 65536


def _coarse(shape, n: int, config: CodecConfig) -> bool:
  """Whether the first half of the float fit runs on the halved image (``coarse_fit``)."""
  h, w = shape[0] // 2, shape[1] // 2
  return bool(config.coarse_fit and config.fit_steps and h * w >= COARSE_MIN_PIXELS and
              h * w >= COARSE_PIXELS_PER_GAUSSIAN * n)


def _halve(image: jax.Array) -> jax.Array:
  """``[H, W, C]`` -> ``[H // 2, W // 2, C]`` by 2×2 means (an odd last row or column
  dropped): pixel ``(i, j)`` covers ``[2j, 2j + 2) × [2i, 2i + 2)`` of the image, so
  Gaussians fitted to it map back by ``scale_gaussians(g, 2, 2)``."""
  return _downsample2(image)


def _first_fit(image: jax.Array, config: CodecConfig) -> tuple[Gaussians, qz.QuantSteps]:
  """The float fit of ``encode``: ``(Gaussians, quantiser steps)``.

  Fits the first half of ``config.fit_steps`` at the first guess of N
  (``_fit_settings``; on the halved image with ``coarse_fit``, see
  ``_coarse``), chooses the steps and N for the rate from those Gaussians
  at full size (``_choose``), then fits the second half with N moved there.
  """
  n0, base = _fit_settings(*image.shape, config)
  coarse = _coarse(image.shape, n0, config)
  first, second = _fit_halves(config, coarse)
  if coarse:
    g = scale_gaussians(_fit_float(_halve(image), n0, config, first), 2.0, 2.0)
  else:
    g = _fit_float(image, n0, config, first)
  steps, n1 = _choose(image, g, base, config)
  return _refit(image, g, n1, config, second), steps


def _choose(image: jax.Array, g: Gaussians, base: qz.QuantSteps,
            config: CodecConfig) -> tuple[qz.QuantSteps, int]:
  """``(steps, N)`` after the first half of the fit.

  With per-Gaussian position steps (``pos_levels``) the search starts from
  ``pos_ref = qz.reference_sensitivity(g)``. The steps come from
  ``choose_steps`` (unless ``config.rd_slope`` is None);
  with a ``bpp`` target and no forced N, N is scaled by target / size of
  these Gaussians' file at those steps (bytes grow about linearly in N).
  """
  h, w, _ = image.shape
  if base.pos_levels:
    base = dataclasses.replace(base, pos_ref=qz.reference_sensitivity(g))
  if config.rd_slope is None:
    steps = base
  else:
    steps = choose_steps(g, image, base=base, slope=config.rd_slope, backend=config.backend)
  n = g.num_gaussians
  if config.bpp is not None and config.num_gaussians is None:
    size = len(encode_gaussians(g, h, w, steps=steps))
    n = int(min(max(round(n * bytes_for_bpp(config.bpp, h, w) / size), 1), MAX_GAUSSIANS, h * w))
  return steps, n


def _refit(image: jax.Array, g: Gaussians, n: int, config: CodecConfig,
           iterations: int) -> Gaussians:
  """``gaussjax.fit`` of ``g`` for ``iterations`` more steps with its count moved to ``n``.

  ``fit`` prunes the least contributing Gaussians at once, or grows the
  count over the first part of the steps. Without steps, only pruning.
  """
  from gaussjax.fitting._density import to_buffer
  from gaussjax.fitting._fit import fit
  if iterations == 0:
    return to_buffer(g, n) if n < g.num_gaussians else g
  for steps in _cycle_lengths(iterations, config.fit_cycles):
    g, _ = fit(image, g, _float_fit_config(config, n, steps))
  return g


# Grid of the step search: each attribute's step times 2^(k/2), k = -4..4.
STEP_GRID = tuple(2.0 ** (k / 2) for k in range(-4, 5))
_STEP_ATTRIBUTES = ("pos", "scale", "shear", "color", "pos_ref")


def choose_steps(gaussians: Gaussians, image, *, base: qz.QuantSteps | None = None,
                 slope: float = 1.75, backend: str = "auto") -> qz.QuantSteps:
  """Quantiser steps that trade PSNR for bytes at ``slope`` dB per doubling.

  Maximises ``PSNR(decoded) - slope · log2(file bytes)`` for these Gaussians
  by coordinate search: each attribute's step (positions, log-scales,
  shear, all colour channels together) times a factor of ``STEP_GRID``
  relative to ``base``, attribute by attribute, twice; with
  ``base.pos_levels``, the position reference ``pos_ref`` too. ``slope`` is what
  doubling the bytes would buy if spent on more Gaussians (about the PSNR
  per doubling of N): fine steps pay at high PSNR, coarse ones at low PSNR.
  Steps too fine to code these Gaussians (a symbol stream wider than
  ``MAX_ALPHABET`` values, as large colours at fine colour steps give) are
  skipped.

  What it chooses and what it gains against the default steps, at the same
  rate: ``benchmarks/results/codec_ablation.md``. The search costs a few
  dozen trial encodes and renders and keeps the steps sensible away from the
  quality the defaults were tuned at.

  Args:
    gaussians: ``Gaussians`` in the pixel coordinates of ``image``.
    image: ``[H, W, C]`` float image in [0, 1] they were fitted to.
    base: starting steps (``default_steps(C)`` if None).
    slope: dB per doubling of the file size.
    backend: renderer for the trial decodes.

  Returns:
    ``QuantSteps`` (float16-rounded, within the documented ranges).
  """
  if not (isinstance(slope, (int, float)) and math.isfinite(slope) and slope > 0):
    raise ValueError(f"slope={slope!r} must be a positive number")
  image = check_image(image, integers=True)
  h, w, c = image.shape
  g = validate(gaussians)
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  if g.channels != c:
    raise ValueError(f"gaussians have {g.channels} colour channels but the image has {c}")
  base = (base or qz.default_steps(c)).rounded()
  if len(base.color) != c:
    raise ValueError(f"base.color has {len(base.color)} entries for {c} channels")
  if g.num_gaussians == 0:
    return base
  scores: dict[qz.QuantSteps, float] = {}

  def score(factors) -> tuple[float, qz.QuantSteps]:
    steps = base.scaled(**dict(zip(_STEP_ATTRIBUTES, factors)))
    if steps not in scores:
      try:
        size = len(encode_gaussians(g, h, w, steps=steps))
      except AlphabetError:  # too fine for these Gaussians' values: not a candidate
        scores[steps] = -math.inf
        return scores[steps], steps
      sym, _ = qz.quantize(g, h, w, steps)
      out = render_safe(qz.dequantize(sym, h, w, steps), h, w, backend=backend)
      mse = float(np.mean((np.clip(np.asarray(out), 0.0, 1.0) - image) ** 2))
      scores[steps] = -10.0 * math.log10(max(mse, 1e-12)) - slope * math.log2(size)
    return scores[steps], steps

  best = [1.0] * len(_STEP_ATTRIBUTES)
  best_score, best_steps = score(best)
  # pos_ref (per-Gaussian position steps) only matters with pos_levels.
  searched = len(best) if base.pos_levels else len(best) - 1
  for _ in range(2):
    changed = False
    for k in range(searched):
      for f in STEP_GRID:
        trial = list(best)
        trial[k] = f
        value, steps = score(trial)
        if value > best_score + 1e-6:
          best, best_score, best_steps, changed = trial, value, steps, True
    if not changed:
      break
  return best_steps


def _snap(g: Gaussians, height: int, width: int, qsteps: qz.QuantSteps,
          fields: tuple[str, ...]) -> Gaussians:
  """``g`` with the named fields replaced by the decoder's reconstruction."""
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  sym, order = qz.quantize(g, height, width, qsteps)
  decoded = qz.dequantize(sym, height, width, qsteps)
  inverse = np.argsort(order)
  return g._replace(**{f: getattr(decoded, f)[inverse] for f in fields})


# Stages of the sequential fine-tuning: (fields quantised and frozen, learning
# rate relative to CodecConfig.learning_rate, share of qat_steps).
_SEQUENTIAL = ((("means",), 0.1, 0.5), (("means", "chol"), 0.2, 0.5))


def _sequential_stages(iterations: int, stages=_SEQUENTIAL):
  """``(frozen fields, relative learning rate, iterations)`` of each stage, summing to ``iterations``.

  ``stages`` holds ``(frozen fields, relative learning rate, share)`` rows
  (``_SEQUENTIAL``; the video codec's P-frames pass their own).
  """
  done = 0
  for k, (frozen, lr, share) in enumerate(stages):
    n = iterations - done if k == len(stages) - 1 else int(round(share * iterations))
    done += n
    yield frozen, lr, n


def _finetune(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps, config: CodecConfig,
              iterations: int | None = None) -> Gaussians:
  """Quantisation-aware fine-tuning of fitted Gaussians for the quantiser steps ``qsteps``.

  ``"sequential"`` (default): quantise the means and fine-tune the Cholesky
  factors and colours in float, then quantise the factors too and fine-tune
  the colours; ``encode_gaussians`` rounds the colours last. Each stage
  repairs the rounding of the one before; the rounding itself is an integer
  descent on the render's error (``_stage_start``, ``_round_stage``) unless
  ``config.rd_round_means`` / ``rd_round_chol`` / ``rd_round`` is off. ``"ste"``: Adam through
  ``fake_quantize`` (straight-through rounding of every attribute), keeping
  the best iterate. The two are compared at the same rate in
  ``benchmarks/results/codec_ablation.md`` (which chose the default) and,
  with no fine-tuning, in ``quantizers.md``.

  Args:
    g: fitted ``Gaussians``.
    image: ``[H, W, C]`` target.
    qsteps: the quantiser steps (``QuantSteps``) the file will use.
    config: ``CodecConfig`` (``finetune``, ``learning_rate``, ``backend``).
    iterations: optimiser iterations in all (default ``config.qat_steps``).

  Returns:
    ``Gaussians``; sequential ones hold quantised means and factors.
  """
  iterations = config.qat_steps if iterations is None else iterations
  if iterations == 0 or g.num_gaussians == 0:
    return g
  rate = _finetune_rate(g, image, qsteps, config)
  if config.finetune == "ste":
    g = _train(g, image, iterations=iterations, learning_rate=qat_learning_rate(config),
               qsteps=qsteps, backend=config.backend, rate=rate)
  else:
    for frozen, lr, n in _sequential_stages(iterations):
      g = _stage_start(g, image, qsteps, frozen, config, rate)
      g = _train(g, image, iterations=n, learning_rate=lr * config.learning_rate, qsteps=None,
                 backend=config.backend, frozen=frozen, rate=rate)
  return _round_stage(g, image, qsteps, config, rate)


def _stage_start(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps,
                 frozen: tuple[str, ...], config: CodecConfig,
                 rate: _rate.RateTerm | None) -> Gaussians:
  """The start of a sequential stage: the ``frozen`` fields onto the grid (``_snap``).

  The field a stage freezes first (the last of ``frozen``; the others were
  frozen by the stages before and are on the grid already) goes there by
  ``_rd_round_means`` or ``_rd_round_chol`` when ``config.rd_round_means``
  or ``config.rd_round_chol`` is set.
  """
  h, w = image.shape[:2]
  g = _snap(g, h, w, qsteps, frozen)
  if not g.num_gaussians:
    return g
  if frozen[-1] == "means" and config.rd_round_means:
    g = _rd_round_means(g, image, qsteps, backend=config.backend)
  if frozen[-1] == "chol" and config.rd_round_chol:
    weight = 0.0 if rate is None else float(rate.weight)
    g = _rd_round_chol(g, image, qsteps, weight, backend=config.backend)
  return g


def _round_stage(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps, config: CodecConfig,
                 rate: _rate.RateTerm | None) -> Gaussians:
  """The end of the fine-tuning: ``_rd_round_colors`` when ``config.rd_round``, else ``g``."""
  if not config.rd_round or g.num_gaussians == 0:
    return g
  h, w = image.shape[:2]
  g = _snap(g, h, w, qsteps, ("means", "chol"))
  weight = 0.0 if rate is None else float(rate.weight)
  return _rd_round_colors(g, image, qsteps, weight, backend=config.backend)


# Sweeps of _rd_round_colors, and the share of the improving moves each applies.
ROUND_SWEEPS = 40
ROUND_SHARE = 0.3


def _rd_round_colors(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps, weight: float, *,
                     backend: str = "auto", sweeps: int = ROUND_SWEEPS) -> Gaussians:
  """Colours on the quantiser grid that minimise ``MSE + weight · bpp``, by integer descent.

  The encoder would round each colour latent to its nearest step; but the
  render is linear in the colours and overlapping Gaussians can make up for
  each other's rounding, and a step towards a stream's centre saves bits.
  Starting from the nearest steps, each sweep renders once, takes the
  gradient of the squared error in the colour latents and, per latent, the
  move of -2..2 steps of least predicted ``ΔSSE / 2 + weight · C / 2 · Δbits``
  (a second-order model with the curvature ``∫w² · step² · |column of the
  inverse colour transform|²``; bits from ``_rate``'s Laplace model of the
  stream). A random ``ROUND_SHARE`` of the improving moves is applied (all at
  once would overshoot where Gaussians overlap). A sweep that made the exact
  objective worse is undone and the share halved, so the result is never
  worse than the nearest steps. ``weight`` 0: distortion only.

  Returns ``g`` with colours exactly on the grid (``encode_gaussians`` keeps
  them); ``g`` unchanged when the render overflows its plan. What it buys:
  ``benchmarks/results/codec_ablation_round.md``.
  """
  from gaussjax.fitting._density import rendered_det
  from gaussjax.rendering._render import make_plan, resolve_backend
  h, w, c = image.shape
  backend = resolve_backend(backend)
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  fwd, inv = qz._color_matrices(c)
  st = qz.color_steps(np.asarray(g.chol, np.float64), h, w, qsteps)  # [N, C]
  col = np.clip(np.asarray(g.colors, np.float64) @ fwd.T, -qz.COLOR_MAX, qz.COLOR_MAX) / st
  q = np.rint(col)
  qmax = np.floor(qz.COLOR_MAX / st)
  # ∫ w² over the image: π sqrt(det Σ) times the share of w² on the image.
  energy = math.pi * np.sqrt(rendered_det(g.chol)) * _image_share(g, h, w)
  curv = energy[:, None] * st ** 2 * np.sum(inv ** 2, 0)[None]
  bit_weight = weight * c / 2.0  # weight · bits / (H W) in units of ½ SSE / (H W C)
  plan = make_plan(g, h, w, backend=backend)
  target = jnp.asarray(image, jnp.float32)
  colors = lambda q: np.asarray((q * st) @ inv.T, np.float32)

  def bits(q):
    loc, scale = _rate._fit_laplace(q, np.ones((len(q), 1)), np)
    return -_rate.laplace_log2_prob(q, loc, scale, np), loc, scale

  def evaluate(q):
    (half_sse, overflow), grad = _half_sse_grad(g._replace(colors=colors(q)), target, h, w,
                                                backend, plan)
    if bool(overflow):
      return None
    b, loc, scale = bits(q)
    return float(half_sse) + bit_weight * float(np.sum(b)), (grad, b, loc, scale)

  def propose(q, aux):
    grad, b, loc, scale = aux
    dq = (np.asarray(grad, np.float64) @ inv) * st  # d(½ SSE) / d(latent)
    move, gain = np.zeros_like(q), np.zeros_like(q)
    for m in (-2.0, -1.0, 1.0, 2.0):
      d = dq * m + 0.5 * curv * m * m
      if bit_weight:
        d = d + bit_weight * (-_rate.laplace_log2_prob(q + m, loc, scale, np) - b)
      d = np.where(np.abs(q + m) <= qmax, d, 0.0)
      better = d < gain
      move, gain = np.where(better, m, move), np.where(better, d, gain)
    return move

  best_q = _integer_descent(q, evaluate, propose, sweeps)
  return g if best_q is None else g._replace(colors=colors(best_q))


def _rd_round_chol(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps, weight: float, *,
                   backend: str = "auto", sweeps: int = ROUND_SWEEPS) -> Gaussians:
  """Cholesky factors on the quantiser grid that minimise ``MSE + weight · bpp``, by integer descent.

  The twin of ``_rd_round_colors`` for the shape latents (``log l11``,
  shear, ``log l22``; ``_quantize``), run where the sequential fine-tuning
  quantises the factors (the colours, still in float, are fine-tuned after
  it): ``_footprint_descent`` with one step up or down of each latent, the
  footprint change ``∫ (w' - w)²`` in closed form (``_footprint_change``)
  and the bits of the stream's Laplace model (``_rate``).

  Returns ``g`` with factors exactly on the grid (``encode_gaussians`` keeps
  them); ``g`` unchanged when the render overflows its plan. What it buys:
  ``benchmarks/results/codec_ablation_chol.md``.
  """
  h, w, _ = image.shape
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  logs, shear = qz._chol_latents(np.asarray(g.chol, np.float64), h, w, qsteps, np)
  q = np.rint(np.stack([logs[:, 0], shear, logs[:, 1]], -1))  # file order
  lo, hi = qz.shape_symbol_range(h, w, qsteps)
  steps3 = np.array([qsteps.scale, qsteps.shear, qsteps.scale])
  to_gaussians = lambda q: g._replace(
      chol=np.asarray(_latents_to_chol(q, steps3, np), np.float32))
  footprint = lambda q, trial: _footprint_change(_chol_cov(q, steps3), _chol_cov(trial, steps3))
  best = _footprint_descent(g, image, q, to_gaussians, footprint, lo[2:], hi[2:], weight,
                            backend=backend, sweeps=sweeps)
  return g if best is None else to_gaussians(best)


def _rd_round_means(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps, *,
                    backend: str = "auto", sweeps: int = ROUND_SWEEPS) -> Gaussians:
  """Means on the position grid of least MSE, by integer descent (distortion only).

  Run where the sequential fine-tuning quantises the means (the factors and
  colours, still in float, are fine-tuned after it): ``_footprint_descent``
  with one grid step along x or y, the footprint change of the shift in
  closed form (``_shift_footprint``). The bits of a position depend on its
  neighbours along the Morton curve, so no rate term.

  Returns ``g`` with means exactly on the grid; ``g`` unchanged when the
  render overflows its plan. What it buys: ``benchmarks/results/codec_ablation_means.md``.
  """
  h, w, _ = image.shape
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  pos, _, _, _ = qz._latents(tuple(np.asarray(x, np.float64) for x in g), h, w, qsteps, np)
  # In units of each Gaussian's own step (pos_levels: from its factor and colour now).
  mult = qz.position_multiple(g, h, w, qsteps)[:, None]
  m = qz.margin(h, w)
  lo, hi = qz.shape_symbol_range(h, w, qsteps)
  hi = np.floor(hi[None, :2] / mult)
  q = np.minimum(np.rint(pos / mult), hi)
  step = qsteps.pos * mult
  to_gaussians = lambda q: g._replace(means=np.asarray(q * step - m, np.float32))
  footprint = lambda q, trial: _shift_footprint(g.chol, (trial - q) * step)
  best = _footprint_descent(g, image, q, to_gaussians, footprint, lo[:2], hi.T, 0.0,
                            backend=backend, sweeps=sweeps)
  return g if best is None else to_gaussians(best)


def _shift_footprint(chol, delta) -> np.ndarray:
  """``[N]`` ``∫ (w(x - δ) - w(x))²`` over the plane: unit-peak profiles of the factors
  ``chol [N, 3]`` (with the prefilter) shifted by ``delta [N, 2]``.

  ``2π sqrt(det Σ) (1 - exp(-δᵀ Σ⁻¹ δ / 4))``.
  """
  from gaussjax.core._gaussians import rendered_covariance
  sxx, sxy, syy, det = rendered_covariance(np.asarray(chol, np.float64))
  dx, dy = np.asarray(delta, np.float64).T
  quad = (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det  # δᵀ Σ⁻¹ δ
  return 2.0 * math.pi * np.sqrt(det) * -np.expm1(-quad / 4.0)


def _footprint_descent(g: Gaussians, image: jax.Array, q: np.ndarray, to_gaussians, footprint,
                       qlo, qhi, weight: float, *, backend: str, sweeps: int) -> np.ndarray | None:
  """Integer descent on a shape field's latents ``q [N, K]`` (``_integer_descent``).

  Each sweep weighs a move of one step up or down of each of the K latents
  of each Gaussian. Moving Gaussian ``i`` alone changes its footprint
  ``w → w'`` and ½ SSE by exactly ``c · Σ_p e(p) (w'(p) - w(p)) + ½ |c|²
  Σ_p (w' - w)²`` (``e`` the residual): the first term from one render's
  colour gradient per kind of move, the second from ``footprint(q, trial)``
  (``[N]`` ``∫ (w' - w)²`` over the plane of unit-peak profiles) times the
  Gaussian's share on the image. With ``weight`` > 0 it adds ``weight · C /
  2`` times the change of the latent's bits under its stream's Laplace model
  (``_rate``), in the units of ``_rd_round_colors``. Each Gaussian proposes
  its best move; a random share of them is applied (neighbours interact),
  and the result is never worse than ``q``.

  ``to_gaussians(q)``: the Gaussians with the field at latents ``q``;
  ``qlo``, ``qhi``: per latent, the range the symbols must stay in. Returns
  the best latents, or None when the render overflowed its plan.
  """
  from gaussjax.rendering._render import make_plan, resolve_backend
  h, w, c = image.shape
  backend = resolve_backend(backend)
  colors = np.asarray(g.colors, np.float64)
  # |c|² times the share of w² on the image (and the profile's peak scale, squared).
  energy = np.sum(colors ** 2, -1) * _image_share(g, h, w) * constants.WEIGHT_SCALE ** 2
  bit_weight = weight * c / 2.0
  plan = make_plan(g, h, w, backend=backend)
  target = jnp.asarray(image, jnp.float32)

  def bits(q):
    loc, scale = _rate._fit_laplace(q, np.ones((len(q), 1)), np)
    return -_rate.laplace_log2_prob(q, loc, scale, np), loc, scale

  def evaluate(q):
    gq = to_gaussians(q)
    residual = _residual(gq, target, h, w, backend, plan)
    corr, overflow = _residual_correlation(gq, residual, h, w, backend, plan)  # Σ e w
    if bool(overflow):
      return None
    half_sse = 0.5 * float(jnp.sum(jnp.square(residual)))
    if not bit_weight:
      return half_sse, (residual, corr, None)
    rate = bits(q)
    return half_sse + bit_weight * float(np.sum(rate[0])), (residual, corr, rate)

  def propose(q, aux):
    residual, corr, rate = aux
    base = np.sum(colors * np.asarray(corr, np.float64), -1)  # c · Σ e w
    best_d = np.zeros(len(q))
    move = np.zeros_like(q)
    for k in range(q.shape[1]):
      for m in (-1.0, 1.0):
        trial = q.copy()
        trial[:, k] = np.clip(trial[:, k] + m, qlo[k], qhi[k])
        corr_m, overflow = _residual_correlation(to_gaussians(trial), residual, h, w, backend,
                                                 plan)
        if bool(overflow):
          continue
        d = (np.sum(colors * np.asarray(corr_m, np.float64), -1) - base
             + 0.5 * energy * footprint(q, trial))
        if rate is not None:
          b, loc, scale = rate
          d = d + bit_weight * (-_rate.laplace_log2_prob(trial[:, k], loc[k], scale[k], np)
                                - b[:, k])
        d = np.where(trial[:, k] != q[:, k], d, 0.0)
        better = d < best_d
        best_d = np.where(better, d, best_d)
        move[better] = 0.0
        move[better, k] = m
    return move

  return _integer_descent(q, evaluate, propose, sweeps)


def _latents_to_chol(q, steps3, xp):
  """``[N, 3]`` Cholesky factors of shape latents ``(log l11, shear, log l22)`` in step units."""
  l11 = xp.exp(q[:, 0] * steps3[0])
  l22 = xp.exp(q[:, 2] * steps3[2])
  return xp.stack([l11, xp.sinh(q[:, 1] * steps3[1]) * l22, l22], -1)


def _chol_cov(q, steps3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """``(Σxx, Σxy, Σyy, det Σ)`` of the rendered covariances of shape latents (float64)."""
  from gaussjax.core._gaussians import rendered_covariance
  return rendered_covariance(_latents_to_chol(q, steps3, np))


def _footprint_change(cov, new) -> np.ndarray:
  """``[N]`` ``∫ (w' - w)²`` over the plane of unit-peak Gaussian profiles of covariances ``cov``
  and ``new`` (``(Σxx, Σxy, Σyy, det Σ)`` each, as ``rendered_covariance`` gives them)."""
  d0, d1 = cov[3], new[3]
  # Σ⁻¹ + Σ'⁻¹, entrywise.
  a = cov[2] / d0 + new[2] / d1
  b = -cov[1] / d0 - new[1] / d1
  cc = cov[0] / d0 + new[0] / d1
  return math.pi * (np.sqrt(d1) + np.sqrt(d0)) - 4.0 * math.pi / np.sqrt(a * cc - b * b)


def _integer_descent(q: np.ndarray, evaluate, propose, sweeps: int) -> np.ndarray | None:
  """Integer coordinate descent of ``_rd_round_colors`` and ``_footprint_descent``.

  ``evaluate(q)``: ``(objective, aux)``, or None when the render overflowed
  its plan; ``propose(q, aux)``: the move of each element (same shape as
  ``q``; 0 for none). Each sweep applies a random ``ROUND_SHARE`` of the
  proposed moves; a sweep that made the objective worse is undone and the
  share halved. Returns the best ``q`` seen (never worse than the start), or
  None when the first render overflowed.
  """
  rng = np.random.default_rng(0)
  best_q, best_j, best, share = q, math.inf, None, ROUND_SHARE
  for _ in range(sweeps):
    result = evaluate(q)
    if result is None:
      return None if best is None else best_q
    j, aux = result
    if j >= best_j:  # the last sweep overshot: undo it, move less
      q, share = best_q, share / 2
      if share < 0.02:
        break
      aux = best
    else:
      best_q, best_j, best = q, j, aux
    move = propose(q, aux)
    chosen = (move != 0) & (rng.random(q.shape) < share)
    if not chosen.any():
      break
    q = q + np.where(chosen, move, 0.0)
  return best_q


def _finetune_rate(g: Gaussians, image: jax.Array, qsteps: qz.QuantSteps,
                   config: CodecConfig) -> _rate.RateTerm | None:
  """The rate term of the fine-tuning (None when ``config.rate_weight`` is 0).

  λ (``_rate.rd_lambda``) at the operating point of ``g``: the MSE of its
  decoded file and the target rate (or, without one, the rate of that file),
  at ``config.rd_slope`` dB per doubling (1.75 when the step search is off).
  """
  if config.rate_weight == 0:
    return None
  h, w = image.shape[:2]
  data = encode_gaussians(g, h, w, steps=qsteps)
  decoded, _ = decode_single(data)
  mse = float(jnp.mean((jnp.clip(render_safe(decoded, h, w, backend=config.backend), 0, 1)
                        - image) ** 2))
  bpp = config.bpp if config.bpp is not None else 8.0 * len(data) / (h * w)
  lam = _rate.rd_lambda(max(mse, 1e-8), bpp, config.rd_slope or 1.75)
  return _rate.rate_term(config.rate_weight * lam, qsteps)


def render_safe(gaussians: Gaussians, height: int, width: int, *, backend: str = "auto",
                source_size: tuple[int, int] | None = None) -> jax.Array:
  """``render`` for concrete Gaussians that is always complete.

  Same result as ``gaussjax.render``; the renderer re-plans while a render
  reports overflow (``_render.render_complete``; defensive: a fresh plan
  should never overflow).
  """
  from gaussjax.rendering._render import render_complete
  # numpy stays numpy (a decoder's Gaussians): the renderer's jitted call
  # takes it as it is, without a dispatch per array here.
  g = Gaussians(*(np.asarray(x, np.float32) if isinstance(x, np.ndarray) else
                  jnp.asarray(x, jnp.float32) for x in gaussians))
  if source_size is not None and tuple(source_size) != (height, width):
    g = scale_gaussians(g, height / source_size[0], width / source_size[1])
  return render_complete(g, height, width, backend=backend)


def _as_image(image) -> jax.Array:
  """``check_image`` (uint8 / uint16 accepted), then the format's limits on size and channels."""
  arr = check_image(image, integers=True)
  h, w, c = arr.shape
  if not (1 <= h <= MAX_DIM and 1 <= w <= MAX_DIM) or h * w > constants.MAX_PIXELS:
    raise ValueError(f"image size {h}x{w} must be within {MAX_DIM} per side and "
                     f"MAX_PIXELS={constants.MAX_PIXELS}")
  if not 1 <= c <= MAX_CHANNELS:
    raise ValueError(f"image has {c} channels; gaussjax files hold 1 to {MAX_CHANNELS}")
  return jnp.asarray(arr, jnp.float32)


def _quality_settings(quality: float, height: int, width: int, channels: int):
  # At least 16 Gaussians, but never more than pixels (a 1x1 image gets one).
  n = min(max(16, int(round(height * width * 0.02 * (quality / 50.0) ** 2))), height * width)
  steps = qz.default_steps(channels).scaled(2.0 ** ((50.0 - quality) / 25.0))
  return n, steps


# The stages of ``encode``, in order, as ``_encode`` reports them to ``progress``.
ENCODE_STAGES = ("fit", "fine-tune", "code")


def _encode(image, config: CodecConfig, progress=None) -> bytes:
  """``encode`` of a single-level file, calling ``progress(stage)`` as each of
  ``ENCODE_STAGES`` starts.

  ``"code"`` includes the rate search when ``config.bpp`` is set. The
  ``gaussjax encode`` command draws its progress bar from these calls.
  ``gaussjax.encode`` (``gaussjax.codec._formats``) sends ``levels > 1`` to
  ``gaussjax.codec._progressive`` instead.
  """
  if not isinstance(config, CodecConfig):
    raise TypeError(f"config must be a CodecConfig, got {type(config).__name__}")
  report = progress or (lambda stage: None)
  image = _as_image(image)
  if config.levels > 1:
    raise ValueError(f"levels={config.levels}: a progressive file (gaussjax.encode)")
  report("fit")
  g, steps = _first_fit(image, config)
  report("fine-tune")
  g = _finetune(g, image, steps, config)
  report("code")
  return _code(image, g, steps, config)


def qat_learning_rate(config: CodecConfig) -> float:
  """Peak learning rate of straight-through fine-tuning (``finetune="ste"``)."""
  return config.learning_rate / 20


def _fit_settings(h: int, w: int, c: int, config: CodecConfig):
  """``(N, quantiser steps)`` that the first half of ``encode``'s fit starts from.

  Raises ValueError when a ``bpp`` target is below the smallest file.
  """
  if config.bpp is None:
    n, steps = _quality_settings(config.quality or 50.0, h, w, c)
    return config.num_gaussians or n, dataclasses.replace(
        steps, color_size=config.color_size, pos_levels=config.pos_levels)
  target = bytes_for_bpp(config.bpp, h, w)
  steps = dataclasses.replace(qz.default_steps(c), color_size=config.color_size,
                              pos_levels=config.pos_levels)
  smallest = len(encode_gaussians(
      Gaussians(np.zeros((1, 2), np.float32), np.ones((1, 3), np.float32),
                np.zeros((1, c), np.float32)), h, w, steps=steps))
  if smallest > target * (1 + config.rate_tolerance):
    least = bpp(smallest, h, w)
    raise ValueError(
        f"a target of {config.bpp:g} bpp ({target:.0f} bytes) is below the smallest file for "
        f"a {w}x{h} image ({smallest} bytes = {least:.3g} bpp)"
        + ("; an image this small needs a quality instead (bpp is at most 64)"
           if least > 64 else ""))
  n = config.num_gaussians or max(4, int(math.ceil(8 * target / config.bits_per_gaussian)))
  n = min(n, h * w)  # never more Gaussians than pixels
  return n, steps


def _code(image: jax.Array, g: Gaussians, steps, config: CodecConfig) -> bytes:
  """The rest of ``encode`` after the first float fit and QAT (``g``, ``steps``).

  Codes the Gaussians; with ``bpp``, runs the rate controller (which may prune,
  fine-tune or fit again). ``gaussjax.encode_batch`` does the fits of many
  images at once and calls this per image.
  """
  h, w, _ = image.shape
  if config.bpp is None:
    return encode_gaussians(g, h, w, steps=steps)
  return _encode_rate(image, config, g, steps)


def _encode_rate(image: jax.Array, config: CodecConfig, g: Gaussians, steps) -> bytes:
  """The rate controller: a file within ``config.rate_tolerance`` of the target.

  The Gaussians' own file is kept when it is within the tolerance. Otherwise
  they are pruned (too large) or the steps refined (too small) to aim at half
  the tolerance, then fine-tuned again at the new steps (Gaussians fine-tuned
  for one quantiser grid lose that on another), and the size fitted once more.
  """
  h, w, c = image.shape
  target = bytes_for_bpp(config.bpp, h, w)
  tol = config.rate_tolerance
  lo_ok, hi_ok = target * (1 - tol), target * (1 + tol)
  aim = (target * (1 - tol / 2), target * (1 + tol / 2))
  n = g.num_gaussians
  for attempt in range(3):
    if attempt:
      g = _fit_float(image, n, config)
      g = _finetune(g, image, steps, config)
    data = encode_gaussians(g, h, w, steps=steps)
    if lo_ok <= len(data) <= hi_ok:
      return data
    # Aim at half the tolerance; accept the full tolerance when that fails.
    order = _prune_order(g, image, steps, config.backend) if config.rd_prune else None
    data, g_fit, steps_fit = _fit_size(g, h, w, steps, *aim, order=order)
    if data is None:
      data, g_fit, steps_fit = _fit_size(g, h, w, steps, lo_ok, hi_ok, order=order)
    if data is None:  # too few Gaussians even with the finest steps: refit with more
      size = len(encode_gaussians(g, h, w, steps=steps.scaled(0.25)))
      n = int(math.ceil(n * 1.15 * target / max(size, 1)))
      if n > MAX_GAUSSIANS:
        break
      continue
    if config.qat_steps:
      # Fine-tune what was pruned or re-stepped, then fit the size again.
      g2 = _finetune(g_fit, image, steps_fit, config, iterations=max(2, config.qat_steps // 3))
      data2 = encode_gaussians(g2, h, w, steps=steps_fit)
      if not lo_ok <= len(data2) <= hi_ok:
        order2 = _prune_order(g2, image, steps_fit, config.backend) if config.rd_prune else None
        data2, _, _ = _fit_size(g2, h, w, steps_fit, lo_ok, hi_ok, order=order2)
      if data2 is not None:
        return data2
    return data
  raise ValueError(f"could not reach bpp={config.bpp} within {tol:.0%} for a {h}x{w} image")


def _fit_size(g, h, w, steps, lo_ok, hi_ok, order=None):
  """Prunes (by importance) or refines steps until the file size is in range.

  ``order``: the Gaussians, most important first (``_prune_order``); None:
  by energy (``fitting._density.contributions``). Returns ``(data,
  gaussians, steps)``, with ``data`` None when even the finest steps give a
  file smaller than ``lo_ok``.
  """
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  data = encode_gaussians(g, h, w, steps=steps)
  if lo_ok <= len(data) <= hi_ok:
    return data, g, steps
  if len(data) > hi_ok:
    if order is None:
      from gaussjax.fitting._density import contributions
      order = np.argsort(-contributions(g), kind="stable")
    lo, hi = 1, g.num_gaussians  # size(lo) <= target assumed, size(hi) > target
    best = None
    while lo <= hi:
      mid = (lo + hi) // 2
      sub = g.select(np.sort(order[:mid]))
      d = encode_gaussians(sub, h, w, steps=steps)
      if len(d) <= hi_ok:
        best = (d, sub, steps)
        if len(d) >= lo_ok:
          return best
        lo = mid + 1
      else:
        hi = mid - 1
    return best if best is not None else (None, g, steps)
  # Too small with every Gaussian: finer steps (bisection on a step factor).
  flo, fhi = 0.25, 1.0  # size(flo) hopefully > target, size(fhi) < target
  if len(encode_gaussians(g, h, w, steps=steps.scaled(flo))) < lo_ok:
    return None, g, steps
  for _ in range(12):
    f = math.sqrt(flo * fhi)
    d = encode_gaussians(g, h, w, steps=steps.scaled(f))
    if lo_ok <= len(d) <= hi_ok:
      return d, g, steps.scaled(f)
    if len(d) > hi_ok:
      flo = f
    else:
      fhi = f
  return None, g, steps


def _prune_order(g: Gaussians, image: jax.Array, steps: qz.QuantSteps,
                 backend: str) -> np.ndarray:
  """The Gaussians by distortion change per bit, most valuable first.

  ``_removal_delta`` divided by the Gaussian's estimated bits
  (``_rate.gaussian_bits``).
  """
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  h, w = image.shape[:2]
  value = _removal_delta(g, image, backend) / np.maximum(_rate.gaussian_bits(g, h, w, steps), 1.0)
  return np.argsort(-value, kind="stable")


def _removal_delta(g: Gaussians, image: jax.Array, backend: str) -> np.ndarray:
  """``[N]`` increase of the squared error (summed over pixels) when Gaussian ``i`` alone goes.

  The render is linear in the colours, so it is ``‖c_i w_i‖² - 2 c_i ·
  Σ_p e(p) w_i(p)`` (``e`` the residual): the energy (``contributions``)
  times the share of ``w_i²`` that falls on the image (a Gaussian partly
  outside it loses that part; cut-off neglected), less twice the colour
  times the colour gradient of ½ SSE. Falls back to the energy alone when
  the render overflows its plan.
  """
  from gaussjax.fitting._density import contributions
  from gaussjax.rendering._render import make_plan, resolve_backend
  g = Gaussians(*(np.asarray(x, np.float32) for x in g))
  h, w = image.shape[:2]
  backend = resolve_backend(backend)
  plan = make_plan(g, h, w, backend=backend)
  (_, overflow), grad = _half_sse_grad(g, jnp.asarray(image, jnp.float32), h, w, backend,
                                       plan)
  delta = contributions(g) * _image_share(g, h, w)
  if not bool(overflow):
    delta = delta - 2.0 * np.sum(g.colors * np.asarray(grad, np.float64), -1)
  return delta


def _image_share(g: Gaussians, height: int, width: int) -> np.ndarray:
  """``[N]`` share of each Gaussian's ``∫ w²`` that falls on the image (cut-off neglected).

  ``w²`` is a Gaussian of covariance Σ/2 (Σ with the prefilter): its mass on
  the image, as the product of the x and y marginals' masses.
  """
  from jax.scipy.special import ndtr
  chol = np.asarray(g.chol, np.float64)
  var = np.stack([chol[:, 0] ** 2, chol[:, 1] ** 2 + chol[:, 2] ** 2], -1) + constants.COV_FLOOR
  sd = np.sqrt(var / 2)
  mu = np.asarray(g.means, np.float64)
  size = np.asarray([width, height], np.float64)
  return np.prod(np.asarray(ndtr((size - mu) / sd)) - np.asarray(ndtr(-mu / sd)), -1)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _residual(g, image, height, width, backend, plan):
  """``[H, W, C]`` render minus ``image``."""
  from gaussjax.rendering._render import rasterize
  out, _ = rasterize(g, height, width, backend=backend, plan=plan)
  return out - image


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _residual_correlation(g, residual, height, width, backend, plan):
  """``([N, C] Σ_p residual(p) w_i(p), overflow flag)``: the colour gradient of ⟨residual, render⟩."""
  from gaussjax.rendering._render import rasterize

  def inner(colors):
    out, overflow = rasterize(g._replace(colors=colors), height, width, backend=backend,
                              plan=plan)
    return jnp.sum(out * residual), overflow
  (_, overflow), corr = jax.value_and_grad(inner, has_aux=True)(g.colors)
  return corr, overflow


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _half_sse_grad(g, image, height, width, backend, plan):
  """``((½ Σ (render - image)², overflow flag), its gradient in the colours)``."""
  from gaussjax.rendering._render import rasterize

  def half_sse(colors):
    out, overflow = rasterize(g._replace(colors=colors), height, width, backend=backend,
                              plan=plan)
    return 0.5 * jnp.sum((out - image) ** 2), overflow
  return jax.value_and_grad(half_sse, has_aux=True)(g.colors)
