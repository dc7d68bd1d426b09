"""The CIFAR views against the CSKD code's: torchvision for the standard view
(`golden/cifar_augmentation.npz`), Pillow itself for every RandAugment op.

The fork (llieeai/lud @ 2704bb2, `mdistiller/dataset/cifar100.py`) applies its
ops to PIL images; `PIL_OPS` below calls Pillow exactly as its `augment_list()`
functions do, and `pil_cutout` is its `CutoutAbs` with the draws given.
Measured with Pillow 13.0: every op, the blends included, agrees with Pillow on
100% of pixels (max difference 0); the tests allow the blends 1 and the
geometric ops 1% of pixels, for other platforms' float rounding.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from keras_cskd import data
from keras_cskd.data import augment, randaugment
from keras_cskd.data.dataset import denormalize, normalize

CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
GOLDEN = Path(__file__).parent / "golden" / "cifar_augmentation.npz"


def _affine(img, coefficients):
    return img.transform(img.size, Image.AFFINE, coefficients)


PIL_OPS = {
    "AutoContrast": lambda img, v: ImageOps.autocontrast(img),
    "Brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "Color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "Contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "Equalize": lambda img, v: ImageOps.equalize(img),
    "Identity": lambda img, v: img,
    "Posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "Rotate": lambda img, v: img.rotate(v),
    "Sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "ShearX": lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda img, v: ImageOps.solarize(img, v),
    "TranslateX": lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
    "TranslateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
}
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
# Fixed magnitudes per op: the ends of its range, 0 where it is in range,
# values near the integer thresholds of Posterize and Solarize.
MAGNITUDES = {
    "Brightness": (0.05, 0.3, 0.5, 0.77, 0.95),
    "Color": (0.05, 0.3, 0.5, 0.77, 0.95),
    "Contrast": (0.05, 0.3, 0.5, 0.77, 0.95),
    "Sharpness": (0.05, 0.3, 0.5, 0.77, 0.95),
    "Posterize": (4.0, 4.999, 5.0, 6.5, 7.999),
    "Rotate": (-30.0, -12.3, 0.0, 0.4, 7.5, 29.99),
    "ShearX": (-0.3, -0.1, 0.0, 0.017, 0.17, 0.3),
    "ShearY": (-0.3, -0.1, 0.0, 0.017, 0.17, 0.3),
    "TranslateX": (-0.3, -0.05, 0.0, 0.1234, 0.3),
    "TranslateY": (-0.3, -0.05, 0.0, 0.1234, 0.3),
    "Solarize": (0.0, 1.0, 100.5, 128.0, 200.000001, 255.99, 256.0),
}


def _images(count=42, seed=0):
    """Random uint8 32x32x3 images, and some that stress the lookup tables."""
    rng = np.random.default_rng(seed)
    total = max(count, 16)
    images = rng.integers(0, 256, (total, 32, 32, 3), dtype=np.uint8)
    images[:6] = rng.integers(100, 140, (6, 32, 32, 3))  # low contrast
    images[6:9] = rng.choice(np.array([0, 7, 200, 255], np.uint8), (3, 32, 32, 3))
    images[9] = 77  # constant
    images[10] = 0
    images[10, 3, 4] = 255  # one bright pixel: Equalize's table exceeds 255
    images[11] = np.linspace(0, 255, 32 * 32 * 3).astype(np.uint8).reshape(32, 32, 3)
    return images[np.linspace(0, total - 1, count).round().astype(int)]


def _pil(name, images, values):
    return np.stack(
        [
            np.asarray(PIL_OPS[name](Image.fromarray(image), float(value)))
            for image, value in zip(images, values, strict=True)
        ]
    )


@pytest.mark.parametrize("name", randaugment.OP_NAMES)
def test_each_op_matches_pillow(name):
    images = _images()
    index = randaugment.OP_NAMES.index(name)
    fixed = MAGNITUDES.get(name, (0.5,))
    values = np.resize(np.array(fixed, np.float64), len(images))
    ours = randaugment.apply_op(images, np.full(len(images), index), values).numpy()
    expected = _pil(name, images, values)
    difference = np.abs(ours.astype(int) - expected.astype(int))
    if name in BLENDS:
        assert difference.max() <= 1  # measured: 0
    elif name in GEOMETRIC:
        agree = (difference == 0).all(axis=-1).mean()
        assert agree >= 0.99  # measured: 1.0
    else:
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize(
    "name", ["AutoContrast", "Contrast", "Equalize", "Rotate", "Sharpness"]
)
def test_grayscale_ops_match_pillow(name):
    gray = _images(8, seed=1)[..., :1]
    values = np.resize(np.array(MAGNITUDES.get(name, (0.5,))), len(gray))
    index = randaugment.OP_NAMES.index(name)
    ours = randaugment.apply_op(gray, np.full(len(gray), index), values).numpy()
    expected = _pil(name, gray[..., 0], values)[..., None]
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_a_batch_mixes_ops_per_image():
    images = _images(28, seed=2)
    rng = np.random.default_rng(3)
    ops = np.arange(28) % 14
    values = randaugment.magnitudes(ops, rng.random(28)).numpy()
    ours = randaugment.apply_op(images, ops, values).numpy()
    for image, op, value, our in zip(images, ops, values, ours, strict=True):
        name = randaugment.OP_NAMES[op]
        expected = _pil(name, image[None], [value])[0]
        assert np.abs(our.astype(int) - expected.astype(int)).max() <= 1, name


def pil_cutout(image, size, centre):
    """The fork's `CutoutAbs(img, v)` with `np.random.uniform(w)` and `(h)` given."""
    img = Image.fromarray(image)
    if size <= 0:
        return np.asarray(img)
    w, h = img.size
    x0 = int(max(0, centre[0] - size / 2.0))
    y0 = int(max(0, centre[1] - size / 2.0))
    x1, y1 = min(w, x0 + size), min(h, y0 + size)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return np.asarray(img)


@pytest.mark.parametrize(
    "size, centre",
    [
        (0.0, (16.0, 16.0)),
        (0.3, (10.2, 20.9)),
        (5.5, (1.0001, 1.0001)),
        (8.0, (16.0, 16.0)),
        (11.7, (31.9, 4.2)),
        (15.99, (32.0, 32.0)),
        (16.0, (9.75, 24.25)),
    ],
)
def test_cutout_is_pillows_rectangle(size, centre):
    images = _images(2, seed=4)
    ours = randaugment.cutout(images, [size] * 2, [centre] * 2).numpy()
    for image, our in zip(images, ours, strict=True):
        np.testing.assert_array_equal(our, pil_cutout(image, size, centre))


def pil_rand_augment(image, ops, values, size, centre):
    """The fork's `RandAugment.__call__` with its draws given."""
    img = Image.fromarray(image)
    for op, value in zip(ops, values, strict=True):
        img = PIL_OPS[randaugment.OP_NAMES[op]](img, float(value))
    return pil_cutout(np.asarray(img), size, centre)


def test_layer_equals_the_fork_with_the_same_draws():
    pixels = _images(24, seed=5)
    draws = randaugment.ReferenceRandAugment(CIFAR100, seed=7).draw(24)
    layer = randaugment.ReferenceRandAugment(CIFAR100, seed=7)  # draws the same
    images = normalize(pixels, CIFAR100)
    ours = layer(images, training=True)
    expected = [
        pil_rand_augment(pixels[k], *(np.asarray(draws[key][k]) for key in keys))
        for k in range(24)
        for keys in [("ops", "magnitudes", "cutout_sizes", "cutout_centres")]
    ]
    np.testing.assert_allclose(ours, normalize(np.stack(expected), CIFAR100), atol=1e-6)


def test_op_choices_and_magnitudes_follow_the_fork():
    draws = randaugment.ReferenceRandAugment(seed=0).draw(7000)
    ops = draws["ops"].numpy()
    values = draws["magnitudes"].numpy()
    assert ops.shape == (7000, 2)
    counts = np.bincount(ops.ravel(), minlength=14)
    # Uniform over the 14 ops: 1000 each, sd about 30.
    assert counts.min() > 850 and counts.max() < 1150, counts
    # With replacement: both ops alike in 1/14 of the images (sd 0.003).
    assert 0.055 < np.mean(ops[:, 0] == ops[:, 1]) < 0.088
    for index, (name, low, high) in enumerate(randaugment.OPS):
        mine = values[ops == index]
        span = high - low
        assert low <= mine.min() and mine.max() < high, name
        assert mine.min() < low + 0.02 * span and mine.max() > high - 0.02 * span
        assert abs(mine.mean() - (low + high) / 2) < 0.04 * span, name
    sizes, centres = draws["cutout_sizes"].numpy(), draws["cutout_centres"].numpy()
    assert 0 <= sizes.min() and sizes.max() < 16 and abs(sizes.mean() - 8) < 0.3
    # `np.random.uniform(32)` is U(low=32, high=1): uniform in (1, 32].
    assert centres.min() > 1 and centres.min() < 1.05
    assert centres.max() > 31.95 and centres.max() <= 32
    assert abs(centres.mean() - 16.5) < 0.4


@pytest.mark.large
def test_seeded_layers_repeat_and_images_differ():
    images = normalize(_images(16, seed=6), CIFAR100)

    def run(seed):
        layer = augment.cifar_strong_augmentation(CIFAR100, seed=seed)
        return [layer(images, training=True).numpy() for _ in range(2)]

    first, again, other = run(1), run(1), run(2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])
    ops = randaugment.ReferenceRandAugment(seed=1).draw(16)["ops"].numpy()
    assert len({tuple(pair) for pair in ops}) > 8  # each image its own ops


@pytest.mark.large
def test_a_seeded_two_view_pipeline_repeats():
    images = normalize(_images(192, seed=10), CIFAR100)
    examples = tf.data.Dataset.from_tensor_slices((images, np.zeros(192, "int32")))

    def batches():
        return [
            (weak.numpy(), strong.numpy())
            for (weak, strong), _ in data.pipeline(
                examples,
                64,
                training=True,
                seed=0,
                augmentation=augment.cifar_augmentation(normalization=CIFAR100, seed=1),
                strong_augmentation=augment.cifar_strong_augmentation(CIFAR100, seed=2),
            )
        ]

    for first, again in zip(batches(), batches(), strict=True):
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])


def test_strong_view_is_a_normalised_8_bit_image_and_not_at_inference():
    images = normalize(_images(8, seed=8), CIFAR100)
    strong = augment.cifar_strong_augmentation(CIFAR100, seed=0)
    pixels = denormalize(strong(images, training=True), CIFAR100).numpy()
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-3)
    assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
    np.testing.assert_array_equal(strong(images, training=False), images)


def test_strong_view_of_grayscale_digits_runs():
    digits = data.load("digits")
    batch = next(iter(digits.train.batch(16)))[0]
    strong = augment.cifar_strong_augmentation(None, image_size=8, padding=1, seed=0)
    out = strong(batch, training=True).numpy()
    assert out.shape == (16, 8, 8, 1) and 0 <= out.min() and out.max() <= 1


def test_weak_view_pads_with_black():
    images = normalize(np.full((64, 32, 32, 3), 200, np.uint8), CIFAR100)
    weak = augment.cifar_augmentation(normalization=CIFAR100, seed=0)
    pixels = np.rint(denormalize(weak(images, training=True), CIFAR100).numpy())
    assert set(np.unique(pixels)) == {0.0, 200.0}  # black padding, no mean colour
    # Some image was shifted by the full 4 pixels.
    assert (pixels[:, :4] == 0).all(axis=(1, 2, 3)).any()


def test_black_is_zero_in_pixel_space():
    np.testing.assert_allclose(
        denormalize(np.array(augment.black(CIFAR100), np.float32), CIFAR100),
        0,
        atol=1e-5,
    )
    assert augment.black(None) == 0.0


def test_the_layers_serialise():
    for layer in [
        augment.RandomPaddedCrop(4, fill=augment.black(CIFAR100), seed=3),
        augment.RandomHorizontalFlip(seed=3),
        randaugment.ReferenceRandAugment(CIFAR100, seed=3),
        augment.cifar_strong_augmentation(CIFAR100, seed=3),
    ]:
        config = keras.saving.serialize_keras_object(layer)
        again = keras.saving.deserialize_keras_object(config)
        assert again.get_config() == layer.get_config()
        images = normalize(_images(4, seed=9), CIFAR100)
        np.testing.assert_array_equal(
            layer(images, training=True), again(images, training=True)
        )


STATELESS_LAYERS = {
    "crop": lambda: augment.RandomPaddedCrop(4, fill=augment.black(CIFAR100)),
    "flip": augment.RandomHorizontalFlip,
    "randaugment": lambda: randaugment.ReferenceRandAugment(CIFAR100),
    "weak view": lambda: augment.cifar_augmentation(normalization=CIFAR100),
    "strong view": lambda: augment.cifar_strong_augmentation(CIFAR100),
}


@pytest.mark.large
@pytest.mark.parametrize("name", sorted(STATELESS_LAYERS))
def test_augment_is_a_pure_function_of_the_seed(name):
    images = normalize(_images(32, seed=11), CIFAR100).numpy()
    layer = STATELESS_LAYERS[name]()
    first = layer.augment(images, [1, 2]).numpy()
    assert not np.array_equal(first, images)
    np.testing.assert_array_equal(layer.augment(images, [1, 2]), first)
    np.testing.assert_array_equal(
        STATELESS_LAYERS[name]().augment(images, [1, 2]), first
    )
    assert not np.array_equal(layer.augment(images, [1, 3]), first)
    # In a parallel tf.data map, as in the pipeline: the same batches.
    seeds = tf.constant([[1, 2], [1, 3], [5, 0], [1, 2]], tf.int64)
    mapped = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: layer.augment(images, seed), num_parallel_calls=4
    )
    for seed, batch in zip(seeds, mapped, strict=True):
        np.testing.assert_array_equal(batch, layer.augment(images, seed))


@pytest.mark.parametrize("name", sorted(STATELESS_LAYERS))
def test_calls_draw_their_seeds_from_the_generator(name):
    images = normalize(_images(8, seed=12), CIFAR100).numpy()
    layer = STATELESS_LAYERS[name]()
    if isinstance(layer, augment.RandomSequence):
        generators = [sublayer.seed_generator for sublayer in layer.layers]
    else:
        generators = [layer.seed_generator]
    seeds = [generator.state.numpy().copy() for generator in generators]
    called = layer(images, training=True).numpy()
    expected = tf.convert_to_tensor(images)
    sublayers = layer.layers if isinstance(layer, augment.RandomSequence) else [layer]
    for sublayer, seed in zip(sublayers, seeds, strict=True):
        expected = sublayer.augment(expected, seed)
    np.testing.assert_array_equal(called, expected)


# ------------------------------------------------- the golden torchvision view


def test_standard_view_equals_torchvision():
    """The dataset's normalisation then `padded_crop` and `flip_left_right` at
    the fixture's offsets, in a tf.data graph as in training, against the
    fork's `get_cifar100_train_transform()` (measured max error: 0)."""
    golden = np.load(GOLDEN)
    normalization = (tuple(golden["mean"]), tuple(golden["std"]))
    assert normalization == CIFAR100 and int(golden["padding"]) == 4
    assert str(golden["peer_commit"]) == "2704bb2"
    samples = (
        golden["images"][golden["image_index"]],
        golden["offsets"],
        golden["flips"],
    )

    def view(pixels, offsets, flips):
        images = normalize(pixels, normalization)
        fill = augment.black(normalization)
        cropped = augment.padded_crop(images, offsets, 4, fill)
        return augment.flip_left_right(cropped, flips)

    dataset = tf.data.Dataset.from_tensors(samples).map(view)
    ours = next(iter(dataset)).numpy()
    assert np.abs(ours - golden["outputs"]).max() <= 1e-6
