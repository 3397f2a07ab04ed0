"""The first line of ``fit`` / ``encode`` comes before JAX is imported and before any pixel.

The line says what the command is about to do: the input, its size read from
the file's header (``gaussjax.core._io.image_header``) and the memory plan.
Order, not wall-clock time, is tested here: a stand-in ``jax`` package that
ends the process when imported shows that the line came before JAX, and a
truncated PNG (header intact, pixel data cut) that it came before decoding.
The time itself is measured by ``benchmarks/first_line.py``
(``benchmarks/results/first_line_cpu.md``).
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gaussjax.core._io import image_header, load_image

ROOT = Path(__file__).resolve().parent.parent
FAKE_JAX = "import sys\nsys.stderr.write('stand-in jax imported\\n')\nsys.exit(3)\n"


@pytest.fixture(scope="module")
def truncated_png(tmp_path_factory):
  """A 6000x4000 PNG cut inside its pixel data: the header reads, the pixels do not."""
  path = tmp_path_factory.mktemp("big") / "big.png"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (4000, 6000, 3), np.uint8)).save(path, compress_level=0)
  data = path.read_bytes()
  path.write_bytes(data[:4096])
  return path


def run_cli(args, tmp_path, fake_jax: bool):
  env = dict(os.environ)
  if fake_jax:
    (tmp_path / "fake" / "jax").mkdir(parents=True)
    (tmp_path / "fake" / "jax" / "__init__.py").write_text(FAKE_JAX)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), str(ROOT)])
  return subprocess.run([sys.executable, "-m", "gaussjax", *map(str, args)], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("command, args, plan", [
    ("encode", ["-o", "out.gjx", "--bpp", "0.5", "--tile", "1024"], "in 6x4 tiles of 1024"),
    ("fit", ["-o", "out.png", "--tile", "1024", "-n", "5000"], "in 6x4 tiles of 1024"),
])
def test_first_line_comes_before_jax_and_pixels(truncated_png, tmp_path, command, args, plan):
  result = run_cli([command, truncated_png, *args], tmp_path, fake_jax=True)
  lines = result.stderr.splitlines()
  assert result.returncode == 3, result.stderr  # ended by the stand-in jax
  assert lines[0].startswith(f"gaussjax {command}: {truncated_png}: 6000x4000, 3 channels")
  assert plan in lines[0] and "MB of the 4096 MB memory budget" in lines[0]
  assert lines[1:] == ["stand-in jax imported"]
  assert not (tmp_path / args[1]).exists()


def test_guard_error_comes_before_jax(truncated_png, tmp_path):
  # Without --tile the 24 MP encode is over the budget: refused from the header alone.
  result = run_cli(["encode", truncated_png, "-o", "out.gjx", "--bpp", "0.5"], tmp_path,
                   fake_jax=True)
  assert result.returncode == 2
  assert "memory budget" in result.stderr and "--tile" in result.stderr
  assert "stand-in jax" not in result.stderr


def test_truncated_pixels_fail_after_the_first_line(truncated_png, tmp_path, capsys):
  from gaussjax.cli._cli import main
  assert main(["encode", str(truncated_png), "-o", str(tmp_path / "o.gjx"), "--bpp", "0.5",
               "--tile", "1024"]) == 2
  lines = capsys.readouterr().err.splitlines()
  assert "6000x4000" in lines[0]
  assert "cannot decode image" in lines[-1]


def test_quiet_has_no_first_line(tmp_path, capsys):
  from gaussjax.cli._cli import main
  path = tmp_path / "small.png"
  Image.new("RGB", (8, 6)).save(path)
  with pytest.raises(SystemExit):  # a bad flag after the header is read: nothing printed
    main(["fit", str(path), "-o", str(tmp_path / "o.png"), "-q", "--steps", "0"])
  assert "8x6" not in capsys.readouterr().err


# --------------------------------------------------------------------------- image_header


@pytest.mark.parametrize("mode, info", [
    ("1", {}), ("L", {}), ("LA", {}), ("I;16", {}), ("I", {}), ("P", {}),
    ("P", {"transparency": 0}), ("RGB", {}), ("RGBA", {}), ("CMYK", {}),
])
def test_header_matches_load_image(tmp_path, mode, info):
  ext = ".tif" if mode in ("CMYK", "I") else ".png"
  path = tmp_path / f"image{ext}"
  Image.new(mode, (7, 5)).save(path, **info)
  assert image_header(path) == load_image(path).shape


@pytest.mark.parametrize("orientation, size", [(1, (5, 7)), (3, (5, 7)), (6, (7, 5)),
                                               (8, (7, 5))])
def test_header_applies_exif_orientation(tmp_path, orientation, size):
  path = tmp_path / "photo.jpg"
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.new("RGB", (7, 5)).save(path, exif=exif)
  assert image_header(path) == (*size, 3) == load_image(path).shape


def test_header_errors_are_load_image_errors(tmp_path):
  path = tmp_path / "big.png"
  Image.new("L", (100, 100)).save(path)
  with pytest.raises(ValueError, match="over the limit of 1000"):
    image_header(path, max_pixels=1000)
  (tmp_path / "text.png").write_text("not an image")
  with pytest.raises(ValueError, match="not an image file"):
    image_header(tmp_path / "text.png")
  with pytest.raises(FileNotFoundError):
    image_header(tmp_path / "missing.png")


def test_png_header_exif_orientation(tmp_path):
  # An eXIf chunk before the pixel data (Pillow writes it there) is applied.
  path = tmp_path / "rotated.png"
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.new("RGB", (7, 5)).save(path, exif=exif)
  assert image_header(path) == (7, 5, 3) == load_image(path).shape


def test_decode_first_line_comes_before_jax(tmp_path):
  source = ROOT / "tests" / "data" / "v1_rgb.gjx"
  result = run_cli(["decode", source, "-o", "out.png"], tmp_path, fake_jax=True)
  assert result.returncode == 3, result.stderr  # ended by the stand-in jax
  assert result.stderr.splitlines() == [
      f"gaussjax decode: {source}: {source.stat().st_size} bytes -> out.png",
      "stand-in jax imported"]
  assert not (tmp_path / "out.png").exists()
