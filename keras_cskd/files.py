"""Durable, atomic file writes (a reader sees the old file or the new one, never
half of one, and a written file survives a crash), exclusive locks, file
checksums, the fault-injection hook that tests crash consistency with, and the
files the package ships (`shipped`)."""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

# `KIND:N` (or `N`, any kind) kills this process with SIGKILL right before its
# Nth file operation of that kind; the kinds are `FILE_OPERATIONS`. For tests.
KILL_AT_FILE_OP = "KERAS_CSKD_KILL_AT_FILE_OP"
FILE_OPERATIONS = ("write", "fsync", "rename", "remove")
_operation_counts = {}


def _file_operation(kind):
    """Counts a file operation about to happen; the `KILL_AT_FILE_OP` hook."""
    target = os.environ.get(KILL_AT_FILE_OP)
    if not target:
        return
    target_kind, _, number = target.rpartition(":")
    key = target_kind or "any"
    if target_kind and target_kind != kind:
        return
    _operation_counts[key] = _operation_counts.get(key, 0) + 1
    if _operation_counts[key] == int(number):
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    Works for a file or a directory. What the block wrote is flushed to disk
    (`fsync`) before the move, and the move itself after it. If the block
    raises, the temporary is removed and whatever was at `path` before is
    left as it was.

    Example:

    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> with atomic_path("student.keras") as tmp:
    ...     student.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = staging / path.name
    try:
        yield tmp
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            _replace_directory(tmp, path)
        else:
            replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        remove_tree(staging)


def write_text(path, text):
    """Writes `text` to `path` atomically and durably."""
    write_bytes(path, text.encode())


def write_bytes(path, data):
    """Writes `data` to `path` atomically and durably.

    Example:

    >>> write_bytes("state.bin", b"complete or absent")
    """
    with atomic_path(path) as tmp:
        write_new(tmp, data)


def write_new(path, data):
    """Writes `data` (bytes or text) to the new file `path`, as part of what an
    `atomic_path` block stages (which flushes it to disk and moves it in)."""
    data = data.encode() if isinstance(data, str) else data
    _file_operation("write")
    with open(path, "wb") as file:
        file.write(data)


def replace(source, target):
    """`os.replace`, counted by the fault-injection hook."""
    _file_operation("rename")
    os.replace(source, target)


def _replace_directory(new, path):
    """Puts the directory `new` at `path` in one step where the system can
    swap two paths (Linux's `renameat2(RENAME_EXCHANGE)`); elsewhere it moves
    the old one aside first, and back if the second move fails."""
    _file_operation("rename")
    if _exchange(new, path):
        return
    old = new.with_name("old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise


def _exchange(a, b):
    """Swaps the paths `a` and `b` atomically; False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not sys.platform.startswith("linux") or not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a filesystem or kernel without the exchange
    raise OSError(code, os.strerror(code), str(b))


def remove_tree(path):
    """Removes a file or directory tree if it exists (a killed removal leaves
    part of it, which the next removal finishes)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    _file_operation("remove")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_tree(path):
    """Flushes a file, or every file and directory under `path`, to disk."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for entry in sorted(path.iterdir()):
            fsync_tree(entry)
        fsync_directory(path)
    elif path.is_file():
        _fsync(path, os.O_RDONLY)


def fsync_directory(path):
    """Flushes a directory's entries (files created, renamed or removed in
    it) to disk."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path, flags):
    _file_operation("fsync")
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def exclusive(path):
    """Holds an exclusive lock on the file `path` (created if missing) for the
    block: another process or thread entering it with the same path waits
    until this one leaves (`fcntl.flock`; on a shared filesystem, one that
    supports it, such as NFSv4).

    Example:

    ```python
    with exclusive("teachers/cache.npy.lock"):
        build_unless_complete()
    ```
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

    ```python
    with exclusive_nowait("runs/kd/.lock") as note:
        note.write(f"PID {os.getpid()}")
        note.flush()
    ```
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


# Files the package ships (the digits teacher, the default run's config), so an
# installed wheel runs the default job outside a checkout.
ASSETS = Path(__file__).parent / "assets"


def shipped(path):
    """`path`, or the package's own copy of it when `path` is missing here.

    A relative path that does not exist from the working directory and names
    a file in `keras_cskd/assets/` (`saved_models/digits_teacher.keras`) is
    that file: the default config finds its teacher in an installed wheel.

    Example:

    >>> shipped("saved_models/digits_teacher.keras").name
    'digits_teacher.keras'
    """
    path = Path(path)
    if path.is_absolute() or path.exists() or not (ASSETS / path.name).is_file():
        return path
    return ASSETS / path.name


def sha256(path):
    """The hex SHA-256 of a file, read in 1 MiB blocks.

    Example:

    >>> write_bytes("abc.txt", b"abc")
    >>> sha256("abc.txt")
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
