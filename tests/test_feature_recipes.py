"""The feature methods' CIFAR-100 recipes: mdistiller's values, and a run.

Every feature method (`FEATURE_RECIPES`) runs `configs/cifar100_distill.py:
<method>,resnet32x4,resnet8x4` on mock CIFAR data with small zoo models
(tests/recipe_run.py): one run straight through, one killed after a checkpoint
and resumed, bitwise the same; and its Distiller builds on every pair of its
recipe. RECIPE_VALUES holds mdistiller's (a08d46f) values for the recipes of
NST, PKT, KDSVD, RKD and SP (the other methods' are in their own tests): cfg.py's
weights and options and the forward_train's taps (docs/reproducing.md).
"""

import functools
import importlib.util

import numpy as np
import pytest
from recipe_run import DISTILL, assert_resumes_bitwise

import keras_cskd
from keras_cskd import builders, losses
from keras_cskd.config import load_config, validate

# method: (class, taps, CE weight, feature weight, options)
RECIPE_VALUES = {
    "nst": (losses.NST, "feats[1:]", 1.0, 50.0, {}),
    "pkt": (losses.PKT, "pooled_feat", 1.0, 30000.0, {"epsilon": 1e-7}),
    "kdsvd": (losses.KDSVD, "feats[1:]", 1.0, 1.0, {"k": 1, "signs": "library"}),
    "rkd": (
        losses.RKD,
        "pooled_feat",
        1.0,
        1.0,
        {"distance_weight": 25.0, "angle_weight": 50.0, "epsilon": 1e-12},
    ),
    "sp": (losses.SP, "feats[-1]", 1.0, 3000.0, {}),
}


@pytest.mark.parametrize("method", list(RECIPE_VALUES))
def test_recipe_holds_mdistillers_values_for_every_pair(method):
    loss_class, taps, ce_weight, feature_weight, options = RECIPE_VALUES[method]
    for teacher, student in _distill_module().PAIRS:
        config = load_config(f"{DISTILL}:{method},{teacher},{student}")
        validate(config)
        loss = builders.build_loss(config.loss)
        assert type(loss) is loss_class
        assert (loss.teacher_layer_name, loss.student_layer_name) == (taps, taps)
        assert {key: getattr(loss, key) for key in options} == options
        assert (config.ce_weight, config.distillation_loss_weight) == (
            ce_weight,
            feature_weight,
        )
        assert (config.epochs, config.data.batch_size) == (240, 64)
        small = student in ("shufflenetv1", "shufflenetv2", "mobilenetv2")
        assert config.optimizer.learning_rate == (0.01 if small else 0.05)
        assert tuple(config.optimizer.milestones) == (150, 180, 210)
        assert config.optimizer.weight_decay == 5e-4
        assert config.data.cache_teacher_logits is False


@functools.cache
def _distill_module():
    spec = importlib.util.spec_from_file_location("_cifar100_distill", DISTILL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


METHODS = _distill_module().FEATURE_METHODS


@pytest.mark.large  # end to end
@pytest.mark.parametrize("method", METHODS)
def test_recipe_runs_and_resumes_bitwise(method, tmp_path, monkeypatch):
    summary = assert_resumes_bitwise(method, tmp_path, monkeypatch)
    assert summary["last_epoch"] == 1


@functools.cache
def _zoo_model(name):
    return keras_cskd.models.get(name, 100, (32, 32, 3))


@pytest.mark.large  # builds every zoo model of the table
@pytest.mark.parametrize("method", METHODS)
def test_recipe_builds_its_distiller_on_every_pair(method):
    """The method's modules fit every pair's taps (shapes, channels, stage
    counts): the recipe's loss and Distiller build on the real models."""
    labels = np.arange(200) % 100  # for CRD's class tables
    for teacher, student in _distill_module().pairs(method):
        config = load_config(f"{DISTILL}:{method},{teacher},{student}")
        loss = builders.build_loss(config.loss, train_labels=lambda: labels)
        keras_cskd.Distiller(_zoo_model(teacher), _zoo_model(student), loss)
