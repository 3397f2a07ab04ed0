"""Executes every notebook of notebooks/ top to bottom at the small size.

The kernel is this interpreter (``sys.executable``), whatever kernelspecs the
machine has: the test writes its own kernelspec into a temporary
``JUPYTER_PATH`` folder (searched before the user and system folders). Any
cell error fails the test with the cell's traceback.
"""

import json
import os
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
NAMES = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")) if os.path.isdir(NOTEBOOKS) else []
KERNEL_NAME = "gaussjax-test-python"
CELL_TIMEOUT_S = 300  # one cell on a loaded 2-core machine; a hang fails instead of blocking CI


def _kernel_dir(root) -> str:
  path = os.path.join(root, "kernels", KERNEL_NAME)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "gaussjax test", "language": "python"}, f)
  return root


def execute(path: str, workdir: str) -> nbformat.NotebookNode:
  """Runs the notebook at ``path`` in ``workdir``; raises CellExecutionError on failure."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S, allow_errors=False,
      resources={"metadata": {"path": workdir}})
  client.execute()
  return nb


def test_notebooks_are_built_from_build_script():
  assert NAMES == ["01_quickstart.ipynb", "02_codec.ipynb", "03_batch.ipynb",
                   "04_under_the_hood.ipynb"]
  for name in NAMES:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
    assert '"google.colab" in sys.modules' in code[0].source, f"{name}: no Colab install cell"
    assert "GAUSSJAX_NOTEBOOK_SIZE" in code[1].source, f"{name}: no size knob"


def test_notebooks_match_build_script():
  """The committed .ipynb files are what notebooks/_build.py writes (run it after editing)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("gaussjax_nb_build", os.path.join(NOTEBOOKS, "_build.py"))
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  assert sorted(build.NOTEBOOKS) == NAMES
  for name, cells in build.NOTEBOOKS.items():
    expected = nbformat.writes(build.build(name, cells)) + "\n"  # nbformat.write ends with one
    with open(os.path.join(NOTEBOOKS, name), encoding="utf-8") as f:
      assert f.read() == expected, f"{name} is stale: run python notebooks/_build.py"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("JUPYTER_PATH", _kernel_dir(str(tmp_path / "jupyter")))
  monkeypatch.setenv("GAUSSJAX_NOTEBOOK_SIZE", "small")
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  start = time.perf_counter()
  nb = execute(os.path.join(NOTEBOOKS, name), str(tmp_path))
  seconds = time.perf_counter() - start
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code), "a cell did not run"
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
  assert images >= 1, f"{name} drew no figure"
  print(f"{name}: {seconds:.1f} s")
