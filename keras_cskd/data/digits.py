"""scikit-learn's bundled 8x8 handwritten digits: real data, no download."""

import tensorflow as tf

from keras_cskd.data.dataset import Dataset
from keras_cskd.data.registry import register

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


@register("digits")
def load(validation_fraction=0.0, **options):
    """The digits `Dataset`: 10 classes, `[8, 8, 1]` images in [0, 1].

    It has its own validation split and no options: both are refused.
    """
    if options:
        raise ValueError(
            f"The digits dataset takes no options, got {options}: remove them "
            "(train.py: leave data.image_size, data.manual_dir and data.streaming "
            "unset)."
        )
    if validation_fraction:
        raise ValueError(
            "The digits dataset has its own validation split (15% of the images, "
            f"stratified), so validation_fraction={validation_fraction} would "
            "be ignored: leave it at 0 (train.py: data.validation_fraction)."
        )
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
