"""ImageNet-style input: torchvision's transforms, streamed in `tf.data`.

**The transforms** are torchvision's standard ImageNet ones as they run on PIL
images (torchvision 0.28, Pillow 13), reproduced exactly: pixel for pixel, on
every image, crop and size (`tests/test_imagenet_data.py` checks them against
torchvision's outputs; see `tests/golden/README.md`).

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

**The pipelines** (`train_pipeline`, `eval_pipeline`) read `ImageRecords`:
encoded images and labels, from a folder (`FileRecords`, random access) or a
TFDS dataset (`TFDSRecords`, a stream of records). Reading, decoding and
augmenting run in one parallel `map` (`num_parallel_calls=AUTOTUNE`, in
order), then batching and prefetching.

Every training draw is stateless, as in `keras_cskd.data.pipeline`: epoch `e`
visits the examples in an order that is a function of `(seed, e)` alone (a
full permutation for files; for TFDS, a seeded file order and a seeded
shuffle buffer), and example `k` of the global batch at step `s` is augmented
from the seed `fold_in(batch_seed(seed, e, s), WEAK_VIEW, k)`. A batch is thus
a function of `(seed, epoch, step)`, which is how resuming is exact: a run
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

>>> imagenet = keras_cskd.data.load("folder:/data/imagenet", streaming=True)
>>> train = strategy.distribute_datasets_from_function(
...     lambda context: train_pipeline(
...         imagenet.train, 1024, seed=0, epochs=90, input_context=context
...     )
... )
>>> steps = steps_per_epoch(imagenet.train, 1024)
>>> distiller.fit(train, epochs=90, steps_per_epoch=steps)
"""

import math

import numpy as np
import tensorflow as tf

from keras_cskd.data import sampling
from keras_cskd.data.dataset import normalize
from keras_cskd.data.pipeline import WEAK_VIEW, batch_seed
from keras_cskd.data.stateless import fold_in

# torchvision's `Normalize` constants for ImageNet, for images in [0, 1].
NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGE_SIZE = 224
RESIZE_SIZE = 256
# `RandomResizedCrop`'s defaults: area fraction and aspect ratio (w / h) ranges.
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
ATTEMPTS = 10
# TFDS records held for shuffling (encoded ImageNet images are ~110 KB).
SHUFFLE_BUFFER = 10_000

# Pillow's fixed point for 8-bit images (libImaging/Resample.c).
_PRECISION_BITS = 32 - 8 - 2
# The key of the epoch orders; `batch_seed` derives from `[seed, 0]`.
_ORDER_STREAM = 1


# ------------------------------------------------------------ transforms


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
    return pil_resize(cropped, _pair(size))


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
    crop_height, crop_width = _pair(size)
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
    height, width = _pair(image_size)
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

    >>> train_transform(tf.io.read_file("cat.jpg"), [0, 1]).shape
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
    height, width = _pair(image_size)
    image = normalize(image, normalization)
    image.set_shape([height, width, 3])
    return image


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


# --------------------------------------------------------------- records


class ImageRecords:
    """Encoded images and their labels: one split of a streaming source.

    What `folder.load(..., streaming=True)` and `tfds.load` (for datasets of
    images of varying size) put in a `Dataset`'s splits instead of decoded
    images; the pipelines here read them. Subclasses give the examples in a
    fixed order (`dataset`), and in each epoch's order.

    Attributes:
        name: where the records come from.
        num_examples: the number of examples.
    """

    name = ""
    num_examples = 0

    def dataset(self):
        """The `(encoded image, int32 label)` pairs, unbatched, in a fixed order."""
        return self._keys().map(self._load, num_parallel_calls=tf.data.AUTOTUNE)

    def _keys(self):
        """The examples' keys in the fixed order: one tensor or dict each,
        what `_load` reads."""
        raise NotImplementedError

    def _epoch_keys(self, seed, epoch):
        """The keys in epoch `epoch`'s order, a function of `(seed, epoch)`."""
        raise NotImplementedError

    def _load(self, key):
        """`(encoded image, int32 label)` of a key."""
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
            `ImageRecords` of the sample, in a fixed, interleaved order.
        """
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, {self.num_examples} examples)"


class FileRecords(ImageRecords):
    """Image files and their labels, read lazily (random access).

    Each epoch's order is a full permutation, `stateless_shuffle` of the
    indices with the seed `fold_in([seed, 1], epoch)`.

    Args:
        paths: the image files, a sequence of paths.
        labels: their int labels.
        name: a description, for messages.

    Example:

    >>> records = FileRecords(["a.jpg", "b.jpg"], [0, 1])
    >>> records.num_examples
    2
    """

    def __init__(self, paths, labels, name="files"):
        self.paths = np.asarray([str(path) for path in paths], dtype=object)
        self.labels = np.asarray(labels, dtype=np.int32)
        if self.paths.shape != self.labels.shape:
            raise ValueError(
                f"{len(self.paths)} paths but {len(self.labels)} labels for {name}."
            )
        self.name = name
        self.num_examples = len(self.paths)
        self._tensors = None

    def _table(self):
        if self._tensors is None:
            with tf.init_scope():  # eager, even when first asked inside a map
                self._tensors = (
                    tf.constant(self.paths.astype(bytes)),
                    tf.constant(self.labels),
                )
        return self._tensors

    def _keys(self):
        return tf.data.Dataset.range(self.num_examples)

    def _epoch_keys(self, seed, epoch):
        count = self.num_examples
        order_seed = fold_in([seed, _ORDER_STREAM], epoch)
        return tf.data.Dataset.range(1).flat_map(
            lambda _: tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(
                    tf.range(count, dtype=tf.int64), order_seed
                )
            )
        )

    def _load(self, index):
        paths, labels = self._table()
        return tf.io.read_file(tf.gather(paths, index)), tf.gather(labels, index)

    def balanced_sample(self, count, seed=sampling.SEED):
        """A class-balanced sample, chosen from the listing's labels: only the
        chosen files are ever read (see `ImageRecords.balanced_sample`).

        Example:

        >>> imagenet.train.balanced_sample(1000).num_examples  # one a class
        1000
        """
        chosen = sampling.balanced_indices(self.labels, count, seed)
        return FileRecords(
            self.paths[chosen], self.labels[chosen], name=f"{self.name}, balanced"
        )


class TFDSRecords(ImageRecords):
    """A TFDS split's encoded images and labels, read as a stream.

    Images are read without decoding (`tfds.decode.SkipDecoding`). Epoch `e`'s
    order: the split's files in an order seeded by `(seed, e)`, interleaved,
    then a shuffle buffer of `shuffle_buffer` records seeded alike.

    Args:
        builder: a prepared `tfds.core.DatasetBuilder` with `image` and
            `label` features.
        split: a TFDS split expression, e.g. `"train[:98%]"`.
        shuffle_buffer: records held in the shuffle buffer.
        num_examples: the split's size; `None` reads it from the builder's
            info, or counts the records when the info does not know it.
    """

    def __init__(
        self, builder, split, shuffle_buffer=SHUFFLE_BUFFER, num_examples=None
    ):
        self.builder = builder
        self.split = split
        self.shuffle_buffer = shuffle_buffer
        self.name = f"tfds:{builder.info.full_name}[{split}]"
        self.num_examples = (
            num_examples if num_examples is not None else self._count_examples()
        )

    def _count_examples(self):
        try:
            known = int(self.builder.info.splits[self.split].num_examples)
        except (KeyError, ValueError, TypeError):
            known = 0
        if known > 0:
            return known
        return int(self._records().reduce(0, lambda count, _: count + 1))

    def _records(self, shuffle_seed=None):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False
        )
        examples = self.builder.as_dataset(
            split=self.split,
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return examples.map(
            lambda example: {
                "image": example["image"],
                "label": tf.cast(example["label"], tf.int32),
            }
        )

    def _keys(self):
        return self._records()

    def _epoch_keys(self, seed, epoch):
        epoch_seed = seed * 1_000_003 + epoch
        return self._records(epoch_seed).shuffle(
            self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
        )

    def _load(self, record):
        return record["image"], record["label"]

    def balanced_sample(
        self, count, seed=sampling.SEED, scan_limit=sampling.SCAN_LIMIT
    ):
        """A class-balanced sample from a bounded read of the records.

        The split's files are read in an order seeded by `seed`, interleaved
        (TFDS reads 16 files at a time), and TFDS shuffled the examples across
        its files when it prepared them, so the classes come mixed. Each class
        keeps the first records it meets, up to its share of `count`, and the
        read stops once the shares are filled (`sampling.fill_quotas`): for
        ImageNet's 1,000 classes and `count=1000`, about 7,500 records. It
        stops after `scan_limit` records in any case; a class not met by then
        is short in the sample, or absent, and the other classes fill its
        places. At most `2 * count` encoded images are held while reading; the
        sample's are kept in memory (`EncodedRecords`). See
        `ImageRecords.balanced_sample`.

        Example:

        >>> imagenet2012.train.balanced_sample(1000).num_examples
        1000
        """
        num_classes = int(self.builder.info.features["label"].num_classes)
        kept = sampling.fill_quotas(
            self._records(shuffle_seed=seed).as_numpy_iterator(),
            lambda record: record["label"],
            num_classes,
            count,
            scan_limit,
        )
        labels = np.array([record["label"] for record in kept], np.int32)
        chosen = sampling.balanced_indices(labels, count, seed)
        images = [kept[index]["image"] for index in chosen]
        return EncodedRecords(images, labels[chosen], name=f"{self.name}, balanced")


class EncodedRecords(ImageRecords):
    """Encoded images held in memory with their labels: a sample of a stream.

    Each epoch's order is a full shuffle seeded by `(seed, epoch)`.

    Args:
        images: the encoded images (JPEG, PNG, ... bytes), a sequence.
        labels: their int labels.
        name: a description, for messages.

    Example:

    >>> records = EncodedRecords([Path("a.jpg").read_bytes()], [0])
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

    def _keys(self):
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": tf.constant(self.images, tf.string, shape=[len(self.images)]),
                "label": self.labels,
            }
        )

    def _epoch_keys(self, seed, epoch):
        epoch_seed = seed * 1_000_003 + epoch
        return self._keys().shuffle(
            max(self.num_examples, 1), seed=epoch_seed, reshuffle_each_iteration=False
        )

    def _load(self, record):
        return record["image"], record["label"]

    def balanced_sample(self, count, seed=sampling.SEED):
        """A class-balanced sample of the held images (`sampling.balanced_indices`)."""
        chosen = sampling.balanced_indices(self.labels, count, seed)
        return EncodedRecords(
            [self.images[index] for index in chosen],
            self.labels[chosen],
            name=f"{self.name}, balanced",
        )


# -------------------------------------------------------------- pipelines


def steps_per_epoch(records, batch_size):
    """Training steps per epoch: whole global batches, `num_examples // batch_size`."""
    return records.num_examples // batch_size


def train_pipeline(
    records,
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

    Epochs `[first_epoch, epochs)` of `steps_per_epoch(records, batch_size)`
    whole global batches each (the remainder of an epoch is dropped), starting
    `skip_steps` batches into `first_epoch`. Example `k` of the global batch
    at `(epoch, step)` is the `train_transform` of the epoch order's example
    `step * batch_size + k`, drawn from
    `fold_in(batch_seed(seed, epoch, step), WEAK_VIEW, k)`.

    Args:
        records: `ImageRecords` (e.g. `Dataset.train` of a streaming source).
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

    >>> train = train_pipeline(imagenet.train, 256, seed=0, epochs=90)
    >>> steps = steps_per_epoch(imagenet.train, 256)
    >>> distiller.fit(train, epochs=90, steps_per_epoch=steps)
    """
    steps = steps_per_epoch(records, batch_size)
    if steps < 1:
        raise ValueError(
            f"{records!r} has fewer examples than one batch of {batch_size}."
        )
    part, local_batch = _part(batch_size, input_context)

    def one_epoch(epoch, first_step):
        batches = records._epoch_keys(seed, epoch).batch(
            batch_size, drop_remainder=True
        )
        batches = batches.enumerate().skip(first_step)

        def own_part(step, keys):
            keys = tf.nest.map_structure(lambda key: key[part[0] : part[1]], keys)
            count = part[1] - part[0]
            return tf.data.Dataset.from_tensor_slices(
                (
                    keys,
                    tf.fill([count], tf.constant(epoch, tf.int64)),
                    tf.fill([count], step),
                    tf.range(part[0], part[1], dtype=tf.int64),
                )
            )

        return batches.flat_map(own_part)

    epoch_range = range(first_epoch, epochs)
    if not epoch_range:
        raise ValueError(f"No epochs to train: [{first_epoch}, {epochs}).")
    examples = one_epoch(first_epoch, skip_steps)
    for epoch in epoch_range[1:]:
        examples = examples.concatenate(one_epoch(epoch, 0))

    def transform(key, epoch, step, position):
        encoded, label = records._load(key)
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
    records,
    batch_size,
    input_context=None,
    image_size=IMAGE_SIZE,
    resize_size=RESIZE_SIZE,
    normalization=NORMALIZATION,
):
    """The evaluation pipeline of `eval_transform` views, in the records' order.

    Args:
        records: `ImageRecords` (e.g. `Dataset.test`).
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

    >>> distiller.evaluate(eval_pipeline(imagenet.test, 500))
    """
    keys = records._keys()
    local_batch = batch_size
    if input_context is not None:
        keys = keys.shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        local_batch = input_context.get_per_replica_batch_size(batch_size)

    def transform(key):
        encoded, label = records._load(key)
        image = eval_transform(encoded, image_size, resize_size, normalization)
        return image, label

    examples = keys.map(
        transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return examples.batch(local_batch).prefetch(tf.data.AUTOTUNE)


def sample_views(
    records,
    count,
    batch_size=100,
    image_size=IMAGE_SIZE,
    normalization=NORMALIZATION,
    seed=sampling.SEED,
):
    """The evaluation views of a class-balanced sample of `records`, unbatched.

    What a streamed split's export is calibrated on and measured on:
    `records.balanced_sample(count, seed)` (found without reading the whole
    split) through `eval_pipeline`.

    Args:
        records: `ImageRecords`.
        count: the size of the sample.
        batch_size: images decoded per step.
        image_size, normalization: as for `eval_pipeline`.
        seed: seeds the choice of the sample.

    Returns:
        An unbatched `tf.data.Dataset` of `(float32 image, int32 label)`.

    Example:

    >>> images, labels = keras_cskd.data.to_numpy(sample_views(imagenet.test, 1000))
    """
    return eval_pipeline(
        records.balanced_sample(count, seed),
        batch_size,
        image_size=image_size,
        normalization=normalization,
    ).unbatch()


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
