"""Files that are either complete or absent: atomic writes, folder swaps, one lock per
output, and the clean-up after a process that was killed.

Everything gflow writes goes through here. A file is written under a temporary name
beside it and renamed onto its path (a rename within one file system is atomic); a folder
is built beside its target and swapped into place (in one step, `renameat2` with
`RENAME_EXCHANGE`, where the system has it). An interrupt or a kill -9 at any point leaves
the old target or the new one, never half of either. What a killed process leaves beside
a target (`.<name>.tmp-<pid>-*`, `.<name>.old-<pid>-*`, a stale `.<name>.lock`) is cleaned
up by the next process that takes the target's lock ([`clean_leftovers`][]). Files and
folders get the modes the umask allows, as with any tool.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time

_UMASK_LOCK = threading.Lock()
_OWNED = re.compile(r"\.(?:tmp|old|del)-(\d+)-")
_TEMP_FILE = re.compile(r"^\.(?:.+\.)?tmp-")
_PAUSES: dict[str, int] = {}


class DamagedFileError(ValueError):
    """A file gflow has to read is damaged (truncated, not the format it should be, or
    missing what it must hold); `path` names it, `reason` says what is wrong."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


class FolderInUseError(OSError):
    """Another live gflow process holds the lock of this output."""


class OutputExistsError(FileExistsError):
    """The output folder (of a run or a sweep) exists and overwriting was not asked for."""


def pause_point(stage: str) -> None:
    """For tests only: with `GFLOW_TEST_PAUSE_AT=<stage>[:<n>]` in the environment, print a
    marker on stderr and sleep the n-th time (default the first) this process reaches
    `stage`, so that a test can kill it exactly there. Nothing otherwise."""
    want = os.environ.get("GFLOW_TEST_PAUSE_AT")
    if not want or want.partition(":")[0] != stage:
        return
    _PAUSES[stage] = _PAUSES.get(stage, 0) + 1
    if str(_PAUSES[stage]) == (want.partition(":")[2] or "1"):
        print(f"gflow-test: paused at {want}", file=sys.stderr, flush=True)
        time.sleep(3600)


def umask() -> int:
    """The process's umask, read without changing it where /proc tells it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _split(target: str) -> tuple[str, str]:
    """(parent folder, base name) of a target path (a trailing slash ignored)."""
    target = os.path.abspath(os.fspath(target))
    return os.path.dirname(target), os.path.basename(target)


def _prefix(target: str, kind: str) -> str:
    """The hidden name prefix of a temporary beside `target`: `.<name>.<kind>-<pid>-`."""
    return f".{_split(target)[1]}.{kind}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, stage: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only on success.

    The file gets the mode the umask allows and is flushed to disk before the rename.
    `stage` names a [`pause_point`][] between the two (for tests).
    """
    path = os.fspath(path)
    folder = _split(path)[0]
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_prefix(path, "tmp"), suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if stage is not None:
            pause_point(stage)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def temp_folder(target: str | os.PathLike) -> str:
    """A new empty folder `.<name>.tmp-<pid>-*` beside `target`, with the mode the umask
    allows, where a folder is built before [`replace_folder`][] puts it at `target`."""
    target = os.fspath(target)
    parent = _split(target)[0]
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_prefix(target, "tmp"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@functools.cache
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: str, b: str) -> bool:
    """Swap the paths `a` and `b` in one step; False where the system cannot."""
    fn = _renameat2() if sys.platform.startswith("linux") else None
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `new` at `target`, replacing an old one only then.

    Where the system swaps two paths in one step, `target` is at every instant the old
    folder or the new one; elsewhere the old one is first moved to `.<name>.old-<pid>-*`,
    which [`clean_leftovers`][] puts back if the process dies before the second rename.
    """
    new, target = os.fspath(new), os.fspath(target)
    pause_point("swap")
    if not os.path.lexists(target):
        os.replace(new, target)
        return
    if _exchange(new, target):
        _remove(new)  # the old folder, now
        return
    trash = tempfile.mkdtemp(dir=_split(target)[0], prefix=_prefix(target, "old"))
    os.replace(target, os.path.join(trash, "old"))
    pause_point("swap-middle")
    os.replace(new, target)
    _remove(trash)


def remove_folder(folder: str | os.PathLike) -> None:
    """Delete a folder by first moving it aside: an interrupt never leaves half of it."""
    folder = os.fspath(folder)
    trash = tempfile.mkdtemp(dir=_split(folder)[0], prefix=_prefix(folder, "del"))
    try:
        os.replace(folder, os.path.join(trash, "old"))
    finally:
        _remove(trash)


def _alive(pid: int) -> bool:
    """Whether process `pid` (on this host) is running (a zombie is not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _owner_alive(name: str) -> bool:
    """Whether the process that made the temporary `name` still runs (no pid: no)."""
    m = _OWNED.search(name)
    return m is not None and _alive(int(m.group(1)))


def clean_leftovers(target: str | os.PathLike) -> list[str]:
    """Remove what dead processes left behind for `target`; call it holding [`folder_lock`][].

    Beside `target`: temporaries `.<name>.tmp-*` and `.<name>.del-*` are deleted; an old
    folder moved aside `.<name>.old-*/old` is put back when `target` is missing (a swap
    cut between its two renames), else deleted. Inside a folder `target`: temporary files
    `.*.tmp-*` are deleted. Those of a live process are left alone. Returns the paths
    removed or restored.
    """
    target = os.fspath(target)
    parent, base = _split(target)
    done = []
    names = os.listdir(parent) if os.path.isdir(parent) else []
    for name in sorted(names):
        kind = name[len(base) + 2 :].partition("-")[0] if name.startswith(f".{base}.") else ""
        if kind not in ("tmp", "old", "del") or _owner_alive(name):
            continue
        path = os.path.join(parent, name)
        if kind == "old" and not os.path.lexists(target) and os.path.lexists(os.path.join(path, "old")):
            os.replace(os.path.join(path, "old"), target)
        _remove(path)
        done.append(path)
    if os.path.isdir(target):
        for folder, _, file_names in os.walk(target):
            for name in file_names:
                if _TEMP_FILE.match(name) and not _owner_alive(name):
                    _remove(os.path.join(folder, name))
                    done.append(os.path.join(folder, name))
    return done


def _holder(path: str) -> str:
    """Who holds the lock file `path`, as written there: "pid N on HOST"."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            pid, _, host = f.read().strip().partition(" ")
        return f"pid {int(pid)} on {host}"
    except (OSError, ValueError):
        return "pid unknown"


def _free(fd: int, path: str) -> bool:
    """Try to take the lock on `fd` without waiting. Where the file system has no flock,
    the lock is free when the pid written in the file is not a live process of this host."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    holder = _holder(path)
    if holder == "pid unknown":
        return True
    pid, host = holder.split(" on ", 1)
    return host == socket.gethostname() and not _alive(int(pid.split()[1]))


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def folder_lock(target: str | os.PathLike):
    """Hold the lock of the output `target` for the `with` block: a file `.<name>.lock`
    beside it, holding the holder's pid and host, removed at the end.

    Raises `FolderInUseError` when a live process holds it. The kernel drops the lock of a
    process that dies, so a lock file left by a kill -9 is stale and is taken over.
    """
    target = os.fspath(target)
    parent, base = _split(target)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{base}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _free(fd, path):
                raise FolderInUseError(f"{target}: in use by another gflow process ({_holder(path)}); "
                                       "wait for it to finish or stop it")
            if _same_file(fd, path):  # not a file its last holder has just removed
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)
