"""NST, PKT, RKD, SP and KDSVD against mdistiller's code and float64 NumPy.

`tests/golden/feature_losses.npz` holds mdistiller's `forward_train` values
(`loss_kd`, with cfg.py's feature weights) and gradients on fixed features
(tests/golden/make_feature_losses.py); the NumPy references below are written
from the papers and mdistiller's code, on float64 copies of the inputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_backends import skip_unless_installed

import keras_cskd
from keras_cskd.losses import KDSVD, NST, PKT, RKD, SP
from keras_cskd.losses import kdsvd as kdsvd_module

GOLDEN = np.load(Path(__file__).parent / "golden" / "feature_losses.npz")
RTOL = 1e-5
STAGES = (1, 2, 3)  # mdistiller's feats[1:]


def _golden(role, key):
    return GOLDEN[f"{role}_{key}"]


def _feats(role):
    return [_golden(role, f"feats{i}") for i in STAGES]


def _pair(key):
    return lambda: (_golden("teacher", key), _golden("student", key))


# Each method: the loss, teacher and student inputs, and the gradient keys.
GOLDEN_CASES = {
    "nst": (NST, lambda: (_feats("teacher"), _feats("student")), STAGES),
    "pkt": (PKT, _pair("pooled"), None),
    "rkd": (RKD, _pair("pooled"), None),
    "sp": (SP, _pair("feats3"), (3,)),
    "kdsvd": (KDSVD, lambda: (_feats("teacher"), _feats("student")), STAGES),
}


def _value_and_gradient(loss, teacher, student):
    student = tf.nest.map_structure(tf.Variable, student)
    with tf.GradientTape() as tape:
        value = loss.compute_loss(teacher, student)
    return value.numpy(), tape.gradient(value, student)


@pytest.mark.parametrize("method", list(GOLDEN_CASES))
def test_value_and_gradient_match_mdistiller(method):
    loss_class, inputs, stages = GOLDEN_CASES[method]
    weight = GOLDEN[f"{method}/weight"]
    assert loss_class.REFERENCE_WEIGHT == weight  # cfg.py's FEAT_WEIGHT
    value, gradient = _value_and_gradient(loss_class(), *inputs())
    np.testing.assert_allclose(
        weight * value, GOLDEN[f"{method}/loss_kd"].reshape(()), rtol=RTOL
    )
    keys = ["grad_pooled"] if stages is None else [f"grad_feats{i}" for i in stages]
    gradients = gradient if isinstance(gradient, list) else [gradient]
    for key, ours in zip(keys, gradients, strict=True):
        expected = GOLDEN[f"{method}/{key}"]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(weight * ours.numpy(), expected, atol=RTOL * scale)


def test_nst_pools_the_larger_map_like_mdistiller():
    student = _feats("student")
    student[0] = GOLDEN["student_pooled_feats1"]  # 16x16 against the teacher's 8x8
    value = NST().compute_loss(_feats("teacher"), student)
    expected = GOLDEN["nst_pooled/loss_kd"] / NST.REFERENCE_WEIGHT
    np.testing.assert_allclose(value, expected, rtol=RTOL)


def test_kdsvd_canonical_signs_match_mdistiller_with_canonical_svd():
    value = KDSVD(signs="canonical").compute_loss(_feats("teacher"), _feats("student"))
    expected = GOLDEN["kdsvd_canonical/loss_kd"]
    np.testing.assert_allclose(value, expected, rtol=RTOL)


def test_sp_reference_value_has_shape_one_and_ours_is_its_scalar():
    assert tuple(GOLDEN["sp/shape"]) == (1,)
    value = SP().compute_loss(*_pair("feats3")())
    assert value.shape == ()


# ----------------------------------------------------------------------------
# KDSVD's singular-vector signs
# ----------------------------------------------------------------------------


def _flipping_svd(monkeypatch, flip_call):
    """Makes `keras.ops.svd`, as KDSVD calls it, flip every singular vector's
    sign on the calls `flip_call(index)` selects (teacher calls are even)."""
    svd, calls = kdsvd_module.ops.svd, []

    def flipped(x, **kwargs):
        u, s, vh = svd(x, **kwargs)
        calls.append(None)
        return (-u, s, -vh) if flip_call(len(calls) - 1) else (u, s, vh)

    monkeypatch.setattr(kdsvd_module.ops, "svd", flipped)


def _kdsvd(signs="library"):
    return float(KDSVD(signs=signs).compute_loss(_feats("teacher"), _feats("student")))


def test_kdsvd_student_sign_flips_do_not_change_the_loss(monkeypatch):
    expected = _kdsvd()
    _flipping_svd(monkeypatch, lambda call: call % 2 == 1)
    np.testing.assert_allclose(_kdsvd(), expected, rtol=1e-6)


def test_kdsvd_teacher_sign_flip_changes_library_loss_not_canonical(monkeypatch):
    library, canonical = _kdsvd(), _kdsvd("canonical")
    _flipping_svd(monkeypatch, lambda call: call == 2)  # stage 2's teacher
    assert abs(_kdsvd() - library) > 1e-3 * library
    np.testing.assert_allclose(_kdsvd("canonical"), canonical, rtol=1e-6)


def test_kdsvd_needs_two_stages():
    with pytest.raises(ValueError, match="consecutive stages"):
        KDSVD().compute_loss(_golden("teacher", "feats1"), _golden("student", "feats1"))


# ----------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------


def _rows(x):
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


def _unit(x, axis):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def ref_sp(teacher, student):
    def gram(f):
        return _unit(_rows(f) @ _rows(f).T, axis=1)

    return np.sum((gram(teacher) - gram(student)) ** 2) / len(student) ** 2


def ref_pkt(teacher, student, eps=1e-7):
    def probabilities(f):
        f = _rows(f)
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        s = (f @ f.T + 1) / 2
        return s / s.sum(1, keepdims=True)

    t, s = probabilities(teacher), probabilities(student)
    return np.mean(t * np.log((t + eps) / (s + eps)))


def ref_rkd(teacher, student, distance_weight=25.0, angle_weight=50.0):
    def distances(f):
        d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 1e-12))
        np.fill_diagonal(d, 0)
        return d / d[d > 0].mean()

    def angles(f):
        e = _unit(f[None] - f[:, None], axis=2)
        return np.einsum("ijd,ikd->ijk", e, e).ravel()

    def smooth_l1(x, y):
        a = np.abs(x - y)
        return np.mean(np.where(a < 1, 0.5 * a**2, a - 0.5))

    t, s = _rows(teacher), _rows(student)
    return distance_weight * smooth_l1(distances(s), distances(t)) + (
        angle_weight * smooth_l1(angles(s), angles(t))
    )


def ref_nst(teacher, student):
    def maps(f):  # same spatial size here
        f = np.asarray(f, np.float64)
        return _unit(f.reshape(len(f), -1, f.shape[-1]).transpose(0, 2, 1), axis=2)

    def kernel(a, b):
        return np.mean(np.einsum("nip,njp->nij", a, b) ** 2)

    t, s = maps(teacher), maps(student)
    return kernel(t, t) + kernel(s, s) - 2 * kernel(s, t)


def _random(shape, seed, relu=False):
    x = np.random.default_rng(seed).normal(size=shape)
    return (np.maximum(x, 0) if relu else x).astype(np.float32)


NUMPY_CASES = {
    "sp": (SP(), ref_sp, (5, 3, 3, 6), (5, 3, 3, 2)),
    "pkt": (PKT(), ref_pkt, (6, 10), (6, 4)),
    "rkd": (RKD(), ref_rkd, (6, 10), (6, 4)),
    "rkd_squared": (RKD(squared=True, angle_weight=0.0), None, (6, 10), (6, 4)),
    "nst": (NST(), ref_nst, (3, 4, 4, 6), (3, 4, 4, 2)),
}


@pytest.mark.parametrize("case", [c for c in NUMPY_CASES if NUMPY_CASES[c][1]])
def test_matches_float64_reference(case):
    loss, reference, teacher_shape, student_shape = NUMPY_CASES[case]
    teacher, student = _random(teacher_shape, 0), _random(student_shape, 1)
    np.testing.assert_allclose(
        loss.compute_loss(teacher, student), reference(teacher, student), rtol=RTOL
    )


def test_pkt_of_post_relu_features_is_a_small_float32_difference():
    # All similarities of positive rows are close: float32 leaves ~1e-3 (torch too).
    teacher, student = _random((4, 32), 0, relu=True), _random((4, 16), 1, relu=True)
    value = PKT().compute_loss(teacher, student)
    np.testing.assert_allclose(value, ref_pkt(teacher, student), rtol=3e-3)


# ----------------------------------------------------------------------------
# Edge cases: a batch of one and constant features
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [PKT(), SP()], ids=["pkt", "sp"])
def test_batch_of_one_gives_zero(loss):
    teacher, student = _random((1, 2, 2, 6), 0), _random((1, 2, 2, 3), 1)
    value, gradient = _value_and_gradient(loss, teacher, student)
    assert value == pytest.approx(0.0, abs=1e-7)
    assert np.all(np.isfinite(gradient.numpy()))


def test_rkd_of_a_batch_of_one_is_nan_like_mdistiller():
    # No positive distance to normalise by: mdistiller's mean of an empty tensor.
    assert np.isnan(RKD().compute_loss(_random((1, 8), 0), _random((1, 4), 1)))


def test_rkd_of_equal_rows_is_finite_like_mdistiller():
    # Equal rows are sqrt(epsilon) apart (the clamp), so all distances become 1.
    teacher = np.ones((3, 8), np.float32)
    assert np.isfinite(RKD().compute_loss(teacher, _random((3, 4), 1)))


def test_constant_and_zero_features_give_finite_values():
    zeros, ones = np.zeros((3, 4, 4, 2), np.float32), np.ones((3, 4, 4, 5), np.float32)
    for loss in (NST(), SP(), PKT()):
        for teacher, student in ((ones, zeros), (zeros, ones)):
            assert np.isfinite(loss.compute_loss(teacher, student))
    assert np.isfinite(KDSVD().compute_loss([ones, ones], [zeros, ones]))


# ----------------------------------------------------------------------------
# Registry, configs and the Distiller
# ----------------------------------------------------------------------------

CLASSES = {"nst": NST, "pkt": PKT, "rkd": RKD, "sp": SP, "kdsvd": KDSVD}
CONFIGS = {
    "nst": NST("t", "s"),
    "pkt": PKT("t", "s", epsilon=1e-6),
    "rkd": RKD("t", "s", distance_weight=1.0, angle_weight=2.0, squared=True),
    "sp": SP("t", "s"),
    "kdsvd": KDSVD("t", "s", k=2, signs="canonical"),
}


@pytest.mark.parametrize("name", list(CLASSES))
def test_registered_under_its_name(name):
    assert name in keras_cskd.losses.names()
    assert keras_cskd.losses.get_class(name) is CLASSES[name]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trip(name):
    loss = CONFIGS[name]
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="signs"):
        KDSVD(signs="positive")
    with pytest.raises(ValueError, match="rank 4"):
        NST().compute_loss(np.ones((2, 3), "float32"), np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="integer factor"):
        NST().compute_loss(
            np.ones((2, 4, 4, 3), "float32"), np.ones((2, 6, 6, 2), "float32")
        )
    with pytest.raises(ValueError, match="pairwise"):
        NST().compute_loss([np.ones((2, 2, 2, 1), "float32")] * 2, [])


def test_distiller_fits_with_rkd_on_named_pooled_layers():
    def model(filters, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="pooled")(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    teacher, student = model(6, 0), model(3, 1)
    loss = RKD(teacher_layer_name="pooled", student_layer_name="pooled")
    distiller = keras_cskd.Distiller(teacher, student, loss)
    distiller.compile(optimizer="sgd")
    x, y = _random((8, 8, 8, 1), 2), np.arange(8) % 3
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["distillation_loss"][-1])


@pytest.mark.parametrize("method", list(GOLDEN_CASES))
def test_traces_with_an_unknown_batch_size(method):
    loss_class, inputs, _ = GOLDEN_CASES[method]
    teacher, student = inputs()
    spec = tf.nest.map_structure(
        lambda x: tf.TensorSpec((None,) + x.shape[1:]), (teacher, student)
    )
    traced = tf.function(loss_class().compute_loss, input_signature=spec)
    np.testing.assert_allclose(
        traced(teacher, student), loss_class().compute_loss(teacher, student), rtol=RTOL
    )


_BACKEND_SCRIPT = """
import json, numpy as np
from keras_cskd.losses import KDSVD, NST, PKT, RKD, SP
golden = np.load("tests/golden/feature_losses.npz")
def pair(key):
    return golden["teacher_" + key], golden["student_" + key]
roles = ("teacher", "student")
stages = [[golden[role + f"_feats{i}"] for i in (1, 2, 3)] for role in roles]
pooled = pair("pooled")
cases = {"nst": (NST, stages), "pkt": (PKT, pooled), "rkd": (RKD, pooled),
         "sp": (SP, pair("feats3")), "kdsvd": (KDSVD, stages)}
print(json.dumps({m: float(c().compute_loss(*x)) for m, (c, x) in cases.items()}))
"""


@pytest.mark.large
@pytest.mark.parametrize("backend", ["jax"])  # torch: same, checked by hand (~10 s)
def test_golden_values_on_other_backends(backend):
    skip_unless_installed(backend)
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _BACKEND_SCRIPT],
        env=env,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    values = json.loads(result.stdout.strip().splitlines()[-1])
    for method, value in values.items():
        expected = GOLDEN[f"{method}/loss_kd"].reshape(()) / GOLDEN[f"{method}/weight"]
        np.testing.assert_allclose(value, expected, rtol=RTOL, err_msg=method)


# ----------------------------------------------------------------------------
# Through the Distiller: the default taps reach the loss
# ----------------------------------------------------------------------------

TAP_KEYS = {f"feats_{i}": f"feats{i}" for i in range(4)} | {"pooled_feat": "pooled"}


def _tap_model(role, offset):
    """A model of the flat fixture row whose tap layers (`feats_<i>`,
    `pooled_feat`) output `role`'s golden features: the slice of its input at
    `offset` onwards, reshaped. Returns the model and the next offset."""
    inputs = keras.Input((_flat_size(),), name="fixture")
    taps = []
    for name, key in TAP_KEYS.items():
        shape = _golden(role, key).shape[1:]
        size = int(np.prod(shape))
        tap = keras.layers.Reshape(shape, name=name)(inputs[:, offset : offset + size])
        taps.append(keras.layers.Flatten()(tap))
        offset += size
    # The logits read every tap, so that each is a layer of the model.
    logits = keras.layers.Dense(3, name="logits")(keras.layers.Concatenate()(taps))
    return keras.Model(inputs, logits, name=f"{role}_taps"), offset


def _flat_size():
    return sum(
        int(np.prod(_golden(role, key).shape[1:]))
        for role in ("teacher", "student")
        for key in TAP_KEYS.values()
    )


def _fixture_rows():
    parts = [
        _golden(role, key).reshape(len(_golden(role, key)), -1)
        for role in ("teacher", "student")
        for key in TAP_KEYS.values()
    ]
    return np.concatenate(parts, axis=1)


def test_distiller_passes_the_default_taps_and_matches_mdistiller():
    teacher, offset = _tap_model("teacher", 0)
    student, _ = _tap_model("student", offset)
    losses = [loss_class() for loss_class, _, _ in GOLDEN_CASES.values()]
    distiller = keras_cskd.Distiller(
        teacher, student, losses, distillation_loss_weight=[1.0] * len(losses)
    )
    distiller.compile(optimizer="sgd", run_eagerly=True)  # one step: no tracing
    x = _fixture_rows()
    logs = distiller.evaluate(
        x, np.zeros(len(x)), batch_size=len(x), verbose=0, return_dict=True
    )
    for method in GOLDEN_CASES:
        expected = GOLDEN[f"{method}/loss_kd"].reshape(()) / GOLDEN[f"{method}/weight"]
        np.testing.assert_allclose(
            logs[f"{method}_loss"], expected, rtol=RTOL, err_msg=method
        )
