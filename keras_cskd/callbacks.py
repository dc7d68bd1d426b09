"""The callbacks a training run uses: the epoch counter, test accuracy, NaN stop."""

import keras
import numpy as np

from keras_cskd.checks import refuse_renamed
from keras_cskd.metrics import evaluate_accuracy


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite during training."""


class EpochCounter(keras.callbacks.Callback):
    """Keeps `model.epoch` at the 1-based number of the running epoch.

    The `Distiller` adds it to every `fit`, for losses that change over
    training (DKD's warm-up).

    Example:

    ```python
    distiller.fit(data, epochs=3, callbacks=[EpochCounter()])
    ```
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(float(epoch + 1))


class RefuseEmptyEpochs(keras.callbacks.Callback):
    """Stops `fit` with an error at the end of an epoch that had no batch
    (Keras would otherwise return an empty history).

    The `Distiller` adds it to every `fit`.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if not self.batches:
            raise ValueError(
                f"Epoch {epoch + 1} had no training batch: the training data is "
                "empty (or steps_per_epoch is 0). Check the dataset's path and size."
            )


class TestAccuracy(keras.callbacks.Callback):
    """Adds the model's `test_accuracy` to each epoch's logs, so the CSV and
    TensorBoard logs hold it and the summary reports the last and best epochs.

    Example:

    ```python
    trainer.fit(data, callbacks=[TestAccuracy(student, inputs.test)])
    ```

    Args:
        model: the model evaluated (the student, not the trainer).
        test: batches of `(images, labels)` (`keras_cskd.data.inputs`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, model, test):
        super().__init__()
        self.evaluated, self.test = model, test

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["test_accuracy"] = evaluate_accuracy(self.evaluated, self.test)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step that leaves a loss term or a trained
    weight NaN or infinite, naming it, the epoch and the step.

    After every step it reads the logged loss terms (each distillation loss,
    `ce_loss`, `distillation_loss`, then `loss`, the total with the
    regularisation) and checks on the device that the trained weights are
    finite. The weights need their own check: a compiled forward pass can drop
    a NaN input (XLA's max, in ReLU and pooling, ignores NaN) that the
    backward pass still multiplies into the first layer's gradient, so the
    loss stays finite while the update writes NaN into the weights. Put it
    before any checkpointing callback: its error then comes before the
    corrupted weights are written.

    Args:
        first_step: the step within the first epoch this `fit` starts at (a
            resumed run's), so that steps are numbered within the epoch.

    Example:

    ```python
    trainer.fit(data, callbacks=[StopOnNonFiniteLoss()])   # may raise
    ```
    """

    def __init__(self, first_step=0):
        super().__init__()
        self.first_step = first_step
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._weights = trained_weights(self.model)
        self._weights_are_finite = _all_finite_function(self.model, self._weights)
        self._skipped = None

    def on_epoch_begin(self, epoch, logs=None):
        # Only the first epoch of a resumed fit starts after step 0.
        self._skipped = self.first_step if self._skipped is None else 0
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        problem = _nonfinite_term(logs or {})
        if problem is None and not bool(self._weights_are_finite()):
            problem = _nonfinite_weights(self._weights)
        if problem is not None:
            raise NonFiniteLossError(
                f"{problem} at epoch {self._epoch + 1}, step "
                f"{self._skipped + batch + 1}: lower the learning rate, check the "
                "data for NaN or infinite values, or (mixed precision) check the "
                "loss scale."
            )


def _nonfinite_term(logs):
    """`"The <term> became <value>"` for the first non-finite loss term, the
    individual terms before their total `loss`; `None` if all are finite."""
    terms = [key for key in logs if key.endswith("_loss")] + ["loss"]
    for term in terms:
        if term in logs:
            value = np.ravel(np.asarray(logs[term], dtype="float64"))
            if not np.all(np.isfinite(value)):
                return f"The {term} became {value[0]}"
    return None


def _nonfinite_weights(weights):
    counts = {v.path: int(np.sum(~np.isfinite(v.numpy()))) for v in weights}
    bad = {path: count for path, count in counts.items() if count}
    listed = ", ".join(f"{count} in {path}" for path, count in bad.items())
    return f"The weights became NaN or infinite ({listed}) while the loss was finite"


def trained_weights(model):
    """The floating-point variables training changes: the trainable ones and
    the student's statistics (BatchNorm's), not a frozen teacher's.

    Example:

    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(3, name="hidden")])
    >>> distiller = keras_cskd.Distiller(teacher, student, "kd")
    >>> [v.path for v in trained_weights(distiller)][:2]
    ['.../hidden/kernel', '.../hidden/bias']
    """
    owner = getattr(model, "student", model)
    variables = [*model.trainable_variables, *owner.non_trainable_variables]
    unique = {id(v): v for v in variables if "float" in str(v.dtype)}
    return list(unique.values())


def _all_finite_function(model, weights):
    """A function that says, as one device scalar, whether every value of
    `weights` (of `model`) is finite; compiled where the backend compiles,
    so that a step costs one reduction and one scalar read."""

    def all_finite(values):
        checks = [keras.ops.all(keras.ops.isfinite(v)) for v in values]
        return keras.ops.all(keras.ops.stack(checks)) if checks else True

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda: all_finite(weights))
    if backend == "jax":
        import jax

        compiled = jax.jit(all_finite)

        def check():
            model.jax_state_sync()  # JAX's fit keeps the step's state apart
            return compiled([v.value for v in weights])

        return check
    return lambda: all_finite(weights)


# Not a callback: it moved to the measures of a run.
__getattr__ = refuse_renamed(
    __name__, {"accuracy": "keras_cskd.metrics.evaluate_accuracy(model, batches)"}
)
