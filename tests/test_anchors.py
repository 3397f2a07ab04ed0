"""benchmarks/anchors.json: other codecs' Kodak points, and rd.py's table of them."""

import importlib.util
import json
import os

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
with open(os.path.join(BENCHMARKS, "anchors.json")) as f:
  ANCHORS = json.load(f)["anchors"]


@pytest.fixture()
def rd(monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  spec = importlib.util.spec_from_file_location("gaussjax_rd", os.path.join(BENCHMARKS, "rd.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", sorted(ANCHORS))
def test_anchor_is_a_curve_with_its_source(name):
  a = ANCHORS[name]
  assert a["source"].startswith("github.com/")
  assert len(a["bpp"]) == len(a["psnr"]) >= 4
  assert np.all(np.diff(a["bpp"]) > 0) and np.all(np.diff(a["psnr"]) > 0)
  per_image = a.get("per_image_psnr")
  if per_image is not None:
    # All 24 images, and their mean is the published mean (a copying slip shows here).
    assert sorted(map(int, per_image)) == list(range(1, 25))
    assert all(len(v) == len(a["bpp"]) for v in per_image.values())
    np.testing.assert_allclose(np.mean(list(per_image.values()), 0), a["psnr"], atol=6e-4)


def _rows(images, shift_db):
  """gaussjax rows 'shift_db' above GaussianImage's own per-image curve, at its rates."""
  a = ANCHORS["GaussianImage"]
  return [dict(codec="gaussjax", image=i, param=b, bpp=b, psnr=p + shift_db)
          for i in images for b, p in zip(a["bpp"], a["per_image_psnr"][str(i)])]


RATES = ANCHORS["GaussianImage"]["bpp"]


def test_per_image_bd_rate_on_the_same_images(rd):
  same = {r["published"]: r for r in rd.anchor_rows(_rows([1, 13], 0.0), RATES, True)}
  assert same["GaussianImage"]["bd_over"] == "the same images"
  assert abs(same["GaussianImage"]["gaussjax_bd_rate_pct"]) < 1e-6
  better = {r["published"]: r for r in rd.anchor_rows(_rows([1, 13], 0.5), RATES, True)}
  assert better["GaussianImage"]["gaussjax_bd_rate_pct"] < -5
  # Anchors without per-image values fall back to mean curves and say so.
  assert better["COIN"]["bd_over"].startswith("mean curves: 2 images")
  assert np.isfinite(better["COIN"]["gaussjax_bd_rate_pct"])


def test_no_bd_rate_at_another_resolution(rd):
  rows = rd.anchor_rows(_rows([1], 0.0), RATES, False)
  assert all(r["gaussjax_bd_rate_pct"] == "n/a (other resolution)" for r in rows)
