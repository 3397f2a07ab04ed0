"""benchmarks/_machine.join_results: runs of one benchmark on disjoint images read as one."""

import importlib.util
import json
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")


def _module(name, monkeypatch):
  monkeypatch.syspath_prepend(BENCHMARKS)
  spec = importlib.util.spec_from_file_location(f"gaussjax_bench_{name}",
                                                os.path.join(BENCHMARKS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write(path, images, settings="steps=1"):
  rows = [dict(image=i, codec="gaussjax", bpp=0.5, psnr=30.0 + i) for i in images]
  doc = {"meta": {"images": f"kodim {images} at 384x256 (x)", "gaussjax": settings},
         "rows": rows}
  with open(path, "w") as f:
    json.dump(doc, f)
  return str(path)


def test_join_results_joins_rows_and_image_lists(tmp_path, monkeypatch):
  machine = _module("_machine", monkeypatch)
  a = _write(tmp_path / "a.json", [2, 5])
  b = _write(tmp_path / "b.json", [1])
  bare = tmp_path / "c.json"
  bare.write_text(json.dumps([dict(image=9, codec="gaussjax", bpp=1.0, psnr=20.0)]))
  joined = machine.join_results([a, b, str(bare)])
  assert [r["image"] for r in joined["rows"]] == [2, 5, 1, 9]
  assert joined["meta"]["images"] == "kodim [1, 2, 5] at 384x256 (x)"
  assert len(joined["parts"]) == 3 and joined["parts"][2][0]["image"] == 9
  one = machine.join_results([a])  # one file: its meta as written
  assert one["meta"] == {"images": "kodim [2, 5] at 384x256 (x)", "gaussjax": "steps=1"}
  assert machine.kodak_images("24 images") is None


def test_rd_compare_join_keeps_differing_settings(tmp_path, monkeypatch):
  pytest.importorskip("PIL")
  rd_compare = _module("rd_compare", monkeypatch)
  a = _write(tmp_path / "a.json", [1])
  b = _write(tmp_path / "b.json", [2], settings="steps=2")
  joined = rd_compare._join([a, b])
  assert joined["meta"]["gaussjax"] == "steps=1"
  assert joined["meta"]["gaussjax_of"] == {b: "steps=2"}
  assert len(joined["rows"]) == 2
