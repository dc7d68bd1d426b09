"""The Distiller's contract: frozen teacher, correct objective, logs, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import losses
from keras_cskd.data import digits_arrays
from keras_cskd.optimizers import TorchSGD


def tiny_models(num_classes=4, input_dim=6, seed=0):
    keras.utils.set_random_seed(seed)
    teacher = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(16),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(num_classes),
        ]
    )
    student = keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(num_classes),
        ]
    )
    return teacher, student


def random_data(n=32, input_dim=6, num_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, input_dim)).astype("float32")
    y = rng.integers(0, num_classes, size=n).astype("int32")
    return x, y


def numpy_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.large
def test_teacher_is_bitwise_unchanged_by_fit():
    teacher, student = tiny_models()
    before = [w.numpy().copy() for w in teacher.weights]  # incl. BN statistics
    distiller = keras_cskd.Distiller(teacher, student, losses.CSKD())
    distiller.compile(keras.optimizers.SGD(0.1))
    distiller.fit(*random_data(), batch_size=8, epochs=2, verbose=0)
    for old, new in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())
    assert not teacher.trainable
    assert distiller.trainable_variables == student.trainable_variables


@pytest.mark.parametrize(
    "loss",
    [losses.KD(), losses.CSKD(), losses.KD(temperature=losses.CSWT())],
    ids=["kd", "cskd_cswt", "kd_cswt"],
)
def test_student_gets_finite_nonzero_gradient_and_teacher_none(loss):
    teacher, student = tiny_models()
    x, y = random_data()
    with tf.GradientTape(persistent=True) as tape:
        distiller = keras_cskd.Distiller(teacher, student, loss)
        terms = distiller._combined_terms(
            tf.constant(y), [teacher(x, training=False)], [student(x, training=True)]
        )
    student_grads = tape.gradient(terms["loss"], student.trainable_variables)
    teacher_grads = tape.gradient(terms["loss"], teacher.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g)) for g in student_grads)
    assert any(np.abs(g).max() > 0 for g in student_grads)
    assert all(g is None for g in teacher_grads)


def test_logged_terms_equal_the_objective_recomputed_in_numpy():
    teacher, student = tiny_models()
    x, y = random_data()
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        losses.KD(temperature=3.0),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
    )
    distiller.compile(keras.optimizers.SGD(0.0))
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    zt = teacher.predict(x, verbose=0).astype("float64")
    zs = student.predict(x, verbose=0).astype("float64")
    ce = -numpy_log_softmax(zs)[np.arange(len(y)), y].mean()
    log_pt, log_ps = numpy_log_softmax(zt / 3), numpy_log_softmax(zs / 3)
    kd = 9 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1).mean()
    np.testing.assert_allclose(logs["ce_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.1 * ce + 0.9 * kd, rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], np.mean(zs.argmax(-1) == y))


@pytest.mark.large
def test_epoch_logs_weight_batches_by_size_and_list_the_loss_first():
    teacher, student = tiny_models()
    x, y = random_data()
    x, y = x[:10], y[:10]
    distiller = keras_cskd.Distiller(teacher, student, losses.KD())
    distiller.compile(keras.optimizers.SGD(0.0))
    whole = distiller.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    # Batches of 4, 4 and 2: per-sample terms average back to the whole batch.
    listed = distiller.evaluate(x, y, batch_size=4, verbose=0)
    names = ("loss", "accuracy", "ce_loss", "distillation_loss")
    np.testing.assert_allclose(listed, [whole[name] for name in names], rtol=1e-5)


@pytest.mark.large
def test_one_hot_labels_give_the_same_step_as_integer_labels():
    x, y = random_data()
    results = []
    for labels in (y, np.eye(4, dtype="float32")[y]):
        teacher, student = tiny_models()
        distiller = keras_cskd.Distiller(teacher, student, losses.CSKD())
        distiller.compile(keras.optimizers.SGD(0.1))
        logs = distiller.fit(x, labels, batch_size=8, epochs=1, verbose=0).history
        results.append(([w.numpy() for w in student.weights], logs))
    for a, b in zip(results[0][0], results[1][0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for key in ("loss", "ce_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], rtol=1e-6)


@pytest.mark.large
def test_distillation_on_digits_learns_and_the_student_reloads(tmp_path):
    splits = digits_arrays()
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    teacher = keras.saving.load_model("saved_models/digits_teacher.keras")
    keras.utils.set_random_seed(0)
    student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(teacher, student, losses.CSKD())
    distiller.compile(keras.optimizers.Adam(1e-2))
    history = distiller.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    test_logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert test_logs["accuracy"] > 0.85  # chance is 0.10
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        reloaded.predict(x_test, verbose=0), student.predict(x_test, verbose=0)
    )


@pytest.mark.large
def test_mixed_precision_trains_in_float16_with_float32_losses():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        teacher, student = tiny_models()
        distiller = keras_cskd.Distiller(teacher, student, losses.CSKD())
        distiller.compile(keras.optimizers.SGD(0.1))
        assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
        history = distiller.fit(*random_data(), batch_size=8, epochs=2, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert student.layers[0].compute_dtype == "float16"
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(w.dtype == "float32" for w in student.trainable_variables)


def test_distiller_round_trips_through_get_config_and_a_keras_file(tmp_path):
    teacher, student = tiny_models()
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        losses.CSKD(cswt=losses.CSWT(1.5, 5.0)),
        student_loss_weight=0.5,
        distillation_loss_weight=2.0,
    )
    config = distiller.get_config()
    clone = keras_cskd.Distiller.from_config(config)
    assert (
        clone.distillation_loss.get_config() == distiller.distillation_loss.get_config()
    )
    assert (clone.student_loss_weight, clone.distillation_loss_weight) == (0.5, 2.0)
    x, _ = random_data()
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )


def test_keras_own_distillation_losses_also_work():
    teacher, student = tiny_models()
    loss = keras.distillation.LogitsDistillation(
        temperature=2.0, loss=keras.losses.KLDivergence()
    )
    distiller = keras_cskd.Distiller(teacher, student, loss)
    distiller.compile(keras.optimizers.SGD(0.1))
    history = distiller.fit(*random_data(), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["distillation_loss"][0])


def test_epoch_variable_follows_fit():
    seen = []

    class RecordEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(self.model.epoch.numpy()))

    teacher, student = tiny_models()
    distiller = keras_cskd.Distiller(teacher, student, "kd")
    distiller.compile(keras.optimizers.SGD(0.1))
    distiller.fit(
        *random_data(), batch_size=8, epochs=3, verbose=0, callbacks=[RecordEpoch()]
    )
    assert seen == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda t, s: keras_cskd.Distiller(
                t, keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)]), "kd"
            ),
            "predicts 4 classes",
        ),
        (
            lambda t, s: keras_cskd.Distiller(
                t, keras.Sequential([keras.Input((7,)), keras.layers.Dense(4)]), "kd"
            ),
            "inputs of shape",
        ),
        (
            lambda t, s: keras_cskd.Distiller(t, s, "nope"),
            "Unknown distillation method",
        ),
        (lambda t, s: keras_cskd.Distiller(t, s, 3.0), "must be a keras.distillation"),
        (lambda t, s: keras_cskd.Distiller("t", s, "kd"), "must be a keras.Model"),
        (
            lambda t, s: keras_cskd.Distiller(t, s, "kd", student_loss_weight=-1),
            "student_loss_weight",
        ),
    ],
    ids=[
        "classes",
        "input_shape",
        "unknown_loss",
        "not_a_loss",
        "not_a_model",
        "negative_weight",
    ],
)
def test_bad_construction_names_the_problem(make, message):
    teacher, student = tiny_models()
    with pytest.raises(ValueError, match=message):
        make(teacher, student)


def test_sample_weights_and_compile_loss_are_refused_clearly():
    teacher, student = tiny_models()
    distiller = keras_cskd.Distiller(teacher, student, "cskd")
    with pytest.raises(ValueError, match="computes its own loss"):
        distiller.compile("sgd", loss="mse")
    distiller.compile("sgd")
    x, y = random_data()
    with pytest.raises(ValueError, match="does not take sample weights"):
        distiller.fit(x, y, sample_weight=np.ones(len(y)), epochs=1, verbose=0)


def test_labels_out_of_range_name_the_label_and_the_valid_range():
    teacher, student = tiny_models()
    distiller = keras_cskd.Distiller(teacher, student, "kd")
    distiller.compile("sgd")
    x, y = random_data()
    y[3] = 12
    with pytest.raises(ValueError, match=r"12\], outside the \d+ classes \[0, \d+\]"):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.large
@pytest.mark.parametrize(
    "compile_options",
    [{"steps_per_execution": 3}, {"jit_compile": True}],
    ids=["steps_per_execution", "xla"],
)
def test_compile_options_train_like_the_default_step(compile_options):
    x, y = random_data()
    results = []
    for options in ({}, compile_options):
        teacher, student = tiny_models()
        distiller = keras_cskd.Distiller(teacher, student, losses.CSKD())
        distiller.compile(keras.optimizers.SGD(0.1, momentum=0.9), **options)
        history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        assert int(distiller.optimizer.iterations) == 8  # 4 batches x 2 epochs
        results.append(([w.numpy() for w in student.weights], history.history))
    assert distiller.jit_compile == compile_options.get("jit_compile", False)
    for default, other in zip(results[0][0], results[1][0], strict=True):
        np.testing.assert_allclose(other, default, rtol=1e-5, atol=1e-6)
    for key in ("loss", "ce_loss", "distillation_loss", "accuracy"):
        # XLA fuses and reorders float32 arithmetic: agreement to ~1e-5.
        np.testing.assert_allclose(results[1][1][key], results[0][1][key], rtol=1e-4)


@pytest.mark.large
def test_a_saved_and_reloaded_distiller_trains_on_like_an_uninterrupted_one(tmp_path):
    """`save` then `keras.saving.load_model` keeps the optimizer, its state and
    the epoch: fit, save, load, fit equals one uninterrupted fit."""
    x, y = random_data()

    def distiller():
        teacher, student = tiny_models()
        model = keras_cskd.Distiller(teacher, student, losses.DKD(warmup_epochs=4))
        model.compile(TorchSGD(0.05, momentum=0.9, weight_decay=5e-4))
        return model

    uninterrupted = distiller()
    uninterrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first = distiller()
    first.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(loaded.optimizer, TorchSGD)
    loaded.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    for ours, theirs in zip(
        loaded.student.weights, uninterrupted.student.weights, strict=True
    ):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.large
def test_keras_callbacks_maximise_the_accuracy_with_their_default_mode(tmp_path):
    x, y = random_data()
    teacher, student = tiny_models()
    distiller = keras_cskd.Distiller(teacher, student, losses.KD())
    distiller.compile(keras.optimizers.SGD(0.05))
    checkpoint = keras.callbacks.ModelCheckpoint(
        tmp_path / "best.weights.h5",
        monitor="val_accuracy",
        save_best_only=True,
        save_weights_only=True,
    )
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=50)
    history = distiller.fit(
        x,
        y,
        validation_data=(x[:16], y[:16]),
        epochs=4,
        callbacks=[checkpoint, stopping],
        verbose=0,
    )
    assert checkpoint.best == max(history.history["val_accuracy"])
    assert stopping.best == max(history.history["val_accuracy"])
