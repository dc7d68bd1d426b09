"""Batch augmentations as Keras layers, for `pipeline(..., augmentation=...)`.

The CIFAR views are those of the CSKD code (llieeai/lud @ 2704bb2, an
mdistiller fork): `RandomCrop(32, padding=4)` with black padding and
`RandomHorizontalFlip()` for the standard (weak) view, and the same followed
by its `RandAugment(2, 10)` and `Cutout` for the strong view
(`keras_cskd.data.randaugment`). The fork transforms PIL images and normalises
last; here the images arrive normalised (`Dataset.normalization`), so the
padding is black in pixel space, `(0 - mean) / std`. Cropping and flipping
commute with the per-channel normalisation, so the weak view equals the fork's
pad, crop, flip, then normalise, up to float rounding (tested against
torchvision in `tests/test_augment.py`).

Every random layer here follows the stateless protocol of
`keras_cskd.data.stateless` (`augment(images, seed)`); layers in a row
(`RandomSequence`) give layer `i` the seed `fold_in(seed, i)`, so no two layers
share draws. Mixup is the function `mix_up(images, labels, alpha, seed)`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_cskd.data.dataset import size_pair
from keras_cskd.data.randaugment import ReferenceRandAugment
from keras_cskd.data.stateless import StatelessAugmentation, fold_in
from keras_cskd.registry import Registry


def black(normalization):
    """The value of a black pixel (0 of 255) once normalised.

    Args:
        normalization: `(mean, std)` for images in [0, 1]
            (`Dataset.normalization`), or `None`.

    Returns:
        `0.0` without a normalisation, else the per-channel tuple
        `(0 - mean) / std`, computed in float32 as `normalize` does.

    Example:

    >>> black(((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    (-2.0, -2.0, -2.0)
    """
    if normalization is None:
        return 0.0
    mean, std = (np.ravel(np.asarray(s, np.float32)) for s in normalization)
    return tuple(float(v) for v in (np.float32(0.0) - mean) / std)


def padded_crop(images, offsets, padding, fill=0.0):
    """Pads each image by `padding` pixels of `fill` and crops it back at an offset.

    The deterministic core of `RandomPaddedCrop` (and of torchvision's
    `RandomCrop(size, padding)` followed by `F.crop(img, i, j, h, w)`).

    Args:
        images: a `[B, H, W, C]` batch.
        offsets: `[B, 2]` ints `(i, j)`: the top-left corner of each crop in
            the padded image, in `[0, 2 * padding]`; `(padding, padding)` is
            the identity.
        padding: pixels of padding on each side.
        fill: the padding value: a scalar or one value per channel.

    Returns:
        The `[B, H, W, C]` crops.

    Example:

    >>> shifted = padded_crop(np.ones((1, 4, 4, 1), "float32"), [[0, 0]], 1)
    >>> shifted[0, :, :, 0].numpy()  # moved down and right by one pixel
    array([[0., 0., 0., 0.],
           [0., 1., 1., 1.],
           [0., 1., 1., 1.],
           [0., 1., 1., 1.]], dtype=float32)
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    offsets = tf.cast(offsets, tf.int32)
    rows = offsets[:, :1] - padding + tf.range(height)[None, :]  # [B, H]
    columns = offsets[:, 1:] - padding + tf.range(width)[None, :]  # [B, W]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & (
        (columns >= 0) & (columns < width)
    )[:, None, :]
    rows = tf.clip_by_value(rows, 0, height - 1)
    columns = tf.clip_by_value(columns, 0, width - 1)
    cropped = tf.gather(images, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, columns, axis=2, batch_dims=1)
    fill = tf.cast(fill, images.dtype)
    return tf.where(inside[..., None], cropped, fill)


def flip_left_right(images, flips):
    """Mirrors image `i` of a `[B, H, W, C]` batch left-right where `flips[i]`."""
    images = tf.convert_to_tensor(images)
    flips = tf.cast(flips, tf.bool)
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


@keras.saving.register_keras_serializable(package="keras_cskd")
class RandomPaddedCrop(StatelessAugmentation):
    """Pads each image and crops it back at its own random offset.

    The per-image version of padding then `keras.layers.RandomCrop`, which
    crops a whole batch at one offset, and the batch version of torchvision's
    `RandomCrop(size, padding)`. Every image of a `[B, H, W, C]` batch is
    shifted by an independent whole number of pixels in `[-padding, padding]`
    along each axis (offsets uniform in `[0, 2 * padding]`, `padded_crop`),
    the uncovered border filled with `fill`. The identity when called with
    `training=False`. Stateless: `augment(images, seed)`.

    Args:
        padding: the largest shift, in pixels.
        fill: the padding value, a scalar or one value per channel; for
            normalised images, black is `black(normalization)`.
        seed: the seed of the layer's generator (for `call`), or `None`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> crop = RandomPaddedCrop(4, seed=0)
    >>> crop(np.ones((2, 32, 32, 3)), training=True).shape
    TensorShape([2, 32, 32, 3])
    >>> crop.augment(np.ones((2, 32, 32, 3), "float32"), [0, 1]).shape
    TensorShape([2, 32, 32, 3])
    """

    def __init__(self, padding=4, fill=0.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.padding = padding
        self.fill = tuple(fill) if isinstance(fill, list | tuple) else fill

    def draw(self, batch_size, seed):
        """The per-image crop offsets `augment(images, seed)` uses.

        Args:
            batch_size: the number of images.
            seed: an int32/int64 `[2]` seed.

        Returns:
            `[batch_size, 2]` int32 offsets `(i, j)` in `[0, 2 * padding]`
            (all `padding`, the identity, when `padding` is 0).
        """
        shape = tf.stack([tf.cast(batch_size, tf.int32), 2])
        if self.padding == 0:
            return tf.zeros(shape, tf.int32)
        return tf.random.stateless_uniform(
            shape,
            tf.cast(seed, tf.int64),
            minval=0,
            maxval=2 * self.padding + 1,
            dtype=tf.int32,
        )

    def augment(self, images, seed):
        images = tf.convert_to_tensor(images)
        if self.padding == 0:
            return images
        offsets = self.draw(tf.shape(images)[0], seed)
        return padded_crop(images, offsets, self.padding, self.fill)

    def get_config(self):
        config = super().get_config()
        fill = list(self.fill) if isinstance(self.fill, tuple) else self.fill
        config.update({"padding": self.padding, "fill": fill})
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class RandomHorizontalFlip(StatelessAugmentation):
    """Mirrors each image of a batch left-right with probability 1/2.

    torchvision's `RandomHorizontalFlip()` per image (`flip_left_right`);
    stateless: `augment(images, seed)`. The identity with `training=False`.

    Args:
        seed: the seed of the layer's generator (for `call`), or `None`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> RandomHorizontalFlip().augment(np.ones((2, 4, 4, 1), "float32"), [0, 1]).shape
    TensorShape([2, 4, 4, 1])
    """

    def draw(self, batch_size, seed):
        """The per-image flips `augment(images, seed)` uses: a `[batch_size]`
        bool tensor, true for the images it mirrors."""
        shape = tf.reshape(tf.cast(batch_size, tf.int32), (1,))
        return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int64)) < 0.5

    def augment(self, images, seed):
        images = tf.convert_to_tensor(images)
        return flip_left_right(images, self.draw(tf.shape(images)[0], seed))


@keras.saving.register_keras_serializable(package="keras_cskd")
class RandomSequence(keras.Sequential):
    """A `keras.Sequential` of stateless random layers, itself stateless.

    `call` runs the layers in turn, each from its own seed generator;
    `augment(images, seed)` runs them with the seeds `fold_in(seed, i)`.
    """

    def augment(self, images, seed):
        """Applies layer `i`'s `augment` with `fold_in(seed, i)`, in turn."""
        images = tf.convert_to_tensor(images)
        for index, layer in enumerate(self.layers):
            images = layer.augment(images, fold_in(seed, index))
        return images


def mixup_draws(batch_size, alpha, seed):
    """The random draws of `mix_up`, as `keras.layers.MixUp` makes them.

    Args:
        batch_size: the number of images.
        alpha: the Beta(alpha, alpha) parameter.
        seed: an int32/int64 `[2]` seed.

    Returns:
        `(weights, permutation)`: `[B]` float32 weights from Beta(alpha, alpha),
        `G1 / (G1 + G2)` with two Gamma(alpha) draws, and a `[B]` int32
        permutation of the batch.
    """
    shape = tf.reshape(tf.cast(batch_size, tf.int32), (1,))
    alpha = tf.fill(shape, tf.cast(alpha, tf.float32))
    first = tf.random.stateless_gamma(shape, fold_in(seed, 0), alpha)
    second = tf.random.stateless_gamma(shape, fold_in(seed, 1), alpha)
    permutation = tf.random.experimental.stateless_shuffle(
        tf.range(shape[0]), fold_in(seed, 2)
    )
    return first / (first + second), permutation


def mix_up(images, labels, alpha, seed):
    """Stateless mixup, with the semantics of `keras.layers.MixUp`.

    Image `i` becomes `w_i x_i + (1 - w_i) x_p(i)` and its label likewise, with
    the per-sample weights `w` and the batch permutation `p` of
    `mixup_draws(B, alpha, seed)`.

    Args:
        images: a `[B, H, W, C]` batch.
        labels: `[B, K]` one-hot (or soft) labels.
        alpha: the Beta(alpha, alpha) parameter.
        seed: an int32/int64 `[2]` seed.

    Returns:
        The float32 mixed images and labels.

    Example:

    >>> x, y = mix_up(np.ones((4, 8, 8, 1)), np.eye(4), 0.2, [0, 1])
    >>> y.numpy().sum(axis=1)
    array([1., 1., 1., 1.], dtype=float32)
    """
    images = tf.cast(images, tf.float32)
    labels = tf.cast(labels, tf.float32)
    weights, permutation = mixup_draws(tf.shape(images)[0], alpha, seed)
    mixed = weights[:, None, None, None] * images + (
        1.0 - weights[:, None, None, None]
    ) * tf.gather(images, permutation)
    soft = weights[:, None] * labels + (1.0 - weights[:, None]) * tf.gather(
        labels, permutation
    )
    return mixed, soft


def cifar_augmentation(image_size=32, padding=4, seed=None, normalization=None):
    """The standard CIFAR augmentation: padded random crop and horizontal flip.

    The CSKD code's `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`:
    each image of a batch is padded with black by `padding` pixels on every
    side, cropped back to its size at its own random offset
    (`RandomPaddedCrop`) and flipped left-right with probability 1/2. For
    normalised images pass the dataset's `normalization`, so that the padding
    is black in pixel space, `(0 - mean) / std`, not the mean colour.

    Args:
        image_size: `(height, width)` or an int: the size of the images, the
            size of the crops.
        padding: pixels of black padding on each side before the crop.
        seed: the seed of the random layers, or `None`.
        normalization: the images' `(mean, std)` (`Dataset.normalization`),
            or `None` for images in [0, 1].

    Returns:
        A `RandomSequence` (a `keras.Sequential`) that maps `[B, H, W, C]`
        batches to batches of the same shape; random with `training=True`,
        the identity otherwise, and stateless with `augment(images, seed)`.

    Example:

    >>> normalization = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # mean, std
    >>> augmentation = cifar_augmentation(normalization=normalization)
    >>> augmentation(np.zeros((8, 32, 32, 3)), training=True).shape
    TensorShape([8, 32, 32, 3])
    """
    return RandomSequence(
        _crop_and_flip(image_size, padding, normalization, seed),
        name="cifar_crop_flip",
    )


def cifar_strong_augmentation(
    normalization=None, image_size=32, padding=4, num_ops=2, seed=None
):
    """The CSKD code's strong CIFAR view.

    Its `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()` (drawn
    independently of the weak view's) and `RandAugment(2, 10)` with `Cutout`
    (`ReferenceRandAugment`: two of its 14 PIL operations per image, drawn
    with replacement, at magnitudes uniform in each op's range, then a
    `(125, 123, 114)` square), all in pixel space: the layers de-normalise with
    `normalization` and normalise again.

    Args:
        normalization: the images' `(mean, std)` (`Dataset.normalization`),
            or `None` for images in [0, 1].
        image_size: `(height, width)` or an int: the size of the images.
        padding: pixels of black padding on each side before the crop.
        num_ops: RandAugment operations per image.
        seed: the seed of the random layers, or `None`.

    Returns:
        A `RandomSequence` (a `keras.Sequential`) that maps `[B, H, W, C]`
        batches (C = 3, or 1 for grayscale) to batches of the same shape;
        random with `training=True`, the identity otherwise, and stateless
        with `augment(images, seed)`.

    Example:

    >>> normalization = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # mean, std
    >>> strong = cifar_strong_augmentation(normalization, seed=0)
    >>> strong(np.zeros((8, 32, 32, 3)), training=True).shape
    TensorShape([8, 32, 32, 3])
    """
    return RandomSequence(
        [
            *_crop_and_flip(image_size, padding, normalization, seed),
            ReferenceRandAugment(normalization, num_ops, seed=_offset(seed, 2)),
        ],
        name="cifar_strong_augmentation",
    )


def digits_augmentation(seed=None):
    """Random whole-pixel shifts of up to one pixel for the 8x8 digits.

    Each image moves by its own offset in `{-1, 0, 1}` along each axis, the
    uncovered border filled with zeros (the background): no interpolation, so
    every augmented image is one of the 9 shifts of the original.

    Args:
        seed: the seed of the layer's generator (for `call`), or `None`.

    Returns:
        A `RandomPaddedCrop(padding=1, fill=0)`.

    Example:

    >>> augmentation = digits_augmentation()
    >>> augmentation(np.zeros((4, 8, 8, 1)), training=True).shape
    TensorShape([4, 8, 8, 1])
    """
    return RandomPaddedCrop(1, fill=0.0, seed=seed, name="digits_shift")


def _crop_and_flip(image_size, padding, normalization, seed):
    """The input and the black-padded crop and flip both CIFAR views start with."""
    height, width = size_pair(image_size)
    return [
        keras.Input((height, width, None)),
        RandomPaddedCrop(padding, fill=black(normalization), seed=seed),
        RandomHorizontalFlip(seed=_offset(seed, 1)),
    ]


def _offset(seed, layer):
    """A distinct seed per layer: layers seeded alike draw the same numbers."""
    return None if seed is None else seed + layer


# The training views a config names (`data.augmentation`): each builder takes
# the `Dataset` and a seed and returns a stateless layer, or `None` for none.
AUGMENTATIONS = Registry(
    "augmentation",
    hint=" (data.augmentation; add one with @AUGMENTATIONS.register)",
)
# The strong second view (`data.strong_augmentation`, with `data.two_views`).
STRONG_AUGMENTATIONS = Registry(
    "strong augmentation",
    hint=" (data.strong_augmentation; add one with @STRONG_AUGMENTATIONS.register)",
)


def get_augmentation(name, dataset, seed=None):
    """The training view `name` (`AUGMENTATIONS`) built for `dataset`.

    The teacher cache and training both take it from here, so they agree
    exactly; the layer is named `name` (the cache's key holds it).

    Example:

    >>> layer = get_augmentation("digits_shift", keras_cskd.data.load("digits"))
    >>> layer.name
    'digits_shift'
    """
    return AUGMENTATIONS.get(name)(dataset, seed)


def get_strong_augmentation(name, dataset, seed=None):
    """The strong second view `name` (`STRONG_AUGMENTATIONS`) for `dataset`.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> strong = get_strong_augmentation("cifar_randaugment", digits, seed=0)
    """
    return STRONG_AUGMENTATIONS.get(name)(dataset, seed)


@AUGMENTATIONS.register("none")
@STRONG_AUGMENTATIONS.register("none")
def no_augmentation(dataset, seed=None):
    """The images as they are."""
    return None


@AUGMENTATIONS.register("digits_shift")
def digits_shift(dataset, seed=None):
    """The 8x8 digits' shifts of up to one pixel (`digits_augmentation`)."""
    return digits_augmentation(seed)


@AUGMENTATIONS.register("cifar_crop_flip")
def cifar_crop_flip(dataset, seed=None):
    """The CSKD code's black-padded crop and flip (`cifar_augmentation`)."""
    return cifar_augmentation(
        dataset.input_shape[:2], seed=seed, normalization=dataset.normalization
    )


@AUGMENTATIONS.register("imagenet_rrc")
def imagenet_rrc(dataset, seed=None):
    """RandomResizedCrop and flip: drawn by the streamed pipeline as it decodes
    each image (`keras_cskd.data.transforms.train_transform`), not a layer."""
    raise ValueError(
        f"data.augmentation 'imagenet_rrc' is the streamed pipeline's "
        f"RandomResizedCrop and flip, and {dataset.name} is held in memory: use "
        "'cifar_crop_flip', 'digits_shift' or 'none', or stream it "
        "(data.streaming=True)."
    )


@STRONG_AUGMENTATIONS.register("cifar_randaugment")
def cifar_randaugment(dataset, seed=None):
    """The CSKD code's strong view of `dataset`: its own crop and flip,
    `RandAugment(2, 10)` and `Cutout` (`cifar_strong_augmentation`); the 8x8
    digits are padded by 1 pixel, as their standard view shifts them."""
    padding = 1 if tuple(dataset.input_shape[:2]) == (8, 8) else 4
    return cifar_strong_augmentation(
        dataset.normalization, dataset.input_shape[:2], padding=padding, seed=seed
    )
