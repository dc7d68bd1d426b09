"""Resumable training batches: one seeded pass per epoch, a seed per batch.

Every training pipeline (`keras_cskd.data.decoded.pipeline`,
`keras_cskd.data.streaming.train_pipeline`, `keras_cskd.data.teacher_cache.
pipeline`) draws its order and its augmentations statelessly: epoch `e`'s
order is a function of `(seed, e)` alone, and the batch at `(e, step)` gets
the seed `batch_seed(seed, e, step)`, from which its weak view, strong view
and mixup draw through `fold_in(batch_seed, WEAK_VIEW)` and so on. A batch
is thus a function of `(seed, epoch, step)`, which is how resuming is exact:
a run restarted at `(first_epoch, skip_steps)` builds its pipeline from there
(`chain_epochs`) and sees the batches an uninterrupted run sees.

The keys of a batch's inputs that carry cached teacher logits or each
example's dataset index, `IMAGES`, `TEACHER_LOGITS` and `SAMPLE_INDICES`, are
defined here for the data layer (the `Distiller`, which never imports data,
spells the same keys in `keras_cskd.distiller`).

Example:

>>> digits = keras_cskd.data.load("digits")
>>> batches = epoch_batches(digits.train, 64, seed=0, drop_remainder=False,
...                         epochs=range(2, 4)).skip(5)
>>> key, (images, labels) = next(iter(batches))  # key == batch_seed(0, 2, 5)
"""

import functools

import tensorflow as tf

from keras_cskd.data.stateless import fold_in

# The fold-in of each random stream of a batch (`batch_seed`).
WEAK_VIEW, STRONG_VIEW, MIXUP = 0, 1, 2
# The inputs of a batch that carries cached teacher logits: `({IMAGES: images,
# TEACHER_LOGITS: logits}, labels)`.
IMAGES = "images"
TEACHER_LOGITS = "teacher_logits"
# ... or each example's index in the training split: `({IMAGES: images,
# SAMPLE_INDICES: indices}, labels)` (CRD's memory bank).
SAMPLE_INDICES = "sample_indices"
# Examples held for shuffling when a dataset does not know its size.
DEFAULT_SHUFFLE_BUFFER = 10_000


def batch_seed(seed, epoch, step):
    """The stateless seed of a resumable training batch.

    Args:
        seed: the pipeline's seed, an int.
        epoch: the batch's epoch.
        step: the batch's step within its epoch.

    Returns:
        The int64 `[2]` seed `fold_in([seed, 0], epoch, step)`; the batch's weak
        view, strong view and mixup draw from `fold_in(it, WEAK_VIEW)`,
        `fold_in(it, STRONG_VIEW)` and `fold_in(it, MIXUP)`.

    Example:

    >>> batch_seed(0, epoch=3, step=7).shape
    TensorShape([2])
    """
    return fold_in(_base_seed(seed), epoch, step)


def epoch_shuffle_seed(seed, epoch):
    """The Python seed of epoch `epoch`'s shuffle (`tf.data` takes no tensors).

    Example:

    >>> epoch_shuffle_seed(5, 2)
    5000017
    """
    return seed * 1_000_003 + epoch


def chain_epochs(one_pass, epochs):
    """One dataset of `one_pass(epoch)` for each of `epochs`, in order.

    Each epoch's order is seeded by `(seed, epoch)`, and `tf.data` shuffles
    take only Python seeds, so every epoch is its own dataset: the chain of
    them is one dataset for `fit` that a resumed run rebuilds from any epoch.

    Args:
        one_pass: a function of an epoch to that epoch's dataset.
        epochs: the epochs, a sequence, e.g. `range(first_epoch, epochs)`.

    Returns:
        The concatenated `tf.data.Dataset`.

    Raises:
        ValueError: for no epochs.

    Example:

    >>> chained = chain_epochs(lambda epoch: tf.data.Dataset.range(3), range(2, 4))
    >>> [int(x) for x in chained]
    [0, 1, 2, 0, 1, 2]
    """
    if len(epochs) == 0:
        raise ValueError(
            f"No epochs to train: {epochs!r}; the first epoch must come before "
            "the end of training."
        )
    return functools.reduce(tf.data.Dataset.concatenate, map(one_pass, epochs))


def epoch_batches(dataset, batch_size, seed, drop_remainder, epochs):
    """`(batch seed, batch)` pairs of one shuffled pass per epoch.

    Each pass is shuffled with `epoch_shuffle_seed(seed, epoch)` and each
    batch seeded with `batch_seed(seed, epoch, step)`: the batches are a
    function of `(seed, epoch, step)` alone.

    Args:
        dataset: an unbatched `tf.data.Dataset`, the same on every pass.
        batch_size: the batch size.
        seed: the order and augmentation seed, an int.
        drop_remainder: drop each epoch's last partial batch.
        epochs: the epochs, e.g. `range(first_epoch, epochs)`.

    Returns:
        A `tf.data.Dataset` of `(int64 [2] seed, batch)`.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> batches = epoch_batches(digits.train, 64, 0, False, range(3))
    """

    def one_pass(epoch):
        batches = dataset.shuffle(
            _buffer(dataset),
            seed=epoch_shuffle_seed(seed, epoch),
            reshuffle_each_iteration=False,
        ).batch(batch_size, drop_remainder=drop_remainder)
        return batches.enumerate().map(
            lambda step, batch: (batch_seed(seed, epoch, step), batch)
        )

    return chain_epochs(one_pass, epochs)


def reshuffled_batches(dataset, batch_size, seed, drop_remainder):
    """`(batch seed, batch)` pairs, reshuffled and reseeded on every pass.

    For a pipeline repeated by `fit` without `epochs`: each pass has a new
    order, and each batch a seed drawn from `tf.data.Dataset.random(seed)`,
    new on every pass too (a step counter would restart with each pass and
    repeat every epoch's augmentations). Not resumable.

    Args:
        dataset: an unbatched `tf.data.Dataset`.
        batch_size: the batch size.
        seed: the shuffle and seed stream's seed, an int or `None`.
        drop_remainder: drop each pass's last partial batch.

    Returns:
        A `tf.data.Dataset` of `(int64 [2] seed, batch)`.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> batches = reshuffled_batches(digits.train, 64, 0, False)
    """
    batches = dataset.shuffle(
        _buffer(dataset), seed=seed, reshuffle_each_iteration=True
    ).batch(batch_size, drop_remainder=drop_remainder)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    base = _base_seed(seed)
    return tf.data.Dataset.zip(keys, batches).map(
        lambda key, batch: (fold_in(base, key), batch)
    )


def _buffer(dataset):
    """The whole dataset when its size is known: a full shuffle."""
    size = int(dataset.cardinality())
    return size if size > 0 else DEFAULT_SHUFFLE_BUFFER


def _base_seed(seed):
    return tf.constant([0 if seed is None else seed, 0], tf.int64)
