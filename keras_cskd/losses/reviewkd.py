"""ReviewKD: review the teacher's stages with fused student features."""

import keras
import numpy as np
from keras import ops

from keras_cskd.batch_norm import TorchBatchNormalization
from keras_cskd.initializers import torch_default_bias, torch_default_kernel
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_loss import (
    average_pool_to,
    shape_list,
    shapes_of,
    stored_layer_name,
)
from keras_cskd.losses.registry import register

# mdistiller's ABF convs: `kaiming_uniform_(a=1)`, i.e. U(+-sqrt(3 / fan_in)).
_ABF_KERNEL = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0, "mode": "fan_in", "distribution": "uniform"},
}
HCL_LEVELS = (4, 2, 1)


def nearest_resize(x, height, width):
    """`F.interpolate(x, (height, width), mode="nearest")` on NHWC `x`.

    PyTorch's nearest takes source pixel `floor(i * in / out)`.

    Example:

    >>> x = np.arange(4.0, dtype="float32").reshape(1, 2, 2, 1)
    >>> np.ravel(nearest_resize(x, 4, 4))[:4].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    for axis, size in ((1, height), (2, width)):
        source = x.shape[axis]
        if source != size:
            index = np.floor(np.arange(size) * (source / size)).astype("int32")
            x = ops.take(x, np.minimum(index, source - 1), axis=axis)
    return x


def adaptive_average_pool(x, size):
    """`F.adaptive_avg_pool2d(x, (size, size))` on NHWC `x`.

    Output cell `i` averages input rows `floor(i * h / size)` to
    `ceil((i + 1) * h / size)` (overlapping where `size` does not divide `h`).

    Example:

    >>> x = np.arange(16.0, dtype="float32").reshape(1, 4, 4, 1)
    >>> np.ravel(adaptive_average_pool(x, 2)).tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    height, width = x.shape[1], x.shape[2]
    if height % size == 0 and width % size == 0:
        return average_pool_to(x, size, size)
    rows, columns = _pooling_matrix(height, size), _pooling_matrix(width, size)
    return ops.einsum("ih,bhwc,jw->bijc", rows, x, columns)


def _pooling_matrix(source, size):
    matrix = np.zeros((size, source), "float32")
    for i in range(size):
        start, stop = (i * source) // size, -((-(i + 1) * source) // size)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def hierarchical_context_loss(student_maps, teacher_maps):
    """ReviewKD's HCL: per stage, MSE at full size and at 4x4, 2x2 and 1x1
    average-pooled sizes smaller than the map, weighted 1, 1/2, 1/4, ... in
    that order and divided by the sum of the weights; summed over stages.

    Example:

    >>> teacher = np.ones((2, 4, 4, 3), "float32")
    >>> float(hierarchical_context_loss([teacher * 0], [teacher]))
    1.0
    """
    total = 0.0
    for student, teacher in zip(student_maps, teacher_maps, strict=True):
        loss = ops.mean(ops.square(student - teacher))
        weight, weights = 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= student.shape[1]:  # mdistiller reads the height only
                continue
            weight /= 2.0
            pooled = adaptive_average_pool(student, size)
            target = adaptive_average_pool(teacher, size)
            loss = loss + weight * ops.mean(ops.square(pooled - target))
            weights += weight
        total = total + loss / weights
    return total


@keras.saving.register_keras_serializable(package="keras_cskd")
class AttentionBasedFusion(keras.layers.Layer):
    """ReviewKD's ABF: a student stage fused with the deeper stages' residual.

    `x = BN(conv1x1(stage))`; with `fuse`, the residual is resized (nearest)
    to the stage's size and mixed in by two sigmoid attention maps,
    `x = x * a0 + residual * a1`, `[a0, a1] = sigmoid(conv1x1([x, residual]))`;
    `x` is resized (nearest) to `out_size`; the output is `BN(conv3x3(x))`
    and `x` the next residual.

    Args:
        mid_channels: channels of `x` and of the residual.
        out_channels: channels of the output (the teacher stage's).
        fuse: whether there is a residual to fuse (all but the deepest).
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> abf = AttentionBasedFusion(8, 4, fuse=False)
    >>> output, residual = abf(np.ones((2, 1, 1, 6), "float32"), out_size=1)
    >>> tuple(output.shape), tuple(residual.shape)
    ((2, 1, 1, 4), (2, 1, 1, 8))
    """

    def __init__(self, mid_channels, out_channels, fuse, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.mid_channels, self.out_channels = int(mid_channels), int(out_channels)
        self.fuse = bool(fuse)
        conv = dict(use_bias=False, kernel_initializer=_ABF_KERNEL, dtype="float32")
        self.conv1 = keras.layers.Conv2D(mid_channels, 1, name="conv1", **conv)
        # PyTorch's BatchNorm2d, statistics over the global batch.
        self.bn1 = TorchBatchNormalization(name="bn1", dtype="float32")
        self.conv2 = keras.layers.Conv2D(
            out_channels, 3, padding="same", name="conv2", **conv
        )
        self.bn2 = TorchBatchNormalization(name="bn2", dtype="float32")
        self.attention = None
        if self.fuse:
            fan_in = 2 * self.mid_channels
            # PyTorch's default Conv2d init. The bias is created first, as it
            # always was: unseeded initializers draw their seeds in that order.
            self.attention = keras.layers.Conv2D(
                2,
                1,
                activation="sigmoid",
                bias_initializer=torch_default_bias(fan_in),
                kernel_initializer=torch_default_kernel(),
                name="attention",
                dtype="float32",
            )

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        mid = (None, height, width, self.mid_channels)
        self.conv1.build(input_shape)
        self.bn1.build(mid)
        if self.attention is not None:
            self.attention.build(mid[:3] + (2 * self.mid_channels,))
        self.conv2.build((None, None, None, self.mid_channels))
        self.bn2.build((None, None, None, self.out_channels))

    def call(self, inputs, residual=None, out_size=None, training=True):
        x = self.bn1(self.conv1(inputs), training=training)
        if self.attention is not None:
            residual = nearest_resize(residual, x.shape[1], x.shape[2])
            mix = self.attention(ops.concatenate([x, residual], axis=-1))
            x = x * mix[..., :1] + residual * mix[..., 1:]
        if out_size is not None and x.shape[2] != out_size:
            x = nearest_resize(x, out_size, out_size)  # mdistiller checks the width
        return self.bn2(self.conv2(x), training=training), x

    def get_config(self):
        return {
            **super().get_config(),
            "mid_channels": self.mid_channels,
            "out_channels": self.out_channels,
            "fuse": self.fuse,
        }


@register("reviewkd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class ReviewKD(DistillationLoss):
    """Knowledge review (Chen et al., CVPR 2021), as mdistiller trains it.

    The student's stages `feats[1:]` and its pooled feature (a 1x1 map) are
    fused from the deepest up: each `AttentionBasedFusion` (ABF) maps its
    stage to the teacher stage's channels and size, mixing in the deeper
    stages' residual. The loss is the hierarchical context loss
    (`hierarchical_context_loss`) between the fused maps and the teacher's
    `preact_feats[1:]` and pooled feature, warmed up by
    `min(epoch / warmup_epochs, 1)`.

    The ABFs' channels and sizes are mdistiller's `REVIEWKD.*` settings,
    derived in `build` from the compared outputs' shapes unless given:
    `in_channels` (student stages', then pooled, channels), `out_channels`
    (the teacher's), `shapes` (student sizes, pooled first: `[1, 8, 16, 32]`
    for resnet8x4) and `out_shapes` (the teacher's). For resnet32x4 ->
    resnet8x4 they are cfg.py's defaults. The ABFs' middle width is
    `min(max_mid_channels, in_channels[-1])` (mdistiller hard-codes 512 and
    ignores `MAX_MID_CHANNEL`, also 512). mdistiller's `STU_PREACT: True` is
    `student_layer_name=("preact_feats[1:]", "pooled_feat")`.

    Args:
        teacher_layer_name: the teacher's stages and pooled feature (tap specs
            or layer names, flattened in order; the pooled feature last).
        student_layer_name: the student's, likewise.
        warmup_epochs: the loss ramps up linearly over this many epochs.
        in_channels, out_channels, shapes, out_shapes: `REVIEWKD.*`, or `None`
            to derive them from the shapes.
        max_mid_channels: the cap of the ABFs' middle width.

    Example:

    >>> loss = ReviewKD()
    >>> stages = [(None, 8, 8, 4), (None, 4, 4, 8), (None, 8)]
    >>> loss.build(stages, stages)   # the Distiller does it
    >>> loss.shapes, loss.extra_parameters
    ([1, 4, 8], 1756)
    """

    uses_epoch = True

    def __init__(
        self,
        teacher_layer_name=("preact_feats[1:]", "pooled_feat"),
        student_layer_name=("feats[1:]", "pooled_feat"),
        warmup_epochs=20,
        in_channels=None,
        out_channels=None,
        shapes=None,
        out_shapes=None,
        max_mid_channels=512,
    ):
        self.teacher_layer_name = stored_layer_name(teacher_layer_name)
        self.student_layer_name = stored_layer_name(student_layer_name)
        self.warmup_epochs = float(warmup_epochs)
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.in_channels, self.out_channels = _ints(in_channels), _ints(out_channels)
        self.shapes, self.out_shapes = _ints(shapes), _ints(out_shapes)
        self.max_mid_channels = int(max_mid_channels)
        self._abfs = []  # deepest first, as mdistiller's `self.abfs`

    @property
    def layers(self):
        """The ABFs, deepest (the pooled feature's) first."""
        return list(self._abfs)

    def build(self, teacher_shape, student_shape):
        """Derives the settings left `None` and creates the ABFs."""
        teacher, student = _map_shapes(teacher_shape), _map_shapes(student_shape)
        if len(teacher) != len(student) or len(student) < 2:
            raise ValueError(
                f"ReviewKD pairs teacher and student stages plus pooled features; "
                f"got {len(teacher)} teacher and {len(student)} student outputs."
            )
        derived = {
            "in_channels": [s[-1] for s in student],
            "out_channels": [t[-1] for t in teacher],
            "shapes": [s[1] for s in reversed(student)],
            "out_shapes": [t[1] for t in reversed(teacher)],
        }
        for key, value in derived.items():
            given = getattr(self, key)
            if given is not None and given != value:
                raise ValueError(
                    f"ReviewKD's {key}={given} does not fit the compared outputs, "
                    f"which give {value}: leave it None."
                )
            setattr(self, key, value)
        if self._abfs:
            return
        mid = min(self.max_mid_channels, self.in_channels[-1])
        last = len(student) - 1
        for index in range(last, -1, -1):  # mdistiller's abfs[::-1]
            abf = AttentionBasedFusion(
                mid,
                self.out_channels[index],
                fuse=index < last,
                name=f"reviewkd_abf_{last - index}",
            )
            abf.build(student[index])
            self._abfs.append(abf)

    def project_student(self, student_outputs, training=False):
        """The fused student maps, shallowest first (the teacher's order).

        `training` is the ABFs' BatchNorm mode, the step's (the Distiller's
        `fit` true, `evaluate` false)."""
        if not self._abfs:
            raise ValueError(
                "ReviewKD is not built: call build(teacher_shape, student_shape)."
            )
        stages = [
            _as_map(ops.cast(x, "float32")) for x in keras.tree.flatten(student_outputs)
        ]
        fused, residual = [], None
        for abf, stage, out_size in zip(
            self._abfs, reversed(stages), self.out_shapes, strict=True
        ):
            output, residual = abf(
                stage, residual=residual, out_size=out_size, training=training
            )
            fused.insert(0, output)
        return fused

    def compare(self, teacher_outputs, projected_student_outputs, epoch=None, **kwargs):
        """The warmed-up HCL between teacher maps and fused student maps."""
        teacher = [
            ops.stop_gradient(_as_map(ops.cast(t, "float32")))
            for t in keras.tree.flatten(teacher_outputs)
        ]
        loss = hierarchical_context_loss(projected_student_outputs, teacher)
        return self.warmup_factor(epoch) * loss

    def compute_loss(self, teacher_outputs, student_outputs, training=None, **kwargs):
        """`compare(teacher_outputs, project_student(student_outputs))`."""
        if not self._abfs:
            self.build(shapes_of(teacher_outputs), shapes_of(student_outputs))
        return self.compare(
            teacher_outputs,
            self.project_student(student_outputs, training=training),
            **kwargs,
        )

    def warmup_factor(self, epoch):
        """`min(epoch / warmup_epochs, 1)`; 1 when `epoch` is None or no warm-up."""
        if epoch is None or self.warmup_epochs == 0:
            return 1.0
        return ops.minimum(ops.cast(epoch, "float32") / self.warmup_epochs, 1.0)

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "warmup_epochs": self.warmup_epochs,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "shapes": self.shapes,
            "out_shapes": self.out_shapes,
            "max_mid_channels": self.max_mid_channels,
        }


def _ints(values):
    return None if values is None else [int(v) for v in values]


def _as_map(x):
    """A pooled `[B, C]` vector as mdistiller's `[B, C, 1, 1]` map (NHWC)."""
    return ops.reshape(x, (-1, 1, 1, x.shape[-1])) if len(x.shape) == 2 else x


def _map_shapes(shapes):
    """Nested shapes as a flat list of NHWC shapes (pooled ones 1x1), square."""
    maps = [(s[0], 1, 1, s[1]) if len(s) == 2 else s for s in shape_list(shapes)]
    for shape in maps:
        if len(shape) != 4 or shape[1] != shape[2] or None in shape[1:]:
            raise ValueError(
                f"ReviewKD needs square [B, H, W, C] maps or [B, C] pooled "
                f"features of known sizes, got {shape}: name other outputs."
            )
    return maps
