"""The gaussjax command line, through its real entry point (``gaussjax.cli._cli.main``).

What a new user trips over (issue 18): outputs checked before any work, one
spelling of each option, messages that name the flag, Ctrl-C, progress, tiny
images. ``docs/new_user.md`` shows the same commands with their output.
"""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import gaussjax
from gaussjax.cli import _cli, _cli_common
from gaussjax.codec import _formats
from gaussjax.codec._fuzz import bomb


class FakeTty(io.StringIO):
  """A stderr that says it is a terminal, so the progress bar draws."""

  def isatty(self):
    return True


@pytest.fixture
def small_png(tmp_path, kodak_crop):
  path = tmp_path / "in.png"
  gaussjax.save_image(path, kodak_crop[:24, :32])
  return path


@pytest.fixture
def no_work(monkeypatch):
  """Fails the test if a command starts reading, fitting or encoding."""
  def work(*args, **kwargs):
    raise AssertionError("the command started working before it checked its output")
  monkeypatch.setattr(_cli_common, "read_input_image", work)
  monkeypatch.setattr(_cli, "read_input_image", work)
  monkeypatch.setattr(gaussjax, "fit", work)
  monkeypatch.setattr(_formats, "_encode", work)
  monkeypatch.setattr(_formats, "decode", work)


def run(argv, capsys):
  """``(exit status, stdout, stderr)`` of ``gaussjax ARGV``; usage errors give status 2 too."""
  try:
    rc = _cli.main([str(a) for a in argv])
  except SystemExit as e:
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


# --------------------------------------------------------------------------- fit


def test_fit_writes_output_and_prints_metrics(tmp_path, small_png, capsys, monkeypatch):
  monkeypatch.setattr(sys, "stderr", FakeTty())
  out = tmp_path / "out.png"
  rc = _cli.main(["fit", str(small_png), "--gaussians", "30", "--steps", "20", "--init", "slic",
                  "--backend", "reference", "--out", str(out)])
  err = sys.stderr.getvalue()
  assert rc == 0
  stdout = capsys.readouterr().out
  assert "PSNR" in stdout and "SSIM" in stdout and "time" in stdout
  assert "32x24, 3 channels" in stdout  # WxH, channels apart
  assert "fit" in err and "20/20" in err  # the tqdm bar, drawn on a terminal
  psnr = float(stdout.split("PSNR ")[1].split(" dB")[0])
  result = gaussjax.load_image(out)
  assert result.shape == (24, 32, 3)
  # The printed PSNR is the written image's (up to 8-bit rounding).
  assert abs(float(gaussjax.psnr(result, gaussjax.load_image(small_png))) - psnr) < 0.2
  assert psnr > 18.0


def test_no_carriage_returns_into_a_log_file(tmp_path, small_png, capsys):
  rc, out, err = run(["fit", small_png, "-n", "10", "-s", "5", "--backend", "reference",
                      "-o", tmp_path / "o.png"], capsys)
  assert rc == 0
  assert "\r" not in err and "fitting 10 Gaussians to 32x24, 3 channels" in err


def test_fit_random_init_quiet(tmp_path, small_png, capsys, monkeypatch):
  monkeypatch.setattr(sys, "stderr", FakeTty())
  out = tmp_path / "out.png"
  rc = _cli.main(["fit", str(small_png), "-n", "20", "-s", "5", "--init", "random", "--seed", "3",
                  "--backend", "reference", "-o", str(out), "--quiet"])
  assert rc == 0
  assert sys.stderr.getvalue() == ""
  assert out.exists()


def test_fit_refuses_to_overwrite_its_input(small_png, capsys):
  before = small_png.read_bytes()
  rc, _, err = run(["fit", small_png, "-n", "5", "-s", "2", "--out", small_png], capsys)
  assert rc == 2 and "refusing to overwrite" in err
  assert small_png.read_bytes() == before


def test_fit_reports_bad_input_in_one_line(tmp_path, capsys):
  rc, _, err = run(["fit", tmp_path / "missing.png", "--out", tmp_path / "o.png"], capsys)
  assert rc == 2
  assert err == f"gaussjax fit: error: input file '{tmp_path / 'missing.png'}' does not exist\n"
  rc, _, err = run(["fit", "sample:nothing", "--out", tmp_path / "o.png"], capsys)
  assert rc == 2 and "unknown sample 'nothing'" in err


def test_bad_arguments_exit_with_usage(tmp_path):
  with pytest.raises(SystemExit) as e:
    _cli.main(["fit", "x.png", "--gaussians", "0", "--out", "o.png"])
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    _cli.main(["fit", "x.png", "--init", "grid", "--out", "o.png"])
  with pytest.raises(SystemExit):
    _cli.main([])


def test_sample_images_load():
  image = _cli_common.read_input_image("sample:camera")
  assert image.shape == (512, 512, 1) and image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0


# --------------------------------------------------------------------------- outputs first


@pytest.mark.parametrize("argv, message", [
    (["fit", "{png}", "-o", "{tmp}/missing_dir/k.png"], "folder '{tmp}/missing_dir' does not exist"),
    (["fit", "{png}", "-o", "{tmp}/late.xyz"], "unknown image extension '.xyz'"),
    (["fit", "{png}", "-o", "{tmp}"], "is a folder"),
    (["encode", "{png}", "-o", "{tmp}", "--bpp", "1"], "is a folder"),
    (["encode", "{png}", "-o", "{tmp}/out.png", "--bpp", "1"], "name it with the .gjx extension"),
    (["encode", "{png}", "-o", "{tmp}/missing_dir/a.gjx", "--quality", "50"], "does not exist"),
    (["decode", "{gjx}", "-o", "{tmp}/out.gjx"], "unknown image extension '.gjx'"),
    (["decode", "{gjx}", "-o", "{tmp}/nothere/out.png"], "does not exist"),
    (["encode-dir", "{tmp}/in", "-o", "{png}", "--bpp", "1"], "exists and is not a folder"),
])
def test_outputs_are_checked_before_any_work(argv, message, tmp_path, small_png, capsys, no_work):
  (tmp_path / "in").mkdir()
  gaussjax.save_image(tmp_path / "in" / "a.png", np.zeros((4, 4, 3), np.float32))
  gjx = tmp_path / "a.gjx"
  gjx.write_bytes(bomb(4, 4))
  fill = dict(png=small_png, tmp=tmp_path, gjx=gjx)
  rc, out, err = run([a.format(**fill) for a in argv], capsys)
  assert rc == 2 and out == ""
  assert err.count("\n") == 1 and "--output" in err and message.format(**fill) in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path, small_png, capsys, no_work):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    rc, _, err = run(["fit", small_png, "-o", locked / "k.png"], capsys)
  finally:
    locked.chmod(0o700)
  assert rc == 2 and "is not writable" in err


def test_unwritable_output_folder_as_the_os_reports_it(tmp_path, small_png, capsys, no_work,
                                                       monkeypatch):
  """The same check where the tests run as root (who may write anywhere): os.access says no."""
  locked = tmp_path / "locked"
  locked.mkdir()
  real_access = os.access
  monkeypatch.setattr(_cli_common.os, "access",
                      lambda path, mode: False if os.fspath(path) == str(locked)
                      else real_access(path, mode))
  for argv in (["fit", small_png, "-o", locked / "k.png"],
               ["encode", small_png, "--quality", "50", "-o", locked / "k.gjx"],
               ["encode-dir", tmp_path, "--quality", "50", "-o", locked / "out"]):
    rc, _, err = run(argv, capsys)
    assert rc == 2 and f"folder '{locked}' is not writable" in err, err


@pytest.mark.parametrize("flag", ["-o", "--output", "--out"])
def test_every_command_takes_every_output_spelling(flag):
  parser = _cli.build_parser()
  for argv in (["fit", "a.png"], ["encode", "a.png", "--bpp", "1"], ["decode", "a.gjx"],
               ["encode-dir", "folder", "--quality", "50"]):
    assert parser.parse_args([*argv, flag, "x"]).output == "x"


def test_errors_name_the_flag_and_agree_across_commands(tmp_path, small_png, capsys):
  rc, _, err = run(["fit", small_png, "-o", "o.png", "--time-budget", "0"], capsys)
  assert rc == 2 and "argument --time-budget: '0' must be a positive number" in err
  messages = []
  for argv in (["encode", small_png, "-o", "o.gjx"], ["encode-dir", tmp_path, "-o", "out"]):
    rc, _, err = run([*argv, "--bpp", "0"], capsys)
    assert rc == 2
    messages.append(err.splitlines()[-1].split(": error: ")[1])
  assert messages == ["argument --bpp: '0' must be a positive number"] * 2
  # A missing input reads the same for every command.
  for argv in (["encode", "nope.png", "-o", "o.gjx", "--bpp", "1"],
               ["decode", "nope.gjx", "-o", "o.png"], ["info", "nope.gjx"]):
    rc, _, err = run(argv, capsys)
    assert rc == 2 and f"error: input file '{argv[1]}' does not exist" in err


def test_help_describes_every_command_and_shows_defaults(capsys):
  parser = _cli.build_parser()
  commands = parser._subparsers._group_actions[0].choices
  assert sorted(commands) == ["decode", "decode-video", "encode", "encode-dir", "encode-video",
                             "fit", "info"]
  for name, sub in commands.items():
    assert sub.description and len(sub.description) > 40, name
  encode_help = commands["encode"].format_help()
  defaults = gaussjax.CodecConfig()
  assert "--fit-steps" in encode_help and f"(default: {defaults.fit_steps})" in encode_help
  assert f"(default: {defaults.qat_steps})" in encode_help
  assert "manifest.jsonl" in commands["encode-dir"].format_help()
  assert "sample:astronaut" in commands["fit"].format_help()


def test_subcommands_come_from_one_registry(monkeypatch, capsys):
  calls = []

  def register_hello(subparsers):
    p = _cli_common.add_subcommand(subparsers, "hello", help="say hello",
                                   description="A subcommand added from another module.",
                                   run=lambda args: calls.append(args.output) or 0)
    _cli_common.add_output_argument(p, "where")

  monkeypatch.setattr(_cli, "SUBCOMMANDS", (*_cli.SUBCOMMANDS, register_hello))
  assert _cli.main(["hello", "--out", "x"]) == 0
  assert calls == ["x"]


def test_console_script_runs():
  for module in ("gaussjax", "gaussjax.cli._cli"):
    result = subprocess.run([sys.executable, "-m", module, "--version"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "gaussjax" in result.stdout


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_in_fit_and_encode_exits_130_with_one_line(tmp_path, small_png, capsys,
                                                          monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(gaussjax, "fit", interrupted)
  out = tmp_path / "k.png"
  rc, _, err = run(["fit", small_png, "-n", "5", "-s", "2", "-o", out, "-q"], capsys)
  assert rc == 130 and err == "gaussjax fit: interrupted; no output written\n"
  monkeypatch.setattr(_formats, "_encode", interrupted)
  rc, _, err = run(["encode", small_png, "--bpp", "1", "-o", tmp_path / "k.gjx", "-q"], capsys)
  assert rc == 130 and err == "gaussjax encode: interrupted; no output written\n"
  assert sorted(os.listdir(tmp_path)) == ["in.png"]  # no output, no temporary file


def test_sigint_stops_fit_cleanly(tmp_path, small_png):
  out = tmp_path / "k.png"
  child = subprocess.Popen(
      [sys.executable, "-m", "gaussjax", "fit", str(small_png), "-n", "20", "-s", "1000000",
       "--backend", "reference", "-o", str(out)],
      stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    line = child.stderr.readline()  # the first line: the input, its size, the memory plan
    assert "32x24, 3 channels" in line and "memory budget" in line, line
    line = child.stderr.readline()  # "gaussjax fit: fitting ..." comes just before the loop
    assert "fitting" in line, line
    time.sleep(2.0)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == 130, err
  assert err.strip().splitlines() == ["gaussjax fit: interrupted; no output written"]
  assert sorted(os.listdir(tmp_path)) == ["in.png"]


# --------------------------------------------------------------------------- encode, decode, info


def test_encode_shows_progress_and_reports_bpp_and_psnr(tmp_path, small_png, capsys,
                                                        monkeypatch):
  monkeypatch.setattr(sys, "stderr", FakeTty())
  out = tmp_path / "a.gjx"
  rc = _cli.main(["encode", str(small_png), "--bpp", "2", "--fit-steps", "20", "--qat-steps", "4",
                  "--backend", "reference", "--output", str(out)])
  err = sys.stderr.getvalue()
  assert rc == 0
  for stage in ("encode: fit", "encode: fine-tune", "encode: rate search", "25/25"):
    assert stage in err, (stage, err)
  stdout = capsys.readouterr().out
  data = out.read_bytes()
  assert f"{len(data)} bytes  {8 * len(data) / (24 * 32):.4f} bpp  PSNR " in stdout
  psnr = float(stdout.split("PSNR ")[1].split(" dB")[0])
  decoded = np.asarray(gaussjax.decode(data, backend="reference"))
  assert psnr == pytest.approx(float(gaussjax.psnr(decoded, gaussjax.load_image(small_png))),
                               abs=0.01)


def test_quiet_commands_write_nothing_to_stderr(tmp_path, small_png, capsys, monkeypatch):
  monkeypatch.setattr(sys, "stderr", FakeTty())
  gjx, png = tmp_path / "a.gjx", tmp_path / "b.png"
  for argv in (["encode", small_png, "--quality", "40", "--fit-steps", "10", "--qat-steps", "2",
                "--backend", "reference", "-o", gjx],
               ["decode", gjx, "-o", png, "--backend", "reference"]):
    assert _cli.main([str(a) for a in argv] + ["--quiet"]) == 0
  assert sys.stderr.getvalue() == ""
  assert "32x24, 3 channels -> " in capsys.readouterr().out


def test_info_prints_the_size_as_wxh(tmp_path, capsys):
  path = tmp_path / "a.gjx"
  path.write_bytes(bomb(7, 5, channels=1))
  rc, out, _ = run(["info", path], capsys)
  assert rc == 0 and '"size": "7x5"' in out and '"channels": 1' in out


def test_decode_refuses_a_decompression_bomb(tmp_path, capsys):
  path = tmp_path / "bomb.gjx"
  path.write_bytes(bomb())
  assert len(path.read_bytes()) == 28
  rc, _, err = run(["decode", path, "-o", tmp_path / "b.png"], capsys)
  assert rc == 2 and "65535x4096" in err and "--max-pixels" in err
  assert not (tmp_path / "b.png").exists()
  # The limit is the user's to move: a small file of 12x10 pixels with --max-pixels 100.
  path.write_bytes(bomb(12, 10))
  rc, _, err = run(["decode", path, "-o", tmp_path / "b.png", "--max-pixels", "100"], capsys)
  assert rc == 2 and "12x10 = 120 pixels" in err
  rc, _, err = run(["decode", path, "-o", tmp_path / "b.png", "--max-pixels", "120"], capsys)
  assert rc == 0 and Image.open(tmp_path / "b.png").size == (12, 10)


def test_pallas_on_a_cpu_says_interpret_mode(tmp_path, capsys):
  from gaussjax.rendering._pallas import _use_interpret
  path = tmp_path / "a.gjx"
  path.write_bytes(bomb(6, 4))
  rc, _, err = run(["decode", path, "-o", tmp_path / "a.png", "--backend", "pallas"], capsys)
  assert rc == 0
  assert ("interpret mode" in err) == _use_interpret()
  # The first line (input, bytes, output), then the note only in interpret mode.
  assert err.splitlines()[0] == f"gaussjax decode: {path}: {path.stat().st_size} bytes -> " \
      f"{tmp_path / 'a.png'}"
  assert err.count("\n") == 1 + int(_use_interpret())


# --------------------------------------------------------------------------- tiny images


@pytest.fixture
def tiny(tmp_path):
  rng = np.random.default_rng(0)
  paths = {}
  for side in (1, 2):
    paths[side] = tmp_path / f"tiny{side}.png"
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(paths[side])
  return paths


def test_fit_of_one_pixel_prints_sane_metrics(tmp_path, tiny, capsys):
  rc, out, _ = run(["fit", tiny[1], "-n", "1", "-s", "30", "--backend", "reference",
                    "-o", tmp_path / "o.png", "-q"], capsys)
  assert rc == 0
  assert "inf" not in out and "nan" not in out
  assert "SSIM n/a" in out and "1x1, 3 channels" in out


@pytest.mark.parametrize("side", [1, 2])
def test_tiny_images_encode_with_quality(side, tmp_path, tiny, capsys):
  out = tmp_path / "t.gjx"
  rc, stdout, err = run(["encode", tiny[side], "--quality", "50", "--fit-steps", "10",
                         "--qat-steps", "2", "--backend", "reference", "-o", out, "-q"], capsys)
  assert rc == 0, err
  assert "nan" not in stdout and f"({side}x{side}, 3 channels)" in stdout
  decoded = gaussjax.decode(out.read_bytes(), backend="reference")
  assert decoded.shape == (side, side, 3)


def test_tiny_images_name_the_smallest_bpp(tmp_path, tiny, capsys, monkeypatch):
  monkeypatch.setattr(gaussjax.fitting._fit, "fit", lambda *a, **k: pytest.fail("fitted a hopeless target"))
  rc, _, err = run(["encode", tiny[1], "--bpp", "8", "-o", tmp_path / "t.gjx", "-q"], capsys)
  assert rc == 2 and err.count("\n") == 1
  assert "below the smallest file for a 1x1 image" in err and "bpp)" in err
  assert "needs a quality" in err
