"""Atomic file writes (a reader sees the old file or the new one, never half of
one), exclusive locks and file checksums."""

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    Works for a file or a directory. If the block raises, the temporary is
    removed and whatever was at `path` before is left as it was.

    Example:

    >>> with atomic_path("workdir/student.keras") as tmp:
    ...     student.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = staging / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            # A directory cannot be replaced in one step: move the old one
            # aside first, and put it back if the swap fails.
            old = staging / "old"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def exclusive(path):
    """Holds an exclusive lock on the file `path` (created if missing) for the
    block: another process or thread entering it with the same path waits
    until this one leaves (`fcntl.flock`; on a shared filesystem, one that
    supports it, such as NFSv4).

    Example:

    >>> with exclusive("teachers/cache.npy.lock"):
    ...     build_unless_complete()
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_nowait(path, create=True):
    """Like `exclusive`, but never waits: raises `BlockingIOError` at once when
    another process holds the lock. Yields the file, open for reading and
    writing, so that a holder can leave a note in it (who it is).

    The kernel releases the lock of a process that dies, even by `kill -9`, so
    a lock left by a killed process is simply free. A holder may remove `path`
    before it leaves the block: a process that opened the removed file and
    locks it after the holder left tries again on the current file, so two
    processes never both hold the lock of one path.

    Args:
        path: the lock file.
        create: whether to create a missing file; if False, a missing file
            raises `FileNotFoundError` (a probe that must write nothing).

    Example:

    >>> with exclusive_nowait("runs/kd/.lock") as note:
    ...     note.write(f"PID {os.getpid()}")
    ...     note.flush()
    """
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    while True:
        handle = os.fdopen(os.open(path, flags, 0o644), "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BlockingIOError(
                errno.EWOULDBLOCK, f"{path} is locked by another process"
            ) from None
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()  # locked a file its holder had just removed
    try:
        yield handle
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def sha256(path):
    """The hex SHA-256 of a file, read in 1 MiB blocks.

    Example:

    >>> sha256("saved_models/digits_teacher.keras")
    '...'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
