"""The model registry: build any zoo model by name."""

import keras

from keras_cskd.registry import Registry

KERAS_APPLICATIONS = "keras.applications:"
MODELS = Registry(
    "model",
    hint=f"; or '{KERAS_APPLICATIONS}<Name>' for a keras.applications architecture",
)


def register(name):
    """Registers a model builder under `name` (a decorator).

    The builder is called as `builder(num_classes=..., input_shape=..., **kwargs)`
    and must return a `keras.Model` whose output is the logits `[batch, num_classes]`.

    Example:

    >>> @register("my_mlp")
    ... def my_mlp(num_classes, input_shape, **kwargs):
    ...     inputs = keras.Input(input_shape)
    ...     x = keras.layers.Flatten()(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
    """
    return MODELS.register(name)


def names():
    """Returns the sorted names of all registered models.

    Example:

    >>> "digits_cnn" in keras_cskd.models.names()
    True
    """
    return MODELS.names()


def get(name, num_classes, input_shape, **kwargs):
    """Builds a fresh model by name.

    Args:
        name: a registered name (see `names()`), `"keras.applications:<Name>"` for
            any `keras.applications` architecture (built without weights, with
            `classifier_activation=None` so it returns logits), or a `keras.Model`,
            which is returned as it is (bring your own teacher or student).
        num_classes: number of classes of the logits.
        input_shape: shape of one input example, without the batch axis.
        **kwargs: passed to the builder, for example `batch_norm_group=64`
            for a zoo model's BatchNorm statistics over groups of 64 images of
            the global batch (default: the whole global batch).

    Returns:
        A `keras.Model` mapping inputs to logits `[batch, num_classes]`.

    Raises:
        ValueError: if `name` is unknown.

    Example:

    >>> model = keras_cskd.models.get("digits_mlp", num_classes=10,
    ...                               input_shape=(8, 8, 1))
    >>> model.output_shape
    (None, 10)
    """
    if kwargs.get("synchronized"):
        raise ValueError(
            "models.get takes batch_norm_group= (images per BatchNorm statistics "
            "group, default the whole global batch on any device count), not "
            "synchronized=True, which it replaces."
        )
    kwargs.pop("synchronized", None)
    if isinstance(name, keras.Model):
        return name
    if isinstance(name, str) and name.startswith(KERAS_APPLICATIONS):
        if kwargs.get("batch_norm_group"):
            raise ValueError(
                f"batch_norm_group needs the zoo's GroupBatchNormalization; {name} "
                "has keras.layers.BatchNormalization: use a zoo model, or leave it 0."
            )
        return _keras_application(
            name[len(KERAS_APPLICATIONS) :], num_classes, input_shape
        )
    builder = MODELS.get(name)
    return builder(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)


def _keras_application(class_name, num_classes, input_shape):
    builder = getattr(keras.applications, class_name, None)
    if builder is None or not callable(builder):
        raise ValueError(
            f"Unknown keras.applications architecture '{class_name}' "
            f"(for example '{KERAS_APPLICATIONS}ResNet50')."
        )
    return builder(
        weights=None,
        input_shape=tuple(input_shape),
        classes=num_classes,
        classifier_activation=None,
    )
