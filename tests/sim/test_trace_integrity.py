"""Issue 23: the manifest is as trusted as the shards; malformed headers and manifests are one
TraceError; a shard truncated while it is read is a TraceError (never SIGBUS); and a hypothesis
fuzz of the reader over mutated manifests and shard headers (every outcome: the correct result
or one TraceError)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmtlab.errors import TraceError
from fmtlab.sim.trace import (DIGEST_KEY, MANIFEST, Trace, TraceWriter, annotate_trace, manifest_digest,
                              write_safetensors)


def small_trace(path, seed: int = 0) -> Trace:
    """Two layers of one block (X [16, 8], W [4, 8]) and a residual, 2 sequences of 8 tokens."""
    rng = np.random.default_rng(seed)
    wr = TraceWriter(str(path))
    x = rng.standard_normal((16, 8)).astype(np.float32)
    wr.add("a:input", x, kind="input", layer="a")
    layers = {}
    for n in ("a", "b"):
        w = rng.standard_normal((4, 8)).astype(np.float32)
        wr.add(f"{n}:weight", w, kind="weight", layer=n)
        wr.add(f"{n}:output", x @ w.T, kind="output", layer=n)
        layers[n] = {"op": "linear", "type": n, "block": 0, "in_features": 8, "out_features": 4,
                     "input": "a:input", "weight": f"{n}:weight", "output": f"{n}:output", "bias": None}
    wr.add("blk:residual", x * 2, kind="residual", layer="blk")
    wr.add("tokens:input_ids", np.arange(16, dtype=np.int64).reshape(2, 8), kind="tokens")
    return wr.close({"seq_len": 8, "n_sequences": 2, "n_tokens": 16, "blocks": ["blk"],
                     "model": {"name": "tiny"}, "layers": layers,
                     "activations": {"blk:residual": {"kind": "residual", "block": 0, "tensor": "blk:residual"}}})


def _read(path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write(path, m, resign: bool) -> None:
    if resign:
        m[DIGEST_KEY] = manifest_digest(m)
    (path / MANIFEST).write_text(json.dumps(m))


# ------------------------------------------------------------------------------ manifest digest

@pytest.mark.parametrize("edit", [
    lambda m: m.update(seq_len=4),
    lambda m: m["layers"].pop("b"),
    lambda m: m["layers"]["a"].update(weight="b:weight"),
    lambda m: m.update(n_tokens=8),
    lambda m: m["model"].update(name="other"),
], ids=["seq_len", "layer-list", "weight-of-other-layer", "n_tokens", "model-name"])
def test_an_edited_manifest_is_refused(tmp_path, edit):
    """Each edit changed replay results with exit 0 before the digest; now a TraceError."""
    small_trace(tmp_path / "t").close()
    m = _read(tmp_path / "t")
    edit(m)
    _write(tmp_path / "t", m, resign=False)
    for verify in (True, False):  # the manifest digest is checked even without --no-verify's hashing
        with pytest.raises(TraceError, match="changed after it was written"):
            Trace(tmp_path / "t", verify=verify)


def test_manifest_text_layout_does_not_matter(tmp_path):
    """The digest is over canonical JSON: re-indenting the file is not an edit."""
    small_trace(tmp_path / "t").close()
    m = _read(tmp_path / "t")
    (tmp_path / "t" / MANIFEST).write_text(json.dumps(m, indent=4, sort_keys=True))
    assert Trace(tmp_path / "t").manifest["seq_len"] == 8


def test_duplicate_keys_nan_tokens_and_deep_nesting_are_refused(tmp_path):
    small_trace(tmp_path / "t").close()
    mp = tmp_path / "t" / MANIFEST
    raw = mp.read_text()
    mp.write_text(raw.replace('"seq_len": 8,', '"seq_len": 8, "seq_len": 4,', 1))
    with pytest.raises(TraceError, match="duplicate key 'seq_len'"):
        Trace(tmp_path / "t")
    mp.write_text(raw.replace('"seq_len": 8,', '"seq_len": NaN,', 1))
    with pytest.raises(TraceError, match="NaN is not valid JSON"):
        Trace(tmp_path / "t")
    mp.write_text(raw[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(TraceError, match="nested too deeply"):
        Trace(tmp_path / "t")


def test_version_1_traces_must_be_re_recorded(tmp_path):
    """The decision for traces written before the digest: refused, with a message to re-record."""
    small_trace(tmp_path / "t").close()
    m = _read(tmp_path / "t")
    m["version"] = 1
    del m[DIGEST_KEY]
    _write(tmp_path / "t", m, resign=False)
    with pytest.raises(TraceError, match="version 1.*re-record"):
        Trace(tmp_path / "t")
    for v in (3, "2", 2.0, None):
        m["version"] = v
        _write(tmp_path / "t", m, resign=True)
        with pytest.raises(TraceError, match="reads versions \\[2\\] only"):
            Trace(tmp_path / "t")


def test_a_manifest_without_digest_is_refused(tmp_path):
    small_trace(tmp_path / "t").close()
    m = _read(tmp_path / "t")
    del m[DIGEST_KEY]
    _write(tmp_path / "t", m, resign=False)
    with pytest.raises(TraceError, match="no 'manifest_sha256'"):
        Trace(tmp_path / "t")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(seq_len=4), "seq_len 4 x n_sequences 2 != n_tokens 16"),
    (lambda m: m.update(seq_len=4, n_sequences=4), "tokens:input_ids has shape"),
    (lambda m: m["layers"]["a"].update(weight="b:weight"), "belongs to layer 'b'"),
    (lambda m: m["layers"]["a"].update(weight="a:output"), "is a 'output' tensor"),
    (lambda m: m["layers"]["a"].update(in_features=4), "weight 'a:weight' is \\[4, 8\\]"),
    (lambda m: m["layers"]["a"].update(block=3), "names block 3; the model has 1"),
    (lambda m: m.update(n_tokens=32, n_sequences=4), "has 16 rows, n_tokens is 32|tokens:input_ids"),
    (lambda m: m["activations"]["blk:residual"].update(tensor="a:weight"), "has 4 rows, n_tokens is 16"),
    (lambda m: m.update(model="tiny"), "'model' is a str, not a dict"),
], ids=["tokens", "input_ids", "weight-owner", "weight-kind", "weight-shape", "block", "rows", "residual", "model"])
def test_a_re_signed_but_inconsistent_manifest_is_refused(tmp_path, edit, match):
    """Behind the digest: the manifest must agree with the shards it describes."""
    small_trace(tmp_path / "t").close()
    m = _read(tmp_path / "t")
    edit(m)
    _write(tmp_path / "t", m, resign=True)
    with pytest.raises(TraceError, match=match):
        Trace(tmp_path / "t")


def test_annotate_trace_re_signs_and_refuses_descriptive_fields(tmp_path):
    small_trace(tmp_path / "t").close()
    annotate_trace(tmp_path / "t", {"report": {"layers": "a"}})
    assert Trace(tmp_path / "t").manifest["report"] == {"layers": "a"}
    with pytest.raises(TraceError, match="may not change \\['seq_len'\\]"):
        annotate_trace(tmp_path / "t", {"seq_len": 4})
    m = _read(tmp_path / "t")
    m["seq_len"] = 4
    _write(tmp_path / "t", m, resign=False)
    with pytest.raises(TraceError, match="changed after"):  # an edited manifest is never re-signed
        annotate_trace(tmp_path / "t", {"report": None})


def test_writer_fields_cannot_be_set_by_the_recording(tmp_path):
    wr = TraceWriter(str(tmp_path / "t"))
    wr.add("x", np.zeros((2, 2), np.float32))
    with pytest.raises(TraceError, match="writer's"):
        wr.close({"version": 1})
    wr.abort()


# ------------------------------------------------------------------------------ shard headers

def _raw_shard(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header, data", [
    ({"__metadata__": ["x"], "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    ({"__metadata__": {"k": 5}}, b""),
    ({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, b"\0" * 4),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
    ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b""),
    ({"a": {"dtype": "F32", "shape": [2 ** 70], "data_offsets": [0, 4]}}, b"\0" * 4),
    ({"a": "F32"}, b""),
], ids=["metadata-list", "metadata-int", "float-dim", "bool-dim", "dtype-list", "three-offsets",
        "negative-offset", "huge-shape", "entry-str"])
def test_malformed_safetensors_headers_are_trace_errors(tmp_path, header, data):
    from fmtlab.sim.trace import SafetensorsFile

    p = tmp_path / "s.safetensors"
    _raw_shard(p, header, data)
    with pytest.raises(TraceError):
        SafetensorsFile(str(p))


def test_zero_d_piece_is_a_trace_error(tmp_path):
    """A 0-d tensor in a shard where the manifest expects rows: TraceError, not IndexError."""
    tr = small_trace(tmp_path / "t")
    info = tr.manifest["shards"][0]
    tr.close()
    shard = tmp_path / "t" / info["file"]
    from fmtlab.sim.trace import SafetensorsFile

    sf = SafetensorsFile(str(shard))
    arrays = {k: sf.get(k) for k in sf.entries}
    meta = dict(sf.metadata)
    sf.close()
    arrays["blk:residual#0"] = np.float32(1.0).reshape(())
    write_safetensors(str(shard), arrays, meta)
    m = _read(tmp_path / "t")
    m["shards"][0].update(bytes=os.path.getsize(shard))
    _write(tmp_path / "t", m, resign=True)
    with pytest.raises(TraceError, match="does not match the manifest"):
        Trace(tmp_path / "t", verify=False)


def test_shard_truncated_while_reading_is_a_trace_error(tmp_path):
    """Before: the shards were memory-mapped and a truncation during a replay killed the process
    with SIGBUS. Now the reader uses pread: a short read is a TraceError."""
    tr = small_trace(tmp_path / "t")
    shard = os.path.join(tr.path, tr.manifest["shards"][0]["file"])
    first = tr.tensor("a:input").copy()
    os.truncate(shard, 64)
    with pytest.raises(TraceError, match="truncated while being read"):
        tr.tensor("blk:residual")
    tr.close()
    np.testing.assert_array_equal(first[0], small_trace(tmp_path / "u").tensor("a:input")[0])


# ------------------------------------------------------------------------------ the reader fuzz

def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=False),
                       st.text(max_size=8))
_JSON = st.recursive(_JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                       max_size=3), max_leaves=6)


def _mutate(doc, data):
    """One mutation of a JSON document: replace a value (types, sizes, references), delete or add
    a key, or nest a value deeply."""
    paths = [p for p, _ in _paths(doc)]
    path = data.draw(st.sampled_from(paths), label="path")
    op = data.draw(st.sampled_from(["replace", "delete", "add", "nest", "swap"]), label="op")
    if not path:
        return data.draw(_JSON) if op == "replace" else doc
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    strings = [v for _, v in _paths(doc) if isinstance(v, str)] or ["x"]
    if op == "replace":  # another type, size, or a reference to another name of the document
        parent[key] = data.draw(_JSON | st.sampled_from(strings), label="value")
    elif op == "delete":
        del parent[key]
    elif op == "add" and isinstance(parent[key], dict):
        parent[key][data.draw(st.text(max_size=6), label="key")] = data.draw(_JSON, label="value")
    elif op == "nest":
        v: object = 0
        for _ in range(data.draw(st.sampled_from([2, 50, 3000]), label="depth")):
            v = [v]
        parent[key] = v
    elif op == "swap":
        other = data.draw(st.sampled_from([v for _, v in _paths(doc)]), label="other")
        parent[key] = json.loads(json.dumps(other))
    return doc


def _reference(tr: Trace) -> dict:
    return {n: tr.tensor(n).tobytes() for n in tr.tensor_names}


@pytest.fixture(scope="module")
def fuzz_source(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    tr = small_trace(d / "src")
    ref = _reference(tr)
    tr.close()
    return _Source((d / "src", ref))


class _Source(tuple):
    def __repr__(self) -> str:  # short in hypothesis' failure reports
        return f"<trace {self[0]}>"


def _copy(src, dst):
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def _open_and_read(path, verify):
    """Open and read everything: the correct result (same tensors) or exactly one TraceError."""
    with Trace(path, verify=verify) as tr:
        got = _reference(tr)
        tr.layers, tr.activations, repr(tr)  # noqa: B018 - the accessors replay uses must not fail
        return got


FUZZ = settings(max_examples=int(os.environ.get("FMTLAB_FUZZ_EXAMPLES", "60")),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data(), resign=st.booleans(), verify=st.booleans())
def test_fuzz_manifest(tmp_path, fuzz_source, data, resign, verify):
    """Mutated manifests (re-signed or not): the correct result, or one TraceError."""
    src, ref = fuzz_source
    dst = tmp_path / "m"
    _copy(src, dst)
    m = _mutate(_read(dst), data)
    text = _dumps(m)
    if resign and isinstance(m, dict):
        m[DIGEST_KEY] = manifest_digest(m) if _canonical_ok(m) else "x"
        text = _dumps(m)
    (dst / MANIFEST).write_text(text)
    try:
        got = _open_and_read(dst, verify)
    except TraceError:
        return
    assert got == ref


def _dumps(m) -> str:
    try:
        return json.dumps(m)
    except RecursionError:  # too deep for the encoder: write it by hand
        return "[" * 100_000 + "]" * 100_000


def _canonical_ok(m) -> bool:
    try:
        manifest_digest(m)
        return True
    except (ValueError, RecursionError):
        return False


@FUZZ
@given(data=st.data(), resign=st.booleans(), verify=st.booleans())
def test_fuzz_shard_header(tmp_path, fuzz_source, data, resign, verify):
    """Mutated safetensors headers (with the manifest's size and SHA-256 updated to match when
    ``resign``, so the header parser itself is reached): the correct result, or one TraceError."""
    from fmtlab.sim.safetensors_io import sha256_file

    src, ref = fuzz_source
    dst = tmp_path / "s"
    _copy(src, dst)
    m = _read(dst)
    shard = dst / m["shards"][0]["file"]
    blob = shard.read_bytes()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    header = _mutate(header, data)
    raw = _dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    if data.draw(st.booleans(), label="bad-length"):
        raw_len = data.draw(st.sampled_from([0, 7, len(raw) + 8, 2 ** 63]), label="length")
    else:
        raw_len = len(raw)
    shard.write_bytes(struct.pack("<Q", raw_len) + raw + blob[8 + hlen:])
    if resign:
        m["shards"][0].update(bytes=os.path.getsize(shard), sha256=sha256_file(str(shard)))
        _write(dst, m, resign=True)
    try:
        got = _open_and_read(dst, verify)
    except TraceError:
        return
    assert got == ref


@pytest.mark.fuzz_long
@pytest.mark.skipif(not os.environ.get("FMTLAB_FUZZ_LONG"), reason="long fuzz profile: set FMTLAB_FUZZ_LONG=1")
@settings(max_examples=3000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), resign=st.booleans(), verify=st.booleans())
def test_fuzz_manifest_long(tmp_path, fuzz_source, data, resign, verify):
    test_fuzz_manifest.hypothesis.inner_test(tmp_path, fuzz_source, data, resign, verify)


@pytest.mark.fuzz_long
@pytest.mark.skipif(not os.environ.get("FMTLAB_FUZZ_LONG"), reason="long fuzz profile: set FMTLAB_FUZZ_LONG=1")
@settings(max_examples=3000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), resign=st.booleans(), verify=st.booleans())
def test_fuzz_shard_header_long(tmp_path, fuzz_source, data, resign, verify):
    test_fuzz_shard_header.hypothesis.inner_test(tmp_path, fuzz_source, data, resign, verify)
