"""fmtlab.safe_io: atomic writes, umask modes, NaN-safe JSON, locks, staged outputs, stale cleanup."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from fmtlab import safe_io
from fmtlab.errors import FmtlabError
from fmtlab.safe_io import (atomic_write_text, clean_stale, dumps_json, locked_dir, owner_state, staged_dir,
                            write_owner_marker)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one afterwards."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    return p.pid


def test_atomic_write_honours_umask(tmp_path, umask):
    """Invariant: a written file has mode 0o666 & ~umask (mkstemp alone would give 0600)."""
    umask(0o022)
    assert os.stat(atomic_write_text(tmp_path / "a.txt", "x")).st_mode & 0o777 == 0o644
    umask(0o077)
    assert os.stat(atomic_write_text(tmp_path / "b.txt", "x")).st_mode & 0o777 == 0o600


def test_atomic_write_does_not_follow_planted_symlink(tmp_path):
    """Invariant: the temporary name is created exclusively; a symlink planted at the old
    predictable name (<path>.tmp-<pid>) is never written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.csv"
    os.symlink(victim, f"{target}.tmp-{os.getpid()}")
    atomic_write_text(target, "new")
    assert victim.read_text() == "precious" and target.read_text() == "new"


def test_failed_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    """Invariant: an error while writing (here a full disk at fsync) leaves the old file as it was
    and no temporary file behind."""
    target = tmp_path / "r.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_io.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["r.json"]


def test_json_is_strict():
    """Invariant: NaN -> null, +-Inf -> "inf"/"-inf", numpy scalars become plain numbers."""
    import numpy as np

    doc = json.loads(dumps_json({"a": float("nan"), "b": [float("inf"), -np.inf], "c": np.float32(1.5),
                                 "d": np.int64(3)}))
    assert doc == {"a": None, "b": ["inf", "-inf"], "c": 1.5, "d": 3}


def test_staged_dir_all_or_nothing(tmp_path):
    """Invariant: staged outputs replace the old set together on success; on an exception the old
    set is untouched and nothing (staging folder, lock file) is left behind; unrelated files stay."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with staged_dir(out) as st:
        atomic_write_text(st / "a.csv", "1")
        atomic_write_text(st / "b.json", "1")
        (st / "sub").mkdir()
        atomic_write_text(st / "sub" / "c", "1")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as st:
            atomic_write_text(st / "a.csv", "2")
            raise RuntimeError("disk full")
    assert sorted(os.listdir(out)) == ["a.csv", "b.json", "keep.txt", "sub"]
    assert (out / "a.csv").read_text() == "1"
    with staged_dir(out) as st:
        atomic_write_text(st / "a.csv", "3")
        (st / "sub").mkdir()
    assert (out / "a.csv").read_text() == "3" and os.listdir(out / "sub") == []


def test_output_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(FmtlabError, match="not a directory"):
        with locked_dir(f):
            pass
    with pytest.raises(FmtlabError, match="cannot create"):
        with locked_dir(f / "sub"):
            pass


def test_stale_cleanup(tmp_path, capsys):
    """Invariant: a folder whose owner marker names a dead pid on this host is removed; one without
    a marker (older fmtlab) is reported and kept; one whose owner is alive is left alone."""
    dead, unknown, alive = (tmp_path / f".x.partial-{n}" for n in ("dead", "old", "live"))
    for d in (dead, unknown, alive):
        d.mkdir()
    (dead / "shard").write_bytes(b"0" * 1000)
    write_owner_marker(dead)
    m = json.loads((dead / safe_io.OWNER_FILE).read_text())
    m["pid"] = _dead_pid()
    (dead / safe_io.OWNER_FILE).write_text(json.dumps(m))
    write_owner_marker(alive)
    assert owner_state(dead) == "dead" and owner_state(alive) == "alive" and owner_state(unknown) == "unknown"
    msgs = clean_stale(tmp_path, r"\.x\.partial-.*")
    assert not dead.exists() and unknown.exists() and alive.exists()
    assert len(msgs) == 2 and "removed" in msgs[0] and "by hand" in msgs[1]
    assert "removed" in capsys.readouterr().err


def test_lock_is_exclusive_across_processes(tmp_path):
    """Invariant: while one process holds an output folder's lock, another fails at once with a
    message naming the holder; after the holder ends, the lock can be taken again."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from fmtlab.safe_io import locked_dir
        with locked_dir({str(out)!r}):
            print("ready", flush=True)
            sys.stdin.readline()
    """)
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(FmtlabError, match=f"another fmtlab run \\(pid {p.pid}"):
            with locked_dir(out):
                pass
    finally:
        p.communicate("\n", timeout=60)
    with locked_dir(out):
        pass
    assert os.listdir(out) == []
