"""CIFAR wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Keras transcription of `models/cifar/wrn.py` of RepDistiller / mdistiller:
pre-activation blocks (BN-ReLU-conv), no dropout. Initialization as there:
convolutions `normal_(0, sqrt(2 / (k * k * out_channels)))`, BatchNorm weight 1 and
bias 0, the linear layer PyTorch's default weight and a zero bias.
"""

import keras

from keras_cskd.models.cifar_resnet import batch_norm, conv, logits_head, zoo_doc
from keras_cskd.models.registry import register


def _bn_relu(x, batch_norm_group, name):
    x = batch_norm(x, batch_norm_group, name=f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _wide_block(x, filters, strides, batch_norm_group, name):
    """Pre-activation block; a changed width projects the *activated* input."""
    pre = _bn_relu(x, batch_norm_group, f"{name}_pre")
    y = conv(pre, filters, 3, strides, name=f"{name}_1_conv")
    y = _bn_relu(y, batch_norm_group, f"{name}_1")
    y = conv(y, filters, 3, name=f"{name}_2_conv")
    if x.shape[-1] != filters:
        x = conv(pre, filters, 1, strides, name=f"{name}_shortcut_conv")
    return keras.layers.Add(name=f"{name}_add")([x, y])


def wide_resnet(
    depth,
    widen_factor,
    num_classes=100,
    input_shape=(32, 32, 3),
    batch_norm_group=None,
    name="wrn",
):
    """Builds a CIFAR wide ResNet WRN-`depth`-`widen_factor`.

    Args:
        depth: `6 * n + 4` (n blocks per stage).
        widen_factor: width multiplier of the 16-32-64 stages.
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis.
        batch_norm_group: images per BatchNorm statistics group (None: the
            global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> wide_resnet(16, 2).count_params()
    705108
    """
    if (depth - 4) % 6:
        raise ValueError(f"WRN depth must be 6n+4, got {depth}.")
    n = (depth - 4) // 6
    inputs = keras.Input(input_shape, name="images")
    x = conv(inputs, 16, 3, name="stem_conv")
    for s, (filters, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        for b in range(n):
            x = _wide_block(
                x,
                filters * widen_factor,
                strides if b == 0 else 1,
                batch_norm_group,
                name=f"stage{s}_block{b}",
            )
    x = _bn_relu(x, batch_norm_group, "final")
    logits = logits_head(x, num_classes, bias_initializer="zeros")
    return keras.Model(inputs, logits, name=name)


@register("wrn_16_1")
@zoo_doc("CIFAR WRN-16-1: 16-32-64 channels, 2 blocks per stage.", 181844)
def wrn_16_1(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return wide_resnet(16, 1, num_classes, input_shape, batch_norm_group, "wrn_16_1")


@register("wrn_16_2")
@zoo_doc("CIFAR WRN-16-2: 32-64-128 channels, 2 blocks per stage.", 705108)
def wrn_16_2(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return wide_resnet(16, 2, num_classes, input_shape, batch_norm_group, "wrn_16_2")


@register("wrn_40_1")
@zoo_doc("CIFAR WRN-40-1: 16-32-64 channels, 6 blocks per stage.", 572500)
def wrn_40_1(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return wide_resnet(40, 1, num_classes, input_shape, batch_norm_group, "wrn_40_1")


@register("wrn_40_2")
@zoo_doc("CIFAR WRN-40-2: 32-64-128 channels, 6 blocks per stage.", 2260564)
def wrn_40_2(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return wide_resnet(40, 2, num_classes, input_shape, batch_norm_group, "wrn_40_2")
