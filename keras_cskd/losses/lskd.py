"""LS-KD: knowledge distillation on standardised logits, `KD(standardize=True)`."""

import keras

from keras_cskd.losses.kd import KD
from keras_cskd.losses.logit_loss import STD_EPSILON, standardized_logits
from keras_cskd.losses.registry import register

# Kept importable from here, where they first lived; they are logit_loss.py's.
__all__ = ["LSKD", "STD_EPSILON", "standardized_logits"]


@register("lskd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class LSKD(KD):
    """Logit standardisation KD, LS-KD (Sun et al., 2024): `KD(standardize=True)`
    at LS-KD's base temperature 2.

    Z-scores both logit vectors per sample (mean and sample standard deviation
    over classes, 1e-7 added to the std), then KD at temperature `T` with
    `T^2`: `T^2 * mean_i KL(softmax(zt_std / T)[i] || softmax(zs_std / T)[i])`.
    With `temperature=CSWT(...)` the per-sample temperatures are computed from
    the standardised logits and `T^2` becomes `mean_i(T_i)^2`. Its config and
    saved name (`keras_cskd>LSKD`) are unchanged; `KD(standardize=True)` is
    the same loss, and the switch also exists on `DKD`.

    Args:
        temperature: the base temperature, a positive float (default 2), or a
            `CSWT`.
        global_batch: see `LogitLoss` (only matters with CSWT).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> loss = LSKD(temperature=2.0)
    >>> float(loss.compute_loss(teacher_logits, student_logits))
    0.945
    """

    def __init__(self, temperature=2.0, global_batch=True):
        super().__init__(
            temperature=temperature, global_batch=global_batch, standardize=True
        )

    def get_config(self):
        config = super().get_config()
        del config["standardize"]  # always True; saved LSKDs never had the key
        return config
