"""Files a run owns: atomic writes (results, masks, sparse deltas), the folder's advisory lock, leftovers of
a killed write, and content digests of the files a run reads (its resume key's contents)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "FolderBusy", "folder_lock", "clean_stray", "digest", "unchanged", "LOCK"]

LOCK = ".lock"  # in a run folder: the advisory lock its one writer holds (empty when nobody holds it)
STRAY = ".*.tmp"  # what `atomic_path` leaves behind when its process is killed mid-write


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step, on error it is
    removed, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names it (one line)."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder``'s advisory lock (``fcntl.flock`` on ``<folder>/.lock``, which names the holder's pid
    while held) for the block; FolderBusy at once when another process holds it. The lock goes with the
    process: a killed holder leaves no lock behind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{folder} is in use by process {holder} (one process writes a run folder at a "
                             "time)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it: the file stays, empty (a finished folder's bytes stay put)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_stray(folder: str | Path, subfolders: tuple[str, ...] = ("cells", "masks", "deltas")) -> list[Path]:
    """Remove the temporary files a killed `atomic_path` left in ``folder`` and its ``subfolders``; call it
    only while holding the folder's lock (no writer of this folder is running then). The removed paths."""
    removed = []
    for where in (Path(folder), *(Path(folder) / s for s in subfolders)):
        for tmp in where.glob(STRAY) if where.is_dir() else ():
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def digest(path: str | Path) -> dict:
    """What a resume compares a file by: size and mtime (the fast path) and the sha256 of its bytes."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def unchanged(recorded: dict, path: str | Path) -> bool:
    """True when ``path`` still holds the bytes ``recorded`` (a `digest`): same size and mtime, or else the
    same sha256; False when it is gone, unreadable or different."""
    try:
        st = Path(path).stat()
        if st.st_size == recorded.get("size") and st.st_mtime_ns == recorded.get("mtime_ns"):
            return True
        return st.st_size == recorded.get("size") and digest(path)["sha256"] == recorded.get("sha256")
    except OSError:
        return False

