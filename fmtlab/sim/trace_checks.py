"""Checks for trace directories: may a trace be written here, is a manifest well-formed, is a
shard name confined to its trace. Used by :mod:`fmtlab.sim.trace`; every failure is a TraceError.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Collection

from fmtlab.errors import TraceError

TRACE_FORMAT = "fmtlab-trace"
MANIFEST = "manifest.json"


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
        if not (isinstance(info, dict) and info.get("dtype") in dtype_names and isinstance(info.get("shape"), list)
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
    for key in ("seq_len", "n_sequences", "n_tokens", "prefix_len", "batch_size"):
        if key in m and m[key] is not None and not (is_int(m[key]) and m[key] >= 0):
            raise bad(f"{key!r} is {m[key]!r:.40}, not an integer >= 0")


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
    except (OSError, UnicodeDecodeError, ValueError):
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
    foreign = [e for e in entries if e != MANIFEST and not _SHARD_NAME.fullmatch(e) and not _OWN_TMP.fullmatch(e)]
    if foreign:
        raise TraceError(f"{path} is a trace but also holds {sorted(foreign)[:3]}; refusing to delete "
                         "them with --overwrite")
    return True
