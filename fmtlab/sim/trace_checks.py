"""Checks for trace directories: may a trace be written here, is a manifest well-formed, is a
shard name confined to its trace. Used by :mod:`fmtlab.sim.trace`; every failure is a TraceError.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from typing import Any, Collection

from fmtlab.errors import TraceError

TRACE_FORMAT = "fmtlab-trace"
MANIFEST = "manifest.json"
#: the manifest field holding the SHA-256 of the manifest's canonical JSON without this field
DIGEST_KEY = "manifest_sha256"
#: trace format versions this fmtlab reads; 1 (before the manifest digest) is refused (re-record)
TRACE_VERSION = 2
KNOWN_VERSIONS = (2,)
#: fields of the writer, not of the recording: a manifest passed to TraceWriter.close may not set them
RESERVED = ("format", "version", "trace_id", "fmtlab_version", "created", "shards", "tensors", DIGEST_KEY)
MAX_MANIFEST = 256 << 20  # bytes: a larger manifest is taken for a foreign or corrupt file
_PER_TOKEN_KINDS = ("residual", "key", "value")


def canonical_json(m: dict[str, Any]) -> bytes:
    """The bytes the manifest digest is taken over: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def manifest_digest(m: dict[str, Any]) -> str:
    """SHA-256 hex digest of ``m`` without its :data:`DIGEST_KEY` field (canonical JSON)."""
    return hashlib.sha256(canonical_json({k: v for k, v in m.items() if k != DIGEST_KEY})).hexdigest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup!r:.80}")
    return d


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def strict_json(raw: bytes | str) -> Any:
    """``json.loads`` that refuses duplicate keys and NaN/Infinity tokens (ValueError) and turns a
    nesting too deep for the parser into ValueError too."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_manifest(mpath: str) -> dict[str, Any]:
    """The manifest at ``mpath``, parsed strictly and checked for format, known version and
    digest; TraceError naming the problem (a trace of format version 1 must be re-recorded)."""
    try:
        with open(mpath, "rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
        if len(raw) > MAX_MANIFEST:
            raise ValueError(f"larger than {MAX_MANIFEST >> 20} MiB")
        m = strict_json(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TraceError(f"{mpath} is truncated or corrupt: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(m, dict) or m.get("format") != TRACE_FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise TraceError(f"{mpath} is not an fmtlab trace manifest (format={fmt!r:.80})")
    v = m.get("version")
    if is_int(v) and v < min(KNOWN_VERSIONS):
        raise TraceError(f"{mpath} has trace version {v}, written by an older fmtlab without a manifest "
                         "digest; re-record the trace (fmtlab record ... --overwrite)")
    if not is_int(v) or v not in KNOWN_VERSIONS:
        raise TraceError(f"{mpath} has trace version {v!r:.40}; this fmtlab reads versions "
                         f"{list(KNOWN_VERSIONS)} only")
    digest = m.get(DIGEST_KEY)
    if not isinstance(digest, str):
        raise TraceError(f"{mpath} is corrupt: it has no {DIGEST_KEY!r} (the digest written with it)")
    if manifest_digest(m) != digest:
        raise TraceError(f"{mpath} was changed after it was written: its SHA-256 differs from the digest "
                         "recorded in it; re-record the trace (a manifest is never edited by hand)")
    return m


def is_int(v: Any) -> bool:
    """True for a JSON integer (bool excluded)."""
    return isinstance(v, int) and not isinstance(v, bool)


def validate_manifest(m: dict[str, Any], mpath: str, dtype_names: Collection[str]) -> None:
    """TraceError unless every field the reader uses has the right JSON type and range."""
    def bad(what: str) -> TraceError:
        return TraceError(f"{mpath} is corrupt: {what}")

    if not isinstance(m["trace_id"], str):
        raise bad("trace_id is not a string")
    shards, tensors = m["shards"], m["tensors"]
    if not isinstance(shards, list) or not isinstance(tensors, dict):
        raise bad("'shards' must be a list and 'tensors' an object")
    for i, sh in enumerate(shards):
        if not (isinstance(sh, dict) and isinstance(sh.get("file"), str) and is_int(sh.get("bytes"))
                and sh["bytes"] >= 0 and isinstance(sh.get("sha256"), str)):
            raise bad(f"shard entry {i} is not {{file: str, bytes: int >= 0, sha256: str}}: {sh!r:.200}")
    for name, info in tensors.items():
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and info["dtype"] in dtype_names and isinstance(info.get("shape"), list)
                and info["shape"] and all(is_int(d) and d >= 0 for d in info["shape"])
                and isinstance(info.get("pieces"), list)):
            raise bad(f"tensor {name!r} is not {{dtype, shape: [int >= 0, ...], pieces: [...]}}")
        for p in info["pieces"]:
            if not (isinstance(p, dict) and is_int(p.get("shard")) and isinstance(p.get("key"), str)
                    and isinstance(p.get("rows"), list) and len(p["rows"]) == 2
                    and all(is_int(r) for r in p["rows"])):
                raise bad(f"a piece of tensor {name!r} is not {{shard: int, key: str, rows: [int, int]}}")
            if not 0 <= p["shard"] < len(shards):
                raise bad(f"a piece of tensor {name!r} names shard {p['shard']}; the trace has {len(shards)}")
    for section, refs in (("layers", ("input", "weight", "output", "bias")), ("activations", ("tensor",))):
        sec = m.get(section, {})
        if not isinstance(sec, dict):
            raise bad(f"{section!r} is not an object")
        for name, meta in sec.items():
            if not isinstance(meta, dict):
                raise bad(f"{section} entry {name!r} is not an object")
            for r in refs:
                v = meta.get(r)
                if v is not None and (not isinstance(v, str) or v not in tensors):
                    raise bad(f"{section} entry {name!r} refers to {r}={v!r:.80}, which is not a recorded tensor")
            if section == "activations" and not isinstance(meta.get("kind"), str):
                raise bad(f"activation {name!r} has no string 'kind'")
            if section == "activations" and not isinstance(meta.get("tensor"), str):
                raise bad(f"activation {name!r} names no recorded 'tensor'")
    for key in ("seq_len", "n_sequences", "n_tokens", "prefix_len", "batch_size"):
        if key in m and m[key] is not None and not (is_int(m[key]) and m[key] >= 0):
            raise bad(f"{key!r} is {m[key]!r:.40}, not an integer >= 0")
    for key, types in (("model", dict), ("text", dict), ("options", dict), ("kv_prefix", dict),
                       ("vocab", dict), ("blocks", list), ("row_order", str), ("fmtlab_version", str),
                       ("created", str)):
        if m.get(key) is not None and not isinstance(m[key], types):
            raise bad(f"{key!r} is a {type(m[key]).__name__}, not a {types.__name__}")
    if not isinstance((m.get("model") or {}).get("name", ""), (str, type(None))):
        raise bad("model.name is not a string")
    if not all(isinstance(b, str) for b in m.get("blocks") or []):
        raise bad("'blocks' is not a list of strings")
    if not all(isinstance(v, str) for v in (m.get("vocab") or {}).values()):
        raise bad("'vocab' does not map token ids to strings")
    for section in ("layers", "activations"):
        for name, meta in m.get(section, {}).items():
            for key in ("in_features", "out_features"):
                if key in meta and not (is_int(meta[key]) and meta[key] >= 1):
                    raise bad(f"{section} entry {name!r}: {key} is {meta[key]!r:.40}, not an integer >= 1")
            if meta.get("block") is not None and not (is_int(meta["block"]) and meta["block"] >= 0):
                raise bad(f"{section} entry {name!r}: block is {meta['block']!r:.40}, not an integer >= 0")
            for key in ("op", "type", "kind", "layer", "kv"):
                if meta.get(key) is not None and not isinstance(meta[key], str):
                    raise bad(f"{section} entry {name!r}: {key} is not a string")


def check_consistency(m: dict[str, Any], mpath: str) -> None:
    """TraceError unless the manifest's description agrees with the tensors it indexes (whose shapes
    the reader has checked against the shards): sequences x length = tokens, every per-token
    tensor has one row per token, each layer's weight is [out_features, in_features] and belongs
    to that layer, its input/output widths match, block indices are in range."""
    def bad(what: str) -> TraceError:
        return TraceError(f"{mpath} is inconsistent with its shards: {what}")

    tensors = m["tensors"]
    seq_len, n_seq, n_tok = m.get("seq_len"), m.get("n_sequences"), m.get("n_tokens")
    if None not in (seq_len, n_seq, n_tok) and seq_len * n_seq != n_tok:
        raise bad(f"seq_len {seq_len} x n_sequences {n_seq} != n_tokens {n_tok}")
    if seq_len == 0 and n_tok:
        raise bad(f"seq_len is 0 but n_tokens is {n_tok}")
    if "tokens:input_ids" in tensors and None not in (seq_len, n_seq):
        shape = tensors["tokens:input_ids"]["shape"]
        if shape not in ([n_seq, seq_len], [n_seq * seq_len]):
            raise bad(f"tokens:input_ids has shape {shape}, not [n_sequences={n_seq}, seq_len={seq_len}]")
    n_blocks = len(m["blocks"]) if isinstance(m.get("blocks"), list) and m["blocks"] else None

    def rows_ok(tname: str, what: str) -> None:
        rows = tensors[tname]["shape"][0]
        if n_tok is not None and rows != n_tok:
            raise bad(f"{what} {tname!r} has {rows} rows, n_tokens is {n_tok}")
        if n_tok is None and seq_len and rows % seq_len:
            raise bad(f"{what} {tname!r} has {rows} rows, not a multiple of seq_len {seq_len}")

    for name, meta in m.get("layers", {}).items():
        k, n = meta.get("in_features"), meta.get("out_features")
        if n_blocks is not None and meta.get("block") is not None and meta["block"] >= n_blocks:
            raise bad(f"layer {name!r} names block {meta['block']}; the model has {n_blocks}")
        for role, kind, width, own in (("weight", "weight", None, True), ("bias", "bias", None, True),
                                       ("input", "input", k, False), ("output", "output", n, True)):
            tname = meta.get(role)
            if tname is None:
                continue
            info = tensors[tname]
            if info.get("kind") is not None and info["kind"] != kind:
                raise bad(f"layer {name!r}: its {role} {tname!r} is a {info['kind']!r} tensor")
            if own and info.get("layer") is not None and info["layer"] != name:
                raise bad(f"layer {name!r}: its {role} {tname!r} belongs to layer {info['layer']!r:.80}")
            shape = info["shape"]
            if role == "weight" and k is not None and n is not None and shape != [n, k]:
                raise bad(f"layer {name!r}: weight {tname!r} is {shape}, not [out_features={n}, in_features={k}]")
            if role == "bias" and n is not None and shape[-1] != n:
                raise bad(f"layer {name!r}: bias {tname!r} is {shape}, not {n} wide")
            if width is not None and role in ("input", "output") and (len(shape) != 2 or shape[1] != width):
                raise bad(f"layer {name!r}: {role} {tname!r} is {shape}, not [tokens, {width}]")
            # a layer fed one row per sequence (a BERT pooler reads the [CLS] token) is not per token
            if role in ("input", "output") and meta.get("per_token", True) is not False:
                rows_ok(tname, f"layer {name!r}: {role}")
    for name, meta in m.get("activations", {}).items():
        if n_blocks is not None and meta.get("block") is not None and meta["block"] >= n_blocks:
            raise bad(f"activation {name!r} names block {meta['block']}; the model has {n_blocks}")
        shape = tensors[meta["tensor"]]["shape"]
        if meta["kind"] in _PER_TOKEN_KINDS:
            rows_ok(meta["tensor"], f"activation {name!r}: tensor")
        elif meta["kind"] == "attn_probs":
            if len(shape) != 4 or shape[2] != shape[3] or (seq_len is not None and shape[2] != seq_len) \
                    or (n_seq is not None and shape[0] != n_seq):
                raise bad(f"attention probabilities {name!r} are {shape}, not [sequences={n_seq}, heads, "
                          f"seq_len={seq_len}, seq_len]")


def confined_shard_path(directory: str, name: str) -> str:
    """Path of shard ``name`` in ``directory``; TraceError unless it is a plain file name inside it."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or "\0" in name
            or os.path.isabs(name)):
        raise TraceError(f"trace {directory}: shard name {name!r} is not a plain file name inside the trace")
    path = os.path.join(directory, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise TraceError(f"trace {directory}: shard {name!r} is a link pointing outside the trace")
    return path


_SHARD_NAME = re.compile(r"shard-\d{5}\.safetensors")
_OWN_TMP = re.compile(r"\.(manifest\.json|shard-\d{5}\.safetensors)\..*\.tmp")


def is_trace_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a directory whose manifest.json says it is an fmtlab trace."""
    try:
        with open(os.path.join(os.fspath(path), MANIFEST), encoding="utf-8") as fh:
            m = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(m, dict) and m.get("format") == TRACE_FORMAT


def check_trace_target(path: str, overwrite: bool) -> bool:
    """Raise TraceError unless a trace may be written at ``path``; True if a trace is to be replaced.

    Allowed: a missing path, an empty directory, and with ``overwrite`` a directory that is an
    fmtlab trace holding nothing but its manifest, shards and fmtlab's temporary files. Refused:
    a file, a symbolic link, the current directory or one of its parents, any other directory.
    """
    if not os.path.lexists(path):
        return False
    if os.path.islink(path):
        raise TraceError(f"{path} is a symbolic link; refusing to write a trace over it")
    if not os.path.isdir(path):
        raise TraceError(f"{path} exists and is not a directory; refusing to replace it with a trace")
    cwd, real = os.path.realpath(os.getcwd()), os.path.realpath(path)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise TraceError(f"refusing to write a trace at {path}: it is the current directory or one of its "
                         "parents; choose a new directory")
    entries = os.listdir(path)
    if not entries:
        return False
    if not overwrite:
        raise TraceError(f"{path} exists; pass overwrite=True (--overwrite) to replace the trace there")
    if not is_trace_dir(path):
        raise TraceError(f"{path} is not an fmtlab trace (no {MANIFEST} saying so); --overwrite replaces "
                         "only traces, so it is left alone")
    listed = _listed_shards(path)
    foreign = [e for e in entries if not _own_entry(path, e, listed)]
    if foreign:
        raise TraceError(f"{path} is a trace but also holds {sorted(foreign)[:3]} (not its manifest, "
                         "one of its listed shards or fmtlab's temporary files, as regular files); "
                         "refusing to delete them with --overwrite")
    return True


def _listed_shards(path: str) -> set[str]:
    """File names of the shards the manifest at ``path`` lists (empty if it cannot be read)."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as fh:
            shards = json.load(fh).get("shards")
        return {s["file"] for s in shards if isinstance(s, dict) and isinstance(s.get("file"), str)}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError, TypeError):
        return set()


def _own_entry(path: str, name: str, listed: set[str]) -> bool:
    """True if entry ``name`` of trace ``path`` is fmtlab's to delete: a regular file (not a link,
    not a folder) that is the manifest, a shard the manifest lists, or a temporary file of ours."""
    if not (name == MANIFEST or (_SHARD_NAME.fullmatch(name) and name in listed) or _OWN_TMP.fullmatch(name)):
        return False
    try:
        return stat.S_ISREG(os.lstat(os.path.join(path, name)).st_mode)
    except OSError:
        return False
