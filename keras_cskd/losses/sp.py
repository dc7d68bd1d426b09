"""SP: similarity-preserving distillation, as in mdistiller's SP."""

import keras
from keras import ops

from keras_cskd.losses.feature_loss import FeatureLoss, flatten_rows, l2_normalize
from keras_cskd.losses.registry import register


def batch_similarity(features):
    """The batch's Gram matrix `F F^T` with each row L2-normalised: `[B, B]`."""
    rows = flatten_rows(features)
    return l2_normalize(ops.matmul(rows, ops.transpose(rows)), axis=1)


@register("sp")
@keras.saving.register_keras_serializable(package="keras_cskd")
class SP(FeatureLoss):
    """Similarity-preserving distillation (Tung & Mori, 2019), as mdistiller.

    With `G = normalize_rows(F F^T)` for features flattened to `[B, D]`,
    `L = sum_{i,j} (G_t - G_s)_ij^2 / B^2`, summed over stages when given
    lists. mdistiller compares the last stage (`feats[-1]`, the default
    taps) and weighs the
    loss by 3000 (`REFERENCE_WEIGHT`, cfg.py's `SP.LOSS.FEAT_WEIGHT`). Its
    value has shape `(1,)`; mdistiller's trainer takes `.mean()` of it, so the
    scalar returned here is the same number (docs/reproducing.md).

    Args:
        teacher_layer_name: the teacher's features: a tap (default
            `"feats[-1]"`, mdistiller's last stage), a layer name or a list.
        student_layer_name: the student's, alike.

    Example:

    >>> loss = SP()
    >>> teacher = keras.random.normal((4, 2, 2, 8), seed=0)
    >>> student = keras.random.normal((4, 2, 2, 3), seed=1)
    >>> keras.ops.shape(loss.compute_loss(teacher, student))
    ()
    """

    REFERENCE_WEIGHT = 3000.0

    def __init__(self, teacher_layer_name="feats[-1]", student_layer_name="feats[-1]"):
        super().__init__(teacher_layer_name, student_layer_name)

    def stage_losses(self, teacher_stages, student_stages):
        total = 0.0
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            difference = batch_similarity(teacher) - batch_similarity(student)
            batch_size = ops.cast(ops.shape(student)[0], "float32")
            total += ops.sum(ops.square(difference)) / (batch_size * batch_size)
        return total
