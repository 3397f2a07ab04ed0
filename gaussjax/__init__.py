"""gaussjax: images as 2D Gaussians in JAX. Fit, render, compress."""

from importlib import metadata as _metadata

from gaussjax import constants
from gaussjax.batch._batch import encode_batch, fit_batch
from gaussjax.codec._bitstream import DecodeError
from gaussjax.codec._codec import CodecConfig, choose_steps, encode_gaussians
from gaussjax.codec._formats import decode, decode_gaussians, encode
from gaussjax.codec._tiles import (
  MemoryBudgetError,
  TiledGaussians,
  decode_tiled,
  encode_tiled,
  fit_tiled,
  render_tiled,
)
from gaussjax.codec._video import (
  VideoConfig,
  decode_video,
  decode_video_frame,
  encode_video,
  iter_video_frames,
  video_info,
)
from gaussjax.core._gaussians import (
  Gaussians,
  concatenate,
  conics,
  covariances,
  extents,
  scale_gaussians,
)
from gaussjax.core._io import load_image, save_image
from gaussjax.core._metrics import bpp, ms_ssim, psnr, ssim
from gaussjax.core._video_io import open_video, read_video
from gaussjax.fitting._fit import (
  FitConfig,
  FitHistory,
  FitState,
  fit,
  fit_image,
  fit_loss,
  fit_step,
  init_fit_state,
  make_optimizer,
)
from gaussjax.fitting._init import init_random, init_slic
from gaussjax.rendering._render import (
  BACKENDS,
  default_backend,
  make_plan,
  rasterize,
  render,
  render_reference,
)

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
