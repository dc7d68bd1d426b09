"""ReviewKD against mdistiller's code and float64 NumPy.

`tests/golden/reviewkd.npz` holds mdistiller's `ReviewKD.forward_train` values
and gradients on fixed features with its ABF weights, its parameter counts and
three steps of its training (tests/golden/make_reviewkd.py).
"""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd.losses import ReviewKD
from keras_cskd.losses.reviewkd import adaptive_average_pool, nearest_resize

GOLDEN = np.load(Path(__file__).parent / "golden" / "reviewkd.npz")
RTOL = 1e-5
CASES = ("equal", "resize")
# Three float32 SGD steps (see test_three_sgd_steps_equal_mdistillers_training).
WEIGHT_RTOL, UPDATE_RTOL = 3e-4, 5e-3
# mdistiller's cfg.py REVIEWKD defaults, for resnet32x4 -> resnet8x4.
CFG_DEFAULTS = {
    "in_channels": [64, 128, 256, 256],
    "out_channels": [64, 128, 256, 256],
    "shapes": [1, 8, 16, 32],
    "out_shapes": [1, 8, 16, 32],
}
_LAYERS = {"conv1.0": "conv1", "conv1.1": "bn1", "conv2.0": "conv2"}
_LAYERS.update({"conv2.1": "bn2", "att_conv.0": "attention"})
_WEIGHTS = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def port_abfs(loss, state_dict):
    """Sets the loss's ABFs from mdistiller's `abfs` state dict (torch layout)."""
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        index, name = key.split(".", 1)
        module, weight = name.rsplit(".", 1)
        layer = getattr(loss.layers[int(index)], _LAYERS[module])
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        layer.weights[_WEIGHTS[weight]].assign(value)


def _case(name):
    fixture = {k.split("/", 1)[1]: v for k, v in GOLDEN.items() if k.startswith(name)}
    stages = len(fixture["in_channels"]) - 1

    def features(role):
        maps = [fixture[f"{role}_feats{i}"] for i in range(stages)]
        return [maps, fixture[f"{role}_pooled"]]

    return fixture, features("teacher"), features("student")


def _built(fixture, teacher, student):
    loss = ReviewKD()
    shapes = keras.tree.map_structure(lambda x: x.shape, (teacher, student))
    loss.build(*shapes)
    abfs = {k[len("abfs.") :]: v for k, v in fixture.items() if k.startswith("abfs.")}
    port_abfs(loss, abfs)
    return loss


@pytest.mark.parametrize("name", CASES)
def test_value_and_gradient_match_mdistiller(name):
    fixture, teacher, student = _case(name)
    loss = _built(fixture, teacher, student)
    for key in CFG_DEFAULTS:
        assert getattr(loss, key) == fixture[key].tolist(), key
    variables = tf.nest.map_structure(tf.Variable, student)
    with tf.GradientTape() as tape:
        value = loss.compute_loss(
            teacher, variables, epoch=fixture["epoch"], training=True
        )
    np.testing.assert_allclose(value, fixture["loss_kd"], rtol=RTOL)
    maps, pooled = tape.gradient(value, variables)
    expected = [fixture[f"grad_feats{i}"] for i in range(len(maps))]
    for ours, theirs in zip(
        [*maps, pooled], [*expected, fixture["grad_pooled"]], strict=True
    ):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, atol=RTOL * scale)


@pytest.mark.parametrize("name", CASES)
def test_extra_parameters_count_like_mdistiller(name):
    fixture, teacher, student = _case(name)
    assert (
        _built(fixture, teacher, student).extra_parameters
        == fixture["extra_parameters"]
    )


@pytest.mark.large
def test_resnet32x4_to_resnet8x4_derives_cfg_defaults_and_their_count():
    def taps(name, spec):
        model = keras_cskd.models.get(name, 100, (32, 32, 3))
        outputs = keras_cskd.models.features(model).output
        return [
            [tuple(t.shape) for t in outputs[spec][1:]],
            outputs["pooled_feat"].shape,
        ]

    loss = ReviewKD()
    loss.build(taps("resnet32x4", "preact_feats"), taps("resnet8x4", "feats"))
    for key, value in CFG_DEFAULTS.items():
        assert getattr(loss, key) == value, key
    expected = GOLDEN["extra_parameters/resnet32x4_resnet8x4"]
    assert loss.extra_parameters == expected == 1808774


def test_warmup_ramps_over_20_epochs():
    # The golden cases run at epochs 5 and 30: the factor enters their values.
    loss = ReviewKD()
    for epoch, factor in ((1.0, 0.05), (10.0, 0.5), (20.0, 1.0), (40.0, 1.0)):
        assert float(loss.warmup_factor(epoch)) == pytest.approx(factor)
    assert loss.warmup_factor(None) == 1.0


def test_given_settings_must_fit_the_shapes():
    fixture, teacher, student = _case("equal")
    shapes = keras.tree.map_structure(lambda x: x.shape, (teacher, student))
    ReviewKD(shapes=fixture["shapes"].tolist()).build(*shapes)
    with pytest.raises(ValueError, match="leave it None"):
        ReviewKD(out_channels=[1, 2, 3, 4]).build(*shapes)
    with pytest.raises(ValueError, match="square"):
        ReviewKD().build([(None, 4, 2, 3), (None, 3)], [(None, 4, 2, 3), (None, 3)])


def _ref_adaptive_pool(x, size):
    x = np.asarray(x, np.float64)
    out = np.zeros((x.shape[0], size, size, x.shape[3]))
    h, w = x.shape[1:3]
    for i in range(size):
        for j in range(size):
            rows = slice(i * h // size, -(-(i + 1) * h // size))
            cols = slice(j * w // size, -(-(j + 1) * w // size))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("source,size", [(8, 4), (6, 4), (5, 2), (3, 1)])
def test_adaptive_average_pool_matches_pytorch_windows(source, size):
    x = np.random.default_rng(0).normal(size=(2, source, source, 3)).astype("float32")
    np.testing.assert_allclose(
        adaptive_average_pool(x, size), _ref_adaptive_pool(x, size), atol=1e-6
    )


def test_nearest_resize_takes_floor_of_scaled_index():
    x = np.arange(3.0, dtype="float32").reshape(1, 3, 1, 1)
    assert np.ravel(nearest_resize(x, 4, 1)).tolist() == [0.0, 0.0, 1.0, 2.0]
    assert np.ravel(nearest_resize(x, 2, 1)).tolist() == [0.0, 1.0]


def test_registered_and_config_round_trip():
    assert keras_cskd.losses.get_class("reviewkd") is ReviewKD
    loss = ReviewKD(warmup_epochs=5, shapes=[1, 4, 8], max_mid_channels=32)
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(loss)))
    )
    assert type(restored) is ReviewKD
    assert restored.get_config() == loss.get_config()


# ----------------------------------------------------------------------------
# Three SGD steps of the Distiller against mdistiller's training step
# ----------------------------------------------------------------------------


def _sgd(key):
    return GOLDEN[f"sgd/{key}"]


def _seeded_state(part):
    from golden.make_imagenet_zoo import random_state_dict

    keys = [str(k) for k in _sgd(f"{part}/keys")]
    shapes = [tuple(int(d) for d in s.split(",")) for s in _sgd(f"{part}/shapes")]
    return random_state_dict(keys, shapes, seed=int(_sgd(f"{part}/seed")))


def _abf_variables(loss):
    """{torch name of an ABF tensor: our variable}."""
    found = {}
    for index, abf in enumerate(loss.layers):
        for module, name in _LAYERS.items():
            layer = getattr(abf, name)
            if layer is None:
                continue
            for weight, position in _WEIGHTS.items():
                if position < len(layer.weights):
                    found[f"{index}.{module}.{weight}"] = layer.weights[position]
    return found


def _student_variables(student):
    from keras_cskd.models import porting

    return {key: variable for key, (variable, _) in porting._mapping(student).items()}


@pytest.mark.large
def test_three_sgd_steps_equal_mdistillers_training():
    """ReviewKD, its ABFs and the student trained three steps (one an epoch,
    epochs 1-3 of the warm-up, rate 0.1 x0.1 after epochs 1 and 2, weight 5)
    as mdistiller's trainer does: losses at 1e-5, each tensor's update and the
    final weights at the float32 precision measured below.

    Measured: the same three steps in float64 (the loss's casts and the
    student at float64, a hand-written PyTorch SGD step) end within 5.4e-6 of
    the fixture's largest weight, as far as PyTorch's own float32 run is from
    its float64 one; TensorFlow's float32 run (here) ends within 1.2e-4 of it
    (student convolutions' gradients; the ABFs within 1e-5), its updates' norms
    within 2e-3."""
    from keras_cskd.models import porting
    from keras_cskd.optimizers import EpochStepDecay, TorchSGD

    keras.utils.set_random_seed(0)
    models = {}
    for part in ("teacher", "student"):
        models[part] = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
        porting.load_torch_state_dict(models[part], _seeded_state(part))
    loss = ReviewKD()
    distiller = keras_cskd.Distiller(
        models["teacher"], models["student"], loss, distillation_loss_weight=5.0
    )
    for key in CFG_DEFAULTS:
        assert getattr(loss, key) == _sgd(key).tolist(), key
    port_abfs(loss, _seeded_state("abfs"))
    schedule = EpochStepDecay(0.1, 1, milestones=(1, 2))
    distiller.compile(optimizer=TorchSGD(schedule, momentum=0.9, weight_decay=5e-4))
    variables = {
        **{f"student.{k}": v for k, v in _student_variables(models["student"]).items()},
        **{f"abfs.{k}": v for k, v in _abf_variables(loss).items()},
    }
    initial = {k: v.numpy().copy() for k, v in variables.items()}
    changes = []

    class ChangeNorms(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            changes.append(
                {
                    k: np.linalg.norm((v.numpy() - initial[k]).astype(np.float64))
                    for k, v in variables.items()
                }
            )

    data = tf.data.Dataset.from_tensors((_sgd("images"), _sgd("labels"))).repeat()
    history = distiller.fit(
        data, epochs=3, steps_per_epoch=1, callbacks=[ChangeNorms()], verbose=0
    )
    for step in (1, 2, 3):
        logged = history.history["distillation_loss"][step - 1]
        assert 5.0 * logged == pytest.approx(_sgd(f"step{step}/loss_kd"), rel=RTOL)
        ce = history.history["ce_loss"][step - 1]
        assert ce == pytest.approx(_sgd(f"step{step}/loss_ce"), rel=RTOL)
        for key, norm in changes[step - 1].items():
            expected = _sgd(f"step{step}/{key}/change_norm")
            assert norm == pytest.approx(expected, rel=UPDATE_RTOL, abs=1e-7), (
                step,
                key,
            )
    for key, variable in variables.items():
        expected = _sgd(f"step3/{key}")
        ours = variable.numpy()
        if ours.ndim == 4:
            ours = ours.transpose(3, 2, 0, 1)
        elif ours.ndim == 2:
            ours = ours.T
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            ours, expected, atol=WEIGHT_RTOL * scale, err_msg=key
        )


# ----------------------------------------------------------------------------
# The recipe: a few steps end to end, resumed bitwise
# ----------------------------------------------------------------------------


def test_recipe_has_mdistillers_values():
    from keras_cskd import config as config_module

    for pair in ("resnet32x4,resnet8x4", "resnet32x4,shufflenetv2"):
        path = f"configs/cifar100_distill.py:reviewkd,{pair}"
        config = config_module.load_config(str(Path(__file__).parents[1] / path))
        assert config.loss.method == "reviewkd"
        assert (config.ce_weight, config.distillation_loss_weight) == (1.0, 5.0)
        assert config.loss.warmup_epochs == 20 and config.epochs == 240
        assert tuple(config.optimizer.milestones) == (150, 180, 210)


def _digits_distiller(seed):
    keras.utils.set_random_seed(seed)
    teacher, student = (
        keras_cskd.models.get("digits_cnn", 10, (8, 8, 1), width=w) for w in (8, 4)
    )
    loss = ReviewKD()
    return keras_cskd.Distiller(teacher, student, loss), loss


def test_abfs_train_with_the_student_and_are_saved_not_exported(tmp_path):
    distiller, loss = _digits_distiller(0)
    abf_weights = [w for layer in loss.layers for w in layer.trainable_weights]
    trained = {id(w) for w in distiller.trainable_weights}
    assert abf_weights and all(id(w) in trained for w in abf_weights)
    assert loss.extra_parameters == sum(int(np.prod(w.shape)) for w in abf_weights)
    assert not {id(w) for w in distiller.student.weights} & {id(w) for w in abf_weights}
    for w in abf_weights:
        w.assign(np.random.default_rng(1).normal(size=w.shape))
    distiller.save_weights(tmp_path / "distiller.weights.h5")
    restored, restored_loss = _digits_distiller(2)
    restored.load_weights(tmp_path / "distiller.weights.h5")
    for a, b in zip(loss.layers, restored_loss.layers, strict=True):
        for wa, wb in zip(a.weights, b.weights, strict=True):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy())
