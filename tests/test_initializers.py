"""Every zoo model starts where its reference PyTorch model starts.

The fixture `golden/init_statistics.npz` holds, for each of mdistiller's 23 CIFAR
models and each parameter, the mean, standard deviation and excess kurtosis of
its initial values, pooled over many torch seeds (`golden/make_init_statistics.py`).
Here each Keras weight is matched to its torch parameters by kind and torch-layout
shape and its initializer's distribution is measured the same way. No torch here.
"""

import collections
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd.models
from keras_cskd import initializers
from keras_cskd.batch_norm import TorchBatchNormalization

FIXTURE = np.load(Path(__file__).parent / "golden" / "init_statistics.npz")
ZOO = [str(name) for name in FIXTURE["models"]]
MIN_SAMPLES = 20_000
STD_RTOL = 0.05  # our std / the reference's, both estimated from >= 20k values
MEAN_ATOL = 0.05  # |our mean - the reference's| in units of the reference's std
KURTOSIS_ATOL = 0.25  # tells a normal (0) from a uniform (-1.2)


def _reference(name):
    """`{(kind, torch shape): [(torch name, mean, std, kurtosis), ...]}`."""
    groups = collections.defaultdict(list)
    columns = ("names", "kinds", "shapes", "mean", "std", "kurtosis")
    for param, kind, shape, mean, std, kurtosis in zip(
        *(FIXTURE[f"{name}/{c}"] for c in columns), strict=True
    ):
        shape = tuple(int(d) for d in str(shape).split("x"))
        groups[str(kind), shape].append((str(param), mean, std, kurtosis))
    return groups


def _torch_view(layer, weight):
    """`(kind, torch-layout shape, initializer)` of a Keras weight."""
    shape = tuple(weight.shape)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (k, k, C, m)
        if weight is layer.kernel:
            out = shape[2] * shape[3]
            return "conv.weight", (out, 1, *shape[:2]), layer.depthwise_initializer
        return "conv.bias", shape, layer.bias_initializer
    if isinstance(layer, keras.layers.Conv2D):  # (k, k, in / groups, out)
        if weight is layer.kernel:
            shape = (shape[3], shape[2], *shape[:2])
            return "conv.weight", shape, layer.kernel_initializer
        return "conv.bias", shape, layer.bias_initializer
    if isinstance(layer, keras.layers.Dense):  # (in, out)
        if weight is layer.kernel:
            return "linear.weight", shape[::-1], layer.kernel_initializer
        return "linear.bias", shape, layer.bias_initializer
    if isinstance(layer, keras.layers.BatchNormalization):
        if weight is layer.gamma:
            return "bn.weight", shape, layer.gamma_initializer
        return "bn.bias", shape, layer.beta_initializer
    raise TypeError(f"No torch counterpart for {weight.path} of {type(layer)}.")


def _is_random(initializer):
    return "seed" in initializer.get_config()


_RESAMPLED = {}


def _draws(initializer, shape, values):
    """`values` and fresh draws of `initializer` on `shape`: >= MIN_SAMPLES values."""
    config = initializer.get_config()
    key = (type(initializer).__name__, json.dumps(config, sort_keys=True), shape)
    if key not in _RESAMPLED:
        draws, seed = [], 1
        while values.size + sum(d.size for d in draws) < MIN_SAMPLES:
            fresh = type(initializer).from_config({**config, "seed": seed})
            draws.append(np.asarray(fresh(shape, "float32"), np.float64).ravel())
            seed += 1
        _RESAMPLED[key] = draws
    return np.concatenate([values, *_RESAMPLED[key]])


def _statistics(x):
    mean, std = x.mean(), x.std()
    return mean, std, np.mean((x - mean) ** 4) / std**4 - 3.0


def test_fixture_covers_the_zoo():
    assert set(ZOO) <= set(keras_cskd.models.names()) and len(ZOO) == 23
    assert str(FIXTURE["peer_commit"]) == "a08d46f"
    assert int(FIXTURE["min_samples"]) >= MIN_SAMPLES
    for name in ZOO:
        samples, std = FIXTURE[f"{name}/samples"], FIXTURE[f"{name}/std"]
        assert np.all((samples >= MIN_SAMPLES) | (std == 0)), name


def test_same_shaped_reference_parameters_share_their_init():
    """So matching a Keras weight by (kind, shape) is unambiguous."""
    for name in ZOO:
        for key, group in _reference(name).items():
            means = np.array([g[1] for g in group])
            stds = np.array([g[2] for g in group])
            if stds.max() == 0:
                assert np.ptp(means) == 0, (name, key)
            else:
                assert stds.min() > 0, (name, key)
                assert stds.max() / stds.min() < 1.03, (name, key)


@pytest.mark.large
@pytest.mark.parametrize("name", ZOO)
def test_initial_distributions_match_the_reference(name):
    keras.utils.set_random_seed(0)
    model = keras_cskd.models.get(name, num_classes=100, input_shape=(32, 32, 3))
    reference = _reference(name)
    ours = collections.Counter()
    random_values = set()
    failures = []
    for layer in model.layers:
        for weight in layer.trainable_weights:
            kind, shape, initializer = _torch_view(layer, weight)
            ours[kind, shape] += 1
            candidates = reference.get((kind, shape), [])
            if not candidates:
                failures.append(f"{weight.path}: no torch {kind} of shape {shape}")
                continue
            values = np.asarray(weight.numpy(), np.float64).ravel()
            if not _is_random(initializer):
                for param, mean, std, _ in candidates:
                    if std != 0 or not np.all(values == mean):
                        failures.append(f"{weight.path}: constant, {param} is not")
                continue
            random_values.add(values.tobytes())
            mean, std, kurtosis = _statistics(
                _draws(initializer, tuple(weight.shape), values)
            )
            for param, ref_mean, ref_std, ref_kurtosis in candidates:
                if not (
                    abs(std / ref_std - 1) <= STD_RTOL
                    and abs(mean - ref_mean) <= MEAN_ATOL * ref_std
                    and abs(kurtosis - ref_kurtosis) <= KURTOSIS_ATOL
                ):
                    failures.append(
                        f"{weight.path} vs {param}: std {std:.5g} / {ref_std:.5g}, "
                        f"mean {mean:.3g} / {ref_mean:.3g}, "
                        f"kurtosis {kurtosis:.2f} / {ref_kurtosis:.2f}"
                    )
    assert not failures, "\n".join(failures[:20])
    # One Keras weight per torch parameter (so each found its own counterpart).
    assert ours == collections.Counter({k: len(v) for k, v in reference.items()})
    # An initializer shared by layers would repeat its values in each of them.
    assert len(random_values) == sum(
        1 for w in model.trainable_weights if np.ptp(w.numpy()) > 0
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
            np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)


@pytest.mark.large
def test_a_zoo_model_saves_and_loads(tmp_path):
    """The initializers and `TorchBatchNormalization` survive a `.keras` file."""
    model = keras_cskd.models.get(
        "mobilenetv2", num_classes=10, input_shape=(32, 32, 3)
    )
    model.save(tmp_path / "model.keras")
    loaded = keras_cskd.models.load(tmp_path / "model.keras")
    for a, b in zip(model.layers, loaded.layers, strict=True):
        assert type(a) is type(b) and a.get_config() == b.get_config()
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(model(images).numpy(), loaded(images).numpy())


def _torch_fans(torch_shape):
    """`torch.nn.init._calculate_fan_in_and_fan_out` of a weight `[out, in, ...]`."""
    receptive = int(np.prod(torch_shape[2:]))
    return torch_shape[1] * receptive, torch_shape[0] * receptive


# (Keras kernel shape, depthwise, torch weight shape).
KERNELS = [
    ((512, 100), False, (100, 512)),  # Dense
    ((3, 3, 16, 32), False, (32, 16, 3, 3)),  # Conv2D
    ((1, 1, 80, 240), False, (240, 80, 1, 1)),  # Conv2D, 240 in, groups=3
    ((3, 3, 54, 1), True, (54, 1, 3, 3)),  # DepthwiseConv2D
    ((3, 3, 8, 2), True, (16, 1, 3, 3)),  # DepthwiseConv2D, multiplier 2
]


def _sample(make_initializer, shape, n=100_000):
    draws, seed = [], 0
    while sum(d.size for d in draws) < n:
        config = {**make_initializer().get_config(), "seed": seed}
        initializer = type(make_initializer()).from_config(config)
        draws.append(np.asarray(initializer(shape, "float32"), np.float64).ravel())
        seed += 1
    return np.concatenate(draws)


@pytest.mark.parametrize("shape, depthwise, torch_shape", KERNELS)
def test_torch_default_kernel_is_uniform_within_one_over_sqrt_fan_in(
    shape, depthwise, torch_shape
):
    bound = 1.0 / np.sqrt(_torch_fans(torch_shape)[0])
    x = _sample(lambda: initializers.torch_default_kernel(depthwise), shape)
    assert np.abs(x).max() <= bound * (1 + 1e-6)
    assert np.abs(x).max() >= bound * (1 - 1e-3)
    np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.01)
    np.testing.assert_allclose(_statistics(x)[2], -1.2, atol=0.05)


@pytest.mark.parametrize("shape, depthwise, torch_shape", KERNELS)
def test_kaiming_normal_fan_out_has_std_sqrt_two_over_fan_out(
    shape, depthwise, torch_shape
):
    std = np.sqrt(2.0 / _torch_fans(torch_shape)[1])
    x = _sample(lambda: initializers.kaiming_normal_fan_out(depthwise), shape)
    np.testing.assert_allclose(x.std(), std, rtol=0.01)
    assert abs(x.mean()) < 0.02 * std
    np.testing.assert_allclose(_statistics(x)[2], 0.0, atol=0.1)


def test_torch_default_bias_is_uniform_within_one_over_sqrt_fan_in():
    bound = 1.0 / np.sqrt(80)  # a 1x1 conv, 240 in, groups=3: fan_in 80
    x = _sample(lambda: initializers.torch_default_bias(80), (240,))
    assert bound * (1 - 1e-3) <= np.abs(x).max() <= bound * (1 + 1e-6)
    np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.01)


@pytest.mark.parametrize(
    "initializer",
    [
        initializers.kaiming_normal_fan_out(depthwise=True),
        initializers.torch_default_kernel(),
        initializers.torch_default_bias(512),
    ],
)
def test_initializers_serialize(initializer):
    config = keras.initializers.serialize(initializer)
    restored = keras.initializers.deserialize(json.loads(json.dumps(config)))
    assert restored.get_config() == initializer.get_config()


def _numpy_batch_norm(x, gamma, beta, moving_mean, moving_variance, momentum=0.9):
    """PyTorch's BatchNorm2d training step in float64 (channels last)."""
    axes = tuple(range(x.ndim - 1))
    mean, variance = x.mean(axes), x.var(axes)
    outputs = (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta
    moving_mean = momentum * moving_mean + (1 - momentum) * mean
    moving_variance = momentum * moving_variance + (1 - momentum) * x.var(axes, ddof=1)
    return outputs, moving_mean, moving_variance


def test_batch_norm_tracks_the_unbiased_variance_like_pytorch():
    rng = np.random.default_rng(0)
    layer = TorchBatchNormalization()
    layer.build((None, 3, 3, 4))
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    moving_mean, moving_variance = np.zeros(4), np.ones(4)
    for step in range(3):
        x = rng.normal(step, [0.5, 1.0, 2.0, 4.0], size=(2, 3, 3, 4))
        outputs, moving_mean, moving_variance = _numpy_batch_norm(
            x, gamma, beta, moving_mean, moving_variance
        )
        np.testing.assert_allclose(
            layer(x.astype("float32"), training=True).numpy(),
            outputs,
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, rtol=1e-5)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), moving_variance, rtol=1e-5
        )
    inference = (x - moving_mean) / np.sqrt(moving_variance + 1e-5) * gamma + beta
    np.testing.assert_allclose(
        layer(x.astype("float32"), training=False).numpy(),
        inference,
        rtol=1e-4,
        atol=1e-5,
    )
    restored = TorchBatchNormalization.from_config(layer.get_config())
    assert (restored.momentum, restored.epsilon) == (0.9, 1e-5)


@pytest.mark.large
def test_batch_norm_on_two_replicas_counts_the_global_batch():
    from test_distributed import two_cpus  # one MirroredStrategy per process

    strategy = two_cpus()
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, [0.5, 2.0], size=(4, 2, 2, 2))  # 2 examples per replica
    with strategy.scope():
        layer = TorchBatchNormalization()  # the global batch: one device's
        layer.build((None, 2, 2, 2))

    @tf.function
    def step(batch):
        return layer(batch, training=True)

    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x.astype("float32")).batch(4)
    )
    strategy.run(step, args=(next(iter(batches)),))
    _, moving_mean, moving_variance = _numpy_batch_norm(
        x, 1.0, 0.0, np.zeros(2), np.ones(2)
    )
    np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean, rtol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), moving_variance, rtol=1e-5
    )
