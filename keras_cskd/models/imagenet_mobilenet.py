"""The ImageNet MobileNetV1 (`mobilenetv1_imagenet`) of mdistiller's ImageNet pairs.

Keras transcription of mdistiller's `mdistiller/models/imagenet/mobilenetv1.py`
(the student of its ResNet-50 -> MobileNetV1 pair): a 3x3 stride-2 convolution
with 32 channels, then 13 depthwise-separable blocks (3x3 depthwise conv-BN-ReLU,
1x1 pointwise conv-BN-ReLU), average pooling and the linear classifier. Unlike
`keras.applications.MobileNet` it has plain ReLU (not ReLU6) and a classifier
with a bias, and pads like PyTorch (symmetric, so ported weights give the same
logits). mdistiller pools with `AvgPool2d(7)`, global on the 7x7 maps of
224x224 images (193 to 224 pixels); the zoo averages globally, so any size works.

Initialization as there (it sets none): PyTorch's defaults, every convolution
(the depthwise ones too) and the linear layer uniform within `1 / sqrt(fan_in)`,
the linear bias too, BatchNorm weight 1 and bias 0.

Layer names, for feature losses: `stem_conv/_bn/_relu`, and for block `k` (1 to
13, mdistiller's `model[k]`) `block{k}_depthwise_conv/_bn/_relu` and
`block{k}_pointwise_conv/_bn/_relu`; then `avgpool` and `logits`. mdistiller's
four "preact_feats" are `block3_pointwise_bn`, `block5_pointwise_bn`,
`block11_pointwise_bn` and `block13_pointwise_bn` (128, 256, 512, 1024
channels), its "feats" the `_relu` layers after them, its "pooled_feat" `avgpool`.
"""

import keras

from keras_cskd import initializers
from keras_cskd.models.cifar_resnet import conv_bn, logits_head
from keras_cskd.models.registry import register

# (output channels, stride) of the 13 depthwise-separable blocks.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


@register("mobilenetv1_imagenet")
def mobilenetv1_imagenet(
    num_classes=1000, input_shape=(224, 224, 3), batch_norm_group=None
):
    """mdistiller's ImageNet MobileNetV1 (width 1, ReLU, 4.2M parameters).

    Its `.pth` weights load with `keras_cskd.models.porting.load_torch_state_dict`.

    Args:
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis (any size works).
        batch_norm_group: images per BatchNorm statistics group (None: the
            global batch); see `GroupBatchNormalization`.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> model = keras_cskd.models.get(  # doctest: +LARGE
    ...     "mobilenetv1_imagenet", num_classes=1000, input_shape=(224, 224, 3))
    >>> model.count_params()
    4253864
    """
    kernel_init = initializers.torch_default_kernel
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn(
        inputs,
        32,
        3,
        2,
        batch_norm_group=batch_norm_group,
        kernel_init=kernel_init,
        name="stem",
    )
    for k, (filters, strides) in enumerate(_BLOCKS, start=1):
        x = conv_bn(
            x,
            None,
            3,
            strides,
            depthwise=True,
            batch_norm_group=batch_norm_group,
            kernel_init=kernel_init,
            name=f"block{k}_depthwise",
        )
        x = conv_bn(
            x,
            filters,
            1,
            batch_norm_group=batch_norm_group,
            kernel_init=kernel_init,
            name=f"block{k}_pointwise",
        )
    return keras.Model(inputs, logits_head(x, num_classes), name="mobilenetv1_imagenet")
