"""gaussjax: images as 2D Gaussians in JAX. Fit, render, compress."""

from importlib import metadata as _metadata

from gaussjax import constants
from gaussjax._batch import encode_batch
from gaussjax._batch import fit_batch
from gaussjax._bitstream import DecodeError
from gaussjax._codec import CodecConfig
from gaussjax._codec import choose_steps
from gaussjax._codec import decode
from gaussjax._codec import decode_gaussians
from gaussjax._codec import encode
from gaussjax._codec import encode_gaussians
from gaussjax._fit import FitConfig
from gaussjax._fit import FitHistory
from gaussjax._fit import FitState
from gaussjax._fit import fit
from gaussjax._fit import fit_image
from gaussjax._fit import fit_loss
from gaussjax._fit import fit_step
from gaussjax._fit import init_fit_state
from gaussjax._fit import make_optimizer
from gaussjax._gaussians import Gaussians
from gaussjax._gaussians import concatenate
from gaussjax._gaussians import conics
from gaussjax._gaussians import covariances
from gaussjax._gaussians import extents
from gaussjax._gaussians import scale_gaussians
from gaussjax._init import init_random
from gaussjax._init import init_slic
from gaussjax._io import load_image
from gaussjax._io import save_image
from gaussjax._metrics import bpp
from gaussjax._metrics import ms_ssim
from gaussjax._metrics import psnr
from gaussjax._metrics import ssim
from gaussjax._render import BACKENDS
from gaussjax._render import default_backend
from gaussjax._render import make_plan
from gaussjax._render import rasterize
from gaussjax._render import render
from gaussjax._render import render_reference
from gaussjax._video import VideoConfig
from gaussjax._video import decode_video
from gaussjax._video import decode_video_frame
from gaussjax._video import encode_video
from gaussjax._video import iter_video_frames
from gaussjax._video import video_info
from gaussjax._video_io import open_video
from gaussjax._video_io import read_video
from gaussjax._tiles import MemoryBudgetError
from gaussjax._tiles import TiledGaussians
from gaussjax._tiles import decode_tiled
from gaussjax._tiles import encode_tiled
from gaussjax._tiles import fit_tiled
from gaussjax._tiles import render_tiled

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
