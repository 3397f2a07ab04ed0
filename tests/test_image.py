"""The one image validator (gaussjax.core._image.check_image) and its users."""

import jax
import numpy as np
import pytest

import gaussjax
from gaussjax.core._image import check_image


def test_grey_and_integer_images():
  grey = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
  actual = check_image(grey)
  assert actual.shape == (3, 4, 1) and actual.dtype == np.float32
  np.testing.assert_array_equal(actual[..., 0], grey.astype(np.float32))
  assert check_image(grey, dtype=np.float64).dtype == np.float64
  u8 = np.array([[[0, 255, 51]]], np.uint8)
  np.testing.assert_allclose(check_image(u8, integers=True), [[[0.0, 1.0, 0.2]]], rtol=1e-6)
  u16 = np.array([[[0, 65535]]], np.uint16)
  np.testing.assert_array_equal(check_image(u16, integers=True), [[[0.0, 1.0]]])


def test_the_result_is_a_copy():
  image = np.zeros((2, 2, 3), np.float32)
  check_image(image)[0, 0, 0] = 1.0
  assert image[0, 0, 0] == 0.0


@pytest.mark.parametrize(
    "image, kwargs, error, match",
    [
        (np.zeros((2, 2, 3, 1), np.float32), {}, ValueError, r"image must be \[H, W, C\]"),
        (np.zeros((0, 4, 3), np.float32), {}, ValueError, r"got shape \(0, 4, 3\)"),
        (np.zeros(5, np.float32), {"name": "image 2"}, ValueError, r"image 2 must be \[H, W, C\]"),
        (np.zeros((2, 2, 3), np.uint8), {}, TypeError, r"floating point in \[0, 1\], got dtype"),
        (np.zeros((2, 2, 3), np.int32), {"integers": True}, TypeError, "uint8 or uint16"),
        (np.full((2, 2, 3), np.nan, np.float32), {}, ValueError, "NaN or infinite"),
        (np.full((2, 2, 1), np.inf, np.float32), {"integers": True}, ValueError, "NaN or infinite"),
    ],
)
def test_bad_images(image, kwargs, error, match):
  with pytest.raises(error, match=match):
    check_image(image, **kwargs)


BAD = [
    (np.zeros((4, 4, 3, 1), np.float32), ValueError),
    (np.full((4, 4, 3), np.nan, np.float32), ValueError),
]


@pytest.mark.parametrize("image, error", BAD)
def test_every_layer_says_the_same(image, error):
  """fit, init_slic, encode, fit_batch and encode_batch refuse a bad image with one message."""
  with pytest.raises(error) as expected:
    check_image(image)
  message = str(expected.value)
  g = gaussjax.init_random(jax.random.key(0), 4, 4, 4, 3)
  config = gaussjax.FitConfig(steps=1)
  calls = [
      lambda: gaussjax.fit(image, g, config),
      lambda: gaussjax.fit_image(image, 4, config),
      lambda: gaussjax.init_slic(image, 4),
      lambda: gaussjax.encode(image, gaussjax.CodecConfig(quality=50)),
  ]
  for call in calls:
    with pytest.raises(error) as actual:
      call()
    assert str(actual.value) == message
  with pytest.raises(error, match="^image 0 "):
    gaussjax.fit_batch([image], [g], config)
  with pytest.raises(error, match="^image 0: image "):
    gaussjax.encode_batch([image])


def test_integer_images_fit_only_through_the_codec():
  image = np.zeros((4, 4, 3), np.uint8)
  with pytest.raises(TypeError, match="floating point"):
    gaussjax.fit_image(image, 4, gaussjax.FitConfig(steps=1))
  with pytest.raises(TypeError, match="uint8 or uint16"):
    gaussjax.encode(np.zeros((4, 4, 3), np.int64))
