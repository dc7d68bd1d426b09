"""The CSKD code's training objective on a weak and a strong view."""

import keras
from keras import ops

from keras_cskd.checks import non_negative_number
from keras_cskd.losses.cskd import (
    batch_gram_distance,
    batch_prediction_distance,
    class_gram_distance,
)
from keras_cskd.losses.cswt import CSWT
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register


@register("two_view_cskd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class TwoViewCSKD(LogitLoss):
    """CSKD+CSWT as the paper's code trains it (llieeai/lud, `CSKD.forward_train`).

    Takes the logits of two views of the same images, a weak `(w)` and a strong
    `(s)` one, and returns the sum of three terms (docs/methods.md):

    ```
    kd         = f * (cs_w(T) + cs_w(T_i)) + cs_s(T) + cs_s(T_i)
    class_gram = g * (cc_w(T) + cc_w(T_i))
    batch_gram = f * (bc_w(T) + bc_w(T_i))
    ```

    `cs` is `alpha * T^2 * (1 - mean_c cos(Ps[:, c], Pt[:, c]))` (`mean(T_i)^2`
    at the CSWT temperatures), `cc` and `bc` the unweighted class-Gram and
    batch-Gram cosine distances. The per-sample temperatures `T_i` come from
    the weak view and serve both views. `f` is the fraction of samples whose
    weak-view teacher confidence (top-1 probability) is at or below the
    batch median, `g` the fraction of classes whose summed teacher probability
    is at or below the median over classes (the code's `(term * mask).mean()`).
    The cross-entropy of both views (weight 1 each) is the `Distiller`'s:
    give it `view_weights=(1.0, 1.0)`.

    Args:
        temperature: the fixed temperature `T` (default 4).
        cswt: the `CSWT` giving `T_i` (default `CSWT(2, 6)`).
        alpha: the weight of the `cs` terms (default 2).

    Example:

    >>> teacher_weak, teacher_strong, student_weak, student_strong = (
    ...     np.random.default_rng(0).normal(size=(4, 4, 10)))
    >>> loss = TwoViewCSKD()
    >>> teachers = (teacher_weak, teacher_strong)
    >>> students = (student_weak, student_strong)
    >>> float(loss.compute_loss(teachers, students))
    4.698
    """

    num_views = 2

    # The CSWT term is the `cswt` argument (a config's `loss.cswt` sets it).
    cswt_argument = "cswt"

    def __init__(self, temperature=4.0, cswt="default", alpha=2.0):
        super().__init__(temperature=temperature, global_batch=True)
        if isinstance(cswt, str) and cswt == "default":
            cswt = CSWT(2.0, 6.0)
        if isinstance(cswt, dict):
            cswt = keras.saving.deserialize_keras_object(cswt)
        self.cswt = cswt
        if not isinstance(cswt, CSWT) or isinstance(self.temperature, CSWT):
            raise ValueError(
                "TwoViewCSKD takes a float `temperature` and a CSWT `cswt`, got "
                f"temperature={temperature!r}, cswt={cswt!r}."
            )
        self.alpha = non_negative_number("alpha", alpha)

    def compute_loss(self, teacher_logits, student_logits, labels=None, **kwargs):
        terms = self.terms(teacher_logits, student_logits)
        return terms["kd"] + terms["class_gram"] + terms["batch_gram"]

    def terms(self, teacher_logits, student_logits):
        """The three terms, `{"kd", "class_gram", "batch_gram"}`, as scalars."""
        (teacher_weak, teacher_strong), (student_weak, student_strong) = (
            self._views(teacher_logits, "teacher"),
            self._views(student_logits, "student"),
        )
        teacher_probs = ops.softmax(teacher_weak, axis=-1)
        sample_fraction = _fraction_at_or_below_median(ops.max(teacher_probs, axis=-1))
        class_fraction = _fraction_at_or_below_median(ops.sum(teacher_probs, axis=0))
        per_sample = self.cswt(teacher_weak, student_weak)
        terms = {"kd": 0.0, "class_gram": 0.0, "batch_gram": 0.0}
        for temperature, factor in (
            (self.temperature, self.temperature**2),
            (per_sample, ops.square(ops.mean(per_sample))),
        ):
            weak = _probs(teacher_weak, student_weak, temperature)
            strong = _probs(teacher_strong, student_strong, temperature)
            cs_weight = self.alpha * factor
            terms["kd"] += cs_weight * (
                sample_fraction * batch_prediction_distance(*weak)
                + batch_prediction_distance(*strong)
            )
            terms["class_gram"] += class_fraction * class_gram_distance(*weak)
            terms["batch_gram"] += sample_fraction * batch_gram_distance(*weak)
        return terms

    def _views(self, logits, role):
        if not isinstance(logits, (tuple, list)) or len(logits) != 2:
            raise ValueError(
                f"TwoViewCSKD takes the {role} logits of two views, (weak, "
                "strong): train on two-view batches (data.two_views=True)."
            )
        logits = [ops.cast(view, "float32") for view in logits]
        if role == "teacher":
            logits = [ops.stop_gradient(view) for view in logits]
        return logits

    def get_config(self):
        return {
            "temperature": self.temperature,
            "cswt": keras.saving.serialize_keras_object(self.cswt),
            "alpha": self.alpha,
        }


def _probs(teacher_logits, student_logits, temperature):
    return (
        ops.softmax(teacher_logits / temperature, axis=-1),
        ops.softmax(student_logits / temperature, axis=-1),
    )


def _fraction_at_or_below_median(values):
    """The fraction of `values` (1-D) at or below their median, the median as
    NumPy's 50th percentile computes it (the mean of the middle two of an even
    count)."""
    values = ops.stop_gradient(values)
    ordered = ops.sort(values)
    count = ops.shape(values)[0]
    low, high = ordered[(count - 1) // 2], ordered[count // 2]
    median = low + (high - low) * 0.5
    return ops.mean(ops.cast(values <= median, "float32"))
