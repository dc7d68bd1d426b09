"""torchvision's ImageNet transforms of PIL images, reproduced exactly in `tf`.

torchvision's standard ImageNet transforms as they run on PIL images
(torchvision 0.28, Pillow 13), pixel for pixel, on every image, crop and
size (`tests/test_imagenet_data.py` checks them against torchvision's
outputs; see `tests/golden/README.md`). The streamed pipelines
(`keras_cskd.data.streaming`) apply them to every streamed source.

- `decode`: JPEG with libjpeg's accurate integer DCT, as Pillow decodes it
  (TensorFlow's default, the fast DCT, is off by up to 8 levels).
- Training view (`train_transform`): `RandomResizedCrop(224)` (area scale
  (0.08, 1), aspect ratio (3/4, 4/3) log-uniform, ten attempts, then the
  centre-crop fallback: `crop_params`), `RandomHorizontalFlip()`,
  `ToTensor()`, `Normalize(ImageNet mean, std)`.
- Evaluation view (`eval_transform`): `Resize(256)` (the shorter side to 256,
  the longer to `int(256 * long / short)`), `CenterCrop(224)` (offsets rounded
  half to even, as Python's `round`), `ToTensor()`, `Normalize`.

Both resizes are Pillow's antialiased bilinear filter, which torchvision
applies to PIL images, reimplemented in Pillow's own integer arithmetic
(`pil_resize`): 22-bit fixed-point weights, a rounded 8-bit image between the
two one-dimensional passes, and Pillow 13's order of the passes.
`tf.image.resize(..., antialias=True)` computes the same filter in floating
point, without the rounding between the passes: on the golden fixture its
float output is within 0.996 of torchvision's pixel values (0 to 255; mean
absolute difference 0.29), and rounded to 8 bits it differs by one level on
17% of the values, so it is not used here.

Example:

>>> tf.io.write_file("cat.jpg", tf.io.encode_jpeg(np.zeros((300, 400, 3), "uint8")))
>>> view = train_transform(tf.io.read_file("cat.jpg"), seed=[0, 1])
>>> view.shape
TensorShape([224, 224, 3])
"""

import math

import tensorflow as tf

from keras_cskd.data.dataset import normalize, size_pair
from keras_cskd.data.stateless import fold_in

# torchvision's `Normalize` constants for ImageNet, for images in [0, 1].
NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The ImageNet views' crop size and the evaluation view's resize.
IMAGE_SIZE = 224
RESIZE_SIZE = 256
# `RandomResizedCrop`'s defaults: area fraction and aspect ratio (w / h) ranges.
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10

# Pillow's fixed point for 8-bit images (libImaging/Resample.c).
_PRECISION_BITS = 32 - 8 - 2


def decode(encoded):
    """Decodes an encoded image to uint8 RGB exactly as Pillow does.

    JPEGs are decoded with the accurate integer DCT (Pillow's, and libjpeg's
    default); other formats (PNG, BMP, GIF: the first frame) with
    `tf.io.decode_image`. Grayscale becomes RGB.

    Args:
        encoded: a scalar string tensor, the file's bytes.

    Returns:
        A uint8 `[height, width, 3]` image.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def pil_resize(image, size):
    """Pillow's `Image.resize(size, BILINEAR)` of a uint8 image, exactly.

    The filter is the triangle of support 1 stretched by the scale when
    downsampling (antialiasing). As Pillow computes it: weights per output
    pixel in float64, normalised, then rounded to 22-bit fixed point; two
    one-dimensional passes in integers, each rounded and clipped to 8 bits;
    the vertical pass first when the height shrinks by more than twice what
    the width does (Pillow 13; Pillow 12 and older always start with the
    horizontal pass, which changes a few pixels by one level).

    Args:
        image: a uint8 `[height, width, channels]` image.
        size: the output `(height, width)`, ints or int32 scalars.

    Returns:
        The uint8 `[size[0], size[1], channels]` image.

    Example:

    >>> pil_resize(np.zeros((375, 500, 3), "uint8"), (224, 224)).shape
    TensorShape([224, 224, 3])
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    out_height = tf.cast(size[0], tf.int32)
    out_width = tf.cast(size[1], tf.int32)

    def horizontal_first():
        columns = _resample_rows(tf.transpose(image, [1, 0, 2]), out_width)
        return _resample_rows(tf.transpose(columns, [1, 0, 2]), out_height)

    def vertical_first():
        rows = _resample_rows(image, out_height)
        columns = _resample_rows(tf.transpose(rows, [1, 0, 2]), out_width)
        return tf.transpose(columns, [1, 0, 2])

    vertical = (out_height < height) & (height - out_height > 2 * (width - out_width))
    return tf.cond(vertical, vertical_first, horizontal_first)


def _pillow_taps(in_size, out_size):
    """Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`, bilinear.

    Returns `(index, weights)`, both int32 `[out_size, K]`: the input index of
    each tap (clamped; its weight is then 0) and its 22-bit fixed-point weight.
    """
    in_size = tf.cast(in_size, tf.int32)
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the triangle's support, 1, stretched
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    centers = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    # C's (int) truncates towards zero.
    xmin = tf.maximum(tf.cast(centers - support + 0.5, tf.int32), 0)
    xmax = tf.minimum(tf.cast(centers + support + 0.5, tf.int32), in_size) - xmin
    taps = tf.range(ksize)
    index = taps[None, :] + xmin[:, None]
    distance = (tf.cast(index, tf.float64) - centers[:, None] + 0.5) * (
        1.0 / filterscale
    )
    weights = tf.maximum(1.0 - tf.abs(distance), 0.0)
    weights = tf.where(taps[None, :] < xmax[:, None], weights, 0.0)
    # Summed left to right, as Pillow does (a cumulative sum is sequential).
    total = tf.math.cumsum(weights, axis=1)[:, -1:]
    weights = tf.math.divide_no_nan(weights, total)
    fixed = tf.cast(0.5 + weights * float(1 << _PRECISION_BITS), tf.int32)
    # Pillow's `ksize` bounds the taps; the widest window is often narrower.
    used = tf.reduce_max(xmax)
    return tf.minimum(index, in_size - 1)[:, :used], fixed[:, :used]


def _resample_rows(pixels, out_size):
    """One pass of `pil_resize` along axis 0 of uint8 `[N, M, C]` pixels.

    Pillow's 8-bit pass: integer sums of the taps times their fixed-point
    weights, plus a half, shifted down, clipped to uint8. (Moving uint8
    rather than int32 between the steps makes the resize a third faster.)
    """
    index, weights = _pillow_taps(tf.shape(pixels)[0], out_size)
    taps = tf.cast(tf.gather(pixels, index), tf.int32)  # [out_size, K, M, C]
    total = tf.reduce_sum(taps * weights[:, :, None, None], axis=1)
    rounded = tf.bitwise.right_shift(
        total + (1 << (_PRECISION_BITS - 1)), _PRECISION_BITS
    )
    return tf.cast(tf.clip_by_value(rounded, 0, 255), tf.uint8)


def crop_size(height, width, scales, log_ratios, ratio=RATIO):
    """The crop size of `RandomResizedCrop.get_params`, given its draws.

    torchvision's algorithm: for attempt `t`, the area
    `height * width * scales[t]` and the aspect ratio `exp(log_ratios[t])`
    (in float32, as torch computes it) give
    `w = round(sqrt(area * aspect))` and `h = round(sqrt(area / aspect))`
    (float64, halves to even, as Python's `round`); the first attempt that
    fits in the image is the crop. When none fits, the fallback: the whole
    image, clamped to the ratio range.

    Args:
        height, width: the image's size, int scalars.
        scales: `[ATTEMPTS]` area fractions.
        log_ratios: `[ATTEMPTS]` log aspect ratios (width / height).
        ratio: the aspect ratio range, for the fallback.

    Returns:
        `(h, w, found)`: int32 crop height and width, and whether an attempt
        fitted (else the crop is the fallback, centred).

    Example:

    >>> crop_size(375, 500, [0.5] * 10, [0.0] * 10)[:2]
    (<tf.Tensor: ... numpy=306>, <tf.Tensor: ... numpy=306>)
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    height64 = tf.cast(height, tf.float64)
    width64 = tf.cast(width, tf.float64)
    area = height64 * width64 * tf.cast(scales, tf.float64)
    aspect = tf.cast(tf.exp(tf.cast(log_ratios, tf.float32)), tf.float64)
    widths = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    heights = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    attempts = tf.shape(fits)[0]
    first = tf.reduce_min(tf.where(fits, tf.range(attempts), attempts))
    found = first < attempts
    low, high = min(ratio), max(ratio)
    in_ratio = width64 / height64
    fallback_height = tf.where(
        in_ratio < low, tf.cast(tf.round(width64 / low), tf.int32), height
    )
    fallback_width = tf.where(
        in_ratio > high, tf.cast(tf.round(height64 * high), tf.int32), width
    )
    first = tf.minimum(first, attempts - 1)
    crop_height = tf.where(found, tf.gather(heights, first), fallback_height)
    crop_width = tf.where(found, tf.gather(widths, first), fallback_width)
    return crop_height, crop_width, found


def crop_params(height, width, seed, scale=SCALE, ratio=RATIO):
    """A random crop of `RandomResizedCrop`, drawn from a stateless seed.

    The draws of torchvision's `get_params`, all at once: ten area fractions
    uniform in `scale`, ten log aspect ratios uniform in `log(ratio)` (both
    float32), then the offsets uniform over the positions where the crop
    fits (`crop_size`); the fallback crop is centred, offsets rounded down.

    Args:
        height, width: the image's size, int scalars.
        seed: an int32/int64 `[2]` stateless seed.
        scale: the range of the crop's area, as a fraction of the image's.
        ratio: the range of the crop's aspect ratio (width / height).

    Returns:
        int32 `[4]`: `(i, j, h, w)`, the crop's top, left, height and width.

    Example:

    >>> crop_params(375, 500, [0, 7]).shape
    TensorShape([4])
    """
    seed = tf.cast(seed, tf.int64)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    scales = tf.random.stateless_uniform(
        [ATTEMPTS], fold_in(seed, 0), minval=scale[0], maxval=scale[1]
    )
    log_ratios = tf.random.stateless_uniform(
        [ATTEMPTS],
        fold_in(seed, 1),
        minval=math.log(ratio[0]),
        maxval=math.log(ratio[1]),
    )
    crop_height, crop_width, found = crop_size(height, width, scales, log_ratios, ratio)

    def offset(size, crop, stream):
        drawn = tf.random.stateless_uniform(
            [], fold_in(seed, stream), minval=0, maxval=size - crop + 1, dtype=tf.int32
        )
        return tf.where(found, drawn, (size - crop) // 2)

    top = offset(height, crop_height, 2)
    left = offset(width, crop_width, 3)
    return tf.stack([top, left, crop_height, crop_width])


def resized_crop(image, crop, size=IMAGE_SIZE):
    """torchvision's `F.resized_crop` of a PIL image: crop, then `pil_resize`.

    Args:
        image: a uint8 `[height, width, channels]` image.
        crop: `(i, j, h, w)`: top, left, height and width, inside the image.
        size: the output size, an int or `(height, width)`.

    Returns:
        The uint8 crop resized to `size`.
    """
    image = tf.convert_to_tensor(image)
    crop = tf.cast(crop, tf.int32)
    cropped = tf.slice(image, [crop[0], crop[1], 0], [crop[2], crop[3], -1])
    return pil_resize(cropped, size_pair(size))


def resize_shorter(image, size=RESIZE_SIZE):
    """torchvision's `Resize(size)` of a PIL image (one int: the shorter side).

    The shorter side becomes `size`, the longer `int(size * long / short)`
    (rounded down), resized with `pil_resize`.

    Args:
        image: a uint8 `[height, width, channels]` image.
        size: the new length of the shorter side.

    Returns:
        The resized uint8 image.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short, long = tf.minimum(height, width), tf.maximum(height, width)
    new_long = (size * long) // short
    portrait = width <= height
    new_height = tf.where(portrait, new_long, size)
    new_width = tf.where(portrait, size, new_long)
    return pil_resize(image, (new_height, new_width))


def center_crop(image, size=IMAGE_SIZE):
    """torchvision's `CenterCrop(size)`: offsets `round((side - size) / 2)`.

    Python's `round` takes halves to even, and so does `tf.round`. An image
    smaller than the crop is first padded with zeros, as torchvision does.

    Args:
        image: a `[height, width, channels]` image.
        size: the crop size, an int or `(height, width)`.

    Returns:
        The `[size, size, channels]` crop.
    """
    image = tf.convert_to_tensor(image)
    crop_height, crop_width = size_pair(size)
    shape = tf.shape(image)
    pad_height = tf.maximum(crop_height - shape[0], 0)
    pad_width = tf.maximum(crop_width - shape[1], 0)
    image = tf.pad(
        image,
        [
            [pad_height // 2, (pad_height + 1) // 2],
            [pad_width // 2, (pad_width + 1) // 2],
            [0, 0],
        ],
    )
    shape = tf.shape(image)

    def offset(side, crop):
        return tf.cast(tf.round(tf.cast(side - crop, tf.float64) / 2.0), tf.int32)

    top = offset(shape[0], crop_height)
    left = offset(shape[1], crop_width)
    return tf.slice(image, [top, left, 0], [crop_height, crop_width, -1])


def train_view(image, crop, flip, image_size=IMAGE_SIZE, normalization=NORMALIZATION):
    """The training view of a decoded image for given draws.

    `resized_crop(image, crop, image_size)`, mirrored left-right when `flip`,
    then `normalize`d: the deterministic part of `train_transform`.

    Args:
        image: a uint8 `[height, width, 3]` image.
        crop: `(i, j, h, w)`, as `crop_params` draws it.
        flip: a bool scalar.
        image_size: the output size.
        normalization: `(mean, std)` for images in [0, 1], or `None`.

    Returns:
        A float32 `[image_size, image_size, 3]` image.
    """
    view = resized_crop(image, crop, image_size)
    view = tf.cond(
        tf.cast(flip, tf.bool), lambda: tf.reverse(view, axis=[1]), lambda: view
    )
    height, width = size_pair(image_size)
    view = normalize(view, normalization)
    view.set_shape([height, width, 3])
    return view


def train_transform(
    encoded,
    seed,
    image_size=IMAGE_SIZE,
    normalization=NORMALIZATION,
    scale=SCALE,
    ratio=RATIO,
):
    """torchvision's ImageNet training transform, drawing from a stateless seed.

    `RandomResizedCrop(image_size, scale, ratio)` with `crop_params(...,
    fold_in(seed, 0))`, `RandomHorizontalFlip()` with a uniform draw from
    `fold_in(seed, 1)` below 1/2, `ToTensor()` and `Normalize`.

    Args:
        encoded: the image file's bytes, a scalar string tensor.
        seed: an int32/int64 `[2]` stateless seed.
        image_size: the output size.
        normalization: `(mean, std)` for images in [0, 1], or `None`.
        scale, ratio: `RandomResizedCrop`'s ranges.

    Returns:
        A float32 `[image_size, image_size, 3]` image.

    Example:

    >>> jpeg = tf.io.encode_jpeg(np.zeros((300, 400, 3), "uint8"))  # a file's bytes
    >>> train_transform(jpeg, [0, 1]).shape
    TensorShape([224, 224, 3])
    """
    image = decode(encoded)
    shape = tf.shape(image)
    seed = tf.cast(seed, tf.int64)
    crop = crop_params(shape[0], shape[1], fold_in(seed, 0), scale, ratio)
    flip = tf.random.stateless_uniform([], fold_in(seed, 1)) < 0.5
    return train_view(image, crop, flip, image_size, normalization)


def eval_transform(
    encoded,
    image_size=IMAGE_SIZE,
    resize_size=RESIZE_SIZE,
    normalization=NORMALIZATION,
):
    """torchvision's ImageNet evaluation transform.

    `Resize(resize_size)`, `CenterCrop(image_size)`, `ToTensor()`,
    `Normalize`.

    Args:
        encoded: the image file's bytes, a scalar string tensor.
        image_size: the crop size.
        resize_size: the length the shorter side is resized to first.
        normalization: `(mean, std)` for images in [0, 1], or `None`.

    Returns:
        A float32 `[image_size, image_size, 3]` image.
    """
    image = center_crop(resize_shorter(decode(encoded), resize_size), image_size)
    height, width = size_pair(image_size)
    image = normalize(image, normalization)
    image.set_shape([height, width, 3])
    return image
