"""ImageNet ResNets (`resnet18_imagenet`, `resnet34_imagenet`, `resnet50_imagenet`).

Keras transcriptions of torchvision's `models/resnet.py` (the teachers and
students of the ImageNet pairs of mdistiller and CSKD): a 7x7 stride-2 stem, a
3x3 stride-2 max-pool, four stages of basic or bottleneck blocks (ResNet v1.5:
the bottleneck strides on its 3x3 convolution), global average pooling and the
linear classifier. Built channels-last with the same padding as PyTorch, so
weights ported from torchvision (`keras_cskd.models.porting`) give the same
logits. Any image size works (torchvision pools with `AdaptiveAvgPool2d(1)`).

Initialization as torchvision's: convolutions `kaiming_normal_(mode="fan_out",
nonlinearity="relu")`, BatchNorm weight 1 and bias 0, the linear layer PyTorch's
default (uniform within `1 / sqrt(in_features)`, weight and bias);
`zero_init_residual` defaults to `False` there, and the zoo builds that default.

Layer names, for feature losses (`s` the stage 1-4, `b` the block from 0):
`stem_bn` (the stem before its ReLU), `stem_relu`, `stem_pool`; in each block
`stage{s}_block{b}_add` (the sum before the ReLU, mdistiller's "preact" feature
of the last block of a stage) and `stage{s}_block{b}_out` (after the ReLU);
`avgpool` (the pooled features) and `logits`.
"""

import keras

from keras_cskd.models.cifar_resnet import (
    basic_block,
    bottleneck_block,
    conv_bn,
    logits_head,
)
from keras_cskd.models.registry import register

_STAGE_PLANES = (64, 128, 256, 512)


def imagenet_resnet(
    blocks_per_stage,
    block="basic",
    num_classes=1000,
    input_shape=(224, 224, 3),
    batch_norm_group=None,
    name="resnet",
):
    """Builds a torchvision ImageNet ResNet.

    Args:
        blocks_per_stage: the number of blocks of each of the four stages.
        block: `"basic"` (ResNet-18/34) or `"bottleneck"` (ResNet-50 and deeper,
            4x channel expansion, stride on the 3x3 convolution).
        num_classes: number of classes of the logits.
        input_shape: shape of one image, without the batch axis; any height and
            width work (`None` too), as the features are averaged globally.
        batch_norm_group: images per BatchNorm statistics group (None: the
        global batch); see `GroupBatchNormalization`.
        name: model name.

    Returns:
        A `keras.Model` mapping images to logits `[batch, num_classes]`.

    Example:

    >>> model = imagenet_resnet([1, 1, 1, 1], num_classes=10, input_shape=(64, 64, 3))
    >>> model.output_shape
    (None, 10)
    """
    block_fn = {"basic": basic_block, "bottleneck": bottleneck_block}[block]
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn(inputs, 64, 7, 2, batch_norm_group=batch_norm_group, name="stem")
    # `MaxPool2d(3, 2, padding=1)` pads with -inf. After the ReLU every value is
    # >= 0 and every 3x3 window holds at least one real pixel, so padding with
    # zeros gives the same maxima. Keras' "same" would pad only the bottom/right.
    x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="valid", name="stem_pool")(x)
    stages = zip(_STAGE_PLANES, blocks_per_stage, (1, 2, 2, 2), strict=True)
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


_ZOO_DOC = """{summary}

torchvision's `{reference}()`. Its `.pth` weights load with
`keras_cskd.models.porting.load_torch_state_dict`.

Args:
    num_classes: number of classes of the logits.
    input_shape: shape of one image, without the batch axis (any size works).
    batch_norm_group: images per BatchNorm statistics group (None: the
        global batch); see `GroupBatchNormalization`.

Returns:
    A `keras.Model` mapping images to logits `[batch, num_classes]`.

Example:

>>> model = keras_cskd.models.get("{name}", num_classes=1000,  # doctest: +LARGE
...                               input_shape=(224, 224, 3))
>>> model.count_params()
{params}
"""


def _zoo_doc(summary, reference, params):
    """Gives a builder the shared docstring (`params`: at 1000 classes)."""

    def decorator(builder):
        builder.__doc__ = _ZOO_DOC.format(
            summary=summary,
            reference=reference,
            name=builder.__name__,
            params=params,
        )
        return builder

    return decorator


@register("resnet18_imagenet")
@_zoo_doc("ImageNet ResNet-18: basic blocks, 2-2-2-2.", "resnet18", 11699112)
def resnet18_imagenet(
    num_classes=1000, input_shape=(224, 224, 3), batch_norm_group=None
):
    return imagenet_resnet(
        [2, 2, 2, 2],
        "basic",
        num_classes,
        input_shape,
        batch_norm_group,
        name="resnet18_imagenet",
    )


@register("resnet34_imagenet")
@_zoo_doc("ImageNet ResNet-34: basic blocks, 3-4-6-3.", "resnet34", 21814696)
def resnet34_imagenet(
    num_classes=1000, input_shape=(224, 224, 3), batch_norm_group=None
):
    return imagenet_resnet(
        [3, 4, 6, 3],
        "basic",
        num_classes,
        input_shape,
        batch_norm_group,
        name="resnet34_imagenet",
    )


@register("resnet50_imagenet")
@_zoo_doc(
    "ImageNet ResNet-50 (v1.5): bottleneck blocks, 3-4-6-3.", "resnet50", 25610152
)
def resnet50_imagenet(
    num_classes=1000, input_shape=(224, 224, 3), batch_norm_group=None
):
    return imagenet_resnet(
        [3, 4, 6, 3],
        "bottleneck",
        num_classes,
        input_shape,
        batch_norm_group,
        name="resnet50_imagenet",
    )
