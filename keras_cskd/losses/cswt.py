"""CSWT: the cosine-similarity-weighted temperature."""

import keras
from keras import ops

from keras_cskd.checks import is_finite_number
from keras_cskd.losses.functional import cosine_similarity

# Spreads of the per-sample cosines at or below this are float32 noise (identical
# rows differ by an ulp): the whole batch then gets `t_min`.
SPREAD_THRESHOLD = 1e-6


@keras.saving.register_keras_serializable(package="keras_cskd")
class CSWT:
    """Cosine-similarity-weighted temperature: one temperature per sample.

    With `s_i` the cosine between the student's and the teacher's softmax
    (T = 1) on sample `i`, the most similar sample in the batch gets `t_min`
    and the least similar `t_max`, linearly in between:
    `T_i = t_min + (t_max - t_min) * (max_j s_j - s_i) / (max_j s_j - min_j s_j)`.
    When the spread is at most 1e-6 (a batch of one, identical rows) every
    sample gets `t_min`. No gradient flows through the temperature. The min
    and max are over the batch: under `tf.distribute` the `Distiller` gives it
    the global batch.

    Args:
        t_min: temperature of the sample on which student and teacher agree most.
        t_max: temperature of the sample on which they agree least.

    Returns (when called on `teacher_logits, student_logits` `[B, C]`):
        The temperatures, a float32 column `[B, 1]`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> cswt = CSWT(t_min=2.0, t_max=6.0)
    >>> temperatures = cswt(teacher_logits, student_logits)
    >>> keras.ops.convert_to_numpy(temperatures).round(2).tolist()
    [[2.38], [4.33], [6.0], [2.0]]
    >>> loss = keras_cskd.losses.KD(temperature=cswt)        # KD with CSWT
    """

    def __init__(self, t_min=2.0, t_max=6.0):
        if not (is_finite_number(t_min) and is_finite_number(t_max)) or not (
            0 < t_min <= t_max
        ):
            raise ValueError(
                f"CSWT needs finite 0 < t_min <= t_max, got t_min={t_min!r}, "
                f"t_max={t_max!r}."
            )
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    def __call__(self, teacher_logits, student_logits):
        teacher_probs = ops.softmax(ops.cast(teacher_logits, "float32"), axis=-1)
        student_probs = ops.softmax(ops.cast(student_logits, "float32"), axis=-1)
        similarity = ops.stop_gradient(
            cosine_similarity(student_probs, teacher_probs, axis=-1)
        )
        highest, lowest = ops.max(similarity), ops.min(similarity)
        spread = highest - lowest
        weight = (highest - similarity) / ops.maximum(spread, SPREAD_THRESHOLD)
        weight = ops.where(spread > SPREAD_THRESHOLD, weight, ops.zeros_like(weight))
        return ops.expand_dims(self.t_min + (self.t_max - self.t_min) * weight, -1)

    def get_config(self):
        return {"t_min": self.t_min, "t_max": self.t_max}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"CSWT(t_min={self.t_min}, t_max={self.t_max})"

    def __eq__(self, other):
        return isinstance(other, CSWT) and self.get_config() == other.get_config()
