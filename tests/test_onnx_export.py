"""Specification of the ONNX formats of `keras_cskd.export` (`onnx`, `onnx_int8`):
refused without the `[onnx]` extra, naming the pip line, before any training;
with it, ONNX Runtime's logits equal Keras's for the zoo's convolutions (plain,
grouped with channel shuffles, depthwise) and int8 keeps digits' accuracy."""

import importlib.util
import json

import keras
import numpy as np
import pytest

from keras_cskd import config as config_module
from keras_cskd import data, models
from keras_cskd import export as export_lib
from keras_cskd.export import layout, onnx_conversion, runners

ONNX_PIP_LINE = layout.ONNX_PIP_LINE
needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in layout.ONNX_PACKAGES),
    reason=f"needs the [onnx] extra: {ONNX_PIP_LINE}",
)
# ONNX Runtime's float32 logits against Keras's: float32 rounding of the same
# graph (fused BatchNorm, reordered sums), far below any logit gap that decides
# a class.
LOGIT_TOLERANCE = 1e-4


@pytest.fixture
def without_onnx(monkeypatch):
    """An environment in which the `[onnx]` extra is not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: (
            None if name in layout.ONNX_PACKAGES else find_spec(name, *args)
        ),
    )


@pytest.mark.parametrize("formats", ["onnx", "savedmodel,onnx_int8"])
def test_onnx_formats_without_the_extra_are_refused_with_the_pip_line(
    without_onnx, formats
):
    with pytest.raises(ValueError, match="onnx") as error:
        export_lib.parse_formats(formats)
    assert str(error.value).endswith(ONNX_PIP_LINE)


def test_a_config_exporting_onnx_without_the_extra_is_refused_before_training(
    without_onnx,
):
    config = config_module.load_config("configs/digits_cskd.py")
    config.export.formats = "savedmodel,onnx"
    with pytest.raises(ValueError, match="export.formats: .*keras-cskd\\[onnx\\]"):
        config_module.validate(config)


def test_the_formats_without_onnx_need_no_extra(without_onnx):
    assert export_lib.parse_formats("savedmodel,tflite") == ("savedmodel", "tflite")


def _randomised(model, seed=0):
    """`model` with every weight moved off its initial value (zero-initialised
    classifiers and BatchNorm statistics would hide a wrong graph)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = variable.numpy()
        if "variance" in variable.path:
            value = rng.uniform(0.5, 2.0, value.shape)
        elif "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, value.shape)
        else:
            value = value + rng.normal(0.0, 0.05, value.shape)
        variable.assign(value.astype(variable.dtype))
    return model


@needs_onnx
def test_onnx_logits_equal_keras_logits_for_the_digits_mlp(tmp_path):
    student = _randomised(models.get("digits_mlp", 10, (8, 8, 1)))
    paths = export_lib.export(student, tmp_path / "export", formats="onnx")
    assert paths["onnx"].name == "student.onnx"
    images = np.random.default_rng(1).uniform(0, 1, (9, 8, 8, 1)).astype("f4")
    onnx_runner = runners.runner("onnx", paths["onnx"])
    logits = onnx_runner.predict(images, batch_size=4)
    expected = student.predict(images, verbose=0)
    assert (onnx_runner.input_dtype, onnx_runner.output_dtype) == ("float32",) * 2
    np.testing.assert_allclose(
        logits, expected, atol=LOGIT_TOLERANCE * max(1.0, np.abs(expected).max())
    )


@needs_onnx
@pytest.mark.large
@pytest.mark.parametrize("name", ["resnet8", "shufflenetv1", "mobilenetv2"])
def test_onnx_logits_equal_keras_logits_for_the_zoo(name, tmp_path):
    """A ResNet, a ShuffleNet (grouped convolutions, channel shuffles) and a
    MobileNetV2 (depthwise convolutions), on 16x16 images."""
    student = _randomised(models.get(name, 10, (16, 16, 3)))
    path = tmp_path / "student.onnx"  # The file alone: `export` is tested above.
    onnx_conversion.write_onnx(student, layout.input_spec(student), path)
    images = np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)).astype("f4")
    logits = runners.runner("onnx", path).predict(images, batch_size=2)
    expected = student.predict(images, verbose=0)
    assert np.abs(expected).max() > 0.1  # logits that can show a difference
    np.testing.assert_allclose(
        logits, expected, atol=LOGIT_TOLERANCE * max(1.0, np.abs(expected).max())
    )


@needs_onnx
@pytest.mark.large
def test_onnx_and_onnx_int8_rows_of_the_digits_report(tmp_path):
    """The shipped digits CNN: float32 ONNX agrees with Keras on every test
    image; int8 (ONNX Runtime's static quantization on the class-balanced
    sample) stays within one point of its accuracy, its logits as close to
    Keras's as TFLite int8's (calibrated on the same sample)."""
    digits = data.load("digits")
    student = keras.saving.load_model("saved_models/digits_teacher.keras")
    directory = tmp_path / "export"
    export_lib.export(
        student,
        directory,
        formats="tflite_int8,onnx,onnx_int8",
        representative_data=digits.train,
    )
    images, labels = data.to_numpy(digits.test)
    report = export_lib.evaluate_exports(
        student, directory, images, labels, latency_runs=5
    )
    onnx, int8 = report["artefacts"]["onnx"], report["artefacts"]["onnx_int8"]
    assert onnx["agreement"] == 1.0
    assert onnx["max_abs_logit_diff"] < LOGIT_TOLERANCE * 10
    assert int8["accuracy"] >= report["keras"]["accuracy"] - 0.01
    assert onnx["builtin_ops_only"] and int8["builtin_ops_only"]
    assert "QLinearConv" in int8["operators"]
    tflite_int8 = report["artefacts"]["tflite_int8"]
    assert int8["max_abs_logit_diff"] < 1.5 * tflite_int8["max_abs_logit_diff"]
    assert int8["size_bytes"] < onnx["size_bytes"] / 2
    manifest = json.loads((directory / export_lib.MANIFEST_NAME).read_text())
    assert manifest["calibration_examples_per_class"] == {str(c): 64 for c in range(10)}
    table = export_lib.format_table(report)
    assert "\nonnx " in table and "\nonnx_int8 " in table
