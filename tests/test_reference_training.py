"""Golden tests: the reference recipes' training step, from their PyTorch code.

The fixtures in tests/golden/ were made once by
`tests/golden/make_reference_training.py` from mdistiller @ a08d46f and the CSKD
code llieeai/lud @ 2704bb2 (see tests/golden/README.md); torch is not needed here.
"""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import losses
from keras_cskd.distiller import cross_entropy
from keras_cskd.optimizers import EpochStepDecay, TorchSGD

GOLDEN = Path(__file__).parent / "golden"


def _load(name):
    with np.load(GOLDEN / f"{name}.npz") as data:
        return dict(data)


OBJECTIVE = _load("cskd_objective")
STEPS = _load("sgd_steps")


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


@pytest.mark.parametrize("case", range(int(OBJECTIVE["cases"])))
def test_two_view_objective_equals_the_cskd_code(case):
    fixture = {
        k.split("_", 1)[1]: v
        for k, v in OBJECTIVE.items()
        if k.startswith(f"case{case}_")
    }
    teacher = (fixture["t_weak"], fixture["t_strong"])
    student = [tf.Variable(fixture["s_weak"]), tf.Variable(fixture["s_strong"])]
    with tf.GradientTape() as tape:
        terms = losses.TwoViewCSKD().terms(teacher, student)
        ce = sum(
            keras.ops.mean(cross_entropy(fixture["labels"], view)) for view in student
        )
        total = ce + terms["kd"] + terms["class_gram"] + terms["batch_gram"]
    for ours, theirs in (
        (ce, "loss_ce"),
        (terms["kd"], "loss_kd"),
        (terms["class_gram"], "loss_cc"),
        (terms["batch_gram"], "loss_bc"),
        (total, "total"),
    ):
        assert float(ours) == pytest.approx(float(fixture[theirs]), rel=1e-5), theirs
    gradients = tape.gradient(total, student)
    for gradient, view in zip(gradients, ("weak", "strong"), strict=True):
        assert _relative_error(gradient, fixture[f"grad_s_{view}"]) < 1e-5


def test_epoch_start_schedule_equals_adjust_learning_rate_exactly():
    fixture = _load("lr_schedule")
    steps_per_epoch = 782  # CIFAR-100 at batch 64
    schedule = EpochStepDecay(0.025, steps_per_epoch, milestones=(150, 180, 210))
    first_steps = (fixture["epochs"] - 1) * steps_per_epoch
    ours = keras.ops.convert_to_numpy(keras.ops.vectorized_map(schedule, first_steps))
    np.testing.assert_array_equal(ours, fixture["learning_rate"].astype(np.float32))
    # The last step of epoch 150 is still at the full rate.
    assert float(schedule(150 * steps_per_epoch - 1)) == np.float32(0.025)


def _keras_name(torch_name):
    """mdistiller's resnet parameter name -> (our layer name, weight name)."""
    layer, weight = torch_name.rsplit(".", 1)
    layer = re.sub(r"^conv1$", "stem_conv", layer)
    layer = re.sub(r"^bn1$", "stem_bn", layer)
    layer = re.sub(r"^fc$", "logits", layer)
    layer = re.sub(r"^layer(\d)\.(\d)\.", r"stage\1_block\2_", layer)
    layer = re.sub(r"_conv(\d)$", r"_\1_conv", layer)
    layer = re.sub(r"_bn(\d)$", r"_\1_bn", layer)
    layer = layer.replace("_downsample.0", "_shortcut_conv")
    layer = layer.replace("_downsample.1", "_shortcut_bn")
    return layer, weight


_WEIGHT_INDEX = {
    "weight": 0,
    "bias": 1,
    "running_mean": 2,
    "running_var": 3,
}


def _torch_layout(array, variable):
    """Our variable's value in PyTorch's layout (OIHW kernels, [out, in] dense)."""
    if array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    if array.ndim == 2:
        return array.T
    return array


def _variables(model, prefix):
    """{torch name: our variable} for every tensor of a fixture snapshot."""
    found = {}
    for key in STEPS:
        if not key.startswith(prefix) or key.endswith("num_batches_tracked"):
            continue
        torch_name = key[len(prefix) :]
        layer, weight = _keras_name(torch_name)
        variables = model.get_layer(layer).weights
        index = _WEIGHT_INDEX[weight]
        if isinstance(model.get_layer(layer), keras.layers.BatchNormalization):
            index = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}[
                weight
            ]
        found[torch_name] = variables[index]
    return found


def _port_initial_weights(model):
    for torch_name, variable in _variables(model, "initial/").items():
        value = STEPS[f"initial/{torch_name}"]
        if value.ndim == 4:
            value = np.transpose(value, (2, 3, 1, 0))
        elif value.ndim == 2:
            value = value.T
        variable.assign(value)


def _distiller(method, student):
    teacher = keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))
    loss, weights, view_weights = {
        "kd": (losses.KD(4.0), (0.1, 0.9), None),
        "cskd_cswt": (losses.CSKD(4.0, cswt=losses.CSWT(2.0, 6.0)), (1.0, 1.0), None),
        "dkd": (
            losses.DKD(4.0, alpha=1.0, beta=8.0, warmup_epochs=20),
            (1.0, 1.0),
            None,
        ),
        "two_view_cskd": (losses.TwoViewCSKD(), (1.0, 1.0), (1.0, 1.0)),
    }[method]
    ce_weight, distillation_loss_weight = weights
    return keras_cskd.Distiller(
        teacher,
        student,
        loss,
        ce_weight=ce_weight,
        distillation_loss_weight=distillation_loss_weight,
        view_weights=view_weights,
    )


def _batch(method):
    views = [
        {"images": STEPS["images"][v], "teacher_logits": STEPS["teacher_logits"][v]}
        for v in (0, 1)
    ]
    x = tuple(views) if method == "two_view_cskd" else views[0]
    return tf.data.Dataset.from_tensors((x, STEPS["labels"])).repeat()


class _Snapshots(keras.callbacks.Callback):
    def __init__(self, variables):
        super().__init__()
        self.variables, self.steps = variables, []

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append({k: v.numpy().copy() for k, v in self.variables.items()})


@pytest.mark.large
@pytest.mark.parametrize("method", ["kd", "cskd_cswt", "dkd", "two_view_cskd"])
def test_three_sgd_steps_equal_the_reference_training(method):
    """One step per epoch, the rate x0.1 after epochs 1 and 2: the optimizer
    (coupled decay, PyTorch momentum), the epoch-start schedule, DKD's warm-up
    and the losses all enter the weights."""
    keras.utils.set_random_seed(0)
    student = keras_cskd.models.get("resnet8", num_classes=10, input_shape=(32, 32, 3))
    _port_initial_weights(student)
    distiller = _distiller(method, student)
    schedule = EpochStepDecay(
        float(STEPS["learning_rate"]), 1, milestones=tuple(STEPS["milestones"])
    )
    distiller.compile(optimizer=TorchSGD(schedule, momentum=0.9, weight_decay=5e-4))
    variables = _variables(student, "initial/")
    snapshots = _Snapshots(variables)
    distiller.fit(
        _batch(method), epochs=3, steps_per_epoch=1, callbacks=[snapshots], verbose=0
    )
    for step, ours in enumerate(snapshots.steps, start=1):
        for torch_name, variable in variables.items():
            expected = STEPS[f"{method}/step{step}/{torch_name}"]
            actual = _torch_layout(ours[torch_name], variable)
            initial = STEPS[f"initial/{torch_name}"]
            assert _relative_error(actual, expected) < 1e-5, (step, torch_name)
            if not torch_name.endswith(("running_mean",)):
                # The update itself, not only the weights, is the reference's.
                assert _relative_error(actual - initial, expected - initial) < 1e-3, (
                    step,
                    torch_name,
                )
