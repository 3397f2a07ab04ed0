"""``python -m gaussjax``: the ``gaussjax`` command."""

from gaussjax.cli._cli import entry_point

if __name__ == "__main__":  # importing this module (doctests, tools) runs nothing
  entry_point()
