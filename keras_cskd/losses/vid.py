"""VID: variational information distillation, as in mdistiller's VID."""

import math

import keras
from keras import ops

from keras_cskd.initializers import torch_default_kernel
from keras_cskd.losses.feature_loss import (
    FeatureLoss,
    as_list,
    average_pool_to,
    shape_list,
    shapes_of,
)
from keras_cskd.losses.registry import register


class VIDRegressor(keras.layers.Layer):
    """One stage's VID modules: the mean's regressor and the variance.

    The regressor is mdistiller's `conv1x1(s, t) - ReLU - conv1x1(t, t) - ReLU
    - conv1x1(t, t)` (1x1 convolutions without bias, PyTorch's default
    initialisation); `log_scale` holds one value per teacher channel, the
    variance being `softplus(log_scale) + eps`, initially `init_pred_var`.

    Args:
        channels: the teacher stage's channel count `t`.
        init_pred_var: the variance every channel starts at.
        eps: the variance's floor.
        train_variance: whether `log_scale` is trainable (mdistiller: no).

    Example:

    >>> layer = VIDRegressor(8)
    >>> layer.build((None, 4, 4, 3))
    >>> round(float(layer.variance()[0]), 5)
    5.0
    """

    def __init__(
        self, channels, init_pred_var=5.0, eps=1e-5, train_variance=False, **kwargs
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.train_variance = bool(train_variance)
        self.convs = [
            keras.layers.Conv2D(
                self.channels,
                1,
                use_bias=False,
                kernel_initializer=torch_default_kernel(),
                dtype=self.dtype_policy,
                name=f"conv{i}",
            )
            for i in range(3)
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = (*shape[:-1], self.channels)
        # The inverse of softplus(x) + eps at init_pred_var, as mdistiller's.
        initial = math.log(math.exp(self.init_pred_var - self.eps) - 1.0)
        self.log_scale = self.add_weight(
            shape=(self.channels,),
            initializer=keras.initializers.Constant(initial),
            trainable=self.train_variance,
            name="log_scale",
        )

    def call(self, student_features):
        """The predicted mean of the teacher features, `[B, H, W, t]`."""
        x = self.convs[0](student_features)
        for conv in self.convs[1:]:
            x = conv(ops.relu(x))
        return x

    def variance(self, log_scale=None):
        """`softplus(log_scale) + eps`, per channel (the layer's by default)."""
        log_scale = self.log_scale if log_scale is None else log_scale
        return ops.log(1.0 + ops.exp(log_scale)) + self.eps

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "init_pred_var": self.init_pred_var,
            "eps": self.eps,
            "train_variance": self.train_variance,
        }


@register("vid")
@keras.saving.register_keras_serializable(package="keras_cskd")
class VID(FeatureLoss):
    """Variational information distillation (Ahn et al., 2019), as mdistiller.

    For each stage pair (mdistiller: `feats[1:]` of both networks), the map
    with the larger height is average-pooled to the smaller height (squared,
    as mdistiller's `adaptive_avg_pool2d(f, (h, h))`; here by an integer
    factor), the student's before its regressor. With `mu = r(f_s)` (a
    `VIDRegressor` per stage) and `v = softplus(log_scale) + eps` per channel:
    `L = sum_stages mean_{b,h,w,c} 0.5 * ((mu - f_t)^2 / v + log v)`.
    mdistiller weighs it by 1 (`REFERENCE_WEIGHT`, cfg.py's
    `VID.LOSS.FEAT_WEIGHT`) and CE by 1.

    mdistiller keeps the `log_scales` in a plain Python list, so its optimizer
    never sees them: the variances stay at `init_pred_var`. So do ours by
    default; `train_variances=True` trains them with the student, as the
    paper does (docs/reproducing.md, "vid").

    Args:
        teacher_layer_name: the teacher's stages (mdistiller: `"feats[1:]"`).
        student_layer_name: the student's stages, as many.
        init_pred_var: the initial variance (cfg.py's `VID.INIT_PRED_VAR`).
        eps: the variance's floor (cfg.py's `VID.EPS`).
        train_variances: train `log_scale` too (mdistiller: no).
        probe_batch_norm: the recipe builder runs teacher and student once in
            training mode on one standard-normal image before training, as
            mdistiller's `get_feat_shapes` does when VID is constructed, which
            moves both networks' BatchNorm statistics (docs/reproducing.md);
            `False` is the clean variant.

    Raises:
        ValueError: for unequal stage counts, features not `[B, H, W, C]`, or
            heights whose ratio is not an integer.

    Example:

    >>> loss = VID()
    >>> teacher = [keras.random.normal((2, 4, 4, 8), seed=0)]
    >>> student = [keras.random.normal((2, 8, 8, 3), seed=1)]
    >>> loss.build([(None, 4, 4, 8)], [(None, 8, 8, 3)])   # the Distiller does it
    >>> keras.ops.shape(loss.compute_loss(teacher, student))
    ()
    >>> loss.extra_parameters   # 3*8 + 8*8 + 8*8, as get_extra_parameters
    152
    """

    min_rank = 4
    REFERENCE_WEIGHT = 1.0

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        init_pred_var=5.0,
        eps=1e-5,
        train_variances=False,
        probe_batch_norm=False,
    ):
        super().__init__(teacher_layer_name, student_layer_name)
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        if self.init_pred_var <= self.eps:
            raise ValueError(
                f"VID's init_pred_var must exceed eps ({self.eps}), got "
                f"{init_pred_var}: pass a larger variance."
            )
        self.train_variances = bool(train_variances)
        self.probe_batch_norm = bool(probe_batch_norm)
        self._regressors = []
        self._teacher_heights = []

    @property
    def layers(self):
        """One `VIDRegressor` per stage, once built."""
        return list(self._regressors)

    def build(self, teacher_shape, student_shape):
        """Creates a regressor per stage from the compared outputs' shapes."""
        teacher_shapes, student_shapes = _shape_lists(teacher_shape, student_shape)
        for teacher, student in zip(teacher_shapes, student_shapes, strict=True):
            _check_stage_shapes(teacher, student)
        if self._regressors:
            built = [layer.channels for layer in self._regressors]
            if built != [shape[-1] for shape in teacher_shapes]:
                raise ValueError(
                    f"VID was built for teacher channels {built}, not "
                    f"{[shape[-1] for shape in teacher_shapes]}: use a new loss."
                )
            return
        for index, (teacher, student) in enumerate(
            zip(teacher_shapes, student_shapes, strict=True)
        ):
            layer = VIDRegressor(
                teacher[-1],
                self.init_pred_var,
                self.eps,
                self.train_variances,
                name=f"vid_regressor_{index}",
            )
            height = min(teacher[1], student[1])
            layer.build((student[0], height, height, student[-1]))
            self._regressors.append(layer)
        self._teacher_heights = [shape[1] for shape in teacher_shapes]

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss (built for these features' shapes on first use)."""
        if not self._regressors:
            self.build(*(shapes_of(x) for x in (teacher_outputs, student_outputs)))
        return self.compare(teacher_outputs, self.project_student(student_outputs))

    def project_student(self, student_outputs, training=False):
        """Each stage's predicted mean, `[B, h, h, t]` (with
        `train_variances`, its `log_scale` broadcast after it, `[B, h, h,
        2t]`, so that each replica's rows carry their share of its gradient)."""
        stages = as_list(student_outputs)
        if len(stages) != len(self._regressors):
            raise ValueError(
                f"VID was built for {len(self._regressors)} stages, got "
                f"{len(stages)} student features: call build() first or pass as many."
            )
        projected = []
        for layer, height, student in zip(
            self._regressors, self._teacher_heights, stages, strict=True
        ):
            student = ops.cast(student, "float32")
            if student.shape[1] > height:
                student = average_pool_to(student, height, height)
            mean = layer(student)
            if self.train_variances:
                log_scale = ops.broadcast_to(layer.log_scale, ops.shape(mean))
                mean = ops.concatenate([mean, log_scale], axis=-1)
            projected.append(mean)
        return projected

    def compare(self, teacher_outputs, projected_student_outputs, **kwargs):
        """The negative log-likelihood from `project_student`'s output."""
        teacher_stages, projected = self.stages(
            teacher_outputs, projected_student_outputs
        )
        total = 0.0
        for layer, teacher, mean in zip(
            self._regressors, teacher_stages, projected, strict=True
        ):
            height = mean.shape[1]
            if teacher.shape[1] > height:
                teacher = average_pool_to(teacher, height, height)
            if self.train_variances:
                mean, log_scale = ops.split(mean, 2, axis=-1)
                variance = layer.variance(log_scale)
            else:
                variance = layer.variance()
            negative_log_likelihood = 0.5 * (
                ops.square(mean - teacher) / variance + ops.log(variance)
            )
            total += ops.mean(negative_log_likelihood)
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "init_pred_var": self.init_pred_var,
            "eps": self.eps,
            "train_variances": self.train_variances,
            "probe_batch_norm": self.probe_batch_norm,
        }


def _shape_lists(teacher_shape, student_shape):
    """Both shapes as equally long lists of shape tuples."""
    teacher_shapes, student_shapes = (
        shape_list(teacher_shape),
        shape_list(student_shape),
    )
    if len(teacher_shapes) != len(student_shapes):
        raise ValueError(
            f"VID pairs stages; got {len(teacher_shapes)} teacher and "
            f"{len(student_shapes)} student features: name as many of each "
            "(mdistiller: feats[1:] of both)."
        )
    return teacher_shapes, student_shapes


def _check_stage_shapes(teacher, student):
    shapes = f"teacher {teacher} and student {student}"
    if len(teacher) != 4 or len(student) != 4:
        raise ValueError(f"VID needs [B, H, W, C] features, got {shapes}.")
    if None in (teacher[1], student[1], teacher[-1], student[-1]):
        raise ValueError(f"VID needs known heights and channels, got {shapes}.")
    larger, smaller = max(teacher[1], student[1]), min(teacher[1], student[1])
    larger_width = teacher[2] if teacher[1] == larger else student[2]
    if larger % smaller or larger_width % smaller:
        raise ValueError(
            f"VID pools the larger map to {smaller}x{smaller} by an integer "
            f"factor; got {shapes}: choose stages whose sizes divide."
        )
