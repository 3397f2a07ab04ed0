"""Building blocks shared by every ``gaussjax`` subcommand.

A subcommand is a function ``register(subparsers)`` that calls
``add_subcommand`` and adds its arguments with the helpers below; its run
function checks its inputs and outputs (``check_input``, ``check_output``)
before any work, shows progress with ``progress_bar`` and raises ``CliError``
for anything the user must fix. ``gaussjax.cli._cli.main`` turns ``CliError``,
``DecodeError``, ``ValueError`` and ``OSError`` into one line on stderr (exit
status 2) and Ctrl-C into one line (exit status 130).

This module imports no subcommand, so a subcommand module can import it and
``gaussjax.cli._cli`` can import the subcommand module (no import cycle).

Import cost: building the parser and reading an image's header import no
JAX (this module and the subcommand modules import only ``core`` I/O and
``codec._tile_grid`` at the top), so a command prints its first line, what it
is about to do, within the first second; each run function imports the
library after that line.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys

import numpy as np

from gaussjax.core import _svg
from gaussjax.core._io import SAVE_FORMATS, image_header, load_image
from gaussjax.core._progress import progress_bar  # noqa: F401 - re-exported for the commands
from gaussjax.core._video_io import parse_size

# Built-in images for `sample:NAME` (scikit-image's bundled data, no download).
SAMPLES = ("astronaut", "camera", "coffee", "chelsea", "rocket")
SAMPLE_PREFIX = "sample:"

INPUT_HELP = (
    "input image file (PNG, JPEG, TIFF, ...), or sample:NAME for a built-in image from "
    f"scikit-image ({', '.join(SAMPLES)}), e.g. sample:astronaut")

# Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

# What ``check_output`` accepts, by kind of output.
IMAGE = "image"  # an image file: an extension save_image knows
GJX = "gjx"  # a gaussjax file: the .gjx extension
FOLDER = "folder"  # a folder, created when missing

GJX_SUFFIX = ".gjx"


class CliError(Exception):
  """A user-facing error: printed as one line, exit status 2."""


class HelpFormatter(argparse.HelpFormatter):
  """Appends ``(default: X)`` to an option's help when it has a real default."""

  def _get_help_string(self, action):
    text = action.help or ""
    default = action.default
    if ("%(default)" in text or not action.option_strings or default is None
        or default is False or default is argparse.SUPPRESS):
      return text
    return text + " (default: %(default)s)"


class LibraryDefault:
  """A flag's default that the library defines, looked up only when it is needed.

  ``--help`` prints it (``str``) and ``resolve`` reads it; parsing the
  arguments does not import the module that defines it, which may import JAX
  (seconds), so the command's first line comes before that.

  Args:
    module: the dotted module name, e.g. ``"gaussjax.codec._codec"``.
    name: the attribute, dotted, e.g. ``"CodecConfig.fit_steps"`` (a
      dataclass field's default is its class attribute).
  """

  def __init__(self, module: str, name: str):
    self.module = module
    self.name = name

  def value(self):
    value = importlib.import_module(self.module)
    for part in self.name.split("."):
      value = getattr(value, part)
    return value

  def __str__(self) -> str:
    return str(self.value())


def resolve(value):
  """``value``, or the library's value of a ``LibraryDefault``."""
  return value.value() if isinstance(value, LibraryDefault) else value


# --------------------------------------------------------------------------- arguments


def add_subcommand(subparsers, name: str, *, help: str, description: str, run,  # noqa: A002
                   interrupted: str = "no output written") -> argparse.ArgumentParser:
  """Adds subcommand ``name`` whose ``run(args)`` returns the exit status.

  Args:
    subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    name: the subcommand's name.
    help: one line for ``gaussjax --help``.
    description: a paragraph for ``gaussjax NAME --help``.
    run: ``run(args) -> int``.
    interrupted: what the one line printed on Ctrl-C says after
      ``interrupted;``.

  Returns:
    The subcommand's parser, to add arguments to.
  """
  parser = subparsers.add_parser(
      name, help=help, description=description,
      formatter_class=HelpFormatter)
  parser.set_defaults(func=run, interrupted=interrupted)
  return parser


def add_output_argument(parser: argparse.ArgumentParser, help: str,  # noqa: A002
                        metavar: str = "OUTPUT", *, required: bool = True) -> None:
  """``-o`` / ``--output`` / ``--out`` (one spelling for every command)."""
  parser.add_argument("-o", "--output", "--out", dest="output", metavar=metavar,
                      required=required, help=help)


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
  """``-q`` / ``--quiet``: no progress bar and no notes, only results and errors."""
  parser.add_argument("-q", "--quiet", action="store_true",
                      help="no progress bar or notes on stderr; results and errors only")


def _parse(text: str, convert, kind: str):
  """``convert(text)``, or the argparse error that ``text`` is not ``kind``."""
  try:
    return convert(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None


def positive_int(text: str) -> int:
  """argparse type: an integer > 0 (argparse names the flag in its message)."""
  value = _parse(text, int, "an integer")
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be positive")
  return value


def non_negative_int(text: str) -> int:
  """argparse type: an integer >= 0."""
  value = _parse(text, int, "an integer")
  if value < 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
  return value


def positive_float(text: str) -> float:
  """argparse type: a finite number > 0."""
  value = _parse(text, float, "a number")
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
  return value


def bpp_value(text: str) -> float:
  """argparse type of ``--bpp``: in (0, 64], as ``CodecConfig`` requires."""
  value = positive_float(text)
  if value > 64:
    raise argparse.ArgumentTypeError(f"{text!r} must be at most 64 bits per pixel")
  return value


def quality_value(text: str) -> float:
  """argparse type of ``--quality``: in [1, 100], as ``CodecConfig`` requires."""
  value = _parse(text, float, "a number")
  if not 1.0 <= value <= 100.0:
    raise argparse.ArgumentTypeError(f"{text!r} must be in 1..100")
  return value


def svg_supersample_value(text: str) -> int:
  """argparse type of ``--svg-supersample``: an integer in 1..``MAX_SUPERSAMPLE``."""
  value = _parse(text, int, "an integer")
  if not 1 <= value <= _svg.MAX_SUPERSAMPLE:
    raise argparse.ArgumentTypeError(f"{text!r} must be in 1..{_svg.MAX_SUPERSAMPLE}")
  return value


def svg_size_value(text: str) -> tuple[int, int]:
  """argparse type of ``--svg-size WxH``: ``(height, width)``, as ``load_image(svg_size=)``."""
  try:
    width, height = parse_size(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
  return height, width


def add_svg_arguments(parser: argparse.ArgumentParser, *, folder: bool = False) -> None:
  """``--svg-supersample`` and ``--svg-size``: how ``.svg`` inputs are rasterised.

  ``load_image``'s ``svg_supersample`` and ``svg_size``; given for a raster
  input they are refused (``svg_options``), for a folder they apply to its
  ``.svg`` files.
  """
  which = "the .svg files of IN_DIR" if folder else "an .svg IMAGE (refused for other files)"
  parser.add_argument(
      "--svg-supersample", type=svg_supersample_value, default=None, metavar="K",
      help=f"for {which}: render at K times the output size per axis, then average each "
           f"KxK block (default: {_svg.DEFAULT_SUPERSAMPLE}; needs the [svg] extra)")
  parser.add_argument(
      "--svg-size", type=svg_size_value, default=None, metavar="WxH",
      help=f"for {which}: output size in pixels (default: the drawing's own size; another "
           "aspect ratio stretches it)")


def svg_options(args, spec: str | None = None) -> dict:
  """The SVG flags given, as ``load_image`` keywords (``{}`` when none was given).

  Args:
    args: parsed arguments of a command with ``add_svg_arguments``.
    spec: the one input, whose being an SVG is checked; None for a folder.

  Raises:
    CliError: an SVG flag given for an input that is not an ``.svg`` file.
  """
  options = {name: value for name, value in (("svg_supersample", args.svg_supersample),
                                             ("svg_size", args.svg_size)) if value is not None}
  if options and spec is not None and not _svg.is_svg(spec):
    flags = " and ".join("--" + name.replace("_", "-") for name in options)
    raise CliError(f"{flags} {'apply' if len(options) > 1 else 'applies'} to .svg files only; "
                   f"{spec!r} is not one")
  return options


# --------------------------------------------------------------------------- inputs


def check_input(path: str, what: str = "input file") -> None:
  """Raises ``CliError`` unless ``path`` is an existing file (or ``sample:NAME``)."""
  if path.startswith(SAMPLE_PREFIX):
    name = path[len(SAMPLE_PREFIX):]
    if name not in SAMPLES:
      raise CliError(f"unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    return
  if not os.path.exists(path):
    raise CliError(f"{what} {path!r} does not exist")
  if os.path.isdir(path):
    raise CliError(f"{what} {path!r} is a folder, not a file")
  if not os.access(path, os.R_OK):
    raise CliError(f"{what} {path!r} is not readable")


def read_input_file(path: str, max_bytes: int) -> bytes:
  """The bytes of input file ``path``, checked first (exists, a file, at most ``max_bytes``)."""
  check_input(path)
  size = os.path.getsize(path)
  if size > max_bytes:
    raise CliError(f"input file {path!r}: {size} bytes is over the limit of {max_bytes}")
  with open(path, "rb") as f:
    return f.read()


def read_input_image(spec: str, **options) -> np.ndarray:
  """Loads ``spec``: a file path, or ``sample:NAME`` for a scikit-image sample.

  Args:
    spec: the input.
    **options: ``load_image`` keywords (the SVG options, ``svg_options``).

  Returns:
    ``[H, W, C]`` float32 image in [0, 1].
  """
  check_input(spec)
  if spec.startswith(SAMPLE_PREFIX):
    import skimage.data  # a sample only: scikit-image's data module is not needed otherwise

    array = np.asarray(getattr(skimage.data, spec[len(SAMPLE_PREFIX):])(), np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array
  return load_image(spec, **options)


def read_input_header(spec: str, **options) -> tuple[int, int, int | None]:
  """``(height, width, channels)`` of ``spec`` without decoding its pixels (``image_header``).

  Fast (no pixel decoded, no JAX imported), so a command can say what it is
  about to do within its first second. ``channels`` is None for an SVG.
  """
  check_input(spec)
  if spec.startswith(SAMPLE_PREFIX):  # a small built-in image: decoded
    return read_input_image(spec).shape
  return image_header(spec, svg_size=options.get("svg_size"))


def input_text(spec: str, height: int, width: int, channels: int | None, **options) -> str:
  """``"NAME: WxH, C channels"`` for the first line; an SVG's size is approximate."""
  if channels is not None:
    return f"{spec}: {size_text(height, width, channels)}"
  size = size_text(height, width) if "svg_size" in options else f"about {size_text(height, width)}"
  factor = options.get("svg_supersample", _svg.DEFAULT_SUPERSAMPLE)
  return f"{spec}: SVG drawing, {size}, rasterised at {factor}x{factor} supersampling"


def is_same_file(a: str, b: str) -> bool:
  """True when paths ``a`` and ``b`` name the same existing file."""
  if a.startswith(SAMPLE_PREFIX):
    return False
  try:
    return os.path.exists(b) and os.path.samefile(a, b)
  except OSError:
    return os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------- outputs


def check_output(path: str, kind: str, *, inputs=(), flag: str = "--output") -> None:
  """Checks an output before any work; raises ``CliError`` naming ``flag``.

  Args:
    path: the output path the user gave.
    kind: ``IMAGE`` (the extension must be one ``save_image`` writes), ``GJX``
      (must end in ``.gjx``) or ``FOLDER`` (a folder, created when missing).
    inputs: input paths the output must not overwrite.
    flag: the option's name, for the message.
  """
  for spec in inputs:
    if is_same_file(spec, path):
      raise CliError(f"{flag} {path!r} is the input file; refusing to overwrite it")
  if kind == FOLDER:
    if os.path.exists(path) and not os.path.isdir(path):
      raise CliError(f"{flag} {path!r} exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
      existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
      raise CliError(f"{flag} {path!r}: folder {existing!r} is not writable")
    return
  if os.path.isdir(path):
    raise CliError(f"{flag} {path!r} is a folder; give a file name, e.g. "
                   f"{os.path.join(path, 'out' + (GJX_SUFFIX if kind == GJX else '.png'))}")
  ext = os.path.splitext(path)[1].lower()
  if kind == GJX and ext != GJX_SUFFIX:
    raise CliError(f"{flag} {path!r}: this command writes a gaussjax file; "
                   f"name it with the {GJX_SUFFIX} extension")
  if kind == IMAGE and ext not in SAVE_FORMATS:
    raise CliError(f"{flag} {path!r}: unknown image extension {ext!r}; use one of "
                   f"{', '.join(sorted(SAVE_FORMATS))}")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise CliError(f"{flag} {path!r}: folder {os.path.dirname(path) or '.'!r} does not exist")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise CliError(f"{flag} {path!r}: folder {os.path.dirname(path) or '.'!r} is not writable")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise CliError(f"{flag} {path!r} exists and is not writable")


# --------------------------------------------------------------------------- reporting


def note(command: str, text: str, *, quiet: bool = False) -> None:
  """One informational line on stderr (``gaussjax CMD: TEXT``) unless ``quiet``."""
  if not quiet:
    print(f"gaussjax {command}: {text}", file=sys.stderr)


def backend_note(command: str, backend: str, *, quiet: bool = False) -> None:
  """Says so when ``--backend pallas`` will run in interpret mode (no GPU): slow."""
  if backend != "pallas":
    return
  # Imported here: the renderer imports JAX (seconds), after the command's first line.
  import jax

  from gaussjax.rendering._pallas import _use_interpret
  if _use_interpret():
    note(command, f"--backend pallas has no GPU here ({jax.default_backend()}): the kernels run "
         "in interpret mode, which is very slow; --backend xla is the fast one on a CPU",
         quiet=quiet)


def size_text(height: int, width: int, channels: int | None = None) -> str:
  """The one size convention of every command: ``WxH``, channels said apart."""
  text = f"{width}x{height}"
  if channels is not None:
    text += f", {channels} channel" + ("" if channels == 1 else "s")
  return text


def psnr_text(value: float) -> str:
  """``"31.52 dB"``, or ``"lossless"`` for identical images (PSNR infinite)."""
  return "lossless" if math.isinf(value) and value > 0 else f"{value:.2f} dB"


def ssim_text(actual: np.ndarray, expected: np.ndarray) -> str:
  """SSIM to 4 places, or why there is none (an image smaller than its window)."""
  from gaussjax.core._metrics import SSIM_FILTER_SIZE, ssim  # imports JAX: on use only
  if min(expected.shape[:2]) < SSIM_FILTER_SIZE:
    return f"n/a (the image is under the {SSIM_FILTER_SIZE}-pixel SSIM window)"
  return f"{float(ssim(actual, expected)):.4f}"
