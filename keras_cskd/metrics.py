"""Measures of a run: `Means` (several logged scalars in one metric) and
`evaluate_accuracy` (a model's top-1 accuracy on a split)."""

import keras
import numpy as np
from keras import ops


def evaluate_accuracy(model, batches):
    """Top-1 accuracy of `model` on batches of `(images, labels)`.

    One pass, so a streamed split is read and decoded once; each batch goes
    through `model.predict` (compiled, and split over the replicas of the
    model's strategy).

    Args:
        model: a `keras.Model` that maps images to logits or probabilities.
        batches: an iterable of `(images, labels)` batches with integer
            labels, such as a run's `inputs.test` (`keras_cskd.data.inputs`).

    Returns:
        The fraction of images whose top logit is their label, as a float.

    Example:

    >>> identity = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
    >>> images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> batches = [(images[:2], np.array([0, 1])), (images[2:], np.array([0, 0]))]
    >>> evaluate_accuracy(identity, batches)
    0.75
    """
    correct = []
    for images, labels in batches:
        logits = model.predict(images, batch_size=len(labels), verbose=0)
        correct.append(np.argmax(logits, axis=-1) == np.asarray(labels))
    return float(np.mean(np.concatenate(correct)))


class Means(keras.metrics.Metric):
    """Running sample-weighted means of several scalars, in one vector.

    One update per step for all of the `Distiller`'s logged terms: separate
    `Mean` trackers cost a few ops each, a visible share of a small model's
    step. It is named `loss`, its first value, so that `evaluate` lists the
    loss first. Its variables sum over replicas like any Keras metric's. Each
    mean is the true one: a NaN or infinite value in any step leaves its
    term NaN or infinite for the rest of the epoch.

    Args:
        names: the names of the scalars, in order.
        name: the metric's name.

    Example:

    >>> means = Means(("loss", "accuracy"))
    >>> means.update_state({"loss": 2.0, "accuracy": 0.5}, num_samples=4)
    >>> {k: float(v) for k, v in means.result().items()}
    {'loss': 2.0, 'accuracy': 0.5}
    """

    def __init__(self, names, name="loss"):
        super().__init__(name=name)
        self.names = tuple(names)
        self.totals = self.add_variable(
            shape=(len(self.names),), initializer="zeros", name="totals"
        )
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, num_samples):
        """Adds `{name: batch mean}` (other keys ignored) for `num_samples`."""
        num_samples = ops.cast(num_samples, self.dtype)
        batch_means = ops.stack([values[name] for name in self.names])
        self.totals.assign_add(batch_means * num_samples)
        self.count.assign_add(num_samples)

    def result(self):
        # A plain division: a NaN or infinite term stays one, and the mean of
        # no samples is NaN, not a made-up 0.
        means = self.totals / self.count
        return {name: means[i] for i, name in enumerate(self.names)}

    def reset_state(self):
        self.totals.assign(ops.zeros(self.totals.shape, dtype=self.dtype))
        self.count.assign(0.0)
