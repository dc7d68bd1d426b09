"""BatchNorm that keeps PyTorch's running statistics (unbiased moving variance)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_cskd")
class TorchBatchNormalization(keras.layers.BatchNormalization):
    """`BatchNormalization` whose moving variance tracks the unbiased batch variance.

    PyTorch's `BatchNorm2d` normalizes a training batch with its biased variance,
    as Keras does, but updates `running_var` with the unbiased one, `var * n /
    (n - 1)`, `n` being the values per channel in the batch (the global batch
    when `synchronized=True`). This layer does the same; inference, `renorm` and
    masked inputs are plain `keras.layers.BatchNormalization`. The defaults are
    PyTorch's: `momentum=0.1` there is `momentum=0.9` here, `eps=1e-5`.

    Example:

    >>> bn = TorchBatchNormalization()
    >>> _ = bn(np.ones((2, 4, 4, 8)) + np.arange(2)[:, None, None, None], training=True)
    >>> float(bn.moving_variance[0])  # 0.9 * 1 + 0.1 * 0.25 * 32 / 31
    0.9258...
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, **kwargs):
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or self.renorm or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axis = self.axis % len(x.shape)
        axes = [a for a in range(len(x.shape)) if a != axis]
        mean, variance = ops.moments(x, axes, synchronized=self.synchronized)
        count = ops.cast(ops.size(x) // x.shape[axis], x.dtype)
        # Keras refuses `synchronized=True` on JAX and PyTorch, so TensorFlow is
        # only imported on its own backend: sum the count over the replicas.
        if self.synchronized:
            import tensorflow as tf

            replica = tf.distribute.get_replica_context()
            if replica is not None:
                count = replica.all_reduce(tf.distribute.ReduceOp.SUM, count)
        unbiased = variance * count / ops.maximum(count - 1.0, 1.0)
        momentum = self.momentum
        self.moving_mean.assign(
            ops.cast(self.moving_mean, x.dtype) * momentum + mean * (1.0 - momentum)
        )
        self.moving_variance.assign(
            ops.cast(self.moving_variance, x.dtype) * momentum
            + unbiased * (1.0 - momentum)
        )
        outputs = ops.batch_normalization(
            x,
            mean,
            variance,
            axis=self.axis,
            offset=ops.cast(self.beta, x.dtype) if self.center else None,
            scale=ops.cast(self.gamma, x.dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)
