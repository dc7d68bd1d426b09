"""Exports a trained student to SavedModel and TFLite, and checks every artefact.

`export` writes the requested artefacts into a directory atomically, `evaluate_exports`
runs each artefact itself (the SavedModel through its serving signature, TFLite files on
the `ai_edge_litert` interpreter) and compares it with the Keras student, `format_table`
prints that report. `python -m keras_cskd.export --model=student.keras --output=DIR`
does all three for a saved `.keras` student.
"""

import argparse
import contextlib
import difflib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_cskd import files, models

# Format name -> file (or directory) name inside the export directory.
FORMATS = {
    "savedmodel": "savedmodel",
    "tflite": "model_float32.tflite",
    "tflite_float16": "model_float16.tflite",
    "tflite_dynamic_range": "model_dynamic_range.tflite",
    "tflite_int8": "model_int8.tflite",
}
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
        ValueError: for an unknown or missing name.

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
    return names


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

    Every artefact has one signature, `serving_default`, taking `images` (batch
    axis free) and returning float32 `logits`. TFLite files use built-in ops
    only, so they run on the plain `ai_edge_litert` interpreter. Formats:

    - `"savedmodel"`: a TensorFlow SavedModel directory.
    - `"tflite"`: float32.
    - `"tflite_float16"`: float16 weights, float32 compute and I/O.
    - `"tflite_dynamic_range"`: int8 weights, float activations.
    - `"tflite_int8"`: full-integer int8, calibrated on `representative_data`;
      float32 inputs and outputs unless `int8_io`.

    Everything is written into a temporary sibling of `directory` and moved into
    place when complete: a failed export leaves no partial files, and a previous
    export in `directory` intact. A successful one replaces the previous export
    as a whole; a non-empty `directory` that does not hold an export is refused.

    Args:
        student: a `keras.Model` mapping one image batch to logits, or the path
            of a `.keras` file (loaded with `keras_cskd.models.load`).
        directory: the export directory.
        formats: names from `FORMATS`, or a comma-separated string.
        representative_data: images to calibrate `"tflite_int8"` on, usually the
            training split: a `tf.data.Dataset` of `(image, label)` pairs or of
            images, batched or not, or a NumPy array of images. The first
            `calibration_batches` batches are used, so pass shuffled data.
        calibration_batches: number of calibration batches.
        calibration_batch_size: batch size used to batch unbatched data.
        int8_io: give `"tflite_int8"` int8 inputs and outputs (quantization
            parameters in the interpreter's tensor details).
        int8_per_channel: quantize `Dense` kernels per output channel (TFLite's
            default, the more accurate). `False` quantizes them per tensor: each
            channel otherwise costs a float32 scale and an int64 zero point for
            its kernel and its bias, a fifth of the int8 file of the digits MLP
            (fan-in 64). Convolutions stay per channel.
        safe_mode: passed to `keras_cskd.models.load` when `student` is a path.

    Returns:
        A dict `{format: path}` of the artefacts written.

    Raises:
        ValueError: for an unknown format, a student with several inputs,
            `"tflite_int8"` without `representative_data`, or an existing
            non-empty `directory` that is not an export.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> paths = export(student, "workdir/export",
    ...                formats=("savedmodel", "tflite", "tflite_int8"),
    ...                representative_data=digits.train)
    """
    formats = parse_formats(formats)
    if isinstance(student, (str, os.PathLike)):
        student = models.load(student, safe_mode=safe_mode)
    input_spec = _input_spec(student)
    if "tflite_int8" in formats and representative_data is None:
        raise ValueError(
            "Format 'tflite_int8' needs `representative_data` to calibrate on, "
            "e.g. the training split."
        )
    directory = Path(directory)
    _check_replaceable(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)

    with files.atomic_path(directory) as staging:
        staging.mkdir()
        saved_model = staging / FORMATS["savedmodel"]
        _write_saved_model(student, input_spec, saved_model)
        calibration_examples = 0
        for name in formats:
            if name == "savedmodel":
                continue
            calibration = None
            if name == "tflite_int8":
                calibration = _calibration_batches(
                    representative_data,
                    input_spec,
                    calibration_batches,
                    calibration_batch_size,
                )
                calibration_examples = sum(len(batch) for batch in calibration)
            flatbuffer = _convert(
                saved_model, name, calibration, int8_io, int8_per_channel
            )
            (staging / FORMATS[name]).write_bytes(flatbuffer)
        if "savedmodel" not in formats:
            shutil.rmtree(saved_model)
        manifest = {
            "formats": {name: FORMATS[name] for name in formats},
            "signature": {
                "key": SIGNATURE_KEY,
                "input": INPUT_NAME,
                "input_shape": list(input_spec.shape),
                "input_dtype": input_spec.dtype.name,
                "output": OUTPUT_NAME,
            },
            "int8_io": bool(int8_io and "tflite_int8" in formats),
            "int8_per_channel": bool(int8_per_channel),
            "calibration_examples": calibration_examples,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return {name: directory / FORMATS[name] for name in formats}


def tflite_operators(model):
    """Lists the operators a TFLite flatbuffer uses, read from its operator codes.

    Args:
        model: path of a `.tflite` file, or its bytes.

    Returns:
        Sorted operator names; a custom op is `"CUSTOM:<code>"` (Flex ops, i.e.
        TensorFlow ops, are custom ops whose code starts with `Flex`).

    Example:

    >>> tflite_operators("export/model_float32.tflite")
    ['FULLY_CONNECTED', 'PACK', 'RESHAPE', 'SHAPE', 'STRIDED_SLICE']
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


def evaluate_exports(
    student,
    exports,
    images,
    labels,
    latency_runs=100,
    batch_size=128,
    report_path=None,
    safe_mode=True,
):
    """Runs every exported artefact and compares it with the Keras student.

    For each artefact: its size, its accuracy (measured by running the artefact
    itself: the SavedModel through `tf.saved_model.load` and its serving
    signature, TFLite files on `ai_edge_litert`'s interpreter, int8 inputs
    quantized and int8 outputs dequantized), its top-1 agreement with the
    student, the largest absolute logit difference, the median latency of one
    image at batch 1, and (TFLite) its operators and whether all are built in.

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

    Returns:
        The report: a dict with `num_examples`, `keras` (the student's accuracy
        and parameter count) and `artefacts` (`{format: measurements}`).

    Raises:
        ValueError: if `exports` holds no export.

    Example:

    >>> images, labels = keras_cskd.data.to_numpy(digits.test)
    >>> report = evaluate_exports(student, "workdir/export", images, labels)
    >>> print(format_table(report))
    """
    if isinstance(student, (str, os.PathLike)):
        student = models.load(student, safe_mode=safe_mode)
    if isinstance(exports, (str, os.PathLike)):
        directory = Path(exports)
        manifest = _read_manifest(directory)
        if manifest is None:
            raise ValueError(f"{directory} holds no export (no {MANIFEST_NAME}).")
        paths = {name: directory / file for name, file in manifest["formats"].items()}
        if report_path is None:
            report_path = directory / REPORT_NAME
    else:
        paths = {name: Path(path) for name, path in dict(exports).items()}
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    reference = np.asarray(
        student.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64
    )
    reference_classes = reference.argmax(axis=-1)

    artefacts = {}
    for name, path in paths.items():
        if name == "savedmodel":
            runner = _SavedModelRunner(path)
        else:
            runner = _TFLiteRunner(path)
        logits = runner.predict(images, batch_size)
        classes = logits.argmax(axis=-1)
        entry = {
            "path": str(path),
            "size_bytes": _size_bytes(path),
            "accuracy": float(np.mean(classes == labels)),
            "agreement": float(np.mean(classes == reference_classes)),
            "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
            "latency_ms": runner.latency_ms(images, latency_runs),
            "input_dtype": runner.input_dtype,
            "output_dtype": runner.output_dtype,
        }
        if name != "savedmodel":
            entry["operators"] = tflite_operators(path)
            entry["builtin_ops_only"] = not any(
                op.startswith("CUSTOM") for op in entry["operators"]
            )
        artefacts[name] = entry
    report = {
        "num_examples": int(len(labels)),
        "keras": {
            "accuracy": float(np.mean(reference_classes == labels)),
            "parameters": int(student.count_params()),
        },
        "artefacts": artefacts,
    }
    if report_path is not None:
        files.write_text(Path(report_path), json.dumps(report, indent=2) + "\n")
    return report


def format_table(report):
    """Formats an `evaluate_exports` report as a plain-text table.

    Args:
        report: the dict `evaluate_exports` returns (or its JSON, loaded).

    Returns:
        A multi-line string: one row per artefact.

    Example:

    >>> print(format_table(report))
    """
    keras_row = report["keras"]
    lines = [
        f"Keras student: {keras_row['parameters']:,} parameters, accuracy "
        f"{100 * keras_row['accuracy']:.2f}% on {report['num_examples']} examples",
    ]
    header = (
        "format",
        "size (bytes)",
        "accuracy",
        "agreement",
        "max |dlogit|",
        "latency (ms)",
        "builtin ops",
    )
    rows = []
    for name, entry in report["artefacts"].items():
        builtin = entry.get("builtin_ops_only")
        rows.append(
            (
                name,
                f"{entry['size_bytes']:,}",
                f"{100 * entry['accuracy']:.2f}%",
                f"{100 * entry['agreement']:.2f}%",
                f"{entry['max_abs_logit_diff']:.2e}",
                f"{entry['latency_ms']:.3f}",
                "n/a" if builtin is None else ("yes" if builtin else "NO"),
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row):
        cells = [row[0].ljust(widths[0])]
        cells += [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells)

    lines += [line(header), line(tuple("-" * width for width in widths))]
    lines += [line(row) for row in rows]
    return "\n".join(lines)


def main(argv=None):
    """The command line: exports a `.keras` student and prints the report table.

    Args:
        argv: the arguments, without the program name; `sys.argv[1:]` if `None`.

    Returns:
        The exit code: 0 on success, 1 on a user error (reported on one line of
        stderr), 2 on a usage error.

    Example:

    ```
    python -m keras_cskd.export --model=workdir/student.keras --dataset=digits \\
        --formats=savedmodel,tflite,tflite_int8 --output=workdir/export
    ```
    """
    parser = _ArgumentParser(
        prog="python -m keras_cskd.export",
        description="Export a trained .keras student to SavedModel/TFLite and "
        "report each artefact's accuracy, size and latency.",
    )
    parser.add_argument("--model", required=True, help="the student, a .keras file")
    parser.add_argument(
        "--dataset",
        default="digits",
        help="dataset name for calibration (train) and the "
        "report (test); default: digits",
    )
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help=f"comma-separated, from: {', '.join(FORMATS)}",
    )
    parser.add_argument("--output", required=True, help="the export directory")
    parser.add_argument(
        "--calibration_batches",
        type=int,
        default=20,
        help="int8 calibration batches of 32 training images",
    )
    parser.add_argument(
        "--int8_io", action="store_true", help="int8 inputs and outputs for tflite_int8"
    )
    parser.add_argument(
        "--unsafe_deserialization",
        action="store_true",
        help="allow .keras files holding Python code (Lambda "
        "layers); this can execute arbitrary code",
    )
    args = parser.parse_args(argv)
    try:
        from keras_cskd import data

        formats = parse_formats(args.formats)
        if args.calibration_batches < 1:
            raise ValueError("--calibration_batches must be at least 1.")
        student = models.load(args.model, safe_mode=not args.unsafe_deserialization)
        dataset = data.load(args.dataset)
        model_shape = tuple(_input_spec(student).shape[1:])
        if model_shape != tuple(dataset.input_shape):
            raise ValueError(
                f"The model takes inputs of shape {model_shape} but dataset "
                f"'{args.dataset}' has images of shape {tuple(dataset.input_shape)}."
            )
        export(
            student,
            args.output,
            formats=formats,
            representative_data=dataset.train,
            calibration_batches=args.calibration_batches,
            int8_io=args.int8_io,
        )
        images, labels = data.to_numpy(dataset.test)
        report = evaluate_exports(student, args.output, images, labels)
    except (ValueError, OSError) as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 1
    print(format_table(report))
    print(f"Wrote {Path(args.output) / REPORT_NAME}")
    return 0


class _ArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line, not usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def _one_line(error):
    return " ".join(str(error).split())


def _input_spec(student):
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


def _write_saved_model(student, input_spec, path):
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
        input_signature=[input_spec],
    )
    archive.write_out(str(path), verbose=False)


def _calibration_batches(representative_data, input_spec, num_batches, batch_size):
    """The first `num_batches` image batches of `representative_data`, as arrays."""
    rank = len(input_spec.shape)
    dataset = representative_data
    if not isinstance(dataset, tf.data.Dataset):
        if isinstance(dataset, (tuple, list)):
            dataset = dataset[0]
        dataset = tf.data.Dataset.from_tensor_slices(np.asarray(dataset))
    if isinstance(dataset.element_spec, (tuple, list)):
        dataset = dataset.map(lambda images, *labels: images)
    elif isinstance(dataset.element_spec, dict):
        dataset = dataset.map(lambda features: features[INPUT_NAME])
    if len(dataset.element_spec.shape) == rank - 1:
        dataset = dataset.batch(batch_size)
    elif len(dataset.element_spec.shape) != rank:
        raise ValueError(
            f"`representative_data` holds images of shape "
            f"{dataset.element_spec.shape}; the student takes {input_spec.shape}."
        )
    dtype = input_spec.dtype.as_numpy_dtype
    batches = [
        np.asarray(batch, dtype)
        for batch in dataset.take(num_batches).as_numpy_iterator()
    ]
    if not batches:
        raise ValueError(
            "`representative_data` is empty; int8 calibration needs images."
        )
    return batches


def _convert(saved_model, name, calibration, int8_io, int8_per_channel):
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
        converter.representative_dataset = lambda: ([batch] for batch in calibration)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return converter.convert()


class _SavedModelRunner:
    def __init__(self, path):
        self._function = tf.saved_model.load(str(path)).signatures[SIGNATURE_KEY]
        spec = self._function.structured_input_signature[1][INPUT_NAME]
        self.input_dtype = spec.dtype.name
        self.output_dtype = self._function.structured_outputs[OUTPUT_NAME].dtype.name

    def _call(self, batch):
        return self._function(**{INPUT_NAME: tf.constant(batch)})[OUTPUT_NAME]

    def predict(self, images, batch_size):
        return np.concatenate(
            [
                np.asarray(self._call(images[i : i + batch_size]), np.float64)
                for i in range(0, len(images), batch_size)
            ]
        )

    def latency_ms(self, images, runs):
        batches = [tf.constant(images[i % len(images)][None]) for i in range(runs)]
        self._function(**{INPUT_NAME: batches[0]})  # Warm-up: traces and allocates.
        return _median_ms(
            lambda batch: self._function(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy(),
            batches,
        )


class _TFLiteRunner:
    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path))
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output.")
        self._input, self._output = inputs[0], outputs[0]
        self.input_dtype = np.dtype(self._input["dtype"]).name
        self.output_dtype = np.dtype(self._output["dtype"]).name
        self._batch = None

    def _resize(self, batch):
        if self._batch != batch:
            self._interpreter.resize_tensor_input(
                self._input["index"], [batch, *self._input["shape"][1:]]
            )
            self._interpreter.allocate_tensors()
            self._batch = batch

    def _quantize(self, images):
        dtype = np.dtype(self._input["dtype"])
        if not np.issubdtype(dtype, np.integer):
            return images.astype(dtype)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(
            np.round(images / scale + zero_point), info.min, info.max
        ).astype(dtype)

    def _dequantize(self, outputs):
        if not np.issubdtype(outputs.dtype, np.integer):
            return outputs.astype(np.float64)
        scale, zero_point = self._output["quantization"]
        return (outputs.astype(np.float64) - zero_point) * scale

    def _invoke(self, batch):
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])

    def predict(self, images, batch_size):
        images = self._quantize(images)
        outputs = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            self._resize(len(batch))
            outputs.append(self._dequantize(self._invoke(batch)))
        return np.concatenate(outputs)

    def latency_ms(self, images, runs):
        self._resize(1)
        batches = [self._quantize(images[i % len(images)][None]) for i in range(runs)]
        self._invoke(batches[0])  # Warm-up: delegates prepare on the first call.
        return _median_ms(self._invoke, batches)


def _median_ms(call, batches):
    timings = []
    for batch in batches:
        start = time.perf_counter()
        call(batch)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1000.0)


def _size_bytes(path):
    path = Path(path)
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def _read_manifest(directory):
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return json.loads((directory / MANIFEST_NAME).read_text())
    return None


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


if __name__ == "__main__":
    sys.exit(main())
