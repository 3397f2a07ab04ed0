"""The gaussjax command line."""

import subprocess
import sys
import types

import numpy as np
import pytest

import gaussjax
from gaussjax import _cli


@pytest.fixture
def small_png(tmp_path, kodak_crop):
  path = tmp_path / "in.png"
  gaussjax.save_image(path, kodak_crop[:24, :32])
  return path


def test_fit_writes_output_and_prints_metrics(tmp_path, small_png, capsys):
  out = tmp_path / "out.png"
  rc = _cli.main(["fit", str(small_png), "--gaussians", "30", "--steps", "20", "--init", "slic",
                  "--backend", "reference", "--out", str(out)])
  assert rc == 0
  captured = capsys.readouterr()
  assert "PSNR" in captured.out and "SSIM" in captured.out and "time" in captured.out
  assert "[" in captured.err and "20/20" in captured.err  # the progress bar
  psnr = float(captured.out.split("PSNR ")[1].split(" dB")[0])
  result = gaussjax.load_image(out)
  assert result.shape == (24, 32, 3)
  # The printed PSNR is the written image's (up to 8-bit rounding).
  assert abs(float(gaussjax.psnr(result, gaussjax.load_image(small_png))) - psnr) < 0.2
  assert psnr > 18.0


def test_fit_random_init_quiet(tmp_path, small_png, capsys):
  out = tmp_path / "out.png"
  rc = _cli.main(["fit", str(small_png), "-n", "20", "-s", "5", "--init", "random", "--seed", "3",
                  "--backend", "reference", "-o", str(out), "--quiet"])
  assert rc == 0
  assert capsys.readouterr().err == ""
  assert out.exists()


def test_fit_refuses_to_overwrite_its_input(small_png, capsys):
  before = small_png.read_bytes()
  rc = _cli.main(["fit", str(small_png), "-n", "5", "-s", "2", "--backend", "reference",
                  "--out", str(small_png)])
  assert rc == 2
  assert "refusing to overwrite" in capsys.readouterr().err
  assert small_png.read_bytes() == before


def test_fit_reports_bad_input_in_one_line(tmp_path, capsys):
  rc = _cli.main(["fit", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o.png")])
  assert rc == 2
  err = capsys.readouterr().err
  assert "does not exist" in err and "Traceback" not in err
  rc = _cli.main(["fit", "sample:nothing", "--out", str(tmp_path / "o.png")])
  assert rc == 2 and "unknown sample 'nothing'" in capsys.readouterr().err


def test_bad_arguments_exit_with_usage(tmp_path):
  with pytest.raises(SystemExit) as e:
    _cli.main(["fit", "x.png", "--gaussians", "0", "--out", "o.png"])
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    _cli.main(["fit", "x.png", "--init", "grid", "--out", "o.png"])
  with pytest.raises(SystemExit):
    _cli.main([])


def test_help_documents_samples(capsys):
  with pytest.raises(SystemExit):
    _cli.main(["fit", "--help"])
  text = capsys.readouterr().out
  assert "sample:astronaut" in text and "--gaussians" in text


def test_sample_images_load():
  image = _cli.read_input_image("sample:camera")
  assert image.shape == (512, 512, 1) and image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0


def test_plugin_modules_register_subcommands(monkeypatch, capsys):
  calls = []
  plugin = types.ModuleType("gaussjax._cli_test_plugin")

  def register(subparsers):
    p = subparsers.add_parser("hello")
    p.set_defaults(func=lambda args: calls.append("hello") or 0)

  plugin.register = register
  monkeypatch.setitem(sys.modules, "gaussjax._cli_test_plugin", plugin)
  monkeypatch.setattr(_cli, "PLUGIN_MODULES", ("gaussjax._cli_test_plugin", "gaussjax._cli_absent"))
  assert _cli.main(["hello"]) == 0
  assert calls == ["hello"]


def test_console_script_runs():
  result = subprocess.run([sys.executable, "-m", "gaussjax._cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0 and "gaussjax" in result.stdout
