"""An independent float64 NumPy implementation of the losses in docs/methods.md.

Written from docs/methods.md alone (it does not import keras_cskd), as plain
functions on `[B, C]` arrays, to test the Keras implementation against.
`zs`, `zt` are student and teacher logits; `temperature` is a scalar or a
per-sample column `[B, 1]`.
"""

import numpy as np

COSINE_EPS = 1e-8
CSWT_SPREAD_THRESHOLD = 1e-6


def log_softmax(logits):
    """Stable log-softmax over the last axis: x - max - log(sum(exp(x - max)))."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits, temperature=1.0):
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def logsumexp_where(values, where):
    """log(sum(exp(values))) over the entries of each row where `where` is True."""
    masked = np.where(where, values, -np.inf)
    top = masked.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(masked - top).sum(axis=-1, keepdims=True)))[..., 0]


def kl_from_log_probs(log_p, log_q):
    """Per-row KL(p || q) from log-probabilities, summed over the last axis.

    Entries with p == 0 contribute 0.
    """
    p = np.exp(log_p)
    terms = np.where(p > 0, p * (log_p - log_q), 0.0)
    return terms.sum(axis=-1)


def cosine(a, b, axis):
    """<a, b> / (|a| |b| + 1e-8) along `axis`."""
    dot = (a * b).sum(axis=axis)
    return dot / (
        np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis) + COSINE_EPS
    )


def pearson(a, b, axis):
    """Cosine (eps 1e-8) after subtracting each vector's mean along `axis`."""
    return cosine(
        a - a.mean(axis=axis, keepdims=True),
        b - b.mean(axis=axis, keepdims=True),
        axis=axis,
    )


def temperature_and_factor(zt, zs, temperature):
    """`(T, T^2 factor)` for a float or a `("cswt", t_min, t_max)` tuple."""
    if isinstance(temperature, tuple):
        _, t_min, t_max = temperature
        per_sample = cswt(zt, zs, t_min, t_max)
        return per_sample, per_sample.mean() ** 2
    return float(temperature), float(temperature) ** 2


def cswt(zt, zs, t_min=2.0, t_max=6.0):
    """Per-sample temperatures `[B, 1]` of docs/methods.md's CSWT."""
    similarity = cosine(softmax(zs, 1.0), softmax(zt, 1.0), axis=-1)
    spread = similarity.max() - similarity.min()
    if spread <= CSWT_SPREAD_THRESHOLD:
        temperatures = np.full_like(similarity, t_min)
    else:
        temperatures = (
            t_min + (t_max - t_min) * (similarity.max() - similarity) / spread
        )
    return temperatures[:, None]


def cswt_spread(zt, zs):
    """The spread `max_j s_j - min_j s_j` of the CSWT cosines (for test design)."""
    similarity = cosine(softmax(zs, 1.0), softmax(zt, 1.0), axis=-1)
    return similarity.max() - similarity.min()


def kd(zt, zs, temperature=4.0):
    """T^2 * mean_i KL(softmax(zt, T)[i] || softmax(zs, T)[i])."""
    zt, zs = np.float64(zt), np.float64(zs)
    t, factor = temperature_and_factor(zt, zs, temperature)
    return factor * kl_from_log_probs(log_softmax(zt / t), log_softmax(zs / t)).mean()


def cosine_term(zt, zs, temperature, alpha=2.0, multi_level=False):
    """L_cs: alpha * T^2 * (1 - mean_c cos(Ps[:, c], Pt[:, c])); with
    `multi_level`, plus the unweighted class-Gram and batch-Gram distances."""
    zt, zs = np.float64(zt), np.float64(zs)
    t, factor = temperature_and_factor(zt, zs, temperature)
    ps, pt = softmax(zs, t), softmax(zt, t)
    loss = alpha * factor * (1.0 - cosine(ps, pt, axis=0).mean())
    if multi_level:
        loss += class_gram_distance(pt, ps) + batch_gram_distance(pt, ps)
    return loss


def class_gram_distance(pt, ps):
    """1 - mean row cosine of the class Grams P^T P."""
    return 1.0 - cosine(pt.T @ pt, ps.T @ ps, axis=1).mean()


def batch_gram_distance(pt, ps):
    """1 - mean row cosine of the batch Grams P P^T."""
    return 1.0 - cosine(pt @ pt.T, ps @ ps.T, axis=1).mean()


def cskd(zt, zs, temperature=4.0, cswt_range=(2.0, 6.0), alpha=2.0, multi_level=False):
    """L_cs(temperature) + L_cswt(cswt_range); cswt_range None for L_cs alone."""
    loss = cosine_term(zt, zs, temperature, alpha, multi_level)
    if cswt_range is not None:
        loss += cosine_term(zt, zs, ("cswt", *cswt_range), alpha, multi_level)
    return loss


def skd_normalize(logits, multiplier=2.0):
    """multiplier * (z - mean) / sqrt(population var + 1e-7), per row."""
    logits = np.float64(logits)
    centred = logits - logits.mean(axis=-1, keepdims=True)
    variance = (centred**2).mean(axis=-1, keepdims=True)
    return multiplier * centred / np.sqrt(variance + 1e-7)


def skd(zt, zs, temperature=4.0, multiplier=2.0):
    return kd(skd_normalize(zt, multiplier), skd_normalize(zs, multiplier), temperature)


def lskd_standardize(logits):
    """(z - mean) / (sample std + 1e-7), per row."""
    logits = np.float64(logits)
    mean = logits.mean(axis=-1, keepdims=True)
    std = logits.std(axis=-1, ddof=1, keepdims=True)
    return (logits - mean) / (std + 1e-7)


def lskd(zt, zs, temperature=2.0):
    return kd(lskd_standardize(zt), lskd_standardize(zs), temperature)


def dkd(zt, zs, labels, temperature=4.0, alpha=1.0, beta=8.0, warmup=20, epoch=None):
    """docs/methods.md's DKD; `labels` integer `[B]` or one-hot/soft `[B, C]`."""
    zt, zs = np.float64(zt), np.float64(zs)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels.argmax(axis=-1)
    num_classes = zs.shape[-1]
    g = np.eye(num_classes)[labels]
    t, factor = temperature_and_factor(zt, zs, temperature)

    def log_binary(z):
        # log b = log [sum(p * g), sum(p * (1 - g))], each sum taken in log space
        # (a log-sum-exp of log p over the selected classes) so that a
        # probability that underflows float64 (logits of magnitude 1e3) still
        # has a finite log.
        log_p = log_softmax(z / t)
        return np.stack(
            [logsumexp_where(log_p, g > 0), logsumexp_where(log_p, g == 0)], axis=-1
        )

    tckd = kl_from_log_probs(log_binary(zt), log_binary(zs)).mean()
    nckd = kl_from_log_probs(
        log_softmax(zt / t - 1000.0 * g), log_softmax(zs / t - 1000.0 * g)
    ).mean()
    scale = 1.0 if epoch is None else min(epoch / warmup, 1.0)
    return scale * factor * (alpha * tckd + beta * nckd)


def dist(zt, zs, temperature=4.0, beta=1.0, gamma=1.0):
    """T^2 * (beta * inter + gamma * intra) with Pearson correlations."""
    zt, zs = np.float64(zt), np.float64(zs)
    t, factor = temperature_and_factor(zt, zs, temperature)
    ps, pt = softmax(zs, t), softmax(zt, t)
    inter = 1.0 - pearson(ps, pt, axis=1).mean()
    intra = 1.0 - pearson(ps, pt, axis=0).mean()
    return factor * (beta * inter + gamma * intra)


def median_fraction(values):
    """The fraction of `values` at or below their median (NumPy's percentile 50)."""
    return float(np.mean(values <= np.percentile(values, 50)))


def two_view_cskd(zt_weak, zs_weak, zt_strong, zs_strong, t=4.0, t_range=(2.0, 6.0)):
    """The CSKD code's training objective without its CE (docs/methods.md):
    returns (kd, class_gram, batch_gram) terms, weak-view terms weighted by the
    fraction of samples (or classes) at or below the teacher's median confidence,
    the strong view reusing the weak view's CSWT temperatures."""
    zt_weak, zs_weak = np.float64(zt_weak), np.float64(zs_weak)
    zt_strong, zs_strong = np.float64(zt_strong), np.float64(zs_strong)
    teacher = softmax(zt_weak)
    sample_fraction = median_fraction(teacher.max(axis=1))
    class_fraction = median_fraction(teacher.sum(axis=0))
    per_sample = cswt(zt_weak, zs_weak, *t_range)
    temperatures = [(t, t**2), (per_sample, per_sample.mean() ** 2)]
    kd = class_gram = batch_gram = 0.0
    for temperature, factor in temperatures:
        pt, ps = softmax(zt_weak, temperature), softmax(zs_weak, temperature)
        kd += sample_fraction * 2.0 * factor * (1 - cosine(ps, pt, axis=0).mean())
        class_gram += class_fraction * class_gram_distance(pt, ps)
        batch_gram += sample_fraction * batch_gram_distance(pt, ps)
        pt, ps = softmax(zt_strong, temperature), softmax(zs_strong, temperature)
        kd += 2.0 * factor * (1 - cosine(ps, pt, axis=0).mean())
    return kd, class_gram, batch_gram
