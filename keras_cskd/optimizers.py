"""The reference recipes' optimizer and learning-rate schedule, as PyTorch runs them.

The papers' CIFAR and ImageNet recipes (mdistiller and the frameworks built on it)
train with `torch.optim.SGD(params, lr, momentum=0.9, weight_decay=5e-4)` and set
the learning rate at the start of every epoch. Keras's `SGD` differs in both
respects that matter for reproducing them: its `weight_decay` is decoupled (applied
to the weights, outside the momentum), and its momentum accumulates `lr * g`, so
the step after a learning-rate drop still carries the old rate. `TorchSGD` and
`EpochStepDecay` compute exactly what the reference computes.
"""

import keras
from keras import ops

from keras_cskd.checks import non_negative_number


@keras.saving.register_keras_serializable(package="keras_cskd")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD as `torch.optim.SGD` computes it: coupled L2 decay, then momentum.

    For every trainable variable `w` with gradient `g`:

    ```
    g = g + weight_decay * w        # every parameter: kernels, biases, BN
    b = momentum * b + g            # the momentum buffer (first step: b = g)
    w = w - learning_rate * b
    ```

    With a constant learning rate this equals `keras.optimizers.SGD` without
    weight decay; with weight decay or a changing rate it does not (Keras
    decays the weights outside the momentum and keeps `lr * g` in its buffer).

    Args:
        learning_rate: a float or a `keras.optimizers.schedules` schedule.
        momentum: the momentum factor, in [0, 1).
        weight_decay: the L2 coefficient added to the gradient (PyTorch's
            `weight_decay`; *not* Keras's decoupled weight decay).
        name: the optimizer's name.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `loss_scale_factor`, ...), except `weight_decay` semantics above.

    Example:

    >>> optimizer = TorchSGD(0.05, momentum=0.9, weight_decay=5e-4)
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        weight_decay=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}.")
        self.momentum = float(momentum)
        # Not `self.weight_decay`: the base class would also apply it, decoupled.
        self.coupled_weight_decay = non_negative_number("weight_decay", weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [
            self.add_variable_from_reference(variable, "momentum")
            for variable in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay:
            gradient = gradient + self.coupled_weight_decay * variable
        if self.momentum:
            buffer = self.momentums[self._get_variable_index(variable)]
            self.assign(buffer, self.momentum * buffer + gradient)
            gradient = buffer
        self.assign_sub(variable, learning_rate * gradient)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "weight_decay": self.coupled_weight_decay}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_cskd")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A step decay that changes only at epoch starts, as mdistiller sets it.

    At every step of the 1-based epoch `e` the rate is
    `learning_rate * decay_rate ** (number of milestones m with e > m)`: with
    milestones `(150, 180, 210)` epoch 151 is the first at a tenth of the rate.
    (mdistiller's `adjust_learning_rate`, called at the start of each epoch.)

    Args:
        learning_rate: the initial rate.
        steps_per_epoch: optimizer steps in one epoch.
        milestones: the epochs after which the rate decays.
        decay_rate: the factor applied at each milestone.

    Example:

    >>> schedule = EpochStepDecay(0.05, steps_per_epoch=782, milestones=(150, 180, 210))
    >>> round(float(schedule(150 * 782)), 6)   # the first step of epoch 151
    0.005
    """

    def __init__(self, learning_rate, steps_per_epoch, milestones, decay_rate=0.1):
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1, got {steps_per_epoch}.")
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.milestones = tuple(int(m) for m in milestones)
        self.decay_rate = float(decay_rate)
        # Each rate computed once in float64, so every epoch's value is exactly
        # the reference's, rounded once to float32.
        self._rates = [
            self.learning_rate * self.decay_rate**i
            for i in range(len(self.milestones) + 1)
        ]

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int32"), self.steps_per_epoch) + 1
        milestones = ops.convert_to_tensor(self.milestones, "int32")
        passed = ops.sum(ops.cast(ops.greater(epoch, milestones), "int32"))
        return ops.take(ops.convert_to_tensor(self._rates, "float32"), passed)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "milestones": self.milestones,
            "decay_rate": self.decay_rate,
        }
