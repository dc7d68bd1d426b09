"""What an export directory holds, and the one signature every artefact has.

An export directory holds one artefact per format (`FORMATS` maps each format
to its file or directory name), `export_manifest.json` (`MANIFEST_NAME`, written
by `export`) and, once evaluated, `export_report.json` (`REPORT_NAME`). Every
artefact has one signature, `serving_default`, taking `images` (batch axis free)
and returning float32 `logits`. The formats:

- `"savedmodel"`: a TensorFlow SavedModel directory.
- `"tflite"`: float32.
- `"tflite_float16"`: float16 weights, float32 compute and I/O.
- `"tflite_dynamic_range"`: int8 weights, float activations.
- `"tflite_int8"`: full-integer int8, calibrated on representative images;
  float32 inputs and outputs unless exported with `int8_io`.
- `"onnx"`: float32 ONNX (`student.onnx`), run by ONNX Runtime.
- `"onnx_int8"`: ONNX Runtime's static int8 quantization of it, calibrated
  as `"tflite_int8"` is; float32 inputs and outputs.

The ONNX formats need the `[onnx]` extra (`keras_cskd.export.onnx_conversion`).
"""

import contextlib
import difflib
import importlib.util
import json

import tensorflow as tf

# Format name -> file (or directory) name inside the export directory.
FORMATS = {
    "savedmodel": "savedmodel",
    "tflite": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic_range": "model_dynamic_range.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "student.onnx",
    "onnx_int8": "student_int8.onnx",
}
# The formats whose int8 files are calibrated on representative images.
CALIBRATED_FORMATS = ("tflite_int8", "onnx_int8")
# The packages a format needs beyond the default install, and the pip line.
ONNX_PACKAGES = ("onnx", "onnxruntime", "tf2onnx")
ONNX_PIP_LINE = 'pip install "keras-cskd[onnx]"'
DEFAULT_FORMATS = ("savedmodel", "tflite")
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MANIFEST_NAME = "export_manifest.json"
REPORT_NAME = "export_report.json"


def parse_formats(formats):
    """Validates format names: a sequence or a comma-separated string.

    Args:
        formats: names from `FORMATS`, e.g. `"savedmodel,tflite,tflite_int8"`.

    Returns:
        A tuple of the names, duplicates removed, in the order given.

    Raises:
        ValueError: for an unknown or missing name, or an ONNX format without
            the `[onnx]` extra installed (naming the pip line).

    Example:

    >>> parse_formats("savedmodel, tflite")
    ('savedmodel', 'tflite')
    """
    if isinstance(formats, str):
        formats = formats.split(",")
    names = tuple(dict.fromkeys(name.strip() for name in formats if name.strip()))
    if not names:
        raise ValueError(
            f"No export format given. Known formats: {', '.join(FORMATS)}."
        )
    for name in names:
        if name not in FORMATS:
            close = difflib.get_close_matches(name, FORMATS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"Unknown export format '{name}'.{hint} "
                f"Known formats: {', '.join(FORMATS)}."
            )
    onnx_formats = [name for name in names if name.startswith("onnx")]
    missing = [n for n in ONNX_PACKAGES if importlib.util.find_spec(n) is None]
    if onnx_formats and missing:
        raise ValueError(
            f"Export format '{onnx_formats[0]}' needs {', '.join(missing)}, not "
            f"installed: {ONNX_PIP_LINE}"
        )
    return names


def input_spec(student):
    """The input of the exported signature: the student's one image input.

    Args:
        student: a `keras.Model` built on one `keras.Input`.

    Returns:
        A `tf.TensorSpec` named `images`, its batch axis `None`.

    Raises:
        ValueError: for a student without a defined input, or with several.

    Example:

    >>> student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    >>> input_spec(student)
    TensorSpec(shape=(None, 8, 8, 1), dtype=tf.float32, name='images')
    """
    inputs = getattr(student, "inputs", None)
    if not inputs:
        raise ValueError(
            "The student has no defined input; build it on a `keras.Input` "
            "(a functional or Sequential model) before exporting."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"Export needs a student with one image input; this one has {len(inputs)}."
        )
    shape = tuple(inputs[0].shape)
    return tf.TensorSpec(
        (None, *shape[1:]), tf.as_dtype(inputs[0].dtype), name=INPUT_NAME
    )


def num_outputs(student):
    """The size of the student's one output (its logits), or `None` if unknown.

    Example:

    >>> student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    >>> num_outputs(student)
    10
    """
    outputs = getattr(student, "outputs", None) or []
    return (
        int(outputs[0].shape[-1])
        if len(outputs) == 1 and outputs[0].shape[-1]
        else None
    )


def check_num_classes(student, num_classes, data_name):
    """Refuses a student whose logits are not one per class of the data.

    Args:
        student: a `keras.Model` built on one `keras.Input`.
        num_classes: the data's number of classes.
        data_name: the data, for the message (e.g. `"dataset 'digits'"`).

    Raises:
        ValueError: one line naming both numbers, when they differ.

    Example:

    >>> student = keras_cskd.models.get("digits_mlp", 10, (8, 8, 1))
    >>> check_num_classes(student, 10, "dataset 'digits'")
    """
    outputs = num_outputs(student)
    if outputs is not None and outputs != num_classes:
        raise ValueError(
            f"The student has {outputs} outputs but {data_name} has "
            f"{num_classes} classes: measure it on the data it was trained on "
            f"(--dataset), or export a student with {num_classes} outputs."
        )


def read_manifest(directory):
    """The manifest of the export in `directory` (a `Path`), or `None` if none."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return json.loads((directory / MANIFEST_NAME).read_text())
    return None
