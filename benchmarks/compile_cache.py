"""What the command line's compilation cache saves: ``gaussjax encode`` run cold, then again.

Each encode runs as a user runs it, in a fresh process (``python -m gaussjax
encode ...``), three times per input:

* ``off``: ``GAUSSJAX_XLA_CACHE=0``, every program compiled (as before the
  cache);
* ``first``: an empty cache directory, filled by this run;
* ``second``: the same directory again, every program read back.

Rows give the wall time of each (process start to exit), the cache's entries
and bytes after ``first``, the entries ``second`` added (0: everything was
found), and whether the three files are byte-identical. The inputs: the
README's first command (``sample:astronaut`` at 0.5 bpp) and Kodak images at
384x256 and 768x512 (the default ``CodecConfig`` otherwise).

  python benchmarks/compile_cache.py              # ~20 min on the 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _machine  # noqa: E402
from rd import KODAK  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def encode(image: str, output: str, bpp: float, cache: str) -> float:
  """Wall seconds of one ``python -m gaussjax encode`` in a fresh process."""
  env = {**os.environ, "GAUSSJAX_XLA_CACHE": cache}
  for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    env.pop(name, None)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "gaussjax", "encode", image, "-o", output, "--bpp",
                  str(bpp), "-q"], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def entries(directory: str) -> tuple[int, int]:
  """Files and bytes in ``directory``."""
  names = os.listdir(directory)
  return len(names), sum(os.path.getsize(os.path.join(directory, n)) for n in names)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", default="5,23")
  parser.add_argument("--scales", default="2,1", help="Kodak downscale factors (2: 384x256)")
  parser.add_argument("--bpp", type=float, default=0.5)
  parser.add_argument("--name", default="compile_cache")
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="gaussjax-compile-cache-")
  inputs = [("sample:astronaut", "sample:astronaut")]
  for scale in [int(s) for s in args.scales.split(",")]:
    for index in [int(i) for i in args.images.split(",")]:
      image = Image.open(os.path.join(KODAK, f"kodim{index:02d}.png")).convert("RGB")
      if scale > 1:
        image = image.resize((image.width // scale, image.height // scale), Image.LANCZOS)
      path = os.path.join(work, f"kodim{index:02d}_{image.width}x{image.height}.png")
      image.save(path)
      inputs.append((os.path.basename(path)[:-4], path))
  load_before = os.getloadavg()
  rows = []
  for label, path in inputs:
    cache = os.path.join(work, f"cache_{label.replace(':', '_')}")
    os.makedirs(cache)
    outputs = {k: os.path.join(work, f"{label.replace(':', '_')}_{k}.gjx")
               for k in ("off", "first", "second")}
    t_off = encode(path, outputs["off"], args.bpp, "0")
    t_first = encode(path, outputs["first"], args.bpp, cache)
    count, size = entries(cache)
    t_second = encode(path, outputs["second"], args.bpp, cache)
    added = entries(cache)[0] - count
    data = [open(p, "rb").read() for p in outputs.values()]
    rows.append({"input": label, "bpp": args.bpp, "off_s": t_off, "first_s": t_first,
                 "second_s": t_second, "second/off": t_second / t_off,
                 "entries": count, "cache_kB": size / 1024, "added_by_second": added,
                 "identical": all(d == data[0] for d in data)})
    print(_machine.format_table(rows[-1:]), flush=True)
  info = _machine.machine_info()
  info["load"] = {"before": load_before, "after": os.getloadavg()}
  table = _machine.format_table(rows)
  print(table)
  with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
    json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
  with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
    f.write("# Compilation cache of the command line: encode cold, then again\n\n"
            f"`python benchmarks/compile_cache.py {' '.join(sys.argv[1:])}`\n\nMachine: {info}\n\n"
            "Each encode is a fresh `python -m gaussjax encode IMAGE -o OUT --bpp B -q` process; "
            "seconds are its wall time. `off`: GAUSSJAX_XLA_CACHE=0. `first`: an empty cache "
            "directory, filled by this run. `second`: the same directory again. `entries` and "
            "`cache_kB`: the directory after `first`; `added_by_second`: entries the second run "
            "wrote (0: every program was found; programs are kept when they took over "
            "0.2 s to compile, so one near that time can be kept by one run and not the "
            "other). `identical`: the three files are byte-identical.\n\n")
    f.write(table)


if __name__ == "__main__":
  main()
