"""Safetensors files, read and written without pickle: the storage layer of fmtlab traces.

Layout (the safetensors spec): u64 little-endian header length, a JSON header (tensor name ->
dtype, shape, data_offsets; optional ``__metadata__`` of strings) padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes. :func:`write_safetensors` streams
arrays to an atomically renamed file; :class:`SafetensorsFile` validates the header against the
file size (bounds, dtypes, shapes, offsets; TraceError on any defect) and reads tensors with pread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmtlab.errors import TraceError
from fmtlab.safe_io import atomic_open
from fmtlab.sim.trace_checks import strict_json

__all__ = ["DTYPES", "DTYPE_NAMES", "MAX_HEADER", "sha256_file", "write_safetensors",
           "TensorEntry", "SafetensorsFile"]

MAX_HEADER = 100 << 20  # bytes: a longer header is taken for a foreign or corrupt file

# safetensors dtype names <-> numpy dtypes (little-endian)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def sha256_file(path: str, bufsize: int = 1 << 22) -> str:
    """SHA-256 hex digest of the file at ``path``, read in ``bufsize`` chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` as one safetensors file at ``path`` atomically; returns its size in bytes.

    Streams each array to disk (no second in-memory copy of the whole shard). The layout follows
    the safetensors spec: u64 little-endian header length, JSON header padded with spaces to a
    multiple of 8, then the raw little-endian data in header order.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for key, arr in tensors.items():
        a = np.asarray(arr)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dt not in DTYPE_NAMES:
            raise TraceError(f"tensor {key!r} has dtype {a.dtype}, which a trace cannot store")
        a = np.ascontiguousarray(a, dtype=dt)
        header[key] = {"dtype": DTYPE_NAMES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for a in arrays:
            if a.size:
                fh.write(memoryview(a.reshape(-1)).cast("B"))
    return 8 + len(raw) + offset


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype, shape and byte range within the data section."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFile:
    """A validated safetensors file, read-only. Raises TraceError on any defect.

    Tensors are read with ``pread`` from a file descriptor held open (not memory-mapped): a file
    truncated while it is read gives a TraceError, never a SIGBUS; a file replaced meanwhile is
    still read from the version that was opened.
    """

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise TraceError(f"cannot read shard {path}: {exc.strerror}") from None
        try:
            self._parse(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _parse(self, fd: int) -> None:
        path = self.path
        size = os.fstat(fd).st_size
        if size < 8:
            raise TraceError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        (hlen,) = struct.unpack("<Q", os.pread(fd, 8, 0))
        if hlen > MAX_HEADER or 8 + hlen > size:
            raise TraceError(f"{path} is not a safetensors file or is truncated "
                             f"(header length {hlen}, file size {size})")
        raw = os.pread(fd, hlen, 8)
        if len(raw) != hlen:
            raise TraceError(f"{path} is truncated (header of {hlen} bytes, read {len(raw)})")
        try:
            header = strict_json(raw.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            raise TraceError(f"{path} has a corrupt safetensors header: {' '.join(str(exc).split())[:200]}") from None
        meta = header.pop("__metadata__", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise TraceError(f"{path} has a corrupt safetensors header: __metadata__ is not an object of strings")
        self.metadata: dict[str, str] = meta
        self.data_start = 8 + hlen
        self.entries: dict[str, TensorEntry] = {}
        data_len = 0
        for key, info in header.items():
            ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and info["dtype"] in DTYPES
                  and isinstance(info.get("shape"), list) and all(_is_uint(d) for d in info["shape"])
                  and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                  and all(_is_uint(o) for o in info["data_offsets"]))
            if not ok:
                raise TraceError(f"{path}: corrupt header entry for {key!r:.80}: {info!r:.200} (expected "
                                 "{dtype: known name, shape: [int >= 0, ...], data_offsets: [int, int]})")
            dtype = DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if end < begin or end > size:
                raise TraceError(f"{path}: impossible offsets for {key!r:.80}: {info['data_offsets']!r:.80}")
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise TraceError(f"{path}: {key!r:.80} spans {end - begin} bytes but shape {list(shape)!s:.80} "
                                 f"of {info['dtype']} needs {math.prod(shape) * dtype.itemsize}")
            self.entries[key] = TensorEntry(dtype, shape, begin, end)
            data_len = max(data_len, end)
        pos = 0  # the spec: the byte ranges tile the data section, no overlap and no hole
        for key, e in sorted(self.entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
            if e.begin != pos:
                raise TraceError(f"{path}: {key!r:.80} starts at byte {e.begin} of the data, expected {pos} "
                                 "(tensors overlap or leave a hole)")
            pos = e.end
        expected = self.data_start + data_len
        if size < expected:
            raise TraceError(f"{path} is truncated: {size} bytes, its header needs {expected}")
        if size > expected:
            raise TraceError(f"{path} is corrupt: {size} bytes, its header accounts for {expected}")

    def _read(self, offset: int, n: int) -> np.ndarray:
        """``n`` bytes at ``offset`` as a fresh uint8 array; TraceError on a short read."""
        if self._fd is None:
            raise TraceError(f"{self.path} is closed")
        buf = np.empty(n, np.uint8)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = os.preadv(self._fd, [view[got:]], offset + got)
            if k == 0:
                raise TraceError(f"{self.path} was truncated while being read (got {got} of {n} bytes at "
                                 f"offset {offset}); re-record the trace or restore the file")
            got += k
        return buf

    def sha256(self, chunk: int = 8 << 20) -> str:
        """SHA-256 hex digest of the whole file (read through the open descriptor)."""
        h = hashlib.sha256()
        size = os.fstat(self._fd).st_size if self._fd is not None else 0
        for start in range(0, size, chunk):
            h.update(memoryview(self._read(start, min(chunk, size - start))))
        return h.hexdigest()

    def get(self, key: str, writable: bool = False) -> np.ndarray:
        """The tensor ``key`` as a fresh array read from the file now: read-only unless ``writable``
        (a caller that hands it to numba kernels asks for a writable one: numba compiles separate
        specializations for read-only arrays)."""
        try:
            e = self.entries[key]
        except KeyError:
            raise TraceError(f"{self.path} has no tensor {key!r}") from None
        if e.end == e.begin:
            return np.zeros(e.shape, e.dtype)
        a = self._read(self.data_start + e.begin, e.end - e.begin).view(e.dtype).reshape(e.shape)
        a.flags.writeable = writable
        return a

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
