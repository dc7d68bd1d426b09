"""The streamed pipelines: decode and augment a `StreamedSource` as it is read.

`train_pipeline` and `eval_pipeline` read any `StreamedSource` (image folders
streamed by `folder.FileRecords`, TFDS datasets by `tfds.TFDSRecords`) and
make torchvision's ImageNet views of it (`keras_cskd.data.transforms`).
Reading, decoding and augmenting run in one parallel `map`
(`num_parallel_calls=AUTOTUNE`, in order), then batching and prefetching.

Every training draw is stateless (`keras_cskd.data.batching`): epoch `e`
visits the examples in the source's order for `(seed, e)` (a full
permutation for files; for TFDS, a seeded file order and a seeded shuffle
buffer), and example `k` of the global batch at step `s` is augmented from the
seed `fold_in(batch_seed(seed, e, s), WEAK_VIEW, k)`. A batch is thus a
function of `(seed, epoch, step)`, which is how resuming is exact: a run
restarted at `(first_epoch, skip_steps)` builds the pipeline from there and
sees the batches an uninterrupted run sees, the project's resume protocol
(`keras_cskd.training`), with no iterator state to checkpoint. Skipping is
free for files (the permutation is sliced); for TFDS the skipped records are
read, not decoded.

Under `MultiWorkerMirroredStrategy` (and `MirroredStrategy`) each input
pipeline builds its own dataset from `tf.distribute.InputContext`, through
`strategy.distribute_datasets_from_function`: pipeline `p` of `P` reads the
same epoch order, keeps the `p`-th slice of every global batch and decodes
only that, and yields one batch per local replica, so the replicas together
see exactly the global batch one device sees.
With TFDS every pipeline reads every record (not decoding the others'). A
pipeline built without an input context yields the global batches, which
`fit` under `MirroredStrategy` splits among the replicas alike; under
`MultiWorkerMirroredStrategy` build it per input pipeline as above, or
TensorFlow shards the global batches among the workers.

Example:

```python
imagenet = keras_cskd.data.load("folder:/data/imagenet", streaming=True)
train = strategy.distribute_datasets_from_function(
    lambda context: train_pipeline(
        imagenet.train, 1024, seed=0, epochs=90, input_context=context
    )
)
steps = steps_per_epoch(imagenet.train, 1024)
distiller.fit(train, epochs=90, steps_per_epoch=steps)
```
"""

import tensorflow as tf

from keras_cskd.data import sampling
from keras_cskd.data.batching import WEAK_VIEW, batch_seed, chain_epochs
from keras_cskd.data.stateless import fold_in
from keras_cskd.data.transforms import (
    IMAGE_SIZE,
    NORMALIZATION,
    RATIO,
    RESIZE_SIZE,
    SCALE,
    eval_transform,
    train_transform,
)


def steps_per_epoch(source, batch_size):
    """Training steps per epoch: whole global batches, `num_examples // batch_size`."""
    return source.num_examples // batch_size


def train_pipeline(
    source,
    batch_size,
    seed=0,
    epochs=1,
    first_epoch=0,
    skip_steps=0,
    input_context=None,
    image_size=IMAGE_SIZE,
    normalization=NORMALIZATION,
    scale=SCALE,
    ratio=RATIO,
):
    """The resumable, shardable training pipeline of `train_transform` views.

    Epochs `[first_epoch, epochs)` of `steps_per_epoch(source, batch_size)`
    whole global batches each (the remainder of an epoch is dropped), starting
    `skip_steps` batches into `first_epoch`. Example `k` of the global batch
    at `(epoch, step)` is the `train_transform` of the epoch order's example
    `step * batch_size + k`, drawn from
    `fold_in(batch_seed(seed, epoch, step), WEAK_VIEW, k)`.

    Args:
        source: a `StreamedSource` (e.g. `Dataset.train` of a streaming source).
        batch_size: the global batch size.
        seed: the order and augmentation seed.
        epochs: the end of the epochs (exclusive).
        first_epoch: the first epoch.
        skip_steps: batches of `first_epoch` already trained on.
        input_context: a `tf.distribute.InputContext` (from
            `strategy.distribute_datasets_from_function`): this pipeline then
            decodes its slice of every global batch and yields one batch of
            `batch_size / num_replicas_in_sync` per local replica, in replica
            order. `None` yields the global batches.
        image_size: the size of the views.
        normalization: `(mean, std)` for images in [0, 1], or `None`.
        scale, ratio: `RandomResizedCrop`'s ranges.

    Returns:
        A batched, prefetched `tf.data.Dataset` of `(float32 images, int32
        labels)`.

    Raises:
        ValueError: for fewer examples than one global batch, or a batch size
            that does not divide among the replicas.

    Example:

    ```python
    train = train_pipeline(imagenet.train, 256, seed=0, epochs=90)
    steps = steps_per_epoch(imagenet.train, 256)
    distiller.fit(train, epochs=90, steps_per_epoch=steps)
    ```
    """
    steps = steps_per_epoch(source, batch_size)
    if steps < 1:
        raise ValueError(
            f"{source!r} has fewer examples than one batch of {batch_size}."
        )
    part, local_batch = _part(batch_size, input_context)

    examples = chain_epochs(
        lambda epoch: _epoch_part(
            source,
            seed,
            epoch,
            skip_steps if epoch == first_epoch else 0,
            batch_size,
            part,
        ),
        range(first_epoch, epochs),
    )

    def transform(key, epoch, step, position):
        encoded, label = source.read(key)
        example_seed = fold_in(batch_seed(seed, epoch, step), WEAK_VIEW, position)
        image = train_transform(
            encoded, example_seed, image_size, normalization, scale, ratio
        )
        return image, label

    examples = examples.map(
        transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    batches = examples.batch(local_batch, drop_remainder=True)
    return batches.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(
    source,
    batch_size,
    input_context=None,
    image_size=IMAGE_SIZE,
    resize_size=RESIZE_SIZE,
    normalization=NORMALIZATION,
):
    """The evaluation pipeline of `eval_transform` views, in the source's order.

    Args:
        source: a `StreamedSource` (e.g. `Dataset.test`).
        batch_size: the global batch size; the last batch may be smaller.
        input_context: a `tf.distribute.InputContext`: this pipeline then
            takes every `num_input_pipelines`-th example (`shard`) and
            batches by `batch_size / num_replicas_in_sync`.
        image_size, resize_size: `CenterCrop` and `Resize` sizes.
        normalization: `(mean, std)` for images in [0, 1], or `None`.

    Returns:
        A batched, prefetched `tf.data.Dataset` of `(float32 images, int32
        labels)`.

    Example:

    ```python
    distiller.evaluate(eval_pipeline(imagenet.test, 500))
    ```
    """
    keys = source.keys()
    local_batch = batch_size
    if input_context is not None:
        keys = keys.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        local_batch = input_context.get_per_replica_batch_size(batch_size)

    def transform(key):
        encoded, label = source.read(key)
        image = eval_transform(encoded, image_size, resize_size, normalization)
        return image, label

    examples = keys.map(
        transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return examples.batch(local_batch).prefetch(tf.data.AUTOTUNE)


def sample_views(
    source,
    count,
    batch_size=100,
    image_size=IMAGE_SIZE,
    normalization=NORMALIZATION,
    seed=sampling.SEED,
):
    """The evaluation views of a class-balanced sample of `source`, unbatched.

    What a streamed split's export is calibrated on and measured on:
    `source.balanced_sample(count, seed)` (found without reading the whole
    split) through `eval_pipeline`.

    Args:
        source: a `StreamedSource`.
        count: the size of the sample.
        batch_size: images decoded per step.
        image_size, normalization: as for `eval_pipeline`.
        seed: seeds the choice of the sample.

    Returns:
        An unbatched `tf.data.Dataset` of `(float32 image, int32 label)`.

    Example:

    ```python
    images, labels = keras_cskd.data.to_numpy(sample_views(imagenet.test, 1000))
    ```
    """
    return eval_pipeline(
        source.balanced_sample(count, seed),
        batch_size,
        image_size=image_size,
        normalization=normalization,
    ).unbatch()


def _epoch_part(source, seed, epoch, first_step, batch_size, part):
    """`(key, epoch, step, position)` of this pipeline's `part` of every global
    batch of one epoch, from step `first_step`: only its keys are read."""
    batches = source.epoch_keys(seed, epoch).batch(batch_size, drop_remainder=True)
    batches = batches.enumerate().skip(first_step)
    start, stop = part

    def own_part(step, keys):
        keys = tf.nest.map_structure(lambda key: key[start:stop], keys)
        count = stop - start
        return tf.data.Dataset.from_tensor_slices(
            (
                keys,
                tf.fill([count], tf.constant(epoch, tf.int64)),
                tf.fill([count], step),
                tf.range(start, stop, dtype=tf.int64),
            )
        )

    return batches.flat_map(own_part)


def _part(batch_size, input_context):
    """`((start, stop), local batch)`: this input pipeline's slice of every
    global batch, and the batch size it yields (per replica, or global)."""
    if input_context is None:
        return (0, batch_size), batch_size
    pipelines = input_context.num_input_pipelines
    replicas = input_context.num_replicas_in_sync
    if batch_size % replicas or replicas % pipelines:
        raise ValueError(
            f"The global batch of {batch_size} does not divide among "
            f"{replicas} replicas in {pipelines} input pipelines."
        )
    share = batch_size // pipelines
    start = input_context.input_pipeline_id * share
    return (start, start + share), batch_size // replicas
