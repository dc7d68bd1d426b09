"""DKD: decoupled knowledge distillation."""

import keras
from keras import ops

from keras_cskd.checks import non_negative_number
from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss, standardize_flag
from keras_cskd.losses.registry import register

# What docs/methods.md (and the official code) subtracts from the target logit to
# mask it out of the non-target distribution.
TARGET_MASK_OFFSET = 1000.0
# Masks the target out of the log-sum-exp of the non-target probability; far
# enough below any float32 log-probability that its exponential is exactly 0.
_LOG_ZERO = -1e9


def target_mask(labels, num_classes):
    """The one-hot target mask `[B, C]` (float32) of integer or one-hot/soft labels.

    Integer labels `[B]` or `[B, 1]` are used as they are; one-hot or soft
    labels `[B, C]` by their argmax.
    """
    if len(labels.shape) == 2 and labels.shape[-1] not in (None, 1):
        class_ids = ops.argmax(labels, axis=-1)
    else:
        class_ids = ops.reshape(labels, (-1,))
    return ops.one_hot(ops.cast(class_ids, "int32"), num_classes, dtype="float32")


@register("dkd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class DKD(LogitLoss):
    """Decoupled knowledge distillation (Zhao et al., 2022).

    With `g` the one-hot target mask and `p = softmax(z / T)`, KD is split into
    the target-class term `TCKD = KL(b_t || b_s)` on the binary vectors
    `b = [sum(p * g), sum(p * (1 - g))]` and the non-target term
    `NCKD = KL(softmax(zt / T - 1000 g) || softmax(zs / T - 1000 g))`:
    `L = min(epoch / warmup_epochs, 1) * T^2 * (alpha * TCKD + beta * NCKD)`,
    both KLs averaged over the batch. The binary KL is computed in log space
    (`log b` from log-softmax and a log-sum-exp over the non-target classes),
    which equals the official code's `log` of the summed probabilities but
    stays finite when a probability underflows to 0. With
    `temperature=CSWT(...)` each sample gets its own temperature and `T^2`
    becomes `mean_i(T_i)^2`.

    Args:
        temperature: a positive float (default 4), or a `CSWT`.
        alpha: weight of TCKD (default 1).
        beta: weight of NCKD (default 8; 2 for ResNet56->20 and ResNet110->32,
            6 for WRN and VGG pairs in the paper).
        warmup_epochs: the loss ramps up linearly over this many epochs
            (default 20; 0 for no warm-up).
        global_batch: see `LogitLoss` (only matters with CSWT).
        standardize: LS-KD's logit standardisation (Sun et al., 2024): both
            logits z-scored per sample (`standardized_logits`) before the
            masks, softmaxes and both KLs, as the LS-KD code's
            `dkd_loss(..., logit_stand=True)`; the warm-up factor is applied
            as without it. Default False.

    `compute_loss` needs `labels=` (integer `[B]` or one-hot/soft `[B, C]`,
    whose argmax is the target) and takes `epoch=`, the 1-based epoch number
    (a number or a scalar tensor); without it the warm-up is taken as over.

    Raises:
        ValueError: from `compute_loss` without labels.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> labels = np.array([0, 1, 2, 3])
    >>> loss = DKD(temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=20)
    >>> float(loss.compute_loss(teacher_logits, student_logits, labels, epoch=3))
    0.952
    >>> DKD(temperature=2.0, alpha=9.0, beta=72.0, standardize=True)  # DKD+LS
    DKD(temperature=2.0, ..., standardize=True)
    """

    requires_labels = True
    uses_epoch = True

    def __init__(
        self,
        temperature=4.0,
        alpha=1.0,
        beta=8.0,
        warmup_epochs=20,
        global_batch=True,
        standardize=False,
    ):
        super().__init__(temperature=temperature, global_batch=global_batch)
        self.standardize = standardize_flag(standardize)
        self.alpha = non_negative_number("alpha", alpha)
        self.beta = non_negative_number("beta", beta)
        self.warmup_epochs = non_negative_number("warmup_epochs", warmup_epochs)

    def call(self, teacher_logits, student_logits, labels=None, epoch=None, **kwargs):
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        mask = target_mask(labels, ops.shape(student_logits)[-1])
        teacher_scaled = teacher_logits / temperature
        student_scaled = student_logits / temperature

        target_kl = ops.mean(
            _binary_kl(
                _log_binary_probs(teacher_scaled, mask),
                _log_binary_probs(student_scaled, mask),
            )
        )
        non_target_kl = kl_divergence_from_logits(
            teacher_scaled - TARGET_MASK_OFFSET * mask,
            student_scaled - TARGET_MASK_OFFSET * mask,
            1.0,
        )
        loss = temperature_squared * (
            self.alpha * target_kl + self.beta * non_target_kl
        )
        return self.warmup_factor(epoch) * loss

    def warmup_factor(self, epoch):
        """`min(epoch / warmup_epochs, 1)`; 1 when `epoch` is None or no warm-up."""
        if epoch is None or self.warmup_epochs == 0:
            return 1.0
        return ops.minimum(ops.cast(epoch, "float32") / self.warmup_epochs, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta": self.beta,
                "warmup_epochs": self.warmup_epochs,
                "standardize": self.standardize,
            }
        )
        return config


def _log_binary_probs(scaled_logits, mask):
    """`log [p_target, p_other]` `[B, 2]` of `p = softmax(scaled_logits)`."""
    log_probs = ops.log_softmax(scaled_logits, axis=-1)
    log_target = ops.sum(log_probs * mask, axis=-1)
    log_other = ops.logsumexp(log_probs + _LOG_ZERO * mask, axis=-1)
    return ops.stack([log_target, log_other], axis=-1)


def _binary_kl(teacher_log_probs, student_log_probs):
    """Per-sample `KL(b_t || b_s)` from log-probabilities `[B, 2]`."""
    return ops.sum(
        ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1
    )
