"""The image convention and its one validator.

An image is ``[H, W, C]`` (``[H, W]`` is grey, C = 1), channels last, float in
[0, 1]. ``check_image`` is the check every layer runs on an image it is
given (fitting, initialisation, the codec, the batch and folder encoders), so
the rules and messages are the same everywhere; each layer adds only its own
limits (the codec's maximum size and channels, for example).
"""

from __future__ import annotations

import numpy as np


def check_image(image, *, integers: bool = False, dtype=np.float32,
                name: str = "image") -> np.ndarray:
  """Checks an image and returns it as a ``[H, W, C]`` NumPy float array.

  Args:
    image: array-like ``[H, W, C]`` or ``[H, W]``; concrete (not a tracer).
    integers: also accept uint8 and uint16 images (divided by 255 and 65535),
      as the codec does; otherwise only floating-point images.
    dtype: the float dtype returned (a copy, converted once from the input).
    name: how messages name the image (``"image 3"`` in a batch).

  Returns:
    ``[H, W, C]`` array of ``dtype``.

  Raises:
    ValueError: not ``[H, W, C]`` or ``[H, W]``, empty, or NaN / infinite values.
    TypeError: the dtype is not floating point (or uint8 / uint16 with ``integers``).
  """
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3 or 0 in array.shape:
    raise ValueError(f"{name} must be [H, W, C], got shape {np.shape(image)}")
  if integers and array.dtype == np.uint8:
    array = array.astype(np.float32) / 255.0
  elif integers and array.dtype == np.uint16:
    array = array.astype(np.float32) / 65535.0
  elif not np.issubdtype(array.dtype, np.floating):
    kinds = "floating point in [0, 1]" + (", uint8 or uint16" if integers else "")
    raise TypeError(f"{name} must be {kinds}, got dtype {array.dtype}")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return array.astype(dtype)
