"""RKD: relational knowledge distillation (distance and angle), as mdistiller."""

import keras
from keras import ops

from keras_cskd.losses.feature_loss import FeatureLoss, flatten_rows, l2_normalize
from keras_cskd.losses.registry import register


def pairwise_distances(rows, squared, epsilon):
    """`[B, D] -> [B, B]` Euclidean distances, clamped below at `epsilon`
    (before the square root) and zero on the diagonal."""
    squared_norms = ops.sum(ops.square(rows), axis=1)
    distances = (
        squared_norms[:, None]
        + squared_norms[None, :]
        - 2.0 * ops.matmul(rows, ops.transpose(rows))
    )
    distances = ops.maximum(distances, epsilon)
    if not squared:
        distances = ops.sqrt(distances)
    diagonal = ops.eye(ops.shape(rows)[0], dtype="bool")
    return ops.where(diagonal, ops.zeros_like(distances), distances)


def mean_normalized(distances):
    """The distances over the mean of the positive ones (NaN if none is)."""
    positive = ops.cast(distances > 0, distances.dtype)
    mean = ops.sum(distances * positive) / ops.sum(ops.stop_gradient(positive))
    return distances / mean


def triplet_angles(rows):
    """`cos` of the angle at `i` between `j` and `k`, flattened: `[B^3]`."""
    differences = l2_normalize(rows[None, :, :] - rows[:, None, :], axis=2)
    return ops.reshape(ops.einsum("ijd,ikd->ijk", differences, differences), (-1,))


def smooth_l1(x, y):
    """PyTorch's `F.smooth_l1_loss` (beta 1), averaged."""
    error = ops.abs(x - y)
    return ops.mean(ops.where(error < 1.0, 0.5 * ops.square(error), error - 0.5))


@register("rkd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class RKD(FeatureLoss):
    """Relational knowledge distillation (Park et al., 2019), as in mdistiller.

    Features flattened to `[B, D]`. The distance term compares the batch's
    pairwise distances, each divided by the mean of the positive ones; the
    angle term the cosines of every triplet's angle; both with PyTorch's
    smooth L1 (averaged): `L = distance_weight * L_d + angle_weight * L_a`.
    mdistiller uses the pooled features (`pooled_feat`) and cfg.py's weights
    (distance 25, angle 50, `PDIST.EPSILON` 1e-12, `SQUARED` false), with a
    feature weight of 1 (`REFERENCE_WEIGHT`). A batch of one has no positive
    distance: the loss is then NaN, as in the reference; equal rows are
    `sqrt(epsilon)` apart (the clamp), so they give finite values.

    Args:
        teacher_layer_name: the teacher's features: a tap (default
            `"pooled_feat"`, mdistiller's), a layer name, or `None` (logits).
        student_layer_name: the student's, alike.
        distance_weight: the weight of the distance term.
        angle_weight: the weight of the angle term.
        epsilon: the clamp of the squared distances.
        squared: compare squared distances.

    Example:

    >>> loss = RKD(distance_weight=25.0, angle_weight=50.0)
    >>> teacher = keras.random.normal((4, 16), seed=0)
    >>> student = keras.random.normal((4, 8), seed=1)
    >>> float(loss.compute_loss(teacher, student)) > 0
    True
    """

    REFERENCE_WEIGHT = 1.0

    def __init__(
        self,
        teacher_layer_name="pooled_feat",
        student_layer_name="pooled_feat",
        distance_weight=25.0,
        angle_weight=50.0,
        epsilon=1e-12,
        squared=False,
    ):
        super().__init__(teacher_layer_name, student_layer_name)
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.epsilon = float(epsilon)
        self.squared = bool(squared)

    def stage_losses(self, teacher_stages, student_stages):
        total = 0.0
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            teacher, student = flatten_rows(teacher), flatten_rows(student)
            distance_loss = smooth_l1(
                mean_normalized(
                    pairwise_distances(student, self.squared, self.epsilon)
                ),
                mean_normalized(
                    pairwise_distances(teacher, self.squared, self.epsilon)
                ),
            )
            angle_loss = smooth_l1(triplet_angles(student), triplet_angles(teacher))
            total += (
                self.distance_weight * distance_loss + self.angle_weight * angle_loss
            )
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "distance_weight": self.distance_weight,
            "angle_weight": self.angle_weight,
            "epsilon": self.epsilon,
            "squared": self.squared,
        }
