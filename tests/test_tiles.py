"""Big images: the tile grid, blending, tiled fit/encode/decode, the memory guard."""

import numpy as np
import pytest
from PIL import Image

import gaussjax
from gaussjax.codec import _tile_grid, _tiles
from gaussjax.core._gaussians import Gaussians


def photo(h=64, w=96):
  # A real photo (kodim23 from scikit-image's bundled data is not Kodak: use
  # the scikit-image astronaut), box-downsampled: textured, with edges.
  import skimage.data
  image = Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.Resampling.BOX)
  return np.asarray(image, np.float32) / 255.0


def random_gaussians(n, h, w, seed=1):
  import jax
  g = gaussjax.init_random(jax.random.key(seed), n, h, w, 3)
  return Gaussians(*(np.asarray(a) for a in g))


@pytest.mark.parametrize("h, w, tile, margin", [
    (70, 101, 32, 6), (64, 64, 64, 8), (33, 200, 40, 10), (100, 17, 24, 0)])
def test_grid_partitions_and_crops(h, w, tile, margin):
  grid = _tiles.TileGrid.make(h, w, tile=tile, margin=margin)
  covered = np.zeros((h, w), int)
  for i in range(len(grid)):
    y0, y1, x0, x1 = grid.interior(i)
    assert 0 < y1 - y0 <= tile and 0 < x1 - x0 <= tile
    covered[y0:y1, x0:x1] += 1
    cy0, cy1, cx0, cx1 = grid.crop(i)
    assert (cy1 - cy0, cx1 - cx0) == (grid.crop_height, grid.crop_width)  # one shape
    assert 0 <= cy0 and cy1 <= h and 0 <= cx0 and cx1 <= w
    # The crop holds the tile and its margin (where the image has it).
    assert cy0 <= max(0, y0 - margin) and cy1 >= min(h, y1 + margin)
    assert cx0 <= max(0, x0 - margin) and cx1 >= min(w, x1 + margin)
  np.testing.assert_array_equal(covered, 1)  # interiors partition the image


def test_bad_grids():
  with pytest.raises(ValueError, match="4 times the margin"):
    _tiles.TileGrid.make(100, 100, tile=30, margin=8)
  with pytest.raises(ValueError, match="positive int"):
    _tiles.TileGrid.make(100, 100, tile=0)


@pytest.mark.parametrize("size", [None, (140, 202), (35, 50), (100, 33)])
def test_blended_render_equals_untiled_render(size):
  # Every crop holding the same Gaussians (shifted into its coordinates): the
  # blend weights sum to 1, so the tiled render is the untiled one, at the
  # encoded size and at others.
  h, w = 70, 101
  g = random_gaussians(300, h, w)
  grid = _tiles.TileGrid.make(h, w, tile=32, margin=6)
  tiles = tuple(Gaussians(g.means - np.asarray([x0, y0], np.float32), g.chol, g.colors)
                for y0, _, x0, _ in map(grid.crop, range(len(grid))))
  tiled = gaussjax.TiledGaussians(grid, tiles)
  out_h, out_w = size or (h, w)
  expected = np.clip(np.asarray(gaussjax.render(g, out_h, out_w, source_size=(h, w))), 0, 1)
  actual = gaussjax.render_tiled(tiled, height=out_h, width=out_w)
  assert actual.shape == (out_h, out_w, 3)
  np.testing.assert_allclose(actual, expected, atol=1e-5)
  as_uint8 = gaussjax.render_tiled(tiled, height=out_h, width=out_w, dtype=np.uint8)
  np.testing.assert_array_equal(as_uint8, np.round(actual * 255).astype(np.uint8))


def test_fit_tiled_is_close_to_untiled():
  # Same density of Gaussians, same steps. Bound: 1 dB overall, and the band
  # around the seams no more than 1 dB below the untiled fit's same band
  # (measured: 27.79 vs 27.85 dB overall, seams 26.2 vs 25.7 dB).
  image = photo()
  config = gaussjax.FitConfig(steps=60, log_every=60)
  g, _ = gaussjax.fit_image(image, 300, config)
  untiled = np.clip(np.asarray(gaussjax.render(g, 64, 96)), 0, 1)
  tiled = gaussjax.fit_tiled(image, 300, config, tile=48, margin=4, progress=False)
  assert len(tiled.tiles) == 4
  actual = gaussjax.render_tiled(tiled)
  seams = tiled.grid.seam_mask(4)
  assert abs(_tiles.psnr_banded(image, actual) - _tiles.psnr_banded(image, untiled)) < 1.0
  assert (_tiles.psnr_banded(image, actual, mask=seams)
          > _tiles.psnr_banded(image, untiled, mask=seams) - 1.0)


def test_psnr_banded_equals_psnr():
  image = photo()
  noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.05, image.shape), 0, 1)
  expected = float(gaussjax.psnr(noisy.astype(np.float32), image))
  assert _tiles.psnr_banded(image, noisy, rows=7) == pytest.approx(expected, abs=1e-3)
  as_uint8 = np.round(image * 255).astype(np.uint8)
  assert _tiles.psnr_banded(as_uint8, image) > 50


@pytest.fixture(scope="module")
def tiled_file():
  image = photo()
  config = gaussjax.CodecConfig(quality=60, fit_steps=20, qat_steps=0)
  return image, gaussjax.encode_tiled(image, config, tile=48, margin=4, progress=False)


@pytest.mark.slow  # the rate controller of four crops: ~25 s on 2 cores
def test_tiled_rate_target():
  image = photo()
  config = gaussjax.CodecConfig(bpp=3.0, fit_steps=20, qat_steps=0)
  data = gaussjax.encode_tiled(image, config, tile=48, margin=4, progress=False)
  # Each crop aims at bpp x tile/crop area within the rate tolerance (5%); the
  # index adds a few bytes.
  assert 8 * len(data) / (64 * 96) == pytest.approx(3.0, rel=0.08)


def test_encode_decode_tiled(tiled_file):
  image, data = tiled_file
  info = gaussjax.codec._formats.info(data)
  assert (info["version"], info["tile_rows"], info["tile_cols"]) == (3, 2, 2)
  assert info["bytes"] == len(data) and sum(info["tile_bytes"]) < len(data)
  decoded = np.asarray(gaussjax.decode(data))
  assert decoded.shape == image.shape
  flat = np.full_like(image, image.mean())
  assert float(gaussjax.psnr(decoded, image)) > float(gaussjax.psnr(flat, image)) + 6
  np.testing.assert_array_equal(gaussjax.decode_tiled(data), decoded)
  assert gaussjax.decode(data, width=48).shape == (32, 48, 3)
  with pytest.raises(gaussjax.DecodeError, match="tiled"):
    gaussjax.decode_gaussians(data)


def test_tiled_encode_is_close_to_untiled(tiled_file):
  # The encode path, tiled (4 crops of 56x56) against one piece, same config.
  # Bound: 1 dB overall and in the band around the seams (measured: 18.73 vs
  # 18.90 dB overall, seams 17.46 vs 17.57 dB; the tiled file is bigger at
  # one --quality, since each crop gets its own Gaussians).
  image, data = tiled_file
  untiled = np.asarray(gaussjax.decode(gaussjax.encode(
      image, gaussjax.CodecConfig(quality=60, fit_steps=20, qat_steps=0))))
  tiled = np.asarray(gaussjax.decode(data))
  seams = _tiles.TileGrid.make(64, 96, tile=48, margin=4).seam_mask(4)
  assert abs(_tiles.psnr_banded(image, tiled) - _tiles.psnr_banded(image, untiled)) < 1.0
  assert (_tiles.psnr_banded(image, tiled, mask=seams)
          > _tiles.psnr_banded(image, untiled, mask=seams) - 1.0)


def test_corrupt_tiled_files(tiled_file):
  _, data = tiled_file
  header_end = len(data) - sum(gaussjax.codec._formats.info(data)["tile_bytes"])
  for bad in (data[:header_end - 1], data[:-1], data[:8] + b"\xff" + data[9:],
              data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]):
    with pytest.raises(gaussjax.DecodeError):
      gaussjax.decode(bad)


def test_memory_guard_message():
  with pytest.raises(gaussjax.MemoryBudgetError, match=r"--tile \d+") as e:
    _tiles.check_budget(4000, 6000, 3, memory_budget_mb=4096)
  assert "6000" in str(e.value) and "4096 MB" in str(e.value)
  _tiles.check_budget(4000, 6000, 3, memory_budget_mb=4096, tile=512)  # tiles fit
  with pytest.raises(gaussjax.MemoryBudgetError, match="raise the budget"):
    _tiles.check_budget(4000, 6000, 3, memory_budget_mb=500, tile=512)


def test_encode_tiled_guard_fires_before_work(monkeypatch):
  calls = []
  monkeypatch.setattr(_tiles, "_encode", lambda *a, **k: calls.append(1))
  with pytest.raises(gaussjax.MemoryBudgetError):
    gaussjax.encode_tiled(np.zeros((64, 96, 3), np.float32), tile=48, margin=4,
                          memory_budget_mb=10)
  assert not calls


def test_encode_tiled_refuses_levels_before_work(monkeypatch):
  # A tiled file's tiles are version-1 files (FORMAT.md): the decoder reads no other.
  calls = []
  monkeypatch.setattr(_tiles, "_encode", lambda *a, **k: calls.append(1))
  with pytest.raises(ValueError, match="levels=3.*single-level"):
    gaussjax.encode_tiled(np.zeros((64, 96, 3), np.float32), gaussjax.CodecConfig(levels=3),
                          tile=48, margin=4)
  assert not calls


def test_cli_guard_and_tiled_encode(tmp_path, capsys, monkeypatch):
  from gaussjax.cli._cli import main
  path = tmp_path / "in.png"
  Image.fromarray(np.round(photo() * 255).astype(np.uint8)).save(path)
  # A budget the one-piece fit exceeds: a clear error, nothing written.
  monkeypatch.setattr(_tile_grid, "FIT_BASE_MB", 10.0)
  monkeypatch.setattr(_tile_grid, "FIT_BYTES_PER_PIXEL", 2**20 / 1000)  # 1 MB per 1000 pixels
  monkeypatch.setattr(_tile_grid, "TILES_EXTRA_MB", 0.0)
  out = tmp_path / "out.gjx"
  assert main(["encode", str(path), "-o", str(out), "--quality", "50", "--memory-budget", "12",
               "--margin", "4"]) == 2
  err = capsys.readouterr().err
  assert "memory budget" in err and "--tile" in err
  assert not out.exists()
  assert main(["fit", str(path), "-o", str(tmp_path / "f.png"), "--memory-budget", "12",
               "--margin", "4"]) == 2
  assert "--tile" in capsys.readouterr().err
  assert main(["encode", str(path), "-o", str(out), "--quality", "50", "--fit-steps", "10",
               "--qat-steps", "0", "--tile", "48", "--margin", "4", "--memory-budget", "20"]) == 0
  assert _tiles.is_tiled(out.read_bytes())
  png = tmp_path / "back.png"
  assert main(["decode", str(out), "-o", str(png)]) == 0
  assert Image.open(png).size == (96, 64)


def test_encode_dir_routes_big_images(tmp_path, capsys, monkeypatch):
  from gaussjax.cli import _cli_tiles
  from gaussjax.cli._cli import main
  monkeypatch.setattr(_tile_grid, "FIT_BASE_MB", 10.0)
  monkeypatch.setattr(_tile_grid, "FIT_BYTES_PER_PIXEL", 2**20 / 1000)  # 1 MB per 1000 pixels
  monkeypatch.setattr(_tile_grid, "TILES_EXTRA_MB", 0.0)
  (tmp_path / "in").mkdir()
  Image.fromarray(np.round(photo() * 255).astype(np.uint8)).save(tmp_path / "in" / "big.png")
  # Without --tile: that image's row says what to do; nothing was fitted.
  assert main(["encode-dir", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--quality",
               "50", "--memory-budget", "12", "--margin", "4", "--no-progress"]) == 1
  assert "--tile" in capsys.readouterr().err
  # With --tile: big images go to encode_tiled, the others to encode_batch.
  calls = []
  monkeypatch.setattr(_tiles, "encode_tiled", lambda image, *a, **k: calls.append(
      ("tiled", image.shape)) or b"t")
  monkeypatch.setattr("gaussjax.batch._batch.encode_batch", lambda images, *a, **k: calls.append(
      ("batch", [i.shape for i in images])) or [b"b"] * len(images))
  args = type("Args", (), {"memory_budget": 12.0, "tile": 32, "margin": 4})()
  small = np.zeros((8, 8, 3), np.float32)
  out = _cli_tiles.encode_images([small, photo(), small], None, args)
  assert out == [b"b", b"t", b"b"]
  assert calls == [("batch", [(8, 8, 3), (8, 8, 3)]), ("tiled", (64, 96, 3))]


@pytest.mark.parametrize("size", [(70, 101), (140, 202)])
def test_banded_render_equals_render(size, monkeypatch):
  # Version-1 files decoded to a big output go through bands: the same image.
  h, w = 70, 101
  g = random_gaussians(200, h, w, seed=2)
  data = gaussjax.encode_gaussians(g, h, w)
  expected = np.asarray(gaussjax.decode(data, height=size[0], width=size[1]))
  monkeypatch.setattr(_tiles, "BAND_PIXELS", 100)
  monkeypatch.setattr(_tiles, "BAND_ROWS", 16)
  actual = np.asarray(gaussjax.decode(data, height=size[0], width=size[1]))
  np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_cli_fit_tiled(tmp_path, capsys):
  # `gaussjax fit --tile`: fitted tile by tile, the blended rendering written at full size.
  from gaussjax.cli._cli import main
  path = tmp_path / "in.png"
  Image.fromarray(np.round(photo() * 255).astype(np.uint8)).save(path)
  out = tmp_path / "fit.png"
  assert main(["fit", str(path), "-o", str(out), "--tile", "48", "--margin", "4", "-n", "200",
               "-s", "20"]) == 0
  captured = capsys.readouterr()
  assert "in 2x2 tiles of 48" in captured.err.splitlines()[0]
  assert "Gaussians in 4 tiles of 48" in captured.out and str(out) in captured.out
  assert Image.open(out).size == (96, 64)
