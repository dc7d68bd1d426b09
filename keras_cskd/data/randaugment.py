"""The CSKD code's RandAugment with Cutout, with Pillow's semantics, in TensorFlow.

The strong view of the CSKD code (llieeai/lud @ 2704bb2, an mdistiller fork,
`mdistiller/dataset/cifar100.py`) applies `RandAugment(2, 10)` to PIL images:
two operations drawn uniformly *with replacement* (`random.choices`) from the
14 of `augment_list()`, each at a magnitude drawn uniformly from that
operation's own `[low, high)` (the `10` is stored and never read), then a
`Cutout` square of side `U(0, 0.5)` times the width, filled with
`(125, 123, 114)`. Every operation here reproduces Pillow's arithmetic on
8-bit pixels (measured against Pillow in `tests/test_augment.py`):

- `AutoContrast`: `ImageOps.autocontrast` (per channel, no cutoff).
- `Brightness`, `Color`, `Contrast`, `Sharpness`: `ImageEnhance`, the blend
  `int(d + f * (x - d))` in float32 with the degenerate image `d`: black, the
  grayscale `L = (19595 R + 38470 G + 7471 B + 2^15) >> 16`, its rounded mean,
  or the 3x3 `SMOOTH` filter (border pixels kept).
- `Equalize`: `ImageOps.equalize`, its own lookup table per channel.
- `Posterize`, `Solarize`: `ImageOps.posterize(int(v))`, `ImageOps.solarize(v)`.
- `Rotate` (degrees counter-clockwise about the centre), `ShearX/Y`,
  `TranslateX/Y` (a fraction of the side): `Image.rotate`/`Image.transform`
  with nearest-neighbour sampling and black fill, in Pillow's 16.16 fixed
  point for rotations and shears and its float64 scan for translations.

Functions take `pixels`: a `[B, H, W, C]` batch of whole numbers in [0, 255]
(any real or integer dtype; `C` is 3, or 1 for grayscale, where `Color` is the
identity and the cutout is the grayscale of its colour) and return int32
pixels; `ReferenceRandAugment` is the Keras layer for normalised images.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_cskd.data.dataset import denormalize, normalize
from keras_cskd.data.stateless import StatelessAugmentation, fold_in

# The fork's `augment_list()`, in its order: (name, low, high) of the magnitude.
OPS = (
    ("AutoContrast", 0, 1),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0, 1),
    ("Identity", 0, 1),
    ("Posterize", 4, 8),
    ("Rotate", -30, 30),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0, 256),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
)
OP_NAMES = tuple(name for name, _, _ in OPS)
CUTOUT_COLOR = (125, 123, 114)
# The cutout side is U(0, MAX_CUTOUT) times the width.
MAX_CUTOUT = 0.5

_INDEX = {name: index for index, name in enumerate(OP_NAMES)}
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
# `apply_op` applies each op to its own images, the geometric ones together.
_GROUP_OF = {name: "Geometric" if name in _GEOMETRIC else name for name in OP_NAMES}
_GROUP_NAMES = tuple(dict.fromkeys(_GROUP_OF.values()))
_GROUPS = tuple(_GROUP_NAMES.index(_GROUP_OF[name]) for name in OP_NAMES)
# `_affine_coefficients`' row of each op: 0 (the identity) or 1 + its place.
_AFFINE_CHOICE = tuple(
    1 + _GEOMETRIC.index(name) if name in _GEOMETRIC else 0 for name in OP_NAMES
)
_LOWS = tuple(float(low) for _, low, _ in OPS)
# As the fork computes it: `float(max_val - min_val)`.
_SPANS = tuple(float(high - low) for _, low, high in OPS)


def magnitudes(ops, uniforms):
    """The fork's magnitudes `low + float(high - low) * u` of the ops `ops`.

    Args:
        ops: int indices into `OPS`, any shape.
        uniforms: float64 draws from U(0, 1) of the same shape.

    Returns:
        float64 magnitudes, each in its op's `[low, high)`.
    """
    ops = _cast(ops, tf.int32)
    uniforms = _cast(uniforms, tf.float64)
    low = tf.gather(tf.constant(_LOWS, tf.float64), ops)
    span = tf.gather(tf.constant(_SPANS, tf.float64), ops)
    return low + span * uniforms


def apply_op(pixels, ops, magnitudes):
    """Applies op `ops[i]` at magnitude `magnitudes[i]` to image `i`.

    Args:
        pixels: `[B, H, W, C]` whole pixel values in [0, 255].
        ops: `[B]` int indices into `OPS`.
        magnitudes: `[B]` magnitudes (float64 keeps the fork's thresholds
            exact), in the op's own units (degrees, fraction of the side...).

    Returns:
        int32 pixels `[B, H, W, C]`.
    """
    x = _as_pixels(pixels)
    ops = _cast(ops, tf.int32)
    v = _cast(magnitudes, tf.float64)
    width, height = x.shape[2], x.shape[1]

    def geometric(x, v, ops):
        return _affine(x, _affine_coefficients(ops, v, width, height))

    by_group = {
        "AutoContrast": lambda x, v, ops: auto_contrast(x),
        "Brightness": lambda x, v, ops: brightness(x, v),
        "Color": lambda x, v, ops: color(x, v),
        "Contrast": lambda x, v, ops: contrast(x, v),
        "Equalize": lambda x, v, ops: equalize(x),
        "Identity": lambda x, v, ops: x,
        "Posterize": lambda x, v, ops: posterize(x, v),
        "Geometric": geometric,
        "Sharpness": lambda x, v, ops: sharpness(x, v),
        "Solarize": lambda x, v, ops: solarize(x, v),
    }
    # Each image goes through its own op only: partition the batch by op (the
    # five geometric ops share one sampler), apply, and stitch it back.
    groups = tf.gather(tf.constant(_GROUPS, tf.int32), ops)
    count = len(_GROUP_NAMES)
    positions = tf.dynamic_partition(tf.range(tf.shape(x)[0]), groups, count)
    parts = zip(
        tf.dynamic_partition(x, groups, count),
        tf.dynamic_partition(v, groups, count),
        tf.dynamic_partition(ops, groups, count),
        strict=True,
    )
    outputs = [
        by_group[name](*part) for name, part in zip(_GROUP_NAMES, parts, strict=True)
    ]
    return tf.dynamic_stitch(positions, outputs)


def auto_contrast(pixels):
    """`ImageOps.autocontrast`: stretches each channel's [min, max] to [0, 255]."""
    x = _as_pixels(pixels)
    low = tf.reduce_min(x, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(x, axis=(1, 2), keepdims=True)
    scale = 255.0 / tf.cast(tf.maximum(high - low, 1), tf.float64)
    offset = tf.cast(-low, tf.float64) * scale
    stretched = tf.cast(x, tf.float64) * scale + offset
    stretched = tf.cast(tf.clip_by_value(tf.math.floor(stretched), 0, 255), tf.int32)
    return tf.where(high > low, stretched, x)


def brightness(pixels, factor):
    """`ImageEnhance.Brightness(image).enhance(factor)`: a blend with black."""
    x = _as_pixels(pixels)
    return _blend(tf.zeros_like(x), x, factor)


def color(pixels, factor):
    """`ImageEnhance.Color(image).enhance(factor)`: a blend with the grayscale."""
    x = _as_pixels(pixels)
    return _blend(tf.broadcast_to(grayscale(x), tf.shape(x)), x, factor)


def contrast(pixels, factor):
    """`ImageEnhance.Contrast(image).enhance(factor)`: a blend with the solid
    `int(mean + 0.5)` of the grayscale image."""
    x = _as_pixels(pixels)
    gray = grayscale(x)
    count = tf.cast(tf.reduce_prod(tf.shape(gray)[1:]), tf.float64)
    mean = tf.cast(tf.reduce_sum(gray, axis=(1, 2, 3), keepdims=True), tf.float64)
    mean = tf.cast(tf.math.floor(mean / count + 0.5), tf.int32)
    return _blend(tf.broadcast_to(mean, tf.shape(x)), x, factor)


def sharpness(pixels, factor):
    """`ImageEnhance.Sharpness(image).enhance(factor)`: a blend with `SMOOTH`."""
    x = _as_pixels(pixels)
    return _blend(smooth(x), x, factor)


def smooth(pixels):
    """`image.filter(ImageFilter.SMOOTH)`: the 3x3 kernel [[1, 1, 1], [1, 5, 1],
    [1, 1, 1]] / 13 in Pillow's float32 order, rounded; the border is kept."""
    x = _as_pixels(pixels)
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None or height < 3 or width < 3:
        return x
    one = np.float32(1) / np.float32(13)
    five = np.float32(5) / np.float32(13)
    f = tf.cast(x, tf.float32)

    def row(rows, centre):
        left, middle, right = rows[:, :, :-2], rows[:, :, 1:-1], rows[:, :, 2:]
        return (left * one + middle * centre) + right * one

    total = np.float32(0.5) + row(f[:, 2:], one)
    total = total + row(f[:, 1:-1], five)
    total = total + row(f[:, :-2], one)
    inner = tf.cast(tf.clip_by_value(tf.math.floor(total), 0, 255), tf.int32)
    middle = tf.concat([x[:, 1:-1, :1], inner, x[:, 1:-1, -1:]], axis=2)
    return tf.concat([x[:, :1], middle, x[:, -1:]], axis=1)


def equalize(pixels):
    """`ImageOps.equalize`: Pillow's lookup table from each channel's histogram."""
    x = _as_pixels(pixels)
    batch_size, channels = _dimension(x, 0), x.shape[3]
    # Bin `x + 256 (b C + c)` holds level x of channel c of image b.
    bins = x + 256 * tf.reshape(tf.range(batch_size * channels), (-1, 1, 1, channels))
    size = batch_size * channels * 256
    histogram = tf.math.unsorted_segment_sum(tf.ones_like(bins), bins, size)
    histogram = tf.reshape(histogram, (-1, 256))
    levels = tf.range(256)
    used = histogram > 0
    last = tf.reduce_max(tf.where(used, levels, -1), axis=1)
    total = tf.reduce_sum(histogram, axis=1)
    step = (total - tf.gather(histogram, last, batch_dims=1)) // 255
    before = tf.cumsum(histogram, axis=1, exclusive=True)
    safe_step = tf.maximum(step, 1)[:, None]
    table = tf.minimum((safe_step // 2 + before) // safe_step, 255)
    keep = (tf.reduce_sum(tf.cast(used, tf.int32), axis=1) <= 1) | (step == 0)
    table = tf.where(keep[:, None], levels[None, :], table)
    return tf.gather(tf.reshape(table, (-1,)), bins)


def posterize(pixels, bits):
    """`ImageOps.posterize(image, max(1, int(bits)))`: keeps the top bits."""
    x = _as_pixels(pixels)
    bits = tf.maximum(tf.cast(tf.math.floor(_per_image(bits, tf.float64)), tf.int32), 1)
    unit = tf.bitwise.left_shift(1, 8 - bits)
    return x // unit * unit


def solarize(pixels, threshold):
    """`ImageOps.solarize(image, threshold)`: inverts the pixels >= threshold."""
    x = _as_pixels(pixels)
    below = tf.cast(x, tf.float64) < _per_image(threshold, tf.float64)
    return tf.where(below, x, 255 - x)


def rotate(pixels, degrees):
    """`image.rotate(degrees)`: counter-clockwise about the centre."""
    return _geometric(pixels, "Rotate", degrees)


def shear_x(pixels, shear):
    """`image.transform(size, AFFINE, (1, shear, 0, 0, 1, 0))`."""
    return _geometric(pixels, "ShearX", shear)


def shear_y(pixels, shear):
    """`image.transform(size, AFFINE, (1, 0, 0, shear, 1, 0))`."""
    return _geometric(pixels, "ShearY", shear)


def translate_x(pixels, fraction):
    """`image.transform(size, AFFINE, (1, 0, fraction * width, 0, 1, 0))`."""
    return _geometric(pixels, "TranslateX", fraction)


def translate_y(pixels, fraction):
    """`image.transform(size, AFFINE, (1, 0, 0, 0, 1, fraction * height))`."""
    return _geometric(pixels, "TranslateY", fraction)


def grayscale(pixels):
    """Pillow's `convert("L")`: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`."""
    x = _as_pixels(pixels)
    if x.shape[3] == 1:
        return x
    weighted = x[..., 0:1] * 19595 + x[..., 1:2] * 38470 + x[..., 2:3] * 7471
    return tf.bitwise.right_shift(weighted + 32768, 16)


def cutout(pixels, sizes, centres):
    """The fork's `CutoutAbs`: a filled `(125, 123, 114)` square per image.

    With `v = sizes[i]` and `(cx, cy) = centres[i]`, it draws PIL's
    `rectangle((x0, y0, x1, y1))`, `x0 = int(max(0, cx - v / 2))`,
    `x1 = min(width, x0 + v)` (and likewise for y): the pixels with
    `x0 <= column <= int(x1)` and `y0 <= row <= int(y1)`. `v <= 0` draws
    nothing.

    Args:
        pixels: `[B, H, W, C]` whole pixel values in [0, 255].
        sizes: `[B]` float sides in pixels.
        centres: `[B, 2]` float `(x, y)` centres in pixels.

    Returns:
        int32 pixels `[B, H, W, C]`.
    """
    x = _as_pixels(pixels)
    shape = tf.shape(x)
    sizes = _cast(sizes, tf.float64)
    centres = _cast(centres, tf.float64)
    sides = tf.cast(tf.stack([shape[2], shape[1]]), tf.float64)  # (width, height)
    start = tf.math.floor(tf.maximum(centres - sizes[:, None] / 2.0, 0.0))
    end = tf.math.floor(tf.minimum(sides, start + sizes[:, None]))
    start, end = tf.cast(start, tf.int32), tf.cast(end, tf.int32)
    columns = tf.range(shape[2])[None, :]
    rows = tf.range(shape[1])[None, :]
    in_columns = (columns >= start[:, :1]) & (columns <= end[:, :1])
    in_rows = (rows >= start[:, 1:]) & (rows <= end[:, 1:])
    inside = in_rows[:, :, None] & in_columns[:, None, :] & (sizes > 0)[:, None, None]
    fill = tf.constant(CUTOUT_COLOR, tf.int32)
    if x.shape[3] == 1:
        fill = grayscale(fill[None, None, None, :])[0, 0, 0]
    return tf.where(inside[..., None], tf.broadcast_to(fill, shape), x)


@keras.saving.register_keras_serializable(package="keras_cskd")
class ReferenceRandAugment(StatelessAugmentation):
    """The CSKD code's `RandAugment(2, 10)` and `Cutout`, on normalised images.

    Each image of a `[B, H, W, C]` batch is mapped back to whole pixel values
    (`denormalize`), then gets its own `num_ops` operations drawn uniformly
    with replacement from `OPS`, each at a magnitude uniform in that op's
    range, then a cutout of side `U(0, 0.5)` times the width, and is
    normalised again. Stateless with `augment(images, seed)` (the protocol of
    `keras_cskd.data.augment`); `call` draws its seeds from the layer's
    generator. As in the fork, the cutout centre is
    `np.random.uniform(width)`, i.e. `U(low=width, high=1)`: uniform in
    `(1, width]`, not `[0, width)`. The identity with `training=False`.

    The fork's strong view crops and flips first: see
    `keras_cskd.data.cifar_strong_augmentation`.

    Args:
        normalization: the dataset's `(mean, std)` (`Dataset.normalization`),
            or `None` for images in [0, 1].
        num_ops: operations per image.
        seed: the seed of the layer's generator (for `call` and `draw`), or
            `None`.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> strong = ReferenceRandAugment(seed=0)
    >>> strong(np.zeros((2, 32, 32, 3)), training=True).shape
    TensorShape([2, 32, 32, 3])
    """

    def __init__(self, normalization=None, num_ops=2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.normalization = normalization
        self.num_ops = num_ops

    def draw(self, batch_size, height=32, width=32, seed=None):
        """Draws the random parameters of `batch_size` images.

        Args:
            batch_size: the number of images.
            height: the height of the images.
            width: the width of the images.
            seed: an int32/int64 `[2]` seed to draw from (statelessly: the ops,
                the magnitudes and the cutout each from their own
                `fold_in(seed, k)`), or `None` for the layer's generator.

        Returns:
            A dict of `ops` (`[B, num_ops]` int32 indices into `OPS`),
            `magnitudes` (`[B, num_ops]` float64), `cutout_sizes` (`[B]`
            float64 pixels) and `cutout_centres` (`[B, 2]` float64 `(x, y)`).
        """
        if seed is None:
            seed = self.seed_generator.next()
        ops = tf.random.stateless_uniform(
            (batch_size, self.num_ops),
            fold_in(seed, 0),
            minval=0,
            maxval=len(OPS),
            dtype=tf.int32,
        )
        uniforms = tf.random.stateless_uniform(
            (batch_size, self.num_ops), fold_in(seed, 1), dtype=tf.float64
        )
        cutout_uniforms = tf.random.stateless_uniform(
            (batch_size, 3), fold_in(seed, 2), dtype=tf.float64
        )
        sides = tf.cast(tf.stack([width, height]), tf.float64)
        return {
            "ops": ops,
            "magnitudes": magnitudes(ops, uniforms),
            # `Cutout(img, random.random() * 0.5)`: v * img.size[0].
            "cutout_sizes": cutout_uniforms[:, 0] * MAX_CUTOUT * sides[0],
            # `np.random.uniform(w)` = w + (1.0 - w) * u.
            "cutout_centres": sides + (1.0 - sides) * cutout_uniforms[:, 1:],
        }

    def augment(self, images, seed):
        """Augments a `[B, H, W, C]` batch, drawing only from the `[2]` seed."""
        images = tf.convert_to_tensor(images)
        shape = tf.shape(images)
        pixels = _as_pixels(denormalize(images, self.normalization))
        parameters = self.draw(shape[0], shape[1], shape[2], seed=seed)
        augmented = rand_augment(pixels, **parameters)
        return tf.cast(normalize(augmented, self.normalization), images.dtype)

    def get_config(self):
        config = super().get_config()
        normalization = self.normalization
        if normalization is not None:
            normalization = [[float(v) for v in np.ravel(s)] for s in normalization]
        config.update(
            {"normalization": normalization, "num_ops": self.num_ops, "seed": self.seed}
        )
        return config


def rand_augment(pixels, ops, magnitudes, cutout_sizes, cutout_centres):
    """The fork's `RandAugment.__call__` with its draws given: the ops in turn,
    then the cutout. Arguments as `ReferenceRandAugment.draw` returns them."""
    x = _as_pixels(pixels)
    for k in range(ops.shape[1]):
        x = apply_op(x, ops[:, k], magnitudes[:, k])
    return cutout(x, cutout_sizes, cutout_centres)


def _as_pixels(pixels):
    pixels = tf.convert_to_tensor(pixels)
    if pixels.shape.rank != 4 or pixels.shape[3] not in (1, 3):
        raise ValueError(
            "Expected a [B, H, W, C] batch with 1 or 3 channels, got shape "
            f"{pixels.shape}."
        )
    if pixels.dtype.is_floating:
        pixels = tf.math.round(pixels)
    return tf.cast(pixels, tf.int32)


def _dimension(x, axis):
    """The static size of an axis where known (XLA needs it), else dynamic."""
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _cast(values, dtype):
    # NumPy first: `tf.convert_to_tensor` would make Python floats float32.
    return tf.cast(values if tf.is_tensor(values) else np.asarray(values), dtype)


def _per_image(values, dtype):
    return tf.reshape(_cast(values, dtype), (-1, 1, 1, 1))


def _blend(degenerate, image, factor):
    """`Image.blend(degenerate, image, factor)`: `d + f * (x - d)` in float32,
    clipped to [0, 255] and truncated, as Pillow's C code."""
    factor = tf.cast(_per_image(factor, tf.float64), tf.float32)
    base = tf.cast(degenerate, tf.float32)
    blended = base + factor * tf.cast(image - degenerate, tf.float32)
    return tf.cast(tf.math.floor(tf.clip_by_value(blended, 0.0, 255.0)), tf.int32)


def _geometric(pixels, name, magnitude):
    x = _as_pixels(pixels)
    v = _cast(magnitude, tf.float64)
    ops = tf.fill(tf.shape(v), _INDEX[name])
    return _affine(x, _affine_coefficients(ops, v, x.shape[2], x.shape[1]))


def _affine_coefficients(ops, v, width, height):
    """`[B, 6]` float64 inverse maps `(a, b, c, d, e, f)` of `Image.transform`:
    output pixel (x, y) samples input (a x + b y + c, d x + e y + f)."""
    one, zero = tf.ones_like(v), tf.zeros_like(v)
    # Image.rotate: its angle modulo 360, radians, cos/sin rounded to 15 places.
    angle = -(tf.math.floormod(v, 360.0) * (math.pi / 180.0))
    cos = tf.math.round(tf.math.cos(angle) * 1e15) / 1e15
    sin = tf.math.round(tf.math.sin(angle) * 1e15) / 1e15
    centre_x, centre_y = width / 2, height / 2
    candidates = {  # in the order of `_GEOMETRIC`, after the identity
        "Identity": (one, zero, zero, zero, one, zero),
        "Rotate": (
            cos,
            sin,
            cos * -centre_x + sin * -centre_y + 0.0 + centre_x,
            -sin,
            cos,
            -sin * -centre_x + cos * -centre_y + 0.0 + centre_y,
        ),
        "ShearX": (one, v, zero, zero, one, zero),
        "ShearY": (one, zero, zero, v, one, zero),
        "TranslateX": (one, zero, v * width, zero, one, zero),
        "TranslateY": (one, zero, zero, zero, one, v * height),
    }
    table = tf.stack([tf.stack(row, axis=1) for row in candidates.values()], axis=1)
    choice = tf.gather(tf.constant(_AFFINE_CHOICE, tf.int32), ops)
    return tf.gather(table, choice, axis=1, batch_dims=1)


def _affine(pixels, coefficients):
    """Pillow's `ImagingTransformAffine`, nearest neighbour, black fill.

    Pillow takes `ImagingScaleAffine` when `b == d == 0` (float64 positions
    accumulated pixel by pixel: `c + a / 2`, then `+ a` per column), and
    otherwise 16.16 fixed point (`FIX(v) = floor(v * 65536 + 0.5)`, input
    column `(FIX(c + a / 2 + b / 2) + row FIX(b) + column FIX(a)) >> 16`, exact
    integer arithmetic; Pillow falls back to float64 only for images over
    32768 pixels, not supported here).
    """
    x = pixels
    shape = tf.shape(x)
    height, width = shape[1], shape[2]
    a = coefficients
    # Per axis (x, y): the start `c + a / 2 + b / 2`, the step along a row
    # (a, d) and down a column (b, e).
    start = tf.gather(a, [2, 5], axis=1) + tf.gather(a, [0, 3], axis=1) * 0.5
    start = start + tf.gather(a, [1, 4], axis=1) * 0.5
    along, down = tf.gather(a, [0, 3], axis=1), tf.gather(a, [1, 4], axis=1)

    def fix(value):
        return tf.cast(tf.math.floor(value * 65536.0 + 0.5), tf.int64)

    cols = tf.range(width, dtype=tf.int64)[None, None, None, :]
    rows = tf.range(height, dtype=tf.int64)[None, None, :, None]
    fixed = fix(start)[:, :, None, None] + rows * fix(down)[:, :, None, None]
    fixed = (fixed + cols * fix(along)[:, :, None, None]) // 65536  # [B, 2, H, W]

    def scan(start, step, size):
        steps = tf.tile(step[:, None], (1, size - 1))
        positions = tf.cumsum(tf.concat([start[:, None], steps], axis=1), axis=1)
        return tf.where(
            positions < 0.0, tf.constant(-1, tf.int64), tf.cast(positions, tf.int64)
        )

    scale_x = scan(start[:, 0], a[:, 0], width)[:, None, :]  # [B, 1, W]
    scale_y = scan(start[:, 1], a[:, 4], height)[:, :, None]  # [B, H, 1]
    scaling = ((a[:, 1] == 0.0) & (a[:, 3] == 0.0))[:, None, None]
    source_x = tf.where(scaling, scale_x, fixed[:, 0])
    source_y = tf.where(scaling, scale_y, fixed[:, 1])
    inside = (
        (source_x >= 0)
        & (source_x < tf.cast(width, tf.int64))
        & (source_y >= 0)
        & (source_y < tf.cast(height, tf.int64))
    )
    index = tf.where(inside, source_y * tf.cast(width, tf.int64) + source_x, 0)
    flat = tf.reshape(x, (shape[0], -1, shape[3]))
    sampled = tf.gather(flat, tf.reshape(index, (shape[0], -1)), batch_dims=1)
    return tf.where(inside[..., None], tf.reshape(sampled, shape), 0)
