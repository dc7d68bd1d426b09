"""The teacher a run distils from: its file (trained first when missing) and
the checks of the loaded teacher (its outputs, its test accuracy) made before
the run writes anything.

Example:

>>> path = teacher_path(config, "runs/kd", train=training.run)
>>> teacher, accuracy = load_checked(path, inputs, config.teacher)
"""

import warnings
from pathlib import Path

from keras_cskd import config as config_module
from keras_cskd import files, models
from keras_cskd.metrics import evaluate_accuracy


def teacher_path(config, workdir, train):
    """The teacher's path; `train(teacher_config, workdir / "teacher")` trains
    it from its own config first if the file is missing. A relative path
    missing here that the package ships (the digits teacher) is its copy
    (`files.shipped`): the default run works from an installed wheel."""
    path = files.shipped(config.teacher.path)
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
