"""Checks of a loaded `Dataset` before any training: empty splits, bad labels."""

import numpy as np

from keras_cskd import checks
from keras_cskd.data.streamed_source import StreamedSource


def check_dataset(dataset):
    """Raises `ValueError` for an empty split, labels that are not integer
    class ids of the dataset's classes, or a training split of fewer than 2
    classes (where any classifier is 100% accurate).

    Example:

    >>> check_dataset(keras_cskd.data.load("digits"))   # passes silently
    """
    for split in ("train", "validation", "test"):
        examples = getattr(dataset, split)
        if examples is None:
            continue
        where = f"The '{split}' split of dataset '{dataset.name}'"
        if isinstance(examples, StreamedSource):  # streamed: counted, not read
            if examples.num_examples == 0:
                raise ValueError(f"{where} is empty.")
            continue
        labels = _labels(examples)
        if labels.size == 0:
            raise ValueError(f"{where} is empty.")
        _check_labels(labels, dataset.num_classes, where)
        classes = np.unique(labels)
        if split == "train" and len(classes) < 2:
            raise ValueError(
                f"{where} holds {dataset.num_classes} class(es) but only images of "
                f"class {int(classes[0])}: a classifier of one class is 100% "
                "accurate by construction; give it images of at least 2 classes."
            )


def _check_labels(labels, num_classes, where):
    """A dataset's labels are scalar integer class ids (its pipelines one-hot
    them for mixup); the ids themselves are checked by `checks.class_labels`."""
    if labels.ndim != 1:
        raise ValueError(
            f"{where} has labels of shape {labels.shape[1:]} per image: a dataset's "
            f"labels are scalar class ids 0..{num_classes - 1}."
        )
    checks.class_labels(labels, num_classes, where)
    if labels.dtype.kind != "i" and labels.dtype.kind != "u":
        raise ValueError(
            f"{where} has {labels.dtype} labels: a dataset's labels are integer "
            "class ids; cast them to int32 where the data is read."
        )


def _labels(examples):
    """The labels of an unbatched `(image, label)` split, as one NumPy array."""
    batches = list(examples.map(lambda x, y: y).batch(8192).as_numpy_iterator())
    return np.concatenate(batches) if batches else np.zeros((0,), "int32")
