"""The callbacks a training run uses: the epoch counter, test accuracy, NaN stop."""

import math

import keras
import numpy as np


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite during training."""


class EpochCounter(keras.callbacks.Callback):
    """Keeps `model.epoch` at the 1-based number of the running epoch.

    The `Distiller` adds it to every `fit`, for losses that change over
    training (DKD's warm-up).

    Example:

    >>> distiller.fit(data, epochs=3, callbacks=[EpochCounter()])
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


def accuracy(model, images, labels=None, batch_size=256):
    """Top-1 accuracy of `model` on NumPy arrays, or (`labels=None`) on a
    batched dataset of `(images, labels)` (a streamed test split).

    Example:

    >>> accuracy(student, test_images, test_labels)
    0.97...
    """
    if labels is None:  # one pass: a streamed split is read and decoded once
        correct = [
            np.argmax(model(x, training=False), axis=-1) == np.asarray(y)
            for x, y in images
        ]
        return float(np.mean(np.concatenate(correct)))
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


class TestAccuracy(keras.callbacks.Callback):
    """Adds the model's `test_accuracy` to each epoch's logs, so the CSV and
    TensorBoard logs hold it and the summary reports the last and best epochs.

    Example:

    >>> trainer.fit(data, callbacks=[TestAccuracy(student, images, labels, 256)])
    """

    __test__ = False  # not a pytest test class

    def __init__(self, model, images, labels=None, batch_size=256):
        super().__init__()
        self.evaluated, self.images, self.labels = model, images, labels
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["test_accuracy"] = accuracy(
                self.evaluated, self.images, self.labels, self.batch_size
            )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss terms are not finite,
    naming the term (cross-entropy, distillation loss, or the total with its
    regularisation) and the step.

    Example:

    >>> trainer.fit(data, callbacks=[StopOnNonFiniteLoss()])   # may raise
    """

    TERMS = ("ce_loss", "distillation_loss", "loss")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for term in self.TERMS:
            if term in (logs or {}) and not math.isfinite(float(logs[term])):
                raise NonFiniteLossError(
                    f"The {term} became {float(logs[term])} at epoch "
                    f"{self._epoch + 1}, step {batch + 1}: lower the learning "
                    "rate, check the data for NaN or infinite values, or (mixed "
                    "precision) check the loss scale."
                )
