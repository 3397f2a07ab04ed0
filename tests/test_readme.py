"""The README's two commands stay true: CI runs the test command verbatim."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
  text = (ROOT / "README.md").read_text()
  block = text.split("```bash", 1)[1].split("```", 1)[0]
  return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_starts_with_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  install_and_run, install_and_test = commands
  assert "gaussjax encode sample:" in install_and_run and "gaussjax decode" in install_and_run
  assert "pytest" in install_and_test


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert _readme_commands()[1] in ci


def test_readme_sample_is_a_known_sample():
  from gaussjax.cli import _cli
  name = _readme_commands()[0].split("sample:", 1)[1].split()[0]
  assert name in _cli.SAMPLES
