"""The CIFAR MobileNetV2 (`mobilenetv2`, RepDistiller's width-0.5 `mobile_half`).

Keras transcription of `models/cifar/mobilenetv2.py` of RepDistiller /
mdistiller. Unlike `keras.applications.MobileNetV2` it keeps the stride-2 stem,
uses plain ReLU (not ReLU6), a 1x1 expansion conv even in the first block
(expansion 1), and 1280 final channels at any width <= 1. Initialization as
there: every convolution (the depthwise ones too) `normal_(0, sqrt(2 / (k * k *
out_channels)))`, BatchNorm weight 1 and bias 0, the linear layer `normal_(0, 0.01)`
with zero bias.
"""

import keras

from keras_cskd import initializers
from keras_cskd.models.cifar_resnet import conv_bn, logits_head, zoo_doc
from keras_cskd.models.registry import register

# (expansion, channels, blocks, stride) per stage; expansion None = `expansion`.
_STAGES = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _inverted_residual(x, filters, strides, expansion, batch_norm_group, name):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN, (+ input)."""
    y = conv_bn(
        x,
        x.shape[-1] * expansion,
        1,
        batch_norm_group=batch_norm_group,
        name=f"{name}_expand",
    )
    y = conv_bn(
        y,
        None,
        3,
        strides,
        depthwise=True,
        batch_norm_group=batch_norm_group,
        name=f"{name}_depthwise",
    )
    y = conv_bn(
        y,
        filters,
        1,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_project",
    )
    if strides == 1 and x.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def cifar_mobilenetv2(
    expansion=6,
    width=0.5,
    num_classes=100,
    input_shape=(32, 32, 3),
    batch_norm_group=None,
    name="mobilenetv2",
):
    """Builds RepDistiller's CIFAR MobileNetV2 (`mobilenetv2_T_w`).

    Args:
        expansion: expansion ratio `T` of the inverted residuals (but the first).
        width: width multiplier `W` of every layer but the final 1x1 conv.
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis.
        batch_norm_group: images per BatchNorm statistics group (None: the
            global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> cifar_mobilenetv2(expansion=6, width=0.5).count_params()  # doctest: +LARGE
    831204
    """
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn(
        inputs, int(32 * width), 3, 2, batch_norm_group=batch_norm_group, name="stem"
    )
    for s, (t, channels, blocks, strides) in enumerate(_STAGES, start=1):
        for b in range(blocks):
            x = _inverted_residual(
                x,
                int(channels * width),
                strides if b == 0 else 1,
                t or expansion,
                batch_norm_group,
                name=f"stage{s}_block{b}",
            )
    last = int(1280 * width) if width > 1.0 else 1280
    x = conv_bn(x, last, 1, batch_norm_group=batch_norm_group, name="top")
    logits = logits_head(x, num_classes, initializers.normal_std_0_01(), "zeros")
    return keras.Model(inputs, logits, name=name)


@register("mobilenetv2")
@zoo_doc("CIFAR MobileNetV2 at width 0.5, expansion 6 (`mobile_half`).", 831204)
def mobilenetv2(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_mobilenetv2(
        6, 0.5, num_classes, input_shape, batch_norm_group, "mobilenetv2"
    )
