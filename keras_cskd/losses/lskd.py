"""LS-KD: knowledge distillation on standardised logits."""

import keras
from keras import ops

from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register

# Added to the standard deviation (the official code's epsilon).
STD_EPSILON = 1e-7


def standardized_logits(logits):
    """Z-scores each row: `(z - mean) / (std + 1e-7)`, over the class axis.

    `std` is the *sample* standard deviation (ddof=1). The variance is floored
    at 1e-30 before the square root so that a row of equal logits has a zero,
    not a NaN, gradient; the floor changes the value by less than 1e-8
    relative. With a single class the denominator `C - 1` is taken as 1 (the
    standardised logits are then 0, and any KD between them is 0).
    """
    num_classes = ops.cast(ops.shape(logits)[-1], logits.dtype)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / ops.maximum(
        num_classes - 1.0, 1.0
    )
    std = ops.sqrt(ops.maximum(variance, 1e-30))
    return centred / (std + STD_EPSILON)


@register("lskd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class LSKD(LogitLoss):
    """Logit standardisation KD, LS-KD (Sun et al., 2024).

    Z-scores both logit vectors per sample (mean and sample standard deviation
    over classes, 1e-7 added to the std), then KD at temperature `T` with
    `T^2`: `T^2 * mean_i KL(softmax(zt_std / T)[i] || softmax(zs_std / T)[i])`.
    With `temperature=CSWT(...)` the per-sample temperatures are computed from
    the standardised logits and `T^2` becomes `mean_i(T_i)^2`.

    Args:
        temperature: the base temperature, a positive float (default 2), or a
            `CSWT`.
        global_batch: see `LogitLoss` (only matters with CSWT).

    Example:

    >>> loss = LSKD(temperature=2.0)
    >>> loss.compute_loss(teacher_logits, student_logits)   # a scalar
    """

    def __init__(self, temperature=2.0, global_batch=True):
        super().__init__(temperature=temperature, global_batch=global_batch)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        teacher_logits = standardized_logits(teacher_logits)
        student_logits = standardized_logits(student_logits)
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        return temperature_squared * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )
