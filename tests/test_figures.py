"""benchmarks/figures.py: the RD figure reads rd.py's results file format."""

import importlib.util
import json
import os
import types

import pytest

pytest.importorskip("matplotlib")

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


@pytest.fixture()
def figures(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  spec = importlib.util.spec_from_file_location("gaussjax_figures", os.path.join(BENCHMARKS, "figures.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, "RESULTS", str(tmp_path / "results"))
  monkeypatch.setattr(module, "IMAGES", str(tmp_path / "images"))
  os.makedirs(module.RESULTS)
  return module


def _args(**kw):
  base = dict(classic=None, classic_codecs="", max_bpp=2.0, dpi=60, max_kb=280)
  base.update(kw)
  return types.SimpleNamespace(**base)


def test_average_curves_means_over_images(figures):
  rows = [dict(image=i, codec=c, param=p, bpp=b + 0.1 * i, psnr=30 + p + i)
          for i in (1, 2) for c, b in (("jpeg", 0.5), ("gaussjax", 0.4)) for p in (1, 2)]
  curves = figures._average_curves(rows, ("codec",), ("param",))
  assert sorted(curves) == ["gaussjax", "jpeg"]
  # param 1: images at (0.6, 32) and (0.7, 33); param 2: (0.6, 33) and (0.7, 34)
  assert curves["jpeg"] == [(pytest.approx(0.65), pytest.approx(32.5), 2),
                            (pytest.approx(0.65), pytest.approx(33.5), 2)]
  assert [p[2] for p in curves["gaussjax"]] == [2, 2]


def test_rd_plot_from_results_file(figures, capsys):
  figures.rd_plot(_args())
  assert "skipped" in capsys.readouterr().out
  rows = [dict(image=i, codec=c, param=p, bytes=100, bpp=p * s, psnr=25 + 4 * p + i)
          for i in (1, 2) for c, s in (("gaussjax", 1.0), ("webp", 1.2)) for p in (0.25, 0.5, 1.0)]
  with open(os.path.join(figures.RESULTS, "rd.json"), "w") as f:
    json.dump({"name": "rd", "machine": {}, "meta": {"images": "kodim [1, 2]"}, "rows": rows}, f)
  figures.rd_plot(_args())
  path = os.path.join(figures.IMAGES, "rd_kodak.png")
  assert os.path.getsize(path) < 300 * 1024
  assert "gaussjax (3 points)" in capsys.readouterr().out


def test_rd_plot_joins_runs_on_disjoint_images(figures, capsys):
  """``A.json+B.json``: one curve over the images of both runs (mean of their rows)."""
  for name, image in (("a.json", 1), ("b.json", 2)):
    rows = [dict(image=image, codec="gaussjax", param=p, bytes=100, bpp=p, psnr=25 + 4 * p + image)
            for p in (0.25, 0.5, 1.0)]
    with open(os.path.join(figures.RESULTS, name), "w") as f:
      json.dump({"meta": {"images": f"kodim [{image}] at 384x256 (x)"}, "rows": rows}, f)
  rows, meta = figures._load_rd("a.json+b.json")
  assert len(rows) == 6 and meta["images"] == "kodim [1, 2] at 384x256 (x)"
  curves = figures._average_curves(rows, ("codec",), ("param",))
  assert curves["gaussjax"][0] == (pytest.approx(0.25), pytest.approx(27.5), 2)
  figures.rd_plot(_args(rd_results="a.json+b.json,missing.json"))
  out = capsys.readouterr().out
  assert "a.json+b.json: gaussjax (3 points)" in out
  assert os.path.exists(os.path.join(figures.IMAGES, "rd_kodak.png"))
