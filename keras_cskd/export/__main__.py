"""The command line: exports a `.keras` student and prints the report table.

```
python -m keras_cskd.export --model=workdir/student.keras --dataset=digits \\
    --formats=savedmodel,tflite,tflite_int8 --output=workdir/export
```

int8 calibration (`tflite_int8`, `onnx_int8`) uses the dataset's training
split, the report its test split; for a streamed dataset (`tfds:imagenet2012`,
or a folder with `--streaming`), class-balanced samples of `STREAMED_SAMPLE`
images of each (`keras_cskd.data.streaming.sample_views`), found without
reading the splits.
Errors follow `keras_cskd.cli`: one line on stderr and exit code 1, for a usage
error as for a bad file or format.
"""

import sys
from pathlib import Path

from keras_cskd import cli, models
from keras_cskd.export.evaluation import evaluate_exports
from keras_cskd.export.layout import (
    DEFAULT_FORMATS,
    FORMATS,
    REPORT_NAME,
    check_num_classes,
    input_spec,
    parse_formats,
)
from keras_cskd.export.report import format_table
from keras_cskd.export.writing import export

# The images of each split a streamed dataset's export decodes (as train.py's).
STREAMED_SAMPLE = 1000


def main(argv=None):
    """Runs the command line.

    Args:
        argv: the arguments, without the program name; `sys.argv[1:]` if `None`.

    Returns:
        The exit code: 0 on success, 1 on an error (reported on one line of
        stderr). `--help` exits at once with 0.

    Example:

    >>> main(["--model=workdir/student.keras", "--output=workdir/export"])
    0
    """
    args = _parser().parse_args(argv)
    try:
        report = _export_and_evaluate(args)
    except (ValueError, OSError) as error:
        return cli.report(error)
    print(format_table(report))
    print(f"Wrote {Path(args.output) / REPORT_NAME}")
    return 0


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m keras_cskd.export",
        description="Export a trained .keras student to SavedModel/TFLite/ONNX and "
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
        "--streaming",
        action="store_true",
        help="stream an ImageNet-style folder (as data.streaming in train.py): "
        f"only balanced samples of {STREAMED_SAMPLE} images of each split are read",
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
    return parser


def _export_and_evaluate(args):
    """Exports `args.model` into `args.output`; returns the evaluation report."""
    from keras_cskd import data

    formats = parse_formats(args.formats)
    if args.calibration_batches < 1:
        raise ValueError("--calibration_batches must be at least 1.")
    student = models.load(args.model, safe_mode=not args.unsafe_deserialization)
    dataset = data.load(args.dataset, **({"streaming": True} if args.streaming else {}))
    model_shape = tuple(input_spec(student).shape[1:])
    if model_shape != tuple(dataset.input_shape):
        raise ValueError(
            f"The model takes inputs of shape {model_shape} but dataset "
            f"'{args.dataset}' has images of shape {tuple(dataset.input_shape)}."
        )
    check_num_classes(student, dataset.num_classes, f"dataset '{args.dataset}'")
    calibration, test = _calibration_and_test(dataset)
    export(
        student,
        args.output,
        formats=formats,
        representative_data=calibration,
        calibration_batches=args.calibration_batches,
        int8_io=args.int8_io,
    )
    images, labels = data.to_numpy(test)
    return evaluate_exports(
        student, args.output, images, labels, num_classes=dataset.num_classes
    )


def _calibration_and_test(dataset):
    """The data to calibrate on and to measure on: the training and test
    splits, or class-balanced samples of them when they are streamed."""
    from keras_cskd.data import streaming
    from keras_cskd.data.streamed_source import StreamedSource

    if not isinstance(dataset.train, StreamedSource):
        return dataset.train, dataset.test
    return tuple(
        streaming.sample_views(
            records,
            STREAMED_SAMPLE,
            image_size=tuple(dataset.input_shape[:2]),
            normalization=dataset.normalization,
        )
        for records in (dataset.train, dataset.test)
    )


if __name__ == "__main__":
    sys.exit(main())
