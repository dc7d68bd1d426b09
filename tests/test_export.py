"""Specification of `keras_cskd.export`: artefacts, parity, atomicity, loading, CLI,
and the int8 calibration sample."""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_cskd import cli, data, models
from keras_cskd import export as export_lib

# The ONNX formats (an optional extra) are tested in tests/test_onnx_export.py.
ALL_FORMATS = tuple(name for name in export_lib.FORMATS if not name.startswith("onnx"))
TFLITE_FORMATS = tuple(name for name in ALL_FORMATS if name != "savedmodel")
SMALL_IMAGES = tf.TensorSpec((None, 4, 4, 1), tf.float32)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def test_split(digits):
    return data.to_numpy(digits.test)


@pytest.fixture(scope="module")
def student():
    """A trained digits model with enough weights (95k) for quantization to
    matter: the shipped CNN, exported here as a student would be."""
    return keras.saving.load_model("saved_models/digits_teacher.keras")


@pytest.fixture(scope="module")
def export_dir(student, digits, tmp_path_factory):
    directory = tmp_path_factory.mktemp("all_formats") / "export"
    export_lib.export(
        student, directory, formats=ALL_FORMATS, representative_data=digits.train
    )
    return directory


@pytest.fixture(scope="module")
def report(student, export_dir, test_split):
    return export_lib.evaluate_exports(
        student, export_dir, *test_split, latency_runs=20
    )


@pytest.fixture(scope="module")
def compact_int8_report(student, digits, test_split, tmp_path_factory):
    """Full-integer export with int8 I/O and per-tensor Dense kernels."""
    directory = tmp_path_factory.mktemp("compact_int8") / "export"
    export_lib.export(
        student,
        directory,
        formats=("tflite", "tflite_int8"),
        representative_data=digits.train,
        int8_io=True,
        int8_per_channel=False,
    )
    return export_lib.evaluate_exports(student, directory, *test_split, latency_runs=5)


@pytest.fixture(scope="module")
def class_ordered():
    """3 classes x 700 4x4 images sorted by label, as an image folder lists them;
    pixel (0, 0) holds an image's label and pixel (1, 1) its index."""
    labels = np.repeat(np.arange(3, dtype="int32"), 700)
    images = np.zeros((len(labels), 4, 4, 1), "float32")
    images[:, 0, 0, 0] = labels
    images[:, 1, 1, 0] = np.arange(len(labels))
    return images, labels


@pytest.fixture()
def lambda_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 1), name="images")
    scaled = keras.layers.Lambda(lambda images: 2.0 * images)(inputs)
    flat = keras.layers.Flatten()(scaled)
    model = keras.Model(inputs, keras.layers.Dense(10)(flat))
    path = tmp_path / "lambda.keras"
    model.save(path)
    return path


def _snapshot(directory):
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class UnregisteredScale(keras.layers.Layer):
    """A custom layer not registered with Keras: a new process cannot load it."""

    def call(self, images):
        return 2.0 * images


def _digits_model(*layers, outputs=10):
    inputs = keras.Input((8, 8, 1), name="images")
    hidden = inputs
    for layer in layers:
        hidden = layer(hidden)
    hidden = keras.layers.Flatten()(hidden)
    return keras.Model(inputs, keras.layers.Dense(outputs)(hidden))


# TensorFlow's own start-up log lines (absl's format), not the command's words.
_TF_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} )")


def _run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "keras_cskd.export", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.large
def test_every_format_is_written_with_a_manifest_and_a_report(export_dir, report):
    manifest = json.loads((export_dir / export_lib.MANIFEST_NAME).read_text())
    assert tuple(manifest["formats"]) == ALL_FORMATS
    for name in ALL_FORMATS:
        assert (export_dir / export_lib.FORMATS[name]).exists(), name
    assert (export_dir / "savedmodel" / "saved_model.pb").is_file()
    written = json.loads((export_dir / export_lib.REPORT_NAME).read_text())
    assert written == report
    assert tuple(report["artefacts"]) == ALL_FORMATS


@pytest.mark.large
def test_float32_tflite_and_savedmodel_match_keras_logits(
    student, export_dir, test_split
):
    images, _ = test_split
    keras_logits = np.asarray(student(images, training=False))

    serving = tf.saved_model.load(str(export_dir / "savedmodel")).signatures[
        "serving_default"
    ]
    savedmodel_logits = serving(images=tf.constant(images))["logits"].numpy()

    interpreter = Interpreter(model_path=str(export_dir / "model_float32.tflite"))
    (inputs,), (outputs,) = (
        interpreter.get_input_details(),
        interpreter.get_output_details(),
    )
    interpreter.resize_tensor_input(inputs["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inputs["index"], images)
    interpreter.invoke()
    tflite_logits = interpreter.get_tensor(outputs["index"])

    for logits in (savedmodel_logits, tflite_logits):
        np.testing.assert_allclose(logits, keras_logits, atol=1e-4, rtol=0)
        agreement = np.mean(logits.argmax(-1) == keras_logits.argmax(-1))
        assert agreement >= 0.999


@pytest.mark.large
def test_report_measures_float32_parity(report):
    for name in ("savedmodel", "tflite"):
        entry = report["artefacts"][name]
        assert entry["max_abs_logit_diff"] <= 1e-4
        assert entry["agreement"] >= 0.999
        assert entry["accuracy"] == pytest.approx(report["keras"]["accuracy"], abs=1e-3)


@pytest.mark.large
def test_float16_agrees_with_keras(report):
    assert report["artefacts"]["tflite_float16"]["agreement"] >= 0.99


@pytest.mark.large
def test_int8_variants_lose_at_most_two_points(report):
    keras_accuracy = report["keras"]["accuracy"]
    for name in ("tflite_dynamic_range", "tflite_int8"):
        assert report["artefacts"][name]["accuracy"] >= keras_accuracy - 0.02, name


@pytest.mark.large
def test_int8_variants_are_small(report, compact_int8_report):
    float32_size = report["artefacts"]["tflite"]["size_bytes"]
    sizes = {name: entry["size_bytes"] for name, entry in report["artefacts"].items()}
    assert sizes["tflite_dynamic_range"] <= 0.35 * float32_size
    assert sizes["tflite_int8"] <= 0.35 * float32_size
    compact = compact_int8_report["artefacts"]
    assert (
        compact["tflite_int8"]["size_bytes"] <= 0.35 * compact["tflite"]["size_bytes"]
    )


@pytest.mark.large
def test_int8_io_export_takes_int8_and_keeps_accuracy(compact_int8_report):
    entry = compact_int8_report["artefacts"]["tflite_int8"]
    assert (entry["input_dtype"], entry["output_dtype"]) == ("int8", "int8")
    keras_accuracy = compact_int8_report["keras"]["accuracy"]
    assert entry["accuracy"] >= keras_accuracy - 0.02


@pytest.mark.large
@pytest.mark.parametrize("name", TFLITE_FORMATS)
def test_tflite_files_use_builtin_ops_only(export_dir, report, name):
    operators = export_lib.tflite_operators(export_dir / export_lib.FORMATS[name])
    assert "FULLY_CONNECTED" in operators
    assert not [op for op in operators if op.startswith("CUSTOM")]
    assert report["artefacts"][name]["builtin_ops_only"] is True


@pytest.mark.large
def test_format_table_has_a_row_per_artefact(report):
    table = export_lib.format_table(report)
    for name in ALL_FORMATS:
        assert re.search(rf"^{name}\s", table, flags=re.MULTILINE), name


@pytest.mark.large
def test_failed_export_leaves_previous_export_intact(
    student, digits, export_dir, tmp_path, monkeypatch
):
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    before = _snapshot(target)
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model
    calls = []

    def fail_on_second_conversion(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("simulated converter crash")
        return from_saved_model(*args, **kwargs)

    monkeypatch.setattr(
        tf.lite.TFLiteConverter, "from_saved_model", fail_on_second_conversion
    )
    with pytest.raises(RuntimeError, match="simulated converter crash"):
        export_lib.export(
            student, target, formats=ALL_FORMATS, representative_data=digits.train
        )
    assert len(calls) == 2  # The SavedModel and float32 file were written.
    assert _snapshot(target) == before
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.large
def test_export_replaces_previous_export_as_a_whole(student, export_dir, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    paths = export_lib.export(student, target, formats="tflite")
    assert paths == {"tflite": target / "model_float32.tflite"}
    assert sorted(path.name for path in target.iterdir()) == [
        export_lib.MANIFEST_NAME,
        "model_float32.tflite",
    ]
    assert list(tmp_path.iterdir()) == [target]


def test_export_refuses_to_replace_an_unrelated_directory(student, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="Refusing to replace"):
        export_lib.export(student, tmp_path, formats="tflite")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_bad_arguments_are_refused_before_writing(student, tmp_path):
    with pytest.raises(ValueError, match="Unknown export format 'tflite_int4'"):
        export_lib.export(student, tmp_path / "export", formats="tflite,tflite_int4")
    with pytest.raises(ValueError, match="representative_data"):
        export_lib.export(student, tmp_path / "export", formats="tflite_int8")
    assert list(tmp_path.iterdir()) == []


def test_lambda_file_is_refused_by_default(lambda_keras_file):
    with pytest.raises(ValueError, match="arbitrary code") as error:
        models.load(lambda_keras_file)
    assert "safe_mode=False" in str(error.value)
    assert "--unsafe_deserialization" in str(error.value)


def test_lambda_file_loads_with_explicit_option(lambda_keras_file):
    model = models.load(lambda_keras_file, safe_mode=False)
    assert model(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 10)


def test_corrupt_keras_files_give_a_clear_error(student, tmp_path):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"definitely not a zip archive")
    student.save(tmp_path / "good.keras")
    truncated = tmp_path / "truncated.keras"
    content = (tmp_path / "good.keras").read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    for path in (garbage, truncated):
        with pytest.raises(ValueError, match=r"is corrupt"):
            models.load(path)


@pytest.mark.large
@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=missing.keras"], "No such file"),
        (["--model={good}", "--formats=tflite,onxx"], "Unknown export format 'onxx'"),
        (["--model={corrupt}"], "is corrupt"),
        (["--model={code}"], "error: CodeInModelError: Refusing to load"),
        (["--formats=tflite"], "the following arguments are required: --model"),
    ],
)
def test_cli_user_errors_are_one_line(
    student, lambda_keras_file, tmp_path, capsys, args, message
):
    student.save(tmp_path / "good.keras")
    (tmp_path / "corrupt.keras").write_bytes(b"\x00" * 64)
    paths = {
        "good": tmp_path / "good.keras",
        "corrupt": tmp_path / "corrupt.keras",
        "code": lambda_keras_file,
    }
    argv = [arg.format(**paths) for arg in args] + [f"--output={tmp_path / 'out'}"]
    try:
        code = export_lib.main(argv)
    except SystemExit as exit_:  # argparse usage errors exit directly.
        code = exit_.code
    assert code == cli.EXIT_ERROR
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert message in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.large
def test_cli_exports_and_prints_the_table(student, tmp_path):
    student.save(tmp_path / "student.keras")
    output = tmp_path / "export"
    result = _run_cli(
        f"--model={tmp_path / 'student.keras'}",
        "--dataset=digits",
        "--formats=savedmodel,tflite,tflite_int8",
        f"--output={output}",
        "--calibration_batches=5",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "RuntimeWarning" not in result.stderr  # `-m` runs __main__ only once.
    for name in ("savedmodel", "tflite", "tflite_int8"):
        assert re.search(rf"^{name}\s", result.stdout, flags=re.MULTILINE), name
    assert "int8 calibrated on 160 training images: 16 per class, 10 classes" in (
        result.stdout
    )
    written = json.loads((output / export_lib.REPORT_NAME).read_text())
    assert tuple(written["artefacts"]) == ("savedmodel", "tflite", "tflite_int8")
    manifest = json.loads((output / export_lib.MANIFEST_NAME).read_text())
    assert manifest["calibration_examples"] == 5 * 32
    # 160 images of 10 classes: 16 each, whatever the order of the split.
    assert written["calibration"] == {
        "examples": 160,
        "examples_per_class": {str(label): 16 for label in range(10)},
    }


@pytest.mark.large
@pytest.mark.parametrize(
    "layers, outputs, message, fix",
    [
        (
            (),
            5,
            "The student has 5 outputs but dataset 'digits' has 10 classes",
            "(--dataset)",
        ),
        (
            (keras.layers.Resizing(16, 16, interpolation="bicubic"),),
            10,
            "TFLite's built-in ops lack ResizeBicubic, which the student uses",
            "replace the layer that uses it, or export without the TFLite formats",
        ),
        (
            (UnregisteredScale(),),
            10,
            "the custom class 'UnregisteredScale', which is not registered",
            "decorate it with @keras.saving.register_keras_serializable()",
        ),
    ],
    ids=["classes", "tflite_op", "custom_layer"],
)
def test_cli_export_errors_are_one_line(tmp_path, layers, outputs, message, fix):
    _digits_model(*layers, outputs=outputs).save(tmp_path / "student.keras")
    output = tmp_path / "export"
    result = _run_cli(
        f"--model={tmp_path / 'student.keras'}",
        "--formats=savedmodel,tflite",
        f"--output={output}",
    )
    assert result.returncode == cli.EXIT_ERROR
    lines = [line for line in result.stderr.splitlines() if not _TF_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: ValueError: "), lines
    assert message in lines[0] and fix in lines[0]
    assert len(lines[0]) < 300
    assert "loc(" not in result.stderr and "func.func" not in result.stderr  # MLIR
    assert not output.exists()


# The head of TensorFlow 2.21's ConverterError for a model using `tf.math.lgamma`,
# which fails before the converter lists the ops TFLite lacks.
_LGAMMA_FAILURE = (
    "Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(callsite("
    'fused["Lgamma:", "functional_1/odd_1/Lgamma@__inference_<lambda>_102"] at '
    'callsite(fused["StatefulPartitionedCall:", "StatefulPartitionedCall@__infer'
    'ence_signature_wrapper_<lambda>_112"] at fused["StatefulPartitionedCall:", '
    '"StatefulPartitionedCall"]))): failed to convert value attribute to tensor '
    "with error: INVALID_ARGUMENT: Couldn't convert tensor proto to tensor.\n"
    '<unknown>:0: note: loc(fused["StatefulPartitionedCall:", "StatefulPartitioned'
    'Call"]): called from\n'
)


def test_a_conversion_failure_names_the_failing_op_in_one_line():
    from keras_cskd.export import writing

    assert writing._conversion_error("tflite", _LGAMMA_FAILURE) == (
        "TFLite cannot convert the student to 'tflite' at Lgamma (failed to "
        "convert value attribute to tensor with error: INVALID_ARGUMENT: Couldn't "
        "convert tensor proto to tensor.): replace the layer that uses it, or "
        "export without the TFLite formats (e.g. --formats=savedmodel)."
    )


def test_evaluate_exports_refuses_a_student_with_other_classes(test_split, tmp_path):
    five = _digits_model(outputs=5)
    with pytest.raises(ValueError, match="has 5 outputs but the data has 10 classes"):
        export_lib.evaluate_exports(five, tmp_path, *test_split)
    ten = _digits_model()
    with pytest.raises(ValueError, match="has 10 outputs but the data has 12 classes"):
        export_lib.evaluate_exports(ten, tmp_path, *test_split, num_classes=12)


@pytest.mark.parametrize("form", ["dataset", "batched", "arrays", "one_hot"])
def test_calibration_sample_is_class_balanced_whatever_the_order(class_ordered, form):
    images, labels = class_ordered
    data = {
        "dataset": lambda: tf.data.Dataset.from_tensor_slices((images, labels)),
        "batched": lambda: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            50
        ),
        "arrays": lambda: (images, labels),
        "one_hot": lambda: tf.data.Dataset.from_tensor_slices(
            (images, np.eye(3, dtype="float32")[labels])
        ),
    }[form]()
    batches = export_lib.calibration_batches(data, SMALL_IMAGES)
    assert [len(batch) for batch in batches] == [32] * 20
    sample = np.concatenate(batches)
    classes = sample[:, 0, 0, 0].astype(int)
    indices = sample[:, 1, 1, 0].astype(int)
    counts = np.bincount(classes, minlength=3)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1, counts
    per_class = export_lib.calibration_sample(data, SMALL_IMAGES).examples_per_class
    assert per_class == dict(enumerate(counts.tolist()))  # what the images hold
    assert set(classes[:32]) == {0, 1, 2}  # Interleaved, not class after class.
    assert len(set(indices)) == len(indices)
    np.testing.assert_array_equal(classes, labels[indices])
    assert indices[classes == 0].max() > 600  # Shuffled, not the class's first.
    again = np.concatenate(export_lib.calibration_batches(data, SMALL_IMAGES))
    np.testing.assert_array_equal(again, sample)


def test_calibration_samples_unlabelled_images_across_the_data(class_ordered):
    images, _ = class_ordered
    assert (
        export_lib.calibration_sample(images, SMALL_IMAGES).examples_per_class is None
    )
    sample = np.concatenate(export_lib.calibration_batches(images, SMALL_IMAGES))
    assert len(sample) == 640
    assert np.all(np.bincount(sample[:, 0, 0, 0].astype(int), minlength=3) > 150)


def test_calibration_reads_at_most_the_scan_limit(class_ordered):
    endless = tf.data.Dataset.from_tensor_slices(class_ordered).repeat()
    sample = np.concatenate(
        export_lib.calibration_batches(endless, SMALL_IMAGES, scan_limit=1000)
    )
    # The first 1000 examples: 700 of class 0, 300 of class 1, all 300 taken.
    counts = np.bincount(sample[:, 0, 0, 0].astype(int), minlength=3)
    assert counts.tolist() == [340, 300, 0]


def test_calibration_refuses_empty_or_misshapen_data(class_ordered):
    images, labels = class_ordered
    with pytest.raises(ValueError, match="is empty"):
        export_lib.calibration_batches((images[:0], labels[:0]), SMALL_IMAGES)
    with pytest.raises(ValueError, match="holds images of shape"):
        export_lib.calibration_batches(images[..., 0, 0], SMALL_IMAGES)
