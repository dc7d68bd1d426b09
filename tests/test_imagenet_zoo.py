"""The ImageNet zoo: the reference models' counts and, with ported weights, logits.

The fixture `golden/imagenet_zoo.npz` holds, for torchvision's ResNet-18/34/50
and mdistiller's ImageNet MobileNetV1, the trainable parameter and BatchNorm
counts, the `state_dict` keys and shapes, and the float64 logits and feature
means of the reference on two seeded images with a seeded NumPy state dict
(`golden/make_imagenet_zoo.py`, whose `random_state_dict` regenerates it here).
No torch here (the command-line test runs it in a subprocess).
"""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from golden.make_cifar_zoo import summarize
from golden.make_imagenet_zoo import (
    fixture_keys_and_shapes,
    random_images,
    random_state_dict,
)
from test_backends import skip_unless_installed

import keras_cskd.models
from keras_cskd.batch_norm import TorchBatchNormalization
from keras_cskd.models import porting

FIXTURE = np.load(Path(__file__).parent / "golden" / "imagenet_zoo.npz")
ZOO = [str(name) for name in FIXTURE["models"]]
FAST = ["resnet18_imagenet", "mobilenetv1_imagenet"]
# Max |Keras float32 - reference float64| over the logits, in units of the
# largest reference logit (measured: <= 1e-6; torch float32 itself is as far).
LOGITS_RTOL = 1e-5
_BY_SPEED = [
    name if name in FAST else pytest.param(name, marks=pytest.mark.large)
    for name in ZOO
]


def _keys_and_shapes(name):
    return fixture_keys_and_shapes(FIXTURE, name)


def _fixture_input_shape(name):
    return tuple(int(d) for d in FIXTURE[f"{name}/input_shape"])


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_fixture_covers_the_imagenet_zoo():
    assert ZOO == [
        "resnet18_imagenet",
        "resnet34_imagenet",
        "resnet50_imagenet",
        "mobilenetv1_imagenet",
    ]
    assert set(ZOO) <= set(keras_cskd.models.names())
    assert str(FIXTURE["torchvision_version"]).startswith("0.28.0")
    assert str(FIXTURE["mdistiller_commit"]) == "fae6658"


@pytest.mark.parametrize("name", _BY_SPEED)
def test_ported_weights_give_the_reference_logits(name):
    """Counts, PyTorch names and shapes, logits and features of the reference."""
    model = keras_cskd.models.get(name, 1000, _fixture_input_shape(name))
    assert _count(model.trainable_weights) == int(FIXTURE[f"{name}/trainable"])
    assert _count(model.non_trainable_weights) == int(FIXTURE[f"{name}/bn_statistics"])
    batch_norms = [
        layer for layer in model.layers if isinstance(layer, TorchBatchNormalization)
    ]
    assert len(batch_norms) == int(FIXTURE[f"{name}/batch_norms"])
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in batch_norms)

    keys, shapes = _keys_and_shapes(name)
    assert porting.torch_layout(model) == {
        key: shape
        for key, shape in zip(keys, shapes, strict=True)
        if not key.endswith(".num_batches_tracked")
    }
    porting.load_torch_state_dict(model, random_state_dict(keys, shapes))

    layers = [str(layer) for layer in FIXTURE[f"{name}/feature_layers"]]
    probe = keras.Model(
        model.input, [model.output, *(model.get_layer(n).output for n in layers)]
    )
    images = random_images(*_fixture_input_shape(name)[:2])
    logits, *features = probe(images)
    _assert_reference_taps(model, name, images)
    reference = FIXTURE[f"{name}/logits"]
    scale = np.abs(reference).max()
    logits = keras.ops.convert_to_numpy(logits)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=LOGITS_RTOL * scale)
    for layer, feature in zip(layers, features, strict=True):
        feature = keras.ops.convert_to_numpy(feature)
        if feature.ndim == 4:
            feature = feature.mean(axis=(1, 2))
        reference = FIXTURE[f"{name}/feature/{layer}"]
        np.testing.assert_allclose(
            feature,
            reference,
            rtol=0,
            atol=LOGITS_RTOL * np.abs(reference).max(),
            err_msg=layer,
        )


def _assert_reference_taps(model, name, images):
    """Every tap of `features(model)` against mdistiller's own (its ImageNet
    ResNet and MobileNetV1 with the same weights), reduced as
    `make_cifar_zoo.summarize` reduces them."""
    taps = keras_cskd.models.features(model)(images, training=False)
    for tap in ("feats", "preact_feats"):
        prefix = f"{name}/tap/{tap}/"
        assert len(taps[tap]) == sum(key.startswith(prefix) for key in FIXTURE)
        for i, value in enumerate(taps[tap]):
            _assert_summary(value, f"{prefix}{i}")
    _assert_summary(taps["pooled_feat"], f"{name}/tap/pooled_feat")


def _assert_summary(tap, key):
    reference = FIXTURE[key]
    np.testing.assert_allclose(
        summarize(keras.ops.convert_to_numpy(tap)),
        reference,
        rtol=0,
        atol=LOGITS_RTOL * np.abs(reference).max(),
        err_msg=key,
    )


def test_any_image_size_works():
    model = keras_cskd.models.get("resnet18_imagenet", 10, (None, None, 3))
    for size in (32, 57, 224):
        images = np.zeros((1, size, size, 3), np.float32)
        assert tuple(model(images).shape) == (1, 10)


def _kurtosis(x):
    return np.mean((x - x.mean()) ** 4) / x.var() ** 2 - 3.0


def _expected_init(model, layer):
    """`(distribution, scale)` of the reference's initial kernel of `layer`."""
    shape = layer.kernel.shape
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (k, k, C, m)
        fan_in, fan_out = shape[0] * shape[1], int(np.prod(shape))
    elif isinstance(layer, keras.layers.Conv2D):  # (k, k, in, out)
        fan_in, fan_out = int(np.prod(shape[:3])), shape[0] * shape[1] * shape[3]
    else:  # Dense (in, out)
        fan_in, fan_out = shape
    if model.name.startswith("resnet") and not isinstance(layer, keras.layers.Dense):
        return "normal", np.sqrt(2.0 / fan_out)  # kaiming_normal_ fan_out, relu
    return "uniform", 1.0 / np.sqrt(fan_in)  # PyTorch's default


@pytest.mark.parametrize("name", FAST)
def test_initial_weights_follow_the_reference_initializers(name):
    keras.utils.set_random_seed(0)
    model = keras_cskd.models.get(name, 1000, (32, 32, 3))
    pooled = {"normal": [], "uniform": []}
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            np.testing.assert_array_equal(layer.gamma.numpy(), 1.0)
            np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
            np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
            np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)
            continue
        if not layer.weights:
            continue
        values = np.asarray(layer.kernel.numpy(), np.float64).ravel()
        distribution, scale = _expected_init(model, layer)
        std = scale if distribution == "normal" else scale / np.sqrt(3)
        # 6 standard errors of a sample std (a normal's; a uniform's is smaller).
        tolerance = 6 / np.sqrt(2 * values.size)
        assert abs(values.std() / std - 1) < tolerance, layer.name
        assert abs(values.mean()) < 6 * std / np.sqrt(values.size), layer.name
        if distribution == "uniform":
            assert np.abs(values).max() <= scale * (1 + 1e-6), layer.name
        pooled[distribution].append(values / std)
        if isinstance(layer, keras.layers.Dense):  # uniform within 1/sqrt(in)
            bias = layer.bias.numpy()
            assert np.abs(bias).max() <= scale * (1 + 1e-6)
            assert np.abs(bias).max() > 0.9 * scale
        else:
            assert not layer.use_bias, layer.name
    # Excess kurtosis of all kernels: a normal's 0, a uniform's -1.2.
    for distribution, kurtosis in (("normal", 0.0), ("uniform", -1.2)):
        if pooled[distribution]:
            values = np.concatenate(pooled[distribution])
            assert abs(_kurtosis(values) - kurtosis) < 0.1, distribution


@pytest.mark.parametrize("name", ["resnet8", "resnet32x4", "resnet18"])
def test_cifar_resnets_have_the_reference_parameter_names(name):
    """Against the parameter names and shapes of mdistiller's CIFAR ResNets."""
    statistics = np.load(Path(__file__).parent / "golden" / "init_statistics.npz")
    model = keras_cskd.models.get(name, 100, (32, 32, 3))
    layout = porting.torch_layout(model)
    reference = {
        str(key): tuple(int(d) for d in str(shape).split("x"))
        for key, shape in zip(
            statistics[f"{name}/names"], statistics[f"{name}/shapes"], strict=True
        )
    }
    assert {
        key: shape
        for key, shape in layout.items()
        if not key.endswith(("running_mean", "running_var"))
    } == reference


@pytest.fixture(scope="module")
def mobilenet():
    """MobileNetV1 at 64x64 with the fixture's (input-size-free) state dict."""
    model = keras_cskd.models.get("mobilenetv1_imagenet", 1000, (64, 64, 3))
    state_dict = random_state_dict(*_keys_and_shapes("mobilenetv1_imagenet"))
    return porting.load_torch_state_dict(model, state_dict), state_dict


def _refused(model, state_dict, match):
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=match) as error:
        porting.load_torch_state_dict(model, state_dict)
    assert "\n" not in str(error.value)
    for weight, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)  # nothing was set


def test_porting_refuses_a_missing_key(mobilenet):
    model, state_dict = mobilenet
    state_dict = {k: v for k, v in state_dict.items() if k != "model.7.4.running_var"}
    _refused(model, state_dict, r"lacks 1 of the 137 keys .*'model\.7\.4\.running_var'")


def test_porting_refuses_an_unexpected_key(mobilenet):
    model, state_dict = mobilenet
    state_dict = {**state_dict, "fc2.weight": np.zeros((10, 1024), np.float32)}
    _refused(model, state_dict, r"1 keys that mobilenetv1_imagenet does not: 'fc2")


def test_porting_refuses_a_wrong_shape(mobilenet):
    model, state_dict = mobilenet
    state_dict = {**state_dict, "fc.weight": np.zeros((10, 1024), np.float32)}
    _refused(model, state_dict, r"'fc.weight' has shape \(10, 1024\) .* \(1000, 1024\)")


def test_porting_refuses_a_model_without_a_layout():
    model = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    with pytest.raises(ValueError, match="No PyTorch layout for a model named"):
        porting.load_torch_state_dict(model, {})


def test_porting_ignores_num_batches_tracked(mobilenet):
    model, state_dict = mobilenet
    assert any(k.endswith("num_batches_tracked") for k in state_dict)
    without = {k: v for k, v in state_dict.items() if "num_batches" not in k}
    porting.load_torch_state_dict(model, without)


@pytest.mark.large
def test_a_ported_model_saves_and_loads(mobilenet, tmp_path):
    model, _ = mobilenet
    model.save(tmp_path / "teacher.keras")
    loaded = keras_cskd.models.load(tmp_path / "teacher.keras")
    assert loaded.name == "mobilenetv1_imagenet"
    images = random_images(64, 64)
    np.testing.assert_array_equal(model(images).numpy(), loaded(images).numpy())


def test_command_line_refuses_an_output_that_is_not_keras(capsys):
    assert porting.main(["--checkpoint=x.pth", "--model=a", "--output=out.h5"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: ValueError: --output must end in .keras, not 'out.h5'."
    )


_SAVE_CHECKPOINT = """
import sys
import numpy as np
import torch
sys.path.insert(0, sys.argv[2])
from golden.make_imagenet_zoo import random_state_dict
fixture = np.load(sys.argv[3])
keys = [str(k) for k in fixture["resnet18_imagenet/keys"]]
shapes = [tuple(int(d) for d in str(s).split("x") if d)
          for s in fixture["resnet18_imagenet/shapes"]]
state = random_state_dict(keys, shapes)
torch.save({k: torch.from_numpy(v) for k, v in state.items()}, sys.argv[1])
"""


@pytest.mark.large
def test_command_line_ports_a_checkpoint(tmp_path):
    skip_unless_installed("torch")  # to write the .pth
    checkpoint, output = tmp_path / "resnet18.pth", tmp_path / "teacher.keras"
    tests = Path(__file__).parent
    subprocess.run(
        [
            sys.executable,
            "-c",
            _SAVE_CHECKPOINT,
            str(checkpoint),
            str(tests),
            str(tests / "golden" / "imagenet_zoo.npz"),
        ],
        check=True,
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_cskd.models.porting",
            f"--checkpoint={checkpoint}",
            "--model=resnet18_imagenet",
            f"--output={output}",
            "--input_shape=75,75,3",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr
    teacher = keras_cskd.models.load(output)
    logits = teacher(random_images(75, 75)).numpy()
    reference = FIXTURE["resnet18_imagenet/logits"]
    np.testing.assert_allclose(
        logits, reference, rtol=0, atol=LOGITS_RTOL * np.abs(reference).max()
    )
