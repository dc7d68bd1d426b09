"""Specifications of the data sources, the input pipeline and the augmentations.

Nothing here touches the network: TFDS is exercised with `tfds.testing.mock_data`
and with a tiny dataset prepared locally, and the `no_network` fixture makes any
attempt to reach a host fail at once (so a wrong code path cannot hang).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_cskd import data
from keras_cskd.data import augment
from keras_cskd.data import folder as folder_source
from keras_cskd.data import tfds as tfds_source
from keras_cskd.data.batching import MIXUP, STRONG_VIEW, WEAK_VIEW, batch_seed
from keras_cskd.data.dataset import size_pair

CIFAR_STATISTICS = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]),
}


# ----------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits_splits():
    return data.digits_arrays()


def test_digits_split_sizes(digits_splits):
    sizes = {split: len(labels) for split, (_, labels) in digits_splits.items()}
    assert sizes == {"train": 1257, "validation": 270, "test": 270}


def test_digits_splits_are_stratified(digits_splits):
    for split, (_, labels) in digits_splits.items():
        assert set(labels.tolist()) == set(range(10)), split


def test_digits_splits_are_fixed(digits_splits):
    again = data.digits_arrays()
    for split, (images, labels) in digits_splits.items():
        np.testing.assert_array_equal(again[split][0], images)
        np.testing.assert_array_equal(again[split][1], labels)


def test_digits_splits_do_not_overlap(digits_splits):
    rows = {
        split: {image.tobytes() for image in images}
        for split, (images, _) in digits_splits.items()
    }
    assert not rows["train"] & rows["validation"]
    assert not rows["train"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_digits_dataset_values_and_types():
    digits = data.load("digits")
    assert (digits.num_classes, digits.input_shape) == (10, (8, 8, 1))
    images, labels = data.to_numpy(digits.train)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.shape == (1257, 8, 8, 1)
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))


# --------------------------------------------------------------- pipeline


def _first_batch_labels(dataset):
    return next(iter(dataset))[1].numpy()


def test_pipeline_shuffles_deterministically_with_a_seed():
    train = data.load("digits").train
    first = _first_batch_labels(data.pipeline(train, 64, training=True, seed=3))
    again = _first_batch_labels(data.pipeline(train, 64, training=True, seed=3))
    other = _first_batch_labels(data.pipeline(train, 64, training=True, seed=4))
    in_order = _first_batch_labels(data.pipeline(train, 64))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, in_order)


def test_pipeline_batches():
    test = data.load("digits").test
    shapes = [images.shape[0] for images, _ in data.pipeline(test, 100)]
    assert shapes == [100, 100, 70]
    dropped = data.pipeline(test, 100, drop_remainder=True)
    images, labels = next(iter(dropped))
    assert images.shape == (100, 8, 8, 1) and labels.shape == (100,)
    assert len(list(dropped)) == 2


# The random pipelines: every draw is a function of (seed, epoch, step).

RANDOM_PIPELINES = {
    "two views": lambda: {
        "augmentation": data.digits_augmentation(),
        "strong_augmentation": data.cifar_strong_augmentation(
            None, image_size=8, padding=1
        ),
    },
    "mixup": lambda: {
        "augmentation": data.digits_augmentation(),
        "mixup_alpha": 0.4,
        "num_classes": 10,
    },
}


def _arrays(batches):
    """Every batch as a flat list of NumPy arrays (views, images, labels)."""
    return [
        [np.asarray(t) for t in tf.nest.flatten(batch)]
        for batch in batches.as_numpy_iterator()
    ]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for one, other in zip(first, second, strict=True):
        for a, b in zip(one, other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.large
@pytest.mark.parametrize("kind", sorted(RANDOM_PIPELINES))
def test_a_resumed_pipeline_makes_the_uninterrupted_batches(kind):
    train = data.load("digits").train.take(200)  # 7 batches of 32 per epoch

    def batches(**kwargs):
        options = RANDOM_PIPELINES[kind]()  # fresh layers, fresh generators
        return _arrays(
            data.pipeline(
                train, 32, training=True, seed=5, epochs=3, **options, **kwargs
            )
        )

    uninterrupted = batches()
    resumed = batches(first_epoch=1, skip_steps=2)
    assert len(uninterrupted) == 21
    _assert_same_batches(resumed, uninterrupted[7 + 2 :])


def _one_image(count=64):
    """`count` copies of one digit: the batches then differ by their draws alone."""
    images, _ = data.to_numpy(data.load("digits").train.take(1))
    images = np.repeat(images, count, axis=0)
    return tf.data.Dataset.from_tensor_slices((images, np.zeros(count, "int32")))


@pytest.mark.large
@pytest.mark.parametrize("kind", sorted(RANDOM_PIPELINES))
def test_random_pipelines_repeat_with_a_seed_and_differ_otherwise(kind):
    examples = _one_image()

    def batches(seed):
        options = RANDOM_PIPELINES[kind]()
        return _arrays(
            data.pipeline(examples, 32, training=True, seed=seed, epochs=2, **options)
        )

    first, again, other = batches(1), batches(1), batches(2)
    _assert_same_batches(first, again)
    for one, different in zip(first, other, strict=True):
        assert not np.array_equal(one[0], different[0])
    # Each epoch and each step draws anew: epoch 1 is not epoch 0 again.
    steps = [batch[0] for batch in first]  # 2 epochs of 2 steps
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(steps[i], steps[j]), (i, j)


@pytest.mark.large
def test_the_views_draw_from_their_own_streams():
    # Two views made by alike layers must still differ: their crops and flips
    # are drawn from the batch seed's own fold-in for each view.
    images, _ = next(iter(_one_image().batch(32)))
    seed = batch_seed(3, 0, 0)
    (weak, strong), _ = next(
        iter(
            data.pipeline(
                _one_image(),
                32,
                training=True,
                seed=3,
                epochs=1,
                augmentation=data.cifar_augmentation(8, padding=1),
                strong_augmentation=data.cifar_augmentation(8, padding=1),
            )
        )
    )
    assert not np.array_equal(weak, strong)
    layer = data.cifar_augmentation(8, padding=1)
    for view, stream in ((weak, WEAK_VIEW), (strong, STRONG_VIEW)):
        expected = layer.augment(images, augment.fold_in(seed, stream))
        np.testing.assert_array_equal(view, expected)


def test_a_pipeline_with_no_epochs_left_is_refused_in_one_line():
    examples = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2, 2, 1)), [0] * 4))
    with pytest.raises(ValueError, match=r"No epochs to train: range\(3, 3\)"):
        data.pipeline(examples, 2, training=True, epochs=3, first_epoch=3)


def test_an_image_size_is_a_pair_of_ints():
    assert size_pair(32) == (32, 32)
    assert size_pair([24, np.int64(40)]) == (24, 40)
    assert size_pair(np.int32(8)) == (8, 8)
    assert size_pair(None) is None


def test_a_pipeline_without_epochs_draws_anew_on_every_pass():
    examples = _one_image(32)

    def passes():
        train = data.pipeline(
            examples, 32, training=True, seed=4, augmentation=data.digits_augmentation()
        )
        return [next(iter(train))[0].numpy() for _ in range(2)]

    first, again = passes(), passes()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])


def test_layers_with_generators_still_work_in_order():
    examples = _one_image(64)

    def batches():
        flip = keras.layers.RandomFlip("horizontal", seed=0)
        train = data.pipeline(examples, 16, training=True, augmentation=flip)
        return _arrays(train)

    _assert_same_batches(batches(), batches())


def test_pipeline_mixup_is_the_label_weighted_mix():
    train = data.load("digits").train.take(100)
    alpha, seed = 0.4, 2

    def first_batch(**options):
        return next(
            iter(
                data.pipeline(train, 50, training=True, seed=seed, epochs=1, **options)
            )
        )

    images, labels = (t.numpy() for t in first_batch())  # the same shuffle
    mixed, soft = (t.numpy() for t in first_batch(mixup_alpha=alpha, num_classes=10))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    mixup_seed = augment.fold_in(batch_seed(seed, 0, 0), MIXUP)
    weights, permutation = (
        t.numpy() for t in augment.mixup_draws(50, alpha, mixup_seed)
    )
    assert sorted(permutation.tolist()) == list(range(50))
    assert (permutation != np.arange(50)).any()
    assert ((weights > 0.05) & (weights < 0.95)).any()
    one_hot = np.eye(10, dtype="float32")[labels]
    w = weights[:, None]
    np.testing.assert_allclose(
        soft, w * one_hot + (1 - w) * one_hot[permutation], atol=1e-6
    )
    w = weights[:, None, None, None]
    np.testing.assert_allclose(
        mixed, w * images + (1 - w) * images[permutation], atol=1e-6
    )


def test_mix_up_has_keras_mixup_semantics():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(16, 4, 4, 3)).astype("float32")
    labels = np.eye(5, dtype="float32")[rng.integers(0, 5, 16)]
    seed = [7, 11]
    mixed, soft = augment.mix_up(images, labels, 0.2, seed)
    weights, permutation = augment.mixup_draws(16, 0.2, seed)
    layer = keras.layers.MixUp(alpha=0.2)
    transformation = {"mix_weight": weights, "permutation_order": permutation}
    np.testing.assert_allclose(
        mixed, layer.transform_images(images, transformation), atol=1e-6
    )
    np.testing.assert_allclose(
        soft, layer.transform_labels(labels, transformation), atol=1e-6
    )
    # Beta(a, a) weights: symmetric about 1/2, mostly near 0 or 1 for small a.
    many, _ = augment.mixup_draws(20_000, 0.2, seed)
    many = many.numpy()
    assert abs(many.mean() - 0.5) < 0.01
    # Var of Beta(a, a) = 1 / (4 (2a + 1)).
    assert abs(many.var() - 1 / (4 * 1.4)) < 0.01


def test_pipeline_mixup_gives_soft_labels_summing_to_one():
    train = data.load("digits").train
    batches = data.pipeline(
        train, 32, training=True, seed=0, mixup_alpha=0.4, num_classes=10
    )
    images, labels = next(iter(batches))
    labels = labels.numpy()
    assert images.shape == (32, 8, 8, 1) and labels.shape == (32, 10)
    assert labels.min() >= 0.0
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
    assert (labels.max(axis=1) < 1.0 - 1e-6).any()  # some samples are mixed


# ------------------------------------------------------------ TFDS (mock)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_cifar_is_normalised_with_its_constants(name, num_classes, no_network):
    with tfds.testing.mock_data(num_examples=6):
        cifar = data.load(f"tfds:{name}")
        raw = tfds.as_numpy(tfds.builder(name).as_dataset(split="test"))
        raw_images, raw_labels = zip(
            *((example["image"], example["label"]) for example in raw), strict=True
        )
        images, labels = data.to_numpy(cifar.test)
    assert (cifar.name, cifar.num_classes, cifar.input_shape) == (
        f"tfds:{name}",
        num_classes,
        (32, 32, 3),
    )
    assert cifar.validation is None
    assert images.dtype == np.float32 and labels.dtype == np.int32
    mean, std = (np.array(statistic) for statistic in CIFAR_STATISTICS[name])
    np.testing.assert_array_equal(cifar.normalization, CIFAR_STATISTICS[name])
    expected = (np.stack(raw_images).astype("float64") / 255.0 - mean) / std
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels, raw_labels)
    assert no_network == []


def test_tfds_cifar100_through_the_training_pipeline(no_network):
    with tfds.testing.mock_data(num_examples=10):
        cifar = data.load("tfds:cifar100")
        batches = data.pipeline(
            cifar.train,
            4,
            training=True,
            seed=0,
            augmentation=data.cifar_augmentation(seed=0),
        )
        images, labels = next(iter(batches))
    assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    assert np.all((labels.numpy() >= 0) & (labels.numpy() < 100))


def test_tfds_validation_fraction_carves_a_validation_split(no_network):
    with tfds.testing.mock_data(num_examples=5):
        cifar = data.load("tfds:cifar100", validation_fraction=0.1)
        images, labels = data.to_numpy(cifar.validation)
    # mock_data ignores slicing; the carve's sizes are checked on real files below.
    assert images.shape[1:] == (32, 32, 3) and labels.dtype == np.int32


def test_tfds_not_prepared_fails_fast_without_any_download(tmp_path, no_network):
    with pytest.raises(FileNotFoundError) as error:
        data.load("tfds:cifar100", data_dir=str(tmp_path))
    message = str(error.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "tfds.builder('cifar100'" in message
    assert "download_and_prepare()" in message
    assert "--config.data.data_dir=" in message
    assert no_network == []


def test_tfds_download_without_network_fails_fast(tmp_path, no_network):
    with pytest.raises(ConnectionError, match="network is unreachable") as error:
        data.load("tfds:cifar100", data_dir=str(tmp_path), download=True)
    assert "download_and_prepare()" in str(error.value)
    assert len(no_network) == 1  # one probe, no retries


def test_tfds_unknown_dataset_is_a_clear_error(no_network):
    with pytest.raises(ValueError, match="Unknown TFDS dataset 'no_such_dataset'"):
        data.load("tfds:no_such_dataset")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("cifar100", ("cifar100", None, {})),
        ("cifar10:train[:10%]", ("cifar10", None, {"train": "train[:10%]"})),
        (
            "cifar10:3.0.2:train[:50%],test=test[10:20]",
            ("cifar10", "3.0.2", {"train": "train[:50%]", "test": "test[10:20]"}),
        ),
        (
            "imagenette/160px:train,validation=validation[:50%],test=validation[50%:]",
            (
                "imagenette/160px",
                None,
                {
                    "train": "train",
                    "validation": "validation[:50%]",
                    "test": "validation[50%:]",
                },
            ),
        ),
    ],
)
def test_tfds_spec_syntax(spec, expected):
    assert tfds_source.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "cifar10:a,b", "cifar10:val=x", "c:1.0:a:b"])
def test_tfds_malformed_spec_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="TFDS spec"):
        tfds_source.parse_spec(spec)


# --------------------------------------------------- TFDS (prepared files)


class TinyImagesForTests(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """20 train and 10 test 4x4 RGB images, 3 classes; pixel value = example id."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 4, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(range(20)),
            "test": self._generate_examples(range(100, 110)),
        }

    def _generate_examples(self, ids):
        for example_id in ids:
            image = np.full((4, 4, 3), example_id, np.uint8)
            yield example_id, {"image": image, "label": example_id % 3}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    """A data_dir with `tiny_images_for_tests` prepared, as if copied from elsewhere."""
    data_dir = tmp_path_factory.mktemp("tfds")
    TinyImagesForTests(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def _ids(dataset):
    images, _ = data.to_numpy(dataset)
    return sorted(np.rint(images[:, 0, 0, 0] * 255).astype(int).tolist())


def test_tfds_prepared_files_load_without_normalisation(tiny_tfds_dir, no_network):
    tiny = data.load("tfds:tiny_images_for_tests", data_dir=tiny_tfds_dir)
    assert (tiny.num_classes, tiny.input_shape) == (3, (4, 4, 3))
    assert tiny.normalization is None
    assert _ids(tiny.train) == list(range(20))
    assert _ids(tiny.test) == list(range(100, 110))
    images, labels = data.to_numpy(tiny.train)
    np.testing.assert_array_equal(labels, np.rint(images[:, 0, 0, 0] * 255) % 3)
    assert no_network == []


def test_tfds_validation_carve_is_disjoint_and_exact(tiny_tfds_dir):
    tiny = data.load(
        "tfds:tiny_images_for_tests", data_dir=tiny_tfds_dir, validation_fraction=0.25
    )
    train, validation = _ids(tiny.train), _ids(tiny.validation)
    assert (len(train), len(validation)) == (15, 5)
    assert sorted(train + validation) == list(range(20))
    again = data.load(
        "tfds:tiny_images_for_tests", data_dir=tiny_tfds_dir, validation_fraction=0.25
    )
    assert _ids(again.validation) == validation


def test_tfds_split_spec_overrides_the_splits(tiny_tfds_dir):
    tiny = data.load(
        "tfds:tiny_images_for_tests:train[:50%],validation=train[50%:],test=test[:4]",
        data_dir=tiny_tfds_dir,
    )
    assert len(_ids(tiny.train)) == 10
    assert sorted(_ids(tiny.train) + _ids(tiny.validation)) == list(range(20))
    assert len(_ids(tiny.test)) == 4


def test_tfds_explicit_normalisation(tiny_tfds_dir):
    tiny = data.load(
        "tfds:tiny_images_for_tests",
        data_dir=tiny_tfds_dir,
        normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    )
    assert tiny.normalization == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images, _ = data.to_numpy(tiny.test)
    ids = np.array(sorted(range(100, 110)))
    np.testing.assert_allclose(
        np.sort(images[:, 0, 0, 0]), (ids / 255.0 - 0.5) / 0.25, atol=1e-5
    )


# ------------------------------------------------------------ image folder


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())


def _image(value, shape=(6, 5, 3)):
    return np.full(shape, value, np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """train: 3 classes x 4 images, test: 3 classes x 2; pixel = 10*class + i."""
    for split, count in (("train", 4), ("test", 2)):
        for label, name in enumerate(["ant", "bee", "cat"]):
            for i in range(count):
                _write_png(tmp_path / split / name / f"{i}.png", _image(10 * label + i))
    return tmp_path


def test_folder_loads_images_and_sorted_class_labels(image_folder):
    dataset = data.load(f"folder:{image_folder}")
    assert dataset.name == f"folder:{image_folder}"
    assert (dataset.num_classes, dataset.input_shape) == (3, (6, 5, 3))
    assert dataset.validation is None
    for split, count in (("train", 4), ("test", 2)):
        images, labels = data.to_numpy(getattr(dataset, split))
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.shape == (3 * count, 6, 5, 3)
        values = np.rint(images[:, 0, 0, 0] * 255).astype(int)
        np.testing.assert_array_equal(labels, values // 10)  # ant=0, bee=1, cat=2


def test_folder_corrupt_image_is_reported_by_file_name(image_folder):
    bad = image_folder / "train" / "bee" / "bad.png"
    bad.write_bytes(np.random.default_rng(0).bytes(200))
    with pytest.raises(ValueError, match="cannot be decoded") as error:
        data.load(f"folder:{image_folder}")
    assert "bad.png" in str(error.value)
    assert "0.png" not in str(error.value)


def test_folder_validation_fraction_is_stratified_and_seeded(image_folder):
    first = data.load(f"folder:{image_folder}", validation_fraction=0.25, seed=1)
    again = data.load(f"folder:{image_folder}", validation_fraction=0.25, seed=1)
    train, train_labels = data.to_numpy(first.train)
    validation, validation_labels = data.to_numpy(first.validation)
    assert sorted(validation_labels.tolist()) == [0, 1, 2]
    assert sorted(train_labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    values = set(np.rint(train[:, 0, 0, 0] * 255).astype(int).tolist())
    held_out = set(np.rint(validation[:, 0, 0, 0] * 255).astype(int).tolist())
    assert not values & held_out and len(values | held_out) == 12
    np.testing.assert_array_equal(data.to_numpy(again.validation)[0], validation)


def test_folder_uses_its_own_validation_split(image_folder):
    for label, name in enumerate(["ant", "bee", "cat"]):
        _write_png(image_folder / "validation" / name / "v.png", _image(label))
    dataset = data.load(f"folder:{image_folder}")
    _, labels = data.to_numpy(dataset.validation)
    assert labels.tolist() == [0, 1, 2]


def test_folder_mismatched_classes_are_a_clear_error(image_folder):
    _write_png(image_folder / "test" / "dog" / "0.png", _image(0))
    with pytest.raises(ValueError, match="'test' split .* same class folders"):
        data.load(f"folder:{image_folder}")


def test_folder_mixed_sizes_need_image_size(image_folder):
    _write_png(image_folder / "train" / "ant" / "big.png", _image(0, (9, 9, 3)))
    with pytest.raises(ValueError, match="differ in size") as error:
        data.load(f"folder:{image_folder}")
    assert "big.png" in str(error.value)
    resized = data.load(f"folder:{image_folder}", image_size=(8, 7))
    assert resized.input_shape == (8, 7, 3)
    images, _ = data.to_numpy(resized.train)
    assert images.shape == (13, 8, 7, 3)


def test_folder_mixed_grayscale_and_rgb_become_rgb(image_folder):
    _write_png(image_folder / "train" / "ant" / "gray.png", _image(7, (6, 5, 1)))
    dataset = data.load(f"folder:{image_folder}")
    assert dataset.input_shape == (6, 5, 3)


def test_folder_missing_train_split_names_the_layout(tmp_path):
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no 'train' split") as error:
        data.load(f"folder:{tmp_path}")
    assert str(tmp_path) in str(error.value)
    assert "<split>/<class>/<image>" in str(error.value)


def test_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        data.load(f"folder:{tmp_path}")


def test_folder_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_source.load(tmp_path / "nowhere")


# ----------------------------------------------------------- augmentation


def test_cifar_augmentation_keeps_the_shape_and_changes_images():
    images = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype("float32")
    augmented = data.cifar_augmentation(seed=0)(images, training=True)
    assert tuple(augmented.shape) == (8, 32, 32, 3)
    changed = [
        not np.array_equal(np.asarray(augmented[i]), images[i]) for i in range(8)
    ]
    assert sum(changed) >= 6


def _shifted(image, rows, columns):
    """NumPy reference: `image` moved by (rows, columns), zeros where uncovered."""
    height, width = image.shape[:2]
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
    return padded[4 - rows : 4 - rows + height, 4 - columns : 4 - columns + width]


def test_random_padded_crop_shifts_each_image_on_its_own():
    images = np.random.default_rng(1).uniform(size=(16, 32, 32, 3)).astype("float32")
    cropped = np.asarray(data.RandomPaddedCrop(4, seed=0)(images, training=True))
    shifts = []
    for image, crop in zip(images, cropped, strict=True):
        found = [
            (rows, columns)
            for rows in range(-4, 5)
            for columns in range(-4, 5)
            if np.array_equal(_shifted(image, rows, columns), crop)
        ]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # not one offset for the whole batch


def test_cifar_augmentation_is_the_identity_at_inference():
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    same = data.cifar_augmentation()(images, training=False)
    np.testing.assert_allclose(np.asarray(same), images)


def test_digits_augmentation_keeps_the_shape():
    images = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    augmented = data.digits_augmentation(seed=0)(images, training=True)
    assert tuple(augmented.shape) == (4, 8, 8, 1)


def _digit_shifts(image, shifted):
    """The offsets in {-1, 0, 1}^2 that move `image` to `shifted`, zero-filled."""
    return [
        (rows, columns)
        for rows in (-1, 0, 1)
        for columns in (-1, 0, 1)
        if np.array_equal(_shifted(image, rows, columns), shifted)
    ]


@pytest.mark.large
def test_digits_augmentation_shifts_by_whole_pixels_with_zero_fill():
    train = data.load("digits").train

    def batch(**options):
        return next(
            iter(data.pipeline(train, 256, training=True, seed=0, epochs=1, **options))
        )[0].numpy()

    images = batch()  # the same shuffle, unaugmented
    augmented = batch(augmentation=data.digits_augmentation())
    shifts = set()
    for image, shifted in zip(images, augmented, strict=True):
        found = _digit_shifts(image, shifted)
        assert found, "not a whole-pixel shift with zero fill"
        if len(found) == 1:
            shifts.add(found[0])
    assert len(shifts) == 9  # every offset in {-1, 0, 1}^2 occurs
    # Interactive use draws from the layer's generator, shifts alike.
    layer = data.digits_augmentation(seed=1)
    for image, shifted in zip(images, layer(images, training=True), strict=True):
        assert _digit_shifts(image, np.asarray(shifted))


# ------------------------------------------------------------- the names


def test_names_list_every_source():
    # Sorted; other tests of the session may have registered more.
    names = data.names()
    assert {"digits", "folder:<path>", "tfds:<name>"} <= set(names)
    assert names == sorted(names)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*tfds:<name>"):
        data.load("mnist")
