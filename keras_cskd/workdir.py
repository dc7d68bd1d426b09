"""A run's workdir: the manifest of what a run writes there, the lock that keeps
a second run out, and `--overwrite`, which deletes a run's own files only.

A directory is a run's workdir when it holds a run's `manifest.json` (a run
writes it before anything else), or, for one written before manifests existed,
when it holds nothing but names a run writes (and, for `--overwrite`, a
keras-cskd `config.json`).
`--overwrite` deletes what the manifest lists, nested runs (`seed_<n>/`,
`teacher/`) through their own manifests, and refuses a workdir that holds
anything else; a run never writes into a non-empty directory that holds no
run. docs/workdir.md lists every entry.

Example:

```python
check("runs/kd")  # before any work: refuses a workdir this run must not use
with claim("runs/kd"):  # locked, checked again, manifest written
    train()
```
"""

import contextlib
import fnmatch
import json
import os
import re
import shutil
import socket
from pathlib import Path

from keras_cskd import files

MANIFEST = "manifest.json"
LOCK = ".lock"
SCRATCH = ".worker_*"  # a non-chief worker's scratch (`training.build`)
# The files and directories a run writes; a new one must be added here.
RUN_FILES = (
    "config.json",
    "log.csv",
    "tensorboard",
    "checkpoint",
    "student.keras",
    "export",
    "summary.json",
)
SEEDS_FILES = ("seeds.json",)
LAYOUTS = {"run": "single run", "seeds": "multi-seed run (--seeds)"}
WRITTEN_BY = "keras_cskd"
_NESTED_RUN = re.compile(r"teacher|seed_-?\d+")


class WorkdirError(ValueError):
    """A workdir this run must not write: it holds other files, or another run."""


class WorkdirInUseError(WorkdirError):
    """A workdir whose lock another running process holds."""


def manifest(layout="run", runs=()):
    """What a run of `layout` (`"run"` or `"seeds"`) writes into its workdir.

    Returns a dict: `layout`, `entries` (names and `fnmatch` patterns, the
    temporaries of atomic writes included) and, among them, `runs`: nested
    runs' workdirs (`teacher`, `seed_<n>`), each with a manifest of its own.

    Example:

    >>> manifest("seeds", runs=["seed_0"])["entries"][:2]
    ['seeds.json', 'seed_0']
    """
    written = RUN_FILES if layout == "run" else SEEDS_FILES
    runs = sorted(runs)
    staging = [f".{name}.*" for name in (*written, MANIFEST)]  # files.atomic_path
    scratch = [SCRATCH] if layout == "run" else []
    entries = [*written, *runs, MANIFEST, LOCK, *staging, *scratch]
    return {"layout": layout, "entries": entries, "runs": runs}


def check(workdir, overwrite=False, layout="run", probe_lock=True):
    """Refuses a workdir that this run must not write; writes nothing.

    Args:
        workdir: the run's directory (it need not exist).
        overwrite: whether the run replaces the run the workdir holds.
        layout: `"run"`, or `"seeds"` for `training.run_seeds`'s workdir.
        probe_lock: refuse a workdir another process holds (a non-chief
            worker must not: its chief holds it).

    Returns:
        The manifest of the run the workdir holds (a new one when it is
        empty or missing).

    Raises:
        WorkdirError: the workdir holds files no run wrote (with
            `overwrite`, or without a manifest), a run of the other layout
            (without `overwrite`) or a finished single run (without
            `overwrite`).
        WorkdirInUseError: another process holds its lock.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file: choose a directory.")
    if probe_lock:
        with contextlib.suppress(FileNotFoundError), _locked(workdir, create=False):
            pass
    names = _names(workdir)
    recorded = _recorded(workdir)
    if recorded:
        held, foreign = recorded, _foreign(names, recorded)
    else:
        held, foreign = _recognised(workdir, names, layout, strict=overwrite)
    if foreign and (overwrite or not recorded):
        fix = (
            f"--overwrite deletes only a run's own files; move {foreign[0]!r} "
            "out, or choose another --workdir."
            if overwrite
            else "a run does not mix its files with others; choose an empty or "
            "new --workdir."
        )
        raise WorkdirError(
            f"{workdir} holds {foreign[0]!r}, which no keras-cskd run wrote: {fix}"
        )
    if held["layout"] != layout and not overwrite:
        raise WorkdirError(
            f"{workdir} holds a {LAYOUTS[held['layout']]}, not a {LAYOUTS[layout]}: "
            "pass --overwrite to replace it, or choose another --workdir."
        )
    if overwrite:  # every nested run must be a run, and free, before any delete
        for name in held["runs"]:
            if (workdir / name).exists():
                check(workdir / name, overwrite=True)
    elif layout == "run" and (workdir / "summary.json").exists():
        raise WorkdirError(
            f"{workdir} holds a finished run; pass --overwrite to replace it, or "
            "choose another --workdir."
        )
    return held


def claim(workdir, overwrite=False, layout="run", runs=(), chief=True):
    """Takes `workdir` for one run: locks it, checks it again (`check`),
    clears it with `overwrite` and writes its manifest.

    Only the chief of a multi-worker job claims the workdir; the other
    workers write only their scratch (`.worker_<n>`), and take nothing.

    Args:
        runs: the nested runs this run may write (`teacher`, `seed_<n>`).

    Returns:
        A `contextlib.ExitStack` holding the lock: close it (or use it as a
        context manager) when the run ends. A claim that ends with nothing
        in the workdir but its manifest and lock removes them (and the
        workdir, if it made it), so a run that failed at once leaves nothing.

    Example:

    ```python
    with claim("runs/kd", layout="seeds", runs=["seed_0", "seed_1"]):
        run_both_seeds()
    ```
    """
    stack = contextlib.ExitStack()
    if not chief:
        return stack
    workdir = Path(workdir)
    with contextlib.suppress(FileExistsError):
        workdir.mkdir(parents=True)
        stack.callback(_remove_if_empty, workdir)  # it made the workdir
    stack.enter_context(lock(workdir))
    stack.callback(_forget_if_empty, workdir)
    try:
        held = check(workdir, overwrite, layout, probe_lock=False)
        if overwrite:
            _clear(workdir, held, keep=(MANIFEST, LOCK, SCRATCH))
        runs = {*runs, *(() if overwrite else held["runs"])}
        record = {"written_by": WRITTEN_BY, **manifest(layout, runs)}
        files.write_text(workdir / MANIFEST, json.dumps(record, indent=2) + "\n")
    except BaseException:
        stack.close()
        raise
    return stack


@contextlib.contextmanager
def lock(workdir):
    """Holds `workdir`'s lock (`workdir/.lock`) for the block, or refuses at once.

    The lock file names its holder (`PID <pid> on <host>`) and is removed on
    release. The kernel frees the lock of a killed process; a lock file that
    still names a holder but is free is such a stale lock, and is taken over.

    Raises:
        WorkdirInUseError: another process holds it; the message names it.

    Example:

    ```python
    with lock(Path("runs/kd")):
        write_the_run()
    ```
    """
    path = Path(workdir) / LOCK
    with _locked(workdir) as note:
        stale = note.read().strip()
        if stale:
            print(f"Taking over {path} from {stale}, which ended without releasing it.")
        note.seek(0)
        note.truncate()
        note.write(f"PID {os.getpid()} on {socket.gethostname()}\n")
        note.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while held: see files.exclusive_nowait


@contextlib.contextmanager
def _locked(workdir, create=True):
    """`files.exclusive_nowait` on the workdir's lock, its refusal in a run's words."""
    path = Path(workdir) / LOCK
    with contextlib.ExitStack() as stack:
        try:
            note = stack.enter_context(files.exclusive_nowait(path, create))
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = path.read_text().strip()
            raise WorkdirInUseError(
                f"{workdir} is in use by the run of {holder or 'another process'} "
                f"(its lock: {path}): wait for it to end or stop it; two runs in "
                "one workdir would mix their files."
            ) from None
        yield note


def _names(workdir):
    return sorted(p.name for p in workdir.iterdir()) if workdir.is_dir() else []


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _foreign(names, held):
    return [name for name in names if not _matches(name, held["entries"])]


def _is_dir(path):
    return path.is_dir() and not path.is_symlink()


def _recorded(workdir):
    """The manifest `workdir/manifest.json` records, if it is a run's."""
    try:
        record = json.loads((Path(workdir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != WRITTEN_BY:
        return None
    if record.get("layout") not in LAYOUTS:
        return None
    entries, runs = record.get("entries", []), record.get("runs", [])
    return {"layout": record["layout"], "entries": entries, "runs": runs}


def _recognised(workdir, names, layout, strict):
    """For a workdir without a manifest: the manifest its entries show, and the
    entries it does not account for (fewest first, `layout` on a tie).

    A run's entries are recognised by name; nested runs must be runs too.
    `strict` (before deleting) counts plain run files as a run's only beside
    a keras-cskd `config.json` (a single run) or a `seed_<n>` run (seeds), so
    another program's `log.csv` is never deleted. The rest (the lock, the
    temporaries, worker scratch) is distinctive, and a new run's teacher and
    workers may write it before its chief claims the workdir.
    """
    nested = [
        name
        for name in names
        if _NESTED_RUN.fullmatch(name) and _is_run(workdir / name, strict)
    ]
    candidates = []
    for candidate in sorted(LAYOUTS, key=lambda kind: kind != layout):
        runs = [n for n in nested if (n == "teacher") == (candidate == "run")]
        held = manifest(candidate, runs)
        evidence = not strict or (
            _is_config(workdir / "config.json") if candidate == "run" else runs
        )
        written = RUN_FILES if candidate == "run" else SEEDS_FILES
        unowned = [MANIFEST] + ([] if evidence else list(written))
        owned = [entry for entry in held["entries"] if entry not in unowned]
        candidates.append((held, [n for n in names if not _matches(n, owned)]))
    return min(candidates, key=lambda pair: len(pair[1]))


def _is_run(path, strict):
    """Whether `path` is a run's workdir (an empty directory counts)."""
    if not _is_dir(path):
        return False
    if _recorded(path) is not None:
        return True
    return not _recognised(path, _names(path), "run", strict)[1]


def _is_config(path):
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"model", "loss", "data"} <= config.keys()


def _clear(workdir, held, keep):
    """Deletes the entries `held` lists (nested runs through their own), but
    those matching `keep`; `check` has refused anything else beforehand."""
    for entry in sorted(workdir.iterdir()):
        if _matches(entry.name, keep) or not _matches(entry.name, held["entries"]):
            continue
        if entry.name in held["runs"] and _is_dir(entry):
            _clear(entry, check(entry, overwrite=True), keep=())
            entry.rmdir()
        elif _is_dir(entry):
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _forget_if_empty(workdir):
    """Removes the manifest of a run that wrote nothing else."""
    if set(_names(workdir)) <= {MANIFEST, LOCK}:
        (workdir / MANIFEST).unlink(missing_ok=True)


def _remove_if_empty(workdir):
    with contextlib.suppress(OSError):
        workdir.rmdir()
