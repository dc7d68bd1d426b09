"""Argument checks shared by the public classes, each raising one clear line."""


def non_negative_number(name, value):
    """Returns `value` as a float; raises `ValueError` unless it is a number >= 0.

    Booleans are refused: `True` is an int to Python, never a weight to a user.

    Example:

    >>> non_negative_number("beta", 8)
    8.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.")
    return float(value)
