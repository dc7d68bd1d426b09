"""The Distiller runs the teacher in training mode for a loss that asks for it.

mdistiller's OFD overrides `train()` and so trains with the teacher's BatchNorm
on batch statistics, its running statistics moving (momentum 0.1 in PyTorch's
terms); `OFD(teacher_batch_statistics=False)` is the clean variant.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_cskd
from keras_cskd.losses import KD, OFD
from keras_cskd.models import TorchBatchNormalization


class TrainingModeKD(KD):
    teacher_in_training_mode = True


def _models():
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(6, name="hidden"),
            TorchBatchNormalization(name="bn"),
            keras.layers.Dense(3),
        ]
    )
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return teacher, student


def _batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 4)).astype("float32") + 2.0, np.arange(8) % 3


def _step(loss):
    teacher, student = _models()
    distiller = keras_cskd.Distiller(teacher, student, loss)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [v.numpy().copy() for v in teacher.weights]
    x, y = _batch()
    distiller.train_on_batch(x, y)
    return teacher, before, x


def test_teacher_batch_norm_uses_and_moves_batch_statistics():
    teacher, before, x = _step(TrainingModeKD())
    bn = teacher.get_layer("bn")
    hidden = teacher.get_layer("hidden")(x).numpy().astype(np.float64)
    mean, variance = hidden.mean(0), hidden.var(0, ddof=1)  # PyTorch's running_var
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5
    )
    for variable, old in zip(teacher.weights, before, strict=True):
        if "moving" not in variable.path:
            np.testing.assert_array_equal(variable.numpy(), old)  # no gradient
    assert not bn.trainable and not teacher.trainable_weights


def test_clean_variant_and_evaluation_keep_the_teacher_in_inference_mode():
    x, y = _batch()
    for loss, training in ((KD(), True), (TrainingModeKD(), False)):
        teacher, student = _models()
        before = [v.numpy().copy() for v in teacher.weights]
        keras_cskd.Distiller(teacher, student, loss).compute_loss(
            x, y, training=training
        )
        for variable, old in zip(teacher.weights, before, strict=True):
            np.testing.assert_array_equal(variable.numpy(), old)


def test_ofd_asks_for_the_teacher_in_training_mode_unless_told_otherwise():
    assert OFD().teacher_in_training_mode
    assert not OFD(teacher_batch_statistics=False).teacher_in_training_mode


def test_teacher_in_training_mode_gets_no_gradient_under_a_tape():
    teacher, student = _models()
    distiller = keras_cskd.Distiller(teacher, student, TrainingModeKD())
    x, y = _batch()
    with tf.GradientTape() as tape:
        loss = distiller.compute_loss(x, y, training=True)
    gradients = tape.gradient(loss, teacher.weights)
    assert all(g is None for g in gradients)
