"""Resumable training: atomic, verified checkpoints of everything that changes."""

import hashlib
import json
from pathlib import Path

import keras
import numpy as np

from keras_cskd import files

STATE_FILE = "state.npz"
METADATA_FILE = "state.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint that fails its integrity check."""


def trained_variables(trainer, frozen=()):
    """Every variable a training step changes: weights, BatchNorm statistics,
    random-seed states, the optimizer's slots and step, the epoch counter;
    not those of `frozen` models (the teacher)."""
    skip = {id(v) for model in frozen for v in model.variables}
    variables = [v for v in trainer.variables if id(v) not in skip]
    if trainer.optimizer is not None:
        variables += list(trainer.optimizer.variables)
    return variables


def save(directory, trainer, epoch, step, history, frozen=()):
    """Writes a checkpoint of `trainer` at `step` batches into `epoch` (0-based)
    as one atomic directory replacement: the previous checkpoint stays whole
    until the new one is complete.

    Example:

    >>> save("workdir/checkpoint", distiller, epoch=3, step=0, history={},
    ...      frozen=[teacher])
    """
    variables = trained_variables(trainer, frozen)
    with files.atomic_path(directory) as staging:
        staging.mkdir()
        np.savez(staging / STATE_FILE, *[np.asarray(v.numpy()) for v in variables])
        metadata = {
            "epoch": int(epoch),
            "step": int(step),
            "history": history,
            "variables": [v.path for v in variables],
            "sha256": _sha256(staging / STATE_FILE),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))


def restore(directory, trainer, frozen=()):
    """Loads the checkpoint in `directory` into `trainer`, if there is one.

    Returns:
        `(epoch, step, history)` to resume from, or `None` without a checkpoint.

    Raises:
        CorruptCheckpointError: if the files are missing, truncated, altered or
            belong to another model; the message says how to start over.
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    hint = f"Delete {directory} to start the run over."
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
        if _sha256(directory / STATE_FILE) != metadata["sha256"]:
            raise CorruptCheckpointError(
                f"The checkpoint {directory} is corrupt: {STATE_FILE} does not "
                f"match its checksum. {hint}"
            )
        with np.load(directory / STATE_FILE) as arrays:
            values = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
    except CorruptCheckpointError:
        raise
    except Exception as error:
        raise CorruptCheckpointError(
            f"The checkpoint {directory} is unreadable ({type(error).__name__}: "
            f"{error}). {hint}"
        ) from None
    if trainer.optimizer is not None and not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)
    variables = trained_variables(trainer, frozen)
    paths = [v.path for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    shapes_match = shapes == [value.shape for value in values]
    if paths != metadata["variables"] or not shapes_match:
        raise CorruptCheckpointError(
            f"The checkpoint {directory} belongs to another model or optimizer "
            f"configuration. {hint}"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return metadata["epoch"], metadata["step"], metadata["history"]


class Checkpointer(keras.callbacks.Callback):
    """Saves a checkpoint every `every_steps` steps (if > 0) and after every
    epoch, and keeps the per-epoch history that a resumed run continues.

    Args:
        directory: where the checkpoint lives.
        every_steps: save after this many steps within an epoch; 0 saves at
            epoch ends only.
        frozen: models whose variables are not saved (the teacher).
        history: the per-epoch logs of the epochs already done.
        first_step: the step within the first epoch this `fit` starts at.
    """

    def __init__(self, directory, every_steps=0, frozen=(), history=None, first_step=0):
        super().__init__()
        self.directory, self.every_steps, self.frozen = directory, every_steps, frozen
        self.history = history or {}
        self.first_step = first_step
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        if self.every_steps and step % self.every_steps == 0:
            save(
                self.directory, self.model, self._epoch, step, self.history, self.frozen
            )

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.first_step = 0
        save(self.directory, self.model, epoch + 1, 0, self.history, self.frozen)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
