"""Trace files: safetensors shards plus a JSON manifest.

Layout of a trace directory::

    manifest.json              what was recorded (schema below); written last
    shard-00000.safetensors    tensors, each key "<tensor name>#<piece>"
    shard-00001.safetensors    ...

A tensor recorded over many batches is stored as *pieces* along its first axis (token rows, or
sequences for attention probabilities); the manifest lists, per tensor, the pieces in order with
their shard, key and row range. Readers memory-map the shards (no copy for single-piece tensors)
and check everything against the manifest before handing data out.

Guarantees:
* never pickle: only safetensors (parsed here, with bounds checks) and JSON;
* atomic: a trace is built in a temporary sibling directory and renamed into place when complete,
  each file inside is written to a temporary name and renamed; an interrupted recording leaves no
  trace at the target path;
* safe replacement: only a directory that is an fmtlab trace is ever replaced (atomic swap), a
  lock beside the target stops a second writer, partials of dead writers are cleaned;
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
from fmtlab.sim.trace_checks import (MANIFEST, TRACE_FORMAT, check_trace_target, confined_shard_path,  # noqa: F401
                                     is_int, validate_manifest)

TRACE_VERSION = 1
_META_KEY = "fmtlab_trace_id"


# --------------------------------------------------------------------------------------- writer

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
        self._lock = DirLock(os.path.join(parent, f".{name}.lock"), f"trace {self.path}")
        try:
            self._lock.acquire()
        except FmtlabError as exc:
            raise TraceError(str(exc)) from None
        try:
            clean_stale(parent, re.escape(f".{name}.") + r"(partial|old)-.*")
            check_trace_target(self.path, overwrite)
            self._tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
            os.chmod(self._tmp, dir_mode())
            write_owner_marker(self._tmp)
        except BaseException:
            self._lock.release()
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
        try:
            self.flush()
            full = {
                "format": TRACE_FORMAT, "version": TRACE_VERSION, "trace_id": self.trace_id,
                "fmtlab_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **manifest,
                "shards": self._shards, "tensors": self._tensors,
            }
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
        self._lock.release()
        return Trace(self.path, verify=False)

    def abort(self) -> None:
        """Drop everything written so far (the target path is left untouched)."""
        self._closed = True
        self._buffer.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._lock.release()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._closed:
            self.abort()


# --------------------------------------------------------------------------------------- reader

class Trace:
    """A recorded trace, opened read-only. Tensors are memory-mapped, never loaded eagerly.

    ``Trace(path)`` validates the manifest (types, ranges, shard names confined to the directory)
    and every shard's header and size, and checks each shard's SHA-256 against the manifest
    (hashing the memory map once, shards in parallel; ~1 GB/s per core). ``verify=False`` skips
    only the SHA-256 check (the CLI's ``--no-verify``).
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
        try:
            with open(mpath, encoding="utf-8") as fh:
                m = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TraceError(f"{mpath} is truncated or corrupt: {exc}") from exc
        if not isinstance(m, dict) or m.get("format") != TRACE_FORMAT:
            raise TraceError(f"{mpath} is not an fmtlab trace manifest (format={m.get('format') if isinstance(m, dict) else None!r})")
        if not is_int(m.get("version")) or m["version"] > TRACE_VERSION:
            raise TraceError(f"{mpath} has trace version {m.get('version')!r}; this fmtlab reads up to {TRACE_VERSION}")
        for key in ("trace_id", "shards", "tensors"):
            if key not in m:
                raise TraceError(f"{mpath} is corrupt: missing {key!r}")
        validate_manifest(m, mpath, DTYPES)
        self.manifest: dict[str, Any] = m
        self.trace_id: str = m["trace_id"]
        self._files: dict[int, SafetensorsFile] = {}
        try:
            for i in range(len(m["shards"])):
                self._open_shard(i)
            if verify:
                self.verify()
            self._check_index()
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
        for name, info in self.manifest["tensors"].items():
            rows = 0
            for p in info["pieces"]:
                sf = self._open_shard(p["shard"])
                e = sf.entries.get(p["key"])
                if e is None:
                    raise TraceError(f"{sf.path} lacks piece {p['key']!r} of tensor {name!r}")
                if DTYPE_NAMES.get(e.dtype) != info["dtype"] or list(e.shape[1:]) != info["shape"][1:] \
                        or p["rows"] != [rows, rows + e.shape[0]]:
                    raise TraceError(f"{sf.path}: piece {p['key']!r} does not match the manifest "
                                     f"({DTYPE_NAMES.get(e.dtype)} {list(e.shape)} vs {info['dtype']} {info['shape']})")
                rows += e.shape[0]
            if rows != info["shape"][0]:
                raise TraceError(f"tensor {name!r}: pieces hold {rows} rows, the manifest says {info['shape'][0]}")

    def verify(self) -> None:
        """Check every shard's SHA-256 against the manifest (hashes each memory map once, in parallel).

        Raises TraceError naming the first corrupt shard.
        """
        import concurrent.futures as cf

        n = len(self.manifest["shards"])
        files = [self._open_shard(i) for i in range(n)]
        with cf.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, n))) as ex:
            digests = list(ex.map(SafetensorsFile.sha256, files))
        for sf, info, got in zip(files, self.manifest["shards"], digests):
            if got != info["sha256"]:
                raise TraceError(f"shard {sf.path} is corrupt: its SHA-256 differs from the manifest's "
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

    def pieces(self, name: str) -> Iterator[np.ndarray]:
        """Stream the pieces of tensor ``name`` in row order (each memory-mapped, read-only)."""
        for p in self.info(name)["pieces"]:
            yield self._open_shard(p["shard"]).get(p["key"])

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` as one array: a read-only memory map if stored in one piece, else a copy."""
        parts = list(self.pieces(name))
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


def open_trace(trace: "Trace | str | os.PathLike", verify: bool = True) -> Trace:
    """``trace`` if it is already a :class:`Trace`, else ``Trace(trace, verify)``."""
    return trace if isinstance(trace, Trace) else Trace(trace, verify=verify)
