"""Resumable training: crash-consistent, verified checkpoints of everything
that changes.

A checkpoint directory holds numbered checkpoints and a pointer to the newest
complete one:

    checkpoint/
        latest        the name of the newest complete checkpoint, e.g. 00000007
        00000007/     state.npz (the variables), state.json (epoch, step,
                      history, config, the teacher's SHA-256, checksums)

A save writes the next number beside the pointed one (staged, flushed to disk,
then renamed into place), then replaces `latest` (the same way), then removes
the rest. Killed at any point, it leaves `latest` naming a complete checkpoint,
the old one or the new one; `restore` reads only that one and refuses it if
either file fails its checksum, and the next save removes whatever a killed
save left behind.
"""

import dataclasses
import hashlib
import io
import json
import os
import re
import signal
from pathlib import Path

import keras
import numpy as np

from keras_cskd import config as config_module
from keras_cskd import files

STATE_FILE = "state.npz"
METADATA_FILE = "state.json"
POINTER_FILE = "latest"
# For tests: SIGKILL this process right after its Nth checkpoint is saved.
KILL_AFTER_SAVE = "KERAS_CSKD_KILL_AFTER_CHECKPOINT"
_saves = 0


class CorruptCheckpointError(ValueError):
    """A checkpoint that fails its integrity check."""


@dataclasses.dataclass
class Resumed:
    """Where a restored checkpoint resumes: `step` batches into the 0-based
    `epoch`, with the `history` (per-epoch logs) of the epochs before it.
    A checkpoint taken within an epoch also holds that epoch's `logs` so far
    and its `metrics` state (`(variable path, value)` pairs)."""

    epoch: int
    step: int
    history: dict
    logs: dict | None = None
    metrics: list = dataclasses.field(default_factory=list)


def trained_variables(trainer, frozen=()):
    """Every variable a training step changes: weights, BatchNorm statistics,
    random-seed states, the optimizer's slots and step, the epoch counter;
    not those of `frozen` models (the teacher)."""
    skip = {id(v) for model in frozen for v in model.variables}
    variables = [v for v in trainer.variables if id(v) not in skip]
    if trainer.optimizer is not None:
        variables += list(trainer.optimizer.variables)
    return variables


def save(directory, trainer, epoch, step, history, frozen=(), **metadata):
    """Saves a checkpoint of `trainer` at `step` batches into `epoch` (0-based).

    A checkpoint within an epoch (`step > 0`) also keeps the epoch's metric
    state and logs, so that the resumed epoch logs the same means. Keyword
    arguments (`config`, a JSON-able dict; `teacher_sha256`) are kept with it,
    so that a resume with another config or teacher is refused.

    Example:

    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = keras_cskd.Distiller(teacher, student, "kd")
    >>> distiller.compile(optimizer="sgd")
    >>> save("workdir/checkpoint", distiller, epoch=3, step=0, history={},
    ...      frozen=[teacher])
    """
    variables = trained_variables(trainer, frozen)
    metrics = list(trainer.metrics_variables) if step else []
    logs = _floats(trainer.get_metrics_result()) if step else None
    write(
        directory,
        [np.asarray(v.numpy()) for v in variables + metrics],
        {
            "epoch": int(epoch),
            "step": int(step),
            "history": history,
            "logs": logs,
            "variables": [v.path for v in variables],
            "metrics": [v.path for v in metrics],
            **metadata,
        },
    )
    _kill_after_save_for_tests()


def write(directory, arrays, metadata):
    """Writes `arrays` and `metadata` as the next checkpoint in `directory`,
    crash-consistently (see the module's docstring); no TensorFlow involved."""
    directory = Path(directory)
    current = _pointed(directory)
    if current is not None:  # else keep an unversioned (0.1) checkpoint till then
        _remove_all_but(directory, current)
    name = f"{int(current or 0) + 1:08d}"
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    state = buffer.getvalue()
    metadata = {**metadata, "sha256": hashlib.sha256(state).hexdigest()}
    metadata["metadata_sha256"] = _digest(metadata)
    with files.atomic_path(directory / name) as staging:
        staging.mkdir()
        files.write_new(staging / STATE_FILE, state)
        files.write_new(staging / METADATA_FILE, json.dumps(metadata, indent=1))
    files.write_text(directory / POINTER_FILE, name + "\n")
    _remove_all_but(directory, name)


def restore(
    directory, trainer, frozen=(), config=None, teacher_file=None, steps_per_epoch=None
):
    """Loads the newest complete checkpoint in `directory` into `trainer`.

    Call it in the strategy's scope: the optimizer's variables are built here.

    Returns:
        A `Resumed`, or `None` when no save completed.

    Raises:
        CorruptCheckpointError: if a file is missing, truncated or altered, or
            belongs to another model; the message says how to start over.
        ValueError: if `config` differs from the checkpoint's in a key that
            changes training (see `config.changed_keys`; the keys are named),
            its `epochs` are fewer than the checkpoint has started, or
            `teacher_file` is not the teacher the checkpoint was made with,
            or its step is past an epoch of `steps_per_epoch` steps (other
            training data) or lacks the logs of the epoch whose steps all ran.
    """
    loaded = load(directory)
    if loaded is None:
        return None
    metadata, values = loaded
    _check_same_config(directory, metadata.get("config"), config)
    _check_same_teacher(directory, metadata.get("teacher_sha256"), teacher_file)
    _check_epochs_left(directory, metadata, (config or {}).get("epochs"))
    if trainer.optimizer is not None and not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)
    variables = trained_variables(trainer, frozen)
    _check_same_variables(directory, variables, metadata["variables"], values)
    _check_step(directory, metadata, steps_per_epoch)
    for variable, value in zip(variables, values, strict=False):
        variable.assign(value)
    return Resumed(
        metadata["epoch"],
        metadata["step"],
        metadata["history"],
        metadata["logs"],
        list(zip(metadata["metrics"], values[len(variables) :], strict=True)),
    )


def load(directory):
    """The metadata and arrays of the newest complete checkpoint in
    `directory`, both verified by checksum; `None` when no save completed.

    Example:

    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student.compile(optimizer="sgd", loss="mse")
    >>> save("workdir/checkpoint", student, epoch=3, step=20, history={})
    >>> metadata, arrays = load("workdir/checkpoint")
    >>> metadata["epoch"], metadata["step"]
    (3, 20)
    """
    directory = Path(directory)
    name = _pointed(directory)
    if name is None and (directory / METADATA_FILE).exists():
        return _read_unversioned(directory)
    return None if name is None else _read(directory / name, _hint(directory))


def _read_unversioned(directory):
    """A checkpoint written by keras-cskd 0.1: its files directly in
    `directory`, with no metadata checksum and no metric state. It resumes
    (the epoch's logged means then cover the resumed steps only), and the next
    save writes the numbered layout."""
    metadata, values = _read(directory, _hint(directory), unversioned=True)
    metadata.setdefault("logs", None)
    metadata.setdefault("metrics", [])
    return metadata, values


def merge_metrics(trainer, saved):
    """Adds a checkpoint's metric state (`Resumed.metrics`) to `trainer`'s:
    called after the first resumed step, it makes the epoch's logged means
    those of the whole epoch. Metric variables are sums (Keras's default
    aggregation), and a sum's order does not change it on one device."""
    variables = trainer.metrics_variables
    paths = [_unnumbered(v.path) for v in variables]
    if paths != [_unnumbered(path) for path, _ in saved]:
        raise CorruptCheckpointError(
            f"The checkpoint's metrics ({[path for path, _ in saved]}) are not "
            f"the model's ({paths}): delete the checkpoint to start over."
        )
    for variable, (_, value) in zip(variables, saved, strict=True):
        variable.assign(variable.numpy() + value)


def _read(checkpoint, hint, unversioned=False):
    """The metadata and arrays of `checkpoint`, both checked by checksum (the
    metadata's own unless `unversioned`: 0.1's had none)."""
    try:
        metadata = json.loads((checkpoint / METADATA_FILE).read_text())
        digest = metadata.pop("metadata_sha256", None)
        if not unversioned and digest != _digest(metadata):
            raise CorruptCheckpointError(
                f"The checkpoint {checkpoint} is corrupt: {METADATA_FILE} does "
                f"not match its checksum. {hint}"
            )
        if files.sha256(checkpoint / STATE_FILE) != metadata["sha256"]:
            raise CorruptCheckpointError(
                f"The checkpoint {checkpoint} is corrupt: {STATE_FILE} does not "
                f"match its checksum. {hint}"
            )
        with np.load(checkpoint / STATE_FILE) as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    except CorruptCheckpointError:
        raise
    except Exception as error:
        raise CorruptCheckpointError(
            f"The checkpoint {checkpoint} is unreadable ({type(error).__name__}: "
            f"{error}). {hint}"
        ) from None
    return metadata, values


def _floats(logs):
    """Logs as the floats `fit` hands its callbacks at the end of an epoch."""
    return {key: float(keras.ops.convert_to_numpy(v)) for key, v in logs.items()}


def _digest(metadata):
    """The SHA-256 of the metadata's canonical JSON (without its own digest)."""
    return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()


def _pointed(directory):
    """The name of the newest complete checkpoint, or `None`."""
    pointer = Path(directory) / POINTER_FILE
    return pointer.read_text().strip() if pointer.exists() else None


def _remove_all_but(directory, name):
    """Removes from `directory` everything but the pointer and the checkpoint
    `name`: the previous checkpoint, and what killed saves left (staging
    directories, a checkpoint written but never pointed to)."""
    if not directory.exists():
        return
    for entry in sorted(directory.iterdir()):
        if entry.name not in (POINTER_FILE, name):
            files.remove_tree(entry)


def _hint(directory):
    return f"Delete {directory} to start the run over."


def _check_same_variables(directory, variables, saved_paths, values):
    paths = [_unnumbered(v.path) for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    saved_shapes = [value.shape for value in values[: len(saved_paths)]]
    if paths != [_unnumbered(p) for p in saved_paths] or shapes != saved_shapes:
        raise CorruptCheckpointError(
            f"The checkpoint {directory} belongs to another model or optimizer "
            f"configuration. {_hint(directory)}"
        )


def _check_same_config(directory, saved, current):
    if saved is None or current is None:
        return
    changes = config_module.changed_keys(saved, current)
    if changes:
        listed = "; ".join(
            f"{key}: {old!r} in the checkpoint, {new!r} now"
            for key, (old, new) in changes.items()
        )
        raise ValueError(
            f"The checkpoint {directory} was made with another config ({listed}). "
            "Resume with the same config, or start over with --overwrite or "
            "another --workdir."
        )


def _check_epochs_left(directory, metadata, epochs):
    """Refuses a checkpoint past the configured end of training."""
    started = metadata["epoch"] + (1 if metadata["step"] else 0)
    if epochs is not None and started > epochs:
        raise ValueError(
            f"The checkpoint {directory} is {started} epochs in, more than "
            f"epochs={epochs}: resume with --config.epochs={started} or more, or "
            "start over with --overwrite or another --workdir."
        )


def _check_step(directory, metadata, steps_per_epoch):
    """Refuses a step this run's epochs cannot resume from."""
    step = metadata["step"]
    if steps_per_epoch is not None and step > steps_per_epoch:
        raise ValueError(
            f"The checkpoint {directory} is at step {step} of an epoch of "
            f"{steps_per_epoch} steps: resume with the training data it was made "
            "with, or start over with --overwrite or another --workdir."
        )
    if step == steps_per_epoch and metadata.get("logs") is None:
        raise ValueError(
            f"The checkpoint {directory} was written by keras-cskd 0.1 after an "
            "epoch's last step, without the epoch's logs its end needs: delete it "
            "to start over (or resume from an earlier copy)."
        )


def last_good_checkpoint(directory):
    """What a rerun of a run stopped by a non-finite step starts from, in
    words (for the error that stops it)."""
    try:
        loaded = load(directory)
    except CorruptCheckpointError as error:
        return str(error)
    if loaded is None:
        return (
            "No checkpoint was written, so a rerun starts from the beginning once "
            "the cause is fixed."
        )
    metadata = loaded[0]
    return (
        f"The last good checkpoint, {directory} (epoch {metadata['epoch'] + 1}, "
        f"step {metadata['step']}), is kept: a rerun with the same config resumes "
        "from it; to change the config (e.g. the learning rate), start over with "
        "--overwrite."
    )


def _check_same_teacher(directory, saved_sha256, teacher_file):
    if saved_sha256 is None or teacher_file is None:
        return
    current = files.sha256(teacher_file)
    if current != saved_sha256:
        raise ValueError(
            f"The teacher {teacher_file} (sha256 {current}) is not the one the "
            f"checkpoint {directory} was made with (sha256 {saved_sha256}): put "
            "that teacher back, or start over with --overwrite or another --workdir."
        )


def _kill_after_save_for_tests():
    global _saves
    _saves += 1
    if os.environ.get(KILL_AFTER_SAVE) == str(_saves):
        _kill()


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


class Checkpointer(keras.callbacks.Callback):
    """Saves a checkpoint every `every_steps` steps (if > 0) and after every
    epoch, and keeps the per-epoch history that a resumed run continues.

    Put it last in the callback list: its end-of-epoch checkpoint then follows
    the epoch's logs (a kill between them redoes the end of the epoch).

    Args:
        directory: where the checkpoints live.
        every_steps: save after this many steps within an epoch; 0 saves at
            epoch ends only.
        frozen: models whose variables are not saved (the teacher).
        history: the per-epoch logs of the epochs already done.
        first_step: the step within the first epoch this `fit` starts at.
        config: the run's config as a JSON-able dict, saved with each checkpoint.
        teacher_file: the teacher's file, whose SHA-256 each checkpoint keeps.
        metrics: the metric state of a resumed epoch (`Resumed.metrics`),
            added to the model's after the first step.

    Example:

    ```python
    model.fit(data, epochs=10, callbacks=[Checkpointer("run/checkpoint", 100)])
    ```
    """

    def __init__(
        self,
        directory,
        every_steps=0,
        frozen=(),
        history=None,
        first_step=0,
        config=None,
        teacher_file=None,
        metrics=None,
    ):
        super().__init__()
        self.directory, self.every_steps, self.frozen = directory, every_steps, frozen
        self.history = history or {}
        self.first_step = first_step
        self.config = config
        self.teacher_sha256 = files.sha256(teacher_file) if teacher_file else None
        self.metrics = metrics
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.metrics:
            merge_metrics(self.model, self.metrics)
        self.metrics = None
        step = self.first_step + batch + 1
        if self.every_steps and step % self.every_steps == 0:
            self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.first_step = 0
        self._save(epoch + 1, 0)

    def _save(self, epoch, step):
        save(
            self.directory,
            self.model,
            epoch,
            step,
            self.history,
            self.frozen,
            config=self.config,
            teacher_sha256=self.teacher_sha256,
        )


def _unnumbered(path):
    """A variable path without Keras's `_<n>` suffixes, which depend on how many
    layers of a kind the process built before (`dense_3/kernel` -> `dense/kernel`)."""
    return re.sub(r"_\d+(?=/|$)", "", path)
