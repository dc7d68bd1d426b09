"""LS-KD's logit standardisation as a switch on KD and DKD (`standardize=True`).

`golden/lskd.npz` was made by `tests/golden/make_lskd.py` from the LS-KD code
(sunshangquan/logit-standardization-KD @ f6e5aa5, `KD.py` and `DKD.py`; see
tests/golden/README.md); torch is not needed here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import reference  # tests/reference.py (pytest puts tests/ on sys.path)
import tensorflow as tf
from test_backends import skip_unless_installed

from keras_cskd import builders, losses
from keras_cskd import config as config_module
from keras_cskd.losses.logit_loss import standardized_logits

GOLDEN = np.load(Path(__file__).parent / "golden" / "lskd.npz")
# tools/train.py --logit-stand --base-temp 2 --kd-weight 9, as the fixture.
KD_WEIGHT = 9.0
MAKERS = {
    "kd": lambda: losses.KD(temperature=2.0, standardize=True),
    "dkd": lambda: losses.DKD(
        temperature=2.0, alpha=9.0, beta=72.0, warmup_epochs=20, standardize=True
    ),
}
WEIGHTS = {"kd": KD_WEIGHT, "dkd": 1.0}  # DKD's weight is inside alpha and beta


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


def _loss_and_gradient(method, teacher, student, labels):
    variable = tf.Variable(student)
    with tf.GradientTape() as tape:
        loss = WEIGHTS[method] * MAKERS[method]().compute_loss(
            teacher, variable, labels=labels, epoch=int(GOLDEN["epoch"])
        )
    return float(loss), tape.gradient(loss, variable).numpy()


@pytest.mark.parametrize("case", range(int(GOLDEN["cases"])))
@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_standardized_loss_and_gradient_equal_the_lskd_code(method, case):
    loss, gradient = _loss_and_gradient(
        method,
        GOLDEN[f"case{case}_teacher"],
        GOLDEN[f"case{case}_student"],
        GOLDEN[f"case{case}_labels"],
    )
    assert loss == pytest.approx(float(GOLDEN[f"{method}_case{case}_loss"]), rel=1e-5)
    assert _relative_error(gradient, GOLDEN[f"{method}_case{case}_grad"]) < 1e-5


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_a_constant_row_matches_the_lskd_code_and_stays_finite(method):
    # std 0: the row standardises to 0 and its gradient is 1e7 x the softmax's,
    # as the reference's (torch.std's backward is 0 there).
    loss, gradient = _loss_and_gradient(
        method,
        GOLDEN["constant_teacher"],
        GOLDEN["constant_student"],
        GOLDEN["case1_labels"],
    )
    assert np.isfinite(loss) and np.all(np.isfinite(gradient))
    assert loss == pytest.approx(float(GOLDEN[f"constant_{method}_loss"]), rel=1e-5)
    assert _relative_error(gradient, GOLDEN[f"constant_{method}_grad"]) < 1e-5


def test_lskd_is_kd_with_standardize_at_its_settings():
    rng = np.random.default_rng(3)
    teacher = rng.normal(size=(16, 20)).astype("float32") * 5
    student = rng.normal(size=(16, 20)).astype("float32")
    for lskd, kd in (
        (losses.LSKD(), losses.KD(temperature=2.0, standardize=True)),
        (
            losses.LSKD(temperature=losses.CSWT()),
            losses.KD(temperature=losses.CSWT(), standardize=True),
        ),
    ):
        assert float(lskd.compute_loss(teacher, student)) == float(
            kd.compute_loss(teacher, student)
        )
    assert isinstance(losses.LSKD(), losses.KD) and losses.LSKD().standardize


def test_lskd_keeps_its_saved_name_and_config():
    saved = keras.saving.serialize_keras_object(losses.LSKD(temperature=3.0))
    assert saved["class_name"] == "LSKD"
    assert saved["config"] == {"temperature": 3.0, "global_batch": True}
    loaded = keras.saving.deserialize_keras_object(saved)
    assert type(loaded) is losses.LSKD and loaded.temperature == 3.0


@pytest.mark.parametrize("loss_class", [losses.KD, losses.DKD])
def test_standardize_is_saved_and_off_by_default(loss_class):
    assert loss_class().standardize is False
    loaded = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss_class(standardize=True))
    )
    assert type(loaded) is loss_class and loaded.standardize is True
    with pytest.raises(ValueError, match="`standardize` must be True or False"):
        loss_class(standardize="False")


def test_standardisation_equals_numpy_in_float64():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 9)) * np.array([[0.01], [1], [5], [30], [1], [1]])
    logits[4] += 1e3  # a large offset
    ours = standardized_logits(keras.ops.convert_to_tensor(logits, "float64"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours),
        reference.lskd_standardize(logits),
        rtol=1e-12,
        atol=1e-12,
    )


def test_standardisation_edge_cases_stay_finite_in_float64():
    # A constant row (std 0) is (z - mean) / 1e-7 = 0, with a finite gradient;
    # one class gives 0 too (the C - 1 of the sample std taken as 1).
    for logits in (np.full((2, 5), 7.0), np.array([[3.0], [-1.0]])):
        variable = tf.Variable(logits)
        with tf.GradientTape() as tape:
            standardized = standardized_logits(variable)
            total = keras.ops.sum(standardized * np.arange(logits.shape[1]))
        gradient = tape.gradient(total, variable).numpy()
        np.testing.assert_array_equal(standardized.numpy(), np.zeros_like(logits))
        assert np.all(np.isfinite(gradient))
    # NumPy's sample std of a constant row is 0 too: the reference gives 0.
    np.testing.assert_array_equal(
        reference.lskd_standardize(np.full((1, 5), 7.0)), np.zeros((1, 5))
    )
    # Scale and shift invariance, up to the 1e-7.
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(4, 10))
    scaled = standardized_logits(tf.constant(100.0 * logits - 50.0)).numpy()
    np.testing.assert_allclose(
        scaled, standardized_logits(tf.constant(logits)).numpy(), atol=1e-6
    )


def test_the_config_key_reaches_kd_and_dkd_and_is_refused_elsewhere():
    kd = builders.build_loss(config_module.loss_config("kd", standardize=True))
    assert isinstance(kd, losses.KD) and kd.standardize
    dkd = builders.build_loss(config_module.loss_config("dkd", standardize=True))
    assert dkd.standardize
    assert config_module.default_config().loss.standardize is False
    for method in ("cskd", "skd", "dist", "lskd"):
        assert builders.build_loss(config_module.loss_config(method)) is not None
        with pytest.raises(ValueError, match="takes no logit standardisation"):
            builders.build_loss(config_module.loss_config(method, standardize=True))


_JAX_SCRIPT = """
import json, numpy as np
from keras_cskd import losses
golden = np.load("tests/golden/lskd.npz")
makers = {"kd": lambda: losses.KD(temperature=2.0, standardize=True),
          "dkd": lambda: losses.DKD(temperature=2.0, alpha=9.0, beta=72.0,
                                    warmup_epochs=20, standardize=True)}
print(json.dumps({
    f"{m}_case{c}": float(make().compute_loss(
        golden[f"case{c}_teacher"], golden[f"case{c}_student"],
        labels=golden[f"case{c}_labels"], epoch=int(golden["epoch"])))
    for m, make in makers.items() for c in range(int(golden["cases"]))}))
"""


@pytest.mark.large
def test_standardized_losses_equal_the_lskd_code_on_jax():
    skip_unless_installed("jax")
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT],
        env=dict(os.environ, KERAS_BACKEND="jax", CUDA_VISIBLE_DEVICES=""),
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    values = json.loads(result.stdout.strip().splitlines()[-1])
    for key, value in values.items():
        method = key.split("_")[0]
        expected = float(GOLDEN[f"{method}_{key[len(method) + 1 :]}_loss"])
        assert WEIGHTS[method] * value == pytest.approx(expected, rel=1e-5), key
