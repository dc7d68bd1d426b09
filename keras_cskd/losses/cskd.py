"""CSKD: cosine similarity between teacher and student batch predictions."""

import keras
from keras import ops

from keras_cskd.checks import non_negative_number
from keras_cskd.losses.cswt import CSWT
from keras_cskd.losses.functional import cosine_similarity
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register


@register("cskd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class CSKD(LogitLoss):
    """Cosine similarity knowledge distillation (Ham et al., 2023).

    For each class `c` it compares the *batch predictions* `P[:, c]` of the
    student and the teacher (the softmax at temperature T, one column per class):
    `L_cs(T) = alpha * T^2 * (1 - mean_c cos(Ps[:, c], Pt[:, c]))`.
    With `cswt`, the paper's method, the same term at the per-sample CSWT
    temperatures (and `mean_i(T_i)^2` for `T^2`) is added:
    `L = L_cs(temperature) + L_cs(cswt)`.

    With `multi_level=True` (the extra terms of the paper's code) each
    temperature also adds the cosine distances of the class Gram matrices
    `P^T P` (`[C, C]`) and of the batch Gram matrices `P P^T` (`[B, B]`) of
    student and teacher, row by row, as `1 - mean cosine`, unweighted: the
    reference code's `cc_loss` and `bc_loss` have no `alpha` and no `T^2`.

    The loss is batch-wise: under `tf.distribute` the `Distiller` computes it on
    the global batch unless `global_batch=False`.

    Args:
        temperature: the fixed temperature (default 4), or a `CSWT`.
        cswt: a `CSWT` for the added per-sample-temperature term (default
            `CSWT(2, 6)`), or `None` for the fixed-temperature term alone.
        alpha: weight of each term (default 2).
        multi_level: add the class-Gram and batch-Gram cosine parts.
        global_batch: see `LogitLoss`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> paper = CSKD(temperature=4.0, cswt=CSWT(t_min=2.0, t_max=6.0))
    >>> fixed_only = CSKD(temperature=4.0, cswt=None)
    >>> float(paper.compute_loss(teacher_logits, student_logits))
    2.787
    """

    # The CSWT term is the `cswt` argument (a config's `loss.cswt` sets it).
    cswt_argument = "cswt"

    def __init__(
        self,
        temperature=4.0,
        cswt="default",
        alpha=2.0,
        multi_level=False,
        global_batch=True,
    ):
        super().__init__(temperature=temperature, global_batch=global_batch)
        if isinstance(cswt, str) and cswt == "default":
            cswt = CSWT(2.0, 6.0)
        if isinstance(cswt, dict):
            cswt = keras.saving.deserialize_keras_object(cswt)
        if cswt is not None and not isinstance(cswt, CSWT):
            raise ValueError(f"`cswt` must be a CSWT or None, got {cswt!r}.")
        self.cswt = cswt
        self.alpha = non_negative_number("alpha", alpha)
        self.multi_level = bool(multi_level)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        loss = self._cosine_term(teacher_logits, student_logits, self.temperature)
        if self.cswt is not None:
            loss += self._cosine_term(teacher_logits, student_logits, self.cswt)
        return loss

    def _cosine_term(self, teacher_logits, student_logits, temperature):
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits, temperature
        )
        teacher_probs = ops.softmax(teacher_logits / temperature, axis=-1)
        student_probs = ops.softmax(student_logits / temperature, axis=-1)
        loss = (
            self.alpha
            * temperature_squared
            * batch_prediction_distance(teacher_probs, student_probs)
        )
        if self.multi_level:
            loss += class_gram_distance(teacher_probs, student_probs)
            loss += batch_gram_distance(teacher_probs, student_probs)
        return loss

    def get_config(self):
        config = super().get_config()
        cswt = self.cswt and keras.saving.serialize_keras_object(self.cswt)
        config.update(
            {"cswt": cswt, "alpha": self.alpha, "multi_level": self.multi_level}
        )
        return config


def batch_prediction_distance(teacher_probs, student_probs):
    """`1 - mean_c cos(Pt[:, c], Ps[:, c])`: CSKD's distance, one cosine per class."""
    return 1.0 - ops.mean(cosine_similarity(teacher_probs, student_probs, axis=0))


def class_gram_distance(teacher_probs, student_probs):
    """`1 - mean` row cosine of the class Gram matrices `P^T P` (`[C, C]`)."""
    return _row_distance(_class_gram(teacher_probs), _class_gram(student_probs))


def batch_gram_distance(teacher_probs, student_probs):
    """`1 - mean` row cosine of the batch Gram matrices `P P^T` (`[B, B]`)."""
    return _row_distance(_batch_gram(teacher_probs), _batch_gram(student_probs))


def _row_distance(teacher_matrix, student_matrix):
    return 1.0 - ops.mean(cosine_similarity(teacher_matrix, student_matrix, axis=-1))


def _class_gram(probs):
    return ops.matmul(ops.transpose(probs), probs)


def _batch_gram(probs):
    return ops.matmul(probs, ops.transpose(probs))
