"""A PyTorch `.pth` teacher is ported on load into a `.keras` file beside it,
reused while it is newer than the checkpoint; without PyTorch the port is
refused in one line naming `pip install torch`."""

import importlib.util
import os

import keras
import numpy as np
import pytest

import keras_cskd
from keras_cskd import config as config_module
from keras_cskd import teachers
from keras_cskd.models import porting

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="writing a .pth needs PyTorch: pip install keras-cskd[torch]"
)


def seeded_state_dict(model, seed=0):
    """A random NumPy state dict in PyTorch layout for the zoo `model`."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in porting.torch_layout(model).items():
        value = rng.normal(0.0, 0.1, shape)
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        state[key] = value.astype("float32")
    return state


def save_mdistiller_checkpoint(state_dict, path):
    """`torch.save({"model": state_dict, "epoch": 240}, path)`, as mdistiller."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: torch.from_numpy(value) for key, value in state_dict.items()}
    torch.save({"model": tensors, "epoch": 240}, path)


def teacher_config(path, teacher_config_spec=""):
    config = config_module.default_config()
    config.teacher.path = str(path)
    config.teacher.config = teacher_config_spec
    return config


@pytest.mark.parametrize(
    "path, spec, name",
    [
        ("cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth", "", "resnet32x4"),
        ("cifar_teachers/ResNet50_vanilla/ckpt_epoch_240.pth", "", "resnet50"),
        ("cifar_teachers/ShuffleV2_vanilla/ckpt_epoch_240.pth", "", "shufflenetv2"),
        ("teachers/wrn_40_2.pth", "", "wrn_40_2"),
        ("teachers/best.pth", "configs/cifar100_teacher.py:vgg13", "vgg13"),
    ],
)
def test_the_zoo_name_comes_from_the_path_or_the_teacher_config(path, spec, name):
    assert teachers.zoo_name(path, spec) == name


def test_an_unnamed_checkpoint_is_refused_saying_how_to_name_it():
    with pytest.raises(ValueError, match="resnet32x4_vanilla"):
        teachers.zoo_name("teachers/best.pth", "configs/digits_teacher.py")


def test_without_torch_the_port_is_refused_naming_pip_install(tmp_path, monkeypatch):
    checkpoint = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"not read")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else find_spec(name, *args),
    )
    with pytest.raises(ImportError, match="pip install torch") as error:
        teachers.teacher_path(teacher_config(checkpoint), tmp_path, train=None)
    assert "\n" not in str(error.value)


def test_a_missing_checkpoint_is_not_trained_into(tmp_path):
    config = teacher_config(tmp_path / "resnet8.pth", "configs/cifar100_teacher.py")
    with pytest.raises(FileNotFoundError, match="resnet8.pth"):
        teachers.teacher_path(config, tmp_path, train=None)


@needs_torch
def test_a_pth_teacher_is_ported_beside_it_and_reused(tmp_path, monkeypatch):
    model = keras_cskd.models.get("resnet8", 100, (32, 32, 3))
    state_dict = seeded_state_dict(model)
    checkpoint = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    save_mdistiller_checkpoint(state_dict, checkpoint)
    config = teacher_config(checkpoint)

    path = teachers.teacher_path(config, tmp_path, train=None)
    assert path == checkpoint.with_suffix(".keras") and path.is_file()
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = porting.load_torch_state_dict(model, state_dict)(images)
    ported = keras.saving.load_model(path)
    np.testing.assert_allclose(ported(images), expected, rtol=1e-6, atol=1e-6)

    def no_port(*args):
        raise AssertionError("ported again")

    monkeypatch.setattr(porting, "port_checkpoint", no_port)
    assert teachers.teacher_path(config, tmp_path, train=None) == path  # reused
    newer = path.stat().st_mtime + 10
    os.utime(checkpoint, (newer, newer))
    with pytest.raises(AssertionError, match="ported again"):
        teachers.teacher_path(config, tmp_path, train=None)


def test_config_teacher_given_a_file_sets_the_teacher_path():
    argv = ["train.py", "--config.teacher=t/resnet8.pth", "--config.teacher=a.keras"]
    assert config_module.teacher_file_shorthand(argv) == [
        "train.py",
        "--config.teacher.path=t/resnet8.pth",
        "--config.teacher.path=a.keras",
    ]
    other = ["--config.teacher={'path': 'x'}", "--config.teacher.path=x.pth"]
    assert config_module.teacher_file_shorthand(other) == other
