"""The `Dataset` record every data source returns, its normalisation and sizes."""

import dataclasses
import numbers

import tensorflow as tf


@dataclasses.dataclass
class Dataset:
    """The splits of a classification dataset, as unbatched `(image, label)` pairs.

    Attributes:
        name: the name the dataset was loaded by.
        train, validation, test: unbatched `tf.data.Dataset`s of float32 images
            and int32 labels; `validation` may be `None`.
        num_classes: number of classes.
        input_shape: shape of one image, without the batch axis.
        normalization: the per-channel `(mean, std)` the images were
            normalised with, for images in [0, 1]: an image is
            `normalize(pixels, normalization)`, `(pixels / 255 - mean) / std`.
            `None` when the images are not normalised (in [0, 1]). Augmentations
            that work in pixel space (black padding, PIL-like operations) read
            it.
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
    normalization: tuple | None = None


def normalize(pixels, normalization, max_value=255.0):
    """Images as a dataset holds them, from pixel values.

    `(pixels / max_value - mean) / std` in float32, in that order (as
    torchvision's `ToTensor` and `Normalize` compute it), or `pixels /
    max_value` without a normalisation.

    Args:
        pixels: pixel values in [0, max_value], any shape ending in channels.
        normalization: `(mean, std)` per-channel sequences (or scalars) for
            images in [0, 1], or `None`.
        max_value: the pixel value of white.

    Returns:
        float32 images.

    Example:

    >>> white = np.full((1, 1, 3), 255)
    >>> normalize(white, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))).numpy()
    array([[[2., 2., 2.]]], dtype=float32)
    """
    images = tf.cast(pixels, tf.float32) / max_value
    if normalization is None:
        return images
    mean, std = normalization
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def denormalize(images, normalization, max_value=255.0):
    """The pixel values of normalised images, the inverse of `normalize`.

    Not rounded: a round trip of whole pixel values is off by about 1e-5.

    Args:
        images: images as `normalize` returns them.
        normalization: the `(mean, std)` they were normalised with, or `None`.
        max_value: the pixel value of white.

    Returns:
        float32 pixel values.
    """
    images = tf.cast(images, tf.float32)
    if normalization is not None:
        mean, std = normalization
        images = images * tf.constant(std, tf.float32) + tf.constant(mean, tf.float32)
    return images * max_value


def size_pair(size):
    """An image size as `(height, width)`: one int is a square's side.

    Args:
        size: an int, a `(height, width)` pair, or `None`.

    Returns:
        A `(height, width)` tuple of ints, or `None` for `None`.

    Example:

    >>> size_pair(224), size_pair([32, 48])
    ((224, 224), (32, 48))
    """
    if size is None:
        return None
    if isinstance(size, numbers.Integral):
        return (int(size), int(size))
    return tuple(int(side) for side in size)
