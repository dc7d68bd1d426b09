"""TorchSGD and EpochStepDecay against float64 NumPy references of PyTorch's rules."""

import keras
import numpy as np
import pytest

from keras_cskd.optimizers import EpochStepDecay, TorchSGD


def torch_sgd_reference(weights, gradients, rates, momentum, weight_decay):
    """`torch.optim.SGD.step` (dampening 0, no Nesterov) in float64, per step."""
    weights = np.float64(weights)
    buffer = None
    history = []
    for gradient, rate in zip(gradients, rates, strict=True):
        gradient = np.float64(gradient) + weight_decay * weights
        buffer = gradient if buffer is None else momentum * buffer + gradient
        weights = weights - rate * buffer
        history.append(weights)
    return history


def test_torch_sgd_equals_pytorchs_rule_with_decay_and_a_falling_rate():
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(5, 3))
    gradients = rng.normal(size=(6, 5, 3))
    schedule = EpochStepDecay(0.1, steps_per_epoch=2, milestones=(1, 2))
    rates = [float(schedule(step)) for step in range(6)]
    assert rates == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    variable = keras.Variable(initial.astype("float32"))
    optimizer = TorchSGD(schedule, momentum=0.9, weight_decay=5e-4)
    expected = torch_sgd_reference(initial, gradients, rates, 0.9, 5e-4)
    for gradient, reference in zip(gradients, expected, strict=True):
        optimizer.apply_gradients([(gradient.astype("float32"), variable)])
        np.testing.assert_allclose(variable.numpy(), reference, rtol=1e-6, atol=1e-7)


def test_keras_sgd_differs_from_pytorchs_rule_where_torch_sgd_is_needed():
    """Why TorchSGD exists: Keras's SGD decouples the decay and scales its
    momentum by the rate in force when each gradient arrived."""
    rng = np.random.default_rng(1)
    initial, gradients = rng.normal(size=(4,)), rng.normal(size=(4, 4))
    schedule = EpochStepDecay(0.1, steps_per_epoch=2, milestones=(1,))
    rates = [float(schedule(step)) for step in range(4)]
    expected = torch_sgd_reference(initial, gradients, rates, 0.9, 5e-4)[-1]
    variable = keras.Variable(initial.astype("float32"))
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=5e-4)
    for gradient in gradients:
        optimizer.apply_gradients([(gradient.astype("float32"), variable)])
    assert np.max(np.abs(variable.numpy() - expected)) > 1e-3


def test_torch_sgd_without_decay_at_a_constant_rate_is_keras_sgd():
    rng = np.random.default_rng(2)
    initial, gradients = rng.normal(size=(3, 3)), rng.normal(size=(5, 3, 3))
    ours = keras.Variable(initial.astype("float32"))
    theirs = keras.Variable(initial.astype("float32"))
    torch_sgd = TorchSGD(0.05, momentum=0.9)
    keras_sgd = keras.optimizers.SGD(0.05, momentum=0.9)
    for gradient in gradients.astype("float32"):
        torch_sgd.apply_gradients([(gradient, ours)])
        keras_sgd.apply_gradients([(gradient, theirs)])
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)


def test_plain_torch_sgd_is_gradient_descent():
    variable = keras.Variable(np.array([1.0, -2.0], "float32"))
    TorchSGD(0.5).apply_gradients([(np.array([2.0, 4.0], "float32"), variable)])
    np.testing.assert_array_equal(variable.numpy(), [0.0, -4.0])


@pytest.mark.parametrize(
    "steps_per_epoch, milestones, step, expected",
    [
        (10, (150, 180, 210), 0, 0.05),
        (10, (150, 180, 210), 1499, 0.05),  # the last step of epoch 150
        (10, (150, 180, 210), 1500, 0.005),  # the first step of epoch 151
        (10, (150, 180, 210), 10**6, 0.00005),
        (1, (), 10**6, 0.05),
        (3, (0,), 0, 0.005),  # epoch 1 > 0: decayed from the start
    ],
)
def test_epoch_step_decay_changes_only_at_epoch_starts(
    steps_per_epoch, milestones, step, expected
):
    schedule = EpochStepDecay(0.05, steps_per_epoch, milestones)
    assert float(schedule(step)) == np.float32(expected)


def test_optimizer_and_schedule_serialize_and_survive_a_model_save(tmp_path):
    schedule = EpochStepDecay(0.05, 782, (150, 180, 210), 0.2)
    optimizer = TorchSGD(schedule, momentum=0.9, weight_decay=5e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TorchSGD)
    assert restored.get_config() == optimizer.get_config()
    assert restored.coupled_weight_decay == 5e-4 and restored.weight_decay is None

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.optimizer, TorchSGD)
    assert loaded.optimizer._learning_rate.get_config() == schedule.get_config()
    for ours, theirs in zip(
        loaded.optimizer.variables, optimizer.variables, strict=True
    ):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TorchSGD(0.1, **kwargs)
