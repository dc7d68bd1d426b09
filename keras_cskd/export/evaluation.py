"""Measures every exported artefact against the Keras student it came from.

`evaluate_exports` runs each artefact itself (`keras_cskd.export.runners`) on the
test images and reports its size, accuracy, top-1 agreement with the student,
largest logit difference and batch-1 latency, and for TFLite and ONNX files the
operators they use (`tflite_operators`, `onnx_conversion.onnx_operators`).
`keras_cskd.export.report.format_table` prints the report.
"""

import json
import os
from pathlib import Path

import numpy as np

from keras_cskd import files, models
from keras_cskd.export.layout import (
    MANIFEST_NAME,
    REPORT_NAME,
    check_num_classes,
    num_outputs,
    read_manifest,
)
from keras_cskd.export.runners import runner


def evaluate_exports(
    student,
    exports,
    images,
    labels,
    latency_runs=100,
    batch_size=128,
    report_path=None,
    safe_mode=True,
    num_classes=None,
):
    """Runs every exported artefact and compares it with the Keras student.

    Each artefact runs itself (`runners`); latency is one image's, at batch 1.

    Args:
        student: the `keras.Model` that was exported, or a `.keras` path.
        exports: an export directory (its manifest lists the artefacts) or a
            dict `{format: path}` as `export` returns.
        images: NumPy array of test images.
        labels: NumPy array of integer labels.
        latency_runs: timed batch-1 calls per artefact (after a warm-up).
        batch_size: batch size for the accuracy pass.
        report_path: where to write the JSON report; defaults to
            `export_report.json` inside `exports` when it is a directory.
        safe_mode: passed to `keras_cskd.models.load` when `student` is a path.
        num_classes: the data's number of classes; with `None`, only a
            student with fewer outputs than the labels need is refused.

    Returns:
        The report: a dict with `num_examples`, `keras` (the student's accuracy
        and parameter count), `artefacts` (`{format: measurements}`) and, for
        an export with `"tflite_int8"` or `"onnx_int8"`, `calibration` (its
        sample's size, `examples`, and `examples_per_class`, `None` for
        unlabelled images).

    Raises:
        ValueError: if `exports` holds no export, or the student's outputs are
            not one per class (when `num_classes` is `None`: fewer outputs
            than the labels need).

    Example:

    ```python
    images, labels = keras_cskd.data.to_numpy(digits.test)
    report = evaluate_exports(student, "workdir/export", images, labels)
    print(format_table(report))
    ```
    """
    if isinstance(student, (str, os.PathLike)):
        student = models.load(student, safe_mode=safe_mode)
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    outputs = num_outputs(student)
    if num_classes is None and len(labels) and outputs is not None:
        num_classes = max(outputs, int(labels.max()) + 1)  # labels it cannot give
    if num_classes is not None:
        check_num_classes(student, num_classes, "the data")
    paths, default_report_path, manifest = _artefact_paths(exports)
    report_path = default_report_path if report_path is None else report_path
    reference = np.asarray(
        student.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64
    )
    artefacts = {
        name: _measure(name, path, images, labels, reference, batch_size, latency_runs)
        for name, path in paths.items()
    }
    report = {
        "num_examples": int(len(labels)),
        "keras": {
            "accuracy": float(np.mean(reference.argmax(axis=-1) == labels)),
            "parameters": int(student.count_params()),
        },
        "artefacts": artefacts,
    }
    if manifest and manifest.get("calibration_examples"):
        report["calibration"] = {
            "examples": manifest["calibration_examples"],
            "examples_per_class": manifest.get("calibration_examples_per_class"),
        }
    if report_path is not None:
        files.write_text(Path(report_path), json.dumps(report, indent=2) + "\n")
    return report


def tflite_operators(model):
    """Lists the operators a TFLite flatbuffer uses, read from its operator codes.

    Args:
        model: path of a `.tflite` file, or its bytes.

    Returns:
        Sorted operator names; a custom op is `"CUSTOM:<code>"` (Flex ops, i.e.
        TensorFlow ops, are custom ops whose code starts with `Flex`).

    Example:

    ```python
    tflite_operators("export/model_float32.tflite")
    # ['FULLY_CONNECTED', 'PACK', 'RESHAPE', 'SHAPE', 'STRIDED_SLICE']
    ```
    """
    from ai_edge_litert import schema_py_generated as schema

    if not isinstance(model, (bytes, bytearray)):
        model = Path(model).read_bytes()
    names = {
        code: name
        for name, code in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    flatbuffer = schema.Model.GetRootAs(model, 0)
    operators = set()
    for i in range(flatbuffer.OperatorCodesLength()):
        code = flatbuffer.OperatorCodes(i)
        # Codes above 127 live in `BuiltinCode`, older ones in the deprecated field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            operators.add(f"CUSTOM:{(code.CustomCode() or b'').decode()}")
        else:
            operators.add(names.get(builtin, f"BUILTIN_{builtin}"))
    return sorted(operators)


def _artefact_paths(exports):
    """`({format: path}, default report path, manifest)` of `exports`; the
    last two are `None` for a dict of paths."""
    if not isinstance(exports, (str, os.PathLike)):
        return {name: Path(path) for name, path in dict(exports).items()}, None, None
    directory = Path(exports)
    manifest = read_manifest(directory)
    if manifest is None:
        raise ValueError(f"{directory} holds no export (no {MANIFEST_NAME}).")
    paths = {name: directory / file for name, file in manifest["formats"].items()}
    return paths, directory / REPORT_NAME, manifest


def _measure(name, path, images, labels, reference, batch_size, latency_runs):
    """One artefact's entry of the report."""
    artefact = runner(name, path)
    logits = artefact.predict(images, batch_size)
    classes = logits.argmax(axis=-1)
    entry = {
        "path": str(path),
        "size_bytes": _size_bytes(path),
        "accuracy": float(np.mean(classes == labels)),
        "agreement": float(np.mean(classes == reference.argmax(axis=-1))),
        "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
        "latency_ms": artefact.latency_ms(images, latency_runs),
        "input_dtype": artefact.input_dtype,
        "output_dtype": artefact.output_dtype,
    }
    if name.startswith("tflite"):
        entry["operators"] = tflite_operators(path)
        entry["builtin_ops_only"] = not any(
            op.startswith("CUSTOM") for op in entry["operators"]
        )
    if name.startswith("onnx"):
        from keras_cskd.export.onnx_conversion import onnx_operators

        # ONNX's own ops and ONNX Runtime's contrib ops (`com.microsoft:`,
        # QOperator int8's QLinearAdd), which every onnxruntime build has.
        entry["operators"] = onnx_operators(path)
        entry["builtin_ops_only"] = all(
            ":" not in op or op.startswith("com.microsoft:")
            for op in entry["operators"]
        )
    return entry


def _size_bytes(path):
    path = Path(path)
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size
