"""The built wheel works: installed (not editable) in a fresh venv, from another
directory, `python -m keras_cskd.train` runs the digits default with the teacher
the package ships, and `python -m keras_cskd.export` exports its student.

The venv reuses this environment's packages (TensorFlow, Keras, ...) through a
`.pth` file, and the wheel is installed with `--no-deps`, so nothing is
downloaded; the wheel's own `keras_cskd` comes first on its path.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(command, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
    """The python of a fresh venv holding the wheel built from this checkout."""
    pytest.importorskip("build", reason='needs `pip install "keras-cskd[test]"`')
    work = tmp_path_factory.mktemp("wheel")
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation",
         "--outdir", str(work / "dist"), str(ROOT)],
        cwd=work,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("keras_cskd-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], work)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], work)
    # After the install, so pip never sees this environment's keras_cskd.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    purelib = venv / "lib" / version / "site-packages"
    # Every site directory of this interpreter (a .pth in one is not followed).
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (purelib / "outer-environment.pth").write_text("\n".join(outer) + "\n")
    return python


@pytest.mark.large
def test_the_wheel_trains_the_default_job_and_exports_from_another_directory(
    wheel_python, tmp_path
):
    where = _run(
        [str(wheel_python), "-c", "import keras_cskd; print(keras_cskd.__file__)"],
        cwd=tmp_path,
    )
    assert ROOT not in Path(where.strip()).parents  # the wheel's, not the checkout's
    # The default job (configs/digits_cskd.py's, shipped), shortened.
    _run(
        [str(wheel_python), "-m", "keras_cskd.train", "--workdir=run",
         "--config.epochs=2", "--config.export.formats=tflite"],
        cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher_test_accuracy"] > 0.9  # the shipped teacher
    output = _run(
        [str(wheel_python), "-m", "keras_cskd.export", "--model=run/student.keras",
         "--output=export", "--formats=savedmodel,tflite"],
        cwd=tmp_path,
    )  # fmt: skip
    assert "tflite" in output
    assert (tmp_path / "export" / "model_float32.tflite").is_file()


def test_the_shipped_default_config_is_the_checkouts_default_run():
    from keras_cskd import config as config_module

    shipped = config_module.load_config(ROOT / "keras_cskd/assets/digits_cskd.py")
    checkout = config_module.load_config(ROOT / "configs/digits_cskd.py")
    assert shipped.to_dict() == checkout.to_dict()


def test_a_missing_relative_teacher_path_is_the_shipped_teacher(tmp_path, monkeypatch):
    from keras_cskd import files

    monkeypatch.chdir(tmp_path)
    path = files.shipped("saved_models/digits_teacher.keras")
    assert path == files.ASSETS / "digits_teacher.keras" and path.is_file()
    assert files.shipped("saved_models/other.keras") == Path("saved_models/other.keras")
