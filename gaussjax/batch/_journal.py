"""The record of an ``encode_dir`` job: its rows, journals, CSV manifest and locks.

Shared by the single-process job (``_encode_dir``) and its shards
(``_shard``), which read and merge each other's journals. See
``_encode_dir``'s docstring for the crash safety these files give.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from gaussjax.core._io import write_atomic

try:
  import fcntl  # POSIX advisory locks
except ImportError:  # Windows: no advisory lock, jobs run unguarded
  fcntl = None

JOURNAL_NAME = "manifest.jsonl"
MANIFEST_NAME = "manifest.csv"
LOCK_NAME = ".encode-dir.lock"

MANIFEST_COLUMNS = ("name", "width", "height", "bytes", "bpp", "psnr", "seconds", "status", "reason",
                    "output")


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  """One image of an ``encode_dir`` job.

  Attributes:
    name: file name inside the input folder.
    width: image columns (0 when unreadable).
    height: image rows (0 when unreadable).
    bytes: size of the encoded file.
    bpp: bits per pixel of the encoded file.
    psnr: PSNR (dB) of the decoded file against the source image.
    seconds: encoding time of the image (its batch's time / batch size).
    status: ``"ok"`` or ``"error"``.
    reason: why it failed (empty when ``ok``).
    output: file name of the encoded file inside the output folder.
    settings: the encoder settings it was encoded with (a string).
    source_size: size of the source file in bytes when it was read.
    source_mtime_ns: modification time of the source file when it was read.
  """

  name: str
  width: int = 0
  height: int = 0
  bytes: int = 0
  bpp: float = 0.0
  psnr: float = 0.0
  seconds: float = 0.0
  status: str = "ok"
  reason: str = ""
  output: str = ""
  settings: str = ""
  source_size: int = 0
  source_mtime_ns: int = 0


def read_journal(path: Path) -> dict[str, ManifestRow]:
  """The latest row of each image in a journal; damaged lines are ignored."""
  rows: dict[str, ManifestRow] = {}
  if not Path(path).exists():
    return rows
  data = Path(path).read_bytes()
  fields = {f.name for f in dataclasses.fields(ManifestRow)}
  # Only whole lines count: the last one may have been cut short by a kill.
  for line in data[:data.rfind(b"\n") + 1].decode("utf-8", errors="replace").splitlines():
    try:
      record = json.loads(line)
      row = ManifestRow(**{k: v for k, v in record.items() if k in fields})
    except (json.JSONDecodeError, TypeError):
      continue  # damaged: ignored, the image is simply done again
    rows[row.name] = row
  return rows


class Journal:
  """The append-only record of finished images (``manifest.jsonl``)."""

  def __init__(self, path: Path):
    self.path = Path(path)
    if self.path.exists():  # drop a last line cut short by a kill before appending
      size = self.path.stat().st_size
      data = self.path.read_bytes()
      end = data.rfind(b"\n") + 1
      if end != size:
        with open(self.path, "r+b") as f:
          f.truncate(end)
          os.fsync(f.fileno())
    self.rows = read_journal(self.path)
    self._file = open(self.path, "a", encoding="utf-8")

  def append(self, rows: Sequence[ManifestRow]) -> None:
    """Records rows durably (one JSON line each, then ``fsync``)."""
    text = "".join(json.dumps(dataclasses.asdict(row)) + "\n" for row in rows)
    self._file.write(text)
    self._file.flush()
    os.fsync(self._file.fileno())
    for row in rows:
      self.rows[row.name] = row

  def close(self) -> None:
    self._file.close()


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> None:
  """Writes the CSV manifest atomically."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(MANIFEST_COLUMNS)
  for row in rows:
    writer.writerow([
        row.name, row.width, row.height, row.bytes, f"{row.bpp:.5f}", f"{row.psnr:.3f}",
        f"{row.seconds:.3f}", row.status, row.reason, row.output])
  write_atomic(path, buffer.getvalue().encode("utf-8"))


def read_manifest(path: Path) -> list[dict[str, str]]:
  """The rows of a CSV manifest as dictionaries of strings."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def is_finished(row: ManifestRow | None, source: Path, out_dir: Path, settings: str) -> bool:
  """Whether ``row`` says ``source`` is done with ``settings``, and source and output are unchanged."""
  if row is None or row.status != "ok" or row.settings != settings:
    return False
  try:
    stat = source.stat()
    out_size = (out_dir / row.output).stat().st_size
  except OSError:
    return False
  return (stat.st_size == row.source_size and stat.st_mtime_ns == row.source_mtime_ns
          and out_size == row.bytes)


@contextlib.contextmanager
def file_lock(path: Path, *, busy: str | None = None):
  """Holds an advisory lock on ``path`` (created) while the block runs.

  ``busy``: don't wait; raise ``RuntimeError(busy)`` when another process
  holds the lock. None: wait for it. Without ``fcntl`` (Windows) nothing is locked.
  """
  f = open(path, "a+")
  try:
    if fcntl is not None:
      try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
      except OSError as e:
        if busy is None:
          raise
        raise RuntimeError(busy) from e
    yield
  finally:
    f.close()
