"""Safetensors files, read and written without pickle: the storage layer of fmtlab traces.

Layout (the safetensors spec): u64 little-endian header length, a JSON header (tensor name ->
dtype, shape, data_offsets; optional ``__metadata__`` of strings) padded with spaces to a
multiple of 8, then the raw little-endian tensor bytes. :func:`write_safetensors` streams
arrays to an atomically renamed file; :class:`SafetensorsFile` validates the header against the
file size (bounds, dtypes, shapes, offsets; TraceError on any defect) and memory-maps the data.
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
    """A validated, memory-mapped safetensors file (read-only). Raises TraceError on any defect."""

    def __init__(self, path: str):
        self.path = path
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise TraceError(f"cannot read shard {path}: {exc}") from exc
        if size < 8:
            raise TraceError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        with open(path, "rb") as fh:
            (hlen,) = struct.unpack("<Q", fh.read(8))
            if hlen > MAX_HEADER or 8 + hlen > size:
                raise TraceError(f"{path} is not a safetensors file or is truncated "
                                 f"(header length {hlen}, file size {size})")
            raw = fh.read(hlen)
        try:
            header = json.loads(raw.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            raise TraceError(f"{path} has a corrupt safetensors header: {exc}") from exc
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + hlen
        self.entries: dict[str, TensorEntry] = {}
        data_len = 0
        for key, info in header.items():
            try:
                dtype = DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise TraceError(f"{path}: corrupt header entry for {key!r}: {info!r}") from exc
            if any(d < 0 for d in shape) or begin < 0 or end < begin:
                raise TraceError(f"{path}: impossible shape/offsets for {key!r}: {info!r}")
            if end - begin != math.prod(shape) * dtype.itemsize:
                raise TraceError(f"{path}: {key!r} spans {end - begin} bytes but shape {list(shape)} "
                                 f"of {info['dtype']} needs {math.prod(shape) * dtype.itemsize}")
            self.entries[key] = TensorEntry(dtype, shape, begin, end)
            data_len = max(data_len, end)
        expected = self.data_start + data_len
        if size < expected:
            raise TraceError(f"{path} is truncated: {size} bytes, its header needs {expected}")
        if size > expected:
            raise TraceError(f"{path} is corrupt: {size} bytes, its header accounts for {expected}")
        self._mm: np.memmap | None = None

    def _map(self) -> np.ndarray:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def sha256(self, chunk: int = 8 << 20) -> str:
        """SHA-256 hex digest of the whole file, read through the memory map (so it is read once)."""
        h = hashlib.sha256()
        mm = self._map()
        n = mm.shape[0]
        for start in range(0, n, chunk):
            h.update(memoryview(mm[start:min(n, start + chunk)]))
        return h.hexdigest()

    def get(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a read-only array backed by the memory map."""
        try:
            e = self.entries[key]
        except KeyError:
            raise TraceError(f"{self.path} has no tensor {key!r}") from None
        if e.end == e.begin:
            return np.zeros(e.shape, e.dtype)
        buf = self._map()[self.data_start + e.begin:self.data_start + e.end]
        return buf.view(e.dtype).reshape(e.shape)

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None and hasattr(mm, "_mmap") and mm._mmap is not None:
            try:
                mm._mmap.close()
            except BufferError:  # arrays still reference it; the GC closes it later
                pass
