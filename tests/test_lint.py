"""ruff over the repository, with the rules of pyproject.toml (errors, unused names, import order)."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
  ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
  result = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
