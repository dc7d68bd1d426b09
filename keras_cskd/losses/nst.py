"""NST: neuron selectivity transfer, as in mdistiller's NST."""

import keras
from keras import ops

from keras_cskd.losses.attention_transfer import average_pool_to
from keras_cskd.losses.feature_loss import FeatureLoss, l2_normalize
from keras_cskd.losses.registry import register


def channel_maps(features):
    """`[B, H, W, C] -> [B, C, H*W]`, each channel's map L2-normalised."""
    batch, height, width, channels = ops.shape(features)
    maps = ops.reshape(features, (batch, height * width, channels))
    return l2_normalize(ops.transpose(maps, (0, 2, 1)), axis=2)


def mean_polynomial_kernel(a, b):
    """`mean_{n,i,j} <a_ni, b_nj>^2`: the squared (degree-2) polynomial kernel."""
    return ops.mean(ops.square(ops.einsum("nip,njp->nij", a, b)))


@register("nst")
@keras.saving.register_keras_serializable(package="keras_cskd")
class NST(FeatureLoss):
    """Neuron selectivity transfer (Huang & Wang, 2017), as in mdistiller.

    Each channel's `H*W` map is L2-normalised (PyTorch's `F.normalize`), and
    with `k(a, b) = mean_{n,i,j} <a_ni, b_nj>^2` over channels `i`, `j`,
    `L = k(t, t) + k(s, s) - 2 k(s, t)` (the squared MMD of the polynomial
    kernel), the larger map first average-pooled to the smaller one's size.
    Channel counts may differ. mdistiller sums it over the stages after the
    stem (`feats[1:]`) and weighs it by 50 (`REFERENCE_WEIGHT`, cfg.py's
    `NST.LOSS.FEAT_WEIGHT`): pass lists here, or use one NST per stage pair
    in the Distiller (their sum is the same).

    Args:
        teacher_layer_name: the teacher layer, with `[B, H, W, C]` outputs.
        student_layer_name: the student layer, with `[B, H, W, C]` outputs.

    Example:

    >>> loss = NST()
    >>> teacher = keras.random.normal((2, 4, 4, 8), seed=0)
    >>> student = keras.random.normal((2, 8, 8, 4), seed=1)   # pooled to 4x4
    >>> float(loss.compute_loss(teacher, student)) > 0
    True
    """

    REFERENCE_WEIGHT = 50.0
    min_rank = 4

    def stage_losses(self, teacher_stages, student_stages):
        total = 0.0
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            # mdistiller pools both axes to the smaller height (square maps).
            size = min(teacher.shape[1], student.shape[1])
            teacher = channel_maps(average_pool_to(teacher, size, size))
            student = channel_maps(average_pool_to(student, size, size))
            total += (
                mean_polynomial_kernel(teacher, teacher)
                + mean_polynomial_kernel(student, student)
                - 2.0 * mean_polynomial_kernel(student, teacher)
            )
        return total
