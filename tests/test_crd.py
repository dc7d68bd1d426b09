"""CRD against mdistiller's CRD (tests/golden/crd.npz, made by make_crd.py)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_cskd
from keras_cskd import losses
from keras_cskd.models.porting import load_torch_state_dict
from keras_cskd.optimizers import EpochStepDecay, TorchSGD

FIXTURE = dict(np.load(Path(__file__).parent / "golden" / "crd.npz"))


def _fixture(prefix):
    return {k[len(prefix) :]: v for k, v in FIXTURE.items() if k.startswith(prefix)}


def _relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


def port_state(loss, fixture, prefix):
    """The reference's embeddings and banks into `loss` (built)."""
    for name, layer in (
        ("embed_s", loss.student_embedding),
        ("embed_t", loss.teacher_embedding),
    ):
        layer.kernel.assign(fixture[f"{prefix}{name}_kernel"])
        layer.bias.assign(fixture[f"{prefix}{name}_bias"])
    loss.memory.student_memory.assign(fixture[f"{prefix}memory_v1"])
    loss.memory.teacher_memory.assign(fixture[f"{prefix}memory_v2"])


def forward_loss():
    fixture = _fixture("forward/")
    loss = losses.CRD(
        int(fixture["num_data"]), num_negatives=int(fixture["k"]), feature_dim=128
    )
    loss.adapt(fixture["labels"])
    loss.build((None, 48), (None, 32))
    port_state(loss, fixture, "initial_")
    return loss, fixture


def test_forward_train_equals_the_reference_two_batches_in_a_row():
    """Value, gradients, the banks' update and Z (set on the first batch only)."""
    loss, fixture = forward_loss()
    weight = fixture["weight"]
    for b in (0, 1):
        student = tf.constant(fixture[f"student{b}"])
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = weight * loss.compute_loss(
                tf.constant(fixture[f"teacher{b}"]),
                student,
                sample_indices=fixture[f"index{b}"],
                contrast_indices=fixture[f"contrast_index{b}"],
            )
        variables = [
            student,
            loss.student_embedding.kernel,
            loss.teacher_embedding.kernel,
        ]
        gradients = tape.gradient(value, variables)
        assert value.shape == () and tuple(fixture["shape"]) == (1,)
        assert _relative_error(value, fixture[f"loss_kd{b}"][0]) < 1e-5
        for gradient, key in zip(
            gradients, ("student", "embed_s_kernel", "embed_t_kernel"), strict=True
        ):
            assert _relative_error(gradient, fixture[f"grad_{key}{b}"]) < 1e-5, key
        memory = loss.memory
        assert (
            _relative_error(memory.student_memory, fixture[f"after{b}_memory_v1"])
            < 1e-5
        )
        assert (
            _relative_error(memory.teacher_memory, fixture[f"after{b}_memory_v2"])
            < 1e-5
        )
        z = [float(memory.student_z), float(memory.teacher_z)]
        assert _relative_error(z, fixture[f"after{b}_z"]) < 1e-5
    np.testing.assert_array_equal(fixture["after0_z"], fixture["after1_z"])


def test_extra_parameters_count_as_get_extra_parameters():
    loss, fixture = forward_loss()
    assert loss.extra_parameters == int(fixture["extra_parameters"])


def _drawing_loss(mode="exact", seed=0, num_negatives=400):
    labels = np.arange(60) % 4
    loss = losses.CRD(
        60, feature_dim=4, num_negatives=num_negatives, mode=mode, seed=seed
    )
    loss.adapt(labels)
    loss.build((None, 3), (None, 3))
    return loss, labels


def test_exact_negatives_are_the_other_classes_uniformly_and_the_positive_itself():
    loss, labels = _drawing_loss()
    indices = np.array([0, 5, 10, 59], "int32")
    drawn = ops.convert_to_numpy(loss.draw_contrast_indices(indices))
    assert drawn.shape == (4, 401)
    np.testing.assert_array_equal(drawn[:, 0], indices)
    for row, index in zip(drawn, indices, strict=True):
        negatives = row[1:]
        assert np.all(labels[negatives] != labels[index])
        # Every one of the 45 examples of the other classes is drawn.
        assert set(negatives) == set(np.flatnonzero(labels != labels[index]))


def test_exact_negatives_are_distinct_when_a_class_has_enough_others():
    """The reference's `np.random.choice(..., replace=False)` while K is at
    most the other classes' count (45 here): K distinct other-class rows,
    every example as likely (each drawn 30/45 of the time)."""
    loss, labels = _drawing_loss(num_negatives=30)
    indices = np.repeat(np.array([0, 7], "int32"), 150)
    counts = np.zeros(60)
    for step in range(4):
        loss.memory.draws.assign(step)
        drawn = ops.convert_to_numpy(loss.draw_contrast_indices(indices))
        for row, index in zip(drawn, indices, strict=True):
            negatives = row[1:]
            assert len(set(negatives)) == 30
            assert np.all(labels[negatives] != labels[index])
            counts[negatives] += 1
    # A class-1 example is another class's for all 1200 rows, drawn by each
    # with probability 30/45: mean 800, binomial sd 16.3.
    drawn_counts = counts[labels == 1]
    assert np.all(np.abs(drawn_counts - 1200 * 30 / 45) < 80), drawn_counts


def test_draws_are_a_function_of_the_seed_and_the_step_alone():
    first, _ = _drawing_loss(seed=3)
    again, _ = _drawing_loss(seed=3)
    other, _ = _drawing_loss(seed=4)
    indices = np.arange(6, dtype="int32")

    def draw(loss):
        return ops.convert_to_numpy(loss.draw_contrast_indices(indices))

    np.testing.assert_array_equal(draw(first), draw(again))
    assert not np.array_equal(draw(first), draw(other))
    before = draw(first)
    first.memory.draws.assign(1)  # the next step draws anew
    assert not np.array_equal(before, draw(first))


def test_relax_positives_are_examples_of_the_same_class():
    loss, labels = _drawing_loss(mode="relax")
    indices = np.arange(8, dtype="int32")
    drawn = ops.convert_to_numpy(loss.draw_contrast_indices(indices))
    np.testing.assert_array_equal(labels[drawn[:, 0]], labels[indices])


def test_per_batch_normalizer_keeps_no_z():
    loss = losses.CRD(20, feature_dim=4, num_negatives=5, normalizer="per_batch")
    loss.adapt(np.arange(20) % 3)
    teacher, student = (
        keras.random.normal((4, 8), seed=0),
        keras.random.normal((4, 6), seed=1),
    )
    loss.compute_loss(teacher, student, sample_indices=np.arange(4))
    assert float(loss.memory.student_z) == -1.0


def test_a_wrong_number_of_labels_and_options_are_refused_in_one_line():
    with pytest.raises(ValueError, match="built for 10 examples but adapt\\(\\) got 9"):
        losses.CRD(10).adapt(np.zeros(9))
    with pytest.raises(ValueError, match="'exact' or 'relax'"):
        losses.CRD(10, mode="exactly")


def test_config_round_trip():
    loss = losses.CRD(10, "pooled_feat", "pooled_feat", num_negatives=7, seed=2)
    restored = losses.CRD.from_config(loss.get_config())
    assert restored.get_config() == loss.get_config()
    assert losses.get("crd", num_examples=10).num_negatives == 16384


def _resnet8():
    return keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))


def _state_dict(fixture, prefix):
    return {k[len(prefix) :]: v for k, v in fixture.items() if k.startswith(prefix)}


def _given_negatives(loss, fixture):
    """`loss` drawing the fixture's contrast indices at steps 1, 2, 3."""
    table = np.stack([fixture[f"contrast_index{e}"] for e in (1, 2, 3)])
    table = ops.convert_to_tensor(table.astype("int32"))
    loss.draw_contrast_indices = lambda indices: ops.take(
        table, loss.memory.draws, axis=0
    )
    return loss


@pytest.mark.large
def test_three_sgd_steps_equal_the_crd_trainer():
    """mdistiller's resnet8 distilled from a resnet8 teacher by CRD (CE 1,
    0.8 CRD), one step per epoch, the rate 0.1 x0.1 after epochs 1 and 2: the
    student, both embeddings (trained, with weight decay) and the banks."""
    fixture = _fixture("sgd/")
    keras.utils.set_random_seed(0)
    student = load_torch_state_dict(_resnet8(), _state_dict(fixture, "initial/"))
    teacher = load_torch_state_dict(_resnet8(), _state_dict(fixture, "teacher/"))
    loss = losses.CRD(
        int(fixture["num_data"]),
        "pooled_feat",
        "pooled_feat",
        num_negatives=int(fixture["k"]),
    )
    loss.adapt(fixture["labels"])
    distiller = keras_cskd.Distiller(
        teacher, student, _given_negatives(loss, fixture), distillation_loss_weight=0.8
    )
    port_state(loss, fixture, "initial_")
    schedule = EpochStepDecay(0.1, 1, milestones=(1, 2))
    distiller.compile(optimizer=TorchSGD(schedule, momentum=0.9, weight_decay=5e-4))
    initial, expected_model = student.get_weights(), _resnet8()
    for epoch in (1, 2, 3):
        x = {
            "images": fixture[f"images{epoch}"],
            "sample_indices": fixture[f"index{epoch}"],
        }
        y = fixture["labels"][fixture[f"index{epoch}"]]
        logs = distiller.train_on_batch(x, y, epoch=epoch, return_dict=True)
        assert _relative_error(logs["loss"], fixture[f"loss{epoch}"]) < 1e-5
        load_torch_state_dict(expected_model, _state_dict(fixture, f"step{epoch}/"))
        for index, (actual, value, start) in enumerate(
            zip(
                student.get_weights(),
                expected_model.get_weights(),
                initial,
                strict=True,
            )
        ):
            assert _relative_error(actual, value) < 1e-5, (epoch, index)
            if np.any(value != start):
                update_error = _relative_error(actual - start, value - start)
                assert update_error < 1e-3, (epoch, index)
        for name, layer in (
            ("embed_s", loss.student_embedding),
            ("embed_t", loss.teacher_embedding),
        ):
            kernel = fixture[f"step{epoch}_{name}_kernel"]
            assert _relative_error(layer.kernel, kernel) < 1e-5, (epoch, name)
        z = [float(loss.memory.student_z), float(loss.memory.teacher_z)]
        assert _relative_error(z, fixture[f"step{epoch}_z"]) < 1e-5
    memory = loss.memory
    assert _relative_error(memory.student_memory, fixture["step3_memory_v1"]) < 1e-5
    assert _relative_error(memory.teacher_memory, fixture["step3_memory_v2"]) < 1e-5


def test_a_saved_distiller_restores_the_banks_and_the_draw_count(tmp_path):
    """The memory's state is saved with the Distiller (.keras) and the
    student alone is exported without it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.integers(0, 3, 8).astype("int32")

    def model(width, name):
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(width, name=name),
                keras.layers.Dense(3),
            ]
        )

    loss = losses.CRD(
        teacher_layer_name="t_features",
        student_layer_name="s_features",
        feature_dim=4,
        num_negatives=5,
    )
    loss.adapt(y)
    distiller = keras_cskd.Distiller(
        model(5, "t_features"), model(6, "s_features"), loss
    )
    distiller.compile("sgd")
    batch = {"images": x, "sample_indices": np.arange(8, dtype="int32")}
    distiller.train_on_batch(batch, y)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.saving.load_model(tmp_path / "distiller.keras")
    memory = restored.distillation_loss.memory
    for saved, loaded in zip(loss.memory.weights, memory.weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
    assert int(memory.draws) == 1
    assert len(restored.student.weights) == 4  # two Dense layers, no bank
