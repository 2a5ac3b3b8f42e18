"""Trace files: safetensors shards plus a JSON manifest.

Layout of a trace directory::

    manifest.json              what was recorded (schema below); written last
    shard-00000.safetensors    tensors, each key "<tensor name>#<piece>"
    shard-00001.safetensors    ...

A tensor recorded over many batches is stored as *pieces* along its first axis (token rows, or
sequences for attention probabilities); the manifest lists, per tensor, the pieces in order with
their shard, key and row range. Readers read the shards with ``pread`` (a shard truncated during a
run is a TraceError, never a SIGBUS) and check everything against the manifest before handing data out.

Guarantees:
* never pickle: only safetensors (parsed here, with bounds checks) and JSON;
* atomic: a trace is built in a temporary sibling directory and renamed into place when complete,
  each file inside is written to a temporary name and renamed; an interrupted recording leaves no
  trace at the target path;
* safe replacement: only a directory that is an fmtlab trace is ever replaced (atomic swap), a
  lock beside the target stops a second writer, partials of dead writers are cleaned;
* the manifest is as trusted as the shards: it carries the SHA-256 of its own canonical JSON
  (``manifest_sha256``, recorded at write time, checked at every open, even with ``verify=False``),
  is parsed strictly (duplicate keys, NaN tokens, deep nesting refused), must be of a known format
  version (2; a version-1 trace, written before the digest, must be re-recorded) and must agree
  with the shards it describes (sequences x length = tokens, one row per token, each layer's weight
  [out, in] and its own, widths, block indices);
* clear errors (:class:`fmtlab.errors.TraceError`) for a missing or foreign manifest, manifest
  fields of the wrong JSON type, shard names that leave the trace directory, a shard from another
  trace, a truncated or corrupt shard (size, header, offsets, dtype, shape), and (by default;
  ``verify=False`` skips it) any changed byte (SHA-256 per shard).

The safetensors layer (writer, validated memory-mapped reader) is :mod:`fmtlab.sim.safetensors_io`;
``write_safetensors`` and ``SafetensorsFile`` are re-exported here.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Iterator

import numpy as np

from fmtlab import __version__
from fmtlab.errors import FmtlabError, TraceError
from fmtlab.safe_io import (DirLock, atomic_write_bytes, clean_stale, dir_mode, rename_exchange,
                            rename_noreplace, write_owner_marker, OWNER_FILE)
from fmtlab.sim.safetensors_io import (DTYPE_NAMES, DTYPES, SafetensorsFile,  # noqa: F401
                                       sha256_file, write_safetensors)
from fmtlab.sim.trace_checks import (DIGEST_KEY, MANIFEST, RESERVED, TRACE_FORMAT, TRACE_VERSION,  # noqa: F401
                                     check_consistency, check_trace_target, confined_shard_path, is_int,
                                     load_manifest, manifest_digest, validate_manifest)

_META_KEY = "fmtlab_trace_id"


# --------------------------------------------------------------------------------------- writer

_WRITING: set[str] = set()  # trace paths with an open TraceWriter in this process


def trace_lock(path: str | os.PathLike) -> DirLock:
    """The (not yet acquired) lock of trace ``path``: ``.<name>.lock`` beside it, re-entrant, so a
    command may take it before loading a model (a second run fails at once) and the writer later
    takes it again. Its parent folder must exist."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    return DirLock(os.path.join(parent, f".{name}.lock"), f"trace {path}", reentrant=True)


class TraceWriter:
    """Builds a trace directory piece by piece with a bounded in-memory buffer.

    ``add(name, array, rows_axis=0)`` appends a piece of tensor ``name``; pieces accumulate in RAM
    until ``memory_limit`` bytes are buffered, then go to a new shard. ``close(manifest_extra)``
    flushes, writes the manifest and renames the temporary directory to ``path``.

    Safety: the target is checked by :func:`check_trace_target` at start and again at the final
    rename, which replaces nothing but an fmtlab trace (``overwrite``, atomic swap) and otherwise
    fails if ``path`` appeared meanwhile. A lock file ``.<name>.lock`` beside ``path`` (held until
    close or abort) makes a second writer to the same path fail at once; partial directories of
    dead writers beside ``path`` are removed.
    """

    def __init__(self, path: str, *, memory_limit: int = 256 << 20, overwrite: bool = False):
        if memory_limit < 1:
            raise TraceError(f"memory_limit must be positive, got {memory_limit=}")
        self.path = os.path.abspath(path)
        self.overwrite = overwrite
        check_trace_target(self.path, overwrite)
        parent, name = os.path.split(self.path)
        if os.path.lexists(parent) and not os.path.isdir(parent):
            raise TraceError(f"cannot create the trace {self.path}: {parent} is not a directory")
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise TraceError(f"cannot create the trace {self.path}: {exc.strerror}") from None
        if self.path in _WRITING:
            raise TraceError(f"trace {self.path} is being written by another fmtlab run (this process, pid "
                             f"{os.getpid()}); wait for it to finish or choose another output")
        self._lock = trace_lock(self.path)
        try:
            self._lock.acquire()
        except FmtlabError as exc:
            raise TraceError(str(exc)) from None
        _WRITING.add(self.path)
        try:
            clean_stale(parent, re.escape(f".{name}.") + r"(partial|old)-.*")
            check_trace_target(self.path, overwrite)
            self._tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
            os.chmod(self._tmp, dir_mode())
            write_owner_marker(self._tmp)
        except BaseException:
            self._release()
            raise
        self.memory_limit = int(memory_limit)
        self.trace_id = uuid.uuid4().hex
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._tensors: dict[str, dict[str, Any]] = {}
        self._shards: list[dict[str, Any]] = []
        self.bytes_written = 0
        self._closed = False

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def add(self, name: str, array: np.ndarray, **attrs: Any) -> None:
        """Append ``array`` as the next piece of tensor ``name`` (pieces concatenate along axis 0).

        ``attrs`` (kind, layer, role, ...) are stored in the manifest on the first piece.
        """
        if self._closed:
            raise TraceError("the trace writer is closed")
        if "#" in name:
            raise TraceError(f"tensor names may not contain '#': {name!r}")
        a = np.ascontiguousarray(array)
        info = self._tensors.get(name)
        if info is None:
            info = {"dtype": DTYPE_NAMES.get(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype),
                    "shape": [0, *a.shape[1:]], "pieces": [], **attrs}
            if info["dtype"] is None:
                raise TraceError(f"tensor {name!r} has dtype {a.dtype}, which a trace cannot store")
            self._tensors[name] = info
        elif list(a.shape[1:]) != info["shape"][1:]:
            raise TraceError(f"piece of {name!r} has shape {list(a.shape)}, earlier pieces "
                             f"[..., {info['shape'][1:]}]")
        self._buffer.setdefault(name, []).append(a)
        self._buffered += a.nbytes
        if self._buffered >= self.memory_limit:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered to a new shard."""
        if not self._buffer:
            return
        index = len(self._shards)
        fname = f"shard-{index:05d}.safetensors"
        payload: dict[str, np.ndarray] = {}
        for name, parts in self._buffer.items():
            info = self._tensors[name]
            arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            key = f"{name}#{len(info['pieces'])}"
            start = info["shape"][0]
            info["pieces"].append({"shard": index, "key": key, "rows": [start, start + arr.shape[0]]})
            info["shape"][0] = start + arr.shape[0]
            payload[key] = arr
        fpath = os.path.join(self._tmp, fname)
        size = write_safetensors(fpath, payload, {_META_KEY: self.trace_id, "shard": str(index)})
        self._shards.append({"file": fname, "bytes": size, "sha256": sha256_file(fpath)})
        self.bytes_written += size
        self._buffer.clear()
        self._buffered = 0

    def close(self, manifest: dict[str, Any]) -> "Trace":
        """Flush, write ``manifest.json`` (``manifest`` plus the tensor/shard index), move into place.

        On any error (full disk, the target changed meanwhile) the partial directory is removed.
        """
        if self._closed:
            raise TraceError("the trace writer is closed")
        clash = sorted(k for k in manifest if k in RESERVED)
        if clash:
            raise TraceError(f"manifest fields {clash} are the writer's; the recording may not set them")
        try:
            self.flush()
            full = {
                "format": TRACE_FORMAT, "version": TRACE_VERSION, "trace_id": self.trace_id,
                "fmtlab_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest,
                "shards": self._shards, "tensors": self._tensors,
            }
            full[DIGEST_KEY] = manifest_digest(full)
            atomic_write_bytes(os.path.join(self._tmp, MANIFEST),
                               json.dumps(full, indent=1, allow_nan=False).encode("utf-8"))
            os.unlink(os.path.join(self._tmp, OWNER_FILE))
            # check again at the final rename: only a trace may be replaced, nothing may appear
            if check_trace_target(self.path, self.overwrite):
                rename_exchange(self._tmp, self.path)  # self._tmp now holds the old trace
            else:
                if os.path.isdir(self.path) and not os.path.islink(self.path):
                    os.rmdir(self.path)  # an empty directory (rmdir fails if it is not empty)
                try:
                    rename_noreplace(self._tmp, self.path)
                except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
                    raise TraceError(f"{self.path} appeared while recording; not replacing it "
                                     f"({exc.strerror})") from None
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True
        self._release()
        return Trace(self.path, verify=False)

    def abort(self) -> None:
        """Drop everything written so far (the target path is left untouched)."""
        self._closed = True
        self._buffer.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        _WRITING.discard(self.path)
        self._lock.release()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._closed:
            self.abort()


# --------------------------------------------------------------------------------------- reader

class Trace:
    """A recorded trace, opened read-only. Tensors are read on demand, never loaded eagerly.

    ``Trace(path)`` checks the manifest's own digest and validates it (types, ranges, shard names
    confined to the directory, consistency with the shards), every shard's header and size, and
    each shard's SHA-256 against the manifest (before parsing its header; shards in parallel;
    ~1 GB/s per core). ``verify=False`` skips only the shards' SHA-256 (the CLI's ``--no-verify``).
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = os.path.abspath(os.fspath(path))
        if os.path.isfile(self.path):
            raise TraceError(f"{self.path} is a file; a trace is a directory holding {MANIFEST}")
        mpath = os.path.join(self.path, MANIFEST)
        if not os.path.isdir(self.path):
            raise TraceError(f"no trace at {self.path}")
        if not os.path.exists(mpath):
            raise TraceError(f"{self.path} has no {MANIFEST}: not an fmtlab trace, or an interrupted recording")
        m = load_manifest(mpath)  # strict JSON, known version, digest
        for key in ("trace_id", "shards", "tensors"):
            if key not in m:
                raise TraceError(f"{mpath} is corrupt: missing {key!r}")
        validate_manifest(m, mpath, DTYPES)
        self.manifest: dict[str, Any] = m
        self.trace_id: str = m["trace_id"]
        #: SHA-256 of the manifest, which lists every shard's SHA-256: names the trace's content
        self.digest: str = m[DIGEST_KEY]
        self._files: dict[int, SafetensorsFile] = {}
        try:
            if verify:
                self.verify()  # hash the shards before parsing their headers
            for i in range(len(m["shards"])):
                self._open_shard(i)
            self._check_index()
            check_consistency(m, mpath)
        except BaseException:
            self.close()
            raise

    # -- validation
    def _open_shard(self, index: int) -> SafetensorsFile:
        if index in self._files:
            return self._files[index]
        shards = self.manifest["shards"]
        if not is_int(index) or not 0 <= index < len(shards):
            raise TraceError(f"{self.path}: manifest names shard {index!r}, which it does not list")
        info = shards[index]
        fpath = confined_shard_path(self.path, info["file"])
        if not os.path.isfile(fpath):
            raise TraceError(f"shard {info['file']} of trace {self.path} is missing")
        size = os.path.getsize(fpath)
        if size != info["bytes"]:
            kind = "truncated" if size < info["bytes"] else "corrupt (too long)"
            raise TraceError(f"shard {fpath} is {kind}: {size} bytes, the manifest says {info['bytes']}")
        sf = SafetensorsFile(fpath)
        if sf.metadata.get(_META_KEY) != self.trace_id:
            raise TraceError(f"shard {fpath} belongs to another trace "
                             f"({sf.metadata.get(_META_KEY)!r}, manifest {self.trace_id!r})")
        self._files[index] = sf
        return sf

    def _check_index(self) -> None:
        listed: set[tuple[int, str]] = set()
        for name, info in self.manifest["tensors"].items():
            rows = 0
            for p in info["pieces"]:
                sf = self._open_shard(p["shard"])
                e = sf.entries.get(p["key"])
                if e is None:
                    raise TraceError(f"{sf.path} lacks piece {p['key']!r} of tensor {name!r}")
                if DTYPE_NAMES.get(e.dtype) != info["dtype"] or len(e.shape) != len(info["shape"]) \
                        or list(e.shape[1:]) != info["shape"][1:] \
                        or p["rows"] != [rows, rows + e.shape[0]]:
                    raise TraceError(f"{sf.path}: piece {p['key']!r} does not match the manifest "
                                     f"({DTYPE_NAMES.get(e.dtype)} {list(e.shape)} vs {info['dtype']} {info['shape']})")
                rows += e.shape[0]
                if (p["shard"], p["key"]) in listed:
                    raise TraceError(f"{sf.path}: piece {p['key']!r} is listed twice in the manifest")
                listed.add((p["shard"], p["key"]))
            if rows != info["shape"][0]:
                raise TraceError(f"tensor {name!r}: pieces hold {rows} rows, the manifest says {info['shape'][0]}")
        for i, sf in sorted(self._files.items()):
            extra = sorted(k for k in sf.entries if (i, k) not in listed)
            if extra:
                raise TraceError(f"{sf.path} holds pieces the manifest does not list ({extra[:3]}); "
                                 "the manifest and the shards disagree")

    def verify(self) -> None:
        """Check every shard's SHA-256 against the manifest (hashes each memory map once, in parallel).

        Raises TraceError naming the first corrupt shard.
        """
        import concurrent.futures as cf

        shards = self.manifest["shards"]
        n = len(shards)
        paths = []
        for info in shards:
            fpath = confined_shard_path(self.path, info["file"])
            if not os.path.isfile(fpath):
                raise TraceError(f"shard {info['file']} of trace {self.path} is missing")
            paths.append(fpath)
        with cf.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, n))) as ex:
            digests = list(ex.map(sha256_file, paths))
        for fpath, info, got in zip(paths, shards, digests):
            if got != info["sha256"]:
                raise TraceError(f"shard {fpath} is corrupt: its SHA-256 differs from the manifest's "
                                 "(re-record the trace, or pass --no-verify / verify=False to read it anyway)")

    # -- access
    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        """Recorded Linear-like layers: name -> {op, type, block, input, weight, output, bias, ...}."""
        return self.manifest.get("layers", {})

    @property
    def activations(self) -> dict[str, dict[str, Any]]:
        """Other recorded tensors (residual stream, attention probabilities, K/V): name -> info."""
        return self.manifest.get("activations", {})

    @property
    def tensor_names(self) -> list[str]:
        return list(self.manifest["tensors"])

    @property
    def nbytes(self) -> int:
        return sum(s["bytes"] for s in self.manifest["shards"])

    def info(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["tensors"][name]
        except KeyError:
            raise TraceError(f"trace {self.path} has no tensor {name!r}") from None

    def pieces(self, name: str, writable: bool = False) -> Iterator[np.ndarray]:
        """Stream the pieces of tensor ``name`` in row order (each read now into a fresh buffer,
        read-only unless ``writable``)."""
        for p in self.info(name)["pieces"]:
            yield self._open_shard(p["shard"]).get(p["key"], writable)

    def tensor(self, name: str, writable: bool = False) -> np.ndarray:
        """Tensor ``name`` as one array read now (read-only if stored in one piece, unless
        ``writable``: then a fresh writable array the caller owns)."""
        parts = list(self.pieces(name, writable))
        if not parts:
            info = self.info(name)
            return np.zeros(info["shape"], DTYPES[info["dtype"]])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def close(self) -> None:
        for sf in self._files.values():
            sf.close()
        self._files.clear()

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Trace({self.path!r}, model={m.get('model', {}).get('name')!r}, "
                f"layers={len(self.layers)}, tokens={m.get('n_tokens')}, {self.nbytes / 2**20:.1f} MiB)")


#: manifest fields that describe the recording; :func:`annotate_trace` may not change them
DESCRIPTIVE = ("layers", "activations", "seq_len", "n_sequences", "n_tokens", "prefix_len", "batch_size",
               "blocks", "model", "text", "vocab", "row_order", "options", "kv_prefix")


def annotate_trace(path: str | os.PathLike, fields: dict[str, Any]) -> None:
    """Set top-level note fields of the trace at ``path`` (e.g. the report's layer filter) and
    re-sign its manifest; the only sanctioned edit of a manifest after recording.

    The manifest must pass its own digest first (an edited manifest is not re-signed); fields that
    describe the recording or belong to the writer are refused. Holds the trace's writer lock, so a
    concurrent recording of the same path fails at once instead of racing.
    """
    path = os.path.abspath(os.fspath(path))
    bad = sorted(k for k in fields if k in RESERVED or k in DESCRIPTIVE)
    if bad:
        raise TraceError(f"annotate_trace may not change {bad}: they describe the recording")
    lock = trace_lock(path)
    try:
        lock.acquire()
    except FmtlabError as exc:
        raise TraceError(str(exc)) from None
    try:
        mpath = os.path.join(path, MANIFEST)
        m = load_manifest(mpath)
        m.update(fields)
        m[DIGEST_KEY] = manifest_digest(m)
        atomic_write_bytes(mpath, json.dumps(m, indent=1, allow_nan=False).encode("utf-8"))
    finally:
        lock.release()


def open_trace(trace: "Trace | str | os.PathLike", verify: bool = True) -> Trace:
    """``trace`` if it is already a :class:`Trace`, else ``Trace(trace, verify)``."""
    return trace if isinstance(trace, Trace) else Trace(trace, verify=verify)
