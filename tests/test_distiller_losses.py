"""What the Distiller gives its losses: layers, several weighted losses, the
epoch, and the refusals of what it cannot honour."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import losses, metrics


def conv_model(width, name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


@pytest.fixture(scope="module")
def models():
    return conv_model(8, "teacher", 0), conv_model(8, "student", 1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 32)


def features(model, x):
    layer = model.get_layer("features").output
    return keras.Model(model.inputs, layer).predict(x, verbose=0).astype("float64")


def attention(f):
    a = (f**2).mean(-1).reshape(len(f), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def evaluate(distiller, x, y):
    distiller.compile("sgd")
    return distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda: keras.distillation.FeatureDistillation("mse", "features", "features"),
        lambda: losses.FeatureDistillation("mse", "features", "features"),
    ],
    ids=["keras", "ours"],
)
def test_feature_distillation_compares_the_named_layers(models, data, make_loss):
    teacher, student = models
    logs = evaluate(keras_cskd.Distiller(teacher, student, make_loss()), *data)
    expected = np.mean((features(teacher, data[0]) - features(student, data[0])) ** 2)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


def test_attention_transfer_compares_the_named_layers(models, data):
    teacher, student = models
    loss = losses.AttentionTransfer("features", "features")
    logs = evaluate(keras_cskd.Distiller(teacher, student, loss), *data)
    at_t, at_s = (
        attention(features(teacher, data[0])),
        attention(features(student, data[0])),
    )
    np.testing.assert_allclose(
        logs["distillation_loss"], np.mean((at_s - at_t) ** 2), rtol=1e-5
    )


def test_several_losses_log_each_and_weight_their_sum(models, data):
    teacher, student = models
    several = [losses.KD(), losses.FeatureDistillation("mse", "features", "features")]
    distiller = keras_cskd.Distiller(
        teacher, student, several, distillation_loss_weight=[0.5, 3.0]
    )
    logs = evaluate(distiller, *data)
    kd = evaluate(keras_cskd.Distiller(teacher, student, losses.KD()), *data)
    assert logs["kd_loss"] == pytest.approx(kd["distillation_loss"], rel=1e-5)
    combined = 0.5 * logs["kd_loss"] + 3.0 * logs["feature_distillation_loss"]
    assert logs["distillation_loss"] == pytest.approx(combined, rel=1e-5)
    assert logs["loss"] == pytest.approx(logs["ce_loss"] + combined, rel=1e-5)


def test_a_regressor_trains_with_the_student_and_reloads(models, data, tmp_path):
    teacher, student = models
    loss = losses.FeatureDistillation("mse", "features", "features", regressor=True)
    distiller = keras_cskd.Distiller(teacher, keras.models.clone_model(student), loss)
    distiller.compile(keras.optimizers.SGD(0.1))
    regressor = loss.layers[0]
    before = regressor.kernel.numpy().copy()
    distiller.fit(*data, batch_size=16, verbose=0)
    assert np.abs(regressor.kernel.numpy() - before).max() > 1e-4
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    np.testing.assert_array_equal(
        loaded.distillation_loss.layers[0].kernel.numpy(), regressor.kernel.numpy()
    )
    assert loaded.predict(data[0][:4], verbose=0).shape == (4, 10)


def test_epoch_is_given_to_train_on_batch_or_refused(data):
    teacher, student = conv_model(8, "teacher", 0), conv_model(8, "student", 1)
    distiller = keras_cskd.Distiller(teacher, student, losses.DKD(warmup_epochs=20))
    distiller.compile(keras.optimizers.SGD(0.0))
    with pytest.raises(ValueError, match=r"train_on_batch\(\.\.\., epoch=N\)"):
        distiller.train_on_batch(*data)
    at_3 = distiller.train_on_batch(*data, epoch=3, return_dict=True)
    at_20 = distiller.train_on_batch(*data, epoch=20, return_dict=True)
    # DKD's warm-up factor is min(epoch / 20, 1); the learning rate is 0.
    assert at_3["distillation_loss"] == pytest.approx(
        at_20["distillation_loss"] * 3 / 20, rel=1e-5
    )


def one_line_error(call):
    with pytest.raises(ValueError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_what_the_distiller_cannot_honour_is_refused(models, data):
    teacher, student = models
    x, y = data
    keras_spelling = one_line_error(
        lambda: keras_cskd.Distiller(
            teacher, student, distillation_losses=[losses.KD()]
        )
    )
    assert "takes `distillation_loss` (one loss or a list)" in keras_spelling
    missing = one_line_error(
        lambda: keras_cskd.Distiller(
            teacher, student, losses.AttentionTransfer("features", "nope")
        )
    )
    assert "AttentionTransfer: the student has no layer 'nope'" in missing
    wrong_count = one_line_error(
        lambda: keras_cskd.Distiller(
            teacher, student, ["kd", "cskd"], distillation_loss_weight=[1.0]
        )
    )
    assert "one weight per loss" in wrong_count
    cached = keras_cskd.Distiller(
        teacher, student, losses.FeatureDistillation("mse", "features", "features")
    )
    cached.compile("sgd")
    batch = {"images": x, "teacher_logits": teacher.predict(x, verbose=0)}
    with pytest.raises(ValueError, match="Cached teacher logits carry no teacher"):
        cached.train_on_batch(batch, y)


class Empty(keras.utils.PyDataset):
    def __len__(self):
        return 0

    def __getitem__(self, index):
        raise IndexError(index)


def dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


@pytest.mark.parametrize(
    "empty",
    [
        lambda x, y: (x[:0], y[:0]),
        lambda x, y: (dataset(x, y).batch(8).take(0),),
        lambda x, y: (Empty(),),
        lambda x, y: (dataset(x, y).filter(lambda *_: False).batch(8),),
    ],
    ids=["arrays", "dataset", "py_dataset", "filtered_unknown_size"],
)
def test_empty_training_data_is_refused(models, data, empty):
    teacher, student = models
    distiller = keras_cskd.Distiller(teacher, student, "kd")
    distiller.compile("sgd")
    message = one_line_error(lambda: distiller.fit(*empty(*data), verbose=0))
    assert "empty" in message


def test_a_path_given_as_training_data_is_refused_with_the_loader(models):
    distiller = keras_cskd.Distiller(*models, "kd")
    distiller.compile("sgd")
    message = one_line_error(lambda: distiller.fit("data/train", verbose=0))
    assert "keras_cskd.data.load('folder:data/train')" in message


def test_accuracy_on_a_batched_dataset_equals_accuracy_on_its_arrays(models, data):
    student = models[1]
    x, y = data
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)  # a short last one
    logits = student.predict(x, verbose=0)
    expected = float(np.mean(np.argmax(logits, axis=-1) == y))
    assert metrics.evaluate_accuracy(student, batches) == pytest.approx(expected)
