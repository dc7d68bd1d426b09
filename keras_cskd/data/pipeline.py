"""Batching, shuffling, augmentation and mixup for `fit`/`evaluate`."""

import keras
import numpy as np
import tensorflow as tf


def pipeline(
    dataset,
    batch_size,
    training=False,
    seed=0,
    augmentation=None,
    mixup_alpha=0.0,
    num_classes=None,
    drop_remainder=False,
):
    """Batches an unbatched `(image, label)` dataset for `fit`/`evaluate`.

    Training pipelines are shuffled with `seed` (reshuffled each epoch,
    deterministically), augmented per batch by `augmentation` (a Keras layer or
    `None`) and optionally mixed by `keras.layers.MixUp`, which turns the labels
    into mixed one-hot vectors (pass `num_classes`).

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`.
        batch_size: the global batch size.
        training: shuffle and augment.
        seed: the shuffling and augmentation seed.
        augmentation: a `keras.layers.Layer` applied to image batches, or `None`.
        mixup_alpha: the Beta(a, a) parameter of mixup; 0 turns it off.
        num_classes: needed for mixup's one-hot labels.
        drop_remainder: drop the last partial batch.

    Returns:
        A batched, prefetched `tf.data.Dataset`.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> train = pipeline(digits.train, 64, training=True, seed=0)
    """
    if training:
        size = int(dataset.cardinality())
        buffer = size if size > 0 else 10_000
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and augmentation is not None:
        dataset = dataset.map(
            lambda x, y: (augmentation(x, training=True), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if training and mixup_alpha > 0:
        if not num_classes:
            raise ValueError("Mixup needs `num_classes` to one-hot the labels.")
        mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=seed)

        def mix(x, y):
            mixed = mixup({"images": x, "labels": tf.one_hot(y, num_classes)})
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def to_numpy(dataset):
    """Stacks an unbatched `(image, label)` dataset into two NumPy arrays."""
    images, labels = (
        zip(*dataset.as_numpy_iterator(), strict=True)
        if int(dataset.cardinality()) != 0
        else ((), ())
    )
    return np.stack(images), np.asarray(labels)
