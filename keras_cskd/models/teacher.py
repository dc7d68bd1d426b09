"""Loading a teacher: a `.keras` file checked against the data it distils."""

import keras
import numpy as np

from keras_cskd.models import saving


def load_teacher(path, dataset, outputs="logits", images=None):
    """Loads the teacher at `path`; raises `ValueError` unless it fits `dataset`.

    Distillation compares logits, so a teacher that outputs probabilities
    (a final softmax, or outputs on `images` that are rows >= 0 summing to 1)
    is refused under `outputs="logits"`. With `outputs="probabilities"` the
    teacher becomes its log-probabilities, `log p = z - logsumexp(z)`: its
    logits up to a per-row constant, to which softmax at any temperature (and
    so every loss here) is blind.

    Args:
        path: the teacher's `.keras` file.
        dataset: the `Dataset` it must fit (classes, input shape).
        outputs: `"logits"` or `"probabilities"`: what the file outputs.
        images: a batch of the dataset's images to look at the outputs of.

    Example:

    ```python
    teacher = load_teacher("saved_models/digits_teacher.keras", digits)
    ```
    """
    teacher = _load_teacher_file(path)
    classes = teacher.output_shape[-1]
    if classes != dataset.num_classes:
        raise ValueError(
            f"The teacher predicts {classes} classes but the dataset "
            f"'{dataset.name}' has {dataset.num_classes}."
        )
    if tuple(teacher.input_shape[1:]) != tuple(dataset.input_shape):
        raise ValueError(
            f"The teacher takes inputs of shape {tuple(teacher.input_shape[1:])} "
            f"but the dataset '{dataset.name}' has images of shape "
            f"{tuple(dataset.input_shape)}."
        )
    _check_teacher_outputs(teacher, path, outputs, images)
    return _log_probabilities(teacher) if outputs == "probabilities" else teacher


def _load_teacher_file(path):
    try:
        return saving.load(path)
    except saving.CodeInModelError:
        raise ValueError(
            f"The teacher {path} holds a Lambda layer (Python bytecode), which "
            "train.py never runs from a file: save the teacher again with Keras's "
            "built-in layers in place of the Lambda (e.g. keras.layers.Rescaling), "
            "or, if you trust the file, distil it from Python with "
            "keras_cskd.models.load(path, safe_mode=False)."
        ) from None


def _check_teacher_outputs(teacher, path, outputs, images):
    """Refuses probabilities taken for logits, and logits for probabilities."""
    head = _softmax_head(teacher)
    sample = (
        None
        if images is None
        else keras.ops.convert_to_numpy(teacher(images, training=False))
    )
    sums_to_one = sample is not None and _are_probabilities(sample)
    if outputs == "logits" and (head or sums_to_one):
        where = head or "its outputs on the first test batch are rows >= 0 summing to 1"
        raise ValueError(
            f"The teacher {path} outputs probabilities, not logits ({where}): "
            "save it without the softmax (drop that layer or its "
            "activation='softmax'), or set teacher.outputs='probabilities' to "
            "distil from its log-probabilities."
        )
    if outputs == "probabilities" and sample is not None and not sums_to_one:
        raise ValueError(
            f"teacher.outputs='probabilities', but the outputs of the teacher {path} "
            "on the first test batch are not rows >= 0 summing to 1: leave "
            "teacher.outputs at 'logits'."
        )


def _softmax_head(teacher):
    """Where `teacher` ends in a softmax (`"its last layer 'probs' is a
    Softmax"`), or `""`."""
    outputs = getattr(teacher, "outputs", None) or [None]
    history = getattr(outputs[0], "_keras_history", None)
    layer = history[0] if history else (teacher.layers or [None])[-1]
    if isinstance(layer, keras.layers.Softmax):
        return f"its last layer '{layer.name}' is a Softmax"
    activation = getattr(layer, "activation", None)
    if getattr(activation, "__name__", "") == "softmax":
        return f"its last layer '{layer.name}' has activation='softmax'"
    return ""


def _are_probabilities(outputs):
    outputs = np.asarray(outputs, "float64")
    return bool((outputs >= 0).all() and np.allclose(outputs.sum(-1), 1.0, atol=1e-2))


def _log_probabilities(teacher):
    """The teacher's log-probabilities, `log max(p, tiny)` (`tiny` where a
    probability underflowed to 0), as a model of the same layers, which
    feature losses still find by name."""
    if getattr(teacher, "outputs", None):
        inputs, probabilities = teacher.inputs[0], teacher.outputs[0]
    else:  # a subclassed model: called on a new input
        inputs = keras.Input(teacher.input_shape[1:])
        probabilities = teacher(inputs)
    tiny = float(np.finfo("float32").tiny)
    probabilities = keras.ops.cast(probabilities, "float32")
    log_probabilities = keras.ops.log(keras.ops.maximum(probabilities, tiny))
    return keras.Model(inputs, log_probabilities, name=teacher.name)
