"""Batching, shuffling, augmentation and mixup for `fit`/`evaluate`."""

import functools

import keras
import numpy as np
import tensorflow as tf


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
    deterministically), augmented per batch by `augmentation` (a Keras layer or
    `None`) and optionally mixed by `keras.layers.MixUp`, which turns the labels
    into mixed one-hot vectors (pass `num_classes`). With `strong_augmentation`
    every batch becomes two views, `((weak, strong), labels)`, for a
    `Distiller` with `view_weights`. The random layers run on one batch at a
    time, in order, so seeded layers make the same batches on every run.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`, or of
            `({"images", "teacher_logits"}, label)` from `with_teacher_logits`
            (which refuses random augmentation and mixup).
        batch_size: the global batch size.
        training: shuffle and augment.
        seed: the shuffling and augmentation seed.
        augmentation: a `keras.layers.Layer` applied to image batches, or `None`.
        strong_augmentation: a layer making a second, strong view, or `None`.
        mixup_alpha: the Beta(a, a) parameter of mixup; 0 turns it off.
        num_classes: needed for mixup's one-hot labels.
        drop_remainder: drop the last partial batch.
        epochs: for resumable training, one dataset for epochs
            `[first_epoch, epochs)` whose shuffle order is a function of
            `(seed, epoch)` alone, so a resumed run sees the batches an
            uninterrupted one sees (pass `steps_per_epoch` to `fit`); `None`
            reshuffles on every pass instead.
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
    randomised = training and (augmentation or strong_augmentation or mixup_alpha > 0)
    if randomised and _has_teacher_logits(dataset):
        raise ValueError(
            "Cached teacher logits were computed on the un-augmented images, so "
            "they cannot be reused with random augmentation or mixup: turn "
            "caching off, or augmentation and mixup off."
        )
    if training and strong_augmentation is not None and mixup_alpha > 0:
        raise ValueError("Two views and mixup cannot be combined; choose one.")
    if training:
        size = int(dataset.cardinality())
        buffer = size if size > 0 else 10_000
    if training and epochs is not None:
        # One shuffled pass per epoch, each seeded by (seed, epoch) alone
        # (tf.data takes only Python seeds, hence the chain of passes).
        passes = [
            dataset.shuffle(
                buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False
            ).batch(batch_size, drop_remainder=drop_remainder)
            for epoch in range(first_epoch, epochs)
        ]
        dataset = functools.reduce(tf.data.Dataset.concatenate, passes)
        dataset = dataset.skip(skip_steps)
    else:
        if training:
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and (augmentation or strong_augmentation):
        weak = augmentation or (lambda images, training: images)

        def augment(x, y):
            if strong_augmentation is None:
                return weak(x, training=True), y
            return (weak(x, training=True), strong_augmentation(x, training=True)), y

        # One batch at a time (each op is still multi-threaded): parallel calls
        # would race for the random layers' seed generators, and a seeded
        # pipeline would not repeat.
        dataset = dataset.map(augment)
    if training and mixup_alpha > 0:
        if not num_classes:
            raise ValueError("Mixup needs `num_classes` to one-hot the labels.")
        mixup = keras.layers.MixUp(alpha=mixup_alpha, seed=seed)

        def mix(x, y):
            mixed = mixup({"images": x, "labels": tf.one_hot(y, num_classes)})
            return mixed["images"], mixed["labels"]

        dataset = dataset.map(mix)  # in order, as the augmentation
    return dataset.prefetch(tf.data.AUTOTUNE)


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

    >>> cached = with_teacher_logits(digits.train, teacher)
    >>> distiller.fit(pipeline(cached, 64, training=True), epochs=30)
    """
    images = dataset.map(lambda x, y: x).batch(batch_size)
    logits = teacher.predict(images, verbose=0).astype("float32")
    return tf.data.Dataset.zip(dataset, tf.data.Dataset.from_tensor_slices(logits)).map(
        lambda example, teacher_logits: (
            {"images": example[0], "teacher_logits": teacher_logits},
            example[1],
        )
    )


def _has_teacher_logits(dataset):
    inputs = dataset.element_spec[0]
    return isinstance(inputs, dict) and "teacher_logits" in inputs


def to_numpy(dataset):
    """Stacks an unbatched `(image, label)` dataset into two NumPy arrays."""
    images, labels = (
        zip(*dataset.as_numpy_iterator(), strict=True)
        if int(dataset.cardinality()) != 0
        else ((), ())
    )
    return np.stack(images), np.asarray(labels)
