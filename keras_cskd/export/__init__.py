"""Exports a trained student to SavedModel, TFLite and ONNX, and checks every artefact.

`export` writes the requested artefacts into a directory atomically (int8 files
calibrated on a class-balanced sample of the training split), `evaluate_exports`
runs each artefact itself (the SavedModel through its serving signature, TFLite
files on the `ai_edge_litert` interpreter, ONNX files on ONNX Runtime) and
compares it with the Keras student, and `format_table` prints that report.
`python -m keras_cskd.export --model=student.keras --output=DIR` does all three
for a saved `.keras` student.

The modules: `layout` (formats, file names, the signature), `calibration` (the
int8 calibration sample), `writing` (`export`), `onnx_conversion` (the ONNX
files, with the `[onnx]` extra), `runners` (running one
artefact), `evaluation` (`evaluate_exports`, `tflite_operators`), `report`
(`format_table`) and `__main__` (the command line).

Example:

```python
import keras
from keras_cskd import data, export

digits = data.load("digits")
student = keras.saving.load_model("saved_models/digits_teacher.keras")
export.export(student, "/tmp/digits_export", formats="tflite,tflite_int8",
              representative_data=digits.train)
images, labels = data.to_numpy(digits.test)
report = export.evaluate_exports(student, "/tmp/digits_export", images, labels)
print(export.format_table(report))
```
"""

from keras_cskd.export.calibration import (
    CalibrationSample,
    balanced_indices,
    calibration_batches,
    calibration_sample,
)
from keras_cskd.export.evaluation import evaluate_exports, tflite_operators
from keras_cskd.export.layout import (
    DEFAULT_FORMATS,
    FORMATS,
    INPUT_NAME,
    MANIFEST_NAME,
    OUTPUT_NAME,
    REPORT_NAME,
    SIGNATURE_KEY,
    input_spec,
    parse_formats,
)
from keras_cskd.export.report import format_table
from keras_cskd.export.writing import export


def main(argv=None):
    """The command line, `python -m keras_cskd.export`: see `__main__.main`.

    Imported when called, so that `python -m` does not find the package's
    `__main__` module already imported (runpy warns about that).

    Example:

    ```python
    main(["--model=workdir/student.keras", "--output=workdir/export"])
    # returns 0, the exit code
    ```
    """
    from keras_cskd.export import __main__

    return __main__.main(argv)


__all__ = [
    "CalibrationSample",
    "DEFAULT_FORMATS",
    "FORMATS",
    "INPUT_NAME",
    "MANIFEST_NAME",
    "OUTPUT_NAME",
    "REPORT_NAME",
    "SIGNATURE_KEY",
    "balanced_indices",
    "calibration_batches",
    "calibration_sample",
    "evaluate_exports",
    "export",
    "format_table",
    "input_spec",
    "main",
    "parse_formats",
    "tflite_operators",
]
