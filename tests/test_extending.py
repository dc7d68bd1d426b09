"""docs/extending.md's worked example runs: a dataset, a model and a loss
registered from outside the package, trained through `training.run` by a
config that names them."""

import csv
import re
from pathlib import Path

import keras

from keras_cskd import data, losses, models

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"


def guide_script(epochs):
    """The guide's Python blocks, in order, as one script (fewer epochs)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    script = "\n".join(blocks)
    assert "config.epochs = 10" in script
    return script.replace("config.epochs = 10", f"config.epochs = {epochs}")


def test_the_guide_registers_and_trains_a_dataset_a_model_and_a_loss(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the guide writes runs/ where it runs
    namespace = {"__name__": "my_project"}
    exec(compile(guide_script(epochs=1), str(GUIDE), "exec"), namespace)

    assert "stripes" in data.names()
    assert "tiny_mlp" in models.names()
    assert losses.get_class("logit_mse") is namespace["LogitMSE"]
    summary = namespace["summary"]
    assert summary["student_test_accuracy"] > 0.9  # three bright bands
    run = tmp_path / "runs" / "stripes_logit_mse"
    with open(run / "log.csv") as log:
        rows = list(csv.DictReader(log))
    assert len(rows) == 1 and float(rows[-1]["distillation_loss"]) > 0
    student = keras.saving.load_model(run / "student.keras")
    assert student.output_shape == (None, 3)
