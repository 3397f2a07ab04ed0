"""gaussjax: images as 2D Gaussians in JAX. Fit, render, compress."""

from importlib import metadata as _metadata

from gaussjax import constants
from gaussjax._batch import encode_batch
from gaussjax._bitstream import DecodeError
from gaussjax._codec import CodecConfig
from gaussjax._codec import decode
from gaussjax._codec import decode_gaussians
from gaussjax._codec import encode
from gaussjax._codec import encode_gaussians
from gaussjax._gaussians import Gaussians
from gaussjax._gaussians import concatenate
from gaussjax._gaussians import conics
from gaussjax._gaussians import covariances
from gaussjax._gaussians import extents
from gaussjax._gaussians import scale_gaussians
from gaussjax._init import init_random
from gaussjax._render import BACKENDS
from gaussjax._render import default_backend
from gaussjax._render import render
from gaussjax._render import render_reference

try:
  __version__ = _metadata.version("gaussjax")
except _metadata.PackageNotFoundError:  # running from a source tree
  __version__ = "0.0.0"

__all__ = (
    "BACKENDS",
    "CodecConfig",
    "DecodeError",
    "Gaussians",
    "concatenate",
    "conics",
    "constants",
    "covariances",
    "decode",
    "decode_gaussians",
    "default_backend",
    "encode",
    "encode_batch",
    "encode_gaussians",
    "extents",
    "init_random",
    "render",
    "render_reference",
    "scale_gaussians",
)
