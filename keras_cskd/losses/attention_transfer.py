"""AttentionTransfer: match the spatial attention maps of two feature layers."""

import keras
from keras import ops

from keras_cskd.checks import positive_number
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_distillation import check_named_layers
from keras_cskd.losses.feature_loss import (
    as_list,
    average_pool_to,
    shape_list,
    stored_layer_name,
)
from keras_cskd.losses.registry import register

# F.normalize's eps: `x / max(|x|, 1e-12)`, computed as `x / sqrt(max(|x|^2, 1e-24))`
# so that an all-zero map has a zero, not a NaN, gradient.
NORM_EPSILON = 1e-12


def attention_map(features, p=2.0):
    """`l2_normalize(mean_c(f ** p))` flattened over H*W: `[B, H, W, C] -> [B, H*W]`."""
    powered = ops.square(features) if p == 2 else ops.power(features, p)
    attention = ops.reshape(ops.mean(powered, axis=-1), (ops.shape(features)[0], -1))
    squared_norm = ops.sum(ops.square(attention), axis=-1, keepdims=True)
    return attention / ops.sqrt(ops.maximum(squared_norm, NORM_EPSILON**2))


@register("attention_transfer")
@keras.saving.register_keras_serializable(package="keras_cskd")
class AttentionTransfer(DistillationLoss):
    """Attention transfer (Zagoruyko & Komodakis, 2017), as in mdistiller's AT.

    For features `f` of shape `[B, H, W, C]`, the attention map is
    `at(f) = l2_normalize(mean_c(f ** p))` over the `H*W` positions (the
    normalisation is PyTorch's `F.normalize`, eps 1e-12, so an all-zero map
    stays zero), and `L = mean_{b, hw} (at(f_s) - at(f_t))^2`. Channel counts
    may differ. Where the spatial sizes differ, the larger map is average-pooled
    to the smaller first (mdistiller's adaptive pooling), which needs an integer
    ratio on each axis. The paper writes `|f|^p`; mdistiller's `f ** p` is the
    same for even `p` or non-negative (post-ReLU) features.

    Given lists of maps (taps such as `"feats[1:]"`, or lists of layer
    names), the loss is the sum over the pairs, as mdistiller's `at_loss`
    over `feats[1:]` of both networks, weighed by 1000 with CE 1
    (`REFERENCE_WEIGHT`, cfg.py's `AT.LOSS.FEAT_WEIGHT`; `AT.P` 2).

    Args:
        teacher_layer_name: the teacher layer or tap whose `[B, H, W, C]`
            output(s) are compared, or a list of layer names (required).
        student_layer_name: the student's, as many maps (required).
        p: the power of the features (default 2).

    Raises:
        ValueError: for missing layer names, `p <= 0`, features that are not
            `[B, H, W, C]`, unequal numbers of maps, or spatial sizes not
            integer multiples.

    Example:

    >>> loss = AttentionTransfer("teacher_block3", "student_block2", p=2)
    >>> teacher_features = keras.random.uniform((4, 8, 8, 64))
    >>> student_features = keras.random.uniform((4, 16, 16, 16))   # pooled to 8x8
    >>> keras.ops.shape(loss.compute_loss(teacher_features, student_features))
    ()
    >>> mdistiller = AttentionTransfer("feats[1:]", "feats[1:]")   # summed pairs
    >>> keras.ops.shape(mdistiller.compute_loss(
    ...     [teacher_features, teacher_features], [student_features] * 2))
    ()
    """

    REFERENCE_WEIGHT = 1000.0

    def __init__(self, teacher_layer_name, student_layer_name, p=2.0):
        for what, name in (
            ("teacher", teacher_layer_name),
            ("student", student_layer_name),
        ):
            names = list(name) if isinstance(name, (list, tuple)) else [name]
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(
                    f"AttentionTransfer needs `{what}_layer_name`, the name of a "
                    f"layer or tap with [B, H, W, C] outputs (or a list of them); "
                    f"got {name!r}."
                )
        self.teacher_layer_name = stored_layer_name(teacher_layer_name)
        self.student_layer_name = stored_layer_name(student_layer_name)
        self.p = positive_number("p", p)

    def build(self, teacher_shape, student_shape):
        """Checks the feature shapes, a shape or a list of shapes each (the
        loss has no layers)."""
        for pair in _pairs(shape_list(teacher_shape), shape_list(student_shape)):
            self._pooled_size(*pair)

    def validate_model_compatibility(self, teacher, student):
        """Checks that the named layers exist in functional or Sequential models."""
        check_named_layers(self, teacher, student)

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Checks that the features are `[B, H, W, C]` maps it can compare."""
        self._shape_pairs(teacher_outputs, student_outputs)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The scalar loss: over one pair of maps, or summed over lists."""
        sizes = self._shape_pairs(teacher_outputs, student_outputs)
        total = 0.0
        for teacher, student, (height, width) in zip(
            as_list(teacher_outputs), as_list(student_outputs), sizes, strict=True
        ):
            teacher = ops.stop_gradient(ops.cast(teacher, "float32"))
            student = ops.cast(student, "float32")
            if height is not None:
                teacher = average_pool_to(teacher, height, width)
                student = average_pool_to(student, height, width)
            difference = attention_map(student, self.p) - attention_map(teacher, self.p)
            total += ops.mean(ops.square(difference))
        return total

    def _shape_pairs(self, teacher_outputs, student_outputs):
        """The pooled size of each pair of maps."""
        teacher_shapes, student_shapes = (
            [tuple(x.shape) for x in as_list(outputs)]
            for outputs in (teacher_outputs, student_outputs)
        )
        return [
            self._pooled_size(*pair) for pair in _pairs(teacher_shapes, student_shapes)
        ]

    def _pooled_size(self, teacher_shape, student_shape):
        """The `(H, W)` both maps are pooled to, or `(None, None)` if unknown."""
        shapes = f"teacher {teacher_shape} and student {student_shape}"
        if len(teacher_shape) != 4 or len(student_shape) != 4:
            raise ValueError(
                f"AttentionTransfer compares [B, H, W, C] feature maps; got {shapes}: "
                "name convolutional layers."
            )
        if None not in (teacher_shape[0], student_shape[0]) and (
            teacher_shape[0] != student_shape[0]
        ):
            raise ValueError(f"AttentionTransfer got different batch sizes, {shapes}.")
        spatial = teacher_shape[1:3] + student_shape[1:3]
        if None in spatial:
            return None, None
        size = (
            min(teacher_shape[1], student_shape[1]),
            min(teacher_shape[2], student_shape[2]),
        )
        if any(dim % target for dim, target in zip(spatial, size * 2, strict=True)):
            raise ValueError(
                f"AttentionTransfer pools the larger map to the smaller by an integer "
                f"factor; got {shapes}: choose layers whose H and W divide."
            )
        return size

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "p": self.p,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _pairs(teacher_shapes, student_shapes):
    if len(teacher_shapes) != len(student_shapes):
        raise ValueError(
            f"AttentionTransfer compares maps pairwise; got {len(teacher_shapes)} "
            f"teacher and {len(student_shapes)} student maps: name as many of each."
        )
    return list(zip(teacher_shapes, student_shapes, strict=True))
