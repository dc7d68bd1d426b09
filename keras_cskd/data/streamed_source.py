"""What a streamed split implements: encoded images read as the pipeline needs.

A source whose images are too many to decode when it is loaded (ImageNet's
folders, `tfds:imagenet2012`) puts a `StreamedSource` in each split of its
`Dataset` instead of decoded images; the streamed pipelines
(`keras_cskd.data.streaming`) read it. Each source owns its implementation:
`folder.FileRecords` (image files, random access), `tfds.TFDSRecords` (a
stream of TFDS records) and `EncodedRecords` below (encoded images held in
memory, the sample of a stream).
"""

import numpy as np
import tensorflow as tf

from keras_cskd.data import sampling
from keras_cskd.data.batching import epoch_shuffle_seed


class StreamedSource:
    """One split of encoded images and their labels, read as they are needed.

    A subclass sets `name` and `num_examples` and implements `keys` (every
    example's key in a fixed order: what evaluation reads), `epoch_keys` (the
    keys in an epoch's order, a function of `(seed, epoch)` alone, so that a
    resumed run reads what an uninterrupted one reads), `read` (the encoded
    image and label of a key, inside a `tf.data` map) and, for an export's
    calibration sample (`streaming.sample_views`), `balanced_sample`. A key
    is whatever makes `read` cheap: an index into a table of files, or the
    whole record of a stream.

    Attributes:
        name: where the examples come from, for messages.
        num_examples: the number of examples.

    Example:

    >>> class Bytes(StreamedSource):
    ...     def __init__(self, images, labels):
    ...         self.images, self.labels = images, labels
    ...         self.name, self.num_examples = "bytes", len(images)
    ...     def keys(self):
    ...         return tf.data.Dataset.range(self.num_examples)
    ...     def epoch_keys(self, seed, epoch):
    ...         return self.keys().shuffle(self.num_examples, seed=seed + epoch)
    ...     def read(self, key):
    ...         return tf.gather(self.images, key), tf.gather(self.labels, key)
    >>> jpeg = tf.io.encode_jpeg(np.zeros((40, 40, 3), "uint8"))
    >>> source = Bytes(tf.stack([jpeg] * 4), tf.constant([0, 1, 0, 1]))
    >>> [int(label) for _, label in source.dataset()]
    [0, 1, 0, 1]

    `keras_cskd.data.streaming.train_pipeline(source, batch_size=2)` then
    trains on it.
    """

    name = ""
    num_examples = 0

    def keys(self):
        """The examples' keys in a fixed order, a `tf.data.Dataset`."""
        raise NotImplementedError

    def epoch_keys(self, seed, epoch):
        """The keys in epoch `epoch`'s order, a function of `(seed, epoch)`."""
        raise NotImplementedError

    def read(self, key):
        """`(encoded image, int32 label)` of a key: scalar string and int tensors."""
        raise NotImplementedError

    def balanced_sample(self, count, seed=sampling.SEED):
        """A class-balanced sample of `count` examples, read boundedly.

        What an export is calibrated on and measured against: counts per class
        differ by at most one (except for classes with too few examples), the
        classes interleaved (`sampling.balanced_indices`). How the examples are
        found, without reading the whole split, is each subclass's own.

        Args:
            count: the number of examples; all of them if fewer exist.
            seed: seeds the choice.

        Returns:
            A `StreamedSource` of the sample, in a fixed, interleaved order.
        """
        raise NotImplementedError

    def dataset(self):
        """The `(encoded image, int32 label)` pairs, unbatched, in a fixed order."""
        return self.keys().map(self.read, num_parallel_calls=tf.data.AUTOTUNE)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, {self.num_examples} examples)"


class EncodedRecords(StreamedSource):
    """Encoded images held in memory with their labels: a sample of a stream.

    Each epoch's order is a full shuffle seeded by `(seed, epoch)`.

    Args:
        images: the encoded images (JPEG, PNG, ... bytes), a sequence.
        labels: their int labels.
        name: a description, for messages.

    Example:

    >>> jpeg = tf.io.encode_jpeg(np.zeros((4, 4, 3), "uint8")).numpy()
    >>> records = EncodedRecords([jpeg], [0])
    >>> records.num_examples
    1
    """

    def __init__(self, images, labels, name="encoded images"):
        self.images = [bytes(image) for image in images]
        self.labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels for {name}."
            )
        self.name = name
        self.num_examples = len(self.images)

    def keys(self):
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": tf.constant(self.images, tf.string, shape=[len(self.images)]),
                "label": self.labels,
            }
        )

    def epoch_keys(self, seed, epoch):
        epoch_seed = epoch_shuffle_seed(seed, epoch)
        return self.keys().shuffle(
            max(self.num_examples, 1), seed=epoch_seed, reshuffle_each_iteration=False
        )

    def read(self, key):
        return key["image"], key["label"]

    def balanced_sample(self, count, seed=sampling.SEED):
        """A class-balanced sample of the held images (`sampling.balanced_indices`)."""
        chosen = sampling.balanced_indices(self.labels, count, seed)
        return EncodedRecords(
            [self.images[index] for index in chosen],
            self.labels[chosen],
            name=f"{self.name}, balanced",
        )
