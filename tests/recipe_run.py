"""A few steps of a CIFAR-100 recipe on TFDS mock data, and its resumption.

`run_recipe` trains `configs/cifar100_distill.py:<method>,resnet32x4,resnet8x4`
with small zoo models in place of the pair (the recipe's loss, weights,
optimizer and data options unchanged); `assert_resumes_bitwise` kills such a
run right after a checkpoint and checks that the resumed run ends as the
uninterrupted one: the same student bitwise, log and summary.
"""

from pathlib import Path

import keras
import pytest
import tensorflow_datasets as tfds
from test_resume import Killed, assert_same_run

import keras_cskd
from keras_cskd import checkpointing, training
from keras_cskd import config as config_module

ROOT = Path(__file__).resolve().parents[1]
DISTILL = ROOT / "configs" / "cifar100_distill.py"
MOCK_EXAMPLES = 16  # two steps an epoch at batch 8


def recipe_config(method, workdir, teacher="resnet8", student="resnet8"):
    """The recipe with `teacher` and `student` (untrained, saved in
    `workdir`'s parent), one epoch of two deterministic steps, a checkpoint
    after every step, no export."""
    config = config_module.load_config(f"{DISTILL}:{method},resnet32x4,resnet8x4")
    teacher_path = Path(workdir).parent / f"teacher_{teacher}.keras"
    if not teacher_path.exists():
        keras.utils.set_random_seed(0)
        keras_cskd.models.get(teacher, 100, (32, 32, 3)).save(teacher_path)
    config.model = student
    config.teacher.path = str(teacher_path)
    config.teacher.allow_untrained = True  # an untrained teacher, on mock data
    config.update(epochs=1, deterministic=True, checkpoint_every_steps=1, verbose="0")
    config.data.batch_size = 8
    # BatchNorm over the whole batch of 8: the recipe's groups of 64 would
    # trace the general group path, for nothing the recipe changes.
    config.batch_norm_group = 0
    config.export.formats = ""
    return config


def run_recipe(method, workdir, **models):
    """Runs the recipe (`recipe_config`) to its end; returns its summary."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        return training.run(recipe_config(method, workdir, **models), workdir)


def assert_resumes_bitwise(method, tmp_path, monkeypatch, kill_after_save=1, **models):
    """Runs the recipe uninterrupted, and again killed right after its
    `kill_after_save`th checkpoint then resumed: the same run, bit for bit.
    Checks too that the saved student holds the student's weights only (no
    loss module). Returns the uninterrupted run's summary."""
    reference, workdir = tmp_path / "uninterrupted", tmp_path / "resumed"
    summary = run_recipe(method, reference, **models)
    with monkeypatch.context() as patch:
        patch.setenv(checkpointing.KILL_AFTER_SAVE, str(kill_after_save))
        patch.setattr(checkpointing, "_saves", 0)
        patch.setattr(checkpointing, "_kill", _raise_killed)
        with pytest.raises(Killed):
            run_recipe(method, workdir, **models)
    assert (workdir / "checkpoint").exists()
    run_recipe(method, workdir, **models)
    assert_same_run(workdir, reference)
    _assert_student_only(reference / "student.keras", models.get("student", "resnet8"))
    return summary


def _raise_killed():
    raise Killed


def _assert_student_only(path, student_name):
    saved = keras.saving.load_model(path)
    fresh = keras_cskd.models.get(student_name, 100, (32, 32, 3))
    assert [w.shape for w in saved.weights] == [w.shape for w in fresh.weights]
