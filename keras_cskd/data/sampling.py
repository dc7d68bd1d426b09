"""Class-balanced samples of a labelled split: which examples to take.

`balanced_indices` chooses from labels already known (an image folder's
listing, labels read from a `tf.data` pipeline); `fill_quotas` keeps examples
from a stream as it is read, each class up to its share, and stops as soon as
the shares are filled, so that a balanced sample of a large stream (ImageNet's
TFDS records) reads a bounded prefix of it, not the whole split. Both are what
an int8 export is calibrated on and measured against (`keras_cskd.export`).
"""

import itertools

import numpy as np

SEED = 0
# The most examples a sample reads from a stream: at most 5.5 GB of ImageNet's
# encoded images. A uniform stream of ImageNet's 1,000 classes reaches them
# all in about 7,500 examples (the coupon collector's expectation).
SCAN_LIMIT = 50_000


def balanced_indices(labels, count, seed=SEED):
    """Indices of `count` examples spread evenly over the classes of `labels`.

    Each class's indices are shuffled, then taken round-robin, one per class per
    round (in a shuffled order of the classes), until `count` are taken. Counts
    per class differ by at most one, except for classes that run out.

    Args:
        labels: one integer class per example.
        count: the number of indices wanted; all of them if fewer exist.
        seed: seeds both shuffles.

    Returns:
        An int64 array of distinct indices, classes interleaved.

    Example:

    >>> balanced_indices([0, 0, 0, 0, 1, 1, 2, 2], 6)
    array([7, 2, 4, 6, 0, 5])
    """
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    pools = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    rounds = np.concatenate([np.arange(len(pool)) for pool in [[], *pools]])
    order = np.argsort(rounds, kind="stable")  # Keeps the class order per round.
    chosen = np.concatenate([np.zeros(0, np.int64), *pools])[order][:count]
    return chosen.astype(np.int64)


def fill_quotas(examples, labels_of, num_classes, count, scan_limit=SCAN_LIMIT):
    """Keeps the examples of a stream that a balanced sample of `count` needs.

    Every class may keep `ceil(count / num_classes)` examples, the first it
    meets; reading stops once `count` are kept with every class at
    `count // num_classes` or more (then `balanced_indices` over the kept
    examples is exactly balanced), or after `scan_limit` examples. A class not
    met by then keeps fewer, or none: for it, up to `count` spare examples
    (the first beyond their class's share) are kept too, and the other classes
    fill its places when `balanced_indices` takes `count` of the kept
    examples. At most `2 * count` examples are held.

    Args:
        examples: an iterable, read once, in its order.
        labels_of: the class id (`0 <= id < num_classes`) of an example.
        num_classes: the number of classes.
        count: the size of the balanced sample wanted.
        scan_limit: the most examples read.

    Returns:
        The kept examples, a list: those within their class's share in the
        stream's order, then any spares.

    Example:

    >>> fill_quotas([0, 0, 0, 1, 0, 2, 1], int, num_classes=3, count=3)
    [0, 1, 2]
    """
    share, remainder = divmod(count, num_classes)
    quota = share + (remainder > 0)
    kept_per_class = np.zeros(num_classes, np.int64)
    kept, spares = [], []
    for example in itertools.islice(examples, scan_limit):
        label = labels_of(example)
        if kept_per_class[label] < quota:
            kept_per_class[label] += 1
            kept.append(example)
            if len(kept) >= count and kept_per_class.min() >= share:
                return kept
        elif len(spares) < count:
            spares.append(example)
    return kept + spares
