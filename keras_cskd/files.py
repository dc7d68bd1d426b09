"""Atomic file writes (a reader sees the old file or the new one, never half of
one) and file checksums."""

import contextlib
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
