"""Nothing lost, nothing silent: corrupt checkpoints, resumes refused, non-finite
losses, and a catalogue of bad inputs refused before any work (resuming after
a kill: test_resume.py)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import keras_cskd
from keras_cskd import callbacks, checkpointing, files, training
from keras_cskd import config as config_module
from keras_cskd.data import Dataset

ROOT = Path(__file__).resolve().parents[1]


class _Interrupt(RuntimeError):
    pass


@pytest.mark.large
def test_a_resume_with_a_changed_loss_is_refused_and_names_the_key(
    tmp_path, monkeypatch
):
    """A run stopped after its step-2 checkpoint resumes only with its own config
    (up to keys such as `epochs`); a changed loss is refused, naming the key."""
    workdir = tmp_path / "run"

    def stop_at_step_3(self, batch, logs=None):
        if batch == 2:
            raise _Interrupt

    with monkeypatch.context() as patch:
        patch.setattr(
            callbacks.StopOnNonFiniteLoss, "on_train_batch_end", stop_at_step_3
        )
        with pytest.raises(_Interrupt):
            training.run(digits_config(checkpoint_every_steps=2), workdir)
    assert checkpointing.load(workdir / "checkpoint")[0]["step"] == 2

    changed = digits_config(checkpoint_every_steps=2)
    changed.loss = config_module.loss_config("kd", temperature=4.0)
    with pytest.raises(
        ValueError, match=r"loss\.method: 'cskd' in the checkpoint, 'kd' now"
    ):
        training.run(changed, workdir)
    assert not (workdir / "summary.json").exists()

    longer = digits_config(checkpoint_every_steps=2, epochs=2)
    summary = training.run(longer, workdir)
    assert summary["last_epoch"] == 2


def digits_config(**overrides):
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.epochs = 1
    config.verbose = "0"
    config.export.formats = ""
    config.update(overrides)
    return config


def distiller_for_digits():
    teacher = keras.saving.load_model(ROOT / "saved_models" / "digits_teacher.keras")
    student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    distiller = keras_cskd.Distiller(teacher, student, "cskd")
    distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller, teacher


def newest(checkpoint):
    """The directory of the newest complete checkpoint."""
    return checkpoint / (checkpoint / checkpointing.POINTER_FILE).read_text().strip()


def edit_epoch(directory):
    metadata = json.loads((directory / "state.json").read_text())
    metadata["epoch"] = 0
    (directory / "state.json").write_text(json.dumps(metadata))


@pytest.mark.large
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "state.npz").write_bytes(b"truncated"), "does not match"),
        (lambda d: (d / "state.json").write_text("{"), "unreadable"),
        (edit_epoch, "state.json does not match its checksum"),
        (lambda d: (d / "state.npz").unlink(), "unreadable"),
    ],
    ids=["truncated_state", "broken_metadata", "edited_epoch", "missing_state"],
)
def test_a_corrupt_checkpoint_is_reported_and_never_used(tmp_path, damage, message):
    workdir = tmp_path / "run"
    distiller, teacher = distiller_for_digits()
    checkpointing.save(workdir / "checkpoint", distiller, 1, 0, {}, frozen=[teacher])
    damage(newest(workdir / "checkpoint"))
    with pytest.raises(checkpointing.CorruptCheckpointError, match=message) as error:
        training.run(digits_config(), workdir)
    assert "Delete" in str(error.value)
    assert not (workdir / "summary.json").exists()


def test_a_save_leaves_one_checkpoint_and_removes_what_killed_saves_left(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpointing.write(checkpoint, [np.zeros(2)], {"epoch": 1})
    (checkpoint / "00000002").mkdir()  # written, never pointed to
    (checkpoint / ".00000003.abc").mkdir()  # a staging directory
    (checkpoint / ".latest.xyz").mkdir()
    assert checkpointing.load(checkpoint)[0]["epoch"] == 1
    checkpointing.write(checkpoint, [np.ones(2)], {"epoch": 2})
    assert sorted(p.name for p in checkpoint.iterdir()) == ["00000002", "latest"]
    metadata, arrays = checkpointing.load(checkpoint)
    assert metadata["epoch"] == 2
    np.testing.assert_array_equal(arrays[0], np.ones(2))


def test_a_checkpoint_no_save_completed_is_no_checkpoint(tmp_path):
    (tmp_path / "checkpoint" / "00000001").mkdir(parents=True)
    assert checkpointing.load(tmp_path / "checkpoint") is None


def unversioned_checkpoint(directory, arrays, epoch, step):
    """A checkpoint as keras-cskd 0.1 wrote it: its two files in `directory`,
    the arrays' checksum in the metadata, no metadata checksum."""
    directory.mkdir(parents=True)
    np.savez(directory / "state.npz", *arrays)
    metadata = {"epoch": epoch, "step": step, "history": {}, "variables": []}
    metadata["sha256"] = files.sha256(directory / "state.npz")
    (directory / "state.json").write_text(json.dumps(metadata))


def test_a_checkpoint_of_keras_cskd_0_1_resumes_and_the_next_save_migrates_it(
    tmp_path,
):
    checkpoint = tmp_path / "checkpoint"
    unversioned_checkpoint(checkpoint, [np.arange(3.0)], epoch=2, step=5)
    metadata, arrays = checkpointing.load(checkpoint)
    assert (metadata["epoch"], metadata["step"], metadata["metrics"]) == (2, 5, [])
    np.testing.assert_array_equal(arrays[0], np.arange(3.0))
    checkpointing.write(checkpoint, [np.ones(2)], {"epoch": 3})
    assert sorted(p.name for p in checkpoint.iterdir()) == ["00000001", "latest"]
    assert checkpointing.load(checkpoint)[0]["epoch"] == 3


def test_a_corrupt_checkpoint_of_keras_cskd_0_1_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    unversioned_checkpoint(checkpoint, [np.arange(3.0)], epoch=2, step=5)
    np.savez(checkpoint / "state.npz", np.zeros(3))
    with pytest.raises(checkpointing.CorruptCheckpointError, match="checksum"):
        checkpointing.load(checkpoint)


@pytest.mark.large
def test_a_resume_with_another_teacher_is_one_line_naming_both_hashes(tmp_path, capsys):
    workdir = tmp_path / "run"
    distiller, teacher = distiller_for_digits()
    checkpointing.save(
        workdir / "checkpoint", distiller, 1, 0, {}, [teacher], teacher_sha256="0" * 64
    )
    assert training.main(digits_config(), workdir) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    teacher_sha256 = files.sha256(ROOT / "saved_models" / "digits_teacher.keras")
    assert f"(sha256 {teacher_sha256})" in line and f"(sha256 {'0' * 64})" in line
    assert "put that teacher back, or start over with --overwrite" in line
    assert not (workdir / "summary.json").exists()


@pytest.mark.large
def test_a_resume_with_fewer_epochs_than_done_is_one_line_naming_both(tmp_path, capsys):
    workdir = tmp_path / "run"
    distiller, teacher = distiller_for_digits()
    checkpointing.save(workdir / "checkpoint", distiller, 3, 0, {}, [teacher])
    assert training.main(digits_config(epochs=2), workdir) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "is 3 epochs in, more than epochs=2" in line
    assert "--config.epochs=3 or more" in line
    assert not (workdir / "summary.json").exists()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    distiller, teacher = distiller_for_digits()
    checkpointing.save(tmp_path / "checkpoint", distiller, 1, 0, {}, frozen=[teacher])
    other = keras_cskd.Distiller(
        teacher, keras_cskd.models.get("digits_mlp", 10, (8, 8, 1), hidden=32), "kd"
    )
    other.compile("sgd")
    with pytest.raises(checkpointing.CorruptCheckpointError, match="another model"):
        checkpointing.restore(tmp_path / "checkpoint", other, frozen=[teacher])


@pytest.mark.large
def test_a_checkpoint_restores_every_trained_variable(tmp_path):
    distiller, teacher = distiller_for_digits()
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    y = np.arange(64) % 10
    distiller.fit(x, y, epochs=1, verbose=0)
    checkpointing.save(tmp_path / "ckpt", distiller, 1, 0, {"loss": [1.0]}, [teacher])
    saved = [v.numpy() for v in checkpointing.trained_variables(distiller, [teacher])]
    distiller.fit(x, y, epochs=1, verbose=0)  # moves weights and optimizer state
    resumed = checkpointing.restore(tmp_path / "ckpt", distiller, [teacher])
    assert (resumed.epoch, resumed.step, resumed.history) == (1, 0, {"loss": [1.0]})
    restored = checkpointing.trained_variables(distiller, [teacher])
    for value, variable in zip(saved, restored, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())


class NaNFromEpochTwo(keras_cskd.losses.KD):
    uses_epoch = True

    def call(self, teacher_logits, student_logits, labels=None, epoch=None, **kwargs):
        # NaN in the value only: the gradient stays finite, so the weights
        # (and the cross-entropy) stay finite and only this term goes bad.
        return super().call(teacher_logits, student_logits) + tf.where(
            epoch >= 2, np.nan, 0.0
        )


@pytest.mark.large
def test_a_nan_in_the_distillation_term_stops_training_and_names_it():
    distiller, teacher = distiller_for_digits()
    distiller = keras_cskd.Distiller(teacher, distiller.student, NaNFromEpochTwo())
    distiller.compile("sgd")
    x = np.zeros((32, 8, 8, 1), "float32")
    y = np.arange(32) % 10
    with pytest.raises(
        callbacks.NonFiniteLossError,
        match=r"distillation_loss became nan at epoch 2, step 1",
    ):
        distiller.fit(
            x,
            y,
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[callbacks.StopOnNonFiniteLoss()],
        )


def with_dataset(labels):
    """A data source whose splits hold these labels (10 classes)."""
    images = np.zeros((len(labels), 8, 8, 1), "float32")
    split = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, "int32")))

    def change(config, tmp_path, monkeypatch):
        monkeypatch.setattr(
            keras_cskd.data.registry,
            "load",
            lambda *args, **kwargs: Dataset("bad", split, None, split, 10, (8, 8, 1)),
        )
        return config

    return change


def tiny_teacher(path, num_classes=10, input_shape=(8, 8, 1)):
    inputs = keras.Input(input_shape)
    outputs = keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs))
    keras.Model(inputs, outputs).save(path)
    return str(path)


def corrupt_file(path):
    path.write_bytes(b"PK\x03\x04 not really a zip")
    return str(path)


def setting(**values):
    """Sets dotted keys (`loss__method` for `loss.method`)."""

    def change(config, tmp_path, monkeypatch):
        for key, value in values.items():
            target = config
            *parents, leaf = key.split("__")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        return config

    return change


def teacher(make):
    def change(config, tmp_path, monkeypatch):
        config.teacher.update(path=make(tmp_path / "teacher.keras"), config="")
        return config

    return change


def as_written_in_a_file(**values):
    """A config file that builds its own ConfigDict, so nothing checked types."""

    def change(config, tmp_path, monkeypatch):
        return ml_collections.ConfigDict({**config.to_dict(), **values})

    return change


def empty_image_folder(config, tmp_path, monkeypatch):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "test").mkdir()
    config.data.name = f"folder:{tmp_path / 'images'}"
    return config


# name: (change to the digits config, expected message)
BAD_INPUTS = {
    "unknown_method": (setting(loss__method="nope"), "distillation method 'nope'"),
    "unknown_loss_argument": (
        setting(loss__temprature=3.0),
        "unknown key 'loss.temprature'",
    ),
    "unknown_model": (setting(model="nope"), "Unknown model 'nope'"),
    "unknown_dataset": (setting(data__name="nope"), "Unknown dataset 'nope'"),
    "unknown_strategy": (setting(strategy="gpus"), "strategy must be"),
    "unknown_export_format": (
        setting(export__formats="tflite_int4"),
        "Unknown export format 'tflite_int4'",
    ),
    "unknown_config_key": (setting(optimiser="adam"), "unknown key 'optimiser'"),
    "wrong_type": (as_written_in_a_file(epochs="ten"), "epochs must be a int"),
    "zero_epochs": (setting(epochs=0), "epochs must be an integer >= 1"),
    "negative_learning_rate": (
        setting(optimizer__learning_rate=-0.1),
        "learning_rate must be > 0",
    ),
    "bad_cswt_range": (setting(loss__t_min=6.0, loss__t_max=2.0), "t_min <= t_max"),
    "cache_with_mixup": (
        setting(data__cache_teacher_logits=True, data__mixup_alpha=0.2),
        "cache_teacher_logits cannot be combined",
    ),
    "scratch_with_two_views": (
        setting(loss__method="scratch", data__two_views=True),
        "data.two_views needs a teacher",
    ),
    "scratch_with_cached_logits": (
        setting(loss__method="scratch", data__cache_teacher_logits=True),
        "data.cache_teacher_logits needs a teacher",
    ),
    "two_views_with_mixup": (
        setting(data__two_views=True, data__mixup_alpha=0.2),
        "two_views and data.mixup_alpha cannot be combined",
    ),
    "two_view_loss_on_one_view": (
        setting(loss__method="two_view_cskd"),
        "two_view_cskd needs data.two_views=True",
    ),
    "milestones_out_of_order": (
        setting(optimizer__milestones=(180, 150)),
        "milestones must be increasing",
    ),
    "multiworker_without_tf_config": (
        setting(strategy="multiworker"),
        "needs the TF_CONFIG",
    ),
    "missing_teacher": (teacher(lambda path: str(path)), "does not exist"),
    "corrupt_teacher": (teacher(corrupt_file), "is corrupt"),
    "teacher_class_count": (
        teacher(lambda path: tiny_teacher(path, num_classes=5)),
        "predicts 5 classes",
    ),
    "teacher_input_shape": (
        teacher(lambda path: tiny_teacher(path, input_shape=(8, 8, 3))),
        "inputs of shape",
    ),
    "labels_out_of_range": (with_dataset([0, 3, 12]), r"labels in \[0, 12\]"),
    "empty_dataset": (with_dataset([]), "split of dataset 'bad' is empty"),
    "empty_image_folder": (empty_image_folder, "images"),
}


@pytest.mark.large
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_leaves_nothing(
    case, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    change, message = BAD_INPUTS[case]
    config = change(digits_config(), tmp_path, monkeypatch)
    workdir = tmp_path / "run"
    assert training.main(config, workdir) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert not workdir.exists()


@pytest.mark.large
def test_a_finished_workdir_is_not_overwritten_unless_asked(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert training.main(digits_config(), workdir) == 0
    finished = (workdir / "summary.json").read_text()
    assert training.main(digits_config(), workdir) == 1
    assert "holds a finished run" in capsys.readouterr().err
    assert (workdir / "summary.json").read_text() == finished
    assert training.main(digits_config(seed=1), workdir, overwrite=True) == 0
    assert json.loads((workdir / "summary.json").read_text())["seed"] == 1


@pytest.mark.large
def test_deterministic_runs_give_the_same_student(tmp_path):
    students = []
    for name in ("a", "b"):
        training.run(digits_config(deterministic=True, epochs=2), tmp_path / name)
        students.append(keras.saving.load_model(tmp_path / name / "student.keras"))
    for a, b in zip(students[0].get_weights(), students[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.large
def test_the_cli_turns_a_flag_error_into_a_nonzero_exit():
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config.no_such_key=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no_such_key" in result.stderr and "Traceback" not in result.stderr


def test_a_config_key_added_since_a_checkpoint_counts_as_its_default():
    current = json.loads(config_module.default_config().to_json_best_effort())
    saved = json.loads(config_module.default_config().to_json_best_effort())
    del saved["teacher"]["outputs"]  # made before the key existed
    assert config_module.changed_keys(saved, current) == {}
    current["teacher"]["outputs"] = "probabilities"
    assert config_module.changed_keys(saved, current) == {
        "teacher.outputs": ("logits", "probabilities")
    }
