"""psnr, ssim, ms_ssim, bpp."""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import correlate1d

import gaussjax
from gaussjax.core._metrics import MS_SSIM_WEIGHTS


def _pair(shape, seed=0, noise=0.1):
  rng = np.random.default_rng(seed)
  a = rng.random(shape).astype(np.float32)
  b = np.clip(a + noise * rng.normal(size=shape), 0, 1).astype(np.float32)
  return a, b


def test_psnr_known_values():
  a = np.zeros((4, 5, 3), np.float32)
  np.testing.assert_allclose(float(gaussjax.psnr(a, a + 0.1)), 20.0, rtol=1e-5)
  np.testing.assert_allclose(float(gaussjax.psnr(a, a + 0.01)), 40.0, rtol=1e-5)
  assert np.isinf(float(gaussjax.psnr(a, a)))


def test_psnr_batch_is_per_image():
  a, b = _pair((3, 8, 9, 1))
  batched = gaussjax.psnr(a, b)
  assert batched.shape == (3,)
  for i in range(3):
    np.testing.assert_allclose(batched[i], gaussjax.psnr(a[i], b[i]), rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 40, 3), (2, 24, 30, 1), (11, 11, 4)])
def test_ssim_equals_dm_pix_default(shape):
  a, b = _pair(shape)
  expected = jax.jit(dm_pix.ssim)(a, b)
  actual = jax.jit(gaussjax.ssim)(a, b)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_ssim_gradient_equals_dm_pix_default():
  a, b = _pair((24, 30, 3))
  ga = jax.jit(jax.grad(lambda x: jnp.sum(gaussjax.ssim(x, b))))(a)
  gb = jax.jit(jax.grad(lambda x: jnp.sum(dm_pix.ssim(x, b))))(a)
  np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-8)


def test_ssim_identical_is_one_and_noise_lowers_it():
  a, b = _pair((40, 40, 3))
  ssim = jax.jit(gaussjax.ssim)
  np.testing.assert_allclose(float(ssim(a, a)), 1.0, rtol=1e-6)
  _, c = _pair((40, 40, 3), noise=0.3)
  assert float(ssim(a, c)) < float(ssim(a, b)) < 1.0


def _ms_ssim_numpy(a, b):
  """MS-SSIM (Wang et al. 2003) in float64 with SciPy filtering, written independently."""
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  x = np.arange(11) - 5.0
  window = np.exp(-x * x / (2 * 1.5**2))
  window /= window.sum()

  def blur(z):  # 'valid' Gaussian filtering along H and W
    z = correlate1d(z, window, axis=0, mode="constant")[5:-5]
    return correlate1d(z, window, axis=1, mode="constant")[:, 5:-5]

  c1, c2 = 0.01**2, 0.03**2
  values = []
  for level in range(5):
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    values.append(np.mean(lum * cs) if level == 4 else np.mean(cs))
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean((1, 3))
    b = b[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).mean((1, 3))
  return np.prod(np.maximum(values, 0) ** np.array(MS_SSIM_WEIGHTS))


def test_ms_ssim_matches_numpy_reference():
  a, b = _pair((177, 190, 3), noise=0.2)
  # Smooth the images so every scale carries structure.
  a = np.asarray(jax.image.resize(a[::8, ::8], a.shape, "linear"))
  b = np.clip(a + 0.05 * np.random.default_rng(1).normal(size=a.shape), 0, 1).astype(np.float32)
  expected = _ms_ssim_numpy(a, b)
  actual = float(jax.jit(gaussjax.ms_ssim)(a, b))
  np.testing.assert_allclose(actual, expected, rtol=1e-4)
  assert 0.0 < actual < 1.0
  np.testing.assert_allclose(float(jax.jit(gaussjax.ms_ssim)(a, a)), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="smaller than the 176x176"):
    gaussjax.ms_ssim(a[:175], b[:175])


def test_ms_ssim_weights_are_wang_2003():
  assert MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
  np.testing.assert_allclose(sum(MS_SSIM_WEIGHTS), 1.0, atol=1e-3)


def test_bpp():
  assert gaussjax.bpp(1000, 100, 80) == 1.0
  assert gaussjax.bpp(0, 10, 10) == 0.0
  with pytest.raises(ValueError, match="height=0"):
    gaussjax.bpp(10, 0, 10)
  with pytest.raises(ValueError, match="num_bytes=-1"):
    gaussjax.bpp(-1, 10, 10)
  assert gaussjax.bpp(12.5, 10, 10) == 1.0  # a byte budget
  with pytest.raises(ValueError, match="num_bytes=nan"):
    gaussjax.bpp(float("nan"), 10, 10)


def test_bytes_for_bpp_is_the_inverse_of_bpp():
  from gaussjax.core._metrics import bytes_for_bpp
  assert bytes_for_bpp(1.0, 100, 80) == 1000.0
  for rate, h, w in ((0.25, 512, 768), (3.0, 7, 9), (0.1, 1, 1)):
    assert gaussjax.bpp(bytes_for_bpp(rate, h, w), h, w) == pytest.approx(rate, rel=1e-12)
  with pytest.raises(ValueError, match="width=0"):
    bytes_for_bpp(1.0, 10, 0)


@pytest.mark.parametrize(
    "fn, a, b, error, match",
    [
        (gaussjax.psnr, np.zeros((4, 4, 3)), np.zeros((4, 5, 3)), ValueError, "same shape"),
        (gaussjax.psnr, np.zeros((4, 4)), np.zeros((4, 4)), ValueError, r"\[..., H, W, C\]"),
        (gaussjax.psnr, np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 1), np.uint8), TypeError, "floating point"),
        (gaussjax.ssim, np.zeros((8, 20, 3)), np.zeros((8, 20, 3)), ValueError, "smaller than the 11x11"),
        (gaussjax.ms_ssim, np.zeros((64, 64, 3)), np.zeros((64, 64, 3)), ValueError, "smaller than the 176x176"),
    ],
)
def test_metrics_reject_bad_input(fn, a, b, error, match):
  with pytest.raises(error, match=match):
    fn(a, b)
