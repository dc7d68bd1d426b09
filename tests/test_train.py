"""train.py and training.run end to end: the files a run promises, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_cskd import config as config_module
from keras_cskd import training

pytestmark = pytest.mark.large  # multi-process, end-to-end or every zoo model

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--config.epochs=2", "--config.verbose=0"]


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_default_config_runs_end_to_end_and_writes_every_promised_file(tmp_path):
    workdir = tmp_path / "run"
    result = run_cli(f"--workdir={workdir}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("config.json", "log.csv", "student.keras", "summary.json"):
        assert (workdir / name).is_file(), name
    assert any((workdir / "tensorboard").rglob("events.out.tfevents.*"))
    assert (workdir / "export" / "savedmodel" / "saved_model.pb").is_file()
    assert (workdir / "export" / "model_float32.tflite").is_file()
    assert json.loads((workdir / "config.json").read_text())["loss"]["method"] == "cskd"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["method"] == "cskd" and summary["epochs"] == 2
    assert summary["teacher_test_accuracy"] > 0.9
    assert 0.0 <= summary["student_test_accuracy"] <= 1.0
    for key in ("last_epoch", "best_epoch", "seed", "wall_time_s"):
        assert key in summary
    tflite = summary["exports"]["tflite"]
    assert tflite["max_abs_logit_diff"] < 1e-4
    assert tflite["agreement"] >= 0.995
    assert "test accuracy, last epoch" in result.stdout
    keras.saving.load_model(workdir / "student.keras")  # loads


def test_mirrored_strategy_runs_the_default_config_on_two_logical_cpus(tmp_path):
    result = run_cli(
        f"--workdir={tmp_path / 'run'}",
        "--logical_cpus=2",
        "--config.strategy=mirrored",
        "--config.export.formats=",
        *QUICK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2


def test_list_shows_methods_models_and_configs():
    result = run_cli("--list")
    assert result.returncode == 0
    assert "cskd" in result.stdout and "digits_mlp" in result.stdout
    assert "digits_cskd" in result.stdout


def test_a_cli_error_is_one_line_with_a_nonzero_exit_and_no_workdir(tmp_path):
    result = run_cli(f"--workdir={tmp_path / 'run'}", "--config.loss.method=nope")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: ValueError: Invalid config: unknown distillation method 'nope'"
        )
    )
    assert not (tmp_path / "run").exists()


def test_several_seeds_are_aggregated(tmp_path):
    config = config_module.load_config(ROOT / "configs" / "digits_kd.py")
    config.update(epochs=1, verbose="0")
    config.export.formats = ""
    aggregate = training.run_seeds(config, tmp_path, seeds=[0, 1])
    assert aggregate["seeds"] == [0, 1]
    stats = aggregate["metrics"]["student_test_accuracy"]
    assert len(stats["values"]) == 2 and stats["std"] >= 0
    assert abs(stats["mean"] - sum(stats["values"]) / 2) < 1e-12
    assert json.loads((tmp_path / "seeds.json").read_text()) == aggregate
    for seed in (0, 1):
        summary = json.loads((tmp_path / f"seed_{seed}" / "summary.json").read_text())
        assert summary["seed"] == seed


def test_a_deterministic_run_leaves_op_determinism_as_it_found_it(
    tmp_path, monkeypatch
):
    """The switch is process-wide: a run with `config.deterministic` turns it
    on for itself only, failed or not (a later computation in the process
    keeps TensorFlow's usual kernels)."""
    from tensorflow.python.framework import config as tf_config

    seen = []

    def prepare(*args):
        seen.append(tf_config.is_op_determinism_enabled())
        raise RuntimeError("stop here")

    monkeypatch.setattr(training, "prepare", prepare)
    before = tf_config.is_op_determinism_enabled()
    config = config_module.default_config()
    config.deterministic = True
    with pytest.raises(RuntimeError, match="stop here"):
        training.run(config, tmp_path / "run")
    assert seen == [True]
    assert tf_config.is_op_determinism_enabled() == before
