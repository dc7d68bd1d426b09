"""The pipeline of decoded examples: batching, augmentation, mixup for `fit`.

`pipeline` batches an unbatched `(image, label)` `tf.data.Dataset` of decoded
images (the embedded digits, TFDS datasets, image folders): shuffled by epoch
and augmented per batch from stateless seeds (`keras_cskd.data.batching`).
Streamed sources, whose images are decoded as they are read, have their own
pipelines in `keras_cskd.data.streaming`.

Example:

```python
digits = keras_cskd.data.load("digits")
distiller.fit(pipeline(digits.train, 64, training=True, epochs=30), epochs=30)
```
"""

import numpy as np
import tensorflow as tf

from keras_cskd.data import augment
from keras_cskd.data.batching import (
    IMAGES,
    MIXUP,
    SAMPLE_INDICES,
    STRONG_VIEW,
    TEACHER_LOGITS,
    WEAK_VIEW,
    epoch_batches,
    reshuffled_batches,
)
from keras_cskd.data.stateless import fold_in


def pipeline(
    dataset,
    batch_size,
    training=False,
    seed=0,
    augmentation=None,
    strong_augmentation=None,
    mixup_alpha=0.0,
    num_classes=None,
    drop_remainder=False,
    epochs=None,
    first_epoch=0,
    skip_steps=0,
):
    """Batches an unbatched `(image, label)` dataset for `fit`/`evaluate`.

    Training pipelines are shuffled with `seed` (reshuffled each epoch,
    deterministically), augmented per batch by `augmentation` (a layer or
    `None`) and optionally mixed (`augment.mix_up`, the semantics of
    `keras.layers.MixUp`), which turns the labels into mixed one-hot vectors
    (pass `num_classes`). With `strong_augmentation` every batch becomes two
    views, `((weak, strong), labels)`, for a `Distiller` with `view_weights`.

    All the randomness of a batch is stateless: the batch gets a seed,
    `batching.batch_seed(seed, epoch, step)` with `epochs`, and each view and
    the mixup their own fold-in of it, passed to the layers'
    `augment(images, seed)` (the protocol of `keras_cskd.data.augment`). A
    batch is thus a function of `(seed, epoch, step)` alone, resumed or not,
    and the batches are augmented in parallel, in order. A layer without
    `augment` (e.g. a Keras preprocessing layer) is called with
    `training=True` instead, drawing from its own generator; the batches are
    then augmented one at a time, in order, to stay reproducible, and do not
    survive a resume.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`, or of
            `({"images", "teacher_logits"}, label)` from `with_teacher_logits`
            (which refuses random augmentation and mixup), or of
            `({"images", "sample_indices"}, label)` from `with_sample_indices`
            (augmented as the images alone; mixup is refused).
        batch_size: the global batch size.
        training: shuffle and augment.
        seed: the shuffling and augmentation seed.
        augmentation: a random layer applied to image batches, or `None`.
        strong_augmentation: a layer making a second, strong view, or `None`.
        mixup_alpha: the Beta(a, a) parameter of mixup; 0 turns it off.
        num_classes: needed for mixup's one-hot labels.
        drop_remainder: drop the last partial batch.
        epochs: for resumable training, one dataset for epochs
            `[first_epoch, epochs)` whose shuffle order and augmentations are a
            function of `(seed, epoch)` alone, so a resumed run sees the
            batches an uninterrupted one sees (pass `steps_per_epoch` to
            `fit`); `None` reshuffles on every pass instead, and seeds each
            batch with a draw of `tf.data.Dataset.random(seed)` that changes
            with every pass too (a step counter would restart with each pass,
            repeating the augmentations of every epoch).
        first_epoch: the first epoch of that dataset.
        skip_steps: batches of `first_epoch` already trained on.

    Returns:
        A batched, prefetched `tf.data.Dataset`.

    Raises:
        ValueError: for cached teacher logits with random augmentation or
            mixup, or mixup with two views.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> train = pipeline(digits.train, 64, training=True, seed=0)
    """
    randomised = training and bool(
        augmentation or strong_augmentation or mixup_alpha > 0
    )
    _check_options(dataset, randomised, strong_augmentation, mixup_alpha, num_classes)
    if not training:
        batches = dataset.batch(batch_size, drop_remainder=drop_remainder)
    elif epochs is not None:
        batches = epoch_batches(
            dataset, batch_size, seed, drop_remainder, range(first_epoch, epochs)
        )
        batches = batches.skip(skip_steps)
    else:
        batches = reshuffled_batches(dataset, batch_size, seed, drop_remainder)
    if randomised:
        layers = [x for x in (augmentation, strong_augmentation) if x is not None]
        # Stateless layers run in parallel (tf.data keeps the order); layers with
        # generators one batch at a time, or they would race for their generators.
        stateless = all(hasattr(layer, "augment") for layer in layers)
        batches = batches.map(
            _randomiser(augmentation, strong_augmentation, mixup_alpha, num_classes),
            num_parallel_calls=tf.data.AUTOTUNE if stateless else None,
        )
    else:
        batches = batches.map(lambda key, batch: batch) if training else batches
    return batches.prefetch(tf.data.AUTOTUNE)


def _check_options(dataset, randomised, strong_augmentation, mixup_alpha, classes):
    if randomised and _has_teacher_logits(dataset):
        raise ValueError(
            "Cached teacher logits were computed on the un-augmented images, so "
            "they cannot be reused with random augmentation or mixup: turn "
            "caching off, or augmentation and mixup off (for the crop and flip "
            "views, keras_cskd.data.teacher_cache caches every variant)."
        )
    if randomised and strong_augmentation is not None and mixup_alpha > 0:
        raise ValueError("Two views and mixup cannot be combined; choose one.")
    if randomised and mixup_alpha > 0 and _has(dataset, SAMPLE_INDICES):
        raise ValueError(
            "Mixup blends two examples, which then have no one dataset index: "
            "turn mixup off for a loss that reads sample indices (CRD)."
        )
    if randomised and mixup_alpha > 0 and not classes:
        raise ValueError("Mixup needs `num_classes` to one-hot the labels.")


def _randomiser(augmentation, strong_augmentation, mixup_alpha, num_classes):
    """The map from `(batch seed, (images, labels))` to the training batch."""

    def view(layer, images, key, stream):
        if layer is None:
            return images
        if hasattr(layer, "augment"):
            return layer.augment(images, fold_in(key, stream))
        return layer(images, training=True)

    def randomise(key, batch):
        inputs, labels = batch
        # Inputs beside the images (sample indices) follow them unchanged.
        others = dict(inputs) if isinstance(inputs, dict) else {}
        images = others.pop(IMAGES, inputs)

        def with_others(view_images):
            return {IMAGES: view_images, **others} if others else view_images

        weak = view(augmentation, images, key, WEAK_VIEW)
        if strong_augmentation is not None:
            strong = view(strong_augmentation, images, key, STRONG_VIEW)
            return (with_others(weak), with_others(strong)), labels
        if mixup_alpha > 0:
            one_hot = tf.one_hot(labels, num_classes)
            return augment.mix_up(weak, one_hot, mixup_alpha, fold_in(key, MIXUP))
        return with_others(weak), labels

    return randomise


def with_teacher_logits(dataset, teacher, batch_size=256):
    """Pairs every example with the teacher's logits, computed once.

    The logits are computed in one pass over `dataset` and zipped to it example
    by example, before any shuffling, so they follow their example through
    every epoch's shuffle; the `Distiller` then skips the teacher's forward
    pass. `dataset` must yield the same examples in the same order on every
    pass (shuffle after this, not before). Only for pipelines without random
    augmentation or mixup (`pipeline` refuses those): the logits belong to the
    un-augmented images.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`.
        teacher: the teacher `keras.Model`.
        batch_size: the batch size of the one inference pass.

    Returns:
        An unbatched dataset of `({"images": image, "teacher_logits": logits},
        label)`.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
    ...                             keras.layers.Dense(10)])
    >>> cached = with_teacher_logits(digits.train, teacher)
    >>> train = pipeline(cached, 64, training=True)
    """
    images = dataset.map(lambda x, y: x).batch(batch_size)
    logits = teacher.predict(images, verbose=0).astype("float32")
    return tf.data.Dataset.zip(dataset, tf.data.Dataset.from_tensor_slices(logits)).map(
        lambda example, teacher_logits: (
            {IMAGES: example[0], TEACHER_LOGITS: teacher_logits},
            example[1],
        )
    )


def with_sample_indices(dataset):
    """Pairs every example with its index in `dataset` (its position).

    Apply it before any shuffling: the index then follows its example through
    every epoch's shuffle and augmentation, as
    `CIFAR100InstanceSample.__getitem__` returns its `index` (CRD's memory
    bank has a row per index). `dataset` must yield the same examples in the
    same order on every pass.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`.

    Returns:
        An unbatched dataset of `({"images": image, "sample_indices": index},
        label)`, the index int32.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> indexed = with_sample_indices(digits.train)
    >>> int(next(iter(indexed))[0]["sample_indices"])
    0
    """
    return dataset.enumerate().map(
        lambda index, example: (
            {IMAGES: example[0], SAMPLE_INDICES: tf.cast(index, tf.int32)},
            example[1],
        )
    )


def labels_of(dataset):
    """The labels of an unbatched `(inputs, label)` dataset, in its order.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> labels_of(digits.train).shape
    (1257,)
    """
    labels = dataset.map(lambda inputs, label: label).batch(4096)
    return np.concatenate(list(labels.as_numpy_iterator()) or [np.zeros(0, "int64")])


def _has_teacher_logits(dataset):
    return _has(dataset, TEACHER_LOGITS)


def _has(dataset, key):
    inputs = dataset.element_spec[0]
    return isinstance(inputs, dict) and key in inputs


def to_numpy(dataset):
    """Stacks an unbatched `(image, label)` dataset into two NumPy arrays."""
    images, labels = (
        zip(*dataset.as_numpy_iterator(), strict=True)
        if int(dataset.cardinality()) != 0
        else ((), ())
    )
    return np.stack(images), np.asarray(labels)
