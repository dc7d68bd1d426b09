"""Specification of the class-balanced samples that int8 exports calibrate on.

Streamed splits (ImageNet's) are listed class by class, so their first images
are one class's: a folder chooses its sample from its listing, TFDS from a
bounded read that fills a quota per class (`keras_cskd.data.sampling`), and a
run's export records the sample's count per class.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_cskd import data
from keras_cskd.data import sampling, streaming

CLASSES = ("ant", "bee", "cat")
# Unequal classes, as real folders have them: 9, 4 and 1 training images.
TRAIN_SIZES = (9, 4, 1)


def _counts(labels, num_classes=3):
    return np.bincount(np.asarray(labels), minlength=num_classes).tolist()


def _write_image(path, rng, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = rng.integers(20, 48, 2)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)


def _write_folder(root, train_sizes):
    """`train/<class>/` with `train_sizes` images (JPEG and PNG), `val/` 2 each."""
    rng = np.random.default_rng(0)
    for split, sizes in (("train", train_sizes), ("val", (2, 2, 2))):
        for name, size in zip(CLASSES, sizes, strict=True):
            for i in range(size):
                fmt, suffix = ("PNG", "png") if i % 2 else ("JPEG", "JPEG")
                _write_image(root / split / name / f"{i}.{suffix}", rng, fmt)
    return root


@pytest.fixture(scope="module")
def unequal_folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("unequal"), TRAIN_SIZES)


# ------------------------------------------------------------ the choice


def test_balanced_indices_spread_evenly_until_classes_run_out():
    labels = np.repeat([0, 1, 2], TRAIN_SIZES)
    for count, expected in ((3, [1, 1, 1]), (7, [3, 3, 1]), (9, [4, 4, 1])):
        chosen = sampling.balanced_indices(labels, count)
        assert _counts(labels[chosen]) == expected, count
        assert len(set(chosen.tolist())) == count
    assert sorted(sampling.balanced_indices(labels, 100).tolist()) == list(range(14))
    assert sampling.balanced_indices([], 5).tolist() == []


class _Counted:
    """An iterable that counts how many of its items were read."""

    def __init__(self, items):
        self.items, self.read = list(items), 0

    def __iter__(self):
        for item in self.items:
            self.read += 1
            yield item


def test_fill_quotas_stops_as_soon_as_the_shares_are_filled():
    # Class 0 first (as a class-sorted listing), then the others mixed.
    stream = _Counted([0] * 20 + [1, 2, 1, 0, 2, 2, 1, 1])
    kept = sampling.fill_quotas(stream, int, num_classes=3, count=5)
    # Shares of 5 over 3 classes: 1 each, and 2 classes may keep a second.
    assert kept == [0, 0, 1, 2, 1]
    assert stream.read == 23  # up to the second 1, not the whole stream
    chosen = sampling.balanced_indices(kept, 5)
    assert _counts(np.asarray(kept)[chosen]) == [2, 2, 1]


def test_fill_quotas_reads_at_most_the_scan_limit():
    stream = _Counted([0, 1] * 100 + [2])
    kept = sampling.fill_quotas(stream, int, 3, count=6, scan_limit=50)
    assert stream.read == 50  # class 2 is never met within the bound
    assert _counts(kept) == [5, 5, 0]  # the shares, then 6 spares
    assert _counts(np.asarray(kept)[sampling.balanced_indices(kept, 6)]) == [3, 3, 0]


# ---------------------------------------------------------------- folder


def test_a_streamed_folder_samples_its_listing_evenly(unequal_folder):
    train = data.load(f"folder:{unequal_folder}", streaming=True).train
    assert _counts(train.labels) == list(TRAIN_SIZES)
    sample = train.balanced_sample(7)
    assert isinstance(sample, data.FileRecords)
    assert _counts(sample.labels) == [3, 3, 1]
    assert sorted(sample.labels[:3].tolist()) == [0, 1, 2]  # classes interleaved
    assert len(set(sample.paths)) == 7
    for path, label in zip(sample.paths, sample.labels, strict=True):
        assert f"/train/{CLASSES[label]}/" in path
    assert train.balanced_sample(7).paths.tolist() == sample.paths.tolist()
    assert train.balanced_sample(100).num_examples == 14
    images, labels = next(iter(streaming.eval_pipeline(sample, 7, image_size=16)))
    assert images.shape == (7, 16, 16, 3)
    np.testing.assert_array_equal(labels, sample.labels)


# ------------------------------------------------------------------ TFDS


class UnequalJpegsForTests(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """JPEGs of varying size: 20, 8 and 2 training images of 3 classes."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        labels = np.repeat([0, 1, 2], (20, 8, 2))
        for example_id, label in enumerate(labels):
            height, width = rng.integers(20, 40, 2)
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            yield example_id, {"image": image, "label": label}


@pytest.fixture(scope="module")
def unequal_tfds(tmp_path_factory):
    builder = UnequalJpegsForTests(data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare()
    return data.TFDSRecords(builder, "train")


def _stream(records, seed=0):
    """The records in the order a balanced sample reads them."""
    return [
        (record["image"], int(record["label"]))
        for record in records._records(shuffle_seed=seed).as_numpy_iterator()
    ]


def test_tfds_samples_the_first_records_of_each_class(unequal_tfds):
    sample = unequal_tfds.balanced_sample(6)
    assert isinstance(sample, data.EncodedRecords)
    assert _counts(sample.labels) == [2, 2, 2]
    stream = _stream(unequal_tfds)
    firsts = {
        label: [image for image, of in stream if of == label][:2] for label in range(3)
    }
    for image, label in zip(sample.images, sample.labels, strict=True):
        assert image in firsts[label]  # each class's first two, read in order
    assert unequal_tfds.balanced_sample(6).images == sample.images
    images, labels = next(iter(streaming.eval_pipeline(sample, 6, image_size=16)))
    assert images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(labels, sample.labels)


def test_tfds_sample_reads_a_bounded_prefix(unequal_tfds):
    labels = [label for _, label in _stream(unequal_tfds)]
    last_class = max(range(3), key=labels.index)  # the class met last
    bound = labels.index(last_class)  # stop just before its first record
    sample = unequal_tfds.balanced_sample(6, scan_limit=bound)
    counts, seen = _counts(sample.labels), _counts(labels[:bound])
    assert counts[last_class] == 0 and sum(counts) == min(6, bound)
    # The others fill its places, evenly as far as the prefix holds them.
    others = [c for c in range(3) if c != last_class]
    assert all(counts[c] <= seen[c] for c in others)
    low, high = sorted(others, key=counts.__getitem__)
    assert counts[high] - counts[low] <= 1 or counts[low] == seen[low]


def test_tfds_imagenet2012_mock_is_sampled_one_per_class(no_network):
    with tfds.testing.mock_data(num_examples=64):
        imagenet2012 = data.load("tfds:imagenet2012")
        sample = imagenet2012.train.balanced_sample(10)
        batch = next(iter(streaming.eval_pipeline(sample, 10, image_size=16)))
    assert sample.num_examples == 10
    assert len(set(sample.labels.tolist())) == 10  # 1,000 classes: one each
    assert batch[0].shape == (10, 16, 16, 3)
    assert no_network == []


# -------------------------------------------------------------- the run


@pytest.mark.large
def test_a_streamed_runs_int8_export_records_a_balanced_sample(
    unequal_folder, tmp_path, monkeypatch
):
    import keras

    from keras_cskd import config as config_module
    from keras_cskd import training
    from keras_cskd.data import inputs

    monkeypatch.setattr(inputs, "EXPORT_SAMPLE", 7)
    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(3)(pooled)).save(tmp_path / "t.keras")
    config = config_module.default_config()
    config.update_from_flattened_dict(
        {
            "data.name": f"folder:{unequal_folder}",
            "data.streaming": True,
            "data.augmentation": "imagenet_rrc",
            "data.batch_size": 7,
            "data.eval_batch_size": 4,
            "teacher.path": str(tmp_path / "t.keras"),
            "teacher.allow_untrained": True,  # an untrained teacher, on purpose
            "epochs": 1,
            "verbose": "0",
            "export.formats": "tflite_int8",
        }
    )
    training.run(config, tmp_path / "run")
    report = json.loads(
        (tmp_path / "run" / "export" / "export_report.json").read_text()
    )
    # The listing's first 7 would be 7 ants; the sample is 3, 3 and the 1 cat.
    assert report["calibration"] == {
        "examples": 7,
        "examples_per_class": {"0": 3, "1": 3, "2": 1},
    }
    assert report["num_examples"] == 6  # the test split's sample: 2, 2, 2
    assert tf.io.gfile.exists(str(tmp_path / "run" / "export" / "model_int8.tflite"))


@pytest.mark.large
def test_the_export_command_calibrates_a_streamed_folder_evenly(tmp_path):
    import keras
    from test_export import _run_cli

    folder = _write_folder(tmp_path / "folder", (40, 20, 2))
    inputs = keras.Input((224, 224, 3), name="images")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(3)(pooled)).save(tmp_path / "s.keras")
    result = _run_cli(
        f"--model={tmp_path / 's.keras'}",
        f"--dataset=folder:{folder}",
        "--streaming",
        "--formats=tflite_int8",
        "--calibration_batches=1",
        f"--output={tmp_path / 'export'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    # One batch of 32: the listing's first 32 would all be ants.
    assert report["calibration"] == {
        "examples": 32,
        "examples_per_class": {"0": 15, "1": 15, "2": 2},
    }
    assert report["num_examples"] == 6
