"""The machine a benchmark ran on: CPU, cores, GPU, jax version."""

import os
import platform


def machine_info() -> dict:
  """CPU model, core count, accelerator names, Python and jax versions."""
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  return {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "platform": jax.default_backend(),
      "devices": [d.device_kind for d in devices],
      "jax": jax.__version__,
      "python": platform.python_version(),
  }
