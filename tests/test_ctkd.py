"""CTKD: the learnable temperature, its gradient reversal and curriculum equal
the reference code's (tests/golden/ctkd.npz); it trains with the student, is
checkpointed with the Distiller, never exported, and trains alike on two
replicas, on JAX and from the `ctkd` recipe."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import checkpointing, losses
from keras_cskd.distiller import cross_entropy
from keras_cskd.losses.ctkd import cosine_curriculum, reverse_gradient

GOLDEN = Path(__file__).parent / "golden" / "ctkd.npz"
RTOL = 1e-5


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as arrays:
        return dict(arrays)


def with_logit(loss, value):
    loss.build()
    loss.layers[0].logit.assign(value)
    return loss


def reference_step(golden, case, epoch, k, loss=None):
    """Our `(loss, temperature, student grad, logit grad)` of `0.1 CE + 0.9 L`."""
    loss = with_logit(loss or losses.CTKD(), golden["logits"][k])
    teacher = tf.constant(golden[f"case{case}_teacher"])
    student = tf.Variable(golden[f"case{case}_student"])
    labels = tf.constant(golden[f"case{case}_labels"])
    logit = loss.layers[0].logit
    with tf.GradientTape() as tape:
        value = loss.compute_loss(teacher, student, labels=labels, epoch=float(epoch))
        total = 0.1 * keras.ops.mean(cross_entropy(labels, student)) + 0.9 * value
    student_grad, logit_grad = tape.gradient(total, [student, logit.value])
    return float(value), float(loss.current_temperature()), student_grad, logit_grad


@pytest.mark.parametrize("case", range(3))
def test_loss_and_reversed_gradients_equal_the_reference(golden, case):
    for epoch in golden["epochs"]:
        for k in range(len(golden["logits"])):
            prefix = f"case{case}_e{epoch}_w{k}_"
            value, temperature, student_grad, logit_grad = reference_step(
                golden, case, epoch, k
            )
            np.testing.assert_allclose(value, golden[prefix + "loss"], rtol=RTOL)
            np.testing.assert_allclose(
                temperature, golden[prefix + "temperature"], rtol=RTOL
            )
            np.testing.assert_allclose(
                student_grad,
                golden[prefix + "student_grad"],
                rtol=RTOL,
                atol=RTOL * np.abs(golden[prefix + "student_grad"]).max(),
            )
            # d(T^2 KL)/dT = 2 T KL + T^2 dKL/dT: two terms of about 2 L / T
            # that nearly cancel at high T. Float32 (PyTorch's too) keeps the
            # difference to about 1e-6 of them, up to 8e-4 of the gradient.
            reversal = cosine_curriculum(epoch) * 0.9 * 20.0
            sigmoid = 1.0 / (1.0 + np.exp(-golden["logits"][k]))
            terms = abs(reversal * sigmoid * (1 - sigmoid) * 2 * value / temperature)
            expected = golden[prefix + "logit_grad"]
            assert abs(float(logit_grad) - expected) <= RTOL * terms
            np.testing.assert_allclose(float(logit_grad), expected, rtol=1e-3)


def test_curriculum_equals_the_references_cosine_decay(golden):
    epochs = np.arange(1, 241)
    ours = [cosine_curriculum(e) for e in epochs]
    np.testing.assert_allclose(ours, golden["curriculum"], rtol=0, atol=1e-12)
    as_tensor = cosine_curriculum(keras.ops.convert_to_tensor(epochs, "float32"))
    np.testing.assert_allclose(as_tensor, golden["curriculum"], atol=1e-6)
    assert golden["curriculum"][0] < 0  # epoch 1 already reverses a little


def test_the_paper_convention_gives_the_same_gradients(golden):
    reference = reference_step(golden, 1, 4, 1)
    paper = reference_step(golden, 1, 4, 1, losses.CTKD(reversal="paper"))
    assert losses.CTKD(reversal="paper").lambda_end == 1.0
    for ours, theirs in zip(paper, reference, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-7)
    # The docstring's -lambda with the code's 0 -> -1 schedule would not reverse.
    literal = reference_step(
        golden, 1, 4, 1, losses.CTKD(reversal="paper", lambda_end=-1.0)
    )
    np.testing.assert_allclose(float(literal[3]), -float(reference[3]), rtol=1e-6)


def test_reverse_gradient_is_the_exact_identity_forward():
    x = tf.Variable([1.0, -3.25, 15.621172])
    with tf.GradientTape() as tape:
        y = reverse_gradient(x, -0.3)
        total = keras.ops.sum(y * tf.constant([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(total, x), [-0.3, -0.6, -0.9], rtol=1e-6)


def test_config_round_trips_and_bad_values_are_refused():
    loss = losses.CTKD(temperature_range=10.0, reversal="paper", lambda_epochs=5)
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert again.get_config() == loss.get_config()
    assert losses.get("ctkd").reversal == "reference"
    with pytest.raises(ValueError, match="reversal"):
        losses.CTKD(reversal="minus")
    with pytest.raises(ValueError, match="min_temperature"):
        losses.CTKD(min_temperature=0.0)


def small_distiller(loss=None):
    keras.utils.set_random_seed(0)
    # Named layers: a second Distiller's variables have the first one's paths.
    teacher = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="teacher_dense")], name="teacher"
    )
    student = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, name="student_dense")], name="student"
    )
    distiller = keras_cskd.Distiller(
        teacher,
        student,
        loss or losses.CTKD(lambda_start=-1.0),
        ce_weight=0.1,
        distillation_loss_weight=0.9,
    )
    distiller.compile(keras_cskd.optimizers.TorchSGD(0.5, momentum=0.9))
    return distiller


def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 6)).astype("float32"), rng.integers(0, 5, 8)


def temperature_logit(distiller):
    return float(distiller.distillation_loss.layers[0].logit.numpy())


def test_the_temperature_trains_with_the_student_and_ascends_the_loss():
    distiller = small_distiller()
    assert any("temperature_logit" in v.path for v in distiller.trainable_variables)
    x, y = batch()
    # lambda = +1 with the reference's sign: the plain, unreversed gradient.
    plain = with_logit(losses.CTKD(lambda_end=1.0), temperature_logit(distiller))
    with tf.GradientTape() as tape:
        value = plain.compute_loss(distiller.teacher(x), distiller.student(x))
    raw = float(tape.gradient(value, plain.layers[0].logit.value))
    before = temperature_logit(distiller)
    distiller.train_on_batch(x, y, epoch=3)
    # Reversed, the step climbs the loss that the student descends.
    assert np.sign(temperature_logit(distiller) - before) == np.sign(raw) != 0


def test_checkpoints_keep_the_temperature_and_the_student_leaves_it_out(tmp_path):
    distiller = small_distiller()
    x, y = batch()
    for epoch in (1, 2):
        distiller.train_on_batch(x, y, epoch=epoch)
    trained = temperature_logit(distiller)
    assert trained != 1.0
    checkpointing.save(tmp_path / "checkpoint", distiller, 2, 0, {})
    fresh = small_distiller()
    fresh.optimizer.build(fresh.trainable_variables)
    checkpointing.restore(tmp_path / "checkpoint", fresh)
    assert temperature_logit(fresh) == trained
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert temperature_logit(loaded) == trained
    distiller.student.save(tmp_path / "student.keras")
    student = keras.saving.load_model(tmp_path / "student.keras")
    assert not any("temperature" in w.path for w in student.weights)
    assert len(student.weights) == len(distiller.student.weights)


# ----------------------------------------------------------------- large tier


@pytest.mark.large
def test_the_ctkd_recipe_runs_a_few_steps_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    from keras_cskd import config as config_module
    from keras_cskd import training

    root = Path(__file__).resolve().parents[1]
    spec = f"{root}/configs/cifar100_distill.py:ctkd,resnet32x4,resnet8x4"
    config = config_module.load_config(spec)
    config_module.validate(config)
    assert (config.loss.method, config.epochs) == ("ctkd", 240)
    assert (config.ce_weight, config.distillation_loss_weight) == (0.1, 0.9)
    assert config.optimizer.learning_rate == 0.05
    config.model = "resnet8"  # the smallest student keeps this test quick
    teacher = keras_cskd.models.get("resnet8", 100, (32, 32, 3))
    if importlib.util.find_spec("torch") is None:
        teacher.save(tmp_path / "teacher.keras")
        config.teacher.path = str(tmp_path / "teacher.keras")
    else:  # also a run from a PyTorch teacher, ported on load
        from test_pth_teacher import save_mdistiller_checkpoint, seeded_state_dict

        checkpoint = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
        save_mdistiller_checkpoint(seeded_state_dict(teacher), checkpoint)
        config.teacher.path = str(checkpoint)
    config.teacher.allow_untrained = True  # an untrained teacher, on mock data
    config.epochs, config.data.batch_size, config.verbose = 1, 8, "0"
    config.export.formats = "tflite"
    with tfds.testing.mock_data(num_examples=16):
        summary = training.run(config, tmp_path / "run")
    assert summary["last_epoch"] == 1
    # (A finished run has removed its checkpoint: the one above keeps it.)
    student = keras.saving.load_model(tmp_path / "run" / "student.keras")
    assert not any("temperature" in w.path for w in student.weights)
    if config.teacher.path.endswith(".pth"):
        assert (tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.keras").is_file()


@pytest.mark.large
def test_two_replicas_train_the_temperature_as_one_device(monkeypatch):
    import distributed_job
    from test_distributed import assert_same_training, two_cpus

    build_loss = distributed_job.build_loss
    monkeypatch.setattr(
        distributed_job,
        "build_loss",
        lambda name: (
            losses.CTKD(lambda_start=-1.0) if name == "ctkd" else build_loss(name)
        ),
    )
    single = distributed_job.train("ctkd", tf.distribute.get_strategy())
    mirrored = distributed_job.train("ctkd", two_cpus())
    (temperature_logit,) = [w for w in single[0] if w.shape == ()]
    # It moved 10 times the tolerance: a gradient summed twice would show.
    assert abs(temperature_logit - 1.0) > 1e-4
    assert_same_training(single, mirrored)


def run_ctkd_backend(backend, inputs, out):
    """Runs ctkd_backend_run.py on `backend`; returns the arrays it wrote."""
    script = Path(__file__).with_name("ctkd_backend_run.py")
    result = subprocess.run(
        [sys.executable, str(script), backend, str(inputs), str(out)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as arrays:
        return dict(arrays)


@pytest.fixture(scope="module")
def tensorflow_run(tmp_path_factory):
    import backend_run

    folder = tmp_path_factory.mktemp("ctkd_backends")
    backend_run.make_inputs(folder / "inputs.npz")
    run = run_ctkd_backend("tensorflow", folder / "inputs.npz", folder / "tf.npz")
    return folder / "inputs.npz", run


@pytest.mark.large
@pytest.mark.parametrize("backend", ["jax"])  # torch passes too (30 s more)
def test_the_temperature_trains_alike_on_jax(backend, tensorflow_run, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed: pip install keras-cskd[{backend}]")
    inputs, expected = tensorflow_run
    actual = run_ctkd_backend(backend, inputs, tmp_path / f"{backend}.npz")
    assert str(actual["backend"]) == backend
    assert abs(float(expected["temperature_logit"]) - 1.0) > 1e-3
    for key in expected:
        if key.startswith(("student_", "history_", "temperature")):
            np.testing.assert_allclose(
                actual[key], expected[key], rtol=1e-4, atol=1e-4, err_msg=key
            )
