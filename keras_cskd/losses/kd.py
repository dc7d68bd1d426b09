"""KD: Hinton et al.'s knowledge distillation."""

import keras

from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register


@register("kd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class KD(LogitLoss):
    """Knowledge distillation (Hinton et al., 2015).

    `T^2 * mean_i KL(softmax(zt / T)[i] || softmax(zs / T)[i])`, computed with
    log-softmax. With `temperature=CSWT(...)` each sample gets its own
    temperature and `T^2` becomes `mean_i(T_i)^2`.

    Args:
        temperature: a positive float (default 4), or a `CSWT`.
        global_batch: see `LogitLoss` (only matters with CSWT,
            whose min and max are over the batch).

    Example:

    >>> loss = KD(temperature=4.0)
    >>> loss.compute_loss(teacher_logits, student_logits)   # a scalar
    """

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        return temperature_squared * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )
