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


def _build_module():
  import importlib.util
  spec = importlib.util.spec_from_file_location("gaussjax_nb_build", os.path.join(NOTEBOOKS, "_build.py"))
  build = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(build)
  return build


def _install_cell(name: str) -> str:
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  return [c for c in nb.cells if c.cell_type == "code"][0].source


def test_notebooks_are_built_from_build_script():
  assert NAMES == ["01_quickstart.ipynb", "02_codec.ipynb", "03_batch.ipynb",
                   "04_under_the_hood.ipynb"]
  for name in NAMES:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    install = code[0].source
    # gaussjax is not on PyPI: never installed by that name, only from GAUSSJAX_SOURCE.
    assert 'GAUSSJAX_SOURCE = ""' in install, f"{name}: no install source variable"
    assert "pip install gaussjax" not in install
    assert "GAUSSJAX_NOTEBOOK_SIZE" in code[1].source, f"{name}: no size knob"


def test_notebooks_match_build_script():
  """The committed cells are what notebooks/_build.py writes (run it after editing)."""
  build = _build_module()
  assert sorted(build.NOTEBOOKS) == NAMES
  for name, cells in build.NOTEBOOKS.items():
    expected = build.build(name, cells)
    actual = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert [(c.id, c.cell_type, c.source) for c in actual.cells] == \
        [(c.id, c.cell_type, c.source) for c in expected.cells], \
        f"{name} is stale: run python notebooks/_build.py --execute full"


def test_notebooks_are_stored_executed_with_figures():
  for name in NAMES:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert nb.metadata.get("gaussjax", {}).get("executed_size") in ("small", "full"), name
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{name}: a cell was not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], name
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), name


def test_install_cell_installs_only_the_source_it_is_given(monkeypatch):
  import importlib.util
  import subprocess
  source = _install_cell(NAMES[0])
  monkeypatch.delenv("GAUSSJAX_SOURCE", raising=False)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # "not installed"
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda argv, **kw: calls.append(argv))
  with pytest.raises(RuntimeError, match="GAUSSJAX_SOURCE is empty: set it at the top"):
    exec(source, {})
  assert calls == []
  monkeypatch.setenv("GAUSSJAX_SOURCE", "/wheels/gaussjax-0.1.0-py3-none-any.whl")
  exec(source, {})
  assert calls[-1][-2:] == ["/wheels/gaussjax-0.1.0-py3-none-any.whl", "matplotlib"]
  assert not any("gaussjax" == arg for argv in calls for arg in argv)


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
