"""NST: neuron selectivity transfer, as in mdistiller's NST."""

import keras
from keras import ops

from keras_cskd.losses.feature_loss import FeatureLoss, average_pool_to, l2_normalize
from keras_cskd.losses.registry import register


def channel_maps(features):
    """`[B, H, W, C] -> [B, C, H*W]`, each channel's map L2-normalised."""
    batch, height, width, channels = ops.shape(features)
    maps = ops.reshape(features, (batch, height * width, channels))
    return l2_normalize(ops.transpose(maps, (0, 2, 1)), axis=2)


def mean_polynomial_kernel(a, b):
    """`mean_{n,i,j} <a_ni, b_nj>^2`: the squared (degree-2) polynomial kernel."""
    return ops.mean(ops.square(ops.einsum("nip,njp->nij", a, b)))


def pooled_to_smaller_height(teacher, student):
    """mdistiller's pooling: the map with the larger height average-pooled to
    `(h, h)`, `h` the smaller height (an integer ratio here)."""
    teacher_height, student_height = teacher.shape[1], student.shape[1]
    if teacher_height == student_height:
        return teacher, student
    size = min(teacher_height, student_height)
    larger = teacher if teacher_height > size else student
    if larger.shape[1] % size or larger.shape[2] % size:
        raise ValueError(
            f"NST pools the larger map to {size}x{size} by an integer factor; got "
            f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)}: "
            "choose layers whose sizes divide."
        )
    pooled = average_pool_to(larger, size, size)
    return (pooled, student) if larger is teacher else (teacher, pooled)


@register("nst")
@keras.saving.register_keras_serializable(package="keras_cskd")
class NST(FeatureLoss):
    """Neuron selectivity transfer (Huang & Wang, 2017), as in mdistiller.

    Each channel's `H*W` map is L2-normalised (PyTorch's `F.normalize`), and
    with `k(a, b) = mean_{n,i,j} <a_ni, b_nj>^2` over channels `i`, `j`,
    `L = k(t, t) + k(s, s) - 2 k(s, t)` (the squared MMD of the polynomial
    kernel), the map with the larger height first average-pooled to a square
    of the smaller height (mdistiller's adaptive pooling; an integer ratio).
    Channel counts may differ. mdistiller sums it over the stages after the
    stem, the default taps `feats[1:]` (the Distiller passes the lists), and
    weighs it by 50 (`REFERENCE_WEIGHT`, cfg.py's `NST.LOSS.FEAT_WEIGHT`).

    Args:
        teacher_layer_name: the teacher's `[B, H, W, C]` features: a tap
            (default `"feats[1:]"`, mdistiller's), a layer name or a list.
        student_layer_name: the student's, alike.

    Example:

    >>> loss = NST()
    >>> teacher = keras.random.normal((2, 4, 4, 8), seed=0)
    >>> student = keras.random.normal((2, 8, 8, 4), seed=1)   # pooled to 4x4
    >>> float(loss.compute_loss(teacher, student)) > 0
    True
    """

    REFERENCE_WEIGHT = 50.0
    min_rank = 4

    def __init__(self, teacher_layer_name="feats[1:]", student_layer_name="feats[1:]"):
        super().__init__(teacher_layer_name, student_layer_name)

    def stage_losses(self, teacher_stages, student_stages):
        total = 0.0
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            teacher, student = pooled_to_smaller_height(teacher, student)
            teacher, student = channel_maps(teacher), channel_maps(student)
            total += (
                mean_polynomial_kernel(teacher, teacher)
                + mean_polynomial_kernel(student, student)
                - 2.0 * mean_polynomial_kernel(student, teacher)
            )
        return total
