"""SVG input: rasterisation, area averaging, the missing-extra error, a codec round trip."""

import sys
from pathlib import Path

import numpy as np
import pytest

import gaussjax
from gaussjax.core import _svg

pytest.importorskip("resvg_py")

DATA = Path(__file__).parent / "data"


def write(tmp_path, body, *, size='width="8" height="4"'):
  path = tmp_path / "drawing.svg"
  path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" {size}>{body}</svg>')
  return path


@pytest.mark.parametrize("name, shape", [
    ("shapes.svg", (32, 48, 3)),          # width/height attributes, opaque
    ("gradient_alpha.svg", (40, 40, 4)),  # viewBox only, transparent corners: RGBA
    ("logo.svg", (24, 24, 3)),            # smaller than the size probe's coarsest zoom
])
def test_natural_size_and_channels(name, shape):
  image = gaussjax.load_image(DATA / name)
  assert image.shape == shape
  assert image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0


def test_area_average_is_coverage(tmp_path):
  # A black rectangle over columns [0, 2.5) of a white 8x4 canvas: column 2 is
  # half covered. Super-sampled 4x it averages to half grey; at 1x the renderer's
  # own anti-aliasing decides.
  path = write(tmp_path, '<rect width="8" height="4" fill="white"/>'
                         '<rect width="2.5" height="4" fill="black"/>')
  image = gaussjax.load_image(path, svg_supersample=4)
  np.testing.assert_allclose(image[:, :2], 0.0, atol=1 / 255)
  np.testing.assert_allclose(image[:, 2], 0.5, atol=0.02)
  np.testing.assert_allclose(image[:, 3:], 1.0, atol=1 / 255)


def test_size_option_and_stretch(tmp_path):
  image = gaussjax.load_image(DATA / "shapes.svg", svg_size=(64, 96))
  assert image.shape == (64, 96, 3)
  stretched = gaussjax.load_image(DATA / "shapes.svg", svg_size=(20, 60), svg_supersample=2)
  assert stretched.shape == (20, 60, 3)
  # The same drawing at twice the size, box-filtered back down, is close to the 1x load.
  small = gaussjax.load_image(DATA / "shapes.svg")
  down = image.reshape(32, 2, 48, 2, 3).mean(axis=(1, 3))
  assert np.abs(down - small).mean() < 0.01


@pytest.mark.parametrize("kwargs, message", [
    ({"svg_supersample": 0}, "supersample"),
    ({"svg_supersample": 2.5}, "supersample"),
    ({"svg_size": (0, 4)}, "size"),
    ({"max_pixels": 100}, "over the limit"),
])
def test_bad_options(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gaussjax.load_image(DATA / "shapes.svg", **kwargs)


def test_super_sampled_raster_guard(tmp_path, monkeypatch):
  # The guard uses the size from a 1/64-scale probe (64x64 here): 2x fits, 4x does not.
  monkeypatch.setattr(_svg, "MAX_RASTER_PIXELS", 20_000)
  assert gaussjax.load_image(DATA / "shapes.svg", svg_supersample=2).shape == (32, 48, 3)
  with pytest.raises(ValueError, match="lower supersample"):
    gaussjax.load_image(DATA / "shapes.svg", svg_supersample=4)


def test_invalid_svg(tmp_path):
  path = tmp_path / "broken.svg"
  path.write_text("<svg xmlns='http://www.w3.org/2000/svg'")
  with pytest.raises(ValueError, match="cannot render SVG"):
    gaussjax.load_image(path)


def test_missing_extra_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "resvg_py", None)  # makes `import resvg_py` fail
  with pytest.raises(ImportError, match=r'pip install "gaussjax\[svg\]"'):
    gaussjax.load_image(DATA / "shapes.svg")


@pytest.mark.parametrize("command", ["encode", "fit"])
def test_cli_reports_missing_extra(monkeypatch, capsys, tmp_path, command):
  from gaussjax.cli._cli import main
  monkeypatch.setitem(sys.modules, "resvg_py", None)
  out = "a.gjx" if command == "encode" else "a.png"
  extra = ["--quality", "50"] if command == "encode" else ["--steps", "1"]
  assert main([command, str(DATA / "shapes.svg"), "-o", str(tmp_path / out), *extra]) == 2
  assert 'pip install "gaussjax[svg]"' in capsys.readouterr().err
  assert not (tmp_path / out).exists()


def test_codec_round_trip():
  # Fit, code and decode the rasterised drawing; a few steps only, so the bound
  # is loose: a flat grey image scores 10.7 dB against this drawing.
  image = gaussjax.load_image(DATA / "shapes.svg")
  data = gaussjax.encode(image, gaussjax.CodecConfig(quality=80, fit_steps=60, qat_steps=10))
  decoded = np.clip(np.asarray(gaussjax.decode(data)), 0.0, 1.0)
  assert decoded.shape == image.shape
  flat = np.full_like(image, image.mean())
  assert float(gaussjax.psnr(flat, image)) < 13.0
  assert float(gaussjax.psnr(decoded, image)) > 20.0


def test_encode_dir_reads_svg_files(tmp_path):
  # encode-dir picks .svg files by extension and reads them with load_image.
  from test_encode_dir import fake_decode, fake_encode

  from gaussjax.batch._encode_dir import encode_dir
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "shapes.svg").write_bytes((DATA / "shapes.svg").read_bytes())
  rows = encode_dir(tmp_path / "in", tmp_path / "out", encode_fn=fake_encode,
                    decode_fn=fake_decode, settings="stand-in", progress=False, shard=(0, 1)).rows
  assert [(r.name, r.status, r.width, r.height) for r in rows] == [("shapes.svg", "ok", 48, 32)]
  assert rows[0].psnr > 40  # the stand-in codec is 8-bit PNG
