"""Batch augmentations as Keras layers, for `pipeline(..., augmentation=...)`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cskd")
class RandomPaddedCrop(keras.layers.Layer):
    """Zero-pads each image and crops it back at its own random offset.

    The per-image version of padding then `keras.layers.RandomCrop`, which
    crops a whole batch at one offset. Every image of a `[B, H, W, C]` batch is
    shifted by an independent whole number of pixels in `[-padding, padding]`
    along each axis, the uncovered border filled with zeros. The identity when
    called with `training=False`.

    Args:
        padding: the largest shift, in pixels.
        seed: the seed of the offsets, or `None`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> crop = RandomPaddedCrop(4, seed=0)
    >>> crop(np.ones((2, 32, 32, 3)), training=True).shape
    TensorShape([2, 32, 32, 3])
    """

    def __init__(self, padding=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training or self.padding == 0:
            return images
        padding = self.padding
        shape = ops.shape(images)
        batch_size, height, width = shape[0], shape[1], shape[2]
        padded = ops.pad(
            images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
        )
        offsets = keras.random.randint(
            (batch_size, 2), 0, 2 * padding + 1, seed=self.seed_generator
        )
        rows = offsets[:, :1] + ops.arange(height)[None, :]  # [B, H]
        columns = offsets[:, 1:] + ops.arange(width)[None, :]  # [B, W]
        padded = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
        return ops.take_along_axis(padded, columns[:, None, :, None], axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding, "seed": self.seed})
        return config


def cifar_augmentation(image_size=32, padding=4, seed=None):
    """The standard CIFAR augmentation: padded random crop and horizontal flip.

    Each image of a batch is zero-padded by `padding` pixels on every side,
    cropped back to its size at its own random offset (`RandomPaddedCrop`)
    and flipped left-right with probability 1/2. Applied after normalisation,
    the padding is the mean colour (zero), not black.

    Args:
        image_size: `(height, width)` or an int: the size of the images, the
            size of the crops.
        padding: pixels of zero padding on each side before the crop.
        seed: the seed of the random layers, or `None`.

    Returns:
        A `keras.Sequential` that maps `[B, H, W, C]` batches to batches of the
        same shape; random with `training=True`, the identity otherwise.

    Example:

    >>> augmentation = cifar_augmentation()
    >>> augmentation(np.zeros((8, 32, 32, 3)), training=True).shape
    TensorShape([8, 32, 32, 3])
    """
    height, width = (
        (image_size, image_size) if isinstance(image_size, int) else image_size
    )
    return keras.Sequential(
        [
            keras.Input((height, width, None)),
            RandomPaddedCrop(padding, seed=seed),
            keras.layers.RandomFlip("horizontal", seed=seed),
        ],
        name="cifar_augmentation",
    )


def digits_augmentation(seed=None):
    """Random shifts of up to one pixel for the 8x8 digits.

    Args:
        seed: the seed of the random translation, or `None`.

    Returns:
        A `keras.layers.RandomTranslation` of up to 1/8 of the height and
        width, filling with zeros (the background).

    Example:

    >>> augmentation = digits_augmentation()
    >>> augmentation(np.zeros((4, 8, 8, 1)), training=True).shape
    TensorShape([4, 8, 8, 1])
    """
    return keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant", seed=seed)
