"""BatchNorm over a fixed group of images, whatever the replicas holding them.

Every check is against an independent float64 NumPy group BatchNorm: its
outputs, its analytic gradient, and PyTorch's moving statistics of the first
group. Under MirroredStrategy (two logical CPUs) the replicas' outputs,
concatenated, and their gradients, summed as the optimizer sums them, must be
one device's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import builders, distribute
from keras_cskd import config as config_module
from keras_cskd.batch_norm import (
    GroupBatchNormalization,
    TorchBatchNormalization,
    group_moments,
)

EPSILON = 1e-5
MOMENTUM = 0.9


def numpy_group_batch_norm(x, gamma, beta, group_size, upstream):
    """Float64 group BatchNorm over NHWC `x`: outputs, the gradients of
    `sum(outputs * upstream)` with respect to x, gamma and beta, and the
    first group's mean, unbiased variance (PyTorch's running_var update)."""
    group_size = group_size or len(x)
    outputs, grad_x = np.empty_like(x), np.empty_like(x)
    grad_gamma, grad_beta = np.zeros_like(gamma), np.zeros_like(beta)
    first = None
    for start in range(0, len(x), group_size):
        rows = slice(start, start + group_size)
        group, g = x[rows], upstream[rows]
        n = group.size / group.shape[-1]
        mean = group.mean(axis=(0, 1, 2))
        variance = ((group - mean) ** 2).mean(axis=(0, 1, 2))
        inverse = 1.0 / np.sqrt(variance + EPSILON)
        normalised = (group - mean) * inverse
        outputs[rows] = normalised * gamma + beta
        grad_gamma += (g * normalised).sum(axis=(0, 1, 2))
        grad_beta += g.sum(axis=(0, 1, 2))
        g_hat = g * gamma
        grad_x[rows] = inverse * (
            g_hat
            - g_hat.mean(axis=(0, 1, 2))
            - normalised * (g_hat * normalised).mean(axis=(0, 1, 2))
        )
        if first is None:
            first = (mean, variance * n / (n - 1))
    return outputs, (grad_x, grad_gamma, grad_beta), first


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -3.0], [0.5, 4.0], size=(8, 3, 3, 2))
    upstream = rng.normal(size=x.shape)
    gamma, beta = rng.normal(size=2), rng.normal(size=2)
    return x, upstream, gamma, beta


def new_layer(group_size, gamma, beta):
    layer = TorchBatchNormalization(group_size=group_size)
    layer.build((None, 3, 3, 2))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer


def forward_and_gradients(layer, x, upstream):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, training=True)
        objective = tf.reduce_sum(outputs * tf.cast(upstream, outputs.dtype))
    return outputs, tape.gradient(objective, [x, layer.gamma, layer.beta])


@pytest.mark.parametrize("group_size", [None, 8, 4, 2, 3, 16])
def test_forward_gradient_and_moving_statistics_match_numpy(batch, group_size):
    x, upstream, gamma, beta = batch
    expected, expected_grads, (mean, variance) = numpy_group_batch_norm(
        x, gamma, beta, group_size, upstream
    )
    layer = new_layer(group_size, gamma, beta)
    outputs, grads = forward_and_gradients(layer, x, upstream)
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(grad, expected_grad, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, 0.9 + 0.1 * variance, rtol=1e-6)


def test_variance_is_two_pass_not_difference_of_squares():
    # A channel far from zero: E[x^2] - E[x]^2 in float32 loses the variance.
    x = (1000.0 + np.arange(8.0) * 0.01).reshape(8, 1, 1, 1).astype("float32")
    moments = group_moments(tf.constant(x), 3, None)
    np.testing.assert_allclose(np.ravel(moments.variance)[0], np.var(x), rtol=1e-3)


def test_inference_uses_the_moving_statistics(batch):
    x, _, gamma, beta = batch
    layer = new_layer(2, gamma, beta)
    expected = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    expected.build(x.shape)
    expected.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x), expected(x), atol=1e-6)


@pytest.mark.parametrize("group_size", [0, -2, 2.5, "64"])
def test_refuses_a_group_that_is_not_a_positive_count(group_size):
    with pytest.raises(ValueError, match="group_size must be a positive number"):
        GroupBatchNormalization(group_size=group_size)


def test_synchronized_is_replaced_by_the_groups():
    with pytest.raises(ValueError, match="group_size"):
        TorchBatchNormalization(synchronized=True)
    with pytest.raises(ValueError, match="batch_norm_group"):
        keras_cskd.models.get("resnet8", 10, (32, 32, 3), synchronized=True)


def test_config_round_trip_keeps_the_group():
    layer = TorchBatchNormalization(group_size=64)
    restored = TorchBatchNormalization.from_config(layer.get_config())
    assert restored.group_size == 64 and restored.unbiased_moving_variance
    assert (restored.momentum, restored.epsilon) == (MOMENTUM, EPSILON)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "digits_cnn"])
def test_zoo_models_take_the_group(name):
    shape = (8, 8, 1) if name == "digits_cnn" else (32, 32, 3)
    model = keras_cskd.models.get(name, 10, shape, batch_norm_group=64)
    norms = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(isinstance(n, GroupBatchNormalization) for n in norms)
    assert {n.group_size for n in norms} == {64}


def run_on_two_replicas(layer_of, x, upstream, static_shapes):
    """Outputs (replicas' concatenated) and gradients (summed over replicas)
    of a layer on 2 logical CPUs, each replica holding half of `x`."""
    strategy = distribute.get_strategy("mirrored")
    with strategy.scope():
        layer = layer_of()

    @tf.function
    def step(x_shard, upstream_shard):
        return forward_and_gradients(layer, x_shard, upstream_shard)

    dataset = tf.data.Dataset.from_tensor_slices((x, upstream))
    dataset = dataset.batch(len(x), drop_remainder=static_shapes)
    shards = next(iter(strategy.experimental_distribute_dataset(dataset)))
    outputs, grads = strategy.run(step, args=shards)
    local = strategy.experimental_local_results
    outputs = np.concatenate([o.numpy() for o in local(outputs)])
    grad_x = np.concatenate([g.numpy() for g in local(grads[0])])
    summed = [sum(g.numpy() for g in local(grad)) for grad in grads[1:]]
    return outputs, [grad_x, *summed], layer


@pytest.mark.parametrize(
    "group_size, static_shapes",
    [(None, False), (3, False), (4, False), (4, True), (2, True)],
)
def test_two_replicas_compute_one_devices_group_batch_norm(
    batch, group_size, static_shapes
):
    """Groups spanning both replicas (None, 3) get every output's gradient
    through the shared mean and variance once: summed over replicas they are
    one device's; groups inside a shard (4, 2) are ghost batches, computed
    without communication when the shard's size is static."""
    x, upstream, gamma, beta = (a.astype("float32") for a in batch)
    expected, expected_grads, (mean, variance) = numpy_group_batch_norm(
        x.astype("float64"), gamma, beta, group_size, upstream.astype("float64")
    )
    outputs, grads, layer = run_on_two_replicas(
        lambda: new_layer(group_size, gamma, beta), x, upstream, static_shapes
    )
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(grad, expected_grad, atol=1e-4)
    for copy in layer.moving_mean.value.values:  # every replica's: replica 0's
        np.testing.assert_allclose(copy.numpy(), 0.1 * mean, atol=1e-6)
    for copy in layer.moving_variance.value.values:
        np.testing.assert_allclose(copy.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)


@pytest.mark.parametrize(
    "path, group",
    [
        ("configs/cifar100_distill.py", 64),
        ("configs/cifar100_teacher.py", 64),
        ("configs/imagenet_distill.py", 64),
        ("configs/imagenet_teacher.py", 32),
        ("configs/digits_cskd.py", 0),
    ],
)
def test_recipes_set_the_references_per_device_batch(path, group):
    assert config_module.load_config(path).batch_norm_group == group


def test_the_run_builds_its_model_with_the_configured_group():
    config = config_module.default_config()
    config.model, config.batch_norm_group = "resnet8", 16
    model = builders.build_model(config, num_classes=10, input_shape=(32, 32, 3))
    assert {
        layer.group_size
        for layer in model.layers
        if isinstance(layer, GroupBatchNormalization)
    } == {16}
    config.batch_norm_group = -1
    with pytest.raises(ValueError, match="batch_norm_group must be"):
        config_module.validate(config)
