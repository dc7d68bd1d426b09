"""FeatureDistillation (FitNets) and AttentionTransfer against float64 NumPy.

The references below are written from the papers and mdistiller's FitNet and AT
(`F.mse_loss`; `F.normalize(f.pow(p).mean(1).view(B, -1))` with eps 1e-12 and
adaptive average pooling of the larger map), on float64 copies of the float32
inputs the losses get.
"""

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_backends import skip_unless_installed

import keras_cskd
from keras_cskd.losses import AttentionTransfer, FeatureDistillation
from keras_cskd.losses.attention_transfer import attention_map

RTOL = 1e-5
ATOL = 1e-7  # for losses near 0, where float32 cancellation leaves a few ulps of 1

# ----------------------------------------------------------------------------
# float64 NumPy references
# ----------------------------------------------------------------------------


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def ref_mse(teacher, student):
    return np.mean((_f64(teacher) - _f64(student)) ** 2)


def ref_conv1x1(features, kernel, bias):
    """`y[b, h, w, d] = sum_c x[b, h, w, c] k[c, d] + bias[d]` (or `[B, C]`)."""
    return _f64(features) @ _f64(kernel).reshape(kernel.shape[-2:]) + _f64(bias)


def ref_average_pool(features, height, width):
    """Adaptive average pooling to `(height, width)` for integer ratios, by loops."""
    features = _f64(features)
    rows, cols = features.shape[1] // height, features.shape[2] // width
    pooled = np.zeros((features.shape[0], height, width, features.shape[3]))
    for i in range(height):
        for j in range(width):
            block = features[:, i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            pooled[:, i, j] = block.mean(axis=(1, 2))
    return pooled


def ref_attention(features, p):
    """`F.normalize(f.pow(p).mean(channels).view(B, -1))`: x / max(|x|, 1e-12)."""
    features = _f64(features)
    attention = (features**p).mean(axis=-1).reshape(features.shape[0], -1)
    norm = np.sqrt((attention**2).sum(axis=-1, keepdims=True))
    return attention / np.maximum(norm, 1e-12)


def ref_attention_transfer(teacher, student, p=2):
    height = min(teacher.shape[1], student.shape[1])
    width = min(teacher.shape[2], student.shape[2])
    teacher = ref_average_pool(teacher, height, width)
    student = ref_average_pool(student, height, width)
    return np.mean((ref_attention(student, p) - ref_attention(teacher, p)) ** 2)


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------


def _features(shape, seed, scale=1.0, relu=False):
    values = np.random.default_rng(seed).normal(size=shape) * scale
    return (np.maximum(values, 0.0) if relu else values).astype("float32")


def _value(loss, teacher, student):
    return float(keras.ops.convert_to_numpy(loss.compute_loss(teacher, student)))


def _built(loss, teacher, student):
    loss.build((None,) + teacher.shape[1:], (None,) + student.shape[1:])
    return loss


def _randomise_bias(layer, seed=5):
    bias = np.random.default_rng(seed).normal(size=layer.bias.shape)
    layer.bias.assign(bias.astype("float32"))
    return layer


# ----------------------------------------------------------------------------
# FeatureDistillation without a regressor: Keras's FeatureDistillation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss", ["mse", "mae", "cosine_similarity", keras.losses.MeanSquaredError()]
)
@pytest.mark.parametrize("shape", [(4, 5, 5, 6), (4, 12)])
def test_value_is_keras_feature_distillation_value(loss, shape):
    teacher, student = _features(shape, 0), _features(shape, 1)
    ours = _value(FeatureDistillation(loss=loss), teacher, student)
    theirs = keras.distillation.FeatureDistillation(loss=loss).compute_loss(
        teacher, student
    )
    assert ours == float(keras.ops.convert_to_numpy(theirs))


@pytest.mark.parametrize(
    "teacher, student",
    [
        (_features((4, 5, 5, 6), 0), _features((4, 5, 5, 6), 1)),
        (_features((1, 3, 3, 2), 2), _features((1, 3, 3, 2), 3)),  # B=1
        (_features((2, 4, 4, 3), 4, 1e4), _features((2, 4, 4, 3), 5, 1e4)),
        (np.zeros((2, 4, 4, 3), "float32"), _features((2, 4, 4, 3), 6)),
        (np.full((2, 4, 4, 3), 7.0, "float32"), np.full((2, 4, 4, 3), 7.0, "float32")),
    ],
    ids=["random", "batch_1", "magnitude_1e4", "zero_teacher", "equal"],
)
def test_mse_matches_float64_reference(teacher, student):
    value = _value(FeatureDistillation(), teacher, student)
    np.testing.assert_allclose(value, ref_mse(teacher, student), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------
# The FitNets regressor
# ----------------------------------------------------------------------------


def test_regressor_is_a_1x1_convolution_built_from_the_shapes():
    loss = FeatureDistillation(regressor=True)
    assert loss.layers == []
    loss.build((None, 5, 5, 6), (None, 5, 5, 3))
    (layer,) = loss.layers
    assert isinstance(layer, keras.layers.Conv2D)
    assert tuple(layer.kernel.shape) == (1, 1, 3, 6) and layer.trainable
    student = _features((2, 5, 5, 3), 1)
    _randomise_bias(layer)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(student)),
        ref_conv1x1(student, layer.kernel.numpy(), layer.bias.numpy()),
        rtol=RTOL,
        atol=ATOL,
    )
    loss.build((None, 5, 5, 6), (None, 5, 5, 3))  # idempotent
    assert loss.layers == [layer]
    assert FeatureDistillation(regressor=False).layers == []


@pytest.mark.parametrize(
    "teacher_shape, student_shape, layer_class",
    [
        ((4, 5, 5, 6), (4, 5, 5, 3), keras.layers.Conv2D),
        ((1, 3, 3, 8), (1, 3, 3, 8), keras.layers.Conv2D),  # B=1, same channels
        ((4, 10), (4, 7), keras.layers.Dense),
    ],
)
def test_regressor_loss_matches_float64_reference(
    teacher_shape, student_shape, layer_class
):
    teacher, student = _features(teacher_shape, 0), _features(student_shape, 1)
    loss = _built(FeatureDistillation(regressor=True), teacher, student)
    layer = _randomise_bias(loss.layers[0])
    assert isinstance(layer, layer_class)
    mapped = ref_conv1x1(student, layer.kernel.numpy(), layer.bias.numpy())
    np.testing.assert_allclose(
        _value(loss, teacher, student), ref_mse(teacher, mapped), rtol=RTOL
    )


def test_regressor_with_cosine_loss_matches_reference():
    teacher, student = _features((3, 4, 4, 6), 0), _features((3, 4, 4, 2), 1)
    loss = FeatureDistillation("cosine_similarity", regressor=True)
    loss = _built(loss, teacher, student)
    layer = loss.layers[0]
    mapped = ref_conv1x1(student, layer.kernel.numpy(), layer.bias.numpy())
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    expected = -np.mean(np.sum(unit(_f64(teacher)) * unit(mapped), axis=-1))
    np.testing.assert_allclose(_value(loss, teacher, student), expected, rtol=RTOL)


def test_gradient_reaches_student_and_regressor_but_not_teacher():
    teacher = tf.Variable(_features((2, 4, 4, 6), 0))
    student = tf.Variable(_features((2, 4, 4, 3), 1))
    loss = _built(FeatureDistillation(regressor=True), teacher, student)
    layer = loss.layers[0]
    with tf.GradientTape() as tape:
        value = loss.compute_loss(teacher, student)
    grads = tape.gradient(value, [teacher, student, layer.kernel, layer.bias])
    assert grads[0] is None or not np.any(grads[0].numpy())
    for grad in grads[1:]:
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy())


def test_regressor_weights_are_saved_by_a_model_that_tracks_the_loss_layers(
    tmp_path,
):
    class Owner(keras.Model):  # what the Distiller does with `loss.layers`
        def __init__(self, loss):
            super().__init__()
            loss.build((None, 4, 4, 6), (None, 4, 4, 3))
            self.loss_layers = loss.layers
            self.built = True

    saved = Owner(FeatureDistillation(regressor=True))
    assert len(saved.trainable_variables) == 2  # kernel and bias
    _randomise_bias(saved.loss_layers[0])
    saved.save_weights(tmp_path / "owner.weights.h5")
    loaded = Owner(FeatureDistillation(regressor=True))
    loaded.load_weights(tmp_path / "owner.weights.h5")
    for a, b in zip(saved.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ----------------------------------------------------------------------------
# AttentionTransfer
# ----------------------------------------------------------------------------

AT_CASES = {
    "same_size": (_features((4, 6, 6, 8), 0), _features((4, 6, 6, 3), 1), 2),
    "batch_1": (_features((1, 4, 4, 5), 2), _features((1, 4, 4, 5), 3), 2),
    "student_twice_larger": (_features((3, 4, 4, 8), 4), _features((3, 8, 8, 2), 5), 2),
    "teacher_twice_larger": (_features((3, 8, 8, 8), 6), _features((3, 4, 4, 2), 7), 2),
    "non_square_ratios": (_features((2, 8, 4, 3), 8), _features((2, 4, 1, 3), 9), 2),
    "p_1_relu": (
        _features((2, 4, 4, 3), 10, relu=True),
        _features((2, 4, 4, 3), 11),
        1,
    ),
    "p_3_relu": (
        _features((2, 4, 4, 3), 12, relu=True),
        _features((2, 4, 4, 3), 13, relu=True),
        3,
    ),
    "p_2.5_relu": (
        _features((2, 4, 4, 3), 14, relu=True),
        _features((2, 4, 4, 3), 15, relu=True),
        2.5,
    ),
    "zero_student": (_features((2, 4, 4, 3), 16), np.zeros((2, 4, 4, 3), "float32"), 2),
    "zero_both": (np.zeros((2, 4, 4, 3), "float32"),) * 2 + (2,),
    "constant": (np.full((2, 4, 4, 3), 3.0, "float32"), _features((2, 4, 4, 3), 17), 2),
    "below_eps": (_features((2, 4, 4, 3), 18, 1e-8), _features((2, 4, 4, 3), 19), 2),
    "magnitude_1e4": (_features((2, 4, 4, 3), 20, 1e4), _features((2, 4, 4, 3), 21), 2),
}


@pytest.mark.parametrize("case", list(AT_CASES))
def test_attention_transfer_matches_float64_reference(case):
    teacher, student, p = AT_CASES[case]
    value = _value(AttentionTransfer("t", "s", p=p), teacher, student)
    assert np.isfinite(value)
    expected = ref_attention_transfer(teacher, student, p)
    np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL)


def test_attention_of_zero_features_is_zero_and_below_eps_is_not_unit():
    features = np.zeros((2, 3, 3, 4), "float32")
    features[1] = 1e-8  # |attention| = 1e-16 * 3 < 1e-12: divided by the eps
    attention = keras.ops.convert_to_numpy(attention_map(features))
    np.testing.assert_array_equal(attention[0], 0.0)
    np.testing.assert_allclose(attention[1], 1e-16 / 1e-12, rtol=RTOL)
    np.testing.assert_allclose(attention, ref_attention(features, 2), rtol=RTOL)


@pytest.mark.parametrize("case", ["same_size", "student_twice_larger", "zero_student"])
def test_attention_gradient_is_finite_and_only_reaches_the_student(case):
    teacher, student, p = AT_CASES[case]
    teacher, student = tf.Variable(teacher), tf.Variable(student)
    with tf.GradientTape() as tape:
        value = AttentionTransfer("t", "s", p=p).compute_loss(teacher, student)
    teacher_grad, student_grad = tape.gradient(value, [teacher, student])
    assert teacher_grad is None or not np.any(teacher_grad.numpy())
    assert np.all(np.isfinite(student_grad.numpy()))
    if case != "zero_student":  # d(f^2)/df is 0 at f = 0
        assert np.any(student_grad.numpy())


def test_losses_trace_with_an_unknown_batch_size():
    teacher, student = _features((3, 8, 8, 4), 0), _features((3, 4, 4, 2), 1)
    attention = AttentionTransfer("t", "s")
    fitnets = _built(FeatureDistillation(regressor=True), teacher[:, ::2, ::2], student)
    signature = [tf.TensorSpec((None,) + x.shape[1:]) for x in (teacher, student)]
    traced = tf.function(attention.compute_loss, input_signature=signature)
    np.testing.assert_allclose(
        traced(teacher, student), _value(attention, teacher, student), rtol=RTOL
    )
    teacher = teacher[:, ::2, ::2]
    signature[0] = tf.TensorSpec((None,) + teacher.shape[1:])
    traced = tf.function(fitnets.compute_loss, input_signature=signature)
    np.testing.assert_allclose(
        traced(teacher, student), _value(fitnets, teacher, student), rtol=RTOL
    )


@pytest.mark.parametrize("name", ["feature_distillation", "attention_transfer"])
def test_loss_trains_inside_keras_distiller(name):
    def model(filters, pool, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(filters, 3, padding="same", name="features")(inputs)
        x = keras.layers.MaxPooling2D(pool)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x))

    teacher = model(4, 2, 0)
    student = model(4 if name == "feature_distillation" else 2, 1, 1)
    loss = keras_cskd.losses.get(
        name, teacher_layer_name="features", student_layer_name="features"
    )
    distiller = keras.distillation.Distiller(teacher, student, loss)
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = _features((4, 8, 8, 1), 2)
    logs = distiller.train_on_batch(x, np.arange(4) % 3, return_dict=True)
    assert np.isfinite(logs["loss"])


# ----------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------

CONFIG_CASES = {
    "fitnets": lambda: FeatureDistillation("mae", "t_layer", "s_layer", regressor=True),
    "keras_loss": lambda: FeatureDistillation(keras.losses.CosineSimilarity()),
    "attention": lambda: AttentionTransfer("t_layer", "s_layer", p=3),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_round_trip(case):
    loss = CONFIG_CASES[case]()
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert restored.layers == []  # a regressor's weights belong to the Distiller
    teacher, student = _features((2, 4, 4, 3), 0), _features((2, 4, 4, 3), 1)
    if not getattr(loss, "regressor", False):
        assert _value(restored, teacher, student) == _value(loss, teacher, student)


@pytest.mark.parametrize("loss_class", [FeatureDistillation, AttentionTransfer])
def test_get_config_returns_every_init_argument(loss_class):
    loss = loss_class(teacher_layer_name="a", student_layer_name="b")
    arguments = set(inspect.signature(loss_class.__init__).parameters) - {"self"}
    assert set(loss.get_config()) == arguments


# ----------------------------------------------------------------------------
# Refused inputs
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FeatureDistillation(["mse", "mae"]), "one loss"),
        (lambda: FeatureDistillation({"out": "mse"}), "one loss"),
        (lambda: FeatureDistillation(None), "one loss"),
        (lambda: FeatureDistillation("no_such_loss"), "no_such_loss"),
        (lambda: FeatureDistillation(3), "callable"),
        (lambda: AttentionTransfer(None, "s"), "teacher_layer_name"),
        (lambda: AttentionTransfer("t", ""), "student_layer_name"),
        (lambda: AttentionTransfer("t", "s", p=0), "must be a finite number > 0"),
        (lambda: AttentionTransfer("t", "s", p=True), "must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "loss, teacher_shape, student_shape, match",
    [
        (FeatureDistillation(), (2, 4, 4, 6), (2, 4, 4, 3), "pass regressor=True"),
        (FeatureDistillation(), (2, 4, 4, 3), (2, 8, 8, 3), "spatial"),
        (FeatureDistillation(regressor=True), (2, 4, 4, 6), (2, 8, 8, 3), "spatial"),
        (FeatureDistillation(), (2, 4, 4, 3), (2, 48), "ranks"),
        (FeatureDistillation(regressor=True), (2, 4, 6), (2, 4, 3), "regressor=False"),
        (FeatureDistillation(regressor=True), (2, 4, 4, None), (2, 4, 4, 3), "known"),
        (AttentionTransfer("t", "s"), (2, 8, 8, 3), (2, 6, 6, 3), "integer factor"),
        (AttentionTransfer("t", "s"), (2, 8, 8, 3), (2, 8, 3, 3), "integer factor"),
        (AttentionTransfer("t", "s"), (2, 8), (2, 8), r"\[B, H, W, C\]"),
        (AttentionTransfer("t", "s"), (2, 4, 4, 3), (3, 4, 4, 3), "batch sizes"),
    ],
)
def test_incompatible_shapes_are_refused_by_build(
    loss, teacher_shape, student_shape, match
):
    with pytest.raises(ValueError, match=match):
        loss.build(teacher_shape, student_shape)


def test_incompatible_features_are_refused_by_compute_loss():
    teacher, student = _features((2, 4, 4, 6), 0), _features((2, 4, 4, 3), 1)
    with pytest.raises(ValueError, match="pass regressor=True"):
        FeatureDistillation().compute_loss(teacher, student)
    with pytest.raises(ValueError, match="not built"):
        FeatureDistillation(regressor=True).compute_loss(teacher, student)
    with pytest.raises(ValueError, match="single tensors"):
        FeatureDistillation().compute_loss([teacher], [teacher])
    with pytest.raises(ValueError, match="pairwise"):
        AttentionTransfer("t", "s").compute_loss([teacher, teacher], [student])
    loss = _built(FeatureDistillation(regressor=True), teacher, student)
    with pytest.raises(ValueError, match="other shapes"):
        loss.build((None, 4, 4, 6), (None, 4, 4, 5))


def test_missing_layer_and_subclassed_model_are_refused():
    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    loss = FeatureDistillation(teacher_layer_name="dense", student_layer_name="nope")
    with pytest.raises(ValueError, match="in the student.*nope"):
        loss.validate_model_compatibility(functional, functional)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional or Sequential"):
        AttentionTransfer("dense", "x").validate_model_compatibility(
            functional, Subclassed()
        )


# ----------------------------------------------------------------------------
# Other backends
# ----------------------------------------------------------------------------

_BACKEND_SCRIPT = """
import json, sys
import keras, numpy as np
from keras_cskd.losses import AttentionTransfer, FeatureDistillation
rng = np.random.default_rng(0)
t8, s4 = (rng.normal(size=s).astype("float32") for s in [(2, 8, 8, 4), (2, 4, 4, 2)])
fitnets = FeatureDistillation(regressor=True)
fitnets.build((None, 4, 4, 4), (None, 4, 4, 2))
kernel = [keras.ops.convert_to_numpy(w).tolist() for w in fitnets.layers[0].weights]
zeros = np.zeros_like(s4)
values = [
    AttentionTransfer("t", "s").compute_loss(t8, s4),
    AttentionTransfer("t", "s").compute_loss(t8, zeros),
    fitnets.compute_loss(t8[:, ::2, ::2], s4),
]
print(json.dumps({"values": [float(v) for v in values], "weights": kernel}))
"""


@pytest.mark.large
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_losses_match_the_reference_on_other_backends(backend):
    skip_unless_installed(backend)
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, "-c", _BACKEND_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    t8, s4 = (
        rng.normal(size=s).astype("float32") for s in [(2, 8, 8, 4), (2, 4, 4, 2)]
    )
    kernel, bias = (np.asarray(w) for w in out["weights"])
    expected = [
        ref_attention_transfer(t8, s4),
        ref_attention_transfer(t8, np.zeros_like(s4)),
        ref_mse(t8[:, ::2, ::2], ref_conv1x1(s4, kernel, bias)),
    ]
    np.testing.assert_allclose(out["values"], expected, rtol=RTOL)
