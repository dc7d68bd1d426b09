"""Stateless math shared by the losses."""

from keras import ops

EPSILON = 1e-8


def cosine_similarity(a, b, axis):
    """Cosine of `a` and `b` along `axis`: `<a, b> / (|a| |b| + 1e-8)`.

    The squared norms are floored at 1e-30 before the square root so that a
    column of exact zeros (a softmax that underflowed) has a zero, not a NaN,
    gradient; the floor changes the value by less than 1e-15.
    """
    dot = ops.sum(a * b, axis=axis)
    norm_a = ops.sqrt(ops.maximum(ops.sum(a * a, axis=axis), 1e-30))
    norm_b = ops.sqrt(ops.maximum(ops.sum(b * b, axis=axis), 1e-30))
    return dot / (norm_a * norm_b + EPSILON)


def kl_divergence_from_logits(teacher_logits, student_logits, temperature):
    """`mean_i KL(softmax(zt / T)[i] || softmax(zs / T)[i])`, via log-softmax."""
    log_pt = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_ps = ops.log_softmax(student_logits / temperature, axis=-1)
    return ops.mean(ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1))
