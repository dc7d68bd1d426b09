"""Datasets as `tf.data` pipelines: named sources, splits, batching, augmentation."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

# The digits split: stratified by class with a fixed seed, 70% train, 15%
# validation, 15% test (1257 / 270 / 270 of the 1797 images).
DIGITS_SPLIT_SEED = 0
DIGITS_FRACTIONS = (0.70, 0.15, 0.15)


@dataclasses.dataclass
class Dataset:
    """The splits of a classification dataset, as unbatched `(image, label)` pairs.

    Attributes:
        name: the name the dataset was loaded by.
        train, validation, test: unbatched `tf.data.Dataset`s of float32 images
            and int32 labels; `validation` may be `None`.
        num_classes: number of classes.
        input_shape: shape of one image, without the batch axis.
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple


def names():
    """The dataset names `load` understands."""
    return ["digits"]


def load(name):
    """Loads a named dataset.

    Args:
        name: `"digits"`: scikit-learn's bundled 8x8 handwritten digits (real
            data, no download), 10 classes, images scaled to [0, 1] as
            `[8, 8, 1]`, split as `DIGITS_FRACTIONS` say.

    Returns:
        A `Dataset`.

    Raises:
        ValueError: for an unknown name.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> digits.num_classes, digits.input_shape
    (10, (8, 8, 1))
    """
    if name == "digits":
        return _digits()
    raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(names())}.")


def digits_arrays():
    """The digits splits as NumPy arrays: `{split: (images, labels)}`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype("float32")[..., None]
    labels = bunch.target.astype("int32")
    train_fraction, validation_fraction, test_fraction = DIGITS_FRACTIONS
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, train_size=train_fraction, stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest,
        test_size=test_fraction / (validation_fraction + test_fraction),
        stratify=y_rest, random_state=DIGITS_SPLIT_SEED,
    )
    return {
        "train": (x_train, y_train),
        "validation": (x_val, y_val),
        "test": (x_test, y_test),
    }


def _digits():
    splits = {
        split: tf.data.Dataset.from_tensor_slices(arrays)
        for split, arrays in digits_arrays().items()
    }
    return Dataset("digits", splits["train"], splits["validation"], splits["test"],
                   num_classes=10, input_shape=(8, 8, 1))


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
    images, labels = zip(*dataset.as_numpy_iterator(), strict=True) if int(
        dataset.cardinality()
    ) != 0 else ((), ())
    return np.stack(images), np.asarray(labels)
