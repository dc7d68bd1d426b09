"""The images `"tflite_int8"` is calibrated on: a shuffled, class-balanced sample.

Full-integer conversion fixes every activation's int8 range from the images it is
calibrated on, so these should look like the whole training split. Its first
batches need not: an image folder (`folder:`) lists its training split class by
class, and its first 640 images can all be of one class. `calibration_batches`
instead reads the labels of the first `SCAN_LIMIT` examples (at least as many as
it needs), takes examples round-robin over the classes (each class's examples,
and the order of the classes, shuffled with a fixed seed) and batches those
images, classes interleaved. The same data gives the same sample every time.

The data is read twice (labels, then the chosen images), so it must yield its
examples in the same order each time; a dataset reshuffled on every iteration
still gives a random sample, but not a balanced one. Unlabelled images are
sampled uniformly from the examples scanned.

`SCAN_LIMIT` is all 50,000 of CIFAR's training images (two passes, a few
seconds); a larger split costs no more, but a class that only appears after its
first `SCAN_LIMIT` examples is not sampled. A streamed split (ImageNet's) is
not scanned here: its own `balanced_sample` picks a balanced sample from its
listing or from a bounded read (`keras_cskd.data.StreamedSource`), and
that sample, decoded, is the data given here.

`calibration_sample` also counts the sample's images per class, which the
export's manifest and report record.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_cskd.data.sampling import SCAN_LIMIT, SEED, balanced_indices
from keras_cskd.export.layout import INPUT_NAME

_READ_BATCH = 4096  # Examples per step while reading; bounds memory, not results.


@dataclasses.dataclass
class CalibrationSample:
    """The int8 calibration images and how many of each class they hold.

    Attributes:
        batches: a list of NumPy arrays of images.
        examples_per_class: `{class id: count}`, sorted by class; `None` for
            unlabelled images.
    """

    batches: list
    examples_per_class: dict | None

    @property
    def num_examples(self):
        return sum(len(batch) for batch in self.batches)


def calibration_sample(
    representative_data,
    input_spec,
    num_batches=20,
    batch_size=32,
    scan_limit=SCAN_LIMIT,
    seed=SEED,
):
    """`calibration_batches`' sample, with its count of images per class.

    Takes the arguments of `calibration_batches` and raises what it raises.

    Returns:
        A `CalibrationSample`.

    Example:

    >>> from keras_cskd.export.layout import input_spec
    >>> digits = keras_cskd.data.load("digits")
    >>> student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    >>> sample = calibration_sample(digits.train, input_spec(student))
    >>> sample.num_examples, len(sample.examples_per_class)
    (640, 10)
    """
    count = num_batches * batch_size
    examples, labelled = _examples(representative_data, input_spec)
    labels = _read_labels(examples, max(scan_limit, count))
    if not len(labels):
        raise ValueError(
            "`representative_data` is empty; int8 calibration needs images."
        )
    chosen = balanced_indices(labels, count, seed)
    images = _images_at(examples, chosen).astype(input_spec.dtype.as_numpy_dtype)
    per_class = None
    if labelled:
        classes, counts = np.unique(labels[chosen], return_counts=True)
        per_class = {int(c): int(n) for c, n in zip(classes, counts, strict=True)}
    return CalibrationSample(
        [images[i : i + batch_size] for i in range(0, len(images), batch_size)],
        per_class,
    )


def calibration_batches(
    representative_data,
    input_spec,
    num_batches=20,
    batch_size=32,
    scan_limit=SCAN_LIMIT,
    seed=SEED,
):
    """A class-balanced sample of `representative_data`'s images, in batches.

    Args:
        representative_data: a `tf.data.Dataset` of `(image, label)` pairs
            (integer or one-hot labels; further components are ignored), of
            images, or of dicts holding `"images"`, batched or not (batched
            data is unbatched first); or a NumPy array of images, or a tuple
            `(images, labels)` of arrays.
        input_spec: the student's input, `tf.TensorSpec((None, *image_shape))`
            (see `keras_cskd.export.layout.input_spec`).
        num_batches: the number of batches.
        batch_size: the images per batch (the last may hold fewer).
        scan_limit: labels are read from the first `max(scan_limit,
            num_batches * batch_size)` examples only.
        seed: seeds the choice of examples.

    Returns:
        A list of at most `num_batches` NumPy arrays of images of
        `input_spec`'s dtype: `num_batches * batch_size` images, or all of
        those scanned if fewer.

    Raises:
        ValueError: if the images do not match `input_spec`'s rank, or the
            data is empty.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> from keras_cskd.export.layout import input_spec
    >>> student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    >>> batches = calibration_batches(digits.train, input_spec(student))
    >>> len(batches), batches[0].shape
    (20, (32, 8, 8, 1))
    """
    return calibration_sample(
        representative_data, input_spec, num_batches, batch_size, scan_limit, seed
    ).batches


def _examples(data, input_spec):
    """`(examples, labelled)`: `data` as an unbatched dataset of images or of
    `(image, label, ...)`, and whether it has integer or one-hot labels."""
    if not isinstance(data, tf.data.Dataset):
        if isinstance(data, (tuple, list)):
            data = tuple(np.asarray(part) for part in data)
        else:
            data = np.asarray(data)
        data = tf.data.Dataset.from_tensor_slices(data)
    if isinstance(data.element_spec, dict):
        data = data.map(lambda features: features[INPUT_NAME])
    spec = data.element_spec
    image_shape = (spec[0] if isinstance(spec, tuple) else spec).shape
    rank = len(input_spec.shape)
    if len(image_shape) not in (rank - 1, rank):
        raise ValueError(
            f"`representative_data` holds images of shape {image_shape}; "
            f"the student takes {input_spec.shape}."
        )
    batched = len(image_shape) == rank
    label = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    label_rank = getattr(getattr(label, "shape", None), "rank", None)
    labelled = label_rank is not None and label_rank - batched in (0, 1)
    return (data.unbatch() if batched else data), labelled


def _read(examples, limit):
    """The first `limit` examples in batches: few steps through `tf.data`."""
    return examples.take(limit).batch(_READ_BATCH)


def _images(images, *labels):
    return images


def _class_ids(images, *labels):
    """A batch's classes: its integer labels, the argmax of one-hot labels, or
    0 for unlabelled images (or labels that are not classes)."""
    label = labels[0] if labels else None
    if label is not None and label.shape.rank == 1:
        return tf.cast(label, tf.int64)
    if label is not None and label.shape.rank == 2:
        return tf.argmax(label, axis=-1, output_type=tf.int64)
    return tf.zeros(tf.shape(images)[:1], tf.int64)


def _read_labels(examples, limit):
    """The class ids of the first `limit` examples, as a NumPy array."""
    batches = _read(examples, limit).map(_class_ids).as_numpy_iterator()
    return np.concatenate([np.zeros(0, np.int64), *batches])


def _images_at(examples, indices):
    """The images at the distinct `indices` of `examples`, in that order."""
    ascending = np.sort(indices)
    images, start = [], 0
    for batch in _read(examples, ascending[-1] + 1).map(_images).as_numpy_iterator():
        end = start + len(batch)
        images.append(
            batch[ascending[(ascending >= start) & (ascending < end)] - start]
        )
        start = end
    if sum(len(chosen) for chosen in images) != len(ascending):
        raise ValueError(
            "`representative_data` yielded fewer examples on its second pass; "
            "calibration needs data that yields the same examples each time."
        )
    return np.concatenate(images)[np.searchsorted(ascending, indices)]
