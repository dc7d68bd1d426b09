"""A run's inputs (`keras_cskd.data.inputs`) and the named augmentations: one
object per kind of data answers the orchestrator, and the config names the
training view (`data.augmentation`) instead of a boolean."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cskd import config as config_module
from keras_cskd import data as data_module
from keras_cskd import distribute, metrics
from keras_cskd.data import augment, inputs, teacher_cache

ROOT = Path(__file__).resolve().parents[1]


def data_config(**overrides):
    config = config_module.default_config()
    config.data.update(overrides)
    return config.data


def test_digits_inputs_are_arrays_with_the_runs_batches():
    run_inputs = inputs.load_inputs(data_config(batch_size=64), seed=0)
    assert isinstance(run_inputs, inputs.ArrayInputs)
    assert (run_inputs.name, run_inputs.num_classes) == ("digits", 10)
    assert run_inputs.input_shape == (8, 8, 1)
    examples = int(run_inputs.dataset.train.cardinality())
    assert run_inputs.steps_per_epoch == -(-examples // 64)
    images, labels = data_module.to_numpy(run_inputs.dataset.test)
    batches = list(run_inputs.test.as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    np.testing.assert_array_equal(run_inputs.first_test_images(5), images[:5])
    assert run_inputs.validation is not None
    first = next(iter(run_inputs.train_batches(0, 1)))
    assert first[0].shape == (64, 8, 8, 1)
    calibration, (export_images, export_labels) = run_inputs.export_sample()
    np.testing.assert_array_equal(export_images, images)


def test_the_batches_are_the_pipelines_whatever_the_augmentation_name():
    run_inputs = inputs.load_inputs(data_config(augmentation="digits_shift"), seed=3)
    expected = data_module.pipeline(
        run_inputs.dataset.train,
        64,
        training=True,
        seed=3,
        augmentation=augment.digits_augmentation(),
        num_classes=10,
        epochs=2,
        first_epoch=1,
        skip_steps=2,
    )
    got = run_inputs.train_batches(1, 2, skip_steps=2)
    for (x, y), (ex, ey) in zip(got.take(3), expected.take(3), strict=True):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)


def test_evaluate_accuracy_reads_the_uniform_test_form():
    run_inputs = inputs.load_inputs(data_config(), seed=0)
    images, labels = data_module.to_numpy(run_inputs.dataset.test)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(10))
    logits = model.predict(images, batch_size=256, verbose=0)
    expected = float(np.mean(np.argmax(logits, axis=-1) == labels))
    assert metrics.evaluate_accuracy(model, run_inputs.test) == expected


def test_the_streamed_view_is_refused_for_arrays_in_one_line():
    with pytest.raises(ValueError) as error:
        inputs.load_inputs(data_config(augmentation="imagenet_rrc"), seed=0)
    message = str(error.value)
    assert "\n" not in message and "'imagenet_rrc'" in message
    assert "cifar_crop_flip" in message


def test_an_unknown_augmentation_names_the_close_ones():
    with pytest.raises(ValueError, match="Did you mean 'digits_shift'"):
        inputs.load_inputs(data_config(augmentation="digit_shift"), seed=0)


def test_every_named_augmentation_is_registered_and_named_so():
    assert augment.AUGMENTATIONS.names() == [
        "cifar_crop_flip",
        "digits_shift",
        "imagenet_rrc",
        "none",
    ]
    assert augment.STRONG_AUGMENTATIONS.names() == ["cifar_randaugment", "none"]
    digits = data_module.load("digits")
    for name in ("digits_shift", "cifar_crop_flip"):
        assert augment.get_augmentation(name, digits).name == name
    assert augment.get_augmentation("none", digits) is None
    strong = augment.get_strong_augmentation("cifar_randaugment", digits, seed=0)
    assert strong.layers[0].padding == 1  # the digits' 1-pixel shift


@pytest.mark.parametrize(
    "config_file, name",
    [
        ("digits_teacher", "digits_shift"),
        ("digits_cskd", "none"),
        ("digits_kd", "none"),
        ("cifar100_teacher", "cifar_crop_flip"),
        ("cifar100_distill", "cifar_crop_flip"),
        ("imagenet_teacher", "imagenet_rrc"),
        ("imagenet_distill", "imagenet_rrc"),
    ],
)
def test_each_recipe_names_its_augmentation(config_file, name):
    config = config_module.load_config(ROOT / "configs" / f"{config_file}.py")
    assert config.data.augmentation == name


def test_the_old_boolean_is_refused_with_the_names():
    config = config_module.default_config()
    config.data.augment = True
    with pytest.raises(ValueError) as error:
        config_module.validate(config)
    message = str(error.value)
    assert "\n" not in message
    assert "data.augment is now data.augmentation" in message
    assert "'digits_shift'" in message and "set config.data.augmentation" in message


@pytest.mark.parametrize(
    "old, name, augmentation",
    [
        (True, "digits", "digits_shift"),
        (False, "digits", "none"),
        (True, "tfds:cifar100", "cifar_crop_flip"),
        (True, "tfds:imagenet2012", "imagenet_rrc"),
    ],
)
def test_a_saved_config_with_the_old_boolean_is_the_same_config(
    old, name, augmentation
):
    current = config_module.default_config()
    current.data.update(name=name, augmentation=augmentation)
    current = config_module.to_dict(current)
    saved = json.loads(json.dumps(current))
    del saved["data"]["augmentation"]
    saved["data"]["augment"] = old
    assert config_module.changed_keys(saved, current) == {}
    current["data"]["augmentation"] = "none" if old else "cifar_crop_flip"
    assert "data.augmentation" in config_module.changed_keys(saved, current)


def test_the_cache_key_holds_the_augmentation_name(tmp_path):
    digits = data_module.load("digits")
    teacher_file = tmp_path / "teacher.keras"
    teacher_file.write_bytes(b"not a model: only hashed here")
    layer = augment.get_augmentation("digits_shift", digits)
    key = teacher_cache.cache_key(teacher_file, digits, layer)
    assert key["augmentation"] == "digits_shift"
    old = {k: v for k, v in key.items() if k != "augmentation"}
    assert "data.augmentation" in teacher_cache._changes(old, key)


@pytest.mark.large
def test_the_cli_refuses_the_old_boolean_with_the_new_key():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config.data.augment=True"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "pass --config.data.augmentation" in result.stderr.strip().splitlines()[-1]


def test_a_strategy_is_asked_only_by_streamed_inputs():
    run_inputs = inputs.load_inputs(
        data_config(), seed=0, strategy=distribute.get_strategy("none")
    )
    assert isinstance(run_inputs.train_batches(0, 1), tf.data.Dataset)
