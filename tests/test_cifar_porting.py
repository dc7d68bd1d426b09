"""Porting mdistiller's CIFAR models: every zoo model gives the reference's logits.

The fixture `golden/cifar_zoo.npz` holds, for each of the 23 CIFAR zoo models as
mdistiller @ a08d46f defines them (`models/cifar/*.py`, 100 classes), the
`state_dict` keys and shapes and the float64 inference-mode logits and feature
taps (`feats`, `preact_feats`, `pooled_feat`; feature maps reduced to their
per-channel spatial mean and mean square) of two seeded 32x32 images with a
seeded NumPy state dict loaded (`golden/make_cifar_zoo.py`).
The state dict (BatchNorm running statistics random too) and the images are
regenerated here with the same functions, so the test needs no torch; the
command-line tests, which write `.pth` files, do.
"""

from pathlib import Path

import keras
import numpy as np
import pytest
from golden.make_cifar_zoo import IMAGE_SIZE, MODELS, SEED, summarize
from golden.make_imagenet_zoo import (
    fixture_keys_and_shapes,
    random_images,
    random_state_dict,
)

import keras_cskd.models
from keras_cskd.models import porting

FIXTURE = np.load(Path(__file__).parent / "golden" / "cifar_zoo.npz")
ZOO = [str(name) for name in FIXTURE["models"]]
NEEDS_TORCH = "writing a .pth needs PyTorch: pip install -e '.[torch]'"
# One model of each reference file in the fast tier; the rest take ~1-2 s each.
FAST = ["resnet8", "resnet18", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1"]
FAST += ["shufflenetv2"]
# Max |Keras float32 - reference float64| over the logits, in units of the
# largest reference logit (measured: <= 5.1e-7; torch float32 itself <= 5.1e-7).
LOGITS_RTOL = 1e-5
_BY_SPEED = [
    name if name in FAST else pytest.param(name, marks=pytest.mark.large)
    for name in ZOO
]


def _keys_and_shapes(name):
    return fixture_keys_and_shapes(FIXTURE, name)


def _seeded(name):
    """The zoo model `name` and the fixture's seeded state dict for it."""
    model = keras_cskd.models.get(name, int(FIXTURE["num_classes"]), (32, 32, 3))
    return model, random_state_dict(*_keys_and_shapes(name), seed=SEED)


def _images():
    return random_images(IMAGE_SIZE, IMAGE_SIZE, seed=SEED)


def _assert_close(value, key):
    reference = FIXTURE[key]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(value),
        reference,
        rtol=0,
        atol=LOGITS_RTOL * np.abs(reference).max(),
        err_msg=key,
    )


def _assert_reference_logits(model, name):
    """The logits and every feature tap of `keras_cskd.models.features`."""
    taps = keras_cskd.models.features(model)(_images(), training=False)
    _assert_close(taps["logits"], f"{name}/logits")
    for tap in ("feats", "preact_feats"):
        prefix = f"{name}/tap/{tap}/"
        assert len(taps.get(tap, [])) == sum(k.startswith(prefix) for k in FIXTURE)
        for i, value in enumerate(taps.get(tap, [])):
            value = summarize(keras.ops.convert_to_numpy(value))
            _assert_close(value, f"{prefix}{i}")
    pooled = keras.ops.convert_to_numpy(taps["pooled_feat"])
    _assert_close(summarize(pooled), f"{name}/tap/pooled_feat")


def test_fixture_covers_the_cifar_zoo():
    cifar = {
        name
        for name in keras_cskd.models.names()
        if not name.endswith("_imagenet") and not name.startswith("digits")
    }
    assert sorted(ZOO) == sorted(cifar) == sorted(MODELS)
    assert len(ZOO) == 23
    assert str(FIXTURE["mdistiller_commit"]) == "a08d46f"
    assert int(FIXTURE["seed"]) == SEED and int(FIXTURE["image_size"]) == IMAGE_SIZE


@pytest.mark.parametrize("name", _BY_SPEED)
def test_ported_weights_give_the_reference_logits(name):
    """PyTorch names and shapes, then logits with eval-mode BatchNorm."""
    model, state_dict = _seeded(name)
    keys, shapes = _keys_and_shapes(name)
    assert porting.torch_layout(model) == {
        key: shape
        for key, shape in zip(keys, shapes, strict=True)
        if not key.endswith(".num_batches_tracked")
    }
    porting.load_torch_state_dict(model, state_dict)
    _assert_reference_logits(model, name)


def _refused(model, state_dict, match):
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=match) as error:
        porting.load_torch_state_dict(model, state_dict)
    assert "\n" not in str(error.value)
    for weight, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)  # nothing was set


def test_porting_refuses_another_models_state_dict():
    model, _ = _seeded("wrn_40_2")
    _, other = _seeded("wrn_16_2")
    _refused(model, other, r"lacks 120 of the 190 keys of wrn_40_2: 'block1\.layer\.2")


def test_porting_refuses_a_state_dict_of_other_classes():
    model = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    _, cifar100 = _seeded("resnet8")
    _refused(
        model,
        cifar100,
        r"^'fc.weight' has shape \(100, 64\) in the state dict but "
        r"resnet8 needs \(10, 64\) \(for logits/kernel\)\.$",
    )


def test_porting_names_the_supported_models():
    model = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1))
    with pytest.raises(ValueError, match="the 23 CIFAR models") as error:
        porting.load_torch_state_dict(model, {})
    assert "\n" not in str(error.value)


def _save_checkpoint(torch, name, path, wrap):
    """The seeded state dict of `name` as a `.pth`, as `wrap` packs it."""
    _, state_dict = _seeded(name)
    tensors = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    torch.save(wrap(tensors), path)
    return path


def _mdistiller_checkpoint(torch):
    """`ckpt_epoch_240.pth` as RepDistiller's `train_teacher.py` saves it."""

    def wrap(state_dict):
        return {
            "epoch": 240,
            "model": state_dict,
            "accuracy": torch.tensor(79.42),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005}]},
        }

    return wrap


@pytest.mark.parametrize(
    "name, packing",
    [("resnet8", "state_dict"), ("vgg8", "mdistiller"), ("wrn_16_2", "module")],
)
def test_command_line_ports_a_checkpoint(name, packing, tmp_path):
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    wrap = {
        "state_dict": lambda state_dict: state_dict,
        "mdistiller": _mdistiller_checkpoint(torch),
        "module": lambda state_dict: {f"module.{k}": v for k, v in state_dict.items()},
    }[packing]
    checkpoint = _save_checkpoint(torch, name, tmp_path / "ckpt.pth", wrap)
    output = tmp_path / "teacher.keras"
    # The CIFAR defaults: 100 classes, 32x32x3 images.
    assert (
        porting.main(
            [f"--checkpoint={checkpoint}", f"--model={name}", f"--output={output}"]
        )
        == 0
    )
    teacher = keras_cskd.models.load(output)
    assert teacher.name == name and teacher.input_shape == (None, 32, 32, 3)
    _assert_reference_logits(teacher, name)


def test_command_line_refuses_a_checkpoint_without_a_state_dict(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"epoch": 240, "best_acc": 79.4}, checkpoint)
    output = tmp_path / "teacher.keras"
    args = [f"--checkpoint={checkpoint}", "--model=resnet8", f"--output={output}"]
    assert porting.main(args) == 1
    assert capsys.readouterr().err == (
        f"error: ValueError: {checkpoint} holds a dict of 'best_acc', 'epoch', "
        "not a state_dict (names to tensors, itself or under 'model', "
        "'state_dict', 'net'); save one with torch.save(model.state_dict(), path).\n"
    )
    assert not output.exists()


def test_command_line_refuses_a_mismatched_checkpoint_in_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason=NEEDS_TORCH)
    checkpoint = _save_checkpoint(
        torch, "resnet8", tmp_path / "ckpt.pth", _mdistiller_checkpoint(torch)
    )
    output = tmp_path / "teacher.keras"
    args = [f"--checkpoint={checkpoint}", "--model=resnet32x4", f"--output={output}"]
    assert porting.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: ValueError: The state dict lacks 125 of the 172 keys of resnet32x4:"
    ), err
    assert not output.exists()
