"""MLKD: multi-level logit distillation on a weak and a strong view."""

import keras
from keras import ops

from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import (
    LogitLoss,
    standardize_flag,
    standardized_logits,
)
from keras_cskd.losses.registry import register

# The same median as the CSKD code's masks (NumPy's 50th percentile).
from keras_cskd.losses.two_view_cskd import (
    _fraction_at_or_below_median as fraction_at_or_below_median,
)

# The temperatures the reference adds to its configured one, in its order
# (mlkd_KD_ours.py, `forward_train`: 3, 5, 2, 6 after `self.temperature`).
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
# The positions (in `temperature` + EXTRA_TEMPERATURES) of T 2 and 6, whose
# "strong" terms the reference computes on the weak view.
_WEAK_POSITIONS_IN_STRONG_TERMS = (3, 4)


@register("mlkd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class MLKD(LogitLoss):
    """Multi-level logit distillation (Jin et al., CVPR 2023), as its code trains.

    Takes the logits of two views, a weak `(w)` and a strong `(s)` one, and
    sums, over the temperatures `T in (temperature, 3, 5, 2, 6)` (docs/methods.md):

    ```
    kd         = f * sum_T kd_w(T) + sum_T kd_s(T)
    class_gram = g * sum_T cc_w(T)
    batch_gram = f * sum_T bc_w(T)
    ```

    `kd` is `T^2 * mean_i KL(pt_i || ps_i)`, `cc` the squared Frobenius
    distance of the class Gram matrices `P^T P` over `C`, `bc` that of the
    batch Gram matrices `P P^T` over `B`. `f` is the fraction of samples whose
    weak-view teacher confidence is at or below the batch median, `g` the
    fraction of classes whose summed teacher probability is at or below the
    median over classes: the reference multiplies each reduced term by its
    mask and takes the mean, which scales it by about 0.5. Three more of its
    surprises are reproduced by default and can be switched off:

    - `kd_s` at T 2 and 6 takes the *weak* view's logits
      (`weak_view_at_2_and_6=False`: the strong view's).
    - The strong view's class- and batch-Gram terms are computed but not in
      the loss (`strong_gram_terms=True` adds `sum_T cc_s(T)`, with the same
      views as `kd_s`, and `f * sum_T bc_s(T)`).
    - `confidence_masks=False` drops `f` and `g` (each term at weight 1).

    The cross-entropy of both views is the `Distiller`'s: give it
    `view_weights=(1.0, 1.0)` and the recipe's `ce_weight` (0.1).

    Args:
        temperature: the configured temperature (default 4; the LS-KD
            recipe's 2), the first of the five.
        standardize: LS-KD's logit standardisation of the `kd` terms only
            (`standardized_logits`), as lskd_MLKD.py's `logit_stand`; the
            masks and Gram terms keep the raw logits. Default False.
        confidence_masks: scale the weak-view terms by `f` and `g` (default
            True, the reference's).
        weak_view_at_2_and_6: the reference's weak logits in the strong KD
            terms at T 2 and 6 (default True).
        strong_gram_terms: add the strong view's Gram terms (default False,
            the reference's).

    Example:

    >>> import numpy as np
    >>> weak, strong = np.eye(4, 3, dtype="float32"), np.ones((4, 3), "float32")
    >>> loss = MLKD()
    >>> float(loss.compute_loss((weak, strong), (weak, strong)))
    0.0
    """

    num_views = 2

    def __init__(
        self,
        temperature=4.0,
        standardize=False,
        confidence_masks=True,
        weak_view_at_2_and_6=True,
        strong_gram_terms=False,
    ):
        super().__init__(temperature=temperature, global_batch=True)
        if not isinstance(self.temperature, float | int):
            raise ValueError(f"MLKD takes a float `temperature`, got {temperature!r}.")
        self.standardize = standardize_flag(standardize)
        self.confidence_masks = _flag("confidence_masks", confidence_masks)
        self.weak_view_at_2_and_6 = _flag("weak_view_at_2_and_6", weak_view_at_2_and_6)
        self.strong_gram_terms = _flag("strong_gram_terms", strong_gram_terms)

    @property
    def temperature_levels(self):
        """The five temperatures, in the reference's order."""
        return (float(self.temperature),) + EXTRA_TEMPERATURES

    def compute_loss(self, teacher_logits, student_logits, labels=None, **kwargs):
        terms = self.terms(teacher_logits, student_logits)
        return terms["kd"] + terms["class_gram"] + terms["batch_gram"]

    def terms(self, teacher_logits, student_logits):
        """The three terms, `{"kd", "class_gram", "batch_gram"}`, as scalars."""
        weak = self._views(teacher_logits, student_logits, 0)
        strong = self._views(teacher_logits, student_logits, 1)
        sample_fraction, class_fraction = self._mask_fractions(weak[0])
        terms = {"kd": 0.0, "class_gram": 0.0, "batch_gram": 0.0}
        for position, temperature in enumerate(self.temperature_levels):
            # The reference's "strong" terms at T 2 and 6 read the weak view.
            strong_or_weak = strong
            if (
                self.weak_view_at_2_and_6
                and position in _WEAK_POSITIONS_IN_STRONG_TERMS
            ):
                strong_or_weak = weak
            terms["kd"] += sample_fraction * self._kd(*weak, temperature)
            terms["kd"] += self._kd(*strong_or_weak, temperature)
            terms["class_gram"] += class_fraction * class_gram_loss(*weak, temperature)
            terms["batch_gram"] += sample_fraction * batch_gram_loss(*weak, temperature)
            if self.strong_gram_terms:
                terms["class_gram"] += class_gram_loss(*strong_or_weak, temperature)
                terms["batch_gram"] += sample_fraction * batch_gram_loss(
                    *strong, temperature
                )
        return terms

    def _mask_fractions(self, teacher_weak):
        """`(f, g)`: the fractions of samples and of classes the reference's
        median-confidence masks keep (1 and 1 without masks)."""
        if not self.confidence_masks:
            return 1.0, 1.0
        teacher_probs = ops.softmax(teacher_weak, axis=-1)
        return (
            fraction_at_or_below_median(ops.max(teacher_probs, axis=-1)),
            fraction_at_or_below_median(ops.sum(teacher_probs, axis=0)),
        )

    def _kd(self, teacher_logits, student_logits, temperature):
        if self.standardize:
            teacher_logits = standardized_logits(teacher_logits)
            student_logits = standardized_logits(student_logits)
        return temperature**2 * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )

    def _views(self, teacher_logits, student_logits, index):
        """`(teacher, student)` float32 logits of view `index` (0 weak, 1 strong)."""
        views = []
        for logits, role in ((teacher_logits, "teacher"), (student_logits, "student")):
            if not isinstance(logits, tuple | list) or len(logits) != 2:
                raise ValueError(
                    f"MLKD takes the {role} logits of two views, (weak, strong): "
                    "train on two-view batches (data.two_views=True)."
                )
            views.append(ops.cast(logits[index], "float32"))
        self.validate_outputs(*views)
        return ops.stop_gradient(views[0]), views[1]

    def get_config(self):
        return {
            "temperature": self.temperature,
            "standardize": self.standardize,
            "confidence_masks": self.confidence_masks,
            "weak_view_at_2_and_6": self.weak_view_at_2_and_6,
            "strong_gram_terms": self.strong_gram_terms,
        }


def class_gram_loss(teacher_logits, student_logits, temperature):
    """`|Pt^T Pt - Ps^T Ps|_F^2 / C` of the softmaxes at `temperature`
    (MLKD's class-level term, `cc_loss`)."""
    teacher_probs, student_probs = _probs(teacher_logits, student_logits, temperature)
    difference = ops.matmul(ops.transpose(teacher_probs), teacher_probs) - ops.matmul(
        ops.transpose(student_probs), student_probs
    )
    num_classes = ops.cast(ops.shape(teacher_probs)[-1], "float32")
    return ops.sum(ops.square(difference)) / num_classes


def batch_gram_loss(teacher_logits, student_logits, temperature):
    """`|Pt Pt^T - Ps Ps^T|_F^2 / B` of the softmaxes at `temperature`
    (MLKD's batch-level term, `bc_loss`)."""
    teacher_probs, student_probs = _probs(teacher_logits, student_logits, temperature)
    difference = ops.matmul(teacher_probs, ops.transpose(teacher_probs)) - ops.matmul(
        student_probs, ops.transpose(student_probs)
    )
    batch_size = ops.cast(ops.shape(teacher_probs)[0], "float32")
    return ops.sum(ops.square(difference)) / batch_size


def _probs(teacher_logits, student_logits, temperature):
    return (
        ops.softmax(teacher_logits / temperature, axis=-1),
        ops.softmax(student_logits / temperature, axis=-1),
    )


def _flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return value
