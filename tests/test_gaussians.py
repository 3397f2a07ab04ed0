"""The Gaussians pytree and its helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussjax
from gaussjax import constants
from gaussjax.core._gaussians import validate


def _gaussians(n=5, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.uniform(0, 20, (n, 2)).astype(np.float32)
  chol = np.stack([rng.uniform(0.5, 3, n), rng.uniform(-1, 1, n), rng.uniform(0.5, 3, n)], -1)
  colors = rng.uniform(0, 1, (n, channels)).astype(np.float32)
  return gaussjax.Gaussians(jnp.asarray(means), jnp.asarray(chol, jnp.float32), jnp.asarray(colors))


def test_counts_and_channels():
  g = _gaussians(7, 4)
  assert g.num_gaussians == 7
  assert g.channels == 4
  # A NamedTuple of three fields: len() and _replace keep their tuple meaning.
  assert len(g) == 3
  assert g._replace(colors=g.colors * 2).num_gaussians == 7


def test_covariances_are_l_lt():
  g = _gaussians(6)
  chol = np.asarray(g.chol, np.float64)
  expected = []
  for l11, l21, l22 in chol:
    low = np.array([[l11, 0.0], [l21, l22]])
    expected.append(low @ low.T)
  np.testing.assert_allclose(np.asarray(g.covariances()), np.stack(expected), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gaussjax.covariances(g.chol)), np.stack(expected), rtol=1e-5, atol=1e-6)


def test_conics_invert_prefiltered_covariance():
  g = _gaussians(6)
  cov = np.asarray(g.covariances(), np.float64) + constants.COV_FLOOR * np.eye(2)
  a, b, c = np.moveaxis(np.asarray(gaussjax.conics(g.chol), np.float64), -1, 0)
  inv = np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2)
  np.testing.assert_allclose(inv @ cov, np.broadcast_to(np.eye(2), cov.shape), atol=1e-4)


def test_degenerate_chol_gives_finite_conic():
  conic = gaussjax.conics(jnp.zeros((1, 3)))
  assert np.all(np.isfinite(np.asarray(conic)))


def test_extents_bound_the_support():
  g = _gaussians(4)
  rx, ry = np.asarray(gaussjax.extents(g.chol), np.float64).T
  conic = np.asarray(gaussjax.conics(g.chol), np.float64)
  # On a dense ring of points just outside the box, the Mahalanobis radius² is >= CUTOFF_Q.
  for i in range(4):
    a, b, c = conic[i]
    for dx in np.linspace(-rx[i] * 1.001, rx[i] * 1.001, 41):
      for dy in (-ry[i] * 1.001, ry[i] * 1.001):
        assert a * dx * dx + 2 * b * dx * dy + c * dy * dy >= constants.CUTOFF_Q * 0.999
    # ... and the box is tight: the ellipse touches x = ±rx.
    cov = np.linalg.inv(np.array([[a, b], [b, c]]))
    np.testing.assert_allclose(rx[i], np.sqrt(constants.CUTOFF_Q * cov[0, 0]), rtol=1e-4)


def test_concatenate_and_select():
  a, b = _gaussians(3, seed=1), _gaussians(4, seed=2)
  both = gaussjax.concatenate([a, b])
  assert both.num_gaussians == 7
  np.testing.assert_array_equal(both.select(slice(3, None)).means, b.means)
  np.testing.assert_array_equal(both.select(jnp.array([0, 4])).colors[1], b.colors[1])
  mask = np.array([True, False, True, False, False, False, True])
  assert both.select(mask).num_gaussians == 3
  with pytest.raises(ValueError, match="channel"):
    gaussjax.concatenate([a, _gaussians(2, channels=1)])
  with pytest.raises(ValueError, match="at least one"):
    gaussjax.concatenate([])


def test_astype():
  g = _gaussians(2).astype(jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in g)


def test_scale_gaussians_scales_means_and_covariances():
  g = _gaussians(3)
  s = gaussjax.scale_gaussians(g, 2.0, 3.0)  # sy, sx
  np.testing.assert_allclose(s.means, g.means * np.array([3.0, 2.0]), rtol=1e-6)
  scale = np.diag([3.0, 2.0])
  np.testing.assert_allclose(s.covariances(), scale @ np.asarray(g.covariances()) @ scale, rtol=1e-5)


def test_is_a_pytree_under_jit_vmap_grad():
  g = _gaussians(5)
  leaves, treedef = jax.tree_util.tree_flatten(g)
  assert len(leaves) == 3
  assert isinstance(jax.tree_util.tree_unflatten(treedef, leaves), gaussjax.Gaussians)

  @jax.jit
  def total_variance(g):
    return jnp.sum(jnp.trace(g.covariances(), axis1=-2, axis2=-1))

  expected = float(np.sum(np.asarray(g.chol) ** 2))
  np.testing.assert_allclose(total_variance(g), expected, rtol=1e-5)

  grads = jax.grad(total_variance)(g)
  assert isinstance(grads, gaussjax.Gaussians)
  np.testing.assert_allclose(grads.chol, 2 * np.asarray(g.chol), rtol=1e-5)
  np.testing.assert_array_equal(grads.means, 0.0)

  batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), g, _gaussians(5, seed=3))
  assert batch.num_gaussians == 5
  batched = jax.vmap(total_variance)(batch)
  np.testing.assert_allclose(batched[0], expected, rtol=1e-5)
  np.testing.assert_allclose(jax.vmap(gaussjax.covariances)(batch.chol)[1], _gaussians(5, seed=3).covariances(), rtol=1e-6)


@pytest.mark.parametrize(
    "tree, error, match",
    [
        ("not gaussians", TypeError, "must be a gaussjax.Gaussians"),
        ((jnp.zeros((3, 2)), jnp.zeros((3, 2)), jnp.zeros((3, 3))), ValueError, r"chol must have shape \[N, 3\]"),
        ((jnp.zeros((3, 2)), jnp.zeros((4, 3)), jnp.zeros((3, 3))), ValueError, "disagree on N"),
        ((jnp.zeros((3, 2), jnp.int32), jnp.zeros((3, 3)), jnp.zeros((3, 3))), TypeError, "floating point"),
        ((jnp.zeros((3, 2)), jnp.zeros((3, 3)), jnp.zeros((3, 0))), ValueError, "at least one channel"),
        ((jnp.zeros(2), jnp.zeros(3), jnp.zeros(3)), ValueError, "must have shape"),
    ],
)
def test_validate_rejects_bad_trees(tree, error, match):
  with pytest.raises(error, match=match):
    validate(tree)
