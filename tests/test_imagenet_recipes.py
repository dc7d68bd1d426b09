"""The ImageNet recipes (`configs/imagenet_distill.py`): their values, and a
few steps of each end to end on TFDS mock data, on one device and under
MirroredStrategy."""

import keras
import pytest
import tensorflow_datasets as tfds

from keras_cskd import config as config_module
from keras_cskd import training

DISTILL = "configs/imagenet_distill.py"
TEACHER = "configs/imagenet_teacher.py"
RECIPES = [
    f"{method},{pair}"
    for method in ("kd", "dkd", "cskd")
    for pair in (
        "resnet34_imagenet,resnet18_imagenet",
        "resnet50_imagenet,mobilenetv1_imagenet",
    )
]


def test_the_recipes_hold_mdistillers_imagenet_values():
    kd = config_module.load_config(f"{DISTILL}:kd,resnet34_imagenet,resnet18_imagenet")
    assert (kd.data.batch_size, kd.epochs) == (512, 100)
    assert (kd.ce_weight, kd.distillation_loss_weight) == (0.5, 0.5)
    assert kd.loss.temperature == 1.0
    solver = kd.optimizer
    assert (solver.name, solver.learning_rate, solver.weight_decay) == (
        "torch_sgd",
        0.2,
        1e-4,
    )
    assert (tuple(solver.milestones), solver.decay_rate) == ((30, 60, 90), 0.1)
    betas = [
        config_module.load_config(f"{DISTILL}:dkd,{pair}").loss.beta
        for pair in (
            "resnet34_imagenet,resnet18_imagenet",
            "resnet50_imagenet,mobilenetv1_imagenet",
        )
    ]
    assert betas == [0.5, 2.0]
    teacher = config_module.load_config(f"{TEACHER}:resnet50_imagenet")
    assert (teacher.data.batch_size, teacher.epochs) == (256, 90)
    assert teacher.optimizer.learning_rate == 0.1


def small_run(recipe, tmp_path, strategy="none", formats=""):
    """The recipe with a tiny teacher (a linear model of the pooled image),
    2 images a step and one epoch of two steps."""
    config = config_module.load_config(f"{DISTILL}:{recipe}")
    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(1000)(pooled)).save(tmp_path / "t.keras")
    config.teacher.path = str(tmp_path / "t.keras")
    config.teacher.allow_untrained = True  # an untrained teacher, on mock data
    config.update_from_flattened_dict(
        {
            "epochs": 1,
            "data.batch_size": 2,
            "data.eval_batch_size": 2,
            "strategy": strategy,
            "verbose": "0",
            "export.formats": formats,
        }
    )
    with tfds.testing.mock_data(num_examples=4):
        return training.run(config, tmp_path / "run")


# Each method and each pair once, each run proving as much as it can: kd on the
# ResNets on one device, cskd on the ResNets under MirroredStrategy (a batch-wise
# loss on two replicas) and dkd on ResNet50 -> MobileNetV1 with the streamed
# export. A run is ~50 s on 2 cores (tracing two ImageNet models at 224x224).
END_TO_END = [
    ("kd,resnet34_imagenet,resnet18_imagenet", "none", 1),
    ("cskd,resnet34_imagenet,resnet18_imagenet", "mirrored", 2),
]


@pytest.mark.large
@pytest.mark.parametrize("recipe, strategy, replicas", END_TO_END)
def test_each_recipe_runs_a_few_steps_end_to_end(recipe, strategy, replicas, tmp_path):
    summary = small_run(recipe, tmp_path, strategy)
    assert summary["last_epoch"] == 1 and summary["replicas"] == replicas
    assert (tmp_path / "run" / "student.keras").exists()


@pytest.mark.large
def test_a_streamed_run_exports_measured_on_a_sample(tmp_path):
    recipe = "dkd,resnet50_imagenet,mobilenetv1_imagenet"
    summary = small_run(recipe, tmp_path, formats="tflite,tflite_int8")
    assert summary["last_epoch"] == 1 and summary["replicas"] == 1
    assert (tmp_path / "run" / "student.keras").exists()
    assert summary["exports"]["tflite"]["agreement"] >= 0.99
    assert "tflite_int8" in summary["exports"]
