"""The porter's command line writes its `.keras` file atomically."""

import errno

import keras
import numpy as np
import pytest

import keras_cskd
from keras_cskd.models import porting

torch = pytest.importorskip(
    "torch", reason="reading a .pth needs PyTorch: pip install -e '.[torch]'"
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random `state_dict` of the CIFAR `resnet8`, saved as a `.pth`."""
    model = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    rng = np.random.default_rng(0)
    state = {
        key: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        for key, shape in porting.torch_layout(model).items()
    }
    path = tmp_path_factory.mktemp("porting") / "resnet8.pth"
    torch.save(state, path)
    return path


def _port(checkpoint, output):
    return porting.main(
        [
            f"--checkpoint={checkpoint}",
            "--model=resnet8",
            "--num_classes=10",
            "--input_shape=32,32,3",
            f"--output={output}",
        ]
    )


def test_a_save_that_fails_midway_leaves_the_old_file_intact(
    checkpoint, tmp_path, monkeypatch, capsys
):
    output = tmp_path / "teacher.keras"
    output.write_bytes(b"the earlier port")

    def full_disk(model, filepath, *args, **kwargs):
        with open(filepath, "wb") as file:
            file.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    assert _port(checkpoint, output) == 1
    assert capsys.readouterr().err == (
        "error: OSError: [Errno 28] No space left on device\n"
    )
    assert output.read_bytes() == b"the earlier port"
    assert [path.name for path in tmp_path.iterdir()] == ["teacher.keras"]


def test_a_port_replaces_the_old_file_with_a_loadable_model(checkpoint, tmp_path):
    output = tmp_path / "teacher.keras"
    output.write_bytes(b"the earlier port")
    assert _port(checkpoint, output) == 0
    teacher = keras_cskd.models.load(output)
    assert teacher.name == "resnet8" and teacher.output_shape == (None, 10)
    assert [path.name for path in tmp_path.iterdir()] == ["teacher.keras"]
