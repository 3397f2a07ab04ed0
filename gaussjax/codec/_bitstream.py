"""Bytes in and out: bounded readers, entropy models and the ANS coder.

Everything here is plain numpy and ``constriction``; nothing depends on JAX.
The decoder side never trusts its input: every read is bounds-checked, every
size is compared with a documented limit before anything is allocated, and
every failure surfaces as ``DecodeError`` (see FORMAT.md).
"""

from __future__ import annotations

import struct

import constriction
import numpy as np


class DecodeError(ValueError):
  """The bytes are not a valid gaussjax file (truncated, corrupt or too large).

  The only exception ``gaussjax.decode``, ``decode_gaussians`` and ``info``
  raise for bad data. The message says what was wrong and where.
  """


class AlphabetError(ValueError):
  """A symbol stream spans more than ``MAX_ALPHABET`` values: these steps are too fine to code."""


# Largest alphabet of one symbol stream. Bounds the size of a stored histogram
# and of the probability table built from it (4096 float64 = 32 KiB).
MAX_ALPHABET = 4096

# Model kinds of a symbol stream (FORMAT.md, "Entropy models").
MODEL_CONSTANT = 0  # every symbol equals `lo`; nothing coded
MODEL_HISTOGRAM = 1  # n bytes of log-counts
MODEL_LAPLACE = 2  # f32 mean, f32 scale
MODEL_GAUSSIAN = 3  # f32 mean, f32 std
MODEL_NAMES = {MODEL_CONSTANT: "constant", MODEL_HISTOGRAM: "histogram",
               MODEL_LAPLACE: "laplace", MODEL_GAUSSIAN: "gaussian"}

# Histogram entries store round(HIST_SCALE · log2(1 + count)) in one byte; the
# decoder's probabilities are 2^(byte / HIST_SCALE) - 1. Relative error of a
# probability ≤ 2^(1/16) - 1 ≈ 4.4 %, which costs < 0.003 bits per symbol.
HIST_SCALE = 8.0


class Writer:
  """Little-endian byte writer."""

  def __init__(self):
    self.buf = bytearray()

  def u8(self, v: int):
    self.buf += struct.pack("<B", v)

  def u16(self, v: int):
    self.buf += struct.pack("<H", v)

  def u32(self, v: int):
    self.buf += struct.pack("<I", v)

  def f32(self, v: float):
    self.buf += struct.pack("<f", v)

  def varint(self, v: int):
    """Unsigned LEB128."""
    if v < 0:
      raise ValueError(f"varint of negative value {v}")
    while True:
      b = v & 0x7F
      v >>= 7
      if v:
        self.buf.append(b | 0x80)
      else:
        self.buf.append(b)
        return

  def svarint(self, v: int):
    """Zig-zag signed LEB128."""
    self.varint((v << 1) if v >= 0 else ((-v << 1) - 1))

  def raw(self, b: bytes):
    self.buf += b


class Reader:
  """Bounds-checked little-endian reader; every overrun is a ``DecodeError``."""

  def __init__(self, data: bytes, end: int | None = None):
    self.data = data
    self.pos = 0
    self.end = len(data) if end is None else end

  def take(self, n: int, what: str) -> bytes:
    if n < 0 or self.pos + n > self.end:
      raise DecodeError(
          f"truncated: {what} needs {n} bytes at offset {self.pos}, "
          f"only {self.end - self.pos} left")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def u8(self, what: str) -> int:
    return self.take(1, what)[0]

  def u16(self, what: str) -> int:
    return struct.unpack("<H", self.take(2, what))[0]

  def u32(self, what: str) -> int:
    return struct.unpack("<I", self.take(4, what))[0]

  def f32(self, what: str) -> float:
    return struct.unpack("<f", self.take(4, what))[0]

  def varint(self, what: str, limit: int) -> int:
    """Unsigned LEB128 of at most 5 bytes, checked against ``limit``."""
    v = 0
    for i in range(5):
      b = self.u8(what)
      v |= (b & 0x7F) << (7 * i)
      if not b & 0x80:
        break
    else:
      raise DecodeError(f"{what}: varint longer than 5 bytes at offset {self.pos}")
    if v > limit:
      raise DecodeError(f"{what}={v} is over the limit {limit}")
    return v

  def svarint(self, what: str, limit: int) -> int:
    z = self.varint(what, 2 * limit + 1)
    v = (z >> 1) if not z & 1 else -((z + 1) >> 1)
    if abs(v) > limit:
      raise DecodeError(f"{what}={v} is outside ±{limit}")
    return v


# ---------------------------------------------------------------------------
# Entropy models


class Model:
  """One symbol stream's model: symbols in ``[lo, lo + n)``.

  Attributes:
    kind: one of the ``MODEL_*`` constants.
    lo: smallest symbol.
    n: alphabet size (``1 ≤ n ≤ MAX_ALPHABET``).
    params: histogram bytes (``uint8 [n]``) or ``(mean, scale)`` floats.
  """

  def __init__(self, kind: int, lo: int, n: int, params):
    self.kind, self.lo, self.n, self.params = kind, lo, n, params

  # -- serialisation --------------------------------------------------------

  def write(self, w: Writer):
    w.u8(self.kind)
    w.svarint(self.lo)
    w.varint(self.n - 1)
    if self.kind == MODEL_HISTOGRAM:
      w.raw(bytes(np.asarray(self.params, np.uint8)))
    elif self.kind in (MODEL_LAPLACE, MODEL_GAUSSIAN):
      w.f32(self.params[0])
      w.f32(self.params[1])

  @staticmethod
  def read(r: Reader, what: str, lo_limit: int) -> "Model":
    kind = r.u8(f"{what} model kind")
    if kind not in MODEL_NAMES:
      raise DecodeError(f"{what}: unknown model kind {kind}")
    lo = r.svarint(f"{what} lo", lo_limit)
    n = r.varint(f"{what} alphabet size - 1", MAX_ALPHABET - 1) + 1
    if kind == MODEL_CONSTANT:
      params = None
    elif kind == MODEL_HISTOGRAM:
      if n < 2:
        raise DecodeError(f"{what}: histogram model needs an alphabet of at least 2, got {n}")
      params = np.frombuffer(r.take(n, f"{what} histogram"), np.uint8)
      if not params.any():
        raise DecodeError(f"{what}: histogram is all zero")
    else:
      if n < 2:
        raise DecodeError(f"{what}: parametric model needs an alphabet of at least 2, got {n}")
      mean, scale = r.f32(f"{what} mean"), r.f32(f"{what} scale")
      if not (np.isfinite(mean) and abs(mean) <= 2 * (abs(lo) + n)):
        raise DecodeError(f"{what}: model mean {mean} is outside its alphabet's range")
      if not (np.isfinite(scale) and 1e-3 <= scale <= 1e6):
        raise DecodeError(f"{what}: model scale {scale} is outside [1e-3, 1e6]")
      params = (mean, scale)
    return Model(kind, lo, n, params)

  # -- constriction ---------------------------------------------------------

  def constriction_model(self):
    if self.kind == MODEL_HISTOGRAM:
      probs = np.exp2(self.params.astype(np.float64) / HIST_SCALE) - 1.0
      return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)
    mean, scale = (float(p) for p in self.params)
    family = (constriction.stream.model.QuantizedLaplace if self.kind == MODEL_LAPLACE
              else constriction.stream.model.QuantizedGaussian)
    # Symbols are shifted to [0, n) so the model's support is exactly the alphabet.
    return family(0, self.n - 1, mean - self.lo, scale)

  def describe(self) -> str:
    extra = ""
    if self.kind in (MODEL_LAPLACE, MODEL_GAUSSIAN):
      extra = f" mean={self.params[0]:.3g} scale={self.params[1]:.3g}"
    return f"{MODEL_NAMES[self.kind]} [{self.lo}, {self.lo + self.n}){extra}"


def _candidate_models(symbols: np.ndarray) -> list[Model]:
  lo, hi = int(symbols.min()), int(symbols.max())
  n = hi - lo + 1
  if n > MAX_ALPHABET:
    raise AlphabetError(f"symbol range [{lo}, {hi}] is wider than MAX_ALPHABET={MAX_ALPHABET}"
                        " (quantiser steps too fine for these values)")
  if n == 1:
    return [Model(MODEL_CONSTANT, lo, 1, None)]
  counts = np.bincount(symbols - lo, minlength=n)
  hist = np.minimum(np.round(HIST_SCALE * np.log2(1.0 + counts)), 255).astype(np.uint8)
  models = [Model(MODEL_HISTOGRAM, lo, n, hist)]
  x = symbols.astype(np.float64)
  mean = float(np.float32(np.mean(x)))
  median = float(np.float32(np.median(x)))
  b = float(np.float32(max(np.mean(np.abs(x - median)), 0.05)))
  std = float(np.float32(max(np.std(x), 0.2)))
  models.append(Model(MODEL_LAPLACE, lo, n, (median, b)))
  models.append(Model(MODEL_GAUSSIAN, lo, n, (mean, std)))
  return models


def model_bytes(model: Model) -> int:
  w = Writer()
  model.write(w)
  return len(w.buf)


def coded_bits(symbols: np.ndarray, model: Model) -> float:
  """Exact cost in bits of coding ``symbols`` with ``model`` (ANS, amortised)."""
  if model.kind == MODEL_CONSTANT:
    return 0.0
  coder = constriction.stream.stack.AnsCoder()
  coder.encode_reverse((symbols - model.lo).astype(np.int32), model.constriction_model())
  return float(coder.num_bits())


def choose_model(symbols: np.ndarray) -> Model:
  """The model with the fewest total bits (its own bytes + coded symbols).

  Args:
    symbols: ``int [M]`` with ``M ≥ 1``.

  Returns:
    The cheapest of: constant, log-count histogram, quantised Laplace,
    quantised Gaussian.
  """
  symbols = np.asarray(symbols, np.int64)
  best, best_bits = None, np.inf
  for model in _candidate_models(symbols):
    bits = 8 * model_bytes(model) + coded_bits(symbols, model)
    if bits < best_bits:
      best, best_bits = model, bits
  return best


class Encoder:
  """Collects symbol blocks in decode order, then codes them into one ANS stream."""

  def __init__(self):
    self.blocks = []

  def add(self, symbols: np.ndarray, model: Model):
    if model.kind != MODEL_CONSTANT and len(symbols):
      self.blocks.append(("model", np.asarray(symbols, np.int64) - model.lo, model))

  def add_uniform(self, values: np.ndarray, bits: np.ndarray):
    """Raw values ``0 ≤ values < 2^bits`` (per element, ``bits ≤ 16``; 0 = skip)."""
    keep = bits > 0
    if keep.any():
      self.blocks.append(("uniform", np.asarray(values[keep], np.int32),
                          (np.int32(1) << bits[keep].astype(np.int32))))

  def finish(self) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    for kind, symbols, model in reversed(self.blocks):
      if kind == "model":
        coder.encode_reverse(symbols.astype(np.int32), model.constriction_model())
      else:
        coder.encode_reverse(symbols, constriction.stream.model.Uniform(), model)
    return coder.get_compressed().astype("<u4").tobytes()


class Decoder:
  """Decodes symbol blocks in order from one ANS stream."""

  def __init__(self, payload: bytes):
    if len(payload) % 4:
      raise DecodeError(f"payload of {len(payload)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(payload, "<u4").astype(np.uint32)
    try:
      self.coder = constriction.stream.stack.AnsCoder(words) if len(words) else None
    except Exception as e:  # constriction rejects e.g. a trailing zero word
      raise DecodeError(f"payload is not a valid ANS stream: {e}") from None

  def _need(self):
    if self.coder is None:
      raise DecodeError("payload is empty but symbols are expected")

  def read(self, model: Model, count: int) -> np.ndarray:
    if model.kind == MODEL_CONSTANT or count == 0:
      return np.full(count, model.lo, np.int64)
    self._need()
    out = _guarded(lambda: self.coder.decode(model.constriction_model(), count))
    out = np.asarray(out, np.int64)
    if out.shape != (count,) or (out < 0).any() or (out >= model.n).any():
      raise DecodeError("entropy decoder produced symbols outside the model's alphabet")
    return out + model.lo

  def read_uniform(self, bits: np.ndarray) -> np.ndarray:
    out = np.zeros(bits.shape, np.int64)
    keep = bits > 0
    if keep.any():
      self._need()
      sizes = np.int32(1) << bits[keep].astype(np.int32)
      vals = _guarded(lambda: self.coder.decode(constriction.stream.model.Uniform(), sizes))
      out[keep] = np.asarray(vals, np.int64)
    return out


def _guarded(fn):
  try:
    return fn()
  except Exception as e:
    raise DecodeError(f"entropy decoding failed: {e}") from None
  except BaseException as e:  # pyo3's PanicException derives from BaseException
    if type(e).__name__ == "PanicException":
      raise DecodeError(f"entropy decoding failed: {e}") from None
    raise
