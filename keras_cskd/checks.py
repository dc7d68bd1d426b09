"""Argument checks shared by the public classes, each raising one clear line."""

import math

import numpy as np


def non_negative_number(name, value):
    """Returns `value` as a float; raises `ValueError` unless it is a finite
    number >= 0.

    Booleans are refused: `True` is an int to Python, never a weight to a user.

    Example:

    >>> non_negative_number("beta", 8)
    8.0
    """
    if not is_finite_number(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def positive_number(name, value):
    """Returns `value` as a float; raises `ValueError` unless it is a finite
    number > 0 (`nan` and `inf` are refused: no temperature or scale means them).

    Example:

    >>> positive_number("temperature", 4)
    4.0
    """
    if not is_finite_number(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    return float(value)


def is_finite_number(value):
    """Whether `value` is a finite int or float (not a bool, `nan` or `inf`).

    Example:

    >>> is_finite_number(float("nan"))
    False
    """
    number = not isinstance(value, bool) and isinstance(value, (int, float, np.number))
    return number and math.isfinite(value)


def class_labels(labels, num_classes, where="The data"):
    """Raises `ValueError` unless `labels` are class ids in `[0, num_classes)`
    (any integer dtype, or floats that are whole numbers) or one-hot/soft rows
    `[N, num_classes]` (>= 0, each summing to 1).

    Float ids are checked, not truncated: `2.7` is refused, never read as 2.

    Args:
        labels: an array-like of labels.
        num_classes: the number of classes the model predicts.
        where: what holds the labels, to start the message.

    Example:

    >>> class_labels(np.array([0, 2, 1]), num_classes=3)   # passes silently
    """
    labels = np.asarray(labels)
    fix = f"labels must be class ids 0..{num_classes - 1} or one-hot/soft rows"
    if labels.dtype.kind not in "biuf":
        example = labels.reshape(-1)[:1].tolist()
        kind = "string" if labels.dtype.kind in "USO" else str(labels.dtype)
        raise ValueError(
            f"{where} has {kind} labels such as {example}, not numbers: "
            f"{fix}; map class names to ids first, e.g. `names, ids = "
            "np.unique(labels, return_inverse=True)`."
        )
    if labels.ndim == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        sums = labels.sum(axis=-1)
        bad = (labels < 0).any(axis=-1) | ~np.isclose(sums, 1.0, atol=1e-3)
        if bad.any():
            raise ValueError(
                f"{where} has label rows of {num_classes}, but row "
                f"{int(np.argmax(bad))} ({labels[bad][0].tolist()}) is not a "
                "distribution: one-hot/soft labels must be >= 0 and sum to 1."
            )
        return
    ids = labels.reshape(-1)
    fractional = ids[ids != np.round(ids)] if labels.dtype.kind == "f" else ids[:0]
    if fractional.size:
        raise ValueError(
            f"{where} has non-integer labels such as {float(fractional[0])!r}: "
            f"{fix} (a float id is never truncated); fix the data."
        )
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(
            f"{where} has labels in [{ids.min():g}, {ids.max():g}], outside the "
            f"{num_classes} classes [0, {num_classes - 1}]: {fix}; build the models "
            "with the data's number of classes, or fix the labels."
        )


def refuse_renamed(module, renamed):
    """A module `__getattr__` that refuses each old name of `renamed` (old
    name to its new spelling), naming the new one in one line.

    Example:

    >>> __getattr__ = refuse_renamed(__name__, {"ImageRecords": "StreamedSource"})
    """

    def __getattr__(name):
        if name in renamed:
            raise AttributeError(
                f"{module}.{name} is now {renamed[name]}: use that instead."
            )
        raise AttributeError(f"module '{module}' has no attribute '{name}'")

    return __getattr__
