"""The `fitnet` and `at` recipes of configs/cifar100_distill.py: their values
(mdistiller's cfg.py and yaml); tests/test_feature_recipes.py runs them."""

from recipe_run import DISTILL

from keras_cskd import builders
from keras_cskd import config as config_module
from keras_cskd.losses import AttentionTransfer, FitNet


def _recipe(method):
    return config_module.load_config(f"{DISTILL}:{method},resnet32x4,resnet8x4")


def test_fitnet_recipe_is_mdistillers():
    config = _recipe("fitnet")
    loss = builders.build_loss(config.loss)
    assert isinstance(loss, FitNet)
    assert (loss.teacher_layer_name, loss.student_layer_name) == (
        "feats[2]",
        "feats[2]",
    )
    assert loss.probe_batch_norm  # the reference's surprise, by default
    assert (config.ce_weight, config.distillation_loss_weight) == (1.0, 100.0)
    assert (config.optimizer.learning_rate, config.data.batch_size) == (0.05, 64)
    assert (config.epochs, tuple(config.optimizer.milestones)) == (240, (150, 180, 210))


def test_at_recipe_is_mdistillers():
    config = _recipe("at")
    loss = builders.build_loss(config.loss)
    assert isinstance(loss, AttentionTransfer)
    assert (loss.teacher_layer_name, loss.student_layer_name, loss.p) == (
        "feats[1:]",
        "feats[1:]",
        2.0,
    )
    assert (config.ce_weight, config.distillation_loss_weight) == (1.0, 1000.0)
    assert config.optimizer.weight_decay == 5e-4
