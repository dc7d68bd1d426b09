"""Writes the student as ONNX: float32 (`"onnx"`) and int8 (`"onnx_int8"`).

The float32 file is converted by tf2onnx (`tf2onnx.convert.from_function`) from
the same endpoint the SavedModel serves, `images -> {"logits": float32}`, so
the ONNX graph has the one signature every artefact has (input `images`, batch
axis free; output `logits`). Keras's own `model.export(format="onnx")` is, on
the TensorFlow backend, this same tf2onnx call, but it names the output
`Identity:0`, refuses a mixed-precision student, and fails on grouped
convolutions (ShuffleNet's): Keras runs those on CPU through a nested
XLA-compiled function (`jit_compile=True`), which tf2onnx cannot inline, so
the file would hold a `StatefulPartitionedCall` no runtime knows. Here the
student is traced with Keras's convolution replaced by a plain
`tf.nn.convolution` (`_plain_convolutions`): the graph is only traced, never
run by TensorFlow, and tf2onnx writes ONNX's grouped `Conv`.

`"onnx_int8"` is ONNX Runtime's static quantization
(`onnxruntime.quantization.quantize_static`: int8 weights per channel, int8
activations, MinMax ranges) of the float32 file, calibrated on the same
class-balanced sample of the training split as `"tflite_int8"`
(`keras_cskd.export.calibration`). Inputs and outputs stay float32. It writes
the QOperator format (`QLinearConv`, `QLinearMatMul`), not QDQ, by measurement:
on the digits CNN and MLP QOperator's logits are as close to Keras's as
TFLite int8's (max |dlogit| 0.80 and 0.90), QDQ's 4.0 and 9.3 away.

Both need the `[onnx]` extra (onnx, onnxruntime, tf2onnx); without it the
formats are refused when they are named (`keras_cskd.export.layout.parse_formats`),
before any training.
"""

import contextlib
import logging
from unittest import mock

import keras
import tensorflow as tf

from keras_cskd.export.layout import INPUT_NAME, OUTPUT_NAME

# The ONNX opset written: every opset-17 op runs on onnxruntime >= 1.14.
OPSET = 17


def write_onnx(student, spec, path):
    """Writes `student` as a float32 ONNX file `images -> logits` at `path`.

    Args:
        student: a `keras.Model` mapping images to logits.
        spec: its input, `keras_cskd.export.layout.input_spec(student)`.
        path: the `.onnx` file to write.

    Raises:
        ValueError: one line naming the TensorFlow ops ONNX lacks, when the
            converted graph holds any.
    """
    import tf2onnx

    function = tf.function(
        lambda images: {
            OUTPUT_NAME: keras.ops.cast(student(images, training=False), "float32")
        },
        input_signature=[spec],
    )
    with _plain_convolutions(), _quiet_tf2onnx():
        model, _ = tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=OPSET, output_path=str(path)
        )
    # tf2onnx keeps an op it cannot convert as a node of its TensorFlow name.
    unconverted = sorted(
        node.op_type
        for node in model.graph.node
        if node.domain not in ("", "ai.onnx")
        or node.op_type in ("StatefulPartitionedCall", "PartitionedCall")
    )
    if unconverted:
        ops = ", ".join(dict.fromkeys(unconverted))
        raise ValueError(
            f"tf2onnx cannot convert {ops}, which the student uses, so it "
            "cannot be exported as 'onnx': replace the layer that uses it, or "
            "export without the ONNX formats (e.g. --formats=savedmodel)."
        )


def quantize_onnx(float_path, int8_path, batches, per_channel=True):
    """Writes the int8 ONNX file of `float_path`, calibrated on `batches`.

    Args:
        float_path: the float32 `.onnx` file (`write_onnx`).
        int8_path: the int8 `.onnx` file to write.
        batches: the calibration images, a list of float32 NumPy arrays
            (`keras_cskd.export.calibration.calibration_sample(...).batches`).
        per_channel: quantize weights per output channel (else per tensor).
    """
    from onnxruntime import quantization

    reader = _CalibrationReader(batches)
    with _quiet_tf2onnx():
        quantization.quantize_static(
            str(float_path),
            str(int8_path),
            reader,
            # QOperator, not QDQ: see the module's docstring.
            quant_format=quantization.QuantFormat.QOperator,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )


def onnx_operators(path):
    """Sorted operator names of an ONNX file, `domain:op` outside ONNX's own.

    Example (needs an export):

    ```python
    onnx_operators("export/student.onnx")  # ['Add', 'MatMul', 'Relu', 'Reshape']
    ```
    """
    import onnx

    graph = onnx.load(str(path)).graph
    return sorted(
        {
            node.op_type
            if node.domain in ("", "ai.onnx")
            else f"{node.domain}:{node.op_type}"
            for node in graph.node
        }
    )


class _CalibrationReader:
    """ONNX Runtime's calibration data reader over a list of image batches."""

    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self):  # Not called by MinMax calibration; kept for the interface.
        pass


@contextlib.contextmanager
def _plain_convolutions():
    """Traces Keras's convolutions as plain `tf.nn.convolution` ops.

    Keras's TensorFlow backend runs grouped convolutions through a nested
    `tf.function(jit_compile=True)` (TensorFlow's CPU kernels lack them),
    which tf2onnx cannot inline. The traced graph is only converted, never
    run, so the plain op (ONNX's grouped `Conv`) is what it should hold.
    """
    from keras.src.backend.tensorflow import nn as tensorflow_nn

    def plain_conv(
        inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1
    ):
        data_format = data_format or keras.config.image_data_format()
        rank = len(inputs.shape)
        tf_format = (
            None if data_format == "channels_last" else "NC" + "DHW"[-(rank - 2) :]
        )
        return tf.nn.convolution(
            inputs,
            kernel,
            strides,
            padding.upper(),
            data_format=tf_format,
            dilations=dilation_rate,
        )

    with mock.patch.object(tensorflow_nn, "conv", plain_conv):
        yield


@contextlib.contextmanager
def _quiet_tf2onnx():
    """Keeps tf2onnx's INFO and WARNING lines (one per node) off the console."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
