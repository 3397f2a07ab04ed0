"""``python -m gaussjax``: the ``gaussjax`` command."""

from gaussjax._cli import entry_point

entry_point()
