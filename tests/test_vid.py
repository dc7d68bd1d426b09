"""VID against mdistiller's code (tests/golden/make_vid.py -> vid.npz).

The fixture holds mdistiller's `VID.forward_train` value and gradients on
fixed features with its regressors' weights, which the tests port; its
student stages are larger than, as large as and smaller than the teacher's.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd.losses import VID

DISTILL = Path(__file__).resolve().parents[1] / "configs" / "cifar100_distill.py"
GOLDEN = np.load(Path(__file__).parent / "golden" / "vid.npz")
RTOL = 1e-5
STAGES = (1, 2, 3)  # mdistiller's feats[1:]


def _feats(role):
    return [GOLDEN[f"{role}_feats{i}"] for i in STAGES]


def _ported_vid(case, **kwargs):
    """VID built for the fixture's shapes with mdistiller's weights."""
    loss = VID(**kwargs)
    loss.build(*([f.shape for f in _feats(role)] for role in ("teacher", "student")))
    for stage, layer in zip(STAGES, loss.layers, strict=True):
        for j, conv in enumerate(layer.convs):
            conv.kernel.assign(GOLDEN[f"{case}/regressor{stage}/conv{j}"])
        layer.log_scale.assign(GOLDEN[f"{case}/log_scale{stage}"])
    return loss


def _value_and_gradients(loss):
    student = [tf.Variable(f) for f in _feats("student")]
    log_scales = [layer.log_scale for layer in loss.layers]
    with tf.GradientTape() as tape:
        value = loss.compute_loss(_feats("teacher"), student)
    return value.numpy(), tape.gradient(value, student + log_scales)


def _assert_gradient_close(ours, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, atol=RTOL * scale)


@pytest.mark.parametrize("case", ["init", "random_scales"])
def test_value_and_student_gradient_match_mdistiller(case):
    assert VID.REFERENCE_WEIGHT == GOLDEN["weights"][1]  # cfg.py's FEAT_WEIGHT
    value, gradients = _value_and_gradients(_ported_vid(case))
    np.testing.assert_allclose(value, GOLDEN[f"{case}/loss_kd"], rtol=RTOL)
    for stage, gradient in zip(STAGES, gradients[:3], strict=True):
        _assert_gradient_close(gradient.numpy(), GOLDEN[f"{case}/grad_feats{stage}"])
    assert gradients[3:] == [None] * 3  # mdistiller never trains them


def test_trained_variances_get_mdistillers_log_scale_gradient():
    loss = _ported_vid("random_scales", train_variances=True)
    value, gradients = _value_and_gradients(loss)
    np.testing.assert_allclose(value, GOLDEN["random_scales/loss_kd"], rtol=RTOL)
    for stage, gradient in zip(STAGES, gradients[3:], strict=True):
        _assert_gradient_close(
            gradient.numpy(), GOLDEN[f"random_scales/grad_log_scale{stage}"]
        )


def test_variances_start_as_mdistillers_and_are_frozen_by_default():
    loss = VID(init_pred_var=float(GOLDEN["init_pred_var"]), eps=float(GOLDEN["eps"]))
    loss.build(
        [f.shape for f in _feats("teacher")], [f.shape for f in _feats("student")]
    )
    for stage, layer in zip(STAGES, loss.layers, strict=True):
        np.testing.assert_allclose(
            layer.log_scale.numpy(), GOLDEN[f"init/log_scale{stage}"], rtol=1e-6
        )
        assert not layer.log_scale.trainable
        assert len(layer.trainable_weights) == 3  # the three convolutions
    trained = VID(train_variances=True)
    trained.build([(None, 4, 4, 8)], [(None, 4, 4, 3)])
    assert trained.layers[0].log_scale.trainable


def test_extra_parameters_count_the_regressors_as_mdistiller():
    loss = _ported_vid("init")
    expected = sum(
        GOLDEN[f"init/regressor{stage}/conv{j}"].size
        for stage in STAGES
        for j in range(3)
    )
    assert loss.extra_parameters == expected
    assert loss.extra_parameters == sum(
        int(np.prod(w.shape)) for layer in loss.layers for w in layer.trainable_weights
    )


def test_regressors_start_as_pytorch_conv2d():
    loss = VID()
    loss.build([(None, 4, 4, 256)], [(None, 4, 4, 64)])
    first = loss.layers[0].convs[0].kernel.numpy()  # fan_in 64: U(-1/8, 1/8)
    assert np.abs(first).max() <= 1 / 8
    np.testing.assert_allclose(first.std(), 1 / 8 / np.sqrt(3), rtol=0.05)


def test_config_round_trip():
    loss = VID(
        "feats[1:]",
        "feats[1:]",
        init_pred_var=2.0,
        eps=1e-4,
        train_variances=True,
        probe_batch_norm=True,
    )
    restored = keras_cskd.losses.get_class("vid").from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()


def test_refuses_unequal_stage_counts_and_fractional_pooling():
    with pytest.raises(ValueError, match="pairs stages"):
        VID().build([(None, 4, 4, 8)] * 2, [(None, 4, 4, 8)])
    with pytest.raises(ValueError, match="integer factor"):
        VID().build([(None, 6, 6, 8)], [(None, 4, 4, 8)])
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        VID().build([(None, 8)], [(None, 8)])


@pytest.mark.parametrize(
    "train_variances", [False, pytest.param(True, marks=pytest.mark.large)]
)
def test_the_distiller_trains_the_regressors_and_the_variances_only_if_asked(
    train_variances, tmp_path
):
    from distributed_job import feature_student

    teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1), width=8)
    loss = VID("relu0", "features", train_variances=train_variances)
    distiller = keras_cskd.Distiller(teacher, feature_student(), loss)
    distiller.compile(keras.optimizers.SGD(0.1))
    regressor = loss.layers[0]
    watched = (regressor.convs[0].kernel, regressor.log_scale)
    before = [w.numpy() for w in watched]
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    distiller.train_on_batch(images, np.arange(4))
    kernel_moved, log_scale_moved = (
        not np.array_equal(old, new.numpy())
        for old, new in zip(before, watched, strict=True)
    )
    assert kernel_moved and log_scale_moved == train_variances
    if train_variances:  # the trained variances reload with the Distiller
        distiller.save(tmp_path / "distiller.keras")
        loaded = keras.saving.load_model(tmp_path / "distiller.keras")
        for ours, theirs in zip(
            regressor.weights, loaded.distillation_loss.layers[0].weights, strict=True
        ):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


PAIRS = sorted({key.split("/")[1] for key in GOLDEN if key.startswith("extra_")})


README_PAIR = "resnet32x4,resnet8x4"


@pytest.mark.parametrize(
    "pair",
    [
        pair if pair == README_PAIR else pytest.param(pair, marks=pytest.mark.large)
        for pair in PAIRS
    ],
)
def test_extra_parameters_equal_mdistillers_for_every_pair(pair):
    # The shapes of mdistiller's feats[1:]; the zoo's are the same
    # (tests/test_cifar_porting.py compares every tap).
    loss = VID()
    loss.build(
        *(
            [(None, *shape) for shape in GOLDEN[f"shapes/{pair}/{role}"]]
            for role in ("teacher", "student")
        )
    )
    assert loss.extra_parameters == GOLDEN[f"extra_parameters/{pair}"]


def test_the_vid_recipe_holds_mdistillers_values_for_every_pair():
    from keras_cskd import builders
    from keras_cskd import config as config_module

    for pair in PAIRS:
        config = config_module.load_config(f"{DISTILL}:vid,{pair}")
        config_module.validate(config)
        assert (config.ce_weight, config.distillation_loss_weight) == (1.0, 1.0)
        assert (config.epochs, config.data.batch_size) == (240, 64)
        small = pair.split(",")[1] in ("shufflenetv1", "shufflenetv2", "mobilenetv2")
        assert config.optimizer.learning_rate == (0.01 if small else 0.05)
    loss = builders.build_loss(config.loss)
    assert isinstance(loss, VID) and not loss.train_variances
    assert loss.probe_batch_norm  # mdistiller's get_feat_shapes, by the builder
    assert loss.teacher_layer_name == loss.student_layer_name == "feats[1:]"
    assert (loss.init_pred_var, loss.eps) == (5.0, 1e-5)
