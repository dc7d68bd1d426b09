"""SKD: spherical knowledge distillation."""

import keras
from keras import ops

from keras_cskd.checks import positive_number
from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register

# Added to the variance inside the square root (the official code's epsilon).
VARIANCE_EPSILON = 1e-7


def spherical_logits(logits, multiplier):
    """Projects each row onto a sphere: `multiplier * (z - mean) / sqrt(var + 1e-7)`.

    The mean and the population variance are taken over the class axis.
    """
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)
    return multiplier * centred / ops.sqrt(variance + VARIANCE_EPSILON)


@register("skd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class SKD(LogitLoss):
    """Spherical knowledge distillation (Guo et al., 2020).

    Both logit vectors are projected onto a sphere before distilling: per
    sample, subtract the mean over classes, divide by the population standard
    deviation over classes (with 1e-7 added to the variance) and multiply by
    `multiplier`. Then KD at temperature `T` with `T^2` on the normalised
    logits: `T^2 * mean_i KL(softmax(zt_n / T)[i] || softmax(zs_n / T)[i])`.
    With `temperature=CSWT(...)` the per-sample temperatures are computed
    from the normalised logits (the logits the softmax at `T` sees) and `T^2`
    becomes `mean_i(T_i)^2`.

    Args:
        temperature: a positive float (default 4), or a `CSWT`.
        multiplier: the radius of the sphere (default 2).
        normalize_student_ce: whether the student's cross-entropy uses the
            normalised student logits, as in the official code (see
            `student_logits_for_ce`). Default `False`.
        global_batch: see `LogitLoss` (only matters with CSWT).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> loss = SKD(temperature=4.0, multiplier=2.0)
    >>> float(loss.compute_loss(teacher_logits, student_logits))
    4.174
    """

    def __init__(
        self,
        temperature=4.0,
        multiplier=2.0,
        normalize_student_ce=False,
        global_batch=True,
    ):
        super().__init__(temperature=temperature, global_batch=global_batch)
        self.multiplier = positive_number("multiplier", multiplier)
        self.normalize_student_ce = bool(normalize_student_ce)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        teacher_logits = spherical_logits(teacher_logits, self.multiplier)
        student_logits = spherical_logits(student_logits, self.multiplier)
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        return temperature_squared * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )

    def student_logits_for_ce(self, student_logits):
        """The normalised student logits if `normalize_student_ce`, else the input."""
        if not self.normalize_student_ce:
            return student_logits
        return spherical_logits(ops.cast(student_logits, "float32"), self.multiplier)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "multiplier": self.multiplier,
                "normalize_student_ce": self.normalize_student_ce,
            }
        )
        return config
