"""Runs an exported artefact itself: its logits, and its latency at batch 1.

`SavedModelRunner` calls the SavedModel's serving signature, as TensorFlow
Serving would; `TFLiteRunner` runs a TFLite file on `ai_edge_litert`'s
interpreter, quantizing int8 inputs and dequantizing int8 outputs with the
parameters stored in the file; `OnnxRunner` runs an ONNX file on ONNX
Runtime's CPU provider (its default threads). Each has `predict(images,
batch_size)`, `latency_ms(images, runs)`, `input_dtype` and `output_dtype`.
"""

import time

import numpy as np
import tensorflow as tf

from keras_cskd.export.layout import INPUT_NAME, OUTPUT_NAME, SIGNATURE_KEY


def runner(name, path):
    """The runner of the artefact of format `name` at `path`.

    Example:

    ```python
    logits = runner("tflite", "export/model_float32.tflite").predict(images, 128)
    ```
    """
    if name.startswith("onnx"):
        return OnnxRunner(path)
    return SavedModelRunner(path) if name == "savedmodel" else TFLiteRunner(path)


class SavedModelRunner:
    """Runs a SavedModel through its `serving_default` signature.

    Args:
        path: the SavedModel directory.
    """

    def __init__(self, path):
        self._function = tf.saved_model.load(str(path)).signatures[SIGNATURE_KEY]
        spec = self._function.structured_input_signature[1][INPUT_NAME]
        self.input_dtype = spec.dtype.name
        self.output_dtype = self._function.structured_outputs[OUTPUT_NAME].dtype.name

    def _call(self, batch):
        return self._function(**{INPUT_NAME: batch})[OUTPUT_NAME].numpy()

    def predict(self, images, batch_size):
        """float64 logits of `images`, run `batch_size` at a time."""
        return np.concatenate(
            [
                np.asarray(self._call(tf.constant(images[i : i + batch_size])), "f8")
                for i in range(0, len(images), batch_size)
            ]
        )

    def latency_ms(self, images, runs):
        """The median milliseconds of one image's call, over `runs` calls."""
        batches = [tf.constant(images[i % len(images)][None]) for i in range(runs)]
        self._call(batches[0])  # Warm-up: traces and allocates.
        return median_ms(self._call, batches)


class TFLiteRunner:
    """Runs a TFLite file on `ai_edge_litert`'s interpreter.

    Args:
        path: the `.tflite` file; it must have one input and one output.
    """

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
        """float64 logits of `images`, run `batch_size` at a time."""
        images = self._quantize(images)
        outputs = []
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            self._resize(len(batch))
            outputs.append(self._dequantize(self._invoke(batch)))
        return np.concatenate(outputs)

    def latency_ms(self, images, runs):
        """The median milliseconds of one image's call, over `runs` calls."""
        self._resize(1)
        batches = [self._quantize(images[i % len(images)][None]) for i in range(runs)]
        self._invoke(batches[0])  # Warm-up: delegates prepare on the first call.
        return median_ms(self._invoke, batches)


class OnnxRunner:
    """Runs an ONNX file on ONNX Runtime's CPU execution provider.

    Args:
        path: the `.onnx` file, with one input `images` and one output `logits`.
    """

    def __init__(self, path):
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"]
        )
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input and one output.")
        self._input_name = inputs[0].name
        # ONNX type strings look like "tensor(float)".
        self.input_dtype = _onnx_dtype(inputs[0].type)
        self.output_dtype = _onnx_dtype(outputs[0].type)

    def _call(self, batch):
        return self._session.run(None, {self._input_name: batch})[0]

    def predict(self, images, batch_size):
        """float64 logits of `images`, run `batch_size` at a time."""
        images = np.asarray(images, dtype=self.input_dtype)
        return np.concatenate(
            [
                np.asarray(self._call(images[i : i + batch_size]), "f8")
                for i in range(0, len(images), batch_size)
            ]
        )

    def latency_ms(self, images, runs):
        """The median milliseconds of one image's call, over `runs` calls."""
        images = np.asarray(images, dtype=self.input_dtype)
        batches = [images[i % len(images)][None] for i in range(runs)]
        self._call(batches[0])  # Warm-up: the first run allocates.
        return median_ms(self._call, batches)


def _onnx_dtype(type_string):
    """The NumPy dtype name of an ONNX Runtime type string, `"tensor(float)"`."""
    element = type_string.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(element, element)


def median_ms(call, batches):
    """The median wall time of `call(batch)` over `batches`, in milliseconds.

    Example:

    >>> median_ms(np.sum, [np.ones(1000)] * 10) < 1.0
    True
    """
    timings = []
    for batch in batches:
        start = time.perf_counter()
        call(batch)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1000.0)
