"""Encoding a whole folder: batches, a progress bar, a manifest, resumable.

``encode_dir(in_dir, out_dir, ...)`` encodes every image file of ``in_dir`` into
``out_dir/<stem>.gjx`` and records one row per image in a manifest.

Crash safety (the job may be killed at any moment, ``kill -9`` included):

- every output is written to a hidden temporary file in ``out_dir``, flushed
  and ``fsync``-ed, then renamed over its final name with ``os.replace`` (atomic
  on POSIX and Windows) and the folder ``fsync``-ed: a ``.gjx`` file is either
  absent or complete;
- the journal ``out_dir/manifest.jsonl`` is append-only, one JSON line per
  finished (or failed) image, ``fsync``-ed after each batch and written only
  after the image's output is durable. A line cut short by a kill is dropped
  on the next run;
- a re-run skips every image whose journal line says ``ok`` for the same
  settings and source file (size and modification time) and whose output still
  has the recorded size; everything else is (re-)encoded. Images finished with
  other settings are refused (``SettingsChanged``) unless ``overwrite=True``,
  so a re-run with, say, another rate never silently replaces earlier
  results. Stale temporary files of a killed run are removed;
- ``out_dir/manifest.csv`` (one row per image of the folder: name, size,
  bytes, bpp, PSNR, time, status, reason) is rewritten atomically at the end of
  every run from the journal.

Unreadable files (not an image, truncated, too large) get a row with
``status=error`` and the reason, and the job goes on; they are tried again on
the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gaussjax.batch import _shard
from gaussjax.batch._batch import bucket_shape
from gaussjax.batch._journal import (
  LOCK_NAME,
  MANIFEST_NAME,
  Journal,
  ManifestRow,
  file_lock,
  is_finished,
  write_manifest,
)
from gaussjax.core._image import check_image
from gaussjax.core._io import TMP_PREFIX as _TMP_PREFIX
from gaussjax.core._io import load_image, write_atomic
from gaussjax.core._metrics import bpp, psnr
from gaussjax.core._progress import progress_bar

OUTPUT_SUFFIX = ".gjx"
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm",
    ".svg", ".svgz")


class SettingsChanged(ValueError):
  """``out_dir`` holds images encoded with other settings (and no ``overwrite``).

  Attributes:
    summary: how many images, where, and which settings differ (one line).
  """

  def __init__(self, summary: str):
    super().__init__(f"{summary}; pass overwrite=True to re-encode them")
    self.summary = summary


@dataclasses.dataclass(frozen=True)
class EncodeDirReport:
  """What an ``encode_dir`` run did.

  Attributes:
    rows: the manifest rows of every image of the folder, sorted by name.
    encoded: images encoded by this run.
    failed: images this run tried and could not encode.
    skipped: images already finished by an earlier run, with the same settings.
  """

  rows: list[ManifestRow]
  encoded: int
  failed: int
  skipped: int


# --------------------------------------------------------------------------- files


def list_images(in_dir: Path) -> list[str]:
  """Image file names (by extension) of a folder, sorted; hidden files skipped."""
  return sorted(
      p.name for p in in_dir.iterdir()
      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def output_names(names: Sequence[str]) -> dict[str, str]:
  """Output file name of each input: ``<stem>.gjx``, or ``<name>.gjx`` when stems clash."""
  stems: dict[str, int] = {}
  for name in names:
    stem = Path(name).stem
    stems[stem] = stems.get(stem, 0) + 1
  return {name: (Path(name).stem if stems[Path(name).stem] == 1 else name) + OUTPUT_SUFFIX
          for name in names}


def _remove_stale_temporaries(out_dir: Path, owned: set[str] | None = None) -> None:
  """Removes temporary files left by a killed run (those of ``owned`` targets only, if given)."""
  for p in out_dir.iterdir():
    if not p.name.startswith(_TMP_PREFIX) or not p.is_file():
      continue
    target = p.name.split("-", 2)[-1]  # .tmp-<pid>-<target>
    if owned is None or target in owned:
      with contextlib.suppress(OSError):
        p.unlink()


def _exclusive(out_dir: Path, lock_name: str = LOCK_NAME):
  """Refuses a second job on the same output folder (or shard of it) while one runs."""
  return file_lock(out_dir / lock_name,
                   busy=f"another encode-dir job is writing to {out_dir} ({lock_name})")


# --------------------------------------------------------------------------- the job


def _read_image(path: Path) -> np.ndarray:
  return np.asarray(load_image(path))


def _psnr(expected: np.ndarray, actual: np.ndarray) -> float:
  return float(psnr(np.clip(actual, 0.0, 1.0), expected))


def _header_shape(path: Path) -> tuple[int, int]:
  """``(H, W)`` from the file header, cheaply; ``(0, 0)`` when unknown."""
  try:
    with Image.open(path) as im:
      w, h = im.size
      orientation = im.getexif().get(0x0112, 1)
  except Exception:  # noqa: BLE001 - unreadable files are reported when loaded
    return 0, 0
  return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def encode_dir(
    in_dir,
    out_dir,
    *,
    encode_fn: Callable[[list[np.ndarray]], list[bytes]],
    decode_fn: Callable[[bytes], np.ndarray],
    settings: str,
    batch_size: int = 8,
    read_fn: Callable[[Path], np.ndarray] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard: tuple[int, int] | str | None = None,
) -> EncodeDirReport:
  """Encodes every image of a folder; resumable and safe to kill.

  Args:
    in_dir: folder of images (not recursive; files chosen by extension, see
      ``IMAGE_EXTENSIONS``).
    out_dir: folder for the ``.gjx`` files and the manifest (created).
    encode_fn: encodes a list of ``[H, W, C]`` images into a list of byte
      strings, e.g. ``lambda images: gaussjax.encode_batch(images, config)``.
    decode_fn: decodes bytes back to an image, for the PSNR column.
    settings: a string naming the encoder settings; images finished with other
      settings are encoded again.
    batch_size: images per ``encode_fn`` call.
    read_fn: loads one image file; defaults to ``gaussjax.load_image``.
    overwrite: re-encode images that the journal records as finished with
      other settings; without it they are refused before any work.
    progress: show the command line's progress bar (``tqdm`` on stderr, when
      stderr is a terminal).
    shard: ``(I, N)`` or ``"I/N"``: this process encodes shard ``I`` of ``N``
      of the sorted file list and writes its own journal; the last shard to
      finish writes the merged manifest (``gaussjax.batch._shard``). None: from
      ``jax.process_index()``/``jax.process_count()`` (``0/1`` unless
      ``jax.distributed`` is initialised).

  Returns:
    An ``EncodeDirReport``: the rows of every image of ``in_dir`` that has
    one (all of them once the job, every shard included, is done) and the
    counts of this run.

  Raises:
    SettingsChanged: images were finished with other settings and
      ``overwrite`` is False.
  """
  in_dir, out_dir = Path(in_dir), Path(out_dir)
  if not in_dir.is_dir():
    raise ValueError(f"in_dir={str(in_dir)!r} is not a folder")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size={batch_size!r} must be a positive int")
  if out_dir.resolve() == in_dir.resolve():
    raise ValueError(f"out_dir={str(out_dir)!r} must differ from in_dir")
  read_fn = _read_image if read_fn is None else read_fn
  out_dir.mkdir(parents=True, exist_ok=True)

  names = list_images(in_dir)
  # Many processes: each takes its own share and journal (gaussjax.batch._shard).
  process_index, process_count = _shard.resolve(shard)
  mine = _shard.select(names, process_index, process_count)
  outputs = output_names(names)

  with _exclusive(out_dir, _shard.lock_name(process_index, process_count)):
    _remove_stale_temporaries(
        out_dir, None if process_count == 1 else {outputs[n] for n in mine})
    done = _shard.merged_rows(out_dir, settings, in_dir)  # every journal: resume across modes
    journal = Journal(out_dir / _shard.journal_name(process_index, process_count))
    try:
      if not overwrite:
        _refuse_other_settings({**done, **journal.rows}, mine, out_dir, settings)
      pending = [name for name in mine
                 if not is_finished(journal.rows.get(name), in_dir / name, out_dir, settings)
                 and not is_finished(done.get(name), in_dir / name, out_dir, settings)]
      encoded = failed = 0
      with progress_bar(len(pending), desc="encode-dir", unit="image",
                        quiet=not progress) as bar:
        if len(mine) > len(pending):
          bar.set_postfix_str(f"{len(mine) - len(pending)} already done")
        for batch in _batches(in_dir, pending, batch_size):
          rows = _encode_batch_files(in_dir, out_dir, batch, outputs, encode_fn, decode_fn,
                                     read_fn, settings)
          journal.append(rows)
          ok = sum(r.status == "ok" for r in rows)
          encoded, failed = encoded + ok, failed + len(rows) - ok
          bar.update(len(rows))
    finally:
      journal.close()
    if process_count == 1:
      rows = _all_rows(out_dir, names, settings, in_dir)
      write_manifest(out_dir / MANIFEST_NAME, rows)
  if process_count > 1:  # the last shard to finish writes the merged manifest
    _shard.merge(out_dir, names, settings=settings, in_dir=in_dir)
    rows = _all_rows(out_dir, names, settings, in_dir)
  return EncodeDirReport(rows, encoded, failed, len(mine) - len(pending))


def _refuse_other_settings(rows: dict[str, ManifestRow], names: Sequence[str], out_dir: Path,
                           settings: str) -> None:
  """Raises ``SettingsChanged`` when images of ``names`` were finished with other settings."""
  other = [rows[n] for n in names
           if n in rows and rows[n].status == "ok" and rows[n].settings != settings
           and (out_dir / rows[n].output).exists()]
  if not other:
    return
  raise SettingsChanged(
      f"{len(other)} image(s) in {str(out_dir)!r} were encoded with other settings "
      f"({_settings_difference(other[0].settings, settings)})")


def _settings_difference(before: str, now: str) -> str:
  """The settings that differ, as ``name before -> now`` (JSON objects), else both strings."""
  try:
    a, b = json.loads(before), json.loads(now)
  except (json.JSONDecodeError, TypeError):
    a = b = None
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return f"{before!r}, now {now!r}"
  return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                   if a.get(k) != b.get(k))


def _all_rows(out_dir: Path, names: Sequence[str], settings: str,
              in_dir: Path) -> list[ManifestRow]:
  """The row of each image, over every journal in ``out_dir`` (``_shard.merged_rows``)."""
  rows = _shard.merged_rows(out_dir, settings, in_dir)
  return [rows[name] for name in names if name in rows]


def _batches(in_dir: Path, names: Sequence[str], batch_size: int):
  """Batches of names whose images share a size bucket (from the file headers).

  Within a bucket, images of one exact size come together, so that the parts
  of ``encode_batch`` that need one exact size get full batches too.
  """
  groups: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
  for name in names:
    h, w = _header_shape(in_dir / name)
    key = bucket_shape(h, w) if h and w else (0, 0)
    groups.setdefault(key, []).append((h, w, name))
  for group in groups.values():
    group = [name for _, _, name in sorted(group)]
    for i in range(0, len(group), batch_size):
      yield group[i:i + batch_size]


def _encode_batch_files(in_dir, out_dir, names, outputs, encode_fn, decode_fn, read_fn, settings):
  """Reads, encodes, writes and measures one batch; returns its manifest rows."""
  rows: dict[str, ManifestRow] = {}
  images, readable, stats = [], [], {}
  for name in names:
    path = in_dir / name
    try:
      stat = path.stat()
      image = check_image(read_fn(path), integers=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
      rows[name] = ManifestRow(name=name, status="error", reason=_reason(e), settings=settings)
      continue
    images.append(image)
    readable.append(name)
    stats[name] = stat

  encoded: dict[str, bytes | Exception] = {}
  seconds: dict[str, float] = {}
  if readable:
    start = time.perf_counter()
    try:
      results = list(encode_fn(images))
      if len(results) != len(images):
        raise RuntimeError(f"encode_fn returned {len(results)} results for {len(images)} images")
      per_image = (time.perf_counter() - start) / len(images)
      for name, data in zip(readable, results):
        encoded[name], seconds[name] = data, per_image
    except Exception:  # noqa: BLE001 - find the image that fails: one at a time
      for name, image in zip(readable, images):
        start = time.perf_counter()
        try:
          encoded[name] = encode_fn([image])[0]
        except Exception as e:  # noqa: BLE001
          encoded[name] = e
        seconds[name] = time.perf_counter() - start

  for name, image in zip(readable, images):
    data, stat = encoded[name], stats[name]
    h, w = image.shape[:2]
    if isinstance(data, Exception):
      rows[name] = ManifestRow(name=name, width=w, height=h, status="error",
                               reason="encoding failed: " + _reason(data), settings=settings)
      continue
    try:
      psnr = _psnr(image, np.asarray(decode_fn(data)))
    except Exception as e:  # noqa: BLE001
      rows[name] = ManifestRow(name=name, width=w, height=h, status="error",
                               reason="decoding the result failed: " + _reason(e),
                               settings=settings)
      continue
    write_atomic(out_dir / outputs[name], data)
    rows[name] = ManifestRow(
        name=name, width=w, height=h, bytes=len(data), bpp=bpp(len(data), h, w), psnr=psnr,
        seconds=seconds[name], status="ok", output=outputs[name], settings=settings,
        source_size=stat.st_size, source_mtime_ns=stat.st_mtime_ns)
  return [rows[name] for name in names]


def _reason(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
