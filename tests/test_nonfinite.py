"""A NaN or infinite value is never hidden: every logged term is the true value
in `fit`, `evaluate`, `compute_loss` and the CSV and TensorBoard logs, and
`StopOnNonFiniteLoss` stops at the first non-finite step, before a checkpoint
of the corrupted weights, naming the term and the step."""

import csv
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import callbacks, checkpointing, training
from keras_cskd import config as config_module
from keras_cskd.metrics import Means

ROOT = Path(__file__).resolve().parents[1]
TERMS = ("loss", "ce_loss", "distillation_loss")


@pytest.fixture(scope="module")
def digits():
    """64 digits training images and their labels."""
    images, labels = keras_cskd.data.to_numpy(keras_cskd.data.load("digits").train)
    return images[:64].copy(), labels[:64]


@pytest.fixture(scope="module")
def teacher():
    return keras.saving.load_model(ROOT / "saved_models" / "digits_teacher.keras")


def distiller_of(teacher, learning_rate=0.01, loss=None, student=None):
    keras.utils.set_random_seed(0)
    student = student or keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(teacher, student, loss or keras_cskd.losses.CSKD())
    distiller.compile(keras.optimizers.SGD(learning_rate))
    return distiller


def with_pixel(images, value):
    damaged = images.copy()
    damaged[3, 0, 0, 0] = value
    return damaged


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_non_finite_pixel_shows_in_fit_evaluate_compute_loss_and_the_logs(
    digits, teacher, value, tmp_path
):
    images, labels = digits
    damaged = with_pixel(images, value)
    distiller = distiller_of(teacher)
    history = distiller.fit(
        damaged,
        labels,
        batch_size=64,
        epochs=1,
        verbose=0,
        callbacks=[
            keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
            keras.callbacks.TensorBoard(str(tmp_path / "tensorboard")),
        ],
    )
    for term in TERMS:
        assert not np.isfinite(history.history[term][0]), term
    with open(tmp_path / "log.csv") as file:
        row = next(csv.DictReader(file))
    for term in TERMS:
        assert not np.isfinite(float(row[term])), (term, row[term])
    logged = tensorboard_epoch_values(tmp_path / "tensorboard" / "train")
    for term in TERMS:
        assert not np.isfinite(logged[f"epoch_{term}"]), term
    # The student the step corrupted is non-finite on clean images too, and
    # every way of reading its loss says so.
    assert not np.isfinite(keras.ops.convert_to_numpy(distiller.student(images))).all()
    assert not np.isfinite(float(distiller.compute_loss(x=images, y=labels)))
    evaluated = distiller.evaluate(images, labels, verbose=0, return_dict=True)
    for term in TERMS:
        assert not np.isfinite(evaluated[term]), term


def max_pooling_model(seed):
    """Convolution, ReLU and a global max: XLA's max drops a NaN."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    pooled = keras.layers.GlobalMaxPooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(10)(pooled))


def test_a_nan_pixel_is_nan_in_the_logs_of_a_compiled_step_that_drops_it(digits):
    """Under XLA (`jit_compile=True`, Keras's default on GPUs and on JAX) the
    max pooling drops the NaN pixel, so the step computes finite terms while
    its gradient writes NaN into the convolution; the logs still say NaN."""
    images, labels = digits
    teacher = max_pooling_model(seed=1)
    distiller = keras_cskd.Distiller(teacher, max_pooling_model(seed=2), "cskd")
    distiller.compile("sgd", jit_compile=True)
    history = distiller.fit(
        with_pixel(images, np.nan), labels, batch_size=64, epochs=1, verbose=0
    )
    for term in TERMS:
        assert np.isnan(history.history[term][0]), term
    kernel = keras.ops.convert_to_numpy(distiller.student.weights[0])
    assert np.isnan(kernel).any()
    # Its evaluation is compiled too, and its weights are NaN.
    evaluated = distiller.evaluate(images, labels, verbose=0, return_dict=True)
    for term in TERMS:
        assert np.isnan(evaluated[term]), term


def tensorboard_epoch_values(directory):
    """{tag: last value} of the scalars Keras's TensorBoard callback wrote."""
    values = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values[value.tag] = float(tf.make_ndarray(value.tensor))
    return values


def test_evaluate_counts_rows_with_non_finite_logits_as_wrong(digits, teacher):
    """The accuracy is the NumPy one where a NaN row is never right (the
    argmax of NaN logits depends on the backend)."""
    images, labels = digits
    distiller = distiller_of(teacher)
    damaged = with_pixel(images, np.nan)
    evaluated = distiller.evaluate(damaged, labels, verbose=0, return_dict=True)
    logits = np.asarray(distiller.student(damaged), dtype=np.float64)
    finite = np.isfinite(logits).all(axis=-1)
    assert finite.sum() == 63
    expected = np.mean((np.argmax(logits, axis=-1) == labels) & finite)
    assert evaluated["accuracy"] == pytest.approx(expected)
    assert np.isnan(evaluated["loss"])


def test_an_overflowing_learning_rate_is_stopped_at_its_first_non_finite_step(
    digits, teacher
):
    images, labels = digits
    distiller = distiller_of(teacher, learning_rate=1e30)
    later = StepRecorder()
    with pytest.raises(
        callbacks.NonFiniteLossError, match=r"at epoch 1, step 2: lower the"
    ) as error:
        distiller.fit(
            images,
            labels,
            batch_size=16,
            epochs=1,
            verbose=0,
            callbacks=[callbacks.StopOnNonFiniteLoss(), later],
        )
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("The ce_loss became nan")
    assert later.steps == [1]  # the callbacks after it never saw step 2


class StepRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(batch + 1)


class EuclideanDistance(keras_cskd.losses.KD):
    """`mean ||t - s||`: finite at t == s, where its gradient is NaN (the
    derivative of sqrt at 0), as in a user's own feature distance."""

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        squared = keras.ops.sum((teacher_logits - student_logits) ** 2, axis=-1)
        return keras.ops.mean(keras.ops.sqrt(squared))


def test_weights_made_non_finite_under_a_finite_loss_are_stopped(digits):
    """The student starts as the teacher (an MLP: no dropout, no BatchNorm):
    the loss is finite (0) and its gradient NaN, so only the weights show
    that the step went wrong."""
    images, labels = digits
    teacher = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    student.set_weights(teacher.get_weights())
    distiller = distiller_of(teacher, loss=EuclideanDistance(), student=student)
    later = StepRecorder()
    with pytest.raises(
        callbacks.NonFiniteLossError,
        match=r"^The weights became NaN or infinite \(\d+ in .*\) while the loss "
        r"was finite at epoch 1, step 1: ",
    ):
        distiller.fit(
            images,
            labels,
            batch_size=64,
            epochs=1,
            verbose=0,
            callbacks=[callbacks.StopOnNonFiniteLoss(), later],
        )
    assert later.steps == []


def test_a_resumed_fit_numbers_its_steps_within_the_epoch(digits, teacher):
    images, labels = digits
    distiller = distiller_of(teacher, learning_rate=1e30)
    with pytest.raises(callbacks.NonFiniteLossError, match=r"epoch 3, step 7: "):
        distiller.fit(
            images,
            labels,
            batch_size=16,
            epochs=3,
            initial_epoch=2,
            verbose=0,
            callbacks=[callbacks.StopOnNonFiniteLoss(first_step=5)],
        )


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_means_keep_a_non_finite_value_for_the_rest_of_the_epoch(value):
    means = Means(("loss", "accuracy"))
    means.update_state({"loss": 2.0, "accuracy": 0.5}, num_samples=4)
    means.update_state({"loss": value, "accuracy": 0.5}, num_samples=4)
    means.update_state({"loss": 1.0, "accuracy": 1.0}, num_samples=8)
    result = {name: float(v) for name, v in means.result().items()}
    np.testing.assert_equal(result["loss"], value)
    assert result["accuracy"] == pytest.approx(0.75)


def test_the_mean_of_no_samples_is_nan_not_zero():
    assert np.isnan(float(Means(("loss",)).result()["loss"]))


def digits_config(learning_rate):
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.update(
        {"epochs": 1, "checkpoint_every_steps": 1, "verbose": "0"},
    )
    config.export.formats = ""
    config.optimizer.learning_rate = learning_rate
    return config


@pytest.mark.large
def test_train_py_stops_before_checkpointing_corrupted_weights(tmp_path, capsys):
    """An overflowing learning rate (`--config.optimizer.learning_rate=1e30`,
    through what train.py runs): exit code 1, one line naming the term, the
    step and the last good checkpoint, which holds finite weights; a rerun
    with a sane learning rate is refused (a resume keeps its config)."""
    workdir = tmp_path / "run"
    assert training.main(digits_config(1e30), workdir) == 1
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1
    assert stderr.startswith(
        "error: NonFiniteLossError: The ce_loss became nan at epoch 1, step 2: "
    )
    assert f"The last good checkpoint, {workdir / 'checkpoint'} (epoch 1, step 1)" in (
        stderr
    )
    metadata, arrays = checkpointing.load(workdir / "checkpoint")
    assert (metadata["epoch"], metadata["step"]) == (0, 1)
    for index, array in enumerate(arrays):
        if np.issubdtype(array.dtype, np.floating):
            assert np.isfinite(array).all(), metadata["variables"][index]
    assert not (workdir / "summary.json").exists()

    assert training.main(digits_config(0.05), workdir) == 1
    assert "optimizer.learning_rate: 1e+30 in the checkpoint, 0.05 now" in (
        capsys.readouterr().err
    )
