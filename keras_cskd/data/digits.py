"""scikit-learn's bundled 8x8 handwritten digits: real data, no download."""

import tensorflow as tf

from keras_cskd.data.dataset import Dataset

# The digits split: stratified by class with a fixed seed, 70% train, 15%
# validation, 15% test (1257 / 270 / 270 of the 1797 images).
DIGITS_SPLIT_SEED = 0
DIGITS_FRACTIONS = (0.70, 0.15, 0.15)


def digits_arrays():
    """The digits splits as NumPy arrays: `{split: (images, labels)}`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype("float32")[..., None]
    labels = bunch.target.astype("int32")
    train_fraction, validation_fraction, test_fraction = DIGITS_FRACTIONS
    x_train, x_rest, y_train, y_rest = train_test_split(
        images,
        labels,
        train_size=train_fraction,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest,
        y_rest,
        test_size=test_fraction / (validation_fraction + test_fraction),
        stratify=y_rest,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {
        "train": (x_train, y_train),
        "validation": (x_val, y_val),
        "test": (x_test, y_test),
    }


def load():
    """The digits `Dataset`: 10 classes, `[8, 8, 1]` images in [0, 1]."""
    splits = {
        split: tf.data.Dataset.from_tensor_slices(arrays)
        for split, arrays in digits_arrays().items()
    }
    return Dataset(
        "digits",
        splits["train"],
        splits["validation"],
        splits["test"],
        num_classes=10,
        input_shape=(8, 8, 1),
    )
