"""The directory job: manifest, resume, crash safety, unreadable files.

The job machinery is tested with a tiny lossless stand-in codec (8-bit PNG
bytes), so these tests are fast and independent of the fitting code; the real
codec goes through the same code path in ``test_cli_encode_dir``.
"""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gaussjax.batch import _encode_dir, _journal
from gaussjax.batch._encode_dir import encode_dir

SETTINGS = "stand-in codec"


def fake_encode(images):
  out = []
  for image in images:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, "PNG")
    out.append(buffer.getvalue())
  return out


def fake_decode(data):
  return np.asarray(Image.open(io.BytesIO(data)), np.float32) / 255.0


def read_png(path):
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.float32) / 255.0


def make_folder(folder: Path, count: int, *, sizes=((8, 8),), corrupt: bool = True) -> list[str]:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  names = []
  for i in range(count):
    h, w = sizes[i % len(sizes)]
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    name = f"img{i:02d}.png"
    Image.fromarray(pixels).save(folder / name)
    names.append(name)
  if corrupt:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
  (folder / "notes.txt").write_text("not an image: ignored")
  return names


def run_job(in_dir, out_dir, **kwargs):
  kwargs.setdefault("batch_size", 3)
  return encode_dir(in_dir, out_dir, encode_fn=fake_encode, decode_fn=fake_decode,
                    settings=SETTINGS, read_fn=read_png, progress=False, **kwargs).rows


def test_manifest_rows_and_outputs(tmp_path):
  names = make_folder(tmp_path / "in", 5, sizes=((8, 8), (8, 12)))
  rows = run_job(tmp_path / "in", tmp_path / "out")
  assert [r.name for r in rows] == sorted(names + ["broken.png"])
  manifest = _journal.read_manifest(tmp_path / "out" / "manifest.csv")
  assert [m["name"] for m in manifest] == [r.name for r in rows]
  assert list(manifest[0]) == list(_journal.MANIFEST_COLUMNS)
  for m in manifest:
    if m["name"] == "broken.png":
      assert m["status"] == "error"
      assert "broken" in m["reason"] or "identify" in m["reason"] or "Error" in m["reason"]
      assert not (tmp_path / "out" / "broken.gjx").exists()
      continue
    assert m["status"] == "ok", m
    data = (tmp_path / "out" / m["output"]).read_bytes()
    h, w = int(m["height"]), int(m["width"])
    assert int(m["bytes"]) == len(data)
    assert float(m["bpp"]) == pytest.approx(8 * len(data) / (h * w), rel=1e-4)
    assert float(m["psnr"]) == float("inf")  # the stand-in codec is lossless
    expected = read_png(tmp_path / "in" / m["name"])
    np.testing.assert_array_equal(fake_decode(data), expected)
  assert not (tmp_path / "out" / "notes.gjx").exists()


def test_rerun_skips_finished_and_redoes_changed(tmp_path):
  make_folder(tmp_path / "in", 4)
  calls = []

  def counting_encode(images):
    calls.append(len(images))
    return fake_encode(images)

  kwargs = dict(encode_fn=counting_encode, decode_fn=fake_decode, read_fn=read_png,
                progress=False, batch_size=2)
  encode_dir(tmp_path / "in", tmp_path / "out", settings=SETTINGS, **kwargs)
  assert sum(calls) == 4
  calls.clear()
  encode_dir(tmp_path / "in", tmp_path / "out", settings=SETTINGS, **kwargs)
  assert calls == []  # everything finished: nothing encoded again

  # A changed source, a deleted output and other settings are each redone.
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "img01.png")
  (tmp_path / "out" / "img02.gjx").unlink()
  encode_dir(tmp_path / "in", tmp_path / "out", settings=SETTINGS, **kwargs)
  assert sum(calls) == 2
  calls.clear()
  # Other settings are refused before any work, unless overwrite=True.
  with pytest.raises(_encode_dir.SettingsChanged, match="4 image.*other settings.*overwrite=True"):
    encode_dir(tmp_path / "in", tmp_path / "out", settings="other", **kwargs)
  assert calls == []
  report = encode_dir(tmp_path / "in", tmp_path / "out", settings="other", overwrite=True,
                      **kwargs)
  assert sum(calls) == 4
  assert (report.encoded, report.failed, report.skipped) == (4, 1, 0)
  calls.clear()
  report = encode_dir(tmp_path / "in", tmp_path / "out", settings="other", **kwargs)
  assert calls == [] and (report.encoded, report.failed, report.skipped) == (0, 1, 4)


def test_cut_journal_line_and_stale_temporaries_are_cleaned(tmp_path):
  make_folder(tmp_path / "in", 3, corrupt=False)
  out = tmp_path / "out"
  run_job(tmp_path / "in", out)
  journal = out / "manifest.jsonl"
  lines = journal.read_bytes().splitlines(keepends=True)
  # A kill in the middle of the last append, and in the middle of writing a file.
  journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:17])
  (out / ".tmp-999-img02.gjx").write_bytes(b"partial")
  rows = run_job(tmp_path / "in", out)
  assert [r.status for r in rows] == ["ok"] * 3
  assert not list(out.glob(".tmp-*"))
  records = [json.loads(line) for line in journal.read_text().splitlines()]
  assert [r["name"] for r in records] == ["img00.png", "img01.png", "img02.png"]


def test_encoder_failure_is_isolated_to_its_image(tmp_path):
  make_folder(tmp_path / "in", 4, corrupt=False)

  def picky_encode(images):
    if any(float(image.mean()) < 0 for image in images) or len(images) > 1:
      raise RuntimeError("batch refused")  # forces the one-image fallback
    return fake_encode(images)

  def read(path):
    image = read_png(path)
    return -image if path.name == "img02.png" else image

  rows = encode_dir(tmp_path / "in", tmp_path / "out", encode_fn=picky_encode,
                    decode_fn=fake_decode, read_fn=read, settings=SETTINGS, progress=False,
                    batch_size=4).rows
  assert [r.status for r in rows] == ["ok", "ok", "error", "ok"]
  assert "batch refused" in rows[2].reason


def test_bad_arguments(tmp_path):
  make_folder(tmp_path / "in", 1)
  with pytest.raises(ValueError, match="batch_size"):
    run_job(tmp_path / "in", tmp_path / "out", batch_size=0)
  with pytest.raises(ValueError, match="in_dir"):
    run_job(tmp_path / "missing", tmp_path / "out")
  with pytest.raises(ValueError, match="out_dir"):
    run_job(tmp_path / "in", tmp_path / "in")


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import test_encode_dir as t
    from gaussjax.batch._encode_dir import encode_dir

    hang_after = int(sys.argv[5])  # images encoded before the job hangs (0: never)
    encoded = 0

    def slow_encode(images):
      global encoded
      if hang_after and encoded >= hang_after:
        time.sleep(600)  # mid-run, until the test kills us
      with open(sys.argv[4], "a") as log:  # which images this run encoded
        log.write("".join(f"{float(image.sum())!r}\\n" for image in images))
      encoded += len(images)
      return t.fake_encode(images)

    encode_dir(sys.argv[1], sys.argv[2], encode_fn=slow_encode, decode_fn=t.fake_decode,
               settings=t.SETTINGS, read_fn=t.read_png, progress=False, batch_size=1)
""")


def ok_names(journal: Path) -> list[str]:
  if not journal.exists():
    return []
  data = journal.read_bytes()
  names = []
  for line in data[:data.rfind(b"\n") + 1].splitlines():
    record = json.loads(line)
    if record["status"] == "ok":
      names.append(record["name"])
  return names


def test_kill_and_resume_encodes_every_image_exactly_once(tmp_path):
  count = 10
  names = make_folder(tmp_path / "in", count)
  out = tmp_path / "out"
  journal = out / "manifest.jsonl"
  log = tmp_path / "encoded.log"
  command = [sys.executable, "-c", CHILD, str(tmp_path / "in"), str(out),
             str(Path(__file__).parent), str(log)]
  # The first run hangs inside the encoder after 3 images, so the kill lands
  # mid-run however slow the machine is; the test waits for the journal to
  # show finished images (no fixed sleeps).
  child = subprocess.Popen(command + ["3"])
  deadline = time.monotonic() + 300  # generous: a loaded machine imports slowly
  try:
    while len(ok_names(journal)) < 3:
      assert child.poll() is None, "the job ended before it could be killed"
      assert time.monotonic() < deadline, "the job made no progress"
      time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
  finally:
    if child.poll() is None:
      child.kill()
  done_before = ok_names(journal)
  assert len(done_before) == 3, done_before
  # What the kill leaves: only complete outputs, no manifest.csv yet.
  for name in done_before:
    assert fake_decode((out / name.replace(".png", ".gjx")).read_bytes()).shape == (8, 8, 3)
  assert not (out / "manifest.csv").exists()

  log.unlink()
  subprocess.run(command + ["0"], check=True, timeout=600)
  rerun_sums = log.read_text().split()
  sums_before = {repr(float(read_png(tmp_path / "in" / n).sum())) for n in done_before}
  assert not sums_before & set(rerun_sums), "finished images were encoded again"

  # Every image encoded exactly once: one ok journal line and one output each.
  assert sorted(ok_names(journal)) == names
  assert sorted(p.name for p in out.glob("*.gjx")) == [n.replace(".png", ".gjx") for n in names]
  assert not list(out.glob(".tmp-*"))
  manifest = _journal.read_manifest(out / "manifest.csv")
  assert [m["name"] for m in manifest] == sorted(names + ["broken.png"])
  for m in manifest:
    if m["name"] == "broken.png":
      assert m["status"] == "error" and m["reason"]
    else:
      assert m["status"] == "ok"
      expected = read_png(tmp_path / "in" / m["name"])
      np.testing.assert_array_equal(fake_decode((out / m["output"]).read_bytes()), expected)


def test_cli_encode_dir_with_the_real_codec(tmp_path, capsys):
  import gaussjax
  from gaussjax.cli._cli import main  # the `gaussjax` command, encode-dir registered as a plugin
  make_folder(tmp_path / "in", 3, sizes=((16, 16),))
  out = tmp_path / "out"
  argv = [str(tmp_path / "in"), "-o", str(out), "--quality", "50", "--fit-steps", "25",
          "--qat-steps", "5", "--batch", "4", "--no-progress", "--backend", "reference"]
  assert main(["encode-dir", *argv]) == 1  # one unreadable file
  assert "broken.png" in capsys.readouterr().err
  manifest = {m["name"]: m for m in _journal.read_manifest(out / "manifest.csv")}
  assert sorted(manifest) == ["broken.png", "img00.png", "img01.png", "img02.png"]
  assert manifest["broken.png"]["status"] == "error" and manifest["broken.png"]["reason"]
  for name in ("img00.png", "img01.png", "img02.png"):
    m = manifest[name]
    assert m["status"] == "ok" and (m["width"], m["height"]) == ("16", "16")
    data = (out / m["output"]).read_bytes()
    assert int(m["bytes"]) == len(data)
    decoded = np.asarray(gaussjax.decode(data, backend="reference"))
    assert decoded.shape == (16, 16, 3)
    expected = read_png(tmp_path / "in" / name)
    psnr = -10 * np.log10(np.mean((decoded - expected) ** 2))
    assert float(m["psnr"]) == pytest.approx(psnr, abs=0.01)
    assert float(m["seconds"]) > 0
  journal_lines = len((out / "manifest.jsonl").read_text().splitlines())
  # A re-run encodes nothing again; only the unreadable file is tried once more.
  assert main(["encode-dir", *argv]) == 1
  assert len((out / "manifest.jsonl").read_text().splitlines()) == journal_lines + 1


def test_cli_encode_dir_rejects_bad_arguments(tmp_path, capsys):
  from gaussjax.cli._cli import main
  with pytest.raises(SystemExit):
    main(["encode-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--bpp", "1", "--quality", "5"])
  with pytest.raises(SystemExit):
    main(["encode-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--bpp", "1", "--batch", "0"])
  with pytest.raises(SystemExit):
    main(["encode-dir", str(tmp_path), "-o", str(tmp_path / "o"), "--quality", "500"])
  assert "argument --quality: '500' must be in 1..100" in capsys.readouterr().err
  assert main(["encode-dir", str(tmp_path / "missing"), "-o", str(tmp_path / "o"),
               "--bpp", "1"]) == 2
  assert "does not exist" in capsys.readouterr().err
  (tmp_path / "in").mkdir()
  assert main(["encode-dir", str(tmp_path / "in"), "-o", str(tmp_path / "in"), "--bpp", "1"]) == 2
  assert "is IN_DIR" in capsys.readouterr().err


@pytest.fixture
def stand_in_codec(monkeypatch):
  """The CLI's encode-dir with the stand-in codec: the job's logic, at no fitting cost."""
  from gaussjax.batch import _batch
  from gaussjax.codec import _formats
  calls = []

  def encode_batch(images, config):
    calls.append((len(images), config.bpp))
    return fake_encode(images)

  monkeypatch.setattr(_batch, "encode_batch", encode_batch)
  monkeypatch.setattr(_formats, "decode", lambda data, backend, max_pixels: fake_decode(data))
  return calls


def test_cli_encode_dir_empty_folder_says_so(tmp_path, capsys, stand_in_codec):
  from gaussjax.cli._cli import main
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "notes.txt").write_text("not an image")
  assert main(["encode-dir", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--bpp", "1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("gaussjax encode-dir: error: no images found in") and ".png" in err
  assert not (tmp_path / "out").exists() and stand_in_codec == []


def test_cli_encode_dir_resume_counts_and_settings_guard(tmp_path, capsys, stand_in_codec):
  from gaussjax.cli._cli import main
  make_folder(tmp_path / "in", 3, corrupt=False)
  out = tmp_path / "out"
  argv = ["encode-dir", str(tmp_path / "in"), "--out", str(out), "--no-progress"]
  assert main([*argv, "--bpp", "0.5"]) == 0
  assert capsys.readouterr().out.startswith("3 encoded, 0 failed; manifest: ")
  assert main([*argv, "--bpp", "0.5"]) == 0
  assert capsys.readouterr().out.startswith("0 encoded, 0 failed, 3 already done; manifest: ")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert main([*argv, "--bpp", "1"]) == 2
  err = capsys.readouterr().err
  first, error = err.splitlines()  # the first line (what it is about to do), one error line
  assert first.startswith("gaussjax encode-dir: 3 images in ")
  assert "3 image(s)" in error and "other settings" in error
  assert "bpp 0.5 -> 1.0" in err and "--overwrite" in err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
  assert main([*argv, "--bpp", "1", "--overwrite"]) == 0
  assert capsys.readouterr().out.startswith("3 encoded, 0 failed; manifest: ")
  assert [bpp for _, bpp in stand_in_codec] == [0.5, 1.0]


def test_cli_encode_dir_ctrl_c_keeps_finished_images(tmp_path, capsys, monkeypatch,
                                                     stand_in_codec):
  from gaussjax.batch import _batch
  from gaussjax.cli._cli import main
  make_folder(tmp_path / "in", 4, corrupt=False)
  out = tmp_path / "out"
  argv = ["encode-dir", str(tmp_path / "in"), "-o", str(out), "--bpp", "1", "--batch", "2", "-q"]
  calls = []

  def interrupted_after_one_batch(images, config):
    if calls:
      raise KeyboardInterrupt
    calls.append(len(images))
    return fake_encode(images)

  monkeypatch.setattr(_batch, "encode_batch", interrupted_after_one_batch)
  assert main(argv) == 130
  err = capsys.readouterr().err
  assert err == ("gaussjax encode-dir: interrupted; finished images are kept; run the same "
                 "command again to resume\n")
  assert len(ok_names(out / "manifest.jsonl")) == 2 and not list(out.glob(".tmp-*"))
  calls.clear()
  monkeypatch.setattr(_batch, "encode_batch", lambda images, config: fake_encode(images))
  assert main(argv) == 0
  assert capsys.readouterr().out.startswith("2 encoded, 0 failed, 2 already done")


def test_cli_encode_dir_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch,
                                                   stand_in_codec):
  from gaussjax.cli._cli import main

  class FakeTty(io.StringIO):
    def isatty(self):
      return True

  make_folder(tmp_path / "in", 3, corrupt=False)
  monkeypatch.setattr(sys, "stderr", FakeTty())
  assert main(["encode-dir", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--bpp", "1",
               "--batch", "1"]) == 0
  assert "encode-dir" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()
