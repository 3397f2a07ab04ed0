"""load_image / save_image through Pillow."""

import os

import numpy as np
import pytest
from PIL import Image

import gaussjax


def _gradient(h=12, w=17):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x / (w - 1), y / (h - 1), (x + y) / (h + w - 2)], -1).astype(np.float32)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_save_load_round_trip_8bit(tmp_path, channels, mode):
  image = _gradient()
  if channels == 1:
    image = image[..., :1]
  elif channels == 4:
    image = np.concatenate([image, 1 - image[..., :1]], -1)
  path = tmp_path / "x.png"
  gaussjax.save_image(path, image)
  assert Image.open(path).mode == mode
  loaded = gaussjax.load_image(path)
  assert loaded.dtype == np.float32 and loaded.shape == image.shape
  np.testing.assert_allclose(loaded, image, atol=0.5 / 255 + 1e-6)


def test_16bit_grey_keeps_precision(tmp_path):
  data = (np.arange(40 * 30).reshape(30, 40) * 53 % 65536).astype(np.uint16)
  Image.fromarray(data).save(tmp_path / "g16.png")
  loaded = gaussjax.load_image(tmp_path / "g16.png")
  assert loaded.shape == (30, 40, 1)
  np.testing.assert_allclose(loaded[..., 0], data / 65535.0, atol=1e-6)
  gaussjax.save_image(tmp_path / "out16.png", loaded, bits=16)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out16.png")), data)


def test_palette_with_and_without_transparency(tmp_path):
  rgb = (np.asarray(_gradient()) * 255).astype(np.uint8)
  pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  pal.save(tmp_path / "p.png")
  loaded = gaussjax.load_image(tmp_path / "p.png")
  assert loaded.shape == (12, 17, 3)
  np.testing.assert_allclose(loaded, np.asarray(pal.convert("RGB")) / 255.0, atol=1e-6)
  pal.info["transparency"] = 0
  pal.save(tmp_path / "pt.png", transparency=0)
  loaded = gaussjax.load_image(tmp_path / "pt.png")
  assert loaded.shape == (12, 17, 4)
  index = np.asarray(pal)
  np.testing.assert_array_equal(loaded[..., 3] == 0, index == 0)


def test_grey_alpha_and_bilevel(tmp_path):
  la = Image.fromarray(np.full((5, 6, 2), [100, 50], np.uint8))  # LA
  la.save(tmp_path / "la.png")
  loaded = gaussjax.load_image(tmp_path / "la.png")
  assert loaded.shape == (5, 6, 4)
  np.testing.assert_allclose(loaded[0, 0], [100 / 255] * 3 + [50 / 255], atol=1e-6)
  bw = Image.fromarray(np.eye(4, dtype=bool))
  bw.save(tmp_path / "bw.png")
  loaded = gaussjax.load_image(tmp_path / "bw.png")
  assert loaded.shape == (4, 4, 1)
  np.testing.assert_array_equal(loaded[..., 0], np.eye(4))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
  Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
  loaded = gaussjax.load_image(tmp_path / "c.jpg")
  assert loaded.shape == (6, 8, 3)
  assert loaded[..., 0].mean() > 0.9 and loaded[..., 1:].mean() < 0.1  # red


def test_exif_orientation_is_applied(tmp_path):
  data = np.zeros((4, 6, 3), np.uint8)
  data[0, 0] = 255  # top-left marker on a 6-wide, 4-high image
  img = Image.fromarray(data)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise to display"
  img.save(tmp_path / "o.jpg", exif=exif, quality=100)
  loaded = gaussjax.load_image(tmp_path / "o.jpg")
  assert loaded.shape == (6, 4, 3)  # upright: 4 wide, 6 high
  # The top-left pixel ends up at the top-right after a clockwise rotation.
  assert loaded[0, -1].mean() > 0.7 and loaded[0, 0].mean() < 0.3


def test_missing_empty_and_non_image_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    gaussjax.load_image(tmp_path / "nope.png")
  (tmp_path / "empty.png").write_bytes(b"")
  with pytest.raises(ValueError, match="is empty"):
    gaussjax.load_image(tmp_path / "empty.png")
  (tmp_path / "text.png").write_text("hello, not an image")
  with pytest.raises(ValueError, match="not an image file"):
    gaussjax.load_image(tmp_path / "text.png")
  with pytest.raises(ValueError, match="is a directory"):
    gaussjax.load_image(tmp_path)


def test_truncated_file(tmp_path):
  gaussjax.save_image(tmp_path / "t.png", np.random.default_rng(0).random((64, 64, 3)))
  data = (tmp_path / "t.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cannot decode"):
    gaussjax.load_image(tmp_path / "cut.png")


def test_pixel_limit_is_checked_from_the_header(tmp_path):
  gaussjax.save_image(tmp_path / "big.png", np.zeros((20, 30, 3)))
  with pytest.raises(ValueError, match="600 pixels, over the limit of 599"):
    gaussjax.load_image(tmp_path / "big.png", max_pixels=599)
  assert gaussjax.load_image(tmp_path / "big.png", max_pixels=600).shape == (20, 30, 3)
  assert gaussjax.constants.MAX_PIXELS == 1 << 28


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
  path = tmp_path / "a.png"
  gaussjax.save_image(path, np.zeros((4, 4, 3)))
  gaussjax.save_image(path, np.ones((4, 4, 3)))  # replaces
  assert os.listdir(tmp_path) == ["a.png"]
  np.testing.assert_array_equal(gaussjax.load_image(path), 1.0)
  with pytest.raises(ValueError):
    gaussjax.save_image(tmp_path / "b.jpg", np.zeros((4, 4, 4)))  # JPEG has no alpha
  assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_save_clips_and_accepts_2d(tmp_path):
  gaussjax.save_image(tmp_path / "g.png", np.array([[-1.0, 0.5, 2.0]]))
  np.testing.assert_allclose(gaussjax.load_image(tmp_path / "g.png")[0, :, 0], [0, 128 / 255, 1], atol=1e-6)


@pytest.mark.parametrize(
    "name, image, kwargs, error, match",
    [
        ("x.png", np.zeros((4, 4, 5)), {}, ValueError, r"C in \(1, 2, 3, 4\)"),
        ("x.png", np.zeros((4, 4, 3), np.uint8), {}, TypeError, "floating point"),
        ("x.png", np.full((4, 4, 3), np.nan), {}, ValueError, "NaN"),
        ("x.xyz", np.zeros((4, 4, 3)), {}, ValueError, "unknown image extension '.xyz'"),
        ("x.png", np.zeros((4, 4, 3)), {"bits": 16}, ValueError, "grey PNG/TIFF only"),
        ("x.png", np.zeros((4, 4, 1)), {"bits": 12}, ValueError, "bits=12"),
    ],
)
def test_save_rejects_bad_input(tmp_path, name, image, kwargs, error, match):
  with pytest.raises(error, match=match):
    gaussjax.save_image(tmp_path / name, image, **kwargs)


def _png16_rgb(path, data):
  """Writes a 16-bit RGB PNG by hand (Pillow cannot write one)."""
  import struct
  import zlib

  h, w, _ = data.shape
  big = data.astype(">u2")
  raw = b"".join(b"\x00" + big[i].tobytes() for i in range(h))

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                   + chunk(b"IEND", b""))


def test_16bit_rgb_png_loads_at_8_bit_precision(tmp_path):
  data = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 3000 + 7).astype(np.uint16)
  _png16_rgb(tmp_path / "rgb16.png", data)
  loaded = gaussjax.load_image(tmp_path / "rgb16.png")
  assert loaded.shape == (4, 5, 3)
  np.testing.assert_allclose(loaded, data / 65535.0, atol=1.0 / 255)  # Pillow keeps the high byte


def test_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  """Ctrl-C (KeyboardInterrupt) in the middle of a write: the old file stays whole."""
  from gaussjax.core import _io
  path = tmp_path / "out.png"
  gaussjax.save_image(path, np.zeros((4, 4, 3), np.float32))
  before = path.read_bytes()

  def interrupted(fd):
    raise KeyboardInterrupt

  monkeypatch.setattr(_io.os, "fsync", interrupted)
  with pytest.raises(KeyboardInterrupt):
    gaussjax.save_image(path, np.ones((4, 4, 3), np.float32))
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["out.png"]
