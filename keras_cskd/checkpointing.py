"""Resumable training: atomic, verified checkpoints of everything that changes."""

import json
import re
from pathlib import Path

import keras
import numpy as np

from keras_cskd import config as config_module
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


def save(directory, trainer, epoch, step, history, frozen=(), config=None):
    """Writes a checkpoint of `trainer` at `step` batches into `epoch` (0-based)
    as one atomic directory replacement: the previous checkpoint stays whole
    until the new one is complete. `config` (a JSON-able dict) is kept with it,
    so that a resume with another config is refused.

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
            "sha256": files.sha256(staging / STATE_FILE),
            "config": config,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))


def restore(directory, trainer, frozen=(), config=None):
    """Loads the checkpoint in `directory` into `trainer`, if there is one.

    Call it in the strategy's scope: the optimizer's variables are built here.

    Returns:
        `(epoch, step, history)` to resume from, or `None` without a checkpoint.

    Raises:
        CorruptCheckpointError: if the files are missing, truncated, altered or
            belong to another model; the message says how to start over.
        ValueError: if `config` differs from the checkpoint's in a key that
            changes training (see `config.changed_keys`); the keys are named.
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    hint = f"Delete {directory} to start the run over."
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
        if files.sha256(directory / STATE_FILE) != metadata["sha256"]:
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
    _check_same_config(directory, metadata.get("config"), config)
    if trainer.optimizer is not None and not trainer.optimizer.built:
        trainer.optimizer.build(trainer.trainable_variables)
    variables = trained_variables(trainer, frozen)
    paths = [_unnumbered(v.path) for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    shapes_match = shapes == [value.shape for value in values]
    if paths != [_unnumbered(p) for p in metadata["variables"]] or not shapes_match:
        raise CorruptCheckpointError(
            f"The checkpoint {directory} belongs to another model or optimizer "
            f"configuration. {hint}"
        )
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return metadata["epoch"], metadata["step"], metadata["history"]


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
        config: the run's config as a JSON-able dict, saved with each checkpoint.

    Example:

    >>> model.fit(data, epochs=10, callbacks=[Checkpointer("run/checkpoint", 100)])
    """

    def __init__(
        self,
        directory,
        every_steps=0,
        frozen=(),
        history=None,
        first_step=0,
        config=None,
    ):
        super().__init__()
        self.directory, self.every_steps, self.frozen = directory, every_steps, frozen
        self.history = history or {}
        self.first_step = first_step
        self.config = config
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
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
            self.config,
        )


def _unnumbered(path):
    """A variable path without Keras's `_<n>` suffixes, which depend on how many
    layers of a kind the process built before (`dense_3/kernel` -> `dense/kernel`)."""
    return re.sub(r"_\d+(?=/|$)", "", path)
