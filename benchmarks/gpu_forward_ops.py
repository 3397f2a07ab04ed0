"""What the Pallas forward asks of a GPU, counted without one (docs/gpu_forward.md).

Lowers ``jit(rasterize)`` and ``jit(value_and_grad(mse of rasterize))`` with
``backend="pallas"`` for CUDA (``jax.export``, compiled Triton kernels, as
``tests/test_render_pallas.py::test_exports_for_cuda`` does) on kodim23
(768x512) with SLIC Gaussians and a ``make_plan`` plan, and counts the
StableHLO operations that become separate GPU work: ``while`` loops (and their
trip counts), sorts, gathers, scatters, Triton calls. A what-if row swaps
``jax.numpy.searchsorted``'s method (inside this process only) to show the
loops that a one-argument change would remove. Writes
``benchmarks/results/gpu_forward_ops.json|md``.

  python benchmarks/gpu_forward_ops.py
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import format_table, write_results

import gaussjax
from gaussjax.rendering import _pallas

KODAK_DIRS = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                           "data", "kodak"), "/work/shared/data/kodak")
TRITON = "__gpu$xla.gpu.triton"


def _kodak23():
  for directory in KODAK_DIRS:
    path = os.path.join(directory, "kodim23.png")
    if os.path.exists(path):
      return gaussjax.load_image(path)
  raise FileNotFoundError(f"kodim23.png not found in {KODAK_DIRS}")


def _count(text: str) -> dict:
  ops = re.findall(r"(stablehlo\.[a-z_]+)", text)
  return {
      "stablehlo_ops": len(ops),
      "while": ops.count("stablehlo.while"),
      "sort": ops.count("stablehlo.sort"),
      "gather": ops.count("stablehlo.gather"),
      "scatter": ops.count("stablehlo.scatter"),
      "pad": ops.count("stablehlo.pad"),
      "concatenate": ops.count("stablehlo.concatenate"),
      "transpose": ops.count("stablehlo.transpose"),
      "reduce_window": ops.count("stablehlo.reduce_window"),
      "triton_calls": text.count(TRITON),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="10000,70000")
  args = parser.parse_args(argv)
  image = _kodak23()
  height, width = image.shape[:2]
  target = jnp.asarray(image)
  disabled = [jax.export.DisabledSafetyCheck.custom_call(TRITON)]
  searchsorted = jnp.searchsorted
  rows = []
  for n in (int(s) for s in args.sizes.split(",")):
    g = gaussjax.init_slic(image, n)
    plan = gaussjax.make_plan(g, height, width, backend="pallas")
    tiles = math.ceil(height / plan.config.tile) * math.ceil(width / plan.config.tile)
    # Sequential steps of the three binary searches in _bin (jnp.searchsorted,
    # method "scan": one while-loop iteration per level).
    levels = math.ceil(math.log2(n + 1)) + 2 * math.ceil(math.log2(plan.pair_capacity + 1))

    def forward(gaussians, plan=plan):
      return gaussjax.rasterize(gaussians, height, width, backend="pallas", plan=plan)

    def loss(gaussians):
      return jnp.mean((forward(gaussians)[0] - target) ** 2)

    for method in ("scan", "scan_unrolled"):
      jnp.searchsorted = functools.partial(searchsorted, method=method)  # what-if, this process
      jax.clear_caches()
      try:
        for what, fn in (("fwd", forward), ("fwd+bwd", jax.value_and_grad(loss))):
          with _pallas.interpret_mode(False):
            exported = jax.export.export(jax.jit(fn), platforms=["cuda"],
                                         disabled_checks=disabled)(g)
          row = {"n": n, "what": what, "searchsorted": method, "pair_capacity": plan.pair_capacity,
                 "tile_capacity": plan.tile_capacity, "tiles": tiles,
                 "loop_iterations": levels if method == "scan" else 0}
          row.update(_count(exported.mlir_module()))
          rows.append(row)
          print(format_table([row]).splitlines()[-1], flush=True)
      finally:
        jnp.searchsorted = searchsorted
  print(format_table(rows))
  meta = {
      "what": ("StableHLO of jit(rasterize) and jit(value_and_grad(MSE)) lowered for CUDA "
               "(jax.export, Pallas compiled to Triton), kodim23 768x512, SLIC Gaussians, "
               "make_plan plan; loop_iterations: sequential while-loop steps of the binning's "
               "three jnp.searchsorted calls"),
      "note": ("counted on a CPU host; no GPU ran. The scan_unrolled rows are a what-if "
               "(jax.numpy.searchsorted's method swapped in this process), not the library"),
  }
  for path in write_results("gpu_forward_ops", rows, meta):
    print("wrote", path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
