"""CRD: contrastive representation distillation, as mdistiller trains it."""

import math

import keras
import numpy as np
from keras import ops

from keras_cskd.initializers import torch_default_bias, torch_default_kernel
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_loss import flatten_rows
from keras_cskd.losses.registry import register

# Every replica computes the same update from the global batch: keep the
# first's, so that the replicas' copies stay identical.
_STATE = dict(trainable=False, aggregation="only_first_replica")


class ContrastMemory(keras.layers.Layer):
    """CRD's memory banks and the tables its negatives are drawn from.

    Non-trainable state, saved with the Distiller and its checkpoints:
    `student_memory`, `teacher_memory` (`[N, D]`, one row per training
    example, PyTorch's `memory_v1`, `memory_v2`), the normalisers
    `student_z`, `teacher_z` (-1 until the first batch sets them), the number
    of training steps drawn so far (`draws`), and the dataset's labels in
    example order (`example_labels`) with the example indices sorted by class
    (`class_sorted_indices`), set by `CRD.adapt`.

    Args:
        num_examples: `N`, the training split's size.
        feature_dim: `D`, the embeddings' width.
        seed: the seed of the banks' initial values.

    Example:

    >>> memory = ContrastMemory(num_examples=10, feature_dim=4)
    >>> memory.build()
    >>> tuple(memory.student_memory.shape)
    (10, 4)
    """

    def __init__(self, num_examples, feature_dim, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.num_examples, self.feature_dim = int(num_examples), int(feature_dim)
        self.seed = int(seed)

    def build(self, input_shape=None):
        # The reference's uniform(-stdv, stdv), stdv = 1 / sqrt(D / 3): rows of
        # norm about 1 before their first update.
        stdv = 1.0 / math.sqrt(self.feature_dim / 3)
        shape = (self.num_examples, self.feature_dim)
        for offset, name in enumerate(("student_memory", "teacher_memory")):
            initializer = keras.initializers.RandomUniform(
                -stdv, stdv, seed=self.seed + offset
            )
            setattr(
                self, name, self.add_weight(shape, initializer, name=name, **_STATE)
            )
        unset = keras.initializers.Constant(-1.0)  # Z < 0: not set yet
        for name in ("student_z", "teacher_z"):
            setattr(self, name, self.add_weight((), unset, name=name, **_STATE))
        self.draws = self.add_weight((), "zeros", "int32", name="draws", **_STATE)
        for name in ("example_labels", "class_sorted_indices"):
            variable = self.add_weight(
                (self.num_examples,), "zeros", "int32", name=name, **_STATE
            )
            setattr(self, name, variable)
        self.built = True

    def get_config(self):
        config = super().get_config()
        config.update(
            num_examples=self.num_examples,
            feature_dim=self.feature_dim,
            seed=self.seed,
        )
        return config


@register("crd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class CRD(DistillationLoss):
    """Contrastive representation distillation (Tian et al., 2020), as mdistiller.

    Student and teacher features (mdistiller: `pooled_feat`) are embedded by
    a linear layer each and L2-normalised, `v_s`, `v_t` (`[B, D]`). Each row
    `i` is contrasted with `K + 1` rows of the other network's memory bank:
    its own example's (the positive) and `K` negatives, examples of other
    classes drawn uniformly (`mode="exact"`). With `h = exp(v . m / T) / Z`,
    `Z` set once to `N mean(h)` on the first batch (the reference's; see
    `normalizer`), and `P_n = 1 / N`:

    `L = -1/B sum_i [log(h_i0 / (h_i0 + K P_n + eps)) + sum_{k >= 1}
    log(K P_n / (h_ik + K P_n + eps))]`, summed over the student's scores
    (against the teacher bank) and the teacher's (against the student bank).

    Then each example's rows of the banks move towards its embeddings,
    `m <- normalise(momentum m + (1 - momentum) v)`. The banks and the
    class tables are non-trainable state of `memory` (a layer listed by
    `layers`), saved with checkpoints; the negatives are drawn from (seed,
    number of training steps drawn) alone, so a resumed run draws the same.
    The Distiller gives the loss the global batch, so N replicas update the
    banks once per step, like one device. Call `adapt(labels)` with the
    training split's labels (in example order) before training: the
    recipes' data layer hands them over (docs/reproducing.md).

    Args:
        num_examples: `N`, the training split's size (the banks' rows), or
            `None` to take it from `adapt`.
        teacher_layer_name, student_layer_name: the compared features
            (`"pooled_feat"` on zoo models).
        feature_dim: the embeddings' width (cfg.py's `CRD.FEAT.DIM`, 128).
        num_negatives: `K` (cfg.py's `CRD.NCE.K`, 16384).
        temperature: `T` (`CRD.NCE.TEMPERATURE`, 0.07).
        momentum: the banks' momentum (`CRD.NCE.MOMENTUM`, 0.5).
        mode: `"exact"` (the positive is the example itself; cfg.py's
            default) or `"relax"` (a random example of its class).
        normalizer: `"first_batch"` (the reference: `Z` set once, from the
            first batch, then fixed) or `"per_batch"` (`Z` re-estimated from
            each batch, no gradient through it).
        seed: the seed of the negatives and the banks' initial values.

    Example:

    >>> loss = CRD(num_examples=20, feature_dim=4, num_negatives=5)
    >>> loss.adapt(np.arange(20) % 3)
    >>> loss.build((None, 8), (None, 6))   # the Distiller does it
    >>> teacher = keras.random.normal((4, 8), seed=0)
    >>> student = keras.random.normal((4, 6), seed=1)
    >>> float(loss.compute_loss(teacher, student, sample_indices=ops.arange(4))) > 0
    True
    """

    uses_sample_indices = True
    REFERENCE_WEIGHT = 0.8  # cfg.py's CRD.LOSS.FEAT_WEIGHT
    EPSILON = 1e-7

    def __init__(
        self,
        num_examples=None,
        teacher_layer_name=None,
        student_layer_name=None,
        feature_dim=128,
        num_negatives=16384,
        temperature=0.07,
        momentum=0.5,
        mode="exact",
        normalizer="first_batch",
        seed=0,
    ):
        if mode not in ("exact", "relax"):
            raise ValueError(f"CRD's mode is 'exact' or 'relax', got {mode!r}.")
        if normalizer not in ("first_batch", "per_batch"):
            raise ValueError(
                f"CRD's normalizer is 'first_batch' or 'per_batch', got {normalizer!r}."
            )
        self.num_examples = None if num_examples is None else int(num_examples)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.feature_dim, self.num_negatives = int(feature_dim), int(num_negatives)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.mode, self.normalizer, self.seed = mode, normalizer, int(seed)
        self._labels = None
        self.student_embedding = self.teacher_embedding = self.memory = None

    @property
    def layers(self):
        """The two embeddings and the memory, once built."""
        if self.memory is None:
            return []
        return [self.student_embedding, self.teacher_embedding, self.memory]

    @property
    def extra_parameters(self):
        """What mdistiller's `get_extra_parameters` counts: both embeddings,
        both banks and the memory's 5 `params`."""
        embeddings = sum(
            int(np.prod(w.shape))
            for layer in (self.student_embedding, self.teacher_embedding)
            for w in layer.weights
        )
        return embeddings + 2 * self.num_examples * self.feature_dim + 5

    def adapt(self, labels):
        """Sets the training split's labels, in example order (`[N]` ints):
        `"exact"` draws negatives among the other classes' examples."""
        labels = np.asarray(labels).reshape(-1).astype("int32")
        if self.num_examples is None and self.memory is None:
            self.num_examples = labels.shape[0]
        if labels.shape[0] != self.num_examples:
            raise ValueError(
                f"CRD was built for {self.num_examples} examples but adapt() got "
                f"{labels.shape[0]} labels: pass the training split's labels."
            )
        self._labels = labels
        if self.memory is not None:
            self._set_tables()

    def _set_tables(self):
        self.memory.example_labels.assign(self._labels)
        order = np.argsort(self._labels, kind="stable").astype("int32")
        self.memory.class_sorted_indices.assign(order)

    def build(self, teacher_shape, student_shape):
        """Creates the embeddings and the memory for features of these shapes."""
        if self.memory is not None:
            return
        if self.num_examples is None:
            raise ValueError(
                "CRD does not know the training split's size: pass num_examples, "
                "or call adapt(train_labels) before building it."
            )
        # PyTorch's `nn.Linear` init, as the reference's `Embed` starts.
        self.student_embedding, self.teacher_embedding = (
            keras.layers.Dense(
                self.feature_dim,
                name=f"crd_{role}_embedding",
                dtype="float32",
                kernel_initializer=torch_default_kernel(),
                bias_initializer=torch_default_bias(_width(shape)),
            )
            for role, shape in (("student", student_shape), ("teacher", teacher_shape))
        )
        self.student_embedding.build((None, _width(student_shape)))
        self.teacher_embedding.build((None, _width(teacher_shape)))
        self.memory = ContrastMemory(
            self.num_examples, self.feature_dim, self.seed, name="crd_memory"
        )
        self.memory.build()
        if self._labels is not None:
            self._set_tables()

    def project_student(self, student_outputs, training=False):
        """The student's embeddings (Linear + L2 normalisation), per replica."""
        return _embed(self.student_embedding, student_outputs)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The loss from raw features (builds on first use); updates the banks."""
        if self.memory is None:
            self.build(tuple(teacher_outputs.shape), tuple(student_outputs.shape))
        return self.compare(
            teacher_outputs, self.project_student(student_outputs), **kwargs
        )

    def compare(
        self,
        teacher_outputs,
        projected_student_outputs,
        sample_indices=None,
        contrast_indices=None,
        **kwargs,
    ):
        """The loss given the student's embeddings; updates the banks.

        `contrast_indices` (`[B, K + 1]`, the positive first) replaces the
        drawn ones (the reference's `contrastive_index`; for tests)."""
        memory = self.memory
        sample_indices = ops.cast(ops.reshape(sample_indices, (-1,)), "int32")
        student = projected_student_outputs
        teacher = _scale_gradient(
            _embed(self.teacher_embedding, ops.stop_gradient(teacher_outputs)),
            1.0 / _num_replicas(),
        )
        if contrast_indices is None:
            contrast_indices = self.draw_contrast_indices(sample_indices)
        contrast_indices = ops.cast(contrast_indices, "int32")
        memory.draws.assign(ops.convert_to_tensor(memory.draws) + 1)
        # Each network's embeddings against the other's bank.
        student_scores = self._scores(memory.teacher_memory, contrast_indices, student)
        teacher_scores = self._scores(memory.student_memory, contrast_indices, teacher)
        student_scores = student_scores / self._normalizer(
            memory.student_z, student_scores
        )
        teacher_scores = teacher_scores / self._normalizer(
            memory.teacher_z, teacher_scores
        )
        self._update(memory.student_memory, sample_indices, student)
        self._update(memory.teacher_memory, sample_indices, teacher)
        return self._nce(student_scores) + self._nce(teacher_scores)

    def _scores(self, bank, contrast_indices, embeddings):
        """`exp(m . v / T)` for the `K + 1` bank rows of each row: `[B, K+1]`."""
        rows = ops.take(ops.convert_to_tensor(bank), contrast_indices, axis=0)
        rows = ops.stop_gradient(rows)
        dots = ops.einsum("bkd,bd->bk", rows, embeddings)
        return ops.exp(dots / self.temperature)

    def _normalizer(self, z, scores):
        """`Z`: the stored one, set from this batch if unset (the reference);
        or this batch's estimate (`normalizer="per_batch"`)."""
        estimate = ops.stop_gradient(ops.mean(scores)) * self.num_examples
        if self.normalizer == "per_batch":
            return estimate
        current = ops.convert_to_tensor(z)
        value = ops.where(current < 0, estimate, current)
        z.assign(value)
        return value

    def _update(self, bank, sample_indices, embeddings):
        """Moves each example's bank row towards its embedding, renormalised."""
        embeddings = ops.stop_gradient(embeddings)
        rows = ops.take(ops.convert_to_tensor(bank), sample_indices, axis=0)
        moved = rows * self.momentum + embeddings * (1.0 - self.momentum)
        moved = moved / ops.sqrt(ops.sum(ops.square(moved), axis=1, keepdims=True))
        bank.assign(ops.scatter_update(bank, ops.expand_dims(sample_indices, 1), moved))

    def _nce(self, scores):
        """The reference's `ContrastLoss`: the NCE loss of `[B, K+1]` scores,
        the positive first (a scalar; the reference's has shape (1,))."""
        noise = self.num_negatives / float(self.num_examples)  # K P_n
        positive, negatives = scores[:, 0], scores[:, 1:]
        log_positive = ops.log(positive / (positive + noise + self.EPSILON))
        log_negative = ops.log(noise / (negatives + noise + self.EPSILON))
        batch = ops.cast(ops.shape(scores)[0], "float32")
        return -(ops.sum(log_positive) + ops.sum(log_negative)) / batch

    def draw_contrast_indices(self, sample_indices):
        """`[B, K + 1]` bank rows: each example's positive, then `K` negatives
        drawn uniformly among the other classes' examples, from (seed, draws)
        alone: without replacement, as the reference's `np.random.choice`,
        unless a class has fewer than `K` other examples (then with it, as the
        reference does too)."""
        memory, size, k = self.memory, self.num_examples, self.num_negatives
        labels = ops.convert_to_tensor(memory.example_labels)
        order = ops.convert_to_tensor(memory.class_sorted_indices)
        sorted_labels = ops.take(labels, order)
        own = ops.take(labels, sample_indices)
        start = ops.searchsorted(sorted_labels, own, side="left")
        count = ops.searchsorted(sorted_labels, own, side="right") - start
        batch = ops.shape(sample_indices)[0]
        # Column 0: the relaxed positive; then K ranks (with replacement);
        # then a key per example (without replacement).
        uniform = _stateless_uniform(
            (batch, 1 + k + size), self.seed, ops.convert_to_tensor(memory.draws)
        )
        # r in [0, N - n_y), then past the own class's block of the table.
        others = ops.expand_dims(size - count, 1)
        scale = ops.cast(others, "float32")
        rank = ops.cast(ops.floor(uniform[:, 1 : 1 + k] * scale), "int32")
        rank = ops.minimum(rank, others - 1)
        rank = ops.where(
            rank >= ops.expand_dims(start, 1), rank + ops.expand_dims(count, 1), rank
        )
        negatives = ops.take(order, rank)
        if k <= size:
            # The K largest of uniform keys, the own class's set below them
            # all: K distinct examples of the other classes, uniformly.
            same_class = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(own, 1))
            keys = ops.where(same_class, -1.0, uniform[:, 1 + k :])
            distinct = ops.cast(ops.top_k(keys, k)[1], negatives.dtype)
            negatives = ops.where(others >= k, distinct, negatives)
        positive = sample_indices
        if self.mode == "relax":
            offset = ops.cast(
                ops.floor(uniform[:, 0] * ops.cast(count, "float32")), "int32"
            )
            positive = ops.take(order, start + ops.minimum(offset, count - 1))
        return ops.concatenate([ops.expand_dims(positive, 1), negatives], axis=1)

    def get_config(self):
        return {
            "num_examples": self.num_examples,
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "feature_dim": self.feature_dim,
            "num_negatives": self.num_negatives,
            "temperature": self.temperature,
            "momentum": self.momentum,
            "mode": self.mode,
            "normalizer": self.normalizer,
            "seed": self.seed,
        }


def _width(shape):
    """The flattened feature width of a `[B, ...]` shape."""
    return int(np.prod(tuple(shape)[1:]))


def _embed(layer, features):
    """The reference's `Embed`: flatten, linear, divide by the L2 norm."""
    embedded = layer(flatten_rows(ops.cast(features, "float32")))
    return embedded / ops.sqrt(ops.sum(ops.square(embedded), axis=1, keepdims=True))


def _scale_gradient(x, scale):
    """`x`, its gradient times `scale`: the teacher embedding runs on the
    gathered global batch on every replica, whose gradients the optimizer
    sums; `1 / replicas` makes the sum one device's gradient."""
    if scale == 1.0:
        return x
    return ops.stop_gradient(x) + (x - ops.stop_gradient(x)) * scale


def _num_replicas():
    """The replicas training in sync (1 outside `tf.distribute`)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def _stateless_uniform(shape, seed, step):
    """Uniform `[0, 1)` floats, a pure function of `(seed, step)`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        key = tf.stack([tf.constant(seed, tf.int32), tf.cast(step, tf.int32)])
        return tf.random.stateless_uniform(shape, key)
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.uniform(key, shape)
    raise ValueError(
        f"CRD draws its negatives with TensorFlow's or JAX's stateless random "
        f"ops, not {backend}'s: use the tensorflow or jax backend."
    )
