"""A teacher and a student for the embedded 8x8 handwritten digits."""

import keras

from keras_cskd.batch_norm import GroupBatchNormalization
from keras_cskd.models.registry import register


@register("digits_cnn")
def digits_cnn(num_classes=10, input_shape=(8, 8, 1), width=32, batch_norm_group=None):
    """The digits teacher: a small VGG-style CNN (about 100k parameters).

    Example:

    >>> teacher = digits_cnn()
    >>> teacher.output_shape
    (None, 10)
    """
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = GroupBatchNormalization(group_size=batch_norm_group, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


@register("digits_mlp")
def digits_mlp(num_classes=10, input_shape=(8, 8, 1), hidden=16, batch_norm_group=None):
    """The digits student: a one-hidden-layer MLP (about 1.2k parameters).

    `batch_norm_group` is accepted for a uniform zoo signature (no BatchNorm here).

    Example:

    >>> student = digits_mlp()
    >>> student.count_params()
    1210
    """
    del batch_norm_group
    inputs = keras.Input(input_shape, name="images")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_mlp")
