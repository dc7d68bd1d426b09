"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4, resnet18, resnet50).

Keras transcriptions of the CIFAR zoo of RepDistiller / mdistiller
(`models/cifar/resnet.py` and `resnetv2.py`). This module also holds the
PyTorch-equivalent building blocks (`conv`, `batch_norm`, `conv_bn`,
`logits_head`) shared by the other CIFAR families.

Initialization as in both references: convolutions `kaiming_normal_(mode="fan_out",
nonlinearity="relu")`, BatchNorm weight 1 and bias 0, the linear layer PyTorch's
default (uniform within `1 / sqrt(in_features)`, weight and bias). `resnetv2.py`'s
`zero_init_residual` defaults to `False`, and the zoo builds that default.
"""

import keras

from keras_cskd import initializers
from keras_cskd.batch_norm import TorchBatchNormalization
from keras_cskd.models.registry import register


def conv(
    x,
    filters,
    kernel_size,
    strides=1,
    groups=1,
    use_bias=False,
    depthwise=False,
    kernel_init=initializers.kaiming_normal_fan_out,
    name=None,
):
    """A PyTorch-style convolution with symmetric zero padding `kernel_size // 2`.

    Stride-1 convolutions use `"same"` padding (identical for odd kernels); strided
    ones pad explicitly and use `"valid"`, because Keras' `"same"` pads only
    the bottom/right of even inputs and so samples different pixels than PyTorch.

    Args:
        x: input tensor `[batch, height, width, channels]`.
        filters: output channels (ignored when `depthwise=True`).
        kernel_size: odd kernel size.
        strides: stride.
        groups: groups of a grouped convolution.
        use_bias: whether the convolution has a bias.
        depthwise: use a `DepthwiseConv2D` (PyTorch `groups=in_channels`).
        kernel_init: a function of `depthwise` returning the kernel initializer
            (see `keras_cskd.initializers`); the default is the
            `kaiming_normal_(mode="fan_out")` of ResNet, WRN, VGG, MobileNetV2.
            A bias starts at zero (VGG's, the only zoo convolution with one).
        name: layer name; the padding layer is named `{name}_pad`.

    Returns:
        The output tensor.

    Example:

    >>> x = conv(keras.Input((32, 32, 16)), 32, 3, strides=2, name="down")
    >>> x.shape
    (None, 16, 16, 32)
    """
    padding = "same"
    if strides != 1:
        padding = "valid"
        if kernel_size // 2:
            x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    if depthwise:
        return keras.layers.DepthwiseConv2D(
            kernel_size,
            strides,
            padding,
            use_bias=use_bias,
            depthwise_initializer=kernel_init(depthwise=True),
            name=name,
        )(x)
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides,
        padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_init(depthwise=False),
        name=name,
    )(x)


def batch_norm(x, batch_norm_group=None, name=None):
    """PyTorch's `BatchNorm2d`: `momentum=0.1` there, `eps=1e-5`, weight 1, bias 0.

    Its moving variance tracks the unbiased batch variance, as PyTorch's does
    (see `TorchBatchNormalization`).

    Args:
        x: input tensor.
        batch_norm_group: images per statistics group of the global batch,
            whatever the replicas (`None`: the whole global batch).
        name: layer name.

    Returns:
        The normalized tensor.
    """
    return TorchBatchNormalization(
        momentum=0.9, epsilon=1e-5, group_size=batch_norm_group, name=name
    )(x)


def conv_bn(
    x,
    filters,
    kernel_size,
    strides=1,
    groups=1,
    relu=True,
    batch_norm_group=None,
    depthwise=False,
    use_bias=False,
    kernel_init=initializers.kaiming_normal_fan_out,
    name=None,
):
    """`conv` -> `batch_norm` -> optional ReLU, named `{name}_conv/_bn/_relu`.

    Args:
        x: input tensor.
        filters, kernel_size, strides, groups, depthwise, use_bias, kernel_init:
            see `conv`.
        relu: whether to end with a ReLU.
        batch_norm_group: see `batch_norm`.
        name: prefix of the layer names.

    Returns:
        The output tensor.
    """
    x = conv(
        x,
        filters,
        kernel_size,
        strides,
        groups,
        use_bias,
        depthwise,
        kernel_init,
        name=f"{name}_conv",
    )
    x = batch_norm(x, batch_norm_group, name=f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def logits_head(x, num_classes, kernel_initializer=None, bias_initializer=None):
    """Global average pooling and the linear classifier (logits, no softmax).

    Equals PyTorch's `AvgPool2d(k)` on the `k x k` final maps of 32x32 inputs.

    Args:
        x: final feature maps.
        num_classes: number of classes.
        kernel_initializer: the `Dense` kernel's; `None`: PyTorch's default
            `Linear` weight (`initializers.torch_default_kernel`).
        bias_initializer: the `Dense` bias'; `None`: PyTorch's default `Linear`
            bias (`initializers.torch_default_bias`).

    Returns:
        The logits `[batch, num_classes]`.
    """
    features = x.shape[-1]
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=kernel_initializer or initializers.torch_default_kernel(),
        bias_initializer=bias_initializer or initializers.torch_default_bias(features),
        name="logits",
    )(x)


def _residual(x, y, filters, strides, batch_norm_group, name):
    """Adds the (projected when the shape changes) shortcut of `x` to `y`, ReLU."""
    if strides != 1 or x.shape[-1] != filters:
        x = conv_bn(
            x,
            filters,
            1,
            strides,
            relu=False,
            batch_norm_group=batch_norm_group,
            name=f"{name}_shortcut",
        )
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def basic_block(x, planes, strides=1, batch_norm_group=None, name=None):
    """ResNet basic block: 3x3 conv-BN-ReLU, 3x3 conv-BN, shortcut, ReLU."""
    y = conv_bn(
        x, planes, 3, strides, batch_norm_group=batch_norm_group, name=f"{name}_1"
    )
    y = conv_bn(
        y, planes, 3, relu=False, batch_norm_group=batch_norm_group, name=f"{name}_2"
    )
    return _residual(x, y, planes, strides, batch_norm_group, name)


def bottleneck_block(x, planes, strides=1, batch_norm_group=None, name=None):
    """ResNet bottleneck block: 1x1, strided 3x3, 1x1 (x4 channels), shortcut."""
    y = conv_bn(x, planes, 1, batch_norm_group=batch_norm_group, name=f"{name}_1")
    y = conv_bn(
        y, planes, 3, strides, batch_norm_group=batch_norm_group, name=f"{name}_2"
    )
    y = conv_bn(
        y,
        4 * planes,
        1,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_3",
    )
    return _residual(x, y, 4 * planes, strides, batch_norm_group, name)


def cifar_resnet(
    stem_filters,
    stages,
    block="basic",
    num_classes=100,
    input_shape=(32, 32, 3),
    batch_norm_group=None,
    name="resnet",
):
    """Builds a CIFAR ResNet: a 3x3 stem (stride 1, no max-pool) and residual stages.

    Args:
        stem_filters: channels of the stem convolution.
        stages: `(planes, num_blocks, strides)` per stage.
        block: `"basic"` or `"bottleneck"` (4x channel expansion).
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis.
        batch_norm_group: images per BatchNorm statistics group (None: the
        global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> model = cifar_resnet(16, [(16, 1, 1), (32, 1, 2), (64, 1, 2)])
    >>> model.output_shape
    (None, 100)
    """
    block_fn = {"basic": basic_block, "bottleneck": bottleneck_block}[block]
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn(inputs, stem_filters, 3, batch_norm_group=batch_norm_group, name="stem")
    for s, (planes, num_blocks, strides) in enumerate(stages, start=1):
        for b in range(num_blocks):
            x = block_fn(
                x,
                planes,
                strides if b == 0 else 1,
                batch_norm_group,
                name=f"stage{s}_block{b}",
            )
    return keras.Model(inputs, logits_head(x, num_classes), name=name)


def _resnet_6n2(depth, widths, name, num_classes, input_shape, batch_norm_group):
    """The RepDistiller `resnet<depth>`: 3 stages of `(depth - 2) / 6` blocks."""
    n = (depth - 2) // 6
    stages = [(w, n, s) for w, s in zip(widths[1:], (1, 2, 2), strict=True)]
    return cifar_resnet(
        widths[0],
        stages,
        "basic",
        num_classes,
        input_shape,
        batch_norm_group,
        name=name,
    )


_ZOO_DOC = """{summary}

Args:
    num_classes: number of classes of the logits.
    input_shape: shape of one image, without the batch axis.
    batch_norm_group: images per BatchNorm statistics group (None: the
        global batch); see `GroupBatchNormalization`.

Returns:
    A `keras.Model` mapping images to logits `[batch, num_classes]`.

Example:

>>> model = keras_cskd.models.get("{name}", num_classes=100,  # doctest: +LARGE
...                               input_shape=(32, 32, 3))
>>> model.count_params()
{params}
"""


def zoo_doc(summary, params):
    """Gives a zoo builder the shared docstring (as `keras.applications` does).

    Args:
        summary: the one-line summary.
        params: total parameter count at 100 classes and 32x32x3 inputs.

    Returns:
        A decorator setting the builder's `__doc__`.
    """

    def decorator(builder):
        builder.__doc__ = _ZOO_DOC.format(
            summary=summary, name=builder.__name__, params=params
        )
        return builder

    return decorator


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@register("resnet8")
@zoo_doc("CIFAR ResNet-8: 16-32-64 channels, 1 block per stage.", 84564)
def resnet8(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(8, _SMALL, "resnet8", num_classes, input_shape, batch_norm_group)


@register("resnet14")
@zoo_doc("CIFAR ResNet-14: 16-32-64 channels, 2 blocks per stage.", 182228)
def resnet14(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        14, _SMALL, "resnet14", num_classes, input_shape, batch_norm_group
    )


@register("resnet20")
@zoo_doc("CIFAR ResNet-20: 16-32-64 channels, 3 blocks per stage.", 279892)
def resnet20(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        20, _SMALL, "resnet20", num_classes, input_shape, batch_norm_group
    )


@register("resnet32")
@zoo_doc("CIFAR ResNet-32: 16-32-64 channels, 5 blocks per stage.", 475220)
def resnet32(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        32, _SMALL, "resnet32", num_classes, input_shape, batch_norm_group
    )


@register("resnet44")
@zoo_doc("CIFAR ResNet-44: 16-32-64 channels, 7 blocks per stage.", 670548)
def resnet44(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        44, _SMALL, "resnet44", num_classes, input_shape, batch_norm_group
    )


@register("resnet56")
@zoo_doc("CIFAR ResNet-56: 16-32-64 channels, 9 blocks per stage.", 865876)
def resnet56(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        56, _SMALL, "resnet56", num_classes, input_shape, batch_norm_group
    )


@register("resnet110")
@zoo_doc("CIFAR ResNet-110: 16-32-64 channels, 18 blocks per stage.", 1744852)
def resnet110(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        110, _SMALL, "resnet110", num_classes, input_shape, batch_norm_group
    )


@register("resnet8x4")
@zoo_doc("CIFAR ResNet-8x4: 64-128-256 channels, 1 block per stage.", 1236292)
def resnet8x4(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(8, _X4, "resnet8x4", num_classes, input_shape, batch_norm_group)


@register("resnet32x4")
@zoo_doc("CIFAR ResNet-32x4: 64-128-256 channels, 5 blocks per stage.", 7443780)
def resnet32x4(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return _resnet_6n2(
        32, _X4, "resnet32x4", num_classes, input_shape, batch_norm_group
    )


@register("resnet18")
@zoo_doc("CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool).", 11229732)
def resnet18(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return cifar_resnet(
        64, stages, "basic", num_classes, input_shape, batch_norm_group, name="resnet18"
    )


@register("resnet50")
@zoo_doc("CIFAR ResNet-50 (3x3 stride-1 stem, no max-pool).", 23758372)
def resnet50(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    stages = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
    return cifar_resnet(
        64,
        stages,
        "bottleneck",
        num_classes,
        input_shape,
        batch_norm_group,
        name="resnet50",
    )
