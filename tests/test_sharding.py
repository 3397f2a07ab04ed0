"""A batch split over a 4-device CPU mesh gives the results of one device.

``--xla_force_host_platform_device_count`` must be set before jax starts, so
the check runs in a fresh subprocess.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import jax
    import numpy as np
    import gaussjax
    from gaussjax.batch import _batch
    import test_batch as t

    assert jax.device_count() == 4, jax.devices()
    four = _batch.batch_mesh()
    one = _batch.batch_mesh(jax.devices()[:1])
    assert four.devices.size == 4 and one.devices.size == 1

    # The batch really is split: each device holds its own share of it.
    x = _batch.shard_batch(np.zeros((8, 3), np.float32), four)
    assert len(x.sharding.device_set) == 4
    assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}

    # The batched loop: 6 images (padded to 8 for 4 devices) on 4 devices vs 1.
    # Both ways of running a device's images: vmap and a loop.
    images, gaussians = t.toy_images(6, 12, 12), t.toy_gaussians(6, 8, 12, 12)
    for vectorize in (True, False):
      expected = t.run_toy(images, gaussians, 12, 12, mesh=one, vectorize=vectorize)
      actual = t.run_toy(images, gaussians, 12, 12, mesh=four, vectorize=vectorize)
      for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-5)

    # fit_batch, the public entry point, on both meshes.
    config = t.tiny_fit_config()
    stacked = t.stack(gaussians)
    expected = gaussjax.fit_batch(np.stack(images), stacked, config, devices=jax.devices()[:1])
    actual = gaussjax.fit_batch(np.stack(images), stacked, config)
    for a, e in zip(t.fitted(actual), t.fitted(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-5)
    print("SHARDING OK")
""")


def test_four_device_cpu_mesh_matches_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-c", CHILD, str(Path(__file__).parent)], env=env, capture_output=True,
      text=True, timeout=900)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "SHARDING OK" in result.stdout
