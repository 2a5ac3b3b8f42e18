"""Issue 23 regressions on the command side: no symlink or name trick loses data (lock files,
``record --overwrite``, ``replay --stem``), traces sharing a folder name stay apart, the explore
cache follows the trace's content, checkpoints are checked before loading, a second ``record``
fails before loading the model, and explore spaces are bounded."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sim_helpers import TEXTS, CharTokenizer, tiny_llama

from fmtlab.cli import main
from fmtlab.errors import FmtlabError, TraceError
from fmtlab.safe_io import DirLock, check_file_stem
from fmtlab.sim.trace import MANIFEST, Trace, TraceWriter, check_trace_target


def tiny_trace(path, seed: int = 0, scale: float = 1.0) -> Trace:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((32, 16)) * scale).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    wr = TraceWriter(str(path), overwrite=True)
    wr.add("L:input", x)
    wr.add("L:weight", w)
    wr.add("L:output", x @ w.T)
    return wr.close({"seq_len": 16, "n_sequences": 2, "n_tokens": 32, "model": {"name": "m"},
                     "layers": {"L": {"op": "linear", "type": "proj", "block": 0, "in_features": 16,
                                      "out_features": 8, "input": "L:input", "weight": "L:weight",
                                      "output": "L:output", "bias": None}}})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0, err
    return err


# ------------------------------------------------------------------------------ lock files

def test_lock_file_symlink_is_never_followed(tmp_path, capsys):
    """The issue's reproduction: a planted out/.fmtlab.lock -> ../victim.txt was truncated and
    overwritten with "pid ... on ..."; now exit 2 and the victim is intact."""
    tr = tiny_trace(tmp_path / "t")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    os.symlink("../victim.txt", tmp_path / "out" / ".fmtlab.lock")
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "symbolic link" in _one_line(capsys)
    assert victim.read_text() == "precious\n"


def test_lock_file_hard_link_or_foreign_content_is_never_truncated(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / ".t.lock")  # a hard link: O_NOFOLLOW does not see it
    with pytest.raises(FmtlabError, match="not an fmtlab lock file"):
        DirLock(tmp_path / ".t.lock", "x").acquire()
    os.unlink(tmp_path / ".t.lock")
    (tmp_path / ".u.lock").write_text("my notes\n")  # a user's file that carries the name
    with pytest.raises(FmtlabError, match="not an fmtlab lock file"):
        DirLock(tmp_path / ".u.lock", "x").acquire()
    assert victim.read_text() == "precious\n" and (tmp_path / ".u.lock").read_text() == "my notes\n"
    os.mkfifo(tmp_path / ".f.lock")
    with pytest.raises(FmtlabError, match="not an fmtlab lock file"):
        DirLock(tmp_path / ".f.lock", "x").acquire()
    (tmp_path / ".ok.lock").write_text("pid 1 on somewhere")  # a stale fmtlab lock is reused
    with DirLock(tmp_path / ".ok.lock", "x"):
        assert (tmp_path / ".ok.lock").read_text().startswith(f"pid {os.getpid()} on ")


def test_record_lock_beside_the_target_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink("victim.txt", tmp_path / ".t.lock")
    with pytest.raises(TraceError, match="symbolic link"):
        TraceWriter(str(tmp_path / "t"))
    assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------------------ record --overwrite

def test_overwrite_keeps_a_user_folder_named_like_a_shard(tmp_path):
    """Before: trd/shard-00009.safetensors/notes.txt inside a valid trace was deleted by
    --overwrite (the check looked at entry names only)."""
    tiny_trace(tmp_path / "trd").close()
    notes = tmp_path / "trd" / "shard-00009.safetensors"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(TraceError, match="shard-00009.safetensors"):
        check_trace_target(str(tmp_path / "trd"), True)
    with pytest.raises(TraceError, match="refusing to delete"):
        TraceWriter(str(tmp_path / "trd"), overwrite=True)
    assert (notes / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("plant", ["unlisted-file", "symlink", "manifest-dir"])
def test_overwrite_deletes_only_the_trace_s_own_regular_files(tmp_path, plant):
    tiny_trace(tmp_path / "trd").close()
    d = tmp_path / "trd"
    if plant == "unlisted-file":  # a shard name the manifest does not list
        (d / "shard-00042.safetensors").write_text("user data")
    elif plant == "symlink":
        (tmp_path / "elsewhere").write_text("x")
        os.symlink(tmp_path / "elsewhere", d / "shard-00007.safetensors")
    else:
        m = d / MANIFEST
        m.rename(tmp_path / "m.json")
        m.mkdir()
        (m / "keep").write_text("x")
        os.symlink(tmp_path / "m.json", d / "x")  # (never reached: the manifest check fails first)
    with pytest.raises(TraceError):
        check_trace_target(str(d), True)


def test_overwrite_still_replaces_a_plain_trace(tmp_path):
    tiny_trace(tmp_path / "trd").close()
    assert check_trace_target(str(tmp_path / "trd"), True) is True
    tr = tiny_trace(tmp_path / "trd", seed=1)
    assert tr.tensor("L:input").shape == (32, 16)


# ------------------------------------------------------------------------------ replay --stem

@pytest.mark.parametrize("stem", ["../escaped", "../../x", "/tmp/abs", "a/b", "", ".hidden", "..", "x\ny"])
def test_replay_stem_may_not_leave_out(tmp_path, capsys, stem):
    tr = tiny_trace(tmp_path / "t")
    out = tmp_path / "deep" / "out"
    before = set(os.listdir(tmp_path))
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(out), "--stem", stem, "--quiet"]) == 2
    assert "--stem" in _one_line(capsys)
    assert set(os.listdir(tmp_path)) == before and not out.exists()  # refused before any output


def test_stem_check_and_write_guard():
    assert check_file_stem("replay-1.b") == "replay-1.b"
    from fmtlab.sim.replay import ReplayResult

    with pytest.raises(FmtlabError, match="plain file name"):
        ReplayResult([]).write("/tmp", "../x")


# ------------------------------------------------------------------------------ traces sharing a name

def test_traces_whose_folders_share_a_name_stay_apart(tmp_path, capsys):
    """Before: a/trd and b/trd were both labelled 'trd' and merged into one model row."""
    tiny_trace(tmp_path / "a" / "trd", seed=0, scale=1.0).close()
    tiny_trace(tmp_path / "b" / "trd", seed=1, scale=100.0).close()
    out = tmp_path / "o"
    assert main(["replay", str(tmp_path / "a" / "trd"), str(tmp_path / "b" / "trd"), "-c", "w8a8_int_tensor",
                 "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "replay.json").read_text())
    assert sorted(r["trace"] for r in doc["by_model"]) == ["a/trd", "b/trd"]
    assert main(["replay", str(tmp_path / "a" / "trd"), str(tmp_path / "a" / "trd"), "-c", "fp32",
                 "--out", str(out), "--quiet"]) == 2
    assert "given twice" in _one_line(capsys)


# ------------------------------------------------------------------------------ explore cache

def test_explore_cache_is_keyed_by_trace_content(tmp_path):
    """Before: replacing a trace at the same path and rerunning reused the old metrics."""
    from fmtlab.explore.search import Evaluator
    from fmtlab.explore.space import Candidate

    cand = Candidate("int4_per_channel", "int8_per_tensor", None, None, "auto", 4.0, 8.0)
    path = str(tmp_path / "t")
    cache = str(tmp_path / "metrics.jsonl")
    tiny_trace(path, seed=0).close()
    ev = Evaluator(path, None, cache_path=cache)
    first = ev.evaluate([cand])[cand.replay_key]
    assert ev.evaluations == 1
    assert Evaluator(path, None, cache_path=cache).evaluate([cand])[cand.replay_key] == first  # reused
    tiny_trace(path, seed=5, scale=50.0).close()  # another trace at the same path
    ev2 = Evaluator(path, None, cache_path=cache)
    second = ev2.evaluate([cand])[cand.replay_key]
    assert ev2.evaluations == 1 and second != first


def test_explore_cache_is_never_appended_through_a_symlink(tmp_path):
    from fmtlab.explore.search import Evaluator
    from fmtlab.explore.space import Candidate

    tiny_trace(tmp_path / "t").close()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "metrics.jsonl")
    cand = Candidate("int4_per_channel", "int8_per_tensor", None, None, "auto", 4.0, 8.0)
    with pytest.raises(FmtlabError, match="symbolic link"):
        Evaluator(str(tmp_path / "t"), None, cache_path=str(tmp_path / "metrics.jsonl")).evaluate([cand])
    assert victim.read_text() == "precious\n"


def test_explore_space_with_an_enormous_range_is_refused_at_once(tmp_path, capsys):
    space = tmp_path / "s.toml"
    space.write_text('name = "big"\nobjectives = ["pooled_out_sqnr_db", "area_um2"]\n'
                     '[weights]\ngranularity = ["channel"]\n[[weights.family]]\nkind = "int"\n'
                     'bits = {min = 2, max = 100000000000}\n'
                     '[activations]\ngranularity = ["token"]\n[[activations.family]]\nkind = "int"\nbits = [8]\n')
    assert main(["explore", "--space", str(space), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "at most 256 per dimension" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_explore_space_size_is_bounded(monkeypatch):
    from fmtlab.explore import space as sp

    monkeypatch.setattr(sp, "MAX_POINTS", 10)
    with pytest.raises(sp.SpaceError, match="narrow its ranges"):
        sp.load_space("example")


# ------------------------------------------------------------------------------ models and record

def _checkpoint(tmp_path, config: str, files=("model.safetensors",)):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(config)
    for f in files:
        (d / f).write_bytes(b"\0" * 16)
    return str(d)


@pytest.mark.parametrize("config, files, match", [
    ("{broken", ("model.safetensors",), "not valid JSON"),
    ("[1, 2]", ("model.safetensors",), "not a JSON object"),
    ('{"model_type": 5}', ("model.safetensors",), "model_type is not a string"),
    ('{"model_type": "llama"}', ("pytorch_model.bin",), "pickle"),
], ids=["broken-json", "json-list", "model-type-int", "pickle"])
def test_bad_checkpoint_is_one_line(tmp_path, capsys, config, files, match):
    d = _checkpoint(tmp_path, config, files)
    assert main(["e2e", "--model", d, "-c", "fp32", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert match in _one_line(capsys)


def test_second_record_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """Before: a second concurrent `record` to the same --out failed only after loading the model."""
    from fmtlab.models import loading
    from fmtlab.sim.trace import trace_lock

    loads = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(1) or (_ for _ in ()).throw(AssertionError))
    import subprocess
    import sys
    import textwrap

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from fmtlab.sim.trace import trace_lock
        with trace_lock({str(tmp_path / 't')!r}):
            print('held', flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["record", "--model", "smollm2", "--out", str(tmp_path / "t"), "--quiet"]) == 2
        assert "another fmtlab run" in _one_line(capsys)
        assert loads == []
    finally:
        holder.kill()
        holder.wait()
    assert trace_lock(str(tmp_path / "t"))  # the object exists; nothing else held


def test_record_api_still_records(tmp_path):
    from fmtlab.models.record import record

    tr = record(tiny_llama(), CharTokenizer(), TEXTS, tmp_path / "t", seq_len=8, n_sequences=2, progress=False)
    assert tr.manifest["n_tokens"] == 16 and Trace(tr.path).digest == tr.digest
