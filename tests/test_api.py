"""API conventions of every public name (dm-pix style), and the doctests."""

import dataclasses
import doctest
import importlib
import inspect
import pkgutil

import pytest

import gaussjax

# Positional parameters with defaults that are part of a documented signature.
POSITIONAL_DEFAULTS = {
    ("init_random", "channels"),  # init_random(key, n, height, width, channels)
    ("fit", "config"),  # fit(image, gaussians, config)
    ("fit_image", "config"),  # fit_image(image, num_gaussians, config)
    ("encode", "config"),  # encode(image, config)
    ("encode_batch", "config"),  # encode_batch(images, config), as encode
    ("fit_batch", "config"),  # fit_batch(images, gaussians, config), as fit
    ("encode_video", "config"),  # encode_video(frames, config), as encode
    ("encode_tiled", "config"),  # encode_tiled(image, config), as encode
    ("fit_tiled", "config"),  # fit_tiled(image, num_gaussians, config), as fit_image
}

PRNG_NAMES = {"rng", "prng", "prng_key", "rng_key", "seed_key", "random_key"}


def _public_callables():
  for name in gaussjax.__all__:
    obj = getattr(gaussjax, name)
    if inspect.isfunction(obj):
      yield name, obj


def test_all_names_exist_and_are_sorted():
  assert len(set(gaussjax.__all__)) == len(gaussjax.__all__)
  for name in gaussjax.__all__:
    assert hasattr(gaussjax, name), name
  assert list(gaussjax.__all__) == sorted(gaussjax.__all__, key=lambda s: (s[0].islower(), s))


def test_lazy_exports_are_the_public_names():
  # gaussjax/__init__.py loads its names on first use from _EXPORTS: the same set.
  exported = {name for names in gaussjax._EXPORTS.values() for name in names}
  assert exported | {"constants"} == set(gaussjax.__all__)
  assert set(gaussjax.__all__) <= set(dir(gaussjax))


def test_public_names_are_documented():
  for name in gaussjax.__all__:
    obj = getattr(gaussjax, name)
    if callable(obj):
      assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize("name, fn", list(_public_callables()))
def test_function_conventions(name, fn):
  params = list(inspect.signature(fn).parameters.values())
  names = [p.name for p in params]
  assert not PRNG_NAMES & set(names), f"{name}: a PRNG argument must be called `key`"
  if "key" in names:
    key = params[names.index("key")]
    assert key.kind is inspect.Parameter.KEYWORD_ONLY or names[0] == "key", (
        f"{name}: a positional `key` must come first")
  for p in params:
    if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is not inspect.Parameter.empty:
      assert (name, p.name) in POSITIONAL_DEFAULTS, f"{name}: option {p.name!r} must be keyword-only"


def test_config_is_frozen_and_hashable():
  config = gaussjax.FitConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.steps = 3
  assert hash(config) == hash(gaussjax.FitConfig())


def _modules():
  names = ["gaussjax"] + [m.name for m in pkgutil.iter_modules(gaussjax.__path__, "gaussjax.")]
  return [n for n in names if not n.startswith("gaussjax.kernels")]


@pytest.mark.parametrize("module_name", _modules())
def test_doctests(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
  assert result.failed == 0
