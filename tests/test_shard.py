"""encode-dir as N cooperating processes: shares, journals, resume, the merged manifest.

With the stand-in codec of ``test_encode_dir`` (PNG bytes), so the job
machinery is tested in seconds; a 2-process ``jax.distributed`` run on
localhost checks that the shard comes from JAX when it is initialised.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_encode_dir import fake_decode, make_folder, ok_names, read_png, run_job

from gaussjax.batch import _encode_dir, _journal, _shard

CHILD = textwrap.dedent("""
    import sys, time
    in_dir, out_dir, _, log, shard, hang_after = sys.argv[1:7]
    hang_after = int(hang_after)  # images encoded before the job hangs (0: never)
    if shard.startswith("jax:"):  # jax:PORT:I -> 2 processes under jax.distributed
      import jax  # initialised before anything else touches JAX (importing gaussjax does)
      _, port, index = shard.split(":")
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                 process_id=int(index))
      shard = None
    sys.path.insert(0, sys.argv[3])
    import test_encode_dir as t
    from gaussjax.batch._encode_dir import encode_dir
    encoded = 0

    def slow_encode(images):
      global encoded
      if hang_after and encoded >= hang_after:
        time.sleep(600)  # mid-run, until the test kills us
      with open(log, "a") as f:  # which images this run encoded
        f.write("".join(f"{float(image.sum())!r}\\n" for image in images))
      encoded += len(images)
      return t.fake_encode(images)

    encode_dir(in_dir, out_dir, encode_fn=slow_encode, decode_fn=t.fake_decode,
               settings=t.SETTINGS, read_fn=t.read_png, progress=False, batch_size=1,
               shard=shard)
""")


def command(tmp_path, shard, hang_after=0, log="encoded.log"):
  return [sys.executable, "-c", CHILD, str(tmp_path / "in"), str(tmp_path / "out"),
          str(Path(__file__).parent), str(tmp_path / log), shard, str(hang_after)]


def journal(tmp_path, index, count):
  return tmp_path / "out" / f"manifest.shard-{index}-of-{count}.jsonl"


def check_complete(tmp_path, names):
  """Every image encoded once: one output each, one merged manifest row each."""
  out = tmp_path / "out"
  assert sorted(p.name for p in out.glob("*.gjx")) == [n.replace(".png", ".gjx") for n in names]
  assert not list(out.glob(".tmp-*"))
  manifest = _journal.read_manifest(out / "manifest.csv")
  assert [m["name"] for m in manifest] == sorted(names + ["broken.png"])
  merged = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
  assert [r["name"] for r in merged] == [m["name"] for m in manifest]
  for m in manifest:
    if m["name"] == "broken.png":
      assert m["status"] == "error"
      continue
    assert m["status"] == "ok"
    assert (fake_decode((out / m["output"]).read_bytes())
            == read_png(tmp_path / "in" / m["name"])).all()


@pytest.mark.parametrize("text, expected", [("0/2", (0, 2)), (" 3 / 4", (3, 4)), ("0/1", (0, 1))])
def test_parse_shard(text, expected):
  assert _shard.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1/0", "1", "a/b", "1/2/3"])
def test_parse_shard_rejects(text):
  with pytest.raises(ValueError, match="shard"):
    _shard.parse_shard(text)


def test_shares_are_disjoint_and_cover():
  names = [f"{i:03d}.png" for i in range(17)]
  shares = [_shard.select(names, i, 5) for i in range(5)]
  assert sorted(sum(shares, [])) == names
  assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_two_shards_in_turn_merge_at_the_end(tmp_path):
  names = make_folder(tmp_path / "in", 7)
  run_job(tmp_path / "in", tmp_path / "out", shard=(0, 2))
  # One shard done: its journal, its outputs, no merged manifest yet.
  share = _shard.select(sorted(names + ["broken.png"]), 0, 2)
  assert sorted(ok_names(journal(tmp_path, 0, 2))) == [n for n in share if n != "broken.png"]
  assert not (tmp_path / "out" / "manifest.csv").exists()
  assert not (tmp_path / "out" / "manifest.jsonl").exists()
  rows = run_job(tmp_path / "in", tmp_path / "out", shard="1/2")
  assert len(rows) == 8
  check_complete(tmp_path, names)
  # Disjoint journals: no image in both.
  first = set(ok_names(journal(tmp_path, 0, 2)))
  second = set(ok_names(journal(tmp_path, 1, 2)))
  assert not first & second and first | second == set(names)
  # A later single-process run resumes from the merged journal: nothing to do.
  calls = []
  encode_dir_rows = _encode_dir.encode_dir(
      tmp_path / "in", tmp_path / "out",
      encode_fn=lambda images: calls.append(len(images)) or [b""] * len(images),
      decode_fn=fake_decode, settings="stand-in codec", read_fn=read_png, progress=False,
      shard=(0, 1)).rows
  assert calls == []  # broken.png is retried but fails to read, before any encode
  assert len(encode_dir_rows) == 8


def test_explicit_merge_of_an_unfinished_job(tmp_path):
  names = make_folder(tmp_path / "in", 5, corrupt=False)
  run_job(tmp_path / "in", tmp_path / "out", shard=(2, 3))
  merged, missing = _shard.merge(tmp_path / "out", names, settings="stand-in codec")
  assert not merged and sorted(missing) == sorted(n for i, n in enumerate(names) if i % 3 != 2)
  merged, missing = _shard.merge(tmp_path / "out", names, force=True)
  assert merged and len(missing) == 4
  assert [m["name"] for m in _journal.read_manifest(tmp_path / "out" / "manifest.csv")] == [
      names[2]]


def wait_for(predicate, child, what):
  deadline = time.monotonic() + 300  # generous: a loaded machine imports slowly
  while not predicate():
    assert child.poll() is None, f"the job ended before {what}"
    assert time.monotonic() < deadline, f"no progress towards {what}"
    time.sleep(0.02)


@pytest.mark.slow  # three child processes, each importing JAX: ~40 s on the loaded 2-core machine
def test_two_processes_one_killed_and_rerun(tmp_path):
  names = make_folder(tmp_path / "in", 10)
  # Shard 0 runs to the end; shard 1 hangs after 2 images and is killed.
  first = subprocess.Popen(command(tmp_path, "0/2", log="log0"))
  second = subprocess.Popen(command(tmp_path, "1/2", hang_after=2, log="log1"))
  try:
    wait_for(lambda: len(ok_names(journal(tmp_path, 1, 2))) >= 2, second, "2 images")
    os.kill(second.pid, signal.SIGKILL)
    second.wait(timeout=60)
    assert first.wait(timeout=300) == 0
  finally:
    for child in (first, second):
      if child.poll() is None:
        child.kill()
  done_before = ok_names(journal(tmp_path, 1, 2))
  assert len(done_before) == 2
  assert not (tmp_path / "out" / "manifest.csv").exists()  # shard 1 is not done: no merge
  # The killed shard re-run resumes: it encodes only what it had not finished.
  subprocess.run(command(tmp_path, "1/2", log="rerun"), check=True, timeout=300)
  sums_before = {repr(float(read_png(tmp_path / "in" / n).sum())) for n in done_before}
  assert not sums_before & set((tmp_path / "rerun").read_text().split())
  encoded = (tmp_path / "log0").read_text().split() + (tmp_path / "log1").read_text().split() + \
      (tmp_path / "rerun").read_text().split()
  assert len(encoded) == len(names)  # each readable image encoded exactly once
  check_complete(tmp_path, names)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two child processes under jax.distributed: ~25 s on the loaded 2-core machine
def test_jax_distributed_two_processes(tmp_path):
  names = make_folder(tmp_path / "in", 6)
  port = free_port()
  children = [subprocess.Popen(command(tmp_path, f"jax:{port}:{i}", log=f"log{i}"))
              for i in range(2)]
  try:
    for child in children:
      assert child.wait(timeout=300) == 0
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
  # The shard came from jax.process_index()/process_count(): two shard journals.
  assert journal(tmp_path, 0, 2).exists() and journal(tmp_path, 1, 2).exists()
  check_complete(tmp_path, names)


def test_same_shard_twice_is_refused(tmp_path):
  make_folder(tmp_path / "in", 2)
  (tmp_path / "out").mkdir()
  with _encode_dir._exclusive(tmp_path / "out", _shard.lock_name(1, 2)):
    with pytest.raises(RuntimeError, match="another encode-dir job"):
      run_job(tmp_path / "in", tmp_path / "out", shard=(1, 2))
    run_job(tmp_path / "in", tmp_path / "out", shard=(0, 2))  # another shard may run


def test_cli_shard_and_merge(tmp_path, capsys):
  from gaussjax.cli._cli import main
  make_folder(tmp_path / "in", 3, corrupt=False)
  out = tmp_path / "out"
  with pytest.raises(SystemExit):  # argparse: a bad --shard
    main(["encode-dir", str(tmp_path / "in"), "-o", str(out), "--bpp", "1", "--shard", "2/2"])
  assert "shard" in capsys.readouterr().err
  assert main(["encode-dir", str(tmp_path / "in"), "-o", str(out)]) == 2
  assert "--bpp" in capsys.readouterr().err
  assert main(["encode-dir", "--merge", str(tmp_path / "nothing")]) == 2
  assert "not a folder" in capsys.readouterr().err
  # Shard 0/2 of the stand-in job, then a merge: refused with IN_DIR (a shard is
  # missing), written without it.
  run_job(tmp_path / "in", out, shard=(0, 2))
  assert main(["encode-dir", str(tmp_path / "in"), "--merge", str(out)]) == 1
  assert "no row yet" in capsys.readouterr().err
  assert main(["encode-dir", "--merge", str(out)]) == 0
  assert [m["name"] for m in _journal.read_manifest(out / "manifest.csv")] == [
      "img00.png", "img02.png"]


@pytest.mark.slow  # two CLI processes, each importing JAX and compiling the codec: ~60 s here
def test_cli_two_shard_processes_with_the_real_codec(tmp_path):
  # `gaussjax encode-dir --shard 0/2` and `--shard 1/2` as two concurrent
  # processes, as a job array runs them: every image encoded by exactly one,
  # each file a real .gjx of its image, one merged manifest.
  names = make_folder(tmp_path / "in", 5, sizes=((16, 16), (16, 24)))
  out = tmp_path / "out"
  argv = [sys.executable, "-m", "gaussjax", "encode-dir", str(tmp_path / "in"), "-o", str(out),
          "--quality", "50", "--fit-steps", "10", "--qat-steps", "0", "--no-progress"]
  children = [subprocess.Popen([*argv, "--shard", f"{i}/2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    results = [child.communicate(timeout=600) for child in children]
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
  assert [child.returncode for child in children] == [1, 1], results  # broken.png fails
  shares = [ok_names(journal(tmp_path, i, 2)) for i in range(2)]
  assert not set(shares[0]) & set(shares[1])
  assert sorted(shares[0] + shares[1]) == names
  manifest = _encode_dir.read_manifest(out / "manifest.csv")
  assert [m["name"] for m in manifest] == sorted(names + ["broken.png"])
  import gaussjax
  for m in manifest:
    if m["name"] == "broken.png":
      assert m["status"] == "error"
      continue
    decoded = gaussjax.decode((out / m["output"]).read_bytes())
    assert decoded.shape == read_png(tmp_path / "in" / m["name"]).shape
