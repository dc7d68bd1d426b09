"""The teacher a run distils from: its file (trained first when missing) and
the checks of the loaded teacher (its outputs, its test accuracy) made before
the run writes anything.

Example:

```python
path = teacher_path(config, "runs/kd", train=training.run)
teacher, accuracy = load_checked(path, inputs, config.teacher)
```
"""

import importlib.util
import re
import warnings
from pathlib import Path

from keras_cskd import config as config_module
from keras_cskd import files, models
from keras_cskd.metrics import evaluate_accuracy

PYTORCH_SUFFIX = ".pth"
# mdistiller's names of its CIFAR-100 teachers and students
# (`models/cifar/__init__.py`'s `cifar_model_dict`) that the zoo spells otherwise.
MDISTILLER_NAMES = {
    "ResNet18": "resnet18",
    "ResNet50": "resnet50",
    "MobileNetV2": "mobilenetv2",
    "ShuffleV1": "shufflenetv1",
    "ShuffleV2": "shufflenetv2",
}


def teacher_path(config, workdir, train, inputs=None):
    """The teacher's path; `train(teacher_config, workdir / "teacher")` trains
    it from its own config first if the file is missing. A PyTorch checkpoint
    (`.pth`) is ported into a `.keras` file beside it (`ported_teacher`), for
    the classes and image shape of `inputs` (a run's inputs; CIFAR-100's
    without). A relative path missing here that the package ships (the digits
    teacher) is its copy (`files.shipped`): the default run works from an
    installed wheel."""
    path = files.shipped(config.teacher.path)
    if path.suffix == PYTORCH_SUFFIX:
        shape = (inputs.num_classes, inputs.input_shape) if inputs else (100, None)
        return ported_teacher(path, zoo_name(path, config.teacher.config), *shape)
    if not path.exists() and not config.teacher.config:
        raise FileNotFoundError(
            f"The teacher {path} does not exist: set teacher.path to a trained "
            "teacher, or teacher.config to the config that trains it."
        )
    if not path.exists():
        teacher_config = config_module.load_config(config.teacher.config)
        teacher_config.save_model_to = str(path)
        teacher_config.strategy = config.strategy
        print(f"Teacher {path} is missing: training it with {config.teacher.config}.")
        train(teacher_config, Path(workdir) / "teacher")
    return path


def load_checked(path, inputs, teacher_config):
    """The teacher at `path` (its outputs checked on the first test images)
    and its test accuracy, measured before training: a teacher near chance (a
    wrong or untrained one would waste the whole run) is refused unless
    `teacher.allow_untrained`, which only warns.

    Returns:
        `(teacher, test accuracy)`.
    """
    teacher = models.load_teacher(
        path,
        inputs.dataset,
        teacher_config.outputs,
        images=inputs.first_test_images(),
    )
    accuracy = evaluate_accuracy(teacher, inputs.test)
    chance = 1.0 / inputs.num_classes
    if accuracy >= 1.5 * chance:
        return teacher, accuracy
    problem = (
        f"The teacher {path} is near chance on the test split of {inputs.name} "
        f"(accuracy {accuracy:.3f}, chance {chance:.3f})"
    )
    if not teacher_config.allow_untrained:
        raise ValueError(
            f"{problem}: set teacher.path to a teacher trained on this dataset (with "
            "its normalisation), or teacher.allow_untrained=True to distil from it "
            "deliberately."
        )
    warnings.warn(f"{problem}; teacher.allow_untrained is set.", stacklevel=2)
    return teacher, accuracy


def zoo_name(checkpoint, teacher_config=""):
    """The zoo model a PyTorch checkpoint holds, from its path or the config.

    Tried in order: mdistiller's folder naming (`resnet32x4_vanilla/
    ckpt_epoch_240.pth`, `ResNet50_vanilla/...`), the file's name
    (`resnet32x4.pth`), and the argument of `teacher.config`
    (`configs/cifar100_teacher.py:resnet32x4`).

    Raises:
        ValueError: when none of them names a zoo model.

    Example:

    >>> zoo_name("cifar_teachers/ResNet50_vanilla/ckpt_epoch_240.pth")
    'resnet50'
    """
    checkpoint = Path(checkpoint)
    folder = re.sub(r"_vanilla$", "", checkpoint.parent.name)
    argument = str(teacher_config or "").rpartition(".py:")[2]
    known = set(models.names())
    for candidate in (folder, checkpoint.stem, argument):
        name = MDISTILLER_NAMES.get(candidate, candidate)
        if name in known:
            return name
    raise ValueError(
        f"Cannot tell which zoo model the PyTorch checkpoint {checkpoint} holds: "
        "keep mdistiller's folder name (resnet32x4_vanilla/ckpt_epoch_240.pth), "
        "or set teacher.config to the teacher's config (e.g. "
        "configs/cifar100_teacher.py:resnet32x4)."
    )


def ported_teacher(checkpoint, model_name, num_classes=100, input_shape=None):
    """The `.keras` file beside the PyTorch checkpoint `checkpoint`, ported
    into the zoo model `model_name` (`keras_cskd.models.porting`) unless one
    at least as new as the checkpoint is there already. Writing it needs
    PyTorch; reading it back does not.

    Returns:
        The `.keras` path (`x.pth` -> `x.keras`).

    Raises:
        FileNotFoundError: if `checkpoint` does not exist.
        ImportError: if the port needs PyTorch and it is not installed.

    Example:

    ```python
    ported_teacher("resnet32x4_vanilla/ckpt_epoch_240.pth", "resnet32x4")
    # -> Path("resnet32x4_vanilla/ckpt_epoch_240.keras"), written on the first call
    ```
    """
    from keras_cskd.models import porting

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"The teacher checkpoint {checkpoint} does not exist.")
    ported = checkpoint.with_suffix(".keras")
    if ported.is_file() and ported.stat().st_mtime >= checkpoint.stat().st_mtime:
        return ported
    if importlib.util.find_spec("torch") is None:
        raise ImportError(
            f"The teacher {checkpoint} is a PyTorch checkpoint; porting it needs "
            "PyTorch: pip install torch."
        )
    print(f"Porting the PyTorch teacher {checkpoint} ({model_name}) to {ported}.")
    porting.port_checkpoint(
        checkpoint, model_name, ported, num_classes, input_shape or (32, 32, 3)
    )
    return ported
