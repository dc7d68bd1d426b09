"""DIST: distillation from a stronger teacher by Pearson correlations."""

import keras
from keras import ops

from keras_cskd.checks import non_negative_number
from keras_cskd.losses.functional import cosine_similarity
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register


def pearson_correlation(a, b, axis):
    """Pearson correlation of `a` and `b` along `axis`: the cosine (eps 1e-8)
    after subtracting each vector's mean along `axis`."""
    return cosine_similarity(
        a - ops.mean(a, axis=axis, keepdims=True),
        b - ops.mean(b, axis=axis, keepdims=True),
        axis=axis,
    )


@register("dist")
@keras.saving.register_keras_serializable(package="keras_cskd")
class DIST(LogitLoss):
    """DIST: knowledge distillation from a stronger teacher (Huang et al., 2022).

    With `ps, pt = softmax(zs / T), softmax(zt / T)`, it matches the relations
    between the predictions rather than the predictions themselves:
    `inter = 1 - mean_i pearson(ps[i, :], pt[i, :])` (per sample, over
    classes), `intra = 1 - mean_c pearson(ps[:, c], pt[:, c])` (per class, over
    the batch), `L = T^2 * (beta * inter + gamma * intra)`. With
    `temperature=CSWT(...)` each sample gets its own temperature and `T^2`
    becomes `mean_i(T_i)^2`.

    The intra term is batch-wise: under `tf.distribute` the `Distiller`
    computes it on the global batch unless `global_batch=False`.

    Args:
        temperature: a positive float (default 4), or a `CSWT`.
        beta: weight of the inter-class (per-sample) term (default 1).
        gamma: weight of the intra-class (batch-wise) term (default 1).
        global_batch: see `LogitLoss`.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> teacher_logits, student_logits = rng.normal(size=(2, 4, 10))  # 4 samples
    >>> loss = DIST(temperature=4.0, beta=1.0, gamma=1.0)
    >>> float(loss.compute_loss(teacher_logits, student_logits))
    38.20
    """

    def __init__(self, temperature=4.0, beta=1.0, gamma=1.0, global_batch=True):
        super().__init__(temperature=temperature, global_batch=global_batch)
        self.beta = non_negative_number("beta", beta)
        self.gamma = non_negative_number("gamma", gamma)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        temperature, temperature_squared = self.temperatures(
            teacher_logits, student_logits
        )
        student_probs = ops.softmax(student_logits / temperature, axis=-1)
        teacher_probs = ops.softmax(teacher_logits / temperature, axis=-1)
        inter = 1.0 - ops.mean(pearson_correlation(student_probs, teacher_probs, -1))
        intra = 1.0 - ops.mean(pearson_correlation(student_probs, teacher_probs, 0))
        return temperature_squared * (self.beta * inter + self.gamma * intra)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "gamma": self.gamma})
        return config
