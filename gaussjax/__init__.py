"""gaussjax: images as 2D Gaussians in JAX. Fit, render, compress."""

import importlib
from importlib import metadata as _metadata

from gaussjax import constants

# The public names, by the module that defines them. They are imported on
# first use (``__getattr__``), not by ``import gaussjax``: importing JAX and
# the library takes seconds, and the command line (``gaussjax.cli``) prints
# what it is about to do before that (issue 17). The first use of any name
# imports all of them, as an eager ``import gaussjax`` did.
_EXPORTS = {
    "gaussjax.batch._batch": ("encode_batch", "fit_batch"),
    "gaussjax.codec._bitstream": ("DecodeError",),
    "gaussjax.codec._codec": ("CodecConfig", "choose_steps", "encode_gaussians"),
    "gaussjax.codec._formats": ("decode", "decode_gaussians", "encode"),
    "gaussjax.codec._tiles": (
        "MemoryBudgetError", "TiledGaussians", "decode_tiled", "encode_tiled", "fit_tiled",
        "render_tiled",
    ),
    "gaussjax.codec._video": (
        "VideoConfig", "decode_video", "decode_video_frame", "encode_video", "iter_video_frames",
        "video_info",
    ),
    "gaussjax.core._gaussians": (
        "Gaussians", "concatenate", "conics", "covariances", "extents", "scale_gaussians",
    ),
    "gaussjax.core._io": ("load_image", "save_image"),
    "gaussjax.core._metrics": ("bpp", "ms_ssim", "psnr", "ssim"),
    "gaussjax.core._video_io": ("open_video", "read_video"),
    "gaussjax.fitting._fit": (
        "FitConfig", "FitHistory", "FitState", "fit", "fit_image", "fit_loss", "fit_step",
        "init_fit_state", "make_optimizer",
    ),
    "gaussjax.fitting._init": ("init_random", "init_slic"),
    "gaussjax.rendering._render": (
        "BACKENDS", "default_backend", "make_plan", "rasterize", "render", "render_reference",
    ),
}

try:
  __version__ = _metadata.version("gaussjax")
except _metadata.PackageNotFoundError:  # running from a source tree
  __version__ = "0.0.0"

__all__ = (
    "BACKENDS",
    "CodecConfig",
    "DecodeError",
    "FitConfig",
    "FitHistory",
    "FitState",
    "Gaussians",
    "MemoryBudgetError",
    "TiledGaussians",
    "VideoConfig",
    "bpp",
    "choose_steps",
    "concatenate",
    "conics",
    "constants",
    "covariances",
    "decode",
    "decode_gaussians",
    "decode_tiled",
    "decode_video",
    "decode_video_frame",
    "default_backend",
    "encode",
    "encode_batch",
    "encode_gaussians",
    "encode_tiled",
    "encode_video",
    "extents",
    "fit",
    "fit_batch",
    "fit_image",
    "fit_loss",
    "fit_step",
    "fit_tiled",
    "init_fit_state",
    "init_random",
    "init_slic",
    "iter_video_frames",
    "load_image",
    "make_optimizer",
    "make_plan",
    "ms_ssim",
    "open_video",
    "psnr",
    "rasterize",
    "read_video",
    "render",
    "render_reference",
    "render_tiled",
    "save_image",
    "scale_gaussians",
    "ssim",
    "video_info",
)


def _load_all() -> None:
  """Imports every public name (``_EXPORTS``) into the package's namespace."""
  for module, names in _EXPORTS.items():
    loaded = importlib.import_module(module)
    globals().update((name, getattr(loaded, name)) for name in names)


def __getattr__(name: str):
  if name.startswith("__"):  # dunders (pickle, inspect, doctest probes): never the library
    raise AttributeError(f"module 'gaussjax' has no attribute {name!r}")
  _load_all()
  if name in globals():
    return globals()[name]
  raise AttributeError(f"module 'gaussjax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
