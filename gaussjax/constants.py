"""Numerical constants of the gaussjax image model.

Every backend (``reference``, ``xla``, ``pallas``) imports the formula's
constants from here, so all of them compute the same function:

    Σ_i      = L_i L_iᵀ + COV_FLOOR · I                  (output pixels²)
    q_i(p)   = (p - μ_i)ᵀ Σ_i⁻¹ (p - μ_i)
    w_i(p)   = max(exp(-q_i / 2) - WEIGHT_CUTOFF, 0) / (1 - WEIGHT_CUTOFF)
    I(p)     = Σ_i c_i · w_i(p)

``p`` is a pixel centre ``(j + 0.5, i + 0.5)`` (x = column, y = row).
"""

import math

# Variance (in output pixels²) added to every covariance before rendering: the
# anti-aliasing prefilter. 1/12 is the variance of a box one pixel wide, i.e.
# each Gaussian is seen through the footprint of the pixel that samples it.
# It also bounds det(Σ) away from zero, so the conic Σ⁻¹ is always finite,
# even for a degenerate Cholesky factor.
COV_FLOOR = 1.0 / 12.0

# A Gaussian's weight is shifted down by WEIGHT_CUTOFF and clamped at zero, then
# rescaled so the peak stays 1. Contributions below one 8-bit level (1/255) of a
# unit colour are dropped, and the cut is continuous (no jump at the edge of the
# support), so backends that round q differently still agree to float precision.
WEIGHT_CUTOFF = 1.0 / 255.0

# Mahalanobis radius² where the weight reaches zero: exp(-Q/2) = WEIGHT_CUTOFF.
# Q = 2 ln 255 ≈ 11.09, a radius of ≈ 3.33 σ. Binning uses the exact bounding box
# of the ellipse q = CUTOFF_Q: half-widths sqrt(CUTOFF_Q · Σ_xx), sqrt(CUTOFF_Q · Σ_yy).
CUTOFF_Q = 2.0 * math.log(1.0 / WEIGHT_CUTOFF)

# 1 / (1 - WEIGHT_CUTOFF): rescales the shifted weight so its peak is 1.
WEIGHT_SCALE = 1.0 / (1.0 - WEIGHT_CUTOFF)

# Largest image (pixels) that load_image accepts, and that decode will render.
# 2**28 pixels (16384²) at float32 RGB is 3 GiB: past this, the error is clearer
# than an out-of-memory crash. Users can raise it through load_image(max_pixels=).
MAX_PIXELS = 1 << 28

# Largest image (pixels) that decode renders unless told otherwise
# (decode(..., max_pixels=), gaussjax decode --max-pixels): the guard against
# decompression bombs, files of a few bytes whose header asks for up to
# MAX_PIXELS. 2**25 pixels (e.g. 8192x4096, a 33-megapixel photo) is 400 MB as
# a float32 RGB image; decoding and saving it peaks at a few times that.
MAX_DECODE_PIXELS = 1 << 25

# The largest gaussjax file (.gjx, .gjv) any reader accepts, in bytes: checked
# before the file is read (the command line reads it before importing JAX).
MAX_FILE_BYTES = 1 << 28

# The renderers (``gaussjax.render(..., backend=)``, ``--backend``): "auto" picks
# pallas on a GPU and xla elsewhere. Here, not in ``gaussjax.rendering``, so that
# the command line can check the flag before it imports JAX.
BACKENDS = ("auto", "reference", "xla", "pallas")
