"""A run stopped right after any of its checkpoints, or killed at any file
operation of a save, resumes and ends as the uninterrupted run: the same
student bit for bit, the same CSV log, history and summary."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import workers

from keras_cskd import checkpointing, files, training
from keras_cskd import config as config_module

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "saved_models" / "digits_teacher.keras"
STEPS = 5  # steps an epoch: 1257 digits in batches of 256
WRITE = checkpointing.write  # unpatched


class Killed(Exception):
    """Stands in for the SIGKILL of `checkpointing.KILL_AFTER_SAVE` in-process."""


def digits_config(**overrides):
    """Two deterministic epochs of 5 steps, a checkpoint after every step."""
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.update(
        epochs=2,
        deterministic=True,
        checkpoint_every_steps=1,
        verbose="0",
    )
    config.export.formats = ""
    config.data.batch_size = 256
    config.update(overrides)
    return config


def run_until_save(config, workdir, saves, monkeypatch):
    """Runs `config` until its `saves`th checkpoint is written, then stops as
    the `KILL_AFTER_SAVE` hook does; returns the checkpoint's (epoch, step)."""

    def kill():
        raise Killed

    with monkeypatch.context() as patch:
        patch.setenv(checkpointing.KILL_AFTER_SAVE, str(saves))
        patch.setattr(checkpointing, "_saves", 0)
        patch.setattr(checkpointing, "_kill", kill)
        with pytest.raises(Killed):
            training.run(config, workdir)
    return position(workdir)


def position(workdir):
    metadata, _ = checkpointing.load(Path(workdir) / "checkpoint")
    return metadata["epoch"], metadata["step"]


def assert_same_run(workdir, reference):
    """The same student bitwise, CSV log and summary (but the wall time)."""
    weights = [
        keras.saving.load_model(Path(w) / "student.keras").get_weights()
        for w in (workdir, reference)
    ]
    for resumed, uninterrupted in zip(*weights, strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)
    logs = [(Path(w) / "log.csv").read_text() for w in (workdir, reference)]
    assert logs[0] == logs[1]
    summaries = [
        json.loads((Path(w) / "summary.json").read_text()) for w in (workdir, reference)
    ]
    for summary in summaries:
        del summary["wall_time_s"]
    assert summaries[0] == summaries[1]
    assert not (Path(workdir) / "checkpoint").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of `digits_config()`."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    training.run(digits_config(), workdir)
    return workdir


@pytest.mark.large
def test_a_run_resumes_from_a_checkpoint_at_every_position(
    tmp_path, monkeypatch, reference
):
    """One run stopped after a checkpoint at each position in turn, resuming
    from each: the first, a middle and the last step of an epoch, and the end
    of an epoch with and without step checkpoints (and of the last epoch)."""
    workdir, every_step = tmp_path / "run", digits_config()
    assert run_until_save(every_step, workdir, 1, monkeypatch) == (0, 1)
    assert run_until_save(every_step, workdir, 2, monkeypatch) == (0, 3)
    assert run_until_save(every_step, workdir, 3, monkeypatch) == (1, 0)
    assert run_until_save(every_step, workdir, STEPS, monkeypatch) == (1, STEPS)
    epoch_ends = digits_config(checkpoint_every_steps=0)
    assert run_until_save(epoch_ends, workdir, 1, monkeypatch) == (2, 0)
    training.run(epoch_ends, workdir)
    assert_same_run(workdir, reference)


@pytest.mark.large
def test_a_resume_after_the_last_step_does_the_end_of_the_epoch_once(
    tmp_path, monkeypatch, reference
):
    """A kill after the epoch's log row but before its checkpoint: the row is
    not logged twice."""
    workdir = tmp_path / "run"
    assert run_until_save(digits_config(), workdir, STEPS, monkeypatch) == (0, STEPS)
    rows = (reference / "log.csv").read_text().splitlines(keepends=True)
    (workdir / "log.csv").write_text("".join(rows[:2]))  # as if logged, then killed
    training.run(digits_config(), workdir)
    assert_same_run(workdir, reference)


SETUPS = {
    "teacher_cache": {"augmentation": "digits_shift", "cache_teacher_logits": True},
    "two_views": {"two_views": True},
}


@pytest.mark.large
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_run_on_other_inputs_resumes_mid_epoch(tmp_path, monkeypatch, setup):
    teacher = shutil.copy(TEACHER, tmp_path / "teacher.keras")  # its cache beside it

    def config():
        config = digits_config()
        config.teacher.path = str(teacher)
        config.data.update(SETUPS[setup])
        return config

    training.run(config(), tmp_path / "uninterrupted")
    workdir = tmp_path / "run"
    assert run_until_save(config(), workdir, 3, monkeypatch) == (0, 3)
    training.run(config(), workdir)
    assert_same_run(workdir, tmp_path / "uninterrupted")


def train_cli(workdir, *args, kill_after_save=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kill_after_save:
        env[checkpointing.KILL_AFTER_SAVE] = str(kill_after_save)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}", *args]
        + ["--config.data.batch_size=256", "--config.checkpoint_every_steps=1"]
        + ["--config.deterministic=True", "--config.epochs=2", "--config.verbose=0"]
        + ["--config.export.formats="],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.large
def test_a_mirrored_run_killed_after_its_last_and_middle_steps_resumes(tmp_path):
    """`kill -9` (the hook's SIGKILL) right after a checkpoint, under
    MirroredStrategy on two logical CPUs."""
    mirrored = ["--logical_cpus=2", "--config.strategy=mirrored"]
    workdir = tmp_path / "run"
    for saves, expected in ((STEPS, (0, STEPS)), (4, (1, 3))):
        killed = train_cli(workdir, *mirrored, kill_after_save=saves)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert position(workdir) == expected
    resumed = train_cli(workdir, *mirrored)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout
    uninterrupted = train_cli(tmp_path / "uninterrupted", *mirrored)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert_same_run(workdir, tmp_path / "uninterrupted")


def multiworker_cli(workdir, kill_after_save=None):
    """Two train.py workers of one MultiWorkerMirroredStrategy on 127.0.0.1."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kill_after_save:
        env[checkpointing.KILL_AFTER_SAVE] = str(kill_after_save)
    return workers.start(
        [sys.executable, ROOT / "train.py", f"--workdir={workdir}"]
        + ["--config.data.batch_size=256", "--config.checkpoint_every_steps=1"]
        + ["--config.deterministic=True", "--config.epochs=2", "--config.verbose=0"]
        + ["--config.export.formats=", "--config.strategy=multiworker"],
        cwd=ROOT,
        env=env,
    )


@pytest.mark.large
def test_a_multiworker_run_killed_after_a_checkpoint_resumes(tmp_path):
    """Both workers killed right after their 3rd checkpoint (mid-epoch) resume
    from the chief's and end with the uninterrupted student."""
    workdir = tmp_path / "run"
    killed = multiworker_cli(workdir, kill_after_save=3)
    for process in killed:
        process.communicate(timeout=600)
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2
    assert position(workdir) == (0, 3)
    workers.finish(multiworker_cli(workdir), timeout=600)
    workers.finish(multiworker_cli(tmp_path / "uninterrupted"), timeout=600)
    assert json.loads((workdir / "summary.json").read_text())["replicas"] == 2
    assert_same_run(workdir, tmp_path / "uninterrupted")
    for run in (workdir, tmp_path / "uninterrupted"):  # no worker scratch left
        assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def write_killed_at(number, directory, arrays, metadata):
    """`checkpointing.write` in a forked child that `files.KILL_AT_FILE_OP`
    kills right before its `number`th file operation; whether it was killed."""
    child = os.fork()
    if child == 0:  # no TensorFlow here: the arrays are NumPy already
        status = 1
        try:
            os.environ[files.KILL_AT_FILE_OP] = str(number)
            files._operation_counts.clear()
            WRITE(directory, arrays, metadata)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def file_operations(directory, arrays, metadata, monkeypatch):
    """The kinds of the file operations of one save, in order (on a copy)."""
    kinds = []
    copy = directory.with_name("dry_run")
    shutil.copytree(directory, copy)
    with monkeypatch.context() as patch:
        patch.setattr(files, "_file_operation", kinds.append)
        WRITE(copy, arrays, metadata)
    shutil.rmtree(copy)
    return kinds


@pytest.mark.large
def test_a_kill_at_any_file_operation_of_a_save_resumes_from_the_newest_checkpoint(
    tmp_path, monkeypatch, reference
):
    """The save at the end of epoch 1 (its log row written, its checkpoint
    not) is killed at each of its writes, fsyncs, renames and removals in
    turn: the checkpoint after the kill is the step-5 one until the pointer
    moves, then the epoch's; never none, never another. Runs resumed from the
    last kill before and the last kill after the pointer's move end as the
    uninterrupted run."""
    workdir = tmp_path / "run"
    assert run_until_save(digits_config(), workdir, STEPS, monkeypatch) == (0, STEPS)
    old_metadata, old_arrays = checkpointing.load(workdir / "checkpoint")
    killed = []

    def write(directory, arrays, metadata):
        if not killed:  # the first save of the resumed run: (1, 0)
            kinds = file_operations(directory, arrays, metadata, monkeypatch)
            assert {"write", "fsync", "rename", "remove"} <= set(kinds)
            before = tmp_path / "before"
            shutil.copytree(workdir, before)
            for number in range(1, len(kinds) + 2):
                was_killed = write_killed_at(number, directory, arrays, metadata)
                assert was_killed == (number <= len(kinds))
                killed.append(tmp_path / f"killed_at_{number}")
                shutil.copytree(workdir, killed[-1])
                shutil.rmtree(workdir)
                shutil.copytree(before, workdir)
            new = (metadata, arrays)
            killed.append(new)
        WRITE(directory, arrays, metadata)

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing, "write", write)
        training.run(digits_config(), workdir)
    assert_same_run(workdir, reference)
    new_metadata, new_arrays = killed.pop()
    positions = []
    for copy in killed:
        metadata, arrays = checkpointing.load(copy / "checkpoint")
        positions.append((metadata["epoch"], metadata["step"]))
        expected = old_arrays if positions[-1] == (0, STEPS) else new_arrays
        for value, saved in zip(arrays, expected, strict=True):
            np.testing.assert_array_equal(value, saved)
    moved = positions.index((1, 0))
    assert moved > 0 and positions == [(0, STEPS)] * moved + [(1, 0)] * (
        len(positions) - moved
    )
    for resumed in (killed[moved - 1], killed[-2]):
        training.run(digits_config(), resumed)
        assert_same_run(resumed, reference)


def replace_directory_killed_at(number, path, files_in_it):
    """Replaces the directory `path` through `files.atomic_path` in a forked
    child killed right before its `number`th file operation; whether killed."""
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.environ[files.KILL_AT_FILE_OP] = str(number)
            files._operation_counts.clear()
            with files.atomic_path(path) as staging:
                staging.mkdir()
                for name, text in files_in_it.items():
                    files.write_new(staging / name, text)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_directory_replaced_atomically_is_never_missing_when_killed(tmp_path):
    """At every file operation of `atomic_path` over a directory (an export),
    a kill leaves the old directory whole or the new one, nothing else."""
    old, new = {"a": "old a", "b": "old b"}, {"a": "new a", "c": "new c"}
    outcomes = []
    for number in range(1, 20):
        path = tmp_path / str(number) / "export"
        path.mkdir(parents=True)
        for name, text in old.items():
            (path / name).write_text(text)
        killed = replace_directory_killed_at(number, path, new)
        found = {p.name: p.read_text() for p in path.iterdir()}
        assert found in (old, new), found
        outcomes.append(("old" if found == old else "new", killed))
        if not killed:
            break
    assert outcomes[0] == ("old", True) and outcomes[-1] == ("new", False)
    kinds = [kind for kind, _ in outcomes]
    swapped = kinds.index("new")
    assert kinds == ["old"] * swapped + ["new"] * (len(kinds) - swapped)
