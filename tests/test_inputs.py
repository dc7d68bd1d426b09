"""Inputs that used to be silently wrong, and errors that name the problem and the fix.

Pure checks are tested here directly (fast tier); `train.py` itself, where a user
meets them, in one batch of subprocesses and in-process through `training.main`
(what `train.py` calls), each error one line on stderr, exit code 1, no workdir.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import checks, distribute, models, training
from keras_cskd import config as config_module
from keras_cskd import data as data_module
from keras_cskd.data import Dataset
from keras_cskd.data.dataset_checks import check_dataset
from keras_cskd.losses import CSKD, CSWT, DIST, DKD, KD, LSKD, SKD

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "saved_models" / "digits_teacher.keras"
NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------
# Loss options: one shared range check, reused by the config's validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [NAN, INF, -INF, 0.0, -1.0, True, "4"])
def test_positive_number_refuses_what_no_temperature_means(value):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        checks.positive_number("temperature", value)


@pytest.mark.parametrize("value", [NAN, INF, -2.0, False])
def test_non_negative_number_refuses_nan_inf_and_negatives(value):
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        checks.non_negative_number("alpha", value)


def test_range_checks_accept_and_convert_numbers():
    assert checks.positive_number("t", np.float32(2.5)) == 2.5
    assert checks.non_negative_number("alpha", 0) == 0.0


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: KD(temperature=NAN), "temperature"),
        (lambda: LSKD(temperature=INF), "temperature"),
        (lambda: CSKD(alpha=-2.0), "alpha"),
        (lambda: CSKD(alpha=NAN), "alpha"),
        (lambda: keras_cskd.losses.TwoViewCSKD(alpha=-1.0), "alpha"),
        (lambda: DKD(alpha=-2.0), "alpha"),
        (lambda: DIST(beta=INF), "beta"),
        (lambda: SKD(multiplier=NAN), "multiplier"),
        (lambda: CSWT(t_min=NAN, t_max=6.0), "t_min"),
        (lambda: CSWT(t_min=2.0, t_max=INF), "t_max"),
        (lambda: keras_cskd.losses.AttentionTransfer("a", "b", p=INF), "`p`"),
    ],
)
def test_every_loss_option_is_range_checked(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def digits_config(**overrides):
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.update(epochs=1, verbose="0")
    config.export.formats = ""
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "config_file, key, value, message",
    [
        ("digits_cskd", "alpha", -2.0, "loss.alpha must be a finite number >= 0"),
        ("digits_dkd", "alpha", -2.0, "loss.alpha must be a finite number >= 0"),
        ("digits_kd", "temperature", NAN, "loss.temperature must be a finite"),
        ("digits_cskd", "t_max", INF, "t_min <= t_max"),
    ],
)
def test_the_config_refuses_loss_options_out_of_range(config_file, key, value, message):
    config = config_module.load_config(ROOT / "configs" / f"{config_file}.py")
    config.loss[key] = value
    with pytest.raises(ValueError, match=message):
        config_module.validate(config)


def test_the_config_refuses_non_finite_numbers():
    config = digits_config()
    config.optimizer.learning_rate = INF
    with pytest.raises(ValueError, match=r"learning_rate must be finite \(got inf\)"):
        config_module.validate(config)


def test_a_config_missing_keys_names_them_and_the_fix():
    partial = ml_collections.ConfigDict({"epochs": 1, "data": {"name": "digits"}})
    with pytest.raises(ValueError) as error:
        config_module.validate(partial)
    message = str(error.value)
    assert "'name'" in message and "'data.batch_size'" in message
    assert "default_config()" in message and "\n" not in message


def test_a_config_file_without_get_config_is_named(tmp_path):
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"defines no get_config\(\)"):
        config_module.load_config(tmp_path / "empty.py")
    (tmp_path / "dict.py").write_text("def get_config():\n    return {}\n")
    with pytest.raises(ValueError, match="not a ConfigDict"):
        config_module.load_config(tmp_path / "dict.py")


# ----------------------------------------------------------------------------
# Labels and datasets
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array(["cat", "dog"]), "string labels such as"),
        (np.array([0.0, 2.7]), "non-integer labels such as 2.7"),
        (np.array([0.0, NAN]), "non-integer labels such as nan"),
        (np.array([0, 3, 12]), r"labels in \[0, 12\], outside the 10 classes"),
        (np.array([-1, 3]), r"labels in \[-1, 3\]"),
        (np.full((2, 10), 0.5), "row 0 .* is not a distribution"),
    ],
)
def test_labels_that_are_not_class_ids_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        checks.class_labels(labels, num_classes=10)


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 9, 3]),
        np.array([0.0, 9.0]),
        np.eye(10)[[1, 2]],
        np.full((2, 10), 0.1),
    ],
    ids=["ids", "whole_floats", "one_hot", "soft"],
)
def test_class_ids_and_one_hot_or_soft_rows_pass(labels):
    checks.class_labels(labels, num_classes=10)


def dataset_of(train_labels, test_labels=(0, 1)):
    def split(labels):
        labels = np.asarray(labels)
        images = np.zeros((len(labels), 8, 8, 1), "float32")
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return Dataset("bad", split(train_labels), None, split(test_labels), 10, (8, 8, 1))


@pytest.mark.parametrize(
    "train_labels, message",
    [
        (np.array([0.0, 2.7, 1.0], "float32"), "non-integer labels such as 2.7"),
        (np.array([0.0, 2.0], "float32"), "float32 labels: .* cast them to int32"),
        (np.array([b"a", b"b"]), "string labels"),
        (np.array([0, 12]), r"labels in \[0, 12\]"),
        (np.array([3, 3, 3], "int32"), "only images of class 3: .* at least 2 classes"),
        (np.zeros((2, 10), "float32"), r"labels of shape \(10,\)"),
    ],
)
def test_a_dataset_with_bad_labels_is_refused_in_one_line(train_labels, message):
    with pytest.raises(ValueError, match=message) as error:
        check_dataset(dataset_of(train_labels))
    assert "\n" not in str(error.value)


def test_the_digits_dataset_refuses_a_validation_fraction():
    with pytest.raises(ValueError, match="own validation split.*leave it at 0"):
        data_module.load("digits", validation_fraction=0.1)


def test_distiller_fit_refuses_labels_that_are_not_class_ids():
    teacher = keras.saving.load_model(TEACHER)
    student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(teacher, student, KD())
    distiller.compile(optimizer="sgd")
    images = np.zeros((4, 8, 8, 1), "float32")
    for labels, message in (
        (np.full(4, 2.7), "fit\\(\\)'s `y` has non-integer labels"),
        (np.full(4, 12), r"labels in \[12, 12\]"),
        (np.array(["a"] * 4), "string labels"),
    ):
        with pytest.raises(ValueError, match=message):
            distiller.fit(images, labels, epochs=1, verbose=0)


# ----------------------------------------------------------------------------
# Strategies and TF_CONFIG
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{bad", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker"}}', "has no 'cluster' object"),
        ('{"cluster": {"worker": ["h:1"]}}', "whose 'type' is not one of"),
        (
            '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 3}}',
            "task index 3",
        ),
        ('{"cluster": {"worker": ["h"]}, "task": {"type": "worker"}}', "host:port"),
    ],
)
def test_a_malformed_tf_config_names_the_problem_and_the_form(
    tf_config, message, monkeypatch
):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message) as error:
        distribute.get_strategy("none")
    assert '"task": {"type": "worker", "index": 0}' in str(error.value)


def test_a_valid_tf_config_is_parsed(monkeypatch):
    cluster = {"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker"}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert distribute.tf_config() == cluster and distribute.task_name() == "worker_0"
    assert distribute.is_chief()


def test_strategy_tpu_without_a_tpu_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(
        ValueError, match="strategy 'tpu' found no TPU.*choose strategy"
    ):
        distribute.get_strategy("tpu")


# ----------------------------------------------------------------------------
# Teachers: probabilities taken for logits
# ----------------------------------------------------------------------------


def digits_test_images(count=64):
    return data_module.to_numpy(data_module.load("digits").test)[0][:count]


def with_head(head, path):
    """The shipped teacher with `head` on its logits, saved at `path`."""
    teacher = keras.saving.load_model(TEACHER)
    keras.Model(teacher.inputs[0], head(teacher.outputs[0])).save(path)
    return path


HEADS = {
    "softmax_layer": (lambda z: keras.layers.Softmax(name="probs")(z), "'probs' is a"),
    "dense_softmax": (
        lambda z: keras.layers.Dense(10, activation="softmax", name="head")(z),
        "'head' has activation='softmax'",
    ),
    "softmax_op": (lambda z: keras.ops.softmax(z) * 1.0, "rows >= 0 summing to 1"),
}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_a_teacher_that_outputs_probabilities_is_refused(head, tmp_path):
    make, where = HEADS[head]
    path = with_head(make, tmp_path / "teacher.keras")
    digits = data_module.load("digits")
    with pytest.raises(ValueError) as error:
        models.load_teacher(path, digits, images=digits_test_images())
    message = str(error.value)
    assert "outputs probabilities, not logits" in message and where in message
    assert "teacher.outputs='probabilities'" in message


def kd_float64(teacher_logits, student_logits, temperature):
    """`T^2 * mean KL(softmax(zt/T) || softmax(zs/T))` in float64."""

    def log_softmax(z):
        z = np.asarray(z, "float64") / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_t, log_s = log_softmax(teacher_logits), log_softmax(student_logits)
    return temperature**2 * np.mean(np.sum(np.exp(log_t) * (log_t - log_s), -1))


def test_a_probabilities_teacher_distils_from_its_log_probabilities(tmp_path):
    path = with_head(lambda z: keras.layers.Softmax()(z), tmp_path / "teacher.keras")
    digits, images = data_module.load("digits"), digits_test_images()
    teacher = models.load_teacher(path, digits, "probabilities", images=images)
    logits = keras.saving.load_model(TEACHER).predict(images, verbose=0)
    log_probabilities = teacher.predict(images, verbose=0)
    shifted = logits - np.log(np.exp(logits.astype("float64")).sum(-1, keepdims=True))
    np.testing.assert_allclose(log_probabilities, shifted, atol=1e-4)
    student_logits = np.random.default_rng(0).normal(size=logits.shape)
    for temperature in (1.0, 4.0):
        expected = kd_float64(logits, student_logits, temperature)
        got = KD(temperature).compute_loss(log_probabilities, student_logits)
        np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_a_logits_teacher_declared_as_probabilities_is_refused():
    digits = data_module.load("digits")
    with pytest.raises(ValueError, match="leave teacher.outputs at 'logits'"):
        models.load_teacher(
            TEACHER, digits, "probabilities", images=digits_test_images()
        )


def test_a_lambda_teacher_names_train_pys_real_fix(tmp_path):
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    )
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError) as error:
        models.load_teacher(tmp_path / "lambda.keras", data_module.load("digits"))
    message = str(error.value)
    assert "Lambda" in message and "keras.layers.Rescaling" in message
    assert "--unsafe_deserialization" not in message


# ----------------------------------------------------------------------------
# Through train.py and training.main, where a user meets them
# ----------------------------------------------------------------------------


def untrained_teacher(path):
    inputs = keras.Input((8, 8, 1))
    keras.utils.set_random_seed(0)
    outputs = keras.layers.Dense(10, kernel_initializer="zeros")(
        keras.layers.Flatten()(inputs)
    )
    keras.Model(inputs, outputs).save(path)  # every image: class 0
    return str(path)


def image_folder(root, classes, sizes=((6, 5),)):
    for split in ("train", "test"):
        for name in classes:
            for i, size in enumerate(sizes * 2):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image = np.full((*size, 3), 40 * i, np.uint8)
                path.write_bytes(tf.io.encode_png(image).numpy())
    return root


def train_py_refusals(tmp_path):
    """{case: (train.py arguments, what its one line says)}: the checks of
    train.py's own flags and config file, and one of the config's."""
    (tmp_path / "partial.py").write_text(
        "import ml_collections\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict({'epochs': 1})\n"
    )
    (tmp_path / "empty.py").write_text("x = 1\n")
    return {
        "logical_cpus": (["--logical_cpus=-1"], "--logical_cpus=-1 is negative"),
        "missing_keys": (
            [f"--config={tmp_path / 'partial.py'}"],
            "'checkpoint_every_steps'",
        ),
        "no_get_config": ([f"--config={tmp_path / 'empty.py'}"], "no get_config()"),
        "override_of_a_missing_key": (
            [f"--config={tmp_path / 'partial.py'}", "--config.export.formats="],
            "Unknown config key in the --config.* overrides: 'export'",
        ),
        "negative_alpha": (
            ["--config.loss.alpha=-2.0"],
            "loss.alpha must be a finite number >= 0, got -2.0",
        ),
    }


@pytest.mark.large
def test_train_py_refuses_each_bad_input_in_one_line(tmp_path):
    cases = train_py_refusals(tmp_path)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("TF_CONFIG", None)
    processes = {  # together: each spends most of its time importing TensorFlow
        case: subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *arguments,
                f"--workdir={tmp_path / case}",
            ],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (arguments, _) in cases.items()
    }
    for case, process in processes.items():
        stderr = process.communicate(timeout=600)[1]
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert process.returncode == 1, (case, stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in stderr, (case, stderr[-2000:])
        assert cases[case][1] in lines[0], (case, lines[0])
        assert not (tmp_path / case).exists(), case


def set_teacher(make):
    def change(config, tmp_path):
        config.teacher.update(path=str(make(tmp_path / "t.keras")), config="")

    return change


def set_folder(classes, sizes=((6, 5),)):
    def change(config, tmp_path):
        folder = image_folder(tmp_path / "images", classes, sizes)
        config.data.name = f"folder:{folder}"
        config.loss.method = "scratch"

    return change


def set_environment(**variables):
    def change(config, tmp_path):
        os.environ.update(variables)  # the test's monkeypatch restores it

    return change


# name: (change to the digits config, what the one line says)
TRAINING_REFUSALS = {
    "untrained_teacher": (
        set_teacher(untrained_teacher),
        r"is near chance on the test split of digits \(accuracy 0\.\d+, chance "
        r"0\.100\): set teacher\.path .* teacher\.allow_untrained=True",
    ),
    "softmax_teacher": (
        set_teacher(lambda path: with_head(lambda z: keras.layers.Softmax()(z), path)),
        "outputs probabilities, not logits .* teacher.outputs='probabilities'",
    ),
    "strategy_tpu": (
        lambda config, tmp_path: config.update(strategy="tpu"),
        "strategy 'tpu' found no TPU",
    ),
    "malformed_tf_config": (set_environment(TF_CONFIG="{bad"), "not valid JSON"),
    "digits_validation_fraction": (
        lambda config, tmp_path: config.data.update(validation_fraction=0.1),
        "digits dataset has its own validation split",
    ),
    "one_class_folder": (set_folder(["only"]), "only images of class 0"),
    "mixed_size_folder": (
        set_folder(["a", "b"], sizes=((6, 5), (7, 5))),
        "--config.data.image_size=SIZE",
    ),
}


@pytest.mark.large
@pytest.mark.parametrize("case", sorted(TRAINING_REFUSALS))
def test_training_refuses_before_writing_anything(case, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("TF_CONFIG", "")  # so a case's own value is undone
    change, message = TRAINING_REFUSALS[case]
    config = digits_config()
    change(config, tmp_path)
    assert training.main(config, tmp_path / "run") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ValueError: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.large
def test_a_softmax_teacher_trains_with_outputs_probabilities(tmp_path):
    path = with_head(lambda z: keras.layers.Softmax()(z), tmp_path / "teacher.keras")
    config = digits_config()
    config.teacher.update(path=str(path), config="", outputs="probabilities")
    summary = training.run(config, tmp_path / "run")
    shipped = keras.saving.load_model(TEACHER)
    test_images, test_labels = data_module.to_numpy(data_module.load("digits").test)
    test = tf.data.Dataset.from_tensor_slices((test_images, test_labels)).batch(256)
    expected = keras_cskd.metrics.evaluate_accuracy(shipped, test)
    assert summary["teacher_test_accuracy"] == expected
    assert summary["student_test_accuracy"] > 0.5  # the shipped run: 97% at 30 epochs
