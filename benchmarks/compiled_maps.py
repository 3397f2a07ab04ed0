"""Memory maps a process holds as it encodes at new configurations (``core._compiled``).

Encodes one 96x128 Kodak crop at several target rates (each a new N, so new
compiled programs), counting ``/proc/self/maps`` after each encode, then once
more after ``jax.clear_caches()``, which ``gaussjax.core._compiled`` calls
when a process holds half of ``vm.max_map_count``. Linux only.

  python benchmarks/compiled_maps.py
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402

import gaussjax  # noqa: E402
from gaussjax.core import _compiled  # noqa: E402

KODAK = os.environ.get("GJX_KODAK", "/work/shared/data/kodak")


def main():
  image = np.asarray(gaussjax.load_image(os.path.join(KODAK, "kodim23.png")),
                     np.float32)[:96, :128]
  rows = [dict(step="start", bpp=None, maps=_compiled.map_count())]
  for bpp in (0.4, 0.6, 0.8, 0.4):
    gaussjax.encode(image, gaussjax.CodecConfig(bpp=bpp, fit_steps=60, qat_steps=12))
    rows.append(dict(step="encode", bpp=bpp, maps=_compiled.map_count()))
  jax.clear_caches()
  rows.append(dict(step="jax.clear_caches()", bpp=None, maps=_compiled.map_count()))
  meta = dict(image="kodim23 crop 96x128", fit_steps=60, qat_steps=12,
              max_map_count=_compiled.map_limit(), release_at=_compiled.MAP_FRACTION,
              note="the last encode repeats the first rate: its programs are cached, no new maps",
              load_average=[round(x, 2) for x in os.getloadavg()])
  _machine.write_results("compiled_maps_cpu", rows, meta)
  print(_machine.format_table(rows))


if __name__ == "__main__":
  main()
