"""Tiny helpers shared by the benchmarks: the machine, writing results, joining them.

Every benchmark writes ``benchmarks/results/<name>.json`` and ``.md`` with the
machine it ran on (CPU model, cores, GPU name if any, jax/jaxlib versions).
``join_results`` reads runs of one benchmark on disjoint images as one.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info() -> dict:
  """CPU model, cores, accelerator, jax/jaxlib and Python versions."""
  import jax
  import jaxlib

  info = {
      "cpu": _cpu_model(),
      "cores": os.cpu_count(),
      "platform": jax.default_backend(),
      "gpu": None,
      "devices": [d.device_kind for d in jax.devices()],
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "python": sys.version.split()[0],
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
  }
  gpus = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
  if gpus:
    info["gpu"] = f"{gpus[0]} x{len(gpus)}"
  return info


def format_table(rows: list[dict]) -> str:
  """A Markdown table of ``rows`` (dicts with the same keys); floats to 2 decimals."""
  if not rows:
    return "(no rows)\n"
  keys = list(rows[0])

  def cell(v):
    return f"{v:.2f}" if isinstance(v, float) else str(v)

  lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
  lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def write_results(name: str, rows: list[dict], meta: dict | None = None) -> tuple[str, str]:
  """Writes ``results/<name>.json`` and ``results/<name>.md``; returns their paths."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  machine = machine_info()
  meta = dict(meta or {})
  json_path = os.path.join(RESULTS_DIR, f"{name}.json")
  md_path = os.path.join(RESULTS_DIR, f"{name}.md")
  with open(json_path, "w") as f:
    json.dump({"name": name, "machine": machine, "meta": meta, "rows": rows}, f, indent=2)
    f.write("\n")
  machine_line = ", ".join(f"{k}: {v}" for k, v in machine.items() if v is not None)
  meta_lines = "".join(f"- {k}: {v}\n" for k, v in meta.items())
  with open(md_path, "w") as f:
    f.write(f"# {name}\n\nMachine: {machine_line}\n\n{meta_lines}\n{format_table(rows)}")
  return json_path, md_path


def kodak_images(text) -> tuple[list[int], str] | None:
  """``"kodim [1, 2] at ..."`` (``rd.py``'s ``meta["images"]``) as ``([1, 2], " at ...")``;
  None for other text."""
  if not (isinstance(text, str) and text.startswith("kodim [") and "]" in text):
    return None
  inside, rest = text[len("kodim ["):].split("]", 1)
  return [int(x) for x in inside.split(",") if x.strip()], rest


def join_results(paths: list[str]) -> dict:
  """Results files of one benchmark on disjoint images, read as one.

  Returns ``{"rows": every file's rows, "meta": the first file's meta,
  "parts": each file's whole contents}``; with several files whose
  ``meta["images"]`` are Kodak lists (``"kodim [1, 2] at ..."``), the meta's
  ``images`` lists them all. A file may also hold a bare list of rows (no meta).
  Used by ``rd_compare.py``, ``rd_combine.py`` and ``figures.py``.
  """
  rows, meta, parts, images, rest = [], None, [], [], None
  for path in paths:
    with open(path) as f:
      part = json.load(f)
    parts.append(part)
    rows += part.get("rows", []) if isinstance(part, dict) else part
    part_meta = part.get("meta", {}) if isinstance(part, dict) else {}
    meta = dict(part_meta) if meta is None else meta
    parsed = kodak_images(part_meta.get("images"))
    if parsed:
      images += parsed[0]
      rest = parsed[1]
  meta = meta or {}
  if len(paths) > 1 and images:
    meta["images"] = f"kodim {sorted(images)}{rest}"
  return {"rows": rows, "meta": meta, "parts": parts}
