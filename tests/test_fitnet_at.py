"""FitNet and AT against mdistiller's code (tests/golden/make_fitnet_at.py).

`tests/golden/fitnet_at.npz` holds mdistiller's `forward_train` values and
gradients on fixed features, with its `ConvReg`'s weights (ported here), and
three SGD steps of its resnet8 student.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cskd.losses import AttentionTransfer, FitNet
from keras_cskd.losses.fitnet import regressor_convolution

GOLDEN = np.load(Path(__file__).parent / "golden" / "fitnet_at.npz")
RTOL = 1e-5
FITNET_CASES = ("stride2", "transposed", "same", "kernel")


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


def _keras_kernel(torch_weight):
    """OIHW (conv) or IOHW (transposed conv) -> Keras's HW-in-out / HW-out-in:
    the same axis order in both cases."""
    return np.transpose(torch_weight, (2, 3, 1, 0))


def port_conv_reg(regressor, parameters):
    """Assigns mdistiller `ConvReg` parameters {torch name: array} to ours."""
    regressor.conv.kernel.assign(_keras_kernel(parameters["conv.weight"]))
    regressor.conv.bias.assign(parameters["conv.bias"])
    regressor.bn.gamma.assign(parameters["bn.weight"])
    regressor.bn.beta.assign(parameters["bn.bias"])
    for ours, theirs in (("moving_mean", "bn.running_mean"), ("moving_variance", "bn.running_var")):
        if theirs in parameters:
            getattr(regressor.bn, ours).assign(parameters[theirs])


def _fitnet_case(case):
    prefix = f"fitnet/{case}/"
    fixture = {k[len(prefix) :]: GOLDEN[k] for k in GOLDEN if k.startswith(prefix)}
    teacher, student = fixture["teacher"], fixture["student"]
    loss = FitNet("t", "s")
    loss.build(teacher.shape, student.shape)
    port_conv_reg(loss.layers[0], fixture)
    return loss, fixture


@pytest.mark.parametrize("case", FITNET_CASES)
def test_fitnet_value_gradients_and_statistics_match_mdistiller(case):
    loss, fixture = _fitnet_case(case)
    regressor = loss.layers[0]
    student = tf.Variable(fixture["student"])
    with tf.GradientTape() as tape:
        value = loss.compute_loss(fixture["teacher"], student, training=True)
    variables = [student, regressor.conv.kernel, regressor.bn.gamma]
    variables += [regressor.bn.beta, regressor.conv.bias]
    *gradients, bias_gradient = tape.gradient(value, variables)
    weight = FitNet.REFERENCE_WEIGHT
    assert weight == fixture["weight"]  # cfg.py's FITNET.LOSS.FEAT_WEIGHT
    np.testing.assert_allclose(weight * float(value), fixture["loss_kd"], rtol=RTOL)
    expected = [
        fixture["grad_student"],
        _keras_kernel(fixture["grad/conv.weight"]),
        fixture["grad/bn.weight"],
        fixture["grad/bn.bias"],
    ]
    for ours, theirs in zip(gradients, expected, strict=True):
        assert _relative_error(weight * ours.numpy(), theirs) < RTOL
    # A bias before a training BatchNorm has a zero gradient: rounding in both.
    scale = np.abs(fixture["grad/bn.bias"]).max()
    assert np.abs(weight * bias_gradient.numpy()).max() < RTOL * scale
    assert np.abs(fixture["grad/conv.bias"]).max() < RTOL * scale
    # PyTorch's BatchNorm2d update: momentum 0.1, unbiased running variance.
    np.testing.assert_allclose(regressor.bn.moving_mean, fixture["running_mean"], rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(regressor.bn.moving_variance, fixture["running_var"], rtol=RTOL)
    assert loss.extra_parameters == fixture["extra_parameters"]


def test_fitnet_regressor_shapes_follow_conv_reg():
    assert regressor_convolution((2, 16, 16, 8), (2, 8, 8, 4)) == ("conv", (3, 3), 2)
    assert regressor_convolution((2, 8, 8, 8), (2, 16, 16, 4)) == ("transposed", (4, 4), 2)
    assert regressor_convolution((2, 6, 5, 8), (2, 4, 4, 4)) == ("conv", (3, 2), 1)
    with pytest.raises(ValueError, match="ConvReg"):
        regressor_convolution((2, 3, 3, 8), (2, 4, 4, 4))


def test_fitnet_refuses_lists_and_unbuilt_use():
    teacher, student = np.ones((2, 4, 4, 8), "float32"), np.ones((2, 4, 4, 4), "float32")
    with pytest.raises(ValueError, match="not built"):
        FitNet().compute_loss(teacher, student)
    with pytest.raises(ValueError, match="one hint layer"):
        FitNet().build([(2, 4, 4, 8)] * 2, [(2, 4, 4, 4)] * 2)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        FitNet().build((2, 8), (2, 4))


def test_fitnet_config_round_trips():
    loss = FitNet("feats[2]", "feats[1]", use_relu=False, probe_batch_norm=True)
    assert FitNet.from_config(loss.get_config()).get_config() == loss.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert restored.get_config() == loss.get_config()


def _feats(role, student_stage1=None):
    feats = [GOLDEN[f"{role}_feats{i}"] for i in (1, 2, 3)]
    if student_stage1 is not None:
        feats[0] = student_stage1
    return feats


@pytest.mark.parametrize("case", ["at", "at_pooled"])
def test_at_sums_the_stages_like_mdistiller(case):
    large = GOLDEN["student_large_feats1"] if case == "at_pooled" else None
    student = [tf.Variable(f) for f in _feats("student", large)]
    loss = AttentionTransfer("feats[1:]", "feats[1:]", p=2)
    with tf.GradientTape() as tape:
        value = loss.compute_loss(_feats("teacher"), student)
    weight = AttentionTransfer.REFERENCE_WEIGHT
    assert weight == GOLDEN[f"{case}/weight"]  # cfg.py's AT.LOSS.FEAT_WEIGHT
    np.testing.assert_allclose(weight * float(value), GOLDEN[f"{case}/loss_kd"], rtol=RTOL)
    for i, gradient in zip((1, 2, 3), tape.gradient(value, student), strict=True):
        expected = GOLDEN[f"{case}/grad_feats{i}"]
        assert _relative_error(weight * gradient.numpy(), expected) < RTOL


def test_at_list_equals_the_sum_of_one_pair_losses():
    teacher, student = _feats("teacher"), _feats("student")
    pairs = sum(
        float(AttentionTransfer("t", "s").compute_loss(t, s))
        for t, s in zip(teacher, student, strict=True)
    )
    whole = AttentionTransfer(["t1", "t2", "t3"], ["s1", "s2", "s3"])
    np.testing.assert_allclose(float(whole.compute_loss(teacher, student)), pairs, rtol=1e-6)
    whole.build([t.shape for t in teacher], [s.shape for s in student])
    with pytest.raises(ValueError, match="pairwise"):
        whole.build([t.shape for t in teacher], [s.shape for s in student[:2]])
