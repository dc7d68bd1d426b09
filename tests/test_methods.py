"""Method recipes in real training: DKD's warm-up, STKD's mixup, two views,
teacher-logit caching, and every digits config through training.run."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import config as config_module
from keras_cskd import data, losses, training
from keras_cskd.distiller import cross_entropy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def teacher():
    return keras.saving.load_model(ROOT / "saved_models" / "digits_teacher.keras")


def frozen_distiller(teacher, loss, **kwargs):
    """A Distiller whose student does not move (lr 0): loss terms then only
    change through the loss itself."""
    keras.utils.set_random_seed(0)
    student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(teacher, student, loss, **kwargs)
    distiller.compile(keras.optimizers.SGD(0.0))
    return distiller


@pytest.mark.large
def test_dkd_warmup_scales_the_term_by_epoch_over_warmup(digits, teacher):
    distiller = frozen_distiller(teacher, losses.DKD(warmup_epochs=4))
    batches = data.pipeline(digits.train.take(128), 64)
    history = distiller.fit(batches, epochs=6, verbose=0).history
    per_epoch = np.array(history["distillation_loss"])
    np.testing.assert_allclose(
        per_epoch / per_epoch[-1], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0], rtol=1e-5
    )


def test_mixup_feeds_the_same_images_to_teacher_and_student(digits, teacher):
    # A student identical to the teacher: KD is zero exactly when both saw the
    # same (mixed) images, and the labels are mixed one-hot vectors.
    student = keras.models.clone_model(teacher)
    student.set_weights(teacher.get_weights())
    distiller = keras_cskd.Distiller(teacher, student, losses.KD())
    distiller.compile(keras.optimizers.SGD(0.0))
    mixed = data.pipeline(
        digits.train.take(128), 64, training=True, mixup_alpha=0.2, num_classes=10
    )
    images, labels = next(iter(mixed))
    np.testing.assert_allclose(tf.reduce_sum(labels, axis=-1), 1.0, rtol=1e-6)
    assert np.mean(np.max(labels, axis=-1) < 1.0) > 0.5  # really mixed
    # Dropout must be off for the identity to hold: evaluate uses inference.
    logs = distiller.evaluate(mixed, verbose=0, return_dict=True)
    assert logs["distillation_loss"] < 1e-6


def test_soft_label_cross_entropy_is_the_mixed_cross_entropy():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(16, 5)), tf.float32)
    y1, y2 = rng.integers(0, 5, 16), rng.integers(0, 5, 16)
    lam = 0.3
    soft = lam * np.eye(5)[y1] + (1 - lam) * np.eye(5)[y2]
    mixed = lam * cross_entropy(tf.constant(y1), logits) + (1 - lam) * cross_entropy(
        tf.constant(y2), logits
    )
    np.testing.assert_allclose(
        cross_entropy(tf.constant(soft, tf.float32), logits), mixed, rtol=1e-5
    )


@pytest.mark.large
def test_two_views_weight_every_term(digits, teacher):
    x, y = data.to_numpy(digits.train.take(64))
    one = frozen_distiller(teacher, losses.CSKD())
    two = frozen_distiller(teacher, losses.CSKD(), view_weights=(0.5, 1.0))
    single = one.fit(x, y, batch_size=64, epochs=1, verbose=0).history
    views = tf.data.Dataset.from_tensors(((x, x), y))
    double = two.fit(views, epochs=1, verbose=0).history
    for key in ("loss", "ce_loss", "distillation_loss"):
        np.testing.assert_allclose(double[key], 1.5 * np.array(single[key]), rtol=1e-5)
    np.testing.assert_allclose(double["accuracy"], single["accuracy"])


@pytest.mark.large
def test_cached_teacher_logits_train_exactly_like_the_teacher(digits, teacher):
    weights = []
    for train in (
        digits.train,
        data.with_teacher_logits(digits.train, teacher),
    ):
        keras.utils.set_random_seed(0)
        student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
        distiller = keras_cskd.Distiller(teacher, student, "cskd")
        distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        distiller.fit(
            data.pipeline(train, 64, training=True, seed=1), epochs=2, verbose=0
        )
        weights.append(student.get_weights())
    # Equal up to float32 rounding: the teacher's logits are computed in batches
    # of 256 for the cache and of 64 in the step, and oneDNN's convolution
    # kernels round the last bit differently for different batch sizes.
    for cached, computed in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, computed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options", [{"mixup_alpha": 0.2}, {"augmentation": keras.layers.RandomFlip()}]
)
def test_caching_is_refused_with_random_augmentation(digits, teacher, options):
    cached = data.with_teacher_logits(digits.train.take(8), teacher)
    with pytest.raises(ValueError, match="cannot be reused with random augmentation"):
        data.pipeline(cached, 4, training=True, num_classes=10, **options)


CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("digits_*.py"))
VARIANTS = {
    "cskd_multi_level_two_views": ("digits_cskd", {"two_views": True}, True),
    "cskd_cached": ("digits_cskd", {"cache_teacher_logits": True}, False),
}


@pytest.mark.large
@pytest.mark.parametrize("name", CONFIGS + sorted(VARIANTS))
def test_every_digits_config_runs_end_to_end(name, tmp_path):
    config_name, data_overrides, multi_level = VARIANTS.get(name, (name, {}, False))
    config = config_module.load_config(ROOT / "configs" / f"{config_name}.py")
    config.epochs = 1
    config.verbose = "0"
    config.export.formats = ""
    config.data.update(data_overrides)
    if multi_level:
        config.loss.multi_level = True
    if config.save_model_to:  # the teacher config: keep the shipped file as it is
        config.save_model_to = str(tmp_path / "teacher.keras")
    summary = training.run(config, tmp_path / "run")
    assert summary["last_epoch"] == 1
    assert (tmp_path / "run" / "student.keras").is_file()
