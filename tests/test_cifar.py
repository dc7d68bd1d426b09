"""The CIFAR-100 recipes: every config parses and builds; one runs end to end
on TFDS mock data (no download)."""

import functools
from pathlib import Path

import keras
import pytest
import tensorflow_datasets as tfds

import keras_cskd
from keras_cskd import config as config_module
from keras_cskd import data, training

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "configs" / "cifar100_distill.py"


def distill_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cifar100_distill", DISTILL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPECS = [
    f"{method},{teacher},{student}"
    for method in ("kd", "cskd", "dkd")
    for teacher, student in distill_module().PAIRS
]


@functools.cache
def built(name):
    return keras_cskd.models.get(name, 100, (32, 32, 3))


@pytest.mark.parametrize("spec", SPECS)
def test_every_distillation_recipe_parses_validates_and_builds(spec):
    config = config_module.load_config(f"{DISTILL}:{spec}")
    config_module.validate(config)
    method, teacher, student = spec.split(",")
    assert (config.loss.method, config.model) == (method, student)
    assert config.teacher.config.endswith(f"cifar100_teacher.py:{teacher}")
    assert config.optimizer.milestones == (150, 180, 210) and config.epochs == 240
    teacher_config = config_module.load_config(ROOT / config.teacher.config)
    config_module.validate(teacher_config)
    assert teacher_config.save_model_to == config.teacher.path
    for name in (teacher, student):
        assert built(name).output_shape == (None, 100)


def test_unknown_pair_is_refused():
    with pytest.raises(ValueError, match="Unknown pair"):
        config_module.load_config(f"{DISTILL}:kd,resnet20,resnet56")


def test_the_cifar_pipeline_runs_on_mock_data():
    with tfds.testing.mock_data(num_examples=16):
        cifar = data.load("tfds:cifar100")
        train = data.pipeline(
            cifar.train, 8, training=True, augmentation=data.cifar_augmentation()
        )
        images, labels = next(iter(train))
    assert images.shape == (8, 32, 32, 3) and labels.shape == (8,)
    assert cifar.num_classes == 100


def test_a_cifar_recipe_runs_a_few_steps_end_to_end(tmp_path):
    config = config_module.load_config(f"{DISTILL}:cskd,resnet32x4,resnet8x4")
    config.model = "resnet8"  # the smallest student keeps this test quick
    teacher = keras_cskd.models.get("resnet8", 100, (32, 32, 3))
    teacher.save(tmp_path / "teacher.keras")
    config.teacher.path = str(tmp_path / "teacher.keras")
    config.epochs = 1
    config.data.batch_size = 8
    config.verbose = "0"
    config.export.formats = "tflite"
    with tfds.testing.mock_data(num_examples=16):
        summary = training.run(config, tmp_path / "run")
    assert summary["last_epoch"] == 1 and summary["replicas"] == 1
    assert summary["exports"]["tflite"]["agreement"] >= 0.99
    keras.saving.load_model(tmp_path / "run" / "student.keras")
