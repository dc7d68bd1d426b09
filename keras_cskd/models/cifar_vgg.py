"""CIFAR VGGs with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19).

Keras transcription of `models/cifar/vgg.py` of RepDistiller / mdistiller (the
`*_bn` variants, which the zoo registers under the plain names): five blocks of
3x3 conv (with bias) - BN - ReLU, 2x2 max-pooling after the first three (also
after the fourth for 64x64 inputs), global average pooling, one linear layer.
Initialization as there: convolutions `normal_(0, sqrt(2 / (k * k * out_channels)))`
with zero bias, BatchNorm weight 1 and bias 0, the linear layer `normal_(0, 0.01)`
with zero bias.
"""

import keras

from keras_cskd import initializers
from keras_cskd.models.cifar_resnet import conv_bn, logits_head, zoo_doc
from keras_cskd.models.registry import register

_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def cifar_vgg(
    config, num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None, name="vgg"
):
    """Builds a CIFAR VGG with BatchNorm.

    Args:
        config: the channels of each conv, as five lists (one per block).
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis.
        batch_norm_group: images per BatchNorm statistics group (None: the
            global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> cifar_vgg([[64], [128], [256], [512], [512]]).count_params()
    3967972
    """
    pooled_blocks = (0, 1, 2, 3) if input_shape[0] == 64 else (0, 1, 2)
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for b, block in enumerate(config):
        for i, filters in enumerate(block):
            x = conv_bn(
                x,
                filters,
                3,
                use_bias=True,
                batch_norm_group=batch_norm_group,
                name=f"block{b}_{i}",
            )
        if b in pooled_blocks:
            x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
    logits = logits_head(x, num_classes, initializers.normal_std_0_01(), "zeros")
    return keras.Model(inputs, logits, name=name)


@register("vgg8")
@zoo_doc("CIFAR VGG-8 with BatchNorm (one conv per block).", 3967972)
def vgg8(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_vgg(
        _CONFIGS["vgg8"], num_classes, input_shape, batch_norm_group, "vgg8"
    )


@register("vgg11")
@zoo_doc("CIFAR VGG-11 with BatchNorm (configuration A).", 9282788)
def vgg11(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_vgg(
        _CONFIGS["vgg11"], num_classes, input_shape, batch_norm_group, "vgg11"
    )


@register("vgg13")
@zoo_doc("CIFAR VGG-13 with BatchNorm (configuration B).", 9468068)
def vgg13(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_vgg(
        _CONFIGS["vgg13"], num_classes, input_shape, batch_norm_group, "vgg13"
    )


@register("vgg16")
@zoo_doc("CIFAR VGG-16 with BatchNorm (configuration D).", 14782884)
def vgg16(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_vgg(
        _CONFIGS["vgg16"], num_classes, input_shape, batch_norm_group, "vgg16"
    )


@register("vgg19")
@zoo_doc("CIFAR VGG-19 with BatchNorm (configuration E).", 20097700)
def vgg19(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_vgg(
        _CONFIGS["vgg19"], num_classes, input_shape, batch_norm_group, "vgg19"
    )
