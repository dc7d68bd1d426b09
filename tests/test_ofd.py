"""OFD against mdistiller's code (tests/golden/make_ofd.py) and float64 NumPy.

`tests/golden/ofd.npz` holds mdistiller's `forward_train` `loss_kd` (cfg.py's
weight 0.001), its gradient, the margins and the connectors' BatchNorm buffers
after the step, on fixed pre-ReLU features with the connectors' weights ported.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import norm

import keras_cskd
from keras_cskd.losses import OFD
from keras_cskd.losses.ofd import margin, margins_from_batch_norms

GOLDEN = np.load(Path(__file__).parent / "golden" / "ofd.npz")
RTOL = 1e-5
STAGES = (1, 2, 3)  # mdistiller's preact_feats[1:]
CASES = {"k1": 1, "k3": 3}


def _golden(case, key):
    return GOLDEN[f"{case}/{key}"]


def _stages(case, role):
    return [_golden(case, f"{role}_preact{i}") for i in STAGES]


def _ported_loss(case):
    """OFD built for the case's shapes, its margins from the fixed BatchNorm
    weights and its connector kernels the reference's."""
    batch_norms = [
        (_golden(case, f"bn_gamma{i}"), _golden(case, f"bn_beta{i}")) for i in range(3)
    ]
    loss = OFD(margins=margins_from_batch_norms(batch_norms), kernel_size=CASES[case])
    loss.build(
        [t.shape for t in _stages(case, "teacher")],
        [s.shape for s in _stages(case, "student")],
    )
    for i, (conv, _) in enumerate(loss._connectors):
        conv.kernel.assign(_golden(case, f"connector{i}_kernel"))
    return loss


@pytest.mark.parametrize("case", list(CASES))
def test_margins_match_mdistiller(case):
    loss = _ported_loss(case)
    for i in range(3):
        np.testing.assert_allclose(
            loss.margins[i], _golden(case, f"margin{i}"), rtol=1e-6
        )


def test_margin_is_the_normal_tail_mean_in_float64():
    for gamma, beta in ((1.0, 0.0), (-0.7, 1.2), (0.3, -2.0), (0.5, 2.0)):
        scale = abs(gamma)
        tail = norm.cdf(-beta / scale)
        expected = (
            beta - scale * norm.pdf(beta / scale) / tail if tail > 1e-3 else -3 * scale
        )
        assert margin(gamma, beta) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_value_gradient_and_buffers_match_mdistiller(case):
    loss = _ported_loss(case)
    student = [tf.Variable(s) for s in _stages(case, "student")]
    with tf.GradientTape() as tape:
        value = GOLDEN["weight"] * loss.compute_loss(
            _stages(case, "teacher"), student, training=True
        )
    np.testing.assert_allclose(value.numpy(), _golden(case, "loss_kd"), rtol=RTOL)
    gradients = tape.gradient(value, student)
    for gradient, i in zip(gradients, STAGES, strict=True):
        expected = _golden(case, f"grad_preact{i}")
        got = gradient.numpy()
        np.testing.assert_allclose(got, expected, atol=RTOL * np.abs(expected).max())
    for i, (_, batch_norm) in enumerate(loss._connectors):
        for name in ("mean", "var"):
            ours = getattr(
                batch_norm, f"moving_{'variance' if name == 'var' else name}"
            )
            np.testing.assert_allclose(
                ours.numpy(), _golden(case, f"running_{name}{i}"), rtol=1e-5, atol=1e-7
            )


@pytest.mark.parametrize("case", list(CASES))
def test_extra_parameters_are_mdistillers(case):
    assert _ported_loss(case).extra_parameters == _golden(case, "extra_parameters")


def _numpy_partial_l2(student, teacher, margin):
    student, teacher = student.astype(np.float64), teacher.astype(np.float64)
    loss = np.where(
        (student > margin) & (teacher <= margin), (student - margin) ** 2, 0
    )
    loss += np.where(
        (student > teacher) & (teacher > margin) & (teacher <= 0),
        (student - teacher) ** 2,
        0,
    )
    loss += np.where(teacher > 0, (student - teacher) ** 2, 0)
    return loss.mean(axis=0).sum()


def test_compare_is_the_stage_weighted_partial_l2_in_float64():
    rng = np.random.default_rng(0)
    teacher = [rng.normal(size=(3, 4, 4, c)).astype(np.float32) for c in (2, 3)]
    student = [rng.normal(size=(3, 4, 4, c)).astype(np.float32) for c in (2, 3)]
    margins = [list(rng.uniform(-2, -0.1, c)) for c in (2, 3)]
    value = OFD(margins=margins).compare(teacher, student)
    expected = sum(
        _numpy_partial_l2(s, t, np.array(m)) / 2 ** (1 - i)
        for i, (t, s, m) in enumerate(zip(teacher, student, margins, strict=True))
    )
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)


def test_config_round_trips_and_the_registry_names_it():
    loss = OFD(margins=[[-1.0, -2.0]], kernel_size=3, teacher_batch_statistics=False)
    restored = OFD.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    assert not restored.teacher_in_training_mode
    assert isinstance(keras_cskd.losses.get("ofd"), OFD)
    assert OFD().teacher_in_training_mode  # the reference's default


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="odd kernels"):
        OFD(kernel_size=2)
    loss = OFD()
    loss.build([(None, 4, 4, 2)], [(None, 4, 4, 2)])
    with pytest.raises(ValueError, match="bn_before_relu"):
        loss.compute_loss(
            [keras.ops.ones((1, 4, 4, 2))], [keras.ops.ones((1, 4, 4, 2))]
        )
    with pytest.raises(ValueError, match="margin lists"):
        OFD(margins=[[-1.0]] * 2).build([(None, 4, 4, 1)], [(None, 4, 4, 1)])


def test_bn_before_relu_names_the_reference_layers():
    # (resnet8's: the doctest of keras_cskd/models/taps.py)
    wrn = keras_cskd.models.get("wrn_16_1", 10, (32, 32, 3))
    assert [layer.name for layer in keras_cskd.models.bn_before_relu(wrn)] == [
        "stage2_block0_pre_bn",
        "stage3_block0_pre_bn",
        "final_bn",
    ]


@pytest.mark.large
def test_the_distiller_fills_the_margins_and_saves_the_connectors(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    student = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    distiller = keras_cskd.Distiller(teacher, student, OFD())
    expected = margins_from_batch_norms(keras_cskd.models.bn_before_relu(teacher))
    assert distiller.distillation_loss.margins == expected
    assert distiller.distillation_loss.extra_parameters == sum(
        c * c + 2 * c for c in (16, 32, 64)
    )
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.saving.load_model(tmp_path / "distiller.keras")
    assert restored.distillation_loss.margins == expected
    for ours, theirs in zip(distiller.loss_layers, restored.loss_layers, strict=True):
        for a, b in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
