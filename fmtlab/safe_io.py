"""Safe output I/O shared by every fmtlab command: nothing half-written, nothing clobbered.

* :func:`atomic_open` / :func:`atomic_write_text` / :func:`atomic_write_bytes`: write to a file
  created exclusively (``tempfile.mkstemp``, so never through a pre-planted symlink) in the target's
  folder, fsync, give it the umask's mode (``0o666 & ~umask``), rename over the target. On any error
  the temporary file is removed and the target is untouched.
* :func:`json_safe` / :func:`dumps_json`: JSON without NaN/Inf tokens (NaN -> null, +-Inf -> "inf").
* :class:`DirLock`: an advisory ``fcntl.flock`` lock on a lock file; a second holder fails at once
  with a :class:`~fmtlab.errors.FmtlabError` naming the holder's pid. Re-entrant within a process.
* :func:`locked_dir` / :func:`staged_dir`: lock an output folder; build a run's outputs in a
  staging folder inside it and move them into place together only when all are complete.
* :func:`clean_stale`: remove staging/partial folders left by dead processes (their owner marker
  names pid and host); report those without a marker or from another host.
* :func:`install_signal_handlers`: SIGTERM/SIGHUP raise :class:`Interrupted`, so cleanup runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import fcntl
import json
import math
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from fmtlab.errors import FmtlabError

OWNER_FILE = ".fmtlab-owner"
LOCK_FILE = ".fmtlab.lock"
STAGING_PREFIX = ".fmtlab-staging-"


class Interrupted(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP (see :func:`install_signal_handlers`)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Interrupted` (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ modes

def current_umask() -> int:
    """The process umask (read from /proc where possible, so no thread sees a changed umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a newly created output file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a newly created output folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


# ------------------------------------------------------------------------------------ JSON

def json_safe(v: Any) -> Any:
    """``v`` with NaN -> None, +-Inf -> "inf"/"-inf", numpy scalars/arrays -> Python values."""
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "tolist") and callable(v.tolist) and type(v).__module__ == "numpy":
        return json_safe(v.tolist())
    return v


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of ``json_safe(obj)`` (never NaN/Infinity tokens)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


# ------------------------------------------------------------------------------------ atomic files

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = "") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it over ``path``.

    ``mode`` is "w" (text) or "wb". The parent folder is created if missing. The file gets mode
    ``0o666 & ~umask``. On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno:  # name the file (full disk)
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    _fsync_dir(parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``Path(path)``."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


# ------------------------------------------------------------------------------------ renames

_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
except (AttributeError, OSError):  # pragma: no cover - not glibc >= 2.28
    _renameat2 = None


def _rename2(src: str, dst: str, flags: int) -> bool:
    """renameat2(src, dst, flags); False if the system does not support it (then nothing happened)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (atomically on Linux)."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):  # fallback: a small race window remains on systems without renameat2
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst)


def rename_exchange(a: str, b: str) -> None:
    """Swap ``a`` and ``b`` (both must exist); atomic on Linux, two renames elsewhere."""
    if _rename2(a, b, _RENAME_EXCHANGE):
        return
    tmp = tempfile.mkdtemp(prefix=".fmtlab-swap-", dir=os.path.dirname(os.path.abspath(b)))
    os.rename(b, os.path.join(tmp, "x"))
    os.rename(a, b)
    os.rename(os.path.join(tmp, "x"), a)
    os.rmdir(tmp)


# ------------------------------------------------------------------------------------ owners, stale

def write_owner_marker(directory: str | os.PathLike) -> None:
    """Record this process (pid, host, start time) as the owner of a staging/partial folder."""
    doc = {"pid": os.getpid(), "host": socket.gethostname(),
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with open(os.path.join(directory, OWNER_FILE), "w", encoding="utf-8") as fh:
        json.dump(doc, fh)


def owner_state(directory: str | os.PathLike) -> str:
    """'alive', 'dead' (its pid is gone on this host), 'foreign' (other host) or 'unknown' (no marker)."""
    try:
        with open(os.path.join(directory, OWNER_FILE), encoding="utf-8") as fh:
            doc = json.load(fh)
        pid, host = int(doc["pid"]), str(doc["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    if host != socket.gethostname():
        return "foreign"
    if pid == os.getpid():
        return "alive"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


def _du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def clean_stale(parent: str | os.PathLike, pattern: str, *, quiet: bool = False) -> list[str]:
    """Remove folders in ``parent`` whose names match the regex ``pattern`` and whose owner died.

    Folders without an owner marker (older fmtlab) or from another host are reported, not removed.
    Call this only while holding the lock that the folders' creators hold. Returns one message per
    folder handled; they are also printed on stderr unless ``quiet``.
    """
    msgs = []
    rx = re.compile(pattern)
    try:
        names = os.listdir(parent)
    except OSError:
        return msgs
    for name in sorted(names):
        path = os.path.join(parent, name)
        if not rx.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        state = owner_state(path)
        if state == "dead":
            size = _du(path)
            shutil.rmtree(path, ignore_errors=True)
            msgs.append(f"fmtlab: removed {path} ({size / 2**20:.1f} MiB) left by an interrupted run")
        elif state in ("unknown", "foreign"):
            why = "has no owner marker" if state == "unknown" else "belongs to a process on another host"
            msgs.append(f"fmtlab: {path} ({_du(path) / 2**20:.1f} MiB) looks left over from an interrupted "
                        f"run but {why}; remove it by hand if no run is using it")
    if not quiet:
        for m in msgs:
            print(m, file=sys.stderr)
    return msgs


# ------------------------------------------------------------------------------------ locks

_HELD: dict[str, list] = {}  # lock path -> [fd, count, reentrant]
_LOCK_TEXT = re.compile(rb"(pid \d+ on [^\n]{0,255})?")


def _check_lock_file(fd: int, path: str) -> None:
    """FmtlabError unless ``fd`` is a lock file fmtlab may truncate: a regular file with one link
    whose content is empty or an fmtlab holder line ("pid N on HOST"). Anything else (a hard link
    to another file, a FIFO, a user's file that happens to carry the name) is left untouched."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_size > 300:
        raise FmtlabError(f"{path} exists and is not an fmtlab lock file (a link, a special file or "
                          "a large file); refusing to overwrite it; remove it if it is not needed")
    if not _LOCK_TEXT.fullmatch(os.pread(fd, 301, 0)):
        raise FmtlabError(f"{path} exists and is not an fmtlab lock file (unexpected content); "
                          "refusing to overwrite it; remove it if it is not needed")
_HELD_GUARD = threading.Lock()


class DirLock:
    """Advisory exclusive lock on ``lock_path`` (``fcntl.flock``).

    ``acquire()`` fails at once with FmtlabError if another holder has it (another process, or in
    this process a second DirLock unless both are ``reentrant``), and with FmtlabError if the lock
    file cannot be created (read-only folder). ``release()`` removes the lock file.
    """

    def __init__(self, lock_path: str | os.PathLike, what: str, *, reentrant: bool = False):
        self.path = os.path.abspath(os.fspath(lock_path))
        self.what = what
        self.reentrant = reentrant
        self._held = False

    def acquire(self) -> "DirLock":
        with _HELD_GUARD:
            if self.path in _HELD:
                if not (self.reentrant and _HELD[self.path][2]):
                    raise FmtlabError(f"{self.what} is being written by another fmtlab run (this process, "
                                      f"pid {os.getpid()}); wait for it to finish or choose another output")
                _HELD[self.path][1] += 1
                self._held = True
                return self
            for _ in range(100):
                try:  # never through a planted symlink (O_NOFOLLOW), never blocking on a FIFO
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                                 | os.O_NONBLOCK, file_mode())
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK):
                        raise FmtlabError(f"the lock file {self.path} is a symbolic link; refusing to "
                                          "write through it (remove it if it is not yours)") from None
                    raise FmtlabError(f"cannot write {self.what}: {exc.strerror} "
                                      f"({os.path.dirname(self.path)})") from None
                try:
                    _check_lock_file(fd, self.path)
                except BaseException:
                    os.close(fd)
                    raise
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown pid"
                    os.close(fd)
                    raise FmtlabError(f"{self.what} is being written by another fmtlab run ({holder}); "
                                      "wait for it to finish or choose another output") from None
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # the previous holder removed the file meanwhile: lock the new one
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
                _HELD[self.path] = [fd, 1, self.reentrant]
                self._held = True
                return self
            raise FmtlabError(f"cannot take the lock {self.path}")  # pragma: no cover

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with _HELD_GUARD:
            entry = _HELD.get(self.path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[self.path]
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                os.close(entry[0])

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_file_stem(stem: str, option: str = "stem") -> str:
    """``stem`` if it is a plain file-name stem (files ``<stem>.csv`` etc. stay inside their output
    folder), else FmtlabError: empty, a path (``/``, ``..``), a hidden name, or control characters."""
    if not isinstance(stem, str) or not stem or stem in (".", "..") or stem.startswith(".") \
            or "/" in stem or "\\" in stem or any(ord(ch) < 32 or ord(ch) == 127 for ch in stem) \
            or len(stem.encode("utf-8", "surrogateescape")) > 200:
        raise FmtlabError(f"{option} {stem!r} is not a plain file name (no '/', no leading '.', no "
                          "control characters, at most 200 bytes); files are written inside the output folder")
    return stem


def check_output_dir(path: str | os.PathLike) -> str:
    """Absolute path of output folder ``path``, created if missing; FmtlabError if it is a file."""
    p = os.path.abspath(os.fspath(path))
    if os.path.lexists(p) and not os.path.isdir(p):
        raise FmtlabError(f"output {p} exists and is not a directory")
    try:
        os.makedirs(p, exist_ok=True)
    except OSError as exc:
        raise FmtlabError(f"cannot create output directory {p}: {exc.strerror}") from None
    return p


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike, *, quiet: bool = False) -> Iterator[Path]:
    """Create (if needed) and lock output folder ``path``; clean stale staging folders inside it.

    Fails at once (FmtlabError) if ``path`` is a file, cannot be written, or is locked by another
    run. Re-entrant within a process (a command may lock ``path`` early and stage into it later).
    """
    p = check_output_dir(path)
    with DirLock(os.path.join(p, LOCK_FILE), f"output directory {p}", reentrant=True):
        clean_stale(p, re.escape(STAGING_PREFIX) + r".*", quiet=quiet)
        yield Path(p)


def _publish(stage: str, target: str) -> list[str]:
    """Move every entry of ``stage`` into ``target`` (replacing), rolling back on failure."""
    entries = sorted(e for e in os.listdir(stage) if e not in (OWNER_FILE, ".old"))
    old = os.path.join(stage, ".old")
    os.mkdir(old)
    done: list[tuple[str, bool]] = []  # (entry, had an old version)
    try:
        for e in entries:
            src, dst, bak = os.path.join(stage, e), os.path.join(target, e), os.path.join(old, e)
            had = os.path.lexists(dst)
            if had and os.path.isdir(dst) and not os.path.islink(dst) and os.path.isdir(src):
                rename_exchange(src, dst)
                os.rename(src, bak)
            else:
                if had:
                    os.rename(dst, bak)
                try:
                    os.rename(src, dst)
                except BaseException:
                    if had:
                        os.rename(bak, dst)
                    raise
            done.append((e, had))
    except BaseException:
        for e, had in reversed(done):
            dst, bak = os.path.join(target, e), os.path.join(old, e)
            with contextlib.suppress(OSError):
                if had:
                    if os.path.isdir(dst) and not os.path.islink(dst):
                        shutil.rmtree(dst)
                    else:
                        os.unlink(dst)
                    os.rename(bak, dst)
                elif os.path.isdir(dst) and not os.path.islink(dst):
                    shutil.rmtree(dst)
                else:
                    os.unlink(dst)
        raise
    _fsync_dir(target)
    return [os.path.join(target, e) for e in entries]


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, *, quiet: bool = False) -> Iterator[Path]:
    """Lock output folder ``path`` and yield a fresh staging folder inside it.

    Write the run's outputs into the staging folder; on clean exit they are moved into ``path``
    together (existing entries of the same names are replaced, others are left alone); on any
    exception (including :class:`Interrupted`) the staging folder is removed and ``path`` is as it was.
    """
    with locked_dir(path, quiet=quiet) as target:
        stage = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target)
        try:
            os.chmod(stage, dir_mode())
            write_owner_marker(stage)
            yield Path(stage)
            _publish(stage, str(target))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
