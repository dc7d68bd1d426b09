"""Datasets as `tf.data` pipelines: named sources, splits, batching, augmentation.

Sources (`load(name)`): `"digits"` (embedded); more register in `_SOURCES`.
"""

from keras_cskd.data import digits
from keras_cskd.data.dataset import Dataset
from keras_cskd.data.digits import digits_arrays
from keras_cskd.data.pipeline import pipeline, to_numpy


def names():
    """The dataset names (and name prefixes) `load` understands."""
    return ["digits"]


def load(name):
    """Loads a named dataset.

    Args:
        name: `"digits"`: scikit-learn's bundled 8x8 handwritten digits (real
            data, no download), 10 classes, images scaled to [0, 1] as
            `[8, 8, 1]`, split 70/15/15 (stratified, fixed seed).

    Returns:
        A `Dataset` of unbatched `(image, label)` splits.

    Raises:
        ValueError: for an unknown name.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> digits.num_classes, digits.input_shape
    (10, (8, 8, 1))
    """
    if name == "digits":
        return digits.load()
    raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(names())}.")


__all__ = ["Dataset", "digits_arrays", "load", "names", "pipeline", "to_numpy"]
