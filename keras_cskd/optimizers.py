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


# Keras optimizer arguments DOT refuses: each transforms one gradient, and DOT
# gets two whose combination these would not define.
_ONE_GRADIENT_ARGUMENTS = (
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "gradient_accumulation_steps",
)


@keras.saving.register_keras_serializable(package="keras_cskd")
class DOT(keras.optimizers.Optimizer):
    """DOT, the Distillation-Oriented Trainer (Zhao et al., ICCV 2023).

    SGD with two momentum buffers per variable: one for the task
    (cross-entropy) gradient, with `momentum - delta`, and one for the
    distillation gradient, with `momentum + delta`. It needs the two gradients
    apart, so it declares `takes_split_gradients`; `keras_cskd.Distiller`
    then differentiates its two sides separately and calls `apply_split`.
    With `as_mdistiller=True` (the default) it computes what mdistiller's
    `DistillationOrientedTrainer` (`engine/dot.py` @ a08d46f) computes, for
    `w` with task gradient `g` and distillation gradient `h`:

    ```
    b = m_task * b + g + weight_decay * w   # m_mid if w has no h
    w = w - learning_rate * b
    c = m_kd * c + h                        # m_mid and + weight_decay * w
    w = w - learning_rate * c               #   if w has no g, after step 1
    ```

    with `m_mid = momentum` (the mean of the two) and both buffers equal to
    their first gradient at the first step (PyTorch's rule). With
    `as_mdistiller=False` (the clean variant) every variable gets
    `weight_decay * w` in its task gradient from the first step, and each
    buffer keeps its own momentum whatever gradients a variable has.
    docs/reproducing.md lists the differences. On JAX every variable has both
    gradients (zeros where a loss does not reach it), so the branches for a
    missing gradient apply on TensorFlow and PyTorch only.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules` schedule.
        momentum: the SGD momentum the two momenta straddle.
        delta: the gap: the task momentum is `momentum - delta`, the
            distillation momentum `momentum + delta` (mdistiller's
            `SOLVER.DOT.DELTA`, 0.075).
        weight_decay: PyTorch's coupled L2 coefficient (see above).
        as_mdistiller: reproduce the reference's rules (True) or the clean
            variant (False).
        name: the optimizer's name.
        **kwargs: other `keras.optimizers.Optimizer` arguments
            (`loss_scale_factor`); clipping, EMA and gradient accumulation
            are refused.

    Example (`distiller.compile(optimizer=DOT(0.05, weight_decay=5e-4))` for
    a `keras_cskd.Distiller`; one step by hand):

    >>> import keras
    >>> optimizer = DOT(0.1, momentum=0.9, delta=0.075)
    >>> weights = keras.Variable([1.0, 2.0])
    >>> optimizer.apply_split([keras.ops.ones(2)], [keras.ops.ones(2)], [weights])
    >>> [round(float(w), 4) for w in keras.ops.convert_to_numpy(weights)]
    [0.8, 1.8]
    """

    # Read by keras_cskd.Distiller: train with `apply_split`.
    takes_split_gradients = True

    def __init__(
        self,
        learning_rate=0.05,
        momentum=0.9,
        delta=0.075,
        weight_decay=0.0,
        as_mdistiller=True,
        name="dot",
        **kwargs,
    ):
        for argument in _ONE_GRADIENT_ARGUMENTS:
            if kwargs.get(argument):
                raise ValueError(
                    f"DOT does not take `{argument}`: it applies two gradients "
                    "per variable, and the argument is defined for one."
                )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        delta = non_negative_number("delta", delta)
        if not 0 <= momentum - delta <= momentum + delta < 1:
            raise ValueError(
                "DOT's momenta `momentum - delta` and `momentum + delta` must be "
                f"in [0, 1), got momentum={momentum}, delta={delta}."
            )
        self.momentum, self.delta = float(momentum), delta
        # Not `self.weight_decay`: the base class would also apply it, decoupled.
        self.coupled_weight_decay = non_negative_number("weight_decay", weight_decay)
        self.as_mdistiller = bool(as_mdistiller)

    @property
    def task_momentum(self):
        return self.momentum - self.delta

    @property
    def distillation_momentum(self):
        return self.momentum + self.delta

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.task_momentums, self.distillation_momentums = (
            [self.add_variable_from_reference(v, name) for v in variables]
            for name in ("task_momentum", "distillation_momentum")
        )

    def apply(self, grads, trainable_variables=None):
        raise ValueError(
            "DOT takes the task and the distillation gradients apart: train it "
            "with keras_cskd.Distiller (not under a mixed_float16 loss-scale "
            "optimizer), or call apply_split(task_gradients, "
            "distillation_gradients, variables)."
        )

    def apply_split(
        self, task_gradients, distillation_gradients, trainable_variables=None
    ):
        """One step from both gradients of each variable (`None`: it has none).

        Under `tf.distribute` each list is summed over the replicas first, as
        Keras sums the one gradient of other optimizers.
        """
        variables = self._built_variables(trainable_variables)
        if not len(task_gradients) == len(distillation_gradients) == len(variables):
            raise ValueError(
                f"DOT got {len(task_gradients)} task and {len(distillation_gradients)} "
                f"distillation gradients for {len(variables)} variables."
            )
        with keras.name_scope(self.name, caller=self):
            scale = self.loss_scale_factor
            task_gradients, distillation_gradients = (
                [g if g is None or scale is None else g / scale for g in gradients]
                for gradients in (task_gradients, distillation_gradients)
            )
            self._update_variables(task_gradients, distillation_gradients, variables)
            for variable in variables:
                if variable.constraint is not None:
                    variable.assign(variable.constraint(variable))
        self._iterations.assign_add(1)

    def stateless_apply_split(
        self, optimizer_variables, task_gradients, distillation_gradients, values
    ):
        """`apply_split` on values (JAX's stateless train step): returns the
        new trainable values and optimizer variables, as `stateless_apply`."""
        mapping = list(zip(self._trainable_variables, values, strict=True))
        mapping += list(zip(self.variables, optimizer_variables, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self.apply_split(task_gradients, distillation_gradients)
        return (
            [scope.get_current_value(v) for v in self._trainable_variables],
            [scope.get_current_value(v) for v in self.variables],
        )

    def _built_variables(self, trainable_variables):
        if trainable_variables is None:
            if not self.built:
                raise ValueError("Build DOT first: optimizer.build(variables).")
            return self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        self._check_variables_are_known(trainable_variables)
        return trainable_variables

    def _update_variables(self, task_gradients, distillation_gradients, variables):
        learning_rate = self.learning_rate
        if keras.backend.backend() != "tensorflow":
            for variable, task, distillation in zip(
                variables, task_gradients, distillation_gradients, strict=True
            ):
                self._update_variable(variable, task, distillation, learning_rate)
            return
        import tensorflow as tf  # tf.distribute: sum over replicas, then update

        reduced = _sum_over_replicas([*task_gradients, *distillation_gradients])
        task, distillation = reduced[: len(variables)], reduced[len(variables) :]
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_update,
            self._distribution_strategy,
            [getattr(v, "value", v) for v in variables],  # tf.Variables
            task,
            distillation,
            learning_rate,
        )

    def _distributed_update(
        self, distribution, variables, task_gradients, distillation_gradients, rate
    ):
        """Updates each variable on its devices (`tf.distribute`'s merge step)."""
        for variable, task, distillation in zip(
            variables, task_gradients, distillation_gradients, strict=True
        ):
            distribution.extended.update(
                variable,
                self._update_variable,
                args=(task, distillation, rate),
                group=False,
            )

    def _update_variable(self, variable, task, distillation, learning_rate):
        """Both halves of the step for one variable (`None`: no gradient)."""
        learning_rate = ops.cast(learning_rate, variable.dtype)
        index = self._get_variable_index(variable)
        decay = self.coupled_weight_decay
        reference = self.as_mdistiller
        has_task, has_distillation = task is not None, distillation is not None
        task_momentum = self.task_momentum
        distillation_momentum = self.distillation_momentum
        if reference:
            # A variable that lacks the other gradient gets the mean of the
            # two momenta (engine/dot.py:39, :54); the clean variant keeps its own.
            task_momentum = task_momentum if has_distillation else self.momentum
            distillation_momentum = distillation_momentum if has_task else self.momentum
        elif not has_task and decay:
            task, has_task = ops.zeros_like(variable), True  # decay only
        if has_task:
            task = ops.cast(task, variable.dtype) + decay * variable
            buffer = self.task_momentums[index]
            self.assign(buffer, task_momentum * buffer + task)
            self.assign_sub(variable, learning_rate * buffer)
        if has_distillation:
            distillation = ops.cast(distillation, variable.dtype)
            if reference and not has_task and decay:
                # Decay on a distillation-only variable, except at the first
                # step, where the reference clones the gradient (dot.py:46-54).
                distillation = ops.where(
                    ops.equal(self.iterations, 0),
                    distillation,
                    distillation + decay * variable,
                )
            buffer = self.distillation_momentums[index]
            self.assign(buffer, distillation_momentum * buffer + distillation)
            self.assign_sub(variable, learning_rate * buffer)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "delta": self.delta,
                "weight_decay": self.coupled_weight_decay,
                "as_mdistiller": self.as_mdistiller,
            }
        )
        return config


def _sum_over_replicas(gradients):
    """`gradients` summed over the replicas of the `tf.distribute` strategy in
    one all-reduce, as Keras sums them for one gradient (`None` stays)."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    present = [g for g in gradients if g is not None]
    if context is None or not present:  # cross-replica context: nothing to sum
        return list(gradients)
    reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
    return [None if g is None else next(reduced) for g in gradients]
