"""PKT: probabilistic knowledge transfer, as in mdistiller's PKT."""

import keras
from keras import ops

from keras_cskd.losses.feature_loss import FeatureLoss, flatten_rows
from keras_cskd.losses.registry import register


def cosine_probabilities(features, epsilon):
    """Each row's cosine similarities to the batch, mapped to `[0, 1]` and
    normalised to sum to one: `[B, D] -> [B, B]`."""
    norm = ops.sqrt(ops.sum(ops.square(features), axis=1, keepdims=True))
    unit = features / (norm + epsilon)
    # The reference zeroes NaNs (0/0 only arises for epsilon=0).
    unit = ops.where(ops.isnan(unit), ops.zeros_like(unit), unit)
    similarity = (ops.matmul(unit, ops.transpose(unit)) + 1.0) / 2.0
    return similarity / ops.sum(similarity, axis=1, keepdims=True)


@register("pkt")
@keras.saving.register_keras_serializable(package="keras_cskd")
class PKT(FeatureLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018), as mdistiller.

    With `P`, `Q` the teacher's and student's rows of cosine similarities
    mapped to `[0, 1]` (`(cos + 1) / 2`) and normalised to sum to one,
    `L = mean_{i,j} P_ij log((P_ij + eps) / (Q_ij + eps))` (a mean, not a sum,
    over both axes). Features are flattened to `[B, D]`; mdistiller uses the
    pooled features (`pooled_feat`) and weighs the loss by 30000
    (`REFERENCE_WEIGHT`, cfg.py's `PKT.LOSS.FEAT_WEIGHT`: pass it as the
    Distiller's `distillation_loss_weight`). Feature widths may differ.

    Args:
        teacher_layer_name: the teacher's features: a tap (default
            `"pooled_feat"`, mdistiller's), a layer name, or `None` (logits).
        student_layer_name: the student's, alike.
        epsilon: the reference's `eps`, added to the norms and the probabilities.

    Example:

    >>> loss = PKT()
    >>> teacher = keras.random.normal((4, 16), seed=0)
    >>> student = keras.random.normal((4, 8), seed=1)
    >>> float(loss.compute_loss(teacher, student)) > 0
    True
    """

    REFERENCE_WEIGHT = 30000.0

    def __init__(
        self,
        teacher_layer_name="pooled_feat",
        student_layer_name="pooled_feat",
        epsilon=1e-7,
    ):
        super().__init__(teacher_layer_name, student_layer_name)
        self.epsilon = float(epsilon)

    def stage_losses(self, teacher_stages, student_stages):
        total = 0.0
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            target = cosine_probabilities(flatten_rows(teacher), self.epsilon)
            model = cosine_probabilities(flatten_rows(student), self.epsilon)
            ratio = (target + self.epsilon) / (model + self.epsilon)
            total += ops.mean(target * ops.log(ratio))
        return total

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
