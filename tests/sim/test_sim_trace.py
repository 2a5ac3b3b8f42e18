"""Trace files: round trip, safetensors compatibility, atomicity, and clear errors on bad files."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from fmtlab.errors import TraceError
from fmtlab.sim.trace import MANIFEST, SafetensorsFile, Trace, TraceWriter, write_safetensors


def _make(path, memory_limit=1 << 20, pieces=3):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(pieces)]
    w = rng.standard_normal((4, 7)).astype(np.float32)
    with TraceWriter(str(path), memory_limit=memory_limit) as wr:
        wr.add("layer:weight", w, kind="weight")
        for p in parts:
            wr.add("layer:input", p, kind="input")
            wr.add("tokens:position", np.arange(5, dtype=np.int32), kind="tokens")
        tr = wr.close({"layers": {"layer": {"input": "layer:input", "weight": "layer:weight"}}})
    return tr, np.concatenate(parts), w


def test_round_trip_one_shard(tmp_path):
    tr, x, w = _make(tmp_path / "t")
    assert len(tr.manifest["shards"]) == 1
    np.testing.assert_array_equal(tr.tensor("layer:input"), x)
    np.testing.assert_array_equal(tr.tensor("layer:weight"), w)
    assert tr.info("layer:input")["shape"] == [15, 7]
    assert tr.layers["layer"]["weight"] == "layer:weight"
    tr.verify()


def test_round_trip_many_shards_memory_limit(tmp_path):
    """A small memory limit forces one shard per piece; pieces concatenate in order."""
    tr, x, w = _make(tmp_path / "t", memory_limit=100)
    assert len(tr.manifest["shards"]) >= 3
    np.testing.assert_array_equal(tr.tensor("layer:input"), x)
    got = list(tr.pieces("layer:input"))
    assert [p.shape[0] for p in got] == [5, 5, 5]
    reopened = Trace(tr.path, verify=True)
    np.testing.assert_array_equal(reopened.tensor("tokens:position"), np.tile(np.arange(5), 3))


def test_single_piece_is_read_only(tmp_path):
    tr, x, w = _make(tmp_path / "t")
    a = tr.tensor("layer:weight")
    assert isinstance(a.base, np.ndarray) or isinstance(a, np.memmap) or a.base is not None
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


def test_shards_are_standard_safetensors(tmp_path):
    """Any safetensors reader opens our shards (no pickle, no private layout)."""
    from safetensors.numpy import load_file

    tr, x, w = _make(tmp_path / "t")
    shard = os.path.join(tr.path, tr.manifest["shards"][0]["file"])
    data = load_file(shard)
    key = tr.info("layer:weight")["pieces"][0]["key"]
    np.testing.assert_array_equal(data[key], w)


def test_writer_reads_safetensors_written_by_library(tmp_path):
    from safetensors.numpy import save_file

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = str(tmp_path / "lib.safetensors")
    save_file({"a": arr, "b": np.arange(3, dtype=np.int64)}, p)
    sf = SafetensorsFile(p)
    np.testing.assert_array_equal(sf.get("a"), arr)
    np.testing.assert_array_equal(sf.get("b"), np.arange(3))


def test_write_safetensors_round_trip_dtypes(tmp_path):
    p = str(tmp_path / "x.safetensors")
    data = {"f": np.float32([1.5, -2]), "i": np.int32([1, 2, 3]), "e": np.zeros((0, 3), np.float32),
            "h": np.float16([0.5])}
    write_safetensors(p, data, {"k": "v"})
    sf = SafetensorsFile(p)
    assert sf.metadata == {"k": "v"}
    for k, v in data.items():
        np.testing.assert_array_equal(sf.get(k), v)
        assert sf.get(k).dtype == v.dtype


def test_truncated_shard(tmp_path):
    tr, _, _ = _make(tmp_path / "t")
    shard = os.path.join(tr.path, tr.manifest["shards"][0]["file"])
    tr.close()
    size = os.path.getsize(shard)
    with open(shard, "r+b") as fh:
        fh.truncate(size - 10)
    with pytest.raises(TraceError, match="truncated"):
        Trace(tr.path)


def test_truncated_safetensors_file_alone(tmp_path):
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"a": np.ones(100, np.float32)})
    with open(p, "r+b") as fh:
        fh.truncate(200)
    with pytest.raises(TraceError, match="truncated"):
        SafetensorsFile(p)
    with open(p, "r+b") as fh:
        fh.truncate(5)
    with pytest.raises(TraceError, match="truncated or not a safetensors"):
        SafetensorsFile(p)


def test_corrupt_header(tmp_path):
    p = str(tmp_path / "x.safetensors")
    write_safetensors(p, {"a": np.ones(4, np.float32)})
    raw = bytearray(open(p, "rb").read())
    raw[8:10] = b"\xff\xfe"
    open(p, "wb").write(bytes(raw))
    with pytest.raises(TraceError, match="corrupt safetensors header"):
        SafetensorsFile(p)


def test_header_offsets_inconsistent(tmp_path):
    p = str(tmp_path / "x.safetensors")
    hdr = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    with open(p, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 12)
    with pytest.raises(TraceError, match="needs 16"):
        SafetensorsFile(p)


def test_flipped_byte_detected_by_verify(tmp_path):
    tr, _, _ = _make(tmp_path / "t")
    shard = os.path.join(tr.path, tr.manifest["shards"][0]["file"])
    tr.close()
    with open(shard, "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-3, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0xFF]))
    Trace(tr.path, verify=False)  # sizes and headers still fine: only the opt-out reads it
    with pytest.raises(TraceError, match="SHA-256"):
        Trace(tr.path)  # verified by default


def test_foreign_manifest(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TraceError, match="not an fmtlab trace"):
        Trace(d)
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(TraceError, match="truncated or corrupt"):
        Trace(d)


def test_newer_version_refused(tmp_path):
    tr, _, _ = _make(tmp_path / "t")
    m = json.loads(open(os.path.join(tr.path, MANIFEST)).read())
    m["version"] = 99
    open(os.path.join(tr.path, MANIFEST), "w").write(json.dumps(m))
    with pytest.raises(TraceError, match="version 99"):
        Trace(tr.path)


def test_shard_from_another_trace(tmp_path):
    a, _, _ = _make(tmp_path / "a")
    b, _, _ = _make(tmp_path / "b")
    sa = os.path.join(a.path, a.manifest["shards"][0]["file"])
    sb = os.path.join(b.path, b.manifest["shards"][0]["file"])
    a.close()
    b.close()
    os.replace(sb, sa)  # same size, different trace id
    with pytest.raises(TraceError, match="SHA-256 differs"):  # hashed before its header is parsed
        Trace(a.path)
    with pytest.raises(TraceError, match="another trace"):
        Trace(a.path, verify=False)


def test_missing_manifest_and_missing_dir_and_file(tmp_path):
    with pytest.raises(TraceError, match="no trace"):
        Trace(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="interrupted"):
        Trace(tmp_path / "empty")
    f = tmp_path / "file.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(TraceError, match="is a file"):
        Trace(f)


def test_missing_shard(tmp_path):
    tr, _, _ = _make(tmp_path / "t", memory_limit=100)
    os.remove(os.path.join(tr.path, tr.manifest["shards"][1]["file"]))
    with pytest.raises(TraceError, match="missing"):
        Trace(tr.path)


def test_abort_leaves_nothing(tmp_path):
    target = tmp_path / "t"
    with pytest.raises(RuntimeError):
        with TraceWriter(str(target), memory_limit=10) as wr:
            wr.add("a", np.ones((3, 3), np.float32))
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_overwrite_protection_and_replace(tmp_path):
    _make(tmp_path / "t")
    with pytest.raises(TraceError, match="exists"):
        TraceWriter(str(tmp_path / "t"))
    wr = TraceWriter(str(tmp_path / "t"), overwrite=True)
    wr.add("z", np.zeros((2, 2), np.float32))
    tr = wr.close({})
    assert tr.tensor_names == ["z"]
    assert sorted(os.listdir(tmp_path)) == ["t"]


def test_bad_inputs(tmp_path):
    with pytest.raises(TraceError, match="memory_limit"):
        TraceWriter(str(tmp_path / "t"), memory_limit=0)
    wr = TraceWriter(str(tmp_path / "t"))
    with pytest.raises(TraceError, match="'#'"):
        wr.add("a#b", np.zeros(2, np.float32))
    wr.add("a", np.zeros((2, 3), np.float32))
    with pytest.raises(TraceError, match="earlier pieces"):
        wr.add("a", np.zeros((2, 4), np.float32))
    with pytest.raises(TraceError, match="cannot store"):
        wr.add("c", np.array(["x"]))
    wr.abort()
    tr, _, _ = _make(tmp_path / "u")
    with pytest.raises(TraceError, match="no tensor"):
        tr.tensor("nope")
