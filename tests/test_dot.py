"""DOT, the Distillation-Oriented Trainer: against mdistiller's own code.

The fixture `tests/golden/dot.npz` was made once by `tests/golden/make_dot.py`
from mdistiller @ a08d46f (`engine/dot.py`, `engine/trainer.py`); torch is not
needed here.
"""

from pathlib import Path

import keras
import numpy as np
import pytest

import keras_cskd
from keras_cskd import losses
from keras_cskd.models.porting import load_torch_state_dict
from keras_cskd.optimizers import DOT, EpochStepDecay, TorchSGD

GOLDEN = Path(__file__).parent / "golden"
with np.load(GOLDEN / "dot.npz") as _data:
    FIXTURE = dict(_data)
with np.load(GOLDEN / "sgd_steps.npz") as _data:
    INPUTS = {
        k: v
        for k, v in _data.items()
        if not k.startswith(("kd/", "dkd/", "cskd", "two"))
    }
MOMENTUM, DELTA = float(FIXTURE["momentum"]), float(FIXTURE["delta"])
PARAMETERS = "abc"  # a: both gradients, b: task only, c: distillation only


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


def _case(name):
    prefix = f"optimizer/{name}/"
    return {k[len(prefix) :]: v for k, v in FIXTURE.items() if k.startswith(prefix)}


def _gradients(case, step):
    task = [case["task_a"][step], case["task_b"][step], None]
    distillation = [case["kd_a"][step], None, case["kd_c"][step]]
    return task, distillation


def _run_optimizer(case, **options):
    """Three `apply_split` steps on the fixture's gradients: the weights after each."""
    variables = [keras.Variable(case[f"initial_{p}"]) for p in PARAMETERS]
    optimizer = DOT(
        float(case["rates"][0]),
        momentum=MOMENTUM,
        delta=DELTA,
        weight_decay=float(case["weight_decay"]),
        **options,
    )
    history = []
    for step, rate in enumerate(case["rates"]):
        optimizer.learning_rate = float(rate)
        optimizer.apply_split(*_gradients(case, step), variables)
        history.append([np.asarray(v) for v in variables])
    return history


@pytest.mark.parametrize("name", ["recipe", "strong_decay"])
def test_three_steps_equal_distillation_oriented_trainer(name):
    case = _case(name)
    for step, weights in enumerate(_run_optimizer(case), start=1):
        for parameter, actual in zip(PARAMETERS, weights, strict=True):
            expected = case[f"step{step}_{parameter}"]
            initial = case[f"initial_{parameter}"]
            assert _relative_error(actual, expected) < 1e-5, (step, parameter)
            # The update itself, not only the weights, is the reference's.
            assert _relative_error(actual - initial, expected - initial) < 1e-5


def dot_reference(case, as_mdistiller):
    """float64 NumPy of the rules docs/reproducing.md names (DOT section)."""
    decay = float(case["weight_decay"])
    low, high = MOMENTUM - DELTA, MOMENTUM + DELTA
    weights = {p: np.float64(case[f"initial_{p}"]) for p in PARAMETERS}
    task_buffer = {p: 0.0 for p in PARAMETERS}
    kd_buffer = {p: 0.0 for p in PARAMETERS}
    history = []
    for step, rate in enumerate(case["rates"]):
        task, distillation = _gradients(case, step)
        for index, p in enumerate(PARAMETERS):
            g, h = task[index], distillation[index]
            if g is None and not as_mdistiller:
                g = 0.0  # the clean variant decays every variable on the task side
            if g is not None:
                m = low if (h is not None or not as_mdistiller) else MOMENTUM
                task_buffer[p] = m * task_buffer[p] + g + decay * weights[p]
                weights[p] = weights[p] - rate * task_buffer[p]
            if h is not None:
                m = high if (task[index] is not None or not as_mdistiller) else MOMENTUM
                if as_mdistiller and task[index] is None and step > 0:
                    h = h + decay * weights[p]
                kd_buffer[p] = m * kd_buffer[p] + h
                weights[p] = weights[p] - rate * kd_buffer[p]
        history.append([weights[p].copy() for p in PARAMETERS])
    return history


@pytest.mark.parametrize("as_mdistiller", [True, False])
def test_the_documented_rules_in_float64(as_mdistiller):
    case = _case("strong_decay")
    ours = _run_optimizer(case, as_mdistiller=as_mdistiller)
    for weights, expected in zip(ours, dot_reference(case, as_mdistiller), strict=True):
        for actual, value in zip(weights, expected, strict=True):
            np.testing.assert_allclose(actual, value, rtol=1e-5, atol=1e-6)


def test_clean_variant_differs_only_where_a_gradient_is_missing():
    case = _case("strong_decay")
    reference, clean = (
        _run_optimizer(case, as_mdistiller=flag)[-1] for flag in (True, False)
    )
    np.testing.assert_allclose(clean[0], reference[0], rtol=1e-6)  # a: both
    for index in (1, 2):  # b and c: the momentum and the decay rules differ
        assert np.abs(clean[index] - reference[index]).max() > 1e-3


def test_momenta_straddle_the_sgd_momentum():
    optimizer = DOT(0.05, momentum=0.9, delta=0.075)
    assert optimizer.task_momentum == pytest.approx(0.825)
    assert optimizer.distillation_momentum == pytest.approx(0.975)


def test_refuses_one_gradient_and_one_gradient_arguments():
    variable = keras.Variable(np.ones(3, "float32"))
    with pytest.raises(ValueError, match="apply_split"):
        DOT(0.1).apply_gradients([(np.ones(3, "float32"), variable)])
    with pytest.raises(ValueError, match="clipnorm"):
        DOT(0.1, clipnorm=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DOT(0.1, momentum=0.95, delta=0.075)


def test_config_round_trips():
    optimizer = DOT(
        0.05, momentum=0.9, delta=0.05, weight_decay=5e-4, as_mdistiller=False
    )
    restored = DOT.from_config(optimizer.get_config())
    for key in ("momentum", "delta", "coupled_weight_decay", "as_mdistiller"):
        assert getattr(restored, key) == getattr(optimizer, key), key


# Three steps of a zoo resnet8 against the DOT trainer's own train_iter.


def _state_dict(prefix):
    source = FIXTURE if prefix.startswith("training/") else INPUTS
    return {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}


def _resnet8():
    return keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))


def _kd_distiller(student):
    # The teacher's logits come with the batch; the teacher only gives shapes.
    return keras_cskd.Distiller(
        _resnet8(), student, losses.KD(4.0), ce_weight=0.1, distillation_loss_weight=0.9
    )


class _Snapshots(keras.callbacks.Callback):
    def __init__(self, model):
        super().__init__()
        self.model_to_watch, self.steps = model, []

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append([w.copy() for w in self.model_to_watch.get_weights()])


def _train_kd_dot(optimizer):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    student = load_torch_state_dict(_resnet8(), _state_dict("initial/"))
    distiller = _kd_distiller(student)
    distiller.compile(optimizer=optimizer)
    batch = {
        "images": INPUTS["images"][0],
        "teacher_logits": INPUTS["teacher_logits"][0],
    }
    dataset = tf.data.Dataset.from_tensors((batch, INPUTS["labels"])).repeat()
    snapshots = _Snapshots(student)
    distiller.fit(
        dataset, epochs=3, steps_per_epoch=1, callbacks=[snapshots], verbose=0
    )
    return snapshots.steps


def _schedule():
    return EpochStepDecay(
        float(FIXTURE["training/learning_rate"]),
        1,
        milestones=tuple(int(m) for m in FIXTURE["training/milestones"]),
    )


@pytest.mark.large
def test_three_kd_dot_steps_equal_the_dot_trainer():
    """KD (CE 0.1, KD 0.9) + DOT on resnet8, one step per epoch with the rate
    x0.1 after epochs 1 and 2, against mdistiller's `DOT.train_iter`."""
    steps = _train_kd_dot(
        DOT(_schedule(), momentum=0.9, delta=0.075, weight_decay=5e-4)
    )
    initial = load_torch_state_dict(_resnet8(), _state_dict("initial/")).get_weights()
    expected_model = _resnet8()
    for step, ours in enumerate(steps, start=1):
        load_torch_state_dict(expected_model, _state_dict(f"training/step{step}/"))
        expected = expected_model.get_weights()
        for index, (actual, value, start) in enumerate(
            zip(ours, expected, initial, strict=True)
        ):
            assert _relative_error(actual, value) < 1e-5, (step, index)
            if np.any(value != start):
                # The update itself, not only the weights, is the reference's.
                update_error = _relative_error(actual - start, value - start)
                assert update_error < 1e-3, (step, index)
    # Plain SGD (momentum 0.9) on the same steps ends elsewhere.
    sgd = _train_kd_dot(TorchSGD(_schedule(), momentum=0.9, weight_decay=5e-4))[-1]
    assert max(_relative_error(a, b) for a, b in zip(sgd, expected, strict=True)) > 1e-4


# The Distiller's split step, the recipe, checkpoints, replicas and backends.

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "configs" / "cifar100_distill.py"


def _digits_distiller(optimizer, student=None):
    teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1), width=8)
    student = student or keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(
        teacher, student, losses.KD(4.0), ce_weight=0.1, distillation_loss_weight=0.9
    )
    distiller.compile(optimizer=optimizer)
    return distiller


def _digits(count=64):
    from keras_cskd.data import digits_arrays

    x, y = digits_arrays()["train"]
    return x[:count], y[:count]


def test_split_loss_sums_to_the_loss():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    distiller = _digits_distiller(DOT(0.1))
    x, y = _digits(16)
    y_pred = distiller(x, training=True)
    task, distillation = distiller.compute_split_loss(x, tf.constant(y), y_pred)
    total = distiller.compute_loss(x, tf.constant(y), y_pred)
    assert float(task) + float(distillation) == pytest.approx(float(total), rel=1e-6)
    assert float(task) > 0 and float(distillation) > 0


def test_kd_dot_recipe_is_kd_under_mdistillers_dot_config():
    from keras_cskd import builders
    from keras_cskd import config as config_module

    for pair, rate in {
        "resnet32x4,resnet8x4": 0.05,
        "resnet32x4,shufflenetv2": 0.01,
        "vgg13,vgg8": 0.05,
    }.items():
        config = config_module.load_config(f"{DISTILL}:kd_dot,{pair}")
        config_module.validate(config)
        kd = config_module.load_config(f"{DISTILL}:kd,{pair}")
        assert config.loss == kd.loss and config.epochs == kd.epochs == 240
        assert (config.ce_weight, config.distillation_loss_weight) == (0.1, 0.9)
        optimizer = builders.build_optimizer(config, steps_per_epoch=782)
        assert isinstance(optimizer, DOT) and optimizer.as_mdistiller
        assert float(optimizer.learning_rate) == pytest.approx(rate)
        assert (optimizer.task_momentum, optimizer.distillation_momentum) == (
            pytest.approx(0.825),
            pytest.approx(0.975),
        )
        assert optimizer.coupled_weight_decay == 5e-4
    with pytest.raises(ValueError, match="vgg13,vgg8") as error:
        config_module.load_config(f"{DISTILL}:kd_dot,resnet56,resnet20")
    assert "\n" not in str(error.value)


def test_a_checkpoint_keeps_both_momentum_buffers(tmp_path):
    from keras_cskd import checkpointing

    keras.utils.set_random_seed(0)
    x, y = _digits()
    distiller = _digits_distiller(DOT(0.1, weight_decay=5e-4))
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    optimizer = distiller.optimizer
    saved = [np.asarray(v) for v in optimizer.variables]
    for buffers in (optimizer.task_momentums, optimizer.distillation_momentums):
        assert all(np.abs(np.asarray(b)).max() > 0 for b in buffers)
    checkpointing.save(tmp_path / "checkpoint", distiller, epoch=1, step=0, history={})
    keras.utils.set_random_seed(1)
    restored = _digits_distiller(DOT(0.1, weight_decay=5e-4))
    restored.build((None, 8, 8, 1))
    checkpointing.restore(tmp_path / "checkpoint", restored)
    assert [v.path for v in restored.optimizer.variables] == [
        v.path for v in optimizer.variables
    ]
    for value, variable in zip(saved, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(variable), value)


def _train_digits(strategy, steps=4, global_batch=32):
    """Four KD+DOT steps of a BatchNorm-free digits student under `strategy`."""
    import tensorflow as tf

    x, y = _digits(global_batch * steps)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        distiller = _digits_distiller(
            DOT(0.1, momentum=0.9, delta=0.075, weight_decay=5e-3)
        )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    history = distiller.fit(dataset.with_options(options), epochs=1, verbose=0)
    weights = [w.numpy() for w in distiller.trainable_weights]
    return weights, {k: float(v[-1]) for k, v in history.history.items()}


@pytest.mark.large
def test_mirrored_two_replicas_equal_one_device():
    import tensorflow as tf
    from test_distributed import assert_same_training, two_cpus

    single = _train_digits(tf.distribute.get_strategy())
    mirrored = _train_digits(two_cpus())
    assert_same_training(single, mirrored)
    # And DOT moved the student otherwise than one summed gradient would.
    assert single[1]["loss"] > 0


@pytest.mark.large
def test_kd_dot_runs_from_the_command_line_on_mock_data(tmp_path):
    import json
    import subprocess
    import sys

    teacher = keras_cskd.models.get("resnet8", 100, (32, 32, 3))
    teacher.save(tmp_path / "teacher.keras")
    workdir = tmp_path / "run"
    argv = [
        "train.py",
        "--config=configs/cifar100_distill.py:kd_dot,resnet32x4,resnet8x4",
        "--config.model=resnet8",  # the smallest student keeps this test quick
        f"--config.teacher.path={tmp_path / 'teacher.keras'}",
        "--config.teacher.allow_untrained=True",
        "--config.epochs=1",
        "--config.data.batch_size=8",
        "--config.verbose=0",
        "--config.export.formats=",
        f"--workdir={workdir}",
    ]
    script = (
        "import runpy, sys\n"
        "import tensorflow_datasets as tfds\n"
        f"sys.argv = {argv!r}\n"
        "with tfds.testing.mock_data(num_examples=16):\n"
        "    runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((workdir / "config.json").read_text())
    assert config["optimizer"]["name"] == "dot"
    assert config["optimizer"]["dot"] == {"delta": 0.075, "as_mdistiller": True}
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["last_epoch"] == 1


@pytest.fixture(scope="module")
def backend_inputs(tmp_path_factory):
    import backend_run

    path = tmp_path_factory.mktemp("dot_backends") / "inputs.npz"
    backend_run.make_inputs(path)
    return path


@pytest.fixture(scope="module")
def tensorflow_run(backend_inputs):
    import dot_backend_run

    with np.load(backend_inputs) as inputs:
        return dot_backend_run.train(dict(inputs))  # this process is TensorFlow's


def _run_on(backend, inputs, *flags):
    import os
    import subprocess
    import sys

    import backend_run

    name = backend + "".join(flags).replace("-", "_")
    out = inputs.with_name(f"{name}.npz")
    env = dict(os.environ)
    if "--data_parallel" in flags:
        env["XLA_FLAGS"] = (
            f"--xla_force_host_platform_device_count={backend_run.DATA_PARALLEL_DEVICES}"
        )
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("dot_backend_run.py")),
            f"--backend={backend}",
            f"--inputs={inputs}",
            f"--out={out}",
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as arrays:
        return dict(arrays)


@pytest.mark.large
@pytest.mark.parametrize(
    "backend, flags", [("jax", ()), ("jax", ("--data_parallel",)), ("torch", ())]
)
def test_kd_dot_trains_alike_on_every_backend(
    backend_inputs, tensorflow_run, backend, flags
):
    """JAX (one device, and DataParallel over two) and PyTorch end where
    TensorFlow ends: student weights, both momentum buffers and logs to 1e-4."""
    import backend_run
    from test_backends import skip_unless_installed

    skip_unless_installed(backend)
    reference = tensorflow_run
    other = _run_on(backend, backend_inputs, *flags)
    assert str(other["backend"]) == backend
    for role in ("student", "buffer"):
        expected = backend_run.read_weights(reference, role)
        actual = backend_run.read_weights(other, role)
        assert len(actual) == len(expected) > 0
        for index, (a, b) in enumerate(zip(actual, expected, strict=True)):
            np.testing.assert_allclose(
                a, b, rtol=1e-4, atol=1e-4, err_msg=f"{role} {index}"
            )
    for key in (k for k in reference if k.startswith("history_")):
        np.testing.assert_allclose(other[key], reference[key], rtol=1e-4, atol=1e-4)
