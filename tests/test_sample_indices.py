"""`data.sample_indices`: batches that carry each example's index in the
training split, owned by the data layer (CRD's memory bank reads them)."""

import numpy as np
import pytest

from keras_cskd import builders
from keras_cskd import config as config_module
from keras_cskd import data as data_module
from keras_cskd.config import loss_config
from keras_cskd.data import inputs
from keras_cskd.data.decoded import with_sample_indices


def data_config(**overrides):
    config = config_module.default_config()
    config.data.update(sample_indices=True, **overrides)
    return config.data


def test_each_index_follows_its_example_through_shuffles_and_augmentation():
    run_inputs = inputs.load_inputs(data_config(augmentation="digits_shift"), seed=1)
    images, labels = data_module.to_numpy(run_inputs.dataset.train)
    # The same order without the shift.
    plain = data_module.pipeline(
        with_sample_indices(run_inputs.dataset.train), 64, True, 1, epochs=2
    )
    # The last batch of epoch 0 and the first of epoch 1.
    skip = run_inputs.steps_per_epoch - 1
    for (x, y), (plain_x, _) in zip(
        run_inputs.train_batches(0, 2, skip).take(2),
        plain.skip(skip).take(2),
        strict=True,
    ):
        indices = x["sample_indices"].numpy()
        assert x["sample_indices"].dtype == "int32"
        np.testing.assert_array_equal(labels[indices], y)
        np.testing.assert_array_equal(plain_x["images"], images[indices])
        assert not np.array_equal(x["images"], images[indices])  # shifted
    first_epoch = np.concatenate([x["sample_indices"] for x, _ in plain.take(skip + 1)])
    np.testing.assert_array_equal(np.sort(first_epoch), np.arange(len(labels)))
    np.testing.assert_array_equal(run_inputs.train_labels(), labels)


def test_both_views_carry_the_indices():
    examples = data_module.load("digits").train.take(8)
    shift = data_module.digits_augmentation
    batches = data_module.pipeline(
        with_sample_indices(examples),
        4,
        training=True,
        augmentation=shift(),
        strong_augmentation=shift(),
        epochs=1,
    )
    (weak, strong), _ = next(iter(batches))
    np.testing.assert_array_equal(weak["sample_indices"], strong["sample_indices"])
    assert not np.array_equal(weak["images"], strong["images"])


def test_a_crd_run_needs_indexed_batches_and_no_mixup():
    config = config_module.default_config()
    config.loss = loss_config("crd")
    with pytest.raises(ValueError, match="set data.sample_indices=True"):
        config_module.validate(config)
    config.data.sample_indices, config.data.mixup_alpha = True, 0.2
    with pytest.raises(ValueError, match="sample_indices cannot be combined"):
        config_module.validate(config)
    config.data.mixup_alpha, config.data.validation_fraction = 0.0, 0.1
    with pytest.raises(ValueError, match="validation_fraction"):
        config_module.validate(config)


def test_build_loss_adapts_crd_to_the_training_labels():
    loss = builders.build_loss(loss_config("crd"), lambda: np.arange(12) % 3)
    assert loss.num_examples == 12
    assert builders.build_loss(loss_config("crd")).num_examples is None
