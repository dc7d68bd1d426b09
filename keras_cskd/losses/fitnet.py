"""FitNet: FitNets' hint loss with mdistiller's convolutional regressor."""

import math

import keras
from keras import ops

from keras_cskd.batch_norm import TorchBatchNormalization
from keras_cskd.initializers import torch_default_bias, torch_default_kernel
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_distillation import check_named_layers
from keras_cskd.losses.feature_loss import shapes_of
from keras_cskd.losses.registry import register

_REGRESSOR = "fitnet_conv_reg"


def regressor_convolution(student_shape, teacher_shape):
    """mdistiller's `ConvReg` choice of convolution, by the maps' heights.

    `[B, H, W, C]` shapes; `s`, `t` the student's and the teacher's:
    `H_s == 2 H_t`: a 3x3 conv, stride 2, padding 1; `2 H_s == H_t`: a 4x4
    transposed conv, stride 2, padding 1; `H_s >= H_t`: a valid conv of
    kernel `(1 + H_s - H_t, 1 + W_s - W_t)`; a smaller student map is refused.

    Returns:
        `(kind, kernel_size, stride)`, kind `"conv"` or `"transposed"`.

    Example:

    >>> regressor_convolution((2, 16, 16, 8), (2, 8, 8, 32))
    ('conv', (3, 3), 2)
    """
    student_height, student_width = student_shape[1:3]
    teacher_height, teacher_width = teacher_shape[1:3]
    if student_height == 2 * teacher_height:
        return "conv", (3, 3), 2
    if 2 * student_height == teacher_height:
        return "transposed", (4, 4), 2
    if student_height >= teacher_height:
        kernel = (
            1 + student_height - teacher_height,
            1 + student_width - teacher_width,
        )
        return "conv", kernel, 1
    raise ValueError(
        f"FitNet's regressor maps a student map of height {student_height} to the "
        f"teacher's {teacher_height}: it takes twice, half, or at least the "
        "teacher's height (mdistiller's ConvReg); choose other layers."
    )


@keras.saving.register_keras_serializable(package="keras_cskd")
class ConvRegressor(keras.layers.Layer):
    """mdistiller's `ConvReg`: conv (see `regressor_convolution`), BatchNorm,
    ReLU, from a student map to the teacher's shape.

    The BatchNorm is PyTorch's `BatchNorm2d` (eps 1e-5, momentum 0.1, the
    running variance unbiased) over the global batch on any number of replicas.

    Args:
        student_shape, teacher_shape: `[B, H, W, C]` shapes of the two maps.
        use_relu: the ReLU after the BatchNorm (mdistiller's default `True`).

    Example:

    >>> regressor = ConvRegressor((2, 8, 8, 16), (2, 4, 4, 64))
    >>> tuple(regressor(keras.ops.ones((2, 8, 8, 16)), training=True).shape)
    (2, 4, 4, 64)
    """

    def __init__(self, student_shape, teacher_shape, use_relu=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        self.use_relu = bool(use_relu)
        kind, kernel, stride = regressor_convolution(
            self.student_shape, self.teacher_shape
        )
        student_channels, teacher_channels = student_shape[-1], teacher_shape[-1]
        # PyTorch's padding=1 pads both sides; Keras's "same" would pad only the
        # bottom and right of an even map at stride 2: pad explicitly.
        strided_conv = kind == "conv" and stride == 2
        # Its layers compute in its own dtype (float32), whatever the policy.
        policy = self.dtype_policy
        self.padding = (
            keras.layers.ZeroPadding2D(1, dtype=policy) if strided_conv else None
        )
        # "same" at kernel 4, stride 2 crops one row and column on each side:
        # PyTorch's padding=1 of the transposed conv.
        transposed = kind == "transposed"
        convolution = (
            keras.layers.Conv2DTranspose if transposed else keras.layers.Conv2D
        )
        # PyTorch's default init. Keras's fans of a conv and a transposed-conv
        # kernel agree with PyTorch's; the bias's fan_in is the weight's dim 1
        # times the kernel area: the teacher's channels for a transposed conv.
        fan_in = (teacher_channels if transposed else student_channels) * math.prod(
            kernel
        )
        self.conv = convolution(
            teacher_channels,
            kernel,
            stride,
            padding="same" if transposed else "valid",
            name="conv",
            kernel_initializer=torch_default_kernel(),
            bias_initializer=torch_default_bias(fan_in),
            dtype=policy,
        )
        self.bn = TorchBatchNormalization(name="bn", dtype=policy)

    def build(self, input_shape):
        shape = (None, *self.student_shape[1:])
        if self.padding is not None:
            self.padding.build(shape)
            shape = self.padding.compute_output_shape(shape)
        self.conv.build(shape)
        self.bn.build(self.conv.compute_output_shape(shape))

    def call(self, inputs, training=None):
        x = inputs if self.padding is None else self.padding(inputs)
        x = self.bn(self.conv(x), training=training)
        return ops.relu(x) if self.use_relu else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.teacher_shape[1:])

    def get_config(self):
        return {
            **super().get_config(),
            "student_shape": self.student_shape,
            "teacher_shape": self.teacher_shape,
            "use_relu": self.use_relu,
        }


@register("fitnet")
@keras.saving.register_keras_serializable(package="keras_cskd")
class FitNet(DistillationLoss):
    """FitNets' hints (Romero et al., 2015) as mdistiller's FitNet trains them.

    `L = mean_{b,h,w,c} (r(f_s) - f_t)^2` (PyTorch's `F.mse_loss`), `f_s`,
    `f_t` the hint layers' maps (mdistiller's `feats[2]`, cfg.py's
    `FITNET.HINT_LAYER`, on both sides) and `r` mdistiller's `ConvReg`:
    a conv chosen by the maps' heights (`regressor_convolution`), BatchNorm
    and ReLU (`ConvRegressor`), created by `build` and trained with the
    student. mdistiller weighs it by 100 and the CE by 1 (`REFERENCE_WEIGHT`,
    cfg.py's `FITNET.LOSS.FEAT_WEIGHT`). Unlike `FeatureDistillation(regressor=
    True)` (Keras's semantics, a plain 1x1 conv), the maps may differ in size.

    Args:
        teacher_layer_name: the teacher's hint layer or tap.
        student_layer_name: the student's hint layer or tap.
        use_relu: the regressor's final ReLU (mdistiller's `True`).
        probe_batch_norm: the recipe builder runs teacher and student once in
            training mode on one standard-normal image before training, as
            mdistiller's `get_feat_shapes` does when FitNet is constructed,
            which moves both networks' BatchNorm statistics
            (docs/reproducing.md); `False` is the clean variant.

    Example:

    >>> loss = FitNet("teacher_block", "student_block")
    >>> loss.build((None, 8, 8, 64), (None, 16, 16, 16))   # the Distiller does it
    >>> loss.extra_parameters   # conv 3x3 16->64 with bias, BatchNorm's 2x64
    9408
    >>> float(loss.compute_loss(keras.ops.ones((2, 8, 8, 64)),
    ...                         keras.ops.ones((2, 16, 16, 16)))) >= 0
    True
    """

    REFERENCE_WEIGHT = 100.0

    def __init__(
        self,
        teacher_layer_name="feats[2]",
        student_layer_name="feats[2]",
        use_relu=True,
        probe_batch_norm=False,
    ):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.use_relu = bool(use_relu)
        self.probe_batch_norm = bool(probe_batch_norm)
        self._regressor = None

    @property
    def layers(self):
        """`[regressor]` once built, else `[]`."""
        return [] if self._regressor is None else [self._regressor]

    @property
    def extra_parameters(self):
        """The regressor's trainable values: mdistiller's `get_extra_parameters`."""
        self._built()  # an unbuilt FitNet refuses, as it always did
        return super().extra_parameters

    def build(self, teacher_shape, student_shape):
        """Creates the regressor for `[B, H, W, C]` maps of these shapes."""
        teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
        self._check_shapes(teacher_shape, student_shape)
        if self._regressor is not None:
            if (
                self._regressor.teacher_shape[1:],
                self._regressor.student_shape[1:],
            ) != (
                teacher_shape[1:],
                student_shape[1:],
            ):
                raise ValueError(
                    f"FitNet's regressor was built for other shapes than "
                    f"{teacher_shape}, {student_shape}: use a new loss."
                )
            return
        regressor = ConvRegressor(
            student_shape, teacher_shape, use_relu=self.use_relu, name=_REGRESSOR
        )
        regressor.build((None, *student_shape[1:]))
        self._regressor = regressor

    def validate_model_compatibility(self, teacher, student):
        """Checks that named layers exist in functional or Sequential models."""
        check_named_layers(self, teacher, student)

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Checks that the hints are single `[B, H, W, C]` maps."""
        # A list's shapes as a tuple too, which _check_shapes refuses.
        self._check_shapes(
            *(tuple(shapes_of(x)) for x in (teacher_outputs, student_outputs))
        )

    def compute_loss(self, teacher_outputs, student_outputs, training=None, **kwargs):
        """The scalar hint loss (the regressor run with `training`)."""
        self.validate_outputs(teacher_outputs, student_outputs)
        projected = self.project_student(student_outputs, training=training)
        return self.compare(teacher_outputs, projected)

    def project_student(self, student_outputs, training=False):
        """The student's hint through the regressor, in float32."""
        return self._built()(ops.cast(student_outputs, "float32"), training=training)

    def compare(self, teacher_outputs, projected_student_outputs, **kwargs):
        """`mean (r(f_s) - f_t)^2`, the teacher's map frozen."""
        teacher = ops.stop_gradient(ops.cast(teacher_outputs, "float32"))
        return ops.mean(ops.square(projected_student_outputs - teacher))

    def _built(self):
        if self._regressor is None:
            raise ValueError(
                "FitNet is not built: call build(teacher_shape, student_shape) "
                "first (the Distiller does)."
            )
        return self._regressor

    def _check_shapes(self, teacher_shape, student_shape):
        shapes = f"teacher {teacher_shape} and student {student_shape}"
        if any(isinstance(dim, (list, tuple)) for dim in teacher_shape + student_shape):
            raise ValueError(
                f"FitNet compares one hint layer; got {shapes}: name one layer or "
                "tap (mdistiller's feats[2]) on each side."
            )
        if len(teacher_shape) != 4 or len(student_shape) != 4:
            raise ValueError(
                f"FitNet's regressor takes [B, H, W, C] maps, got {shapes}: "
                "name convolutional layers."
            )
        if None in teacher_shape[1:] + student_shape[1:]:
            raise ValueError(f"FitNet's regressor needs known map sizes, got {shapes}.")
        regressor_convolution(student_shape, teacher_shape)

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "use_relu": self.use_relu,
            "probe_batch_norm": self.probe_batch_norm,
        }
