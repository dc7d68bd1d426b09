"""What a run config builds: the model, the loss, the optimizer and the trainer."""

import inspect

import keras
import numpy as np

from keras_cskd import losses, models, optimizers
from keras_cskd.distiller import Distiller


def build_model(config, num_classes, input_shape):
    """The model `config.model` names, its BatchNorm statistics over groups of
    `config.batch_norm_group` images (0: the global batch).

    Example:

    >>> from keras_cskd.config import default_config
    >>> config = default_config()
    >>> config.model, config.batch_norm_group = "resnet8", 32
    >>> model = build_model(config, num_classes=10, input_shape=(32, 32, 3))
    >>> model.get_layer("stem_bn").group_size
    32
    """
    options = {}
    if config.batch_norm_group:
        options["batch_norm_group"] = config.batch_norm_group
    return models.get(config.model, num_classes, input_shape, **options)


def build_loss(loss_config, train_labels=None):
    """The distillation loss a `config.loss` block describes.

    A loss that keeps a row per training example (`uses_sample_indices`,
    CRD) is adapted to the training split's labels, `train_labels()` (a
    function, so that other runs never read them; without it, as when a
    config is validated, the loss is left unadapted).

    `loss.cswt=True` puts `CSWT(loss.t_min, loss.t_max)` in the argument the
    loss declares as its `cswt_argument`; a loss that declares none refuses it.
    `loss.standardize=True` (LS-KD's logit standardisation) goes to the losses
    whose constructor takes `standardize` (KD, DKD); the others refuse it.

    Example:

    >>> from keras_cskd.config import loss_config
    >>> build_loss(loss_config("dkd", temperature=4.0, beta=8.0))
    DKD(temperature=4.0, ...)
    """
    options = dict(loss_config)
    method = options.pop("method")
    cswt_on = options.pop("cswt", False)
    cswt = losses.CSWT(options.pop("t_min", 2.0), options.pop("t_max", 6.0))
    argument = getattr(losses.get_class(method), "cswt_argument", None)
    if cswt_on and argument is None:
        raise ValueError(
            f"The {method} loss takes no CSWT: set loss.cswt=False (only the "
            "losses whose temperature may be per-sample take one)."
        )
    _pass_standardize(method, options)
    if cswt_on:
        options[argument] = cswt
    elif argument not in (None, "temperature"):  # a CSWT-only argument: off
        options[argument] = None
    loss = losses.get(method, **options)
    if getattr(loss, "uses_sample_indices", False) and train_labels is not None:
        loss.adapt(train_labels())
    return loss


def _pass_standardize(method, options):
    """Keeps `options["standardize"]` for a loss that takes it; drops a False
    one for the others and refuses a True one (LS-KD defines it for KD, DKD)."""
    standardize = options.pop("standardize", False)
    takes_it = "standardize" in inspect.signature(losses.get_class(method)).parameters
    if takes_it:
        options["standardize"] = standardize
    elif standardize is not False:
        raise ValueError(
            f"The {method} loss takes no logit standardisation: set "
            "loss.standardize=False (LS-KD defines it for kd and dkd; lskd "
            "always standardises)."
        )


def build_optimizer(config, steps_per_epoch):
    """The configured optimizer and its learning-rate schedule (per step).

    `torch_sgd` with the `multistep` schedule is the reference recipes'
    `torch.optim.SGD` with the rate set at each epoch start (docs/reproducing.md);
    `dot` is mdistiller's DOT (`optimizers.DOT`, `optimizer.dot.*`).

    Example:

    >>> config = keras_cskd.config.default_config()
    >>> config.optimizer.name = "torch_sgd"
    >>> build_optimizer(config, steps_per_epoch=782)
    <...TorchSGD object at ...>
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
    if opt.name == "dot":
        return optimizers.DOT(
            learning_rate,
            momentum=opt.momentum,
            delta=opt.dot.delta,
            weight_decay=opt.weight_decay,
            as_mdistiller=opt.dot.as_mdistiller,
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


def build_trainer(config, model, teacher, optimizer, train_labels=None):
    """The compiled model `fit` trains: a `Distiller` of `teacher` into
    `model`, or `model` itself with cross-entropy when `teacher` is `None`.
    `train_labels` (the inputs' `train_labels`) serves a loss that keeps a
    row per training example (`build_loss`).

    Example:

    >>> config = keras_cskd.config.default_config()
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> trainer = build_trainer(config, student, teacher, optimizer="sgd")
    """
    if teacher is not None:
        distillation_loss = build_loss(config.loss, train_labels)
        if getattr(distillation_loss, "probe_batch_norm", False):
            probe_batch_norm(teacher, model)
        trainer = Distiller(
            teacher,
            model,
            distillation_loss,
            ce_weight=config.ce_weight,
            distillation_loss_weight=config.distillation_loss_weight,
            view_weights=config.view_weights if config.data.two_views else None,
        )
        trainer.compile(optimizer=optimizer)
        return trainer
    labels_are_soft = config.data.mixup_alpha > 0  # mixup's mixed labels
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True)
        if labels_are_soft
        else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def probe_batch_norm(teacher, student, image=None):
    """Runs both networks once in training mode on one image, as mdistiller's
    `get_feat_shapes` does when it builds FitNet (`torch.randn(1, 3, 32, 32)`
    through models still in training mode): every BatchNorm's moving
    statistics take 0.1 of that image's. A reference surprise that
    `FitNet(probe_batch_norm=True)` asks the builder to reproduce
    (docs/reproducing.md, "fitnet"); the image is standard normal from NumPy
    seed 0 (PyTorch's global generator cannot be matched), or `image`.

    Example:

    >>> teacher = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    >>> student = keras_cskd.models.get("resnet8", 10, (32, 32, 3))
    >>> probe_batch_norm(teacher, student)
    >>> float(student.get_layer("stem_bn").moving_mean[0]) != 0.0
    True
    """
    if image is None:
        shape = (1, *student.input_shape[1:])
        image = np.random.default_rng(0).standard_normal(shape).astype("float32")
    for model in (teacher, student):
        # A frozen model's BatchNorm runs in inference mode: unfreeze it for
        # the probe (the teacher is frozen again after).
        trainable = model.trainable
        model.trainable = True
        model(image, training=True)
        model.trainable = trainable
