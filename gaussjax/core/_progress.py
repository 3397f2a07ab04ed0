"""Progress reporting shared by the command line and long library jobs (``encode_dir``)."""

from __future__ import annotations

import sys


def progress_bar(total: int, *, desc: str, unit: str = "step", quiet: bool = False):
  """The progress bar of every command: ``tqdm`` on stderr.

  Shown only when stderr is a terminal (``disable=None``), so a log file
  never gets ``\\r`` redraws, and never with ``--quiet``. Use as a context
  manager; ``update(n)`` and ``set_postfix_str(text)`` as with any ``tqdm``.
  """
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=True if quiet else None,
              dynamic_ncols=True, leave=True)
