"""BatchNorm over a fixed group of images of the global batch, on any devices.

`GroupBatchNormalization` normalises each image in training with the mean and
(biased) variance of its group: the `group_size` consecutive images of the
global batch it belongs to (the whole global batch when `group_size` is
`None`), whatever the number of replicas holding them. A group inside one
replica's shard is a ghost batch; a group spanning replicas is summed across
them with two passes (mean, then squared deviations from it), never as
`E[x^2] - E[x]^2`. The moving statistics follow the first group of the global
batch, as PyTorch's `DataParallel` keeps device 0's and DDP broadcasts rank
0's (docs/distributed.md).

Gradients are exact under `tf.distribute`: a replica's loss is differentiated
through its own outputs; the gradient of `all_gather` is the cross-replica sum
of the upstream gradients, so each replica's activations receive the gradient
of every output in their group through the group's mean and variance, once.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cskd")
class GroupBatchNormalization(keras.layers.BatchNormalization):
    """`BatchNormalization` whose training statistics are over groups of images.

    Args:
        group_size: images per statistics group: consecutive images of the
            global batch (replica 0's shard first), the last group of a batch
            that it does not divide being smaller. `None` (default): the whole
            global batch, which is one device's behaviour on any device count.
            A PyTorch run on G GPUs at B images per GPU is `group_size=B`.
        unbiased_moving_variance: update the moving variance with the
            unbiased variance of the first group, `var * n / (n - 1)`
            (PyTorch's `running_var`), instead of the biased one (Keras's).
        **kwargs: `keras.layers.BatchNormalization` arguments, but not
            `synchronized=True`, which `group_size` replaces.

    Inference, `renorm` and masked inputs are plain `BatchNormalization`.

    Example:

    >>> import numpy as np
    >>> x = np.arange(4.0).reshape(4, 1, 1, 1)
    >>> bn = GroupBatchNormalization(group_size=2, center=False, scale=False)
    >>> np.round(np.ravel(bn(x, training=True)), 2)  # groups [0, 1] and [2, 3]
    array([-1.,  1., -1.,  1.]...)
    """

    def __init__(self, group_size=None, unbiased_moving_variance=False, **kwargs):
        if kwargs.pop("synchronized", False):
            raise ValueError(
                f"{type(self).__name__} does not take synchronized=True: its "
                "statistics are over `group_size` images of the global batch on "
                "any number of replicas (group_size=None: the whole global batch)."
            )
        super().__init__(**kwargs)
        if group_size is not None and (
            not isinstance(group_size, int) or group_size < 1
        ):
            raise ValueError(
                f"group_size must be a positive number of images or None (the "
                f"global batch), got {group_size!r}."
            )
        self.group_size = group_size
        self.unbiased_moving_variance = unbiased_moving_variance

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axis = self.axis % len(x.shape)
        if axis == 0:
            raise ValueError(
                "GroupBatchNormalization needs a channel axis other than 0."
            )
        statistics = group_moments(x, axis, self.group_size)
        self._update_moving_statistics(*statistics.first_group)
        if len(statistics.mean.shape) == 1:  # one group: Keras's own arithmetic
            return ops.cast(self._normalized(x, statistics), self.compute_dtype)
        inverse = ops.rsqrt(statistics.variance + self.epsilon)
        shape = [1] * len(x.shape)
        shape[axis] = x.shape[axis]
        if self.scale:
            inverse = inverse * ops.reshape(ops.cast(self.gamma, x.dtype), shape)
        outputs = (x - statistics.mean) * inverse
        if self.center:
            outputs = outputs + ops.reshape(ops.cast(self.beta, x.dtype), shape)
        return ops.cast(outputs, self.compute_dtype)

    def _normalized(self, x, statistics):
        return ops.batch_normalization(
            x,
            statistics.mean,
            statistics.variance,
            axis=self.axis,
            offset=ops.cast(self.beta, x.dtype) if self.center else None,
            scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )

    def _update_moving_statistics(self, mean, variance, count):
        if self.unbiased_moving_variance:
            variance = variance * count / ops.maximum(count - 1.0, 1.0)
        momentum = self.momentum
        for moving, value in (
            (self.moving_mean, mean),
            (self.moving_variance, variance),
        ):
            moving.assign(
                ops.cast(moving, value.dtype) * momentum + value * (1.0 - momentum)
            )

    def get_config(self):
        config = super().get_config()
        config.pop("synchronized", None)
        return {
            **config,
            "group_size": self.group_size,
            "unbiased_moving_variance": self.unbiased_moving_variance,
        }


@keras.saving.register_keras_serializable(package="keras_cskd")
class TorchBatchNormalization(GroupBatchNormalization):
    """`GroupBatchNormalization` with PyTorch's `BatchNorm2d` semantics.

    PyTorch normalises a training batch with its biased variance, as Keras
    does, but updates `running_var` with the unbiased one, `var * n / (n - 1)`,
    `n` being the values per channel in the batch (here: in the first group).
    The defaults are PyTorch's: `momentum=0.1` there is `momentum=0.9` here,
    `eps=1e-5`.

    Example:

    >>> import numpy as np
    >>> bn = TorchBatchNormalization()
    >>> _ = bn(np.ones((2, 4, 4, 8)) + np.arange(2)[:, None, None, None], training=True)
    >>> float(bn.moving_variance[0])  # 0.9 * 1 + 0.1 * 0.25 * 32 / 31
    0.9258...
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, **kwargs):
        kwargs.setdefault("unbiased_moving_variance", True)
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)


class GroupMoments:
    """Per-image group statistics (`mean`, `variance`, broadcastable to the
    local inputs; per channel, shape `[C]`, where the group is the whole
    batch on one array) and the first group's `(mean, variance, count)`."""

    def __init__(self, mean, variance, first_group):
        self.mean, self.variance, self.first_group = mean, variance, first_group


def group_moments(x, axis, group_size):
    """The mean and biased variance of each image's group, in two passes.

    Args:
        x: this replica's (or the device's) float inputs, batch axis first.
        axis: the channel axis (not 0).
        group_size: images per group, or `None` for the global batch.

    Returns:
        A `GroupMoments`.

    Example:

    >>> import numpy as np
    >>> x = np.array([0.0, 2.0, 4.0, 8.0]).reshape(4, 1)
    >>> moments = group_moments(ops.convert_to_tensor(x), 1, group_size=2)
    >>> np.ravel(moments.variance).tolist()
    [1.0, 1.0, 4.0, 4.0]
    """
    shard = x.shape[0]
    # Whole groups in every shard (replicas share static shapes): ghost
    # batches, with no communication but for the moving statistics.
    gather = _ReplicaGather.current(
        local=bool(group_size and shard and shard % group_size == 0)
    )
    image_axes = [a for a in range(1, len(x.shape)) if a != axis]
    values_per_image = math.prod(x.shape[a] for a in image_axes)
    broadcast = [-1 if a in (0, axis) else 1 for a in range(len(x.shape))]
    broadcast[axis] = x.shape[axis]

    def per_image(rows):  # [batch, channels] -> broadcastable to x
        return ops.reshape(rows, broadcast)

    def image_sums(values):  # -> [batch, channels]
        return ops.sum(values, axis=image_axes) if image_axes else values

    if group_size is None and gather.context is None:
        return _batch_moments(x, axis, values_per_image)
    sums = gather.rows(image_sums(x))
    counts = ops.full((ops.shape(sums)[0], 1), values_per_image, dtype=x.dtype)
    counts = _group_sums(counts, group_size)
    mean = _group_sums(sums, group_size) / counts
    deviations = ops.square(x - per_image(gather.own(mean)))
    squares = gather.rows(image_sums(deviations))
    variance = _group_sums(squares, group_size) / counts
    return GroupMoments(
        per_image(gather.own(mean)),
        per_image(gather.own(variance)),
        gather.first_replicas((mean[0], variance[0], counts[0, 0])),
    )


def _batch_moments(x, axis, values_per_image):
    """One group, the whole batch on one array: `ops.moments`, whose float32
    sums are the ones a one-device run always had (and PyTorch's to 1e-5
    over three SGD steps, tests/test_reference_training.py)."""
    axes = [a for a in range(len(x.shape)) if a != axis]
    mean, variance = ops.moments(x, axes)
    count = ops.cast(ops.shape(x)[0] * values_per_image, x.dtype)
    return GroupMoments(mean, variance, (mean, variance, count))


def _group_sums(rows, group_size):
    """`rows` [batch, k] -> [batch, k]: each row is replaced by the sum of its
    group's rows (plain sums in a fixed order, so every replica and every
    device gets the same numbers; the batch may be of unknown size)."""
    if group_size is None:
        return ops.broadcast_to(ops.sum(rows, axis=0, keepdims=True), ops.shape(rows))
    batch = ops.shape(rows)[0]
    padded = ops.pad(rows, [[0, -batch % group_size], [0, 0]])
    grouped = ops.reshape(padded, (-1, group_size, rows.shape[1]))
    sums = ops.sum(grouped, axis=1, keepdims=True)
    spread = ops.broadcast_to(sums, ops.shape(grouped))
    return ops.reshape(spread, ops.shape(padded))[:batch]


class _ReplicaGather:
    """This replica's rows of the global batch (`tf.distribute`), or the
    identity where the batch is one array (one device, JAX, PyTorch) or the
    groups are `local` to each shard."""

    def __init__(self, context=None, local=False):
        self.context, self.local = context, local
        self._start = self._size = None

    @classmethod
    def current(cls, local=False):
        if keras.backend.backend() != "tensorflow":
            return cls()
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return cls()
        return cls(context, local)

    def first_replicas(self, values):
        """Replica 0's `values` on every replica (shard-local groups), so
        that every copy of the moving statistics gets the same update."""
        if self.context is None or not self.local:
            return values
        import tensorflow as tf

        first = ops.cast(ops.equal(self.context.replica_id_in_sync_group, 0), "float32")
        return self.context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [ops.stop_gradient(v) * ops.cast(first, v.dtype) for v in values],
        )

    def rows(self, local):
        """All replicas' `local` rows [shard, k], in replica order."""
        if self.context is None or self.local:
            return local
        import tensorflow as tf

        replica = ops.cast(self.context.replica_id_in_sync_group, local.dtype)
        tagged = ops.concatenate(
            [local, ops.full((ops.shape(local)[0], 1), replica)], 1
        )
        gathered = self.context.all_gather(tagged, axis=0)
        if self._start is None:
            self._size = tf.shape(local)[0]
            self._start = ops.sum(ops.cast(gathered[:, -1] < replica, "int32"))
        return ops.reshape(gathered[:, :-1], (-1, local.shape[1]))

    def own(self, rows):
        """This replica's part of global `rows`."""
        if self.context is None or self.local:
            return rows
        return rows[self._start : self._start + self._size]
