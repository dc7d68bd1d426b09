"""PyTorch's weight initializers, as stock (serializable) Keras initializers.

The CIFAR zoo reproduces RepDistiller / mdistiller models, so every layer starts
from the distribution its PyTorch definition draws. PyTorch computes fans from
the weight `[out, in / groups, k, k]` (`torch.nn.init._calculate_fan_in_and_fan_out`):
`fan_in = in / groups * k * k`, `fan_out = out * k * k`. Keras' `compute_fans`
agrees for `Dense` `(in, out)` and (grouped) `Conv2D` `(k, k, in / groups, out)`
kernels, but not for a `DepthwiseConv2D` kernel `(k, k, C, m)`, whose PyTorch
fans are `k * k` and `C * m * k * k`; `depthwise=True` passes those axes.

Each function returns a new initializer: Keras initializers without a seed draw
one when created and then repeat it, so one instance shared by several layers
would give every same-shaped layer the same values.
"""

import math

import keras

# `(k, k, C, m)` depthwise kernel: PyTorch's fan_in is `k * k` (one input channel
# per group), its fan_out `C * m * k * k` (all output channels).
_DEPTHWISE_AXES = {"input_axes": [0, 1], "output_axes": [0, 1, 2, 3]}


def kaiming_normal_fan_out(depthwise=False):
    """PyTorch's `kaiming_normal_(w, mode="fan_out", nonlinearity="relu")`.

    Normal with mean 0 and `std = sqrt(2 / fan_out)`, `fan_out = out * k * k`.
    It is also RepDistiller's `w.normal_(0, sqrt(2 / (k * k * out_channels)))`
    (WRN, VGG, MobileNetV2), depthwise convolutions included.

    Args:
        depthwise: for a `DepthwiseConv2D` kernel (PyTorch `groups=in_channels`).

    Returns:
        A `keras.initializers.VarianceScaling`.

    Example:

    >>> values = kaiming_normal_fan_out()(shape=(3, 3, 16, 32))  # std 1/12
    >>> layer = keras.layers.Conv2D(32, 3, kernel_initializer=kaiming_normal_fan_out())
    """
    return keras.initializers.VarianceScaling(
        scale=2.0,
        mode="fan_out",
        distribution="untruncated_normal",
        **(_DEPTHWISE_AXES if depthwise else {}),
    )


def torch_default_kernel(depthwise=False):
    """PyTorch's default `Conv2d` / `Linear` weight: `kaiming_uniform_(a=sqrt(5))`.

    Uniform on `[-1 / sqrt(fan_in), 1 / sqrt(fan_in)]` with `fan_in = in / groups
    * k * k` (`in_features` for `Linear`): the gain `sqrt(2 / (1 + 5))` makes the
    bound `sqrt(3 / 3 / fan_in)`.

    Args:
        depthwise: for a `DepthwiseConv2D` kernel (PyTorch `groups=in_channels`,
            so `fan_in = k * k`).

    Returns:
        A `keras.initializers.VarianceScaling`.

    Example:

    >>> values = torch_default_kernel()(shape=(1, 1, 80, 240))  # within 1/sqrt(80)
    >>> layer = keras.layers.Dense(10, kernel_initializer=torch_default_kernel())
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0,
        mode="fan_in",
        distribution="uniform",
        **(_DEPTHWISE_AXES if depthwise else {}),
    )


def torch_default_bias(fan_in):
    """PyTorch's default `Conv2d` / `Linear` bias: uniform within `1 / sqrt(fan_in)`.

    Args:
        fan_in: the fan-in of the layer's weight (`in_features` for `Linear`,
            `in / groups * k * k` for `Conv2d`); a bias shape does not carry it.

    Returns:
        A `keras.initializers.RandomUniform`.

    Example:

    >>> layer = keras.layers.Dense(
    ...     100,
    ...     kernel_initializer=torch_default_kernel(),
    ...     bias_initializer=torch_default_bias(fan_in=256),
    ... )
    """
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(minval=-bound, maxval=bound)


def normal_std_0_01():
    """`normal_(0, 0.01)`: the `Linear` weight of mdistiller's VGG and MobileNetV2.

    A fresh initializer per layer: an unseeded Keras initializer repeats its
    values, so two layers must not share one.

    Example:

    >>> layer = keras.layers.Dense(100, kernel_initializer=normal_std_0_01())
    """
    return keras.initializers.RandomNormal(stddev=0.01)
