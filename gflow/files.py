"""Files that are either complete or absent: atomic writes and folder swaps.

Everything gflow writes goes through here. A file is written under a temporary name in
its own folder and renamed onto its path (a rename within one file system is atomic); a
folder is built aside and swapped into place. An interrupt at any point leaves the old
target or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


@contextlib.contextmanager
def _moved_aside(folder: str):
    """Move `folder` out of its path into a hidden trash folder, deleted on exit."""
    trash = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(folder)), prefix=".old-")
    try:
        os.replace(folder, os.path.join(trash, "old"))
        yield
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def remove_folder(folder: str | os.PathLike) -> None:
    """Delete a folder by first moving it aside: an interrupt never leaves half of it."""
    with _moved_aside(os.fspath(folder)):
        pass


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `new` at `target`, replacing an old one only then."""
    new, target = os.fspath(new), os.fspath(target)
    if not os.path.exists(target):
        os.replace(new, target)
        return
    with _moved_aside(target):
        os.replace(new, target)
