"""``gaussjax encode-video | decode-video``: the video codec's subcommands.

``register(subparsers)`` adds them to the main parser (``gaussjax.cli._cli``);
``gaussjax info`` reads ``.gjv`` files too (``_cli`` dispatches on the
magic bytes to ``video_info``). Every input is checked before any fitting
(``open_video``: readable, not empty, frames of one size, raw YUV of a whole
number of frames with ``--size``); outputs are written atomically and never
over the input. The library is imported inside the commands,
so that ``gaussjax --help`` starts quickly; the shared pieces (output
checks, progress bar, ``--quiet``) come from ``gaussjax.cli._cli_common``.
"""

from __future__ import annotations

import os
import shutil
import sys

from gaussjax.cli._cli_common import (
  CliError,
  add_output_argument,
  add_quiet_argument,
  add_subcommand,
  is_same_file,
  progress_bar,
  read_input_file,
)

VIDEO_INPUT_HELP = (
    "input video: a folder of frames (PNG/JPEG, sorted by name), raw YUV 4:2:0 (.yuv, with "
    "--size), .y4m, or a container (.mp4/.mkv/.webm, needs the [video] extra)")


def _progress(total, desc, quiet):
  return progress_bar(total, desc=desc, unit="frame", quiet=quiet)


def _cmd_encode_video(args) -> int:
  from gaussjax.codec._video import VideoConfig, encode_video
  from gaussjax.core._io import write_atomic
  from gaussjax.core._video_io import open_video, parse_size

  if os.path.exists(args.output) and is_same_file(args.input, args.output):
    raise CliError(f"output {args.output!r} is the input; refusing to overwrite it")
  if os.path.isdir(args.output):
    raise CliError(f"output {args.output!r} is a folder; give a .gjv file name")
  size = parse_size(args.size) if args.size else None
  kwargs = {}
  for name in ("fit_steps", "qat_steps", "p_steps", "p_motion_block"):
    if getattr(args, name) is not None:
      kwargs[name] = getattr(args, name)
  config = VideoConfig(bpp=args.bpp, quality=args.quality, gop=args.gop,
                       scene_cut_db=None if args.no_scene_cut else VideoConfig.scene_cut_db,
                       **kwargs)
  source = open_video(args.input, size=size)  # checks the input before any work
  fps = args.fps or source.fps
  if not args.quiet:
    print(f"{args.input}: {source.width}x{source.height}, "
          f"{source.num_frames if source.num_frames is not None else '?'} frames ({source.kind})",
          file=sys.stderr)
  bar = _progress(source.num_frames, "encode", args.quiet)

  def callback(info):
    bar.set_postfix_str(f"{info['type']} {info['bytes']} B {info['psnr']:.2f} dB")
    bar.update(1)

  try:
    data = encode_video(source, config, fps=fps, callback=callback)
  finally:
    bar.close()
  write_atomic(args.output, data)
  from gaussjax.codec._video import video_info
  meta = video_info(data)
  print(f"{args.output}: {meta['num_frames']} frames, {len(data)} bytes, "
        f"{meta['bpp_per_frame']:.4f} bpp per frame "
        f"({sum(f['type'] == 'I' for f in meta['frames'])} I-frames)")
  return 0


def _read_gjv(path: str) -> bytes:
  from gaussjax.codec._video import MAX_VIDEO_BYTES
  return read_input_file(path, MAX_VIDEO_BYTES)


def _cmd_decode_video(args) -> int:
  from gaussjax.codec._video import decode_video_gaussians, iter_video_frames, video_info
  from gaussjax.core._io import save_image
  from gaussjax.core._video_io import CONTAINER_EXTENSIONS, write_frames, write_video

  if is_same_file(args.input, args.output):
    raise CliError(f"output {args.output!r} is the input; refusing to overwrite it")
  data = _read_gjv(args.input)
  meta = video_info(data)  # validates every segment's checksum before any rendering
  for _ in decode_video_gaussians(data):  # and every frame's entropy-coded data
    pass
  t = meta["num_frames"]
  start, stop = 0, t
  if args.frame is not None:
    k = args.frame + t if args.frame < 0 else args.frame
    if not 0 <= k < t:
      raise CliError(f"--frame {args.frame} is outside the clip of {t} frames")
    start, stop = k, k + 1
  ext = os.path.splitext(args.output)[1].lower()
  frames = iter_video_frames(data, start=start, stop=stop, height=args.height, width=args.width)
  bar = _progress(stop - start, "decode", args.quiet)

  def counted(it):
    for f in it:
      bar.update(1)
      yield f

  try:
    if ext in CONTAINER_EXTENSIONS:
      codec = write_video(args.output, counted(frames), fps=args.fps or meta["fps"] or 25.0)
      what = f"{stop - start} frames ({codec})"
    elif args.frame is not None and ext:
      save_image(args.output, next(counted(frames)))
      what = f"frame {start}"
    else:
      if os.path.isfile(args.output):
        raise CliError(f"output {args.output!r} is a file; give a folder, an image file with "
                       "--frame, or a video file (.mp4, .mkv, .webm)")
      if os.path.isdir(args.output) and os.listdir(args.output):
        raise CliError(f"output folder {args.output!r} is not empty; refusing to overwrite it")
      # Frames go to a sibling folder first, renamed into place when all are written.
      tmp = f"{args.output.rstrip(os.sep)}.part{os.getpid()}"
      try:
        write_frames(tmp, counted(frames), start=start)
        if os.path.isdir(args.output):
          os.rmdir(args.output)  # empty (checked above)
        os.replace(tmp, args.output)
      finally:
        if os.path.isdir(tmp):
          shutil.rmtree(tmp)
      what = f"{stop - start} PNG frames"
  finally:
    bar.close()
  print(f"{args.output}: {what}")
  return 0


def register(subparsers) -> None:
  """Adds ``encode-video`` and ``decode-video`` to an argparse subparsers object."""
  p = add_subcommand(
      subparsers, "encode-video", run=_needs_extra(_cmd_encode_video),
      help="compress a video into a .gjv file (I- and P-frames)",
      description="Code a video: I-frames with the image codec, P-frames as changes to the "
                  "previous frame's Gaussians. Shows a progress bar per frame.")
  p.add_argument("input", help=VIDEO_INPUT_HELP)
  add_output_argument(p, "output .gjv file")
  rate = p.add_mutually_exclusive_group(required=True)
  rate.add_argument("--bpp", type=float, help="target bits per pixel per frame (on average)")
  rate.add_argument("--quality", type=float, help="quality 1..100 (no rate target)")
  p.add_argument("--gop", type=int, default=16, help="an I-frame every K frames (16)")
  p.add_argument("--size", default=None, help="WxH of a raw .yuv file (required there)")
  p.add_argument("--fps", type=float, default=None, help="frame rate to store")
  p.add_argument("--fit-steps", type=int, default=None, help="I-frame fit steps (1500)")
  p.add_argument("--qat-steps", type=int, default=None, help="I-frame fine-tuning steps (300)")
  p.add_argument("--p-steps", type=int, default=None,
                 help="P-frame steps, fit and tuning (at most a quarter of --fit-steps, the "
                      "default)")
  p.add_argument("--motion-block", dest="p_motion_block", type=int, default=None,
                 help="block side in pixels of the P-frames' motion field (32; 0: global motion "
                      "only)")
  p.add_argument("--no-scene-cut", action="store_true", help="I-frames only every --gop frames")
  add_quiet_argument(p)

  p = add_subcommand(
      subparsers, "decode-video", run=_needs_extra(_cmd_decode_video),
      help="render a .gjv file to PNG frames or a video file",
      description="Decode a .gjv file: every frame, or --frame K alone (decoded from its "
                  "I-frame), at any size, to a folder of PNGs, an image (with --frame) or a "
                  "video file (.mp4/.mkv/.webm, needs the [video] extra).")
  p.add_argument("input", help="input .gjv file")
  add_output_argument(p, "output folder (PNG frames), image file (with --frame) or video file")
  p.add_argument("--frame", type=int, default=None, help="decode only frame K (0-based)")
  p.add_argument("--width", type=int, default=None, help="output width (any size)")
  p.add_argument("--height", type=int, default=None, help="output height (any size)")
  p.add_argument("--fps", type=float, default=None, help="frame rate of a video output")
  add_quiet_argument(p)


def _needs_extra(fn):
  """Turns a missing optional dependency (PyAV) into a one-line CLI error."""
  def run(args) -> int:
    try:
      return fn(args)
    except ImportError as e:
      raise CliError(str(e)) from None
  return run
