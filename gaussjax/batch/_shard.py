"""Many processes, one folder job: shards of ``encode_dir``, their journals, the merge.

N cooperating processes (hosts of a TPU pod slice, tasks of a SLURM job
array, or just N local processes) encode one input folder into one output
folder:

- the sorted input list is split round-robin: shard ``I`` of ``N`` takes
  files ``I, I + N, I + 2N, ...`` (``select``). Each process lists the folder
  itself, so all must see the same files;
- shard ``I`` of ``N`` appends to its own journal,
  ``manifest.shard-I-of-N.jsonl`` (``journal_name``), with the same crash
  safety as the single-process ``manifest.jsonl``: a killed shard re-run with
  the same ``I/N`` skips what it finished. A lock refuses two live processes
  on the same shard;
- when a shard finishes, it merges (``finish``) under a merge lock: if every
  input file has a row, in some journal, for the current settings, it writes
  ``manifest.jsonl`` (the merged journal, which a later single-process run
  resumes from) and ``manifest.csv``, both atomically. So whichever shard
  finishes last writes them; ``gaussjax encode-dir --merge OUT_DIR`` merges
  by hand (e.g. after a shard failed for good).

The shard comes from ``--shard I/N``, or else from JAX: ``jax.process_index()``
of ``jax.process_count()`` once ``jax.distributed.initialize()`` ran (one
process per host on TPU pods and under SLURM), else ``0/1`` (``resolve``).
See ``docs/multihost.md``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path

from gaussjax.batch._journal import (
  JOURNAL_NAME,
  LOCK_NAME,
  MANIFEST_NAME,
  file_lock,
  is_finished,
  read_journal,
  write_manifest,
)
from gaussjax.core._io import write_atomic

SHARD_JOURNAL = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.jsonl$")
MERGE_LOCK_NAME = ".encode-dir.merge.lock"


def parse_shard(text: str) -> tuple[int, int]:
  """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``; a clear ``ValueError`` otherwise."""
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
  if not match:
    raise ValueError(f"--shard {text!r} must look like I/N, e.g. 0/4 (shard I of N, from 0)")
  index, count = int(match.group(1)), int(match.group(2))
  check_shard(index, count)
  return index, count


def check_shard(index: int, count: int) -> None:
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"shard count {count!r} must be a positive int")
  if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
    raise ValueError(f"shard index {index!r} must be in 0..{count - 1} (shards count from 0)")


def jax_shard() -> tuple[int, int]:
  """``(jax.process_index(), jax.process_count())``: ``(0, 1)`` unless jax.distributed runs."""
  import jax  # the caller encodes with JAX anyway; imported on use to keep this module light
  return jax.process_index(), jax.process_count()


def resolve(shard: tuple[int, int] | str | None) -> tuple[int, int]:
  """The shard to run: the one given (``(I, N)`` or ``"I/N"``), else JAX's process share."""
  if shard is None:
    return jax_shard()
  if isinstance(shard, str):
    return parse_shard(shard)
  index, count = shard
  check_shard(index, count)
  return index, count


def select(names: Sequence[str], index: int, count: int) -> list[str]:
  """Shard ``index``'s share of the sorted ``names``: every ``count``-th from ``index``."""
  return list(names)[index::count]


def journal_name(index: int, count: int) -> str:
  """The journal file of a shard (``manifest.jsonl`` for the single shard ``0/1``)."""
  return JOURNAL_NAME if count == 1 else f"manifest.shard-{index}-of-{count}.jsonl"


def lock_name(index: int, count: int) -> str:
  return LOCK_NAME if count == 1 else f".encode-dir.shard-{index}-of-{count}.lock"


def journals(out_dir: Path) -> list[Path]:
  """Every journal of a folder: the shards' in name order, then ``manifest.jsonl``.

  ``manifest.jsonl`` comes last: it is the single-process journal, or the
  merge of the shards', so on a tie (see ``merged_rows``) its row wins.
  """
  out_dir = Path(out_dir)
  found = [out_dir / JOURNAL_NAME] if (out_dir / JOURNAL_NAME).exists() else []
  return sorted(p for p in out_dir.iterdir() if SHARD_JOURNAL.match(p.name)) + found


def _merge_lock(out_dir: Path):
  """Serialises merges of one folder (blocking; advisory, POSIX)."""
  return file_lock(Path(out_dir) / MERGE_LOCK_NAME)


def merged_rows(out_dir: Path, settings: str | None = None, in_dir: Path | None = None) -> dict:
  """The best row of each image over every journal of ``out_dir``.

  A row that is finished (``ok``, for ``settings`` when given, its source and
  output unchanged when ``in_dir`` is given) beats one that is not; otherwise
  the later journal in ``journals`` order wins.
  """
  def done(row) -> bool:
    if in_dir is not None and settings is not None:
      return is_finished(row, Path(in_dir) / row.name, Path(out_dir), settings)
    return row.status == "ok" and (settings is None or row.settings == settings)

  best: dict = {}
  for path in journals(out_dir):
    for name, row in read_journal(path).items():
      if name not in best or done(row) or not done(best[name]):
        best[name] = row
  return best


def merge(out_dir, names: Sequence[str] | None = None, *, settings: str | None = None,
          in_dir=None, force: bool = False) -> tuple[bool, list[str]]:
  """Writes the merged ``manifest.jsonl`` and ``manifest.csv`` of a sharded job.

  Args:
    out_dir: the job's output folder.
    names: the input file names (all shards'); None: every name in the journals.
    settings: only rows with these encoder settings count as present.
    in_dir: the input folder (to check sources and outputs are unchanged).
    force: merge even when some names have no row (they are left out).

  Returns:
    ``(merged, missing)``: whether the files were written, and the names
    with no row yet.
  """
  out_dir = Path(out_dir)
  if not out_dir.is_dir():
    raise ValueError(f"out_dir={str(out_dir)!r} is not a folder")
  with _merge_lock(out_dir):
    rows = merged_rows(out_dir, settings, in_dir)
    if names is None:
      names = sorted(rows)
    missing = [n for n in names
               if n not in rows or (settings is not None and rows[n].settings != settings)]
    if missing and not force:
      return False, missing
    ordered = [rows[n] for n in names if n in rows]
    text = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in ordered)
    write_atomic(out_dir / JOURNAL_NAME, text.encode("utf-8"))
    write_manifest(out_dir / MANIFEST_NAME, ordered)
  return True, missing
