"""Checks of a loaded `Dataset` before any training: empty splits, bad labels."""

import tensorflow as tf

from keras_cskd.data.imagenet import ImageRecords


def check_dataset(dataset):
    """Raises `ValueError` for an empty split or labels outside the classes.

    Example:

    >>> check_dataset(keras_cskd.data.load("digits"))   # passes silently
    """
    for split in ("train", "validation", "test"):
        examples = getattr(dataset, split)
        if examples is None:
            continue
        where = f"The '{split}' split of dataset '{dataset.name}'"
        if isinstance(examples, ImageRecords):  # streamed: counted, not read
            if examples.num_examples == 0:
                raise ValueError(f"{where} is empty.")
            continue
        low, high, count = _label_range(examples)
        if count == 0:
            raise ValueError(f"{where} is empty.")
        if low < 0 or high >= dataset.num_classes:
            raise ValueError(
                f"{where} has labels in [{low}, {high}], outside the "
                f"{dataset.num_classes} classes [0, {dataset.num_classes - 1}]."
            )


def _label_range(examples):
    """`(lowest label, highest label, count)` of an unbatched split."""
    labels = examples.map(lambda x, y: tf.cast(y, tf.int64)).batch(8192)
    low, high, count = labels.reduce(
        (
            tf.constant(2**62, tf.int64),
            tf.constant(-(2**62), tf.int64),
            tf.constant(0, tf.int64),
        ),
        lambda state, y: (
            tf.minimum(state[0], tf.reduce_min(y)),
            tf.maximum(state[1], tf.reduce_max(y)),
            state[2] + tf.size(y, tf.int64),
        ),
    )
    return int(low), int(high), int(count)
