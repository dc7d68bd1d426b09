"""The stateless protocol of the random augmentation layers.

`keras_cskd.data.batching` makes every batch's randomness a pure function of
`(seed, epoch, step)` through it:

- A random augmentation has `layer.augment(images, seed)`: a `[B, H, W, C]`
  batch and an int32/int64 `[2]` seed in, the augmented batch out, drawing
  only from `seed` (`tf.random.stateless_*`; TensorFlow only, as `tf.data`).
- `layer(images, training=True)` draws a fresh seed from the layer's own
  `keras.random.SeedGenerator` (its constructor `seed`) and calls `augment`:
  for interactive use; `training=False` is the identity.
"""

import keras
import tensorflow as tf


def fold_in(seed, *data):
    """A stateless seed derived from `seed` and `data`, folded in one by one.

    Args:
        seed: an int32 or int64 `[2]` seed.
        *data: int scalars (Python or tensors), e.g. an epoch, a step, a view.

    Returns:
        An int64 `[2]` seed for `tf.random.stateless_*`: a pure function of
        `seed` and `data` (`tf.random.experimental.stateless_fold_in` chains).

    Example:

    >>> fold_in([0, 7], 3, 1).shape
    TensorShape([2])
    """
    seed = tf.cast(seed, tf.int64)
    for value in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


class StatelessAugmentation(keras.layers.Layer):
    """The base of the stateless random layers (see the module's protocol).

    Subclasses implement `augment(images, seed)`; `call` feeds it seeds from
    the layer's `keras.random.SeedGenerator`.

    Args:
        seed: the seed of the layer's generator (interactive use only:
            `augment` draws from its own argument alone), or `None`.
        **kwargs: base `keras.layers.Layer` arguments.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def augment(self, images, seed):
        """Augments a `[B, H, W, C]` batch, drawing only from the `[2]` seed."""
        raise NotImplementedError

    def call(self, images, training=True):
        if not training:
            return images
        return self.augment(images, self.seed_generator.next())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config
