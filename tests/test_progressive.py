"""Progressive files (format version 2): levels, prefixes, truncation, info, CLI, fuzzing."""

import os

import jax
import numpy as np
import pytest
from conftest import kodak_path
from PIL import Image

import gaussjax
from gaussjax.codec._formats import info
from gaussjax.codec._fuzz import fuzz, progressive_seed_files
from gaussjax.codec._progressive import HEADER_BYTES, encode_levels, level_shares

DATA = os.path.join(os.path.dirname(__file__), "data")
# Few steps and no fine-tuning: each level compiles its own fits.
FAST = dict(fit_steps=24, qat_steps=0, backend="reference")
BPP = 6.0  # a tiny image: the per-level headers need room


def _crop(h=32, w=48):
  img = np.asarray(Image.open(kodak_path(23)).convert("RGB"), np.float32)[200:200 + h, 300:300 + w]
  return img / 255


def _levels(counts=(5, 20, 60), h=40, w=56, c=3):
  out = []
  for k, n in enumerate(counts):
    k1, k2 = jax.random.split(jax.random.key(k))
    g = gaussjax.init_random(k1, n, h, w, c)
    chol = g.chol * jax.random.uniform(k2, (n, 3), minval=-1.5, maxval=1.5)
    out.append(gaussjax.Gaussians(g.means, chol, g.colors))
  return out


@pytest.fixture(scope="module")
def levels_file():
  levels = _levels()
  return levels, encode_levels(levels, 40, 56)


@pytest.fixture(scope="module")
def encoded():
  img = _crop(24, 32)
  data = gaussjax.encode(img, gaussjax.CodecConfig(bpp=BPP, levels=3, **FAST))
  return img, data


class TestContainer:

  def test_info_lists_levels_with_offsets(self, levels_file):
    levels, data = levels_file
    meta = info(data)
    assert meta["version"] == 2 and meta["num_levels"] == 3
    assert [lv["num_gaussians"] for lv in meta["levels"]] == [5, 20, 60]
    assert meta["num_gaussians"] == 85
    assert meta["levels"][0]["offset"] == HEADER_BYTES
    for a, b in zip(meta["levels"], meta["levels"][1:]):
      assert b["offset"] == a["end"] == a["offset"] + a["bytes"]
    assert meta["levels"][-1]["end"] == len(data) == meta["bytes"]

  def test_level_k_is_the_first_k_plus_1_levels(self, levels_file):
    levels, data = levels_file
    for k in range(3):
      g, (h, w) = gaussjax.decode_gaussians(data, level=k)
      assert (h, w) == (40, 56)
      assert g.num_gaussians == sum(x.num_gaussians for x in levels[:k + 1])
      # Each level decodes as its own version-1 file would.
      own = gaussjax.decode_gaussians(gaussjax.encode_gaussians(levels[k], 40, 56))[0]
      np.testing.assert_array_equal(g.means[-levels[k].num_gaussians:], own.means)
      np.testing.assert_array_equal(g.colors[-levels[k].num_gaussians:], own.colors)
    full = gaussjax.decode(data)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(gaussjax.decode(data, level=2)))
    assert not np.array_equal(np.asarray(full), np.asarray(gaussjax.decode(data, level=0)))

  def test_every_prefix_at_a_level_boundary_decodes(self, levels_file):
    _, data = levels_file
    for lv in info(data)["levels"]:
      prefix = data[:lv["end"]]
      expected = gaussjax.decode(data, level=lv["level"])
      actual = gaussjax.decode(prefix, partial=True)
      np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
      g, _ = gaussjax.decode_gaussians(prefix, level=lv["level"], partial=True)
      assert g.num_gaussians == gaussjax.decode_gaussians(data, level=lv["level"])[0].num_gaussians
      if lv["end"] < len(data):
        with pytest.raises(gaussjax.DecodeError, match="truncated"):
          gaussjax.decode_gaussians(prefix)

  def test_cut_inside_a_level_gives_the_level_before_with_partial(self, levels_file):
    _, data = levels_file
    ends = [lv["end"] for lv in info(data)["levels"]]
    for cut in range(ends[0] + 1, len(data), 7):
      complete = sum(e <= cut for e in ends)
      g, _ = gaussjax.decode_gaussians(data[:cut], partial=True)
      assert g.num_gaussians == gaussjax.decode_gaussians(data, level=complete - 1)[0].num_gaussians
      with pytest.raises(gaussjax.DecodeError, match="truncated"):
        gaussjax.decode_gaussians(data[:cut])

  def test_cut_inside_level_0_raises_even_with_partial(self, levels_file):
    _, data = levels_file
    for cut in (0, 3, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 5,
                info(data)["levels"][0]["end"] - 1):
      with pytest.raises(gaussjax.DecodeError):
        gaussjax.decode_gaussians(data[:cut], partial=True)

  def test_corrupt_complete_level_raises_even_with_partial(self, levels_file):
    _, data = levels_file
    d = bytearray(data)
    d[HEADER_BYTES + 20] ^= 0x04
    with pytest.raises(gaussjax.DecodeError, match="checksum"):
      gaussjax.decode_gaussians(bytes(d), partial=True)
    with pytest.raises(gaussjax.DecodeError, match="unexpected bytes"):
      gaussjax.decode_gaussians(data + b"\x00")

  def test_header_fields_are_checked(self, levels_file):
    _, data = levels_file
    for offset, value, message in ((5, 9, "channels"), (10, 0, "levels"), (10, 17, "levels")):
      d = bytearray(data)
      d[offset] = value
      with pytest.raises(gaussjax.DecodeError, match=message):
        gaussjax.decode_gaussians(bytes(d))

  def test_bad_level_arguments(self, levels_file):
    _, data = levels_file
    for level in (3, -1, True, 1.0):
      with pytest.raises(ValueError, match="level"):
        gaussjax.decode(data, level=level)
    v1 = gaussjax.encode_gaussians(_levels()[0], 40, 56)
    gaussjax.decode(v1, level=0)
    with pytest.raises(ValueError, match="level"):
      gaussjax.decode(v1, level=1)

  def test_encode_levels_checks(self):
    with pytest.raises(ValueError, match="channel"):
      encode_levels([_levels((3,))[0], _levels((3,), c=1)[0]], 40, 56)
    with pytest.raises(ValueError, match="levels"):
      encode_levels([], 40, 56)

  def test_level_shares_are_geometric(self):
    s = level_shares(3)
    np.testing.assert_allclose(s, [1 / 7, 2 / 7, 4 / 7])
    with pytest.raises(ValueError):
      level_shares(17)

  def test_version_2_golden_file_decodes(self):
    """``tests/data/v2_levels.gjx``: ``encode`` (levels=3, bpp=3, 60 fit / 10 QAT steps
    split over the levels, reference backend) of a 32x48 crop of kodim23; the expected
    Gaussians beside it."""
    data = open(os.path.join(DATA, "v2_levels.gjx"), "rb").read()
    expected = np.load(os.path.join(DATA, "v2_levels_expected.npz"))
    g, (h, w) = gaussjax.decode_gaussians(data)
    assert (h, w) == (32, 48)
    np.testing.assert_array_equal(g.means, expected["means"])
    np.testing.assert_array_equal(g.chol, expected["chol"])
    np.testing.assert_array_equal(g.colors, expected["colors"])
    meta = info(data)
    assert [lv["num_gaussians"] for lv in meta["levels"]] == list(expected["level_counts"])
    assert [lv["end"] for lv in meta["levels"]] == list(expected["level_ends"])
    # The old version keeps decoding next to it.
    gaussjax.decode(open(os.path.join(DATA, "v1_rgb.gjx"), "rb").read())


class TestEncoder:

  def test_levels_1_is_the_single_level_file(self):
    img = _crop(8, 12)
    cfg = dict(quality=40, fit_steps=6, qat_steps=2, backend="reference")
    one = gaussjax.encode(img, gaussjax.CodecConfig(levels=1, **cfg))
    assert one == gaussjax.encode(img, gaussjax.CodecConfig(**cfg))
    assert one[4] == 1

  def test_two_levels_fast(self):
    img = _crop(16, 24)
    data = gaussjax.encode(img, gaussjax.CodecConfig(bpp=4.0, levels=2, fit_steps=2, qat_steps=0,
                                                     backend="reference"))
    meta = info(data)
    assert data[4] == 2 and meta["num_levels"] == 2
    assert abs(8 * len(data) / (16 * 24) - 4.0) <= 4.0 * 0.05
    psnrs = [float(gaussjax.psnr(gaussjax.decode(data, level=k), img)) for k in range(2)]
    assert psnrs[0] < psnrs[1], psnrs

  @pytest.mark.slow
  def test_encode_batch_writes_progressive_files(self):
    img = _crop(16, 24)
    cfg = gaussjax.CodecConfig(bpp=4.0, levels=2, fit_steps=2, qat_steps=0, backend="reference")
    (data,) = gaussjax.encode_batch([img], cfg)
    assert data == gaussjax.encode(img, cfg) and data[4] == 2

  @pytest.mark.slow
  def test_rate_and_prefixes_improve(self, encoded):
    img, data = encoded
    h, w = img.shape[:2]
    assert data[4] == 2
    assert abs(8 * len(data) / (h * w) - BPP) <= BPP * 0.05
    meta = info(data)
    assert meta["num_levels"] == 3
    sizes = [lv["bytes"] for lv in meta["levels"]]
    assert sizes[0] < sizes[1] < sizes[2], sizes
    psnrs = [float(gaussjax.psnr(gaussjax.decode(data, level=k), img)) for k in range(3)]
    assert psnrs[0] < psnrs[1] < psnrs[2], psnrs
    assert psnrs[2] > 20.0, psnrs

  @pytest.mark.slow
  def test_quality_mode_splits_gaussians(self):
    img = _crop(16, 24)
    data = gaussjax.encode(img, gaussjax.CodecConfig(quality=60, levels=2, fit_steps=20,
                                                     qat_steps=4, backend="reference"))
    counts = [lv["num_gaussians"] for lv in info(data)["levels"]]
    assert len(counts) == 2 and counts[0] < counts[1]

  def test_config_checks_levels(self):
    for bad in (0, 17, 2.0, True):
      with pytest.raises(ValueError, match="levels"):
        gaussjax.CodecConfig(levels=bad)

  def test_rate_below_smallest_file(self):
    with pytest.raises(ValueError, match="smallest"):
      gaussjax.encode(_crop(16, 24), gaussjax.CodecConfig(bpp=0.5, levels=4, **FAST))


class TestCli:

  def test_decode_level_partial_and_info(self, tmp_path, capsys):
    import json

    from gaussjax.cli._cli import main
    data = open(os.path.join(DATA, "v2_levels.gjx"), "rb").read()
    src = tmp_path / "p.gjx"
    src.write_bytes(data)
    assert main(["info", str(src)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert len(meta["levels"]) == 3
    png = tmp_path / "l0.png"
    assert main(["decode", str(src), "-o", str(png), "--level", "0"]) == 0
    expected = np.asarray(gaussjax.decode(data, level=0))
    actual = np.asarray(Image.open(png), np.float32) / 255
    assert np.abs(actual - expected).max() <= 0.5 / 255 + 1e-6
    cut = tmp_path / "cut.gjx"
    cut.write_bytes(data[:meta["levels"][1]["end"] + 3])
    capsys.readouterr()
    assert main(["decode", str(cut), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    assert main(["decode", str(cut), "-o", str(tmp_path / "x.png"), "--partial"]) == 0
    assert main(["decode", str(src), "-o", str(tmp_path / "y.png"), "--level", "5"]) == 2
    from gaussjax.cli._cli import build_parser
    args = build_parser().parse_args(["encode", "a.png", "-o", "a.gjx", "--bpp", "1", "--levels", "3"])
    assert args.levels == 3


class TestFuzz:

  def _seeds(self):
    return progressive_seed_files((((10, 40, 120), 3, (40, 56)), ((5, 0, 30), 1, (17, 33)),
                                   ((20,), 4, (24, 20))))

  def test_fuzz_400_mutants(self):
    stats = fuzz(self._seeds(), 400, seed=99)
    assert stats["accepted"] + stats["rejected"] == 400
    assert stats["rejected"] > 200

  def test_fuzz_300_mutants_partial(self):
    def decode(data):
      return gaussjax.decode_gaussians(data, partial=True)
    stats = fuzz(self._seeds(), 300, seed=7, decode=decode)
    assert stats["accepted"] + stats["rejected"] == 300
    assert stats["accepted"] > 0
