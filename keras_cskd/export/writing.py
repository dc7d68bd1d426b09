"""Writes a student's artefacts, SavedModel, TFLite and ONNX, into an export directory.

`export` writes everything into a temporary sibling of the export directory and
moves it into place when complete (`keras_cskd.files.atomic_path`): a failed
export leaves no partial files and an earlier export intact; a successful one
replaces the earlier export as a whole. The SavedModel is written first, through
`keras.export.ExportArchive`, and every TFLite file is converted from it with
built-in ops only, so it runs on the plain `ai_edge_litert` interpreter. A
student using an op those lack is refused in one line naming the op (the
converter's own MLIR dump, written from C++ to stderr, is discarded).

`"tflite_int8"` is calibrated on a class-balanced sample of the training split
(`keras_cskd.export.calibration`). `Dense` kernels are quantized per output
channel by default (TFLite's default, the more accurate); per tensor
(`int8_per_channel=False`) each channel no longer costs a float32 scale and an
int64 zero point for its kernel and its bias, a fifth of the int8 file of the
digits MLP (fan-in 64). Convolutions stay per channel.

The ONNX files are written by `keras_cskd.export.onnx_conversion` (tf2onnx from
the SavedModel's endpoint; `"onnx_int8"` by ONNX Runtime's static quantization,
on the same calibration sample as `"tflite_int8"`, per channel or not as
`int8_per_channel` says).
"""

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from keras_cskd import files, models
from keras_cskd.export import calibration
from keras_cskd.export.layout import (
    CALIBRATED_FORMATS,
    DEFAULT_FORMATS,
    FORMATS,
    INPUT_NAME,
    MANIFEST_NAME,
    OUTPUT_NAME,
    SIGNATURE_KEY,
    input_spec,
    parse_formats,
)


def export(
    student,
    directory,
    formats=DEFAULT_FORMATS,
    representative_data=None,
    calibration_batches=20,
    calibration_batch_size=32,
    int8_io=False,
    int8_per_channel=True,
    safe_mode=True,
):
    """Exports a student as a SavedModel and TFLite files, atomically.

    The formats and their one signature are described in `keras_cskd.export.layout`.

    Args:
        student: a `keras.Model` mapping images to logits, or a `.keras` path
            (loaded with `keras_cskd.models.load`).
        directory: the export directory: new, empty, or an earlier export.
        formats: names from `FORMATS`, or a comma-separated string.
        representative_data: images to calibrate `"tflite_int8"` and
            `"onnx_int8"` on, usually the training split, as
            `calibration.calibration_batches` takes them.
        calibration_batches: number of calibration batches.
        calibration_batch_size: images per calibration batch.
        int8_io: give `"tflite_int8"` int8 inputs and outputs (quantization
            parameters in the interpreter's tensor details).
        int8_per_channel: quantize `Dense` kernels per output channel (TFLite's
            default); `False` quantizes them per tensor (see above).
        safe_mode: passed to `keras_cskd.models.load` when `student` is a path.

    Returns:
        A dict `{format: path}` of the artefacts written.

    Raises:
        ValueError: for an unknown format (or an ONNX one without the
            `[onnx]` extra), a student with several inputs, an int8 format
            without `representative_data`, an existing
            non-empty `directory` that is not an export, or a student TFLite
            cannot convert (one line naming the ops its built-in ops lack).

    Example:

    ```python
    paths = export(student, "workdir/export", formats="tflite,tflite_int8",
                   representative_data=keras_cskd.data.load("digits").train)
    ```
    """
    formats = parse_formats(formats)
    if isinstance(student, (str, os.PathLike)):
        student = models.load(student, safe_mode=safe_mode)
    spec = input_spec(student)
    calibrated = [name for name in formats if name in CALIBRATED_FORMATS]
    if calibrated and representative_data is None:
        raise ValueError(
            f"Format '{calibrated[0]}' needs `representative_data` to calibrate "
            "on, e.g. the training split."
        )
    directory = Path(directory)
    _check_replaceable(directory)
    sample = None
    if calibrated:
        sample = calibration.calibration_sample(
            representative_data, spec, calibration_batches, calibration_batch_size
        )
    with files.atomic_path(directory) as staging:
        _write_artefacts(
            student, spec, staging, formats, sample, int8_io, int8_per_channel
        )
    return {name: directory / FORMATS[name] for name in formats}


def _write_artefacts(student, spec, staging, formats, sample, int8_io, per_channel):
    """Writes the SavedModel, each TFLite file converted from it, the ONNX
    files, and the manifest."""
    staging.mkdir()
    saved_model = staging / FORMATS["savedmodel"]
    _write_saved_model(student, spec, saved_model)
    batches = sample.batches if sample is not None else None
    for name in formats:
        if name.startswith("tflite"):
            flatbuffer = _convert(saved_model, name, batches, int8_io, per_channel)
            (staging / FORMATS[name]).write_bytes(flatbuffer)
    if any(name.startswith("onnx") for name in formats):
        _write_onnx_files(student, spec, staging, formats, batches, per_channel)
    if "savedmodel" not in formats:
        shutil.rmtree(saved_model)
    manifest = _manifest(formats, spec, sample, int8_io, per_channel)
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_onnx_files(student, spec, staging, formats, batches, per_channel):
    """Writes `"onnx"` and, quantized from it, `"onnx_int8"`."""
    from keras_cskd.export import onnx_conversion

    float_path = staging / FORMATS["onnx"]
    onnx_conversion.write_onnx(student, spec, float_path)
    if "onnx_int8" in formats:
        onnx_conversion.quantize_onnx(
            float_path, staging / FORMATS["onnx_int8"], batches, per_channel
        )
    if "onnx" not in formats:
        float_path.unlink()


def _write_saved_model(student, spec, path):
    """Writes the SavedModel with the one signature `serving_default`."""
    # An explicit endpoint fixes the signature's names whatever the layers are
    # called: `serving_default(images) -> {"logits"}`; float32 even under a
    # mixed-precision policy.
    archive = keras.export.ExportArchive()
    archive.track(student)
    archive.add_endpoint(
        name=SIGNATURE_KEY,
        fn=lambda images: {
            OUTPUT_NAME: keras.ops.cast(student(images, training=False), "float32")
        },
        input_signature=[spec],
    )
    archive.write_out(str(path), verbose=False)


def _convert(saved_model, name, batches, int8_io, int8_per_channel):
    """Converts the SavedModel to the TFLite format `name`; returns its bytes."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model), signature_keys=[SIGNATURE_KEY]
    )
    # Built-in ops only: no Flex (SELECT_TF_OPS), which the pip interpreter lacks.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if name != "tflite":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if name == "tflite_float16":
        converter.target_spec.supported_types = [tf.float16]
    if name in ("tflite_dynamic_range", "tflite_int8") and not int8_per_channel:
        flag = "_experimental_disable_per_channel_quantization_for_dense_layers"
        if not hasattr(converter, flag):
            raise NotImplementedError(
                f"This TensorFlow ({tf.__version__}) cannot quantize Dense layers "
                "per tensor; use int8_per_channel=True."
            )
        setattr(converter, flag, True)
    if name == "tflite_int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = lambda: ([batch] for batch in batches)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    with _quiet_stderr():
        try:
            return converter.convert()
        except Exception as error:
            # TFLite's `ConverterError` has no public name to catch it by.
            if type(error).__name__ != "ConverterError":
                raise
            raise ValueError(_conversion_error(name, str(error))) from None


# The converter's words for TensorFlow ops without a TFLite built-in.
_LACKING_OPS = (
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),
    re.compile(r"TF Select ops: (\w+(?:, \w+)*)"),
)
# The op an error is located at, in the converter's MLIR locations.
_FAILING_OP = re.compile(r'fused\["(\w+):')


def _conversion_error(name, message):
    """One line for the converter's `message`: the ops TFLite lacks, the fix."""
    fix = (
        "replace the layer that uses it, or export without the TFLite formats "
        "(e.g. --formats=savedmodel)."
    )
    ops = sorted(
        {
            op
            for pattern in _LACKING_OPS
            for listed in pattern.findall(message)
            for op in listed.split(", ")
        }
    )
    if ops:
        return (
            f"TFLite's built-in ops lack {', '.join(ops)}, which the student "
            f"uses, so it cannot be exported as '{name}': {fix}"
        )
    failing = sorted(set(_FAILING_OP.findall(message)) - {"StatefulPartitionedCall"})
    errors = [
        line.split("error: ", 1)[1]
        for line in message.splitlines()
        if "error: " in line
    ]
    reason = (errors[0] if errors else message).rsplit(")): ", 1)[-1]
    where = f" at {', '.join(failing)}" if failing else ""
    return (
        f"TFLite cannot convert the student to '{name}'{where} "
        f"({' '.join(reason.split())[:200]}): {fix}"
    )


@contextlib.contextmanager
def _quiet_stderr():
    """Discards what is written to file descriptor 2 during the block.

    TFLite's converter logs from C++ straight to it, a dump of the model's
    MLIR when a conversion fails; its Python error says the same.
    """
    _flush_stderr()
    try:
        saved = os.dup(2)
    except OSError:  # No file descriptor 2: nothing to keep quiet.
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)


def _flush_stderr():
    if sys.stderr is not None:
        sys.stderr.flush()


def _manifest(formats, spec, sample, int8_io, int8_per_channel):
    """The contents of `export_manifest.json`: what was written, and how."""
    return {
        "formats": {name: FORMATS[name] for name in formats},
        "signature": {
            "key": SIGNATURE_KEY,
            "input": INPUT_NAME,
            "input_shape": list(spec.shape),
            "input_dtype": spec.dtype.name,
            "output": OUTPUT_NAME,
        },
        "int8_io": bool(int8_io and "tflite_int8" in formats),
        "int8_per_channel": bool(int8_per_channel),
        "calibration_examples": 0 if sample is None else sample.num_examples,
        "calibration_examples_per_class": (
            None if sample is None else sample.examples_per_class
        ),
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }


def _check_replaceable(directory):
    """Refuses to replace anything but an earlier export or an empty directory."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"Cannot export to {directory}: it is a file.")
    if any(directory.iterdir()) and not (directory / MANIFEST_NAME).is_file():
        raise ValueError(
            f"Refusing to replace {directory}: it is not empty and holds no earlier "
            f"export ({MANIFEST_NAME}); choose a new or empty directory."
        )
