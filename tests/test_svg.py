"""SVG input: rasterisation, area averaging, the missing-extra error, a codec round trip."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_encode_dir import fake_decode

import gaussjax
from gaussjax.core import _svg

try:
  import resvg_py
except ImportError:  # the [svg] extra is not installed: only the missing-extra tests run
  resvg_py = None
needs_resvg = pytest.mark.skipif(resvg_py is None, reason="needs resvg-py (the [svg] extra)")

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
@needs_resvg
def test_natural_size_and_channels(name, shape):
  image = gaussjax.load_image(DATA / name)
  assert image.shape == shape
  assert image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0


@needs_resvg
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


@needs_resvg
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
@needs_resvg
def test_bad_options(kwargs, message):
  with pytest.raises(ValueError, match=message):
    gaussjax.load_image(DATA / "shapes.svg", **kwargs)


@needs_resvg
def test_super_sampled_raster_guard(tmp_path, monkeypatch):
  # The guard uses the size from the probe renders (48x32 here): 2x fits, 4x does not.
  monkeypatch.setattr(_svg, "MAX_RASTER_PIXELS", 20_000)
  assert gaussjax.load_image(DATA / "shapes.svg", svg_supersample=2).shape == (32, 48, 3)
  with pytest.raises(ValueError, match="lower supersample"):
    gaussjax.load_image(DATA / "shapes.svg", svg_supersample=4)


@needs_resvg
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


@needs_resvg
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


@needs_resvg
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


# --------------------------------------------------------------------------- the CLI's SVG flags


def cli(args, capsys):
  from gaussjax.cli._cli import main
  rc = main([str(a) for a in args])
  captured = capsys.readouterr()
  return rc, captured.out, captured.err


@needs_resvg
def test_cli_encode_svg_flags(tmp_path, capsys):
  out = tmp_path / "a.gjx"
  rc, _, err = cli(["encode", DATA / "shapes.svg", "-o", out, "--quality", "60", "--fit-steps",
                    "20", "--qat-steps", "0", "--svg-size", "24x16", "--svg-supersample", "2"],
                   capsys)
  assert rc == 0, err
  first = err.splitlines()[0]
  assert "SVG drawing, 24x16, rasterised at 2x2 supersampling" in first
  decoded = np.asarray(gaussjax.decode(out.read_bytes()))
  assert decoded.shape == (16, 24, 3)
  expected = gaussjax.load_image(DATA / "shapes.svg", svg_size=(16, 24), svg_supersample=2)
  flat = np.full_like(expected, expected.mean())
  assert float(gaussjax.psnr(decoded, expected)) > float(gaussjax.psnr(flat, expected)) + 3


@needs_resvg
def test_cli_fit_svg_at_its_own_size(tmp_path, capsys):
  out = tmp_path / "f.png"
  rc, stdout, err = cli(["fit", DATA / "logo.svg", "-o", out, "-n", "30", "-s", "5"], capsys)
  assert rc == 0, err
  assert "SVG drawing, about 24x24" in err.splitlines()[0]
  assert Image.open(out).size == (24, 24) and "24x24" in stdout


@needs_resvg
def test_cli_encode_dir_svg_flags(tmp_path, capsys, monkeypatch):
  # The flags reach load_image for the folder's SVGs and are recorded in the settings.
  import json

  from test_encode_dir import fake_encode

  from gaussjax.cli import _cli_tiles
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "shapes.svg").write_bytes((DATA / "shapes.svg").read_bytes())
  Image.new("RGB", (10, 6), "red").save(tmp_path / "in" / "red.png")
  monkeypatch.setattr(_cli_tiles, "encode_images", lambda images, config, args: fake_encode(
      images))
  monkeypatch.setattr("gaussjax.codec._formats.decode", lambda data, **k: fake_decode(data))
  rc, _, err = cli(["encode-dir", tmp_path / "in", "-o", tmp_path / "out", "--quality", "50",
                    "--svg-size", "12x8", "--svg-supersample", "3", "--no-progress"], capsys)
  assert rc == 0, err
  assert err.splitlines()[0] == (f"gaussjax encode-dir: 2 images in {tmp_path / 'in'} (1 SVG) "
                                 f"-> {tmp_path / 'out'}")
  rows = {r["name"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl")
                                    .read_text().splitlines())}
  assert (rows["shapes.svg"]["width"], rows["shapes.svg"]["height"]) == (12, 8)
  assert (rows["red.png"]["width"], rows["red.png"]["height"]) == (10, 6)
  assert json.loads(rows["red.png"]["settings"])["svg"] == {"svg_size": [8, 12],
                                                            "svg_supersample": 3}


def test_cli_svg_flags_refused_for_rasters(tmp_path, capsys):
  path = tmp_path / "in.png"
  Image.new("RGB", (8, 6)).save(path)
  rc, _, err = cli(["encode", path, "-o", tmp_path / "a.gjx", "--quality", "50",
                    "--svg-size", "16x12"], capsys)
  assert rc == 2 and "--svg-size applies to .svg files only" in err
  rc, _, err = cli(["fit", path, "-o", tmp_path / "a.png", "--svg-supersample", "2",
                    "--svg-size", "16x12"], capsys)
  assert rc == 2 and "--svg-supersample and --svg-size apply to .svg files only" in err
  (tmp_path / "in_dir").mkdir()
  Image.new("RGB", (8, 6)).save(tmp_path / "in_dir" / "a.png")
  rc, _, err = cli(["encode-dir", tmp_path / "in_dir", "-o", tmp_path / "out", "--quality", "50",
                    "--svg-size", "16x12"], capsys)
  assert rc == 2 and "has none" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "in_dir"]


@pytest.mark.parametrize("flag, value, message", [
    ("--svg-supersample", "0", "must be in 1..16"),
    ("--svg-supersample", "17", "must be in 1..16"),
    ("--svg-supersample", "two", "is not an integer"),
    ("--svg-size", "24", "must be WIDTHxHEIGHT"),
    ("--svg-size", "0x5", "must be positive"),
])
def test_cli_bad_svg_flag_values(tmp_path, capsys, flag, value, message):
  from gaussjax.cli._cli import main
  with pytest.raises(SystemExit) as e:
    main(["encode", str(DATA / "shapes.svg"), "-o", str(tmp_path / "a.gjx"), "--quality", "50",
          flag, value])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err and message in err
