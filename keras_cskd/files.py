"""Atomic file writes (a reader sees the old file or the new one, never half of
one), exclusive locks and file checksums."""

import contextlib
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
