"""KD: Hinton et al.'s knowledge distillation."""

import keras

from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss, standardize_flag
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
        standardize: LS-KD's logit standardisation (Sun et al., 2024): both
            logits z-scored per sample (`standardized_logits`: mean and sample
            std over the classes, 1e-7 added to the std) before the KL, as
            the LS-KD code's `kd_loss(..., logit_stand=True)`. Default False.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> loss = KD(temperature=4.0)
    >>> float(loss.compute_loss(teacher_logits, student_logits))
    0.881
    >>> KD(temperature=2.0, standardize=True)   # KD+LS, equal to LSKD()
    KD(temperature=2.0, ..., standardize=True)
    """

    def __init__(self, temperature=4.0, global_batch=True, standardize=False):
        super().__init__(temperature=temperature, global_batch=global_batch)
        self.standardize = standardize_flag(standardize)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        return temperature_squared * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )

    def get_config(self):
        return {**super().get_config(), "standardize": self.standardize}
