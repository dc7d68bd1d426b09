"""CIFAR ShuffleNets (shufflenetv1: g=3; shufflenetv2: 1.0x).

Keras transcriptions of `models/cifar/ShuffleNetv1.py` and `ShuffleNetv2.py` of
RepDistiller / mdistiller: a 1x1 stem without down-sampling, three stages that
each start with a stride-2 block (32x32 -> 4x4), global average pooling, linear.
The channel shuffle is built from `Reshape` and `Permute` layers only, so it
converts to TFLite builtin RESHAPE/TRANSPOSE ops.

Both references initialize nothing themselves, so every layer has PyTorch's
default: convolution and linear weights uniform within `1 / sqrt(fan_in)` (`fan_in
= in / groups * k * k`: 9 for the depthwise convolutions), the linear bias
likewise, BatchNorm weight 1 and bias 0.
"""

import keras

from keras_cskd import initializers
from keras_cskd.models.cifar_resnet import conv_bn, logits_head, zoo_doc
from keras_cskd.models.registry import register


def _conv_bn(*args, **kwargs):
    """`conv_bn` with PyTorch's default convolution weight (ShuffleNet sets none)."""
    return conv_bn(*args, kernel_init=initializers.torch_default_kernel, **kwargs)


def channel_shuffle(x, groups, name):
    """ShuffleNet's channel shuffle: channel `i * C / g + j` moves to `j * g + i`.

    Equal to PyTorch's `x.reshape(N, g, C // g, H, W).transpose(1, 2)` on NCHW.

    Args:
        x: input tensor `[batch, height, width, channels]` with static shape.
        groups: number of groups `g`; 1 returns `x` as it is.
        name: prefix of the layer names.

    Returns:
        The shuffled tensor, of the same shape.

    Example:

    >>> channel_shuffle(keras.Input((4, 4, 6)), 2, "shuffle").shape
    (None, 4, 4, 6)
    """
    if groups == 1:
        return x
    h, w, c = x.shape[1:]
    x = keras.layers.Reshape((h * w, groups, c // groups), name=f"{name}_split")(x)
    x = keras.layers.Permute((1, 3, 2), name=f"{name}_transpose")(x)
    return keras.layers.Reshape((h, w, c), name=f"{name}_merge")(x)


def _v1_bottleneck(x, filters, strides, groups, batch_norm_group, name):
    """ShuffleNetV1 unit; at stride 2 it concatenates a 3x3 average pool of `x`."""
    in_channels = x.shape[-1]
    out_channels = filters - in_channels if strides == 2 else filters
    mid = out_channels // 4
    first_groups = 1 if in_channels == 24 else groups  # the stem output is not split
    y = _conv_bn(
        x,
        mid,
        1,
        groups=first_groups,
        batch_norm_group=batch_norm_group,
        name=f"{name}_1",
    )
    y = channel_shuffle(y, first_groups, name=f"{name}_shuffle")
    y = _conv_bn(
        y,
        None,
        3,
        strides,
        depthwise=True,
        batch_norm_group=batch_norm_group,
        name=f"{name}_2",
    )
    y = _conv_bn(
        y,
        out_channels,
        1,
        groups=groups,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_3",
    )
    if strides == 2:
        # PyTorch's AvgPool2d(3, 2, padding=1) counts the zero padding.
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_shortcut_pad")(x)
        x = keras.layers.AveragePooling2D(3, 2, name=f"{name}_shortcut_pool")(x)
        y = keras.layers.Concatenate(name=f"{name}_concat")([y, x])
    else:
        y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _v2_basic(x, batch_norm_group, name):
    """ShuffleNetV2 unit: transform the second channel half, concat, shuffle."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = _conv_bn(x2, half, 1, batch_norm_group=batch_norm_group, name=f"{name}_1")
    y = _conv_bn(
        y,
        None,
        3,
        depthwise=True,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_2",
    )
    y = _conv_bn(y, half, 1, batch_norm_group=batch_norm_group, name=f"{name}_3")
    y = keras.layers.Concatenate(name=f"{name}_concat")([x1, y])
    return channel_shuffle(y, 2, name=f"{name}_shuffle")


def _v2_down(x, filters, batch_norm_group, name):
    """ShuffleNetV2 stride-2 unit: two branches, concat, shuffle."""
    mid = filters // 2
    left = _conv_bn(
        x,
        None,
        3,
        2,
        depthwise=True,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_left_1",
    )
    left = _conv_bn(
        left, mid, 1, batch_norm_group=batch_norm_group, name=f"{name}_left_2"
    )
    right = _conv_bn(
        x, mid, 1, batch_norm_group=batch_norm_group, name=f"{name}_right_1"
    )
    right = _conv_bn(
        right,
        None,
        3,
        2,
        depthwise=True,
        relu=False,
        batch_norm_group=batch_norm_group,
        name=f"{name}_right_2",
    )
    right = _conv_bn(
        right, mid, 1, batch_norm_group=batch_norm_group, name=f"{name}_right_3"
    )
    y = keras.layers.Concatenate(name=f"{name}_concat")([left, right])
    return channel_shuffle(y, 2, name=f"{name}_shuffle")


def cifar_shufflenet(
    version,
    stage_filters,
    stage_blocks,
    groups=3,
    top_filters=None,
    num_classes=100,
    input_shape=(32, 32, 3),
    batch_norm_group=None,
    name="shufflenet",
):
    """Builds a CIFAR ShuffleNetV1 or V2.

    Args:
        version: 1 or 2.
        stage_filters: output channels of the three stages.
        stage_blocks: units per stage (V2: not counting the stride-2 unit that
            starts every stage).
        groups: V1 only: groups of the 1x1 convolutions.
        top_filters: V2 only: channels of the final 1x1 conv.
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis.
        batch_norm_group: images per BatchNorm statistics group (None: the
            global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> model = cifar_shufflenet(  # doctest: +LARGE
    ...     2, (116, 232, 464), (3, 7, 3), top_filters=1024)
    >>> model.count_params()
    1371708
    """
    inputs = keras.Input(input_shape, name="images")
    x = _conv_bn(inputs, 24, 1, batch_norm_group=batch_norm_group, name="stem")
    for s, (filters, blocks) in enumerate(
        zip(stage_filters, stage_blocks, strict=True), start=1
    ):
        if version == 2:
            x = _v2_down(x, filters, batch_norm_group, name=f"stage{s}_down")
        for b in range(blocks):
            block_name = f"stage{s}_block{b}"
            if version == 1:
                x = _v1_bottleneck(
                    x, filters, 2 if b == 0 else 1, groups, batch_norm_group, block_name
                )
            else:
                x = _v2_basic(x, batch_norm_group, block_name)
    if version == 2:
        x = _conv_bn(x, top_filters, 1, batch_norm_group=batch_norm_group, name="top")
    return keras.Model(inputs, logits_head(x, num_classes), name=name)


@register("shufflenetv1")
@zoo_doc("CIFAR ShuffleNetV1 (g=3; `ShuffleV1`).", 972994)
def shufflenetv1(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_shufflenet(
        1,
        (240, 480, 960),
        (4, 8, 4),
        groups=3,
        num_classes=num_classes,
        input_shape=input_shape,
        batch_norm_group=batch_norm_group,
        name="shufflenetv1",
    )


@register("shufflenetv2")
@zoo_doc("CIFAR ShuffleNetV2 1.0x (`ShuffleV2`).", 1371708)
def shufflenetv2(num_classes=100, input_shape=(32, 32, 3), batch_norm_group=None):
    return cifar_shufflenet(
        2,
        (116, 232, 464),
        (3, 7, 3),
        top_filters=1024,
        num_classes=num_classes,
        input_shape=input_shape,
        batch_norm_group=batch_norm_group,
        name="shufflenetv2",
    )
