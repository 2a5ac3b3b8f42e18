"""Output safety and trace integrity (issue 15 items 1-5, 10, 11): regression tests on tiny traces.

Each test builds its traces with the TraceWriter API (milliseconds); subprocess tests (signals,
concurrency) wait on a "ready" line and are bounded by timeouts.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fmtlab.cli import main
from fmtlab.errors import FmtlabError, TraceError
from fmtlab.sim.trace import DIGEST_KEY, MANIFEST, Trace, TraceWriter, manifest_digest, write_safetensors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPLAY_FILES = ["replay.csv", "replay.json", "replay_by_layer_type.csv", "replay_by_model.csv"]


def tiny_trace(path, seed: int = 0, **kw) -> Trace:
    """One Linear layer (X [32, 16], W [8, 16], Y = X W^T) and a residual tensor, in one shard."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    wr = TraceWriter(str(path), **kw)
    wr.add("L:input", x)
    wr.add("L:weight", w)
    wr.add("L:output", x @ w.T)
    wr.add("B:residual", x * 3)
    manifest = {"seq_len": 16, "n_sequences": 2, "n_tokens": 32, "prefix_len": 0,
                "layers": {"L": {"op": "linear", "type": "proj", "block": 0, "in_features": 16, "out_features": 8,
                                 "input": "L:input", "weight": "L:weight", "output": "L:output", "bias": None}},
                "activations": {"B:residual": {"kind": "residual", "block": 0, "tensor": "B:residual"}}}
    return wr.close(manifest)


def _manifest(path):
    return json.loads((path / MANIFEST).read_text())


def _set_manifest(path, m):
    """Write ``m`` with a fresh digest (so the checks behind the digest are what is tested)."""
    m[DIGEST_KEY] = manifest_digest(m)
    (path / MANIFEST).write_text(json.dumps(m))


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, f"expected one line on stderr, got:\n{err}"
    return err


# ----------------------------------------------------------------------- 1. overwrite and data loss

def test_overwrite_refuses_anything_but_a_trace(tmp_path, monkeypatch):
    """Invariant: overwrite=True deletes nothing that is not an fmtlab trace: a folder of user
    files, the current directory, a file, a symlink, a trace holding extra user files."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    with pytest.raises(TraceError, match="not an fmtlab trace"):
        TraceWriter(str(user), overwrite=True)
    assert (user / "thesis.tex").read_text() == "precious"
    trace = tmp_path / "t"
    tiny_trace(trace)
    monkeypatch.chdir(trace)
    with pytest.raises(TraceError, match="current directory"):
        TraceWriter(".", overwrite=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(TraceError, match="not a directory"):
        TraceWriter("f", overwrite=True)
    os.symlink(trace, tmp_path / "link")
    with pytest.raises(TraceError, match="symbolic link"):
        TraceWriter("link", overwrite=True)
    (trace / "notes.txt").write_text("mine")
    with pytest.raises(TraceError, match="notes.txt"):
        TraceWriter(str(trace), overwrite=True)
    assert (trace / "notes.txt").exists() and Trace(trace).tensor_names


def test_cli_record_overwrite_of_user_folder_fails_before_loading(tmp_path, capsys):
    """Invariant: `record --out . --overwrite` in a folder of user files fails (exit 2, one line)
    before the model is even loaded, and the files stay."""
    (tmp_path / "data.csv").write_text("1,2")
    os.chdir(tmp_path)
    try:
        assert main(["record", "--model", "no-such-model", "--out", ".", "--overwrite", "--quiet"]) == 2
    finally:
        os.chdir(ROOT)
    assert "current directory" in _err_line(capsys)
    assert os.listdir(tmp_path) == ["data.csv"]


def test_overwrite_replaces_a_trace(tmp_path):
    """Invariant: a trace is replaced by the new one; nothing else is left beside it."""
    old = tiny_trace(tmp_path / "t", seed=0)
    new = tiny_trace(tmp_path / "t", seed=1, overwrite=True)
    assert new.trace_id != old.trace_id and Trace(tmp_path / "t").trace_id == new.trace_id
    assert os.listdir(tmp_path) == ["t"]


def test_second_writer_fails_at_once_and_final_rename_never_replaces(tmp_path):
    """Invariant: a second writer to the same new path fails at once (lock); a trace that appears
    at the target while recording is not replaced by the final rename, and nothing is left over."""
    a = TraceWriter(str(tmp_path / "t"))
    a.add("z", np.zeros((2, 2), np.float32))
    with pytest.raises(TraceError, match="another fmtlab run"):
        TraceWriter(str(tmp_path / "t"))
    other = tiny_trace(tmp_path / "other")
    shutil.copytree(other.path, tmp_path / "t")  # appears meanwhile (e.g. an older fmtlab, by hand)
    with pytest.raises(TraceError, match="exists|appeared"):
        a.close({})
    assert Trace(tmp_path / "t").trace_id == other.trace_id
    assert sorted(os.listdir(tmp_path)) == ["other", "t"]
    b = TraceWriter(str(tmp_path / "u"))  # the lock was released
    b.abort()


# ----------------------------------------------------------------------- 2. corrupt traces

def _flip_exponent_bit(trace: Trace, tensor: str = "L:input") -> None:
    """Flip one exponent bit of the first element of ``tensor`` in its shard file."""
    p = trace.manifest["tensors"][tensor]["pieces"][0]
    sf = trace._files[p["shard"]]
    e = sf.entries[p["key"]]
    off = sf.data_start + e.begin + 3  # little-endian float32: byte 3 holds sign + exponent
    path = sf.path
    trace.close()
    with open(path, "r+b") as fh:
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0x08]))


def test_cli_refuses_corrupt_shard_unless_no_verify(tmp_path, capsys):
    """Invariant: one flipped bit in a shard makes replay, outliers and report --trace exit 2 with
    one line naming the shard; --no-verify reads it anyway."""
    tr = tiny_trace(tmp_path / "t")
    _flip_exponent_bit(tr)
    out = str(tmp_path / "o")
    assert main(["replay", str(tmp_path / "t"), "-c", "fp32", "--out", out, "--quiet"]) == 2
    err = _err_line(capsys)
    assert "shard-00000.safetensors" in err and "SHA-256" in err
    assert not os.path.exists(os.path.join(out, "replay.csv"))
    assert main(["outliers", str(tmp_path / "t")]) == 2
    assert "SHA-256" in _err_line(capsys)
    assert main(["report", "--trace", str(tmp_path / "t"), "--out", str(tmp_path / "r"), "--no-perplexity",
                 "--quiet"]) == 2
    assert "SHA-256" in _err_line(capsys)
    assert main(["replay", str(tmp_path / "t"), "-c", "fp32", "--out", out, "--quiet", "--no-verify"]) == 0
    assert main(["outliers", str(tmp_path / "t"), "--no-verify"]) == 0


@pytest.mark.parametrize("mutate", [
    lambda m: m.update(shards="shard-00000.safetensors"),
    lambda m: m["shards"][0].update(bytes=str(m["shards"][0]["bytes"])),
    lambda m: m["shards"][0].update(file=None),
    lambda m: m.update(tensors=[]),
    lambda m: m["tensors"]["L:input"].update(shape="32x16"),
    lambda m: m["tensors"]["L:input"]["pieces"][0].update(shard="0"),
    lambda m: m["tensors"]["L:input"]["pieces"][0].update(rows=None),
    lambda m: m.update(layers=["L"]),
    lambda m: m["layers"].update(L=None),
    lambda m: m["layers"]["L"].update(input=7),
    lambda m: m["activations"]["B:residual"].update(kind=None),
    lambda m: m.update(seq_len="16"),
    lambda m: m.update(trace_id=5),
], ids=["shards-str", "bytes-str", "file-none", "tensors-list", "shape-str", "piece-shard-str", "rows-none",
        "layers-list", "layer-none", "input-int", "kind-none", "seq_len-str", "trace_id-int"])
def test_manifest_with_wrong_json_types_is_a_trace_error(tmp_path, mutate):
    """Invariant: a manifest field of the wrong JSON type gives a TraceError, never a TypeError,
    KeyError or AttributeError traceback."""
    tiny_trace(tmp_path / "t")
    m = _manifest(tmp_path / "t")
    mutate(m)
    _set_manifest(tmp_path / "t", m)
    with pytest.raises(TraceError, match="corrupt"):
        Trace(tmp_path / "t", verify=False)


# ----------------------------------------------------------------------- 3. path confinement

@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "..", "sub/shard-00000.safetensors"])
def test_shard_names_must_stay_inside_the_trace(tmp_path, name):
    """Invariant: a manifest cannot make the reader open (or stat) a file outside the trace."""
    tiny_trace(tmp_path / "t")
    m = _manifest(tmp_path / "t")
    m["shards"][0]["file"] = name
    _set_manifest(tmp_path / "t", m)
    with pytest.raises(TraceError, match="not a plain file name"):
        Trace(tmp_path / "t")


def test_shard_symlink_pointing_outside_and_negative_index(tmp_path):
    tr = tiny_trace(tmp_path / "t")
    shard = tmp_path / "t" / tr.manifest["shards"][0]["file"]
    tr.close()
    shutil.move(shard, tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", shard)
    with pytest.raises(TraceError, match="outside the trace"):
        Trace(tmp_path / "t")
    os.unlink(shard)
    shutil.move(tmp_path / "outside.safetensors", shard)
    m = _manifest(tmp_path / "t")
    m["tensors"]["L:input"]["pieces"][0]["shard"] = -1
    _set_manifest(tmp_path / "t", m)
    with pytest.raises(TraceError, match="names shard -1"):
        Trace(tmp_path / "t")


def test_outputs_never_follow_planted_temp_symlinks(tmp_path):
    """Invariant: symlinks planted at the old predictable temp names (<file>.tmp-<pid>) in the
    output folder and in a trace's partial folder are never written through."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    tr = tiny_trace(tmp_path / "t")
    out = tmp_path / "o"
    out.mkdir()
    for f in REPLAY_FILES:
        os.symlink(victim, out / f"{f}.tmp-{os.getpid()}")
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(out), "--quiet"]) == 0
    shard = tmp_path / "s.safetensors"
    os.symlink(victim, f"{shard}.tmp-{os.getpid()}")
    write_safetensors(str(shard), {"a": np.ones(3, np.float32)})
    assert victim.read_text() == "precious"
    assert all((out / f).is_file() and not (out / f).is_symlink() for f in REPLAY_FILES)


# ----------------------------------------------------------------------- 4. all-or-nothing, leftovers

def test_full_disk_during_replay_keeps_the_old_result_set(tmp_path, capsys, monkeypatch):
    """Invariant: a full disk while writing the results leaves the previous CSV+JSON set exactly as
    it was (no new CSVs beside an old JSON), no temp or staging files, and a one-line error."""
    from fmtlab.sim.replay import ReplayResult

    tr = tiny_trace(tmp_path / "t")
    out = tmp_path / "o"
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(out), "--quiet"]) == 0
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    capsys.readouterr()

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ReplayResult, "to_json", full)
    assert main(["replay", tr.path, "-c", "w8a8_int_tensor", "--out", str(out), "--quiet"]) == 2
    assert "No space left on device" in _err_line(capsys)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before


def test_full_disk_while_recording_leaves_nothing(tmp_path, monkeypatch):
    """Invariant: a full disk while a shard is written removes the partial trace folder and lock."""
    tr_mod = importlib.import_module("fmtlab.sim.trace")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    wr = TraceWriter(str(tmp_path / "t"))
    wr.add("a", np.ones((4, 4), np.float32))
    monkeypatch.setattr(tr_mod, "write_safetensors", full)
    with pytest.raises(OSError, match="No space"):
        wr.close({})
    assert os.listdir(tmp_path) == []


def test_weight_phase_error_leaves_no_partial(tmp_path, monkeypatch):
    """Invariant: an interrupt while record() stores weights removes the partial trace folder."""
    from sim_helpers import TEXTS, CharTokenizer, tiny_llama

    rec = importlib.import_module("fmtlab.models.record")  # fmtlab.models.record is also a function name
    calls = []

    def boom(module, op):
        calls.append(op)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return module.weight.detach().float().numpy()

    monkeypatch.setattr(rec, "_weight_linear_layout", boom)
    with pytest.raises(KeyboardInterrupt):
        rec.record(tiny_llama(), CharTokenizer(), TEXTS, str(tmp_path / "t"), seq_len=8, n_sequences=1,
                   progress=False)
    assert os.listdir(tmp_path) == []


def test_stale_partials_of_dead_runs_are_cleaned(tmp_path):
    """Invariant: the next writer to a path removes `.NAME.partial-*` folders whose owner died."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=60)
    stale = tmp_path / ".t.partial-abc"
    stale.mkdir()
    (stale / "shard-00000.safetensors").write_bytes(b"\0" * 4096)
    (stale / ".fmtlab-owner").write_text(json.dumps({"pid": p.pid, "host": os.uname().nodename}))
    tiny_trace(tmp_path / "t")
    assert os.listdir(tmp_path) == ["t"]


_INTERRUPTED_REPLAY = """
import sys, time
from fmtlab.cli import main
from fmtlab.sim.replay import ReplayResult

def slow(self, path):  # the CSVs are staged; the run hangs before the JSON
    print("ready", flush=True)
    time.sleep(120)

ReplayResult.to_json = slow
sys.exit(main(["replay", sys.argv[1], "-c", "fp32", "--out", sys.argv[2], "--quiet"]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_during_replay_leaves_nothing(tmp_path, sig):
    """Invariant: SIGTERM/SIGHUP/SIGINT during a run remove its staging folder and lock, leave no
    result file, and exit with 128 + signal number."""
    tr = tiny_trace(tmp_path / "t")
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=ROOT)
    def default_disposition() -> None:
        # the child starts with `sig` at its default and unblocked: an earlier test in this process
        # may leave it ignored or blocked, and both are inherited across exec
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})

    p = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_REPLAY, tr.path, str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_disposition)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert any(n.startswith(".fmtlab-staging-") for n in os.listdir(out))
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + sig, err
    assert os.listdir(out) == []


# ----------------------------------------------------------------------- 5. concurrent runs

def test_concurrent_replay_on_one_out_fails_at_once(tmp_path, capsys):
    """Invariant: while one run holds --out, a second replay to it exits 2 with one line, before
    computing, and writes nothing."""
    tr = tiny_trace(tmp_path / "t")
    out = tmp_path / "o"
    script = textwrap.dedent("""
        import sys
        from fmtlab.safe_io import locked_dir
        with locked_dir(sys.argv[1]):
            print("ready", flush=True)
            sys.stdin.readline()
    """)
    p = subprocess.Popen([sys.executable, "-c", script, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert p.stdout.readline().strip() == "ready"
        assert main(["replay", tr.path, "-c", "fp32", "--out", str(out), "--quiet"]) == 2
        assert "another fmtlab run" in _err_line(capsys)
        assert not (out / "replay.csv").exists()
    finally:
        p.communicate("\n", timeout=60)
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(out), "--quiet"]) == 0


# ----------------------------------------------------------------------- 10. one-line errors, early

def test_bad_layers_regex_is_one_line_before_work(tmp_path, capsys):
    """Invariant: `--layers '('` is a one-line error (exit 2) for record, replay and report, found
    before the model is loaded or the trace replayed."""
    tr = tiny_trace(tmp_path / "t")
    assert main(["record", "--model", "no-such-model", "--out", str(tmp_path / "n"), "--layers", "("]) == 2
    assert "--layers '(' is not a valid regular expression" in _err_line(capsys)
    assert main(["replay", tr.path, "--layers", "(", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not a valid regular expression" in _err_line(capsys)
    assert main(["report", "--layers", "(", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "not a valid regular expression" in _err_line(capsys)


def test_out_that_is_a_file_fails_before_computing(tmp_path, capsys, monkeypatch):
    rp = importlib.import_module("fmtlab.sim.replay")
    tr = tiny_trace(tmp_path / "t")
    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(rp, "replay", lambda *a, **k: pytest.fail("replay ran although --out is unusable"))
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert "not a directory" in _err_line(capsys)
    assert main(["replay", tr.path, "-c", "fp32", "--out", str(tmp_path / "f" / "sub"), "--quiet"]) == 2
    assert "cannot create" in _err_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_fails_before_computing(tmp_path, capsys):
    tr = tiny_trace(tmp_path / "t")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["replay", tr.path, "-c", "fp32", "--out", str(ro), "--quiet"]) == 2
        assert "cannot write" in _err_line(capsys)
    finally:
        ro.chmod(0o755)


def test_record_out_under_a_file_fails_before_loading(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["record", "--model", "no-such-model", "--out", str(tmp_path / "f" / "t"), "--quiet"]) == 2
    assert "is not a directory" in _err_line(capsys)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["replay", "--workers", "many"])
    assert e.value.code == 2
    assert "invalid int value" in _err_line(capsys)


# ----------------------------------------------------------------------- 11. smaller items

def test_output_files_honour_the_umask(tmp_path):
    """Invariant: replay results, trace shards and manifest get 0o666 & ~umask (0644 under 022)."""
    old = os.umask(0o022)
    try:
        tr = tiny_trace(tmp_path / "t")
        assert main(["replay", tr.path, "-c", "fp32", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    finally:
        os.umask(old)
    files = [tmp_path / "o" / f for f in REPLAY_FILES] + [tmp_path / "t" / f for f in os.listdir(tmp_path / "t")]
    assert {oct(os.stat(f).st_mode & 0o777) for f in files} == {"0o644"}
    assert os.stat(tmp_path / "t").st_mode & 0o777 == 0o755


def test_seq_len_beyond_context_length_is_refused(tmp_path):
    from sim_helpers import TEXTS, CharTokenizer, tiny_llama

    from fmtlab.models.record import record

    with pytest.raises(FmtlabError, match="exceeds the model's context length 128"):
        record(tiny_llama(), CharTokenizer(), TEXTS * 10, str(tmp_path / "t"), seq_len=256, n_sequences=1,
               progress=False)
    assert os.listdir(tmp_path) == []


def test_checkpoints_never_run_their_own_code_unless_asked(tmp_path, monkeypatch):
    """Invariant: loading a checkpoint passes trust_remote_code=False to transformers (so a config
    with auto_map neither runs code nor prompts), unless trust_remote_code=True is asked for."""
    import transformers

    from fmtlab.models.loading import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    seen = []

    class Fake:
        @staticmethod
        def from_pretrained(directory, **kw):
            seen.append(kw.get("trust_remote_code", "missing"))
            return Fake()

        def eval(self):
            return self

    monkeypatch.setattr(transformers, "AutoTokenizer", Fake)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", Fake)
    load_model(str(tmp_path))
    assert seen == [False, False]
    load_model(str(tmp_path), trust_remote_code=True)
    assert seen[2:] == [True, True]
