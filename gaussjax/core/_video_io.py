"""Reading and writing video frames.

Frames in gaussjax are float32 ``[H, W, C]`` arrays in [0, 1], as images are;
a whole clip is ``[T, H, W, C]``. ``open_video`` checks a source before any
frame is decoded (size, frame count where the container says it, every
frame's size in a folder) and returns a ``VideoSource`` that yields frames one
at a time, so a long clip is never held in memory; ``read_video`` stacks them.

Sources:

* a folder of frames (PNG, JPEG, ...; sorted by file name), through Pillow;
* raw 8-bit YUV 4:2:0 (``.yuv``, planar I420, no header) of a given size;
* YUV4MPEG2 (``.y4m``), 4:2:0, 4:4:4 or mono;
* containers (MP4, MKV, WebM, MOV, AVI) through PyAV, the optional extra
  ``pip install "gaussjax[video]"``.

YUV is converted to RGB with the BT.601 limited-range matrix (Y in [16, 235],
chroma in [16, 240]), what the test clips of ``shared/data/video`` were made
with; chroma is upsampled by repeating each sample.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from fractions import Fraction

import numpy as np
from PIL import Image, UnidentifiedImageError

from gaussjax import constants
from gaussjax.core._io import load_image, save_image

# File extensions of the folder reader and of the PyAV reader.
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CONTAINER_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".gif")

# BT.601 limited range, YCbCr (offsets 16/128, scale 219/224) to RGB in [0, 1].
_BT601 = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])

MISSING_AV = ("reading or writing {what} needs PyAV, the optional extra: "
              "pip install \"gaussjax[video]\"")


class VideoError(ValueError):
  """A video source that cannot be read (missing, empty, inconsistent)."""


@dataclasses.dataclass
class VideoSource:
  """A checked video source: its size, and frames on demand.

  Attributes:
    path: where the frames come from.
    height: frame rows.
    width: frame columns.
    channels: colour channels of each frame (1 or 3; 4 for RGBA images).
    num_frames: number of frames, or None when the container does not say.
    fps: frames per second (None when unknown).
    kind: ``"folder"``, ``"yuv"``, ``"y4m"`` or ``"av"``.
  """

  path: str
  height: int
  width: int
  channels: int
  num_frames: int | None
  fps: float | None
  kind: str
  _frames: Callable[[], Iterator[np.ndarray]] = dataclasses.field(repr=False, default=None)

  def __iter__(self) -> Iterator[np.ndarray]:
    """Yields float32 ``[H, W, C]`` frames in [0, 1], one at a time."""
    count = 0
    for frame in self._frames():
      if frame.shape != (self.height, self.width, self.channels):
        raise VideoError(f"{self.path}: frame {count} is {frame.shape}, the first was "
                         f"{(self.height, self.width, self.channels)}")
      count += 1
      yield frame
    if count == 0:
      raise VideoError(f"{self.path}: no frames could be decoded")


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """BT.601 limited-range YCbCr 4:2:0 (uint8 planes) to float32 RGB ``[H, W, 3]``.

  Args:
    y: ``[H, W]`` luma.
    u: ``[ceil(H/2), ceil(W/2)]`` Cb.
    v: ``[ceil(H/2), ceil(W/2)]`` Cr.
  """
  h, w = y.shape
  u = np.repeat(np.repeat(u, 2, 0), 2, 1)[:h, :w]
  v = np.repeat(np.repeat(v, 2, 0), 2, 1)[:h, :w]
  return _ycbcr_to_rgb(y, u, v)


def _ycbcr_to_rgb(y, u, v) -> np.ndarray:
  ycc = np.stack([(y.astype(np.float32) - 16.0) / 219.0, (u.astype(np.float32) - 128.0) / 224.0,
                  (v.astype(np.float32) - 128.0) / 224.0], -1)
  return np.clip(ycc @ _BT601.T.astype(np.float32), 0.0, 1.0).astype(np.float32)


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Inverse of ``yuv420_to_rgb`` (chroma averaged over 2x2 blocks), uint8 planes."""
  rgb = np.asarray(rgb, np.float64)
  ycc = rgb @ np.linalg.inv(_BT601).T
  y = np.clip(np.rint(ycc[..., 0] * 219.0 + 16.0), 0, 255).astype(np.uint8)
  h, w = y.shape
  ph, pw = -h % 2, -w % 2
  chroma = np.pad(ycc[..., 1:], ((0, ph), (0, pw), (0, 0)), mode="edge")
  chroma = chroma.reshape((h + ph) // 2, 2, (w + pw) // 2, 2, 2).mean((1, 3))
  u, v = (np.clip(np.rint(chroma[..., k] * 224.0 + 128.0), 0, 255).astype(np.uint8)
          for k in (0, 1))
  return y, u, v


def parse_size(text: str) -> tuple[int, int]:
  """``"WxH"`` to ``(width, height)``; ValueError with the reason otherwise."""
  m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
  if not m:
    raise ValueError(f"size {text!r} must be WIDTHxHEIGHT, e.g. 352x288")
  width, height = int(m.group(1)), int(m.group(2))
  if width < 1 or height < 1 or width * height > constants.MAX_PIXELS:
    raise ValueError(f"size {width}x{height} must be positive and at most "
                     f"MAX_PIXELS={constants.MAX_PIXELS} pixels")
  return width, height


def _check_size(path, width, height):
  if width < 1 or height < 1 or width * height > constants.MAX_PIXELS:
    raise VideoError(f"{path}: frame size {width}x{height} must be positive and at most "
                     f"MAX_PIXELS={constants.MAX_PIXELS} pixels")


def open_video(path, *, size: tuple[int, int] | None = None,
               fps: float | None = None) -> VideoSource:
  """Checks a video source and returns a ``VideoSource`` (no frame decoded yet).

  Args:
    path: a folder of frame images, a ``.yuv`` (raw I420), ``.y4m`` or
      container file.
    size: ``(width, height)`` of a raw ``.yuv`` file (required there, unused
      elsewhere).
    fps: frame rate of a folder or ``.yuv`` (they carry none); None: unknown.

  Returns:
    ``VideoSource``; iterate over it for float32 ``[H, W, C]`` frames.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    VideoError: the source is empty, unreadable, has frames of different
      sizes, a raw file that is not a whole number of frames, or no ``size``
      for raw YUV.
    ImportError: a container file without PyAV installed.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  if os.path.isdir(path):
    return _open_folder(path, fps)
  ext = os.path.splitext(path)[1].lower()
  if ext == ".yuv":
    return _open_yuv(path, size, fps)
  if ext == ".y4m":
    return _open_y4m(path)
  if ext in CONTAINER_EXTENSIONS:
    return _open_av(path)
  with open(path, "rb") as f:
    head = f.read(10)
  if head.startswith(b"YUV4MPEG2"):
    return _open_y4m(path)
  if size is not None:
    return _open_yuv(path, size, fps)
  return _open_av(path)


def read_video(path, *, size: tuple[int, int] | None = None,
               max_frames: int | None = None) -> np.ndarray:
  """All frames of a source (``open_video``) as float32 ``[T, H, W, C]``."""
  source = open_video(path, size=size)
  frames = []
  for frame in source:
    frames.append(frame)
    if max_frames is not None and len(frames) >= max_frames:
      break
  return np.stack(frames)


# ---------------------------------------------------------------------------
# Sources


def _open_folder(path: str, fps) -> VideoSource:
  names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS)
                 and not n.startswith("."))
  if not names:
    raise VideoError(f"{path}: the folder holds no frame images ({', '.join(FRAME_EXTENSIONS)})")
  sizes = {}
  for name in names:  # headers only: a size mismatch is found before any decoding
    full = os.path.join(path, name)
    try:
      with Image.open(full) as im:
        sizes[name] = im.size
    except (UnidentifiedImageError, OSError) as e:
      raise VideoError(f"{full}: not a readable image ({e})") from None
  first = sizes[names[0]]
  for name in names:
    if sizes[name] != first:
      raise VideoError(f"{path}: frames have different sizes: {names[0]} is "
                       f"{first[0]}x{first[1]}, {name} is {sizes[name][0]}x{sizes[name][1]}")
  _check_size(path, *first)
  channels = load_image(os.path.join(path, names[0])).shape[-1]

  def frames():
    for name in names:
      yield load_image(os.path.join(path, name))

  return VideoSource(path, first[1], first[0], channels, len(names), fps, "folder", frames)


def _open_yuv(path: str, size, fps) -> VideoSource:
  if size is None:
    raise VideoError(f"{path}: raw YUV has no header; give its frame size (--size WxH)")
  width, height = size
  _check_size(path, width, height)
  frame_bytes = width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
  total = os.path.getsize(path)
  if total == 0:
    raise VideoError(f"{path}: the file is empty")
  if total % frame_bytes:
    raise VideoError(f"{path}: {total} bytes is not a whole number of {width}x{height} 4:2:0 "
                     f"frames ({frame_bytes} bytes each); is the size right?")
  count = total // frame_bytes

  def frames():
    cw, ch = (width + 1) // 2, (height + 1) // 2
    with open(path, "rb") as f:
      for _ in range(count):
        buf = f.read(frame_bytes)
        if len(buf) != frame_bytes:
          raise VideoError(f"{path}: the file shrank while it was read")
        a = np.frombuffer(buf, np.uint8)
        y = a[:width * height].reshape(height, width)
        u = a[width * height:width * height + cw * ch].reshape(ch, cw)
        v = a[width * height + cw * ch:].reshape(ch, cw)
        yield yuv420_to_rgb(y, u, v)

  return VideoSource(path, height, width, 3, count, fps, "yuv", frames)


_Y4M_CHROMA = ("420jpeg", "420paldv", "420mpeg2", "420", "444", "mono")


def _open_y4m(path: str) -> VideoSource:
  with open(path, "rb") as f:
    header = f.read(1024).split(b"\n", 1)
  if len(header) < 2 or not header[0].startswith(b"YUV4MPEG2"):
    raise VideoError(f"{path}: not a YUV4MPEG2 file (no 'YUV4MPEG2 ...' header line)")
  fields = header[0].decode("ascii", "replace").split()[1:]
  width = height = None
  chroma, fps = "420jpeg", None
  for field in fields:
    tag, value = field[:1], field[1:]
    try:
      if tag == "W":
        width = int(value)
      elif tag == "H":
        height = int(value)
      elif tag == "C":
        chroma = value.split("p")[0] if value.startswith("mono") else value
        if value.startswith("420"):
          chroma = value if value in _Y4M_CHROMA else "420"
      elif tag == "F":
        num, den = value.split(":")
        fps = int(num) / int(den) if int(den) else None
    except ValueError:
      raise VideoError(f"{path}: malformed Y4M header field {field!r}") from None
  if width is None or height is None:
    raise VideoError(f"{path}: the Y4M header has no W or H")
  _check_size(path, width, height)
  if chroma not in _Y4M_CHROMA:
    raise VideoError(f"{path}: Y4M chroma {chroma!r} is not supported ({', '.join(_Y4M_CHROMA)})")
  cw, ch = ((width + 1) // 2, (height + 1) // 2) if chroma.startswith("420") else (width, height)
  plane = 0 if chroma == "mono" else cw * ch
  frame_bytes = width * height + 2 * plane
  offset = len(header[0]) + 1
  total = os.path.getsize(path)
  # Each frame is "FRAME[ params]\n" + planes; frame headers are normally bare.
  count = None
  if (total - offset) % (frame_bytes + 6) == 0:
    count = (total - offset) // (frame_bytes + 6)
  if count == 0:
    raise VideoError(f"{path}: the Y4M file holds no frames")

  def frames():
    with open(path, "rb") as f:
      f.seek(offset)
      index = 0
      while True:
        line = f.readline(256)
        if not line:
          return
        if not line.startswith(b"FRAME"):
          raise VideoError(f"{path}: frame {index}: expected a FRAME header")
        buf = f.read(frame_bytes)
        if len(buf) != frame_bytes:
          raise VideoError(f"{path}: frame {index} is truncated")
        a = np.frombuffer(buf, np.uint8)
        y = a[:width * height].reshape(height, width)
        if chroma == "mono":
          yield ((y.astype(np.float32) - 16.0) / 219.0).clip(0, 1)[..., None]
        else:
          u = a[width * height:width * height + plane].reshape(ch, cw)
          v = a[width * height + plane:].reshape(ch, cw)
          yield (yuv420_to_rgb(y, u, v) if chroma.startswith("420") else _ycbcr_to_rgb(y, u, v))
        index += 1

  return VideoSource(path, height, width, 1 if chroma == "mono" else 3, count, fps, "y4m", frames)


def import_av(what: str = "video containers"):
  """PyAV, or an ImportError that says how to install the extra."""
  try:
    import av  # optional dependency: the [video] extra
  except ImportError:
    raise ImportError(MISSING_AV.format(what=what)) from None
  return av


def _open_av(path: str) -> VideoSource:
  av = import_av(f"{os.path.basename(path)}")
  try:
    container = av.open(path)
  except Exception as e:  # PyAV raises its own error types per FFmpeg error
    raise VideoError(f"{path}: not a readable video ({e})") from None
  with container:
    if not container.streams.video:
      raise VideoError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    count = stream.frames or None
    fps = float(stream.average_rate) if stream.average_rate else None
  _check_size(path, width, height)

  def frames():
    with av.open(path) as c:
      for frame in c.decode(video=0):
        yield np.asarray(frame.to_ndarray(format="rgb24"), np.float32) / 255.0

  return VideoSource(path, height, width, 3, count, fps, "av", frames)


# ---------------------------------------------------------------------------
# Writing


def write_frames(folder, frames, *, start: int = 0) -> list[str]:
  """Writes frames as ``frame_00000.png``, ... into ``folder`` (created); returns the paths."""
  folder = os.fspath(folder)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for k, frame in enumerate(frames, start):
    p = os.path.join(folder, f"frame_{k:05d}.png")
    save_image(p, frame)
    paths.append(p)
  return paths


def write_video(path, frames, *, fps: float = 25.0, codec: str | None = None,
                crf: int = 18) -> str:
  """Writes frames to a container file through PyAV; returns the codec used.

  The file is written next to ``path`` and renamed into place at the end, so
  a failure never leaves a partial file under ``path``. 4:2:0 needs even
  sizes: an odd last row or column is dropped.
  """
  av = import_av("video files")
  path = os.fspath(path)
  if codec is None:
    ext = os.path.splitext(path)[1].lower()
    wanted = ("libvpx-vp9", "libaom-av1") if ext == ".webm" else ("libx264", "libopenh264",
                                                                   "mpeg4")
    codec = next((c for c in wanted if c in av.codecs_available), None)
    if codec is None:
      raise VideoError(f"{path}: no encoder for {ext} in this PyAV build "
                       f"(tried {', '.join(wanted)})")
  tmp = f"{path}.part{os.getpid()}{os.path.splitext(path)[1]}"
  try:
    with av.open(tmp, "w") as container:
      stream = None
      for frame in frames:
        rgb = np.clip(np.rint(np.asarray(frame, np.float32) * 255.0), 0, 255).astype(np.uint8)
        if rgb.shape[-1] == 1:
          rgb = np.repeat(rgb, 3, -1)
        rgb = rgb[..., :3]
        if stream is None:
          stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
          # 4:2:0 needs even sizes: an odd last row or column is dropped.
          stream.width = rgb.shape[1] - rgb.shape[1] % 2
          stream.height = rgb.shape[0] - rgb.shape[0] % 2
          stream.pix_fmt = "yuv420p"
          if codec in ("libx264", "libvpx-vp9", "libaom-av1"):
            stream.options = {"crf": str(crf)}
        rgb = np.ascontiguousarray(rgb[:stream.height, :stream.width])
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
          container.mux(packet)
      if stream is not None:
        for packet in stream.encode():
          container.mux(packet)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return codec
