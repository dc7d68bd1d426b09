"""Keras's words keep Keras's meaning: `student_loss_weight` is
`keras.distillation.Distiller`'s alpha, `ce_weight` the cross-entropy's own
weight, and configs, `.keras` files and checkpoints written before the rename
keep the meaning they were written with."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import reference  # tests/reference.py (pytest puts tests/ on sys.path)

import keras_cskd
from keras_cskd import checkpointing
from keras_cskd import config as config_module

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 3.0


def functional_models(seed=0):
    """A teacher and a student with a `hidden` layer of the same width, for
    Keras's `FeatureDistillation`; no dropout or BatchNorm, so a training-mode
    forward pass is the one NumPy is given."""
    keras.utils.set_random_seed(seed)

    def model(name, activation):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(8, activation=activation, name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4)(hidden), name=name)

    return model("teacher", "relu"), model("student", "tanh")


def batch(n=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, rng.integers(0, 4, size=n).astype("int32")


def numpy_terms(teacher, student, x, y):
    """float64 NumPy CE, KD (`LogitsDistillation`: T^2 KL) and the hidden
    layers' MSE (`FeatureDistillation`) on the models' float32 outputs."""
    outputs = {}
    for role, model in (("teacher", teacher), ("student", student)):
        tap = keras.Model(
            model.inputs, [model.output, model.get_layer("hidden").output]
        )
        logits, hidden = (np.float64(v) for v in tap(x, training=role == "student"))
        outputs[role] = logits, hidden
    (zt, ft), (zs, fs) = outputs["teacher"], outputs["student"]
    return {
        "ce": -reference.log_softmax(zs)[np.arange(len(y)), y].mean(),
        "kd": reference.kd(zt, zs, TEMPERATURE),
        "mse": np.mean((ft - fs) ** 2),
    }


def keras_objective(teacher, student, losses, weights, alpha, x, y):
    """Keras's own Distiller on the batch: (total, student loss, distillation)."""
    distiller = keras.distillation.Distiller(
        teacher,
        student,
        losses,
        distillation_loss_weights=weights,
        student_loss_weight=alpha,
    )
    distiller.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True)
    )
    total = distiller.compute_loss(x, y)
    return (
        float(total),
        float(distiller.student_loss_tracker.result()),
        float(distiller.distillation_loss_tracker.result()),
    )


def our_objective(teacher, student, losses, x, y, **weights):
    """This Distiller's objective on the batch, and the Distiller (its logs)."""
    distiller = keras_cskd.Distiller(teacher, student, losses, **weights)
    distiller.compile(optimizer="sgd")
    return float(distiller.compute_loss(x, y)), distiller


def LOGITS():  # noqa: N802  a loss factory, named like the class it makes
    """Keras's KD. Its default `loss="kl_divergence"` resolves to the KL
    function, which Keras applies to the scaled logits, not to softmaxes."""
    return keras.distillation.LogitsDistillation(
        temperature=TEMPERATURE, loss=keras.losses.KLDivergence()
    )


def FEATURES():  # noqa: N802
    return keras.distillation.FeatureDistillation("mse", "hidden", "hidden")


@pytest.mark.parametrize("alpha", [0.5, 0.2, 0.0, 1.0])
def test_student_loss_weight_is_keras_alpha_with_one_loss(alpha):
    teacher, student = functional_models()
    x, y = batch()
    expected = numpy_terms(teacher, student, x, y)
    total, keras_ce, keras_kd = keras_objective(
        teacher, student, LOGITS(), None, alpha, x, y
    )
    ours, distiller = our_objective(
        teacher, student, LOGITS(), x, y, student_loss_weight=alpha
    )
    formula = alpha * expected["ce"] + (1 - alpha) * expected["kd"]
    np.testing.assert_allclose(ours, formula, rtol=1e-5)
    np.testing.assert_allclose(total, formula, rtol=1e-5)
    logged = {k: float(v) for k, v in distiller.term_means.result().items()}
    np.testing.assert_allclose(logged["ce_loss"], expected["ce"], rtol=1e-5)
    if alpha > 0:  # Keras skips the term whose weight is 0
        np.testing.assert_allclose(keras_ce, expected["ce"], rtol=1e-5)
    if alpha < 1:
        np.testing.assert_allclose(keras_kd, expected["kd"], rtol=1e-5)
        np.testing.assert_allclose(logged["distillation_loss"], keras_kd, rtol=1e-5)


def test_student_loss_weight_is_keras_alpha_with_two_weighted_losses():
    teacher, student = functional_models(seed=3)
    x, y = batch()
    expected = numpy_terms(teacher, student, x, y)
    alpha, weights = 0.3, [0.7, 2.5]
    total, keras_ce, keras_distillation = keras_objective(
        teacher, student, [LOGITS(), FEATURES()], weights, alpha, x, y
    )
    ours, distiller = our_objective(
        teacher,
        student,
        [LOGITS(), FEATURES()],
        x,
        y,
        student_loss_weight=alpha,
        distillation_loss_weight=weights,
    )
    distillation = weights[0] * expected["kd"] + weights[1] * expected["mse"]
    formula = alpha * expected["ce"] + (1 - alpha) * distillation
    assert expected["mse"] > 1e-3  # the feature term matters to the sum
    np.testing.assert_allclose(ours, formula, rtol=1e-5)
    np.testing.assert_allclose(total, formula, rtol=1e-5)
    np.testing.assert_allclose(keras_ce, expected["ce"], rtol=1e-5)
    np.testing.assert_allclose(keras_distillation, distillation, rtol=1e-5)
    logged = {k: float(v) for k, v in distiller.term_means.result().items()}
    np.testing.assert_allclose(logged["distillation_loss"], distillation, rtol=1e-5)


def test_ce_weight_weights_the_cross_entropy_alone_and_is_the_default():
    teacher, student = functional_models(seed=4)
    x, y = batch()
    expected = numpy_terms(teacher, student, x, y)
    weights = [0.9, 2.0]
    ours, distiller = our_objective(
        teacher,
        student,
        [LOGITS(), FEATURES()],
        x,
        y,
        ce_weight=0.1,
        distillation_loss_weight=weights,
    )
    distillation = weights[0] * expected["kd"] + weights[1] * expected["mse"]
    np.testing.assert_allclose(ours, 0.1 * expected["ce"] + distillation, rtol=1e-5)
    assert (distiller.ce_weight, distiller.student_loss_weight) == (0.1, None)
    default, distiller = our_objective(teacher, student, LOGITS(), x, y)
    np.testing.assert_allclose(default, expected["ce"] + expected["kd"], rtol=1e-5)
    assert (distiller.ce_weight, distiller.student_loss_weight) == (1.0, None)


def one_line_error(make):
    teacher, student = functional_models()
    with pytest.raises(ValueError) as error:
        make(teacher, student)
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"student_loss_weight": 0.5, "ce_weight": 0.5}, "not both"),
        ({"student_loss_weight": 1.5}, r"in \[0, 1\], got 1.5; .*`ce_weight`"),
        ({"student_loss_weight": -0.1}, r"in \[0, 1\], got -0.1"),
        ({"student_loss_weight": True}, r"in \[0, 1\], got True"),
        ({"ce_weight": -1.0}, "`ce_weight` must be a finite number >= 0"),
        ({"distillation_losses": [LOGITS()]}, "takes `distillation_loss`"),
        ({"distillation_loss_weights": [1.0]}, "takes `distillation_loss_weight`"),
    ],
    ids=[
        "both",
        "alpha_above_1",
        "alpha_negative",
        "alpha_bool",
        "ce_negative",
        "keras_losses",
        "keras_weights",
    ],
)
def test_weights_outside_their_meaning_are_refused_in_one_line(arguments, message):
    def make(teacher, student):
        loss = None if "distillation_losses" in arguments else LOGITS()
        return keras_cskd.Distiller(teacher, student, loss, **arguments)

    assert re.search(message, one_line_error(make))


def test_keras_spellings_map_to_the_same_values():
    message = one_line_error(
        lambda t, s: keras_cskd.Distiller(
            t, s, LOGITS(), distillation_loss_weights=[1.0]
        )
    )
    assert "pass the same value" in message
    assert "mean what they mean in keras.distillation.Distiller" in message


@pytest.mark.parametrize(
    "weights", [{"student_loss_weight": 0.3}, {"ce_weight": 0.3}, {}]
)
def test_get_config_round_trips_either_weight(weights):
    teacher, student = functional_models()
    distiller = keras_cskd.Distiller(teacher, student, LOGITS(), **weights)
    clone = keras_cskd.Distiller.from_config(distiller.get_config())
    clone.set_weights(distiller.get_weights())  # a config holds no weights
    assert (clone.student_loss_weight, clone.ce_weight) == (
        distiller.student_loss_weight,
        distiller.ce_weight,
    )
    x, y = batch()
    np.testing.assert_allclose(
        float(clone.compute_loss(x, y)), float(distiller.compute_loss(x, y)), rtol=1e-6
    )


def test_a_distiller_saved_before_ce_weight_loads_with_its_old_meaning(tmp_path):
    """The previous version wrote `student_loss_weight` as the cross-entropy's
    weight and no `ce_weight`: such a config and `.keras` file train 0.1 CE +
    0.9 KD, not Keras's 0.1 CE + 0.9 * 0.9 KD."""
    teacher, student = functional_models()
    distiller = keras_cskd.Distiller(
        teacher, student, LOGITS(), ce_weight=0.1, distillation_loss_weight=0.9
    )
    old_config = distiller.get_config()
    del old_config["ce_weight"]
    old_config["student_loss_weight"] = 0.1
    x, y = batch()
    expected = numpy_terms(teacher, student, x, y)
    old_objective = 0.1 * expected["ce"] + 0.9 * expected["kd"]

    loaded = keras_cskd.Distiller.from_config(old_config)
    loaded.set_weights(distiller.get_weights())  # a config holds no weights
    assert (loaded.ce_weight, loaded.student_loss_weight) == (0.1, None)
    np.testing.assert_allclose(
        float(loaded.compute_loss(x, y)), old_objective, rtol=1e-5
    )

    path = tmp_path / "old.keras"
    distiller.save(path)
    rewritten = tmp_path / "rewritten.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "config.json":
                saved = json.loads(data)
                del saved["config"]["ce_weight"]
                saved["config"]["student_loss_weight"] = 0.1
                data = json.dumps(saved).encode()
            target.writestr(item, data)
    from_file = keras.saving.load_model(rewritten)
    assert (from_file.ce_weight, from_file.student_loss_weight) == (0.1, None)
    np.testing.assert_allclose(
        float(from_file.compute_loss(x, y)), old_objective, rtol=1e-5
    )


def digits_kd_config():
    return config_module.load_config(ROOT / "configs" / "digits_kd.py")


def test_the_old_config_key_is_refused_with_its_new_name():
    config = digits_kd_config()
    config.student_loss_weight = 0.1
    with pytest.raises(ValueError) as error:
        config_module.validate(config)
    message = str(error.value)
    assert "\n" not in message
    assert "student_loss_weight is now ce_weight, with the same value" in message
    assert "set config.ce_weight" in message
    assert digits_kd_config().ce_weight == 0.1  # the recipe's CE 0.1, KD 0.9
    config_module.validate(digits_kd_config())


def test_a_checkpoint_config_with_the_old_key_is_the_same_config(tmp_path):
    current = digits_kd_config().to_dict()
    saved = {k: v for k, v in current.items() if k != "ce_weight"}
    saved["student_loss_weight"] = current["ce_weight"]
    assert config_module.changed_keys(saved, current) == {}
    saved["student_loss_weight"] = 0.5
    assert config_module.changed_keys(saved, current) == {"ce_weight": (0.5, 0.1)}

    saved["student_loss_weight"] = current["ce_weight"]
    teacher, student = functional_models()
    distiller = keras_cskd.Distiller(teacher, student, LOGITS(), ce_weight=0.1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    distiller.optimizer.build(distiller.trainable_variables)
    checkpointing.save(tmp_path / "ckpt", distiller, 2, 0, {}, [teacher], config=saved)
    resumed = checkpointing.restore(
        tmp_path / "ckpt", distiller, [teacher], config=current
    )
    assert (resumed.epoch, resumed.step, resumed.history) == (2, 0, {})
    changed = dict(current, ce_weight=0.5)
    with pytest.raises(ValueError, match="ce_weight: 0.1 in the checkpoint, 0.5 now"):
        checkpointing.restore(tmp_path / "ckpt", distiller, [teacher], config=changed)


@pytest.mark.large
def test_the_cli_refuses_the_old_key_with_its_new_name():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config.student_loss_weight=0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ValueError: config key student_loss_weight is now")
    assert last.endswith("pass --config.ce_weight")
    assert "Traceback" not in result.stderr
