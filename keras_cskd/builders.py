"""What a run config builds: the loss, the optimizer, the teacher and the trainer."""

import keras
import numpy as np

from keras_cskd import losses, models, optimizers
from keras_cskd.distiller import Distiller


def build_loss(loss_config):
    """The distillation loss a `config.loss` block describes.

    Example:

    >>> build_loss(loss_config("dkd", temperature=4.0, beta=8.0))
    DKD(temperature=4.0, ...)
    """
    options = dict(loss_config)
    method = options.pop("method")
    cswt_on = options.pop("cswt", False)
    cswt = losses.CSWT(options.pop("t_min", 2.0), options.pop("t_max", 6.0))
    if method in ("cskd", "two_view_cskd"):
        options["cswt"] = cswt if cswt_on else None
    elif cswt_on:
        options["temperature"] = cswt
    return losses.get(method, **options)


def build_optimizer(config, steps_per_epoch):
    """The configured optimizer and its learning-rate schedule (per step).

    `torch_sgd` with the `multistep` schedule is the reference recipes'
    `torch.optim.SGD` with the rate set at each epoch start (docs/reproducing.md).

    Example:

    >>> build_optimizer(config, steps_per_epoch=782)
    <TorchSGD ...>
    """
    opt = config.optimizer
    if opt.schedule == "constant":
        learning_rate = opt.learning_rate
    elif opt.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            opt.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch)
        )
    else:  # multistep, validated
        learning_rate = optimizers.EpochStepDecay(
            opt.learning_rate, steps_per_epoch, opt.milestones, opt.decay_rate
        )
    if opt.name == "torch_sgd":
        return optimizers.TorchSGD(
            learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    weight_decay = opt.weight_decay or None  # Keras's decoupled weight decay
    if opt.name == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=opt.momentum, weight_decay=weight_decay
        )
    return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)


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

    >>> teacher = load_teacher("saved_models/digits_teacher.keras", digits)
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
        return models.load(path)
    except models.CodeInModelError:
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


def build_trainer(config, model, teacher, optimizer):
    """The compiled model `fit` trains: a `Distiller` of `teacher` into
    `model`, or `model` itself with cross-entropy when `teacher` is `None`.

    Example:

    >>> trainer = build_trainer(config, student, teacher, optimizer)
    """
    if teacher is None:
        labels_are_soft = config.data.mixup_alpha > 0
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(from_logits=True)
            if labels_are_soft
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model
    trainer = Distiller(
        teacher,
        model,
        build_loss(config.loss),
        ce_weight=config.ce_weight,
        distillation_loss_weight=config.distillation_loss_weight,
        view_weights=config.view_weights if config.data.two_views else None,
    )
    trainer.compile(optimizer=optimizer)
    return trainer
