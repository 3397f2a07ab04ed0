"""The video codec (``.gjv``): round trip, random access, determinism, fuzzing, readers, CLI."""

import dataclasses
import os
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import gaussjax
from gaussjax.cli._cli import main
from gaussjax.codec import _video
from gaussjax.codec._bitstream import DecodeError
from gaussjax.codec._fuzz import mutate
from gaussjax.core._video_io import (
  VideoError,
  open_video,
  read_video,
  rgb_to_yuv420,
  write_frames,
  yuv420_to_rgb,
)

# Tiny and quick: P-frames get a quarter of the I-frame's fit steps. No refresh
# I-frames, so the frame types follow the GOP alone (refresh: its own test).
CONFIG = gaussjax.VideoConfig(quality=70, gop=3, fit_steps=48, qat_steps=8, backend="xla",
                              refresh_db=None)
DATA = os.path.join(os.path.dirname(__file__), "data")


def _clip(t=5, h=32, w=32):
  """Smooth moving blobs on a gradient: a camera pan plus an object that moves."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  frames = []
  for k in range(t):
    base = np.stack([x / w, y / h, 0.5 + 0.0 * x], -1) * 0.6
    for cx, cy, col in (((8 + 2 * k), 12, (0.9, 0.2, 0.1)), (20, (18 + k), (0.1, 0.3, 0.9))):
      blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 18.0)[..., None]
      base = base + 0.5 * blob * np.asarray(col, np.float32)
    frames.append(np.clip(base, 0, 1).astype(np.float32))
  return np.stack(frames)


@pytest.fixture(scope="module")
def coded():
  frames = _clip()
  infos = []
  data = gaussjax.encode_video(frames, CONFIG, fps=10, callback=infos.append)
  return frames, data, infos


def test_round_trip_error_bound_and_frame_types(coded):
  frames, data, infos = coded
  out = gaussjax.decode_video(data)
  assert out.shape == frames.shape and out.dtype == np.float32
  actual = [float(gaussjax.psnr(o, f)) for o, f in zip(out, frames)]
  # Smooth synthetic content: every frame, I or P, within 25 dB of its source.
  assert min(actual) > 25.0, actual
  # The encoder tracks the decoder exactly (closed loop): its PSNRs are the decoder's.
  np.testing.assert_allclose(actual, [i["psnr"] for i in infos], atol=1e-3)
  meta = gaussjax.video_info(data)
  assert "".join(f["type"] for f in meta["frames"]) == "IPPIP"
  assert meta["num_frames"] == 5 and meta["fps"] == 10
  assert sum(f["bytes"] for f in meta["frames"]) < len(data)
  # P-frames cost less than I-frames here.
  sizes = {t: [f["bytes"] for f in meta["frames"] if f["type"] == t] for t in "IP"}
  assert max(sizes["P"]) < min(sizes["I"])


def test_frame_k_decodes_alone_from_its_group(coded):
  _, data, _ = coded
  full = gaussjax.decode_video(data)
  for k in (0, 2, 3, 4):
    np.testing.assert_array_equal(gaussjax.decode_video_frame(data, k), full[k])
  assert list(gaussjax.iter_video_frames(data, start=4))[0].shape == full[4].shape
  with pytest.raises(IndexError):
    gaussjax.decode_video_frame(data, 5)


def test_decode_at_any_size(coded):
  _, data, _ = coded
  out = gaussjax.decode_video(data, height=48)
  assert out.shape == (5, 48, 48, 3)


def test_deterministic_bytes_from_an_array_or_an_iterator():
  frames = _clip(t=3, h=24, w=24)
  config = gaussjax.VideoConfig(quality=60, gop=3, fit_steps=24, qat_steps=4, backend="xla")
  # Two encodes of the same clip, one read lazily from an iterator: the same bytes.
  assert gaussjax.encode_video(frames, config) == gaussjax.encode_video(iter(list(frames)), config)


def test_bpp_rate_control_hits_the_average():
  frames = _clip(t=3)
  config = gaussjax.VideoConfig(bpp=1.5, gop=3, fit_steps=32, qat_steps=4, backend="xla")
  data = gaussjax.encode_video(frames, config)
  actual = gaussjax.video_info(data)["bpp_per_frame"]
  assert 0.5 * 1.5 < actual < 1.15 * 1.5, actual


def test_config_checks():
  with pytest.raises(ValueError, match="p_steps"):
    gaussjax.VideoConfig(fit_steps=100, p_steps=30)  # more than a quarter
  with pytest.raises(ValueError, match="gop"):
    gaussjax.VideoConfig(gop=0)
  with pytest.raises(ValueError, match="no frames"):
    gaussjax.encode_video(np.zeros((0, 8, 8, 3), np.float32), CONFIG)
  with pytest.raises(ValueError, match="differs"):
    gaussjax.encode_video([np.zeros((8, 8, 3)), np.zeros((8, 9, 3))], CONFIG)


def test_global_motion_finds_a_pan():
  rng = np.random.default_rng(0)
  texture = rng.random((48, 64, 3)).astype(np.float32)
  frames = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3  # some texture
  moved = np.roll(frames, (2, 3), axis=(0, 1))
  dx, dy = _video.global_motion(frames, moved)
  assert abs(dx - 3) < 0.3 and abs(dy - 2) < 0.3


def test_refresh_after_a_p_frame_that_fell_below_its_i_frame():
  frames = _clip(t=5)
  config = gaussjax.VideoConfig(quality=70, gop=5, fit_steps=48, qat_steps=8, backend="xla",
                                refresh_db=0.5)
  infos = []
  gaussjax.encode_video(frames, config, callback=infos.append)
  i_psnr = None
  for k, info in enumerate(infos):
    if info["type"] == "I":
      i_psnr = info["psnr"]
    fell = info["type"] == "P" and info["psnr"] < i_psnr - 0.5
    if k + 1 < len(infos):
      # An I-frame follows exactly the P-frames that fell (the GOP covers the clip).
      assert (infos[k + 1]["type"] == "I") == fell, infos
  assert any(i["type"] == "P" for i in infos)


def _textured_scene(t=4, h=48, w=64, shift=(2, -1)):
  """A still textured background and a textured square moving by ``shift`` per frame."""
  rng = np.random.default_rng(3)
  back = rng.random((h, w, 3)).astype(np.float32)
  back = (back + np.roll(back, 1, 0) + np.roll(back, 1, 1) + np.roll(back, (1, 1), (0, 1))) / 4
  patch = rng.random((16, 16, 3)).astype(np.float32)
  frames = []
  for k in range(t):
    f = back.copy()
    y, x = 16 + shift[1] * k, 12 + shift[0] * k
    f[y:y + 16, x:x + 16] = patch
    frames.append(f)
  return np.stack(frames)


def test_block_motion_finds_a_moving_object_on_a_still_background():
  frames = _textured_scene()
  vec = _video.block_motion(frames[0], frames[1], 8, 4)
  assert vec.shape == (6, 8, 2)
  # A half-pixel shift (the mean of two whole-pixel shifts) is found to a fraction.
  half = (frames[1] + np.roll(frames[1], 1, 1)) / 2
  sub = _video.block_motion(frames[0], half, 8, 4)
  assert abs(sub[3, 2, 0] - 2.5) < 0.25, sub[3, 2]
  # The blocks inside the square (rows 16..31, columns 12..27 of the first frame),
  # whole-pixel motion up to the sub-pixel refinement.
  np.testing.assert_allclose(vec[2:4, 2:3].reshape(-1, 2), [[2, -1]] * 2, atol=0.3)
  # Background blocks far from the square do not move.
  np.testing.assert_allclose(vec[0, :].reshape(-1, 2), [[0, 0]] * 8, atol=0.3)
  np.testing.assert_allclose(vec[5, :].reshape(-1, 2), [[0, 0]] * 8, atol=0.3)


def _smooth_scene(t=3, h=48, w=64, shift=(3, 2)):
  """Still smooth background waves and a bright disc moving by ``shift`` per frame."""
  y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  back = np.stack([0.5 + 0.3 * np.sin(x / 5.0), 0.5 + 0.3 * np.cos(y / 4.0),
                   0.4 + 0.2 * np.sin((x + y) / 7.0)], -1)
  frames = []
  for k in range(t):
    cx, cy = 20 + shift[0] * k, 18 + shift[1] * k
    disc = (((x - cx) ** 2 + (y - cy) ** 2) < 49.0)[..., None]
    frames.append(np.where(disc, np.stack([0.95 + 0 * x, (x - cx + 7) / 16, 0.1 + 0 * x], -1),
                           back).astype(np.float32))
  return np.stack(frames)


@pytest.fixture(scope="module")
def field_coded():
  frames = _smooth_scene()
  config = gaussjax.VideoConfig(quality=80, gop=3, fit_steps=48, qat_steps=8, backend="xla",
                                refresh_db=None, p_motion_block=8, p_motion_search=4)
  infos = []
  data = gaussjax.encode_video(frames, config, callback=infos.append)
  return frames, config, data, infos


def test_motion_field_p_frames_round_trip(field_coded):
  frames, config, data, infos = field_coded
  assert [i["type"] for i in infos] == ["I", "P", "P"]
  assert any(i["motion_field"] for i in infos)
  out = gaussjax.decode_video(data)
  # Closed loop: the decoder applies the field exactly as the encoder did.
  np.testing.assert_allclose([float(gaussjax.psnr(o, f)) for o, f in zip(out, frames)],
                             [i["psnr"] for i in infos], atol=1e-3)
  # p_motion_block=0: global motion only, no field in any P-frame.
  plain = []
  gaussjax.encode_video(frames, dataclasses.replace(config, p_motion_block=0),
                        callback=plain.append)
  assert not any(i["motion_field"] for i in plain)


def test_version_1_file_still_decodes():
  # Written by the version-1 encoder (no motion field) from _clip(t=4, h=24, w=24).
  with open(os.path.join(DATA, "v1_clip.gjv"), "rb") as f:
    data = f.read()
  assert gaussjax.video_info(data)["version"] == 1
  out = gaussjax.decode_video(data)
  actual = [float(gaussjax.psnr(o, f)) for o, f in zip(out, _clip(t=4, h=24, w=24))]
  # What the version-1 decoder gave for these bytes.
  np.testing.assert_allclose(actual, [35.438, 33.052, 32.83, 32.55], atol=0.01)


# ---------------------------------------------------------------------------
# Bad data


def _refresh_checksums(data: bytes) -> bytes:
  """Recomputes the header and segment CRCs where the structure still parses."""
  d = bytearray(data)
  try:
    pos = 4 + 1 + 1 + 2 + 2
    while d[pos] & 0x80:
      pos += 1
    pos += 1 + 4 + 2
    d[pos:pos + 4] = struct.pack("<I", zlib.crc32(bytes(d[:pos])))
    pos += 4
    while pos < len(d):
      start = pos
      pos += 1
      length, shift = 0, 0
      while True:
        b = d[pos]
        length |= (b & 0x7F) << shift
        shift += 7
        pos += 1
        if not b & 0x80:
          break
      pos += length
      if pos + 4 > len(d):
        break
      d[pos:pos + 4] = struct.pack("<I", zlib.crc32(bytes(d[start:pos])))
      pos += 4
  except IndexError:
    pass
  return bytes(d)


def test_fuzzed_gjv_raises_only_decode_error(coded, field_coded):
  with open(os.path.join(DATA, "v1_clip.gjv"), "rb") as f:
    v1 = f.read()
  # The GOP clip, a clip whose P-frames carry motion fields, and a version-1 file.
  for data, count in ((coded[1], 300), (field_coded[2], 150), (v1, 150)):
    rng = np.random.default_rng(7)
    rejected = 0
    for k in range(count):
      mutant = mutate(data, rng)
      if k % 2:
        mutant = _refresh_checksums(mutant)  # reach the parser behind the checksums
      try:
        for g in _video.decode_video_gaussians(mutant):
          assert g.num_gaussians <= gaussjax.codec._codec.MAX_GAUSSIANS
          for arr in g:
            assert np.all(np.isfinite(arr))
      except DecodeError:
        rejected += 1
    assert rejected > count // 2


def test_bad_header_messages(coded):
  _, data, _ = coded
  with pytest.raises(DecodeError, match="magic"):
    gaussjax.decode_video(b"\x89GJX" + data[4:])
  with pytest.raises(DecodeError):
    gaussjax.decode_video(data[:-1])
  with pytest.raises(DecodeError, match="checksum"):
    gaussjax.video_info(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
  with pytest.raises(TypeError):
    gaussjax.decode_video("not bytes")


# ---------------------------------------------------------------------------
# Readers


def test_yuv_conversion_round_trip():
  rgb = _clip(t=1, h=16, w=20)[0]
  y, u, v = rgb_to_yuv420(rgb)
  assert y.shape == (16, 20) and u.shape == (8, 10)
  back = yuv420_to_rgb(y, u, v)
  # 4:2:0 subsampling of a smooth image and 8-bit rounding: a small error.
  assert float(gaussjax.psnr(back, rgb)) > 30.0


def _write_yuv(path, frames):
  with open(path, "wb") as f:
    for frame in frames:
      for plane in rgb_to_yuv420(frame):
        f.write(plane.tobytes())


def _write_y4m(path, frames):
  h, w = frames.shape[1:3]
  with open(path, "wb") as f:
    f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
    for frame in frames:
      f.write(b"FRAME\n")
      for plane in rgb_to_yuv420(frame):
        f.write(plane.tobytes())


def test_raw_yuv_y4m_and_folder_readers(tmp_path):
  frames = _clip(t=3, h=16, w=20)
  _write_yuv(tmp_path / "a.yuv", frames)
  _write_y4m(tmp_path / "a.y4m", frames)
  write_frames(tmp_path / "dir", frames)
  raw = read_video(tmp_path / "a.yuv", size=(20, 16))
  y4m = read_video(tmp_path / "a.y4m")
  folder = read_video(tmp_path / "dir")
  assert raw.shape == y4m.shape == folder.shape == (3, 16, 20, 3)
  np.testing.assert_array_equal(raw, y4m)
  assert float(np.min(gaussjax.psnr(raw, frames))) > 30.0
  assert float(np.min(gaussjax.psnr(folder, frames))) > 40.0  # 8-bit PNG rounding only
  source = open_video(tmp_path / "a.y4m")
  assert (source.num_frames, source.fps) == (3, 10.0)
  assert next(iter(source)).shape == (16, 20, 3)


def test_shared_clip_reads_with_bt601():
  path = "/work/shared/data/video/CiscoVT2people_320x192_12fps.yuv"
  if not os.path.exists(path):
    pytest.skip("shared clips not present")
  source = open_video(path, size=(320, 192))
  assert (source.num_frames, source.height, source.width) == (9, 192, 320)
  first = next(iter(source))
  assert first.dtype == np.float32 and 0.0 <= first.min() and first.max() <= 1.0


def test_reader_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    open_video(tmp_path / "missing.yuv", size=(4, 4))
  (tmp_path / "empty").mkdir()
  with pytest.raises(VideoError, match="no frame images"):
    open_video(tmp_path / "empty")
  (tmp_path / "x.yuv").write_bytes(b"\0" * 100)
  with pytest.raises(VideoError, match="--size"):
    open_video(tmp_path / "x.yuv")
  with pytest.raises(VideoError, match="whole number"):
    open_video(tmp_path / "x.yuv", size=(8, 8))


def test_container_without_pyav_says_how_to_install(tmp_path, monkeypatch):
  (tmp_path / "a.mp4").write_bytes(b"\0" * 64)
  monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
  with pytest.raises(ImportError, match=r"gaussjax\[video\]"):
    open_video(tmp_path / "a.mp4")


def test_container_round_trip_with_pyav(tmp_path):
  pytest.importorskip("av")
  from gaussjax.core._video_io import write_video
  frames = _clip(t=4, h=32, w=48)
  write_video(tmp_path / "a.mkv", frames, fps=10)
  source = open_video(tmp_path / "a.mkv")
  out = np.stack(list(source))
  assert out.shape == frames.shape
  assert float(np.min(gaussjax.psnr(out, frames))) > 25.0


# ---------------------------------------------------------------------------
# CLI


def _run(argv, capsys):
  code = main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.parametrize("case", ["missing", "empty_folder", "mixed_sizes", "bad_yuv_size",
                                  "no_size", "empty_yuv", "garbage_container"])
def test_cli_bad_input_errors_before_work(tmp_path, capsys, case):
  out = tmp_path / "out.gjv"
  args = ["--quality", "50", "-o", str(out), "-q"]
  if case == "missing":
    src, expected = tmp_path / "nope.yuv", "no such file"
  elif case == "empty_folder":
    src, expected = tmp_path / "frames", "no frame images"
    src.mkdir()
  elif case == "mixed_sizes":
    src, expected = tmp_path / "frames", "different sizes"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    Image.new("RGB", (9, 8)).save(src / "b.png")
  elif case == "bad_yuv_size":
    src, expected = tmp_path / "a.yuv", "whole number"
    src.write_bytes(b"\0" * 1000)
    args += ["--size", "16x16"]
  elif case == "no_size":
    src, expected = tmp_path / "a.yuv", "--size"
    src.write_bytes(b"\0" * 384)
  elif case == "empty_yuv":
    src, expected = tmp_path / "a.yuv", "empty"
    src.write_bytes(b"")
    args += ["--size", "16x16"]
  else:
    try:
      import av  # noqa: F401
      expected = "not a readable video"
    except ImportError:
      expected = "gaussjax[video]"
    src = tmp_path / "a.mp4"
    src.write_bytes(b"not a video at all")
  code, _, err = _run(["encode-video", str(src)] + args, capsys)
  assert code == 2
  assert expected in err and "Traceback" not in err
  assert not out.exists()


def test_cli_round_trip_and_info(tmp_path, capsys):
  frames = _clip(t=3, h=16, w=24)
  _write_y4m(tmp_path / "a.y4m", frames)
  gjv = tmp_path / "a.gjv"
  code, _, err = _run(["encode-video", str(tmp_path / "a.y4m"), "-o", str(gjv), "--quality",
                       "60", "--motion-block", "300"], capsys)
  assert code == 2 and "p_motion_block" in err and "Traceback" not in err and not gjv.exists()
  code, out, err = _run(["encode-video", str(tmp_path / "a.y4m"), "-o", str(gjv), "--quality",
                         "60", "--gop", "3", "--fit-steps", "24", "--qat-steps", "4",
                         "--motion-block", "8", "-q"], capsys)
  assert code == 0, err
  assert gjv.exists() and "3 frames" in out
  code, out, err = _run(["info", str(gjv)], capsys)
  assert code == 0 and '"num_frames": 3' in out and '"format": "gjv"' in out
  code, out, err = _run(["decode-video", str(gjv), "-o", str(tmp_path / "dec"), "-q"], capsys)
  assert code == 0, err
  assert sorted(os.listdir(tmp_path / "dec")) == [f"frame_{k:05d}.png" for k in range(3)]
  code, out, err = _run(["decode-video", str(gjv), "-o", str(tmp_path / "one.png"), "--frame",
                         "2", "--width", "48", "-q"], capsys)
  assert code == 0, err
  assert Image.open(tmp_path / "one.png").size == (48, 32)
  # A non-empty output folder is never written over; a corrupt file is refused.
  code, _, err = _run(["decode-video", str(gjv), "-o", str(tmp_path / "dec"), "-q"], capsys)
  assert code == 2 and "not empty" in err
  bad = tmp_path / "bad.gjv"
  bad.write_bytes(gjv.read_bytes()[:-5])
  code, _, err = _run(["decode-video", str(bad), "-o", str(tmp_path / "dec2"), "-q"], capsys)
  assert code == 2 and "Traceback" not in err and not (tmp_path / "dec2").exists()
