"""A train step that differentiates the task and the distillation losses apart.

An optimizer with `takes_split_gradients = True` (`keras_cskd.optimizers.DOT`)
updates each variable from its task (cross-entropy) gradient and its
distillation gradient separately, so one gradient of the summed loss, which
Keras's own train step computes, does not serve it. `keras_cskd.Distiller`
then trains with `train_step` here: one forward pass, the model's
`compute_split_loss` (the two sides of `compute_loss`), a gradient of each,
and the optimizer's `apply_split`. On TensorFlow a persistent tape gives both
gradients (`None` for a variable a side does not reach) and the optimizer sums
each over the replicas of a `tf.distribute` strategy; on PyTorch two
`torch.autograd.grad` calls (`None` likewise); on JAX one `jax.vjp` pulled back
twice (zeros, never `None`), stateless as Keras's JAX step, so `jit` and
`keras.distribution.DataParallel` work as for any model.
"""

import keras


def takes_split_gradients(optimizer):
    """Whether `optimizer` needs the task and distillation gradients apart.

    Example:

    >>> takes_split_gradients(keras.optimizers.SGD())
    False
    """
    return bool(getattr(optimizer, "takes_split_gradients", False))


def train_step(model, *args):
    """`model.train_step(*args)` with split gradients, on the current backend.

    Args:
        model: a compiled model with `compute_split_loss(x, y, y_pred,
            sample_weight, training)` returning `(task_loss,
            distillation_loss)`, and an optimizer with `apply_split`.
        *args: what Keras passes to `train_step`: `(data,)`, or on JAX
            `(state, data)`.

    Returns:
        What Keras's `train_step` returns: the logs (and on JAX the new state).
    """
    backend = keras.backend.backend()
    steps = {"tensorflow": _tensorflow_step, "torch": _torch_step, "jax": _jax_step}
    if backend not in steps:
        raise ValueError(
            f"Split gradients (DOT) run on tensorflow, jax and torch, not on "
            f"the {backend} backend: set KERAS_BACKEND to one of those."
        )
    return steps[backend](model, *args)


def _scaled(model, losses):
    return [model.optimizer.scale_loss(loss) for loss in losses]


def _tensorflow_step(model, data):
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        losses = model.compute_split_loss(x, y, y_pred, sample_weight, training=True)
        task_loss, distillation_loss = _scaled(model, losses)
    variables = model.trainable_weights
    task_gradients = tape.gradient(task_loss, variables)
    distillation_gradients = tape.gradient(distillation_loss, variables)
    del tape
    model.optimizer.apply_split(task_gradients, distillation_gradients, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _torch_step(model, data):
    import torch

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=True)
    losses = model.compute_split_loss(x, y, y_pred, sample_weight, training=True)
    task_loss, distillation_loss = _scaled(model, losses)
    variables = model.trainable_weights[:]
    tensors = [variable.value for variable in variables]
    gradients = []
    for index, loss in enumerate((task_loss, distillation_loss)):
        if not loss.requires_grad:  # a side that reaches no variable
            gradients.append([None] * len(tensors))
            continue
        gradients.append(
            torch.autograd.grad(
                loss, tensors, retain_graph=index == 0, allow_unused=True
            )
        )
    with torch.no_grad():
        model.optimizer.apply_split(*gradients, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _jax_step(model, state, data):
    import jax
    import jax.numpy as jnp

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

    def split_losses(trainable):
        return _stateless_split_loss(
            model,
            trainable,
            non_trainable,
            metrics_variables,
            optimizer_variables,
            (x, y, sample_weight),
        )

    losses, pull_back, aux = jax.vjp(split_losses, trainable, has_aux=True)
    y_pred, non_trainable, metrics_variables = aux
    one, zero = jnp.ones_like(losses[0]), jnp.zeros_like(losses[0])
    (task_gradients,) = pull_back((one, zero))
    (distillation_gradients,) = pull_back((zero, one))
    trainable, optimizer_variables = model.optimizer.stateless_apply_split(
        optimizer_variables, task_gradients, distillation_gradients, trainable
    )
    logs, metrics_variables = _stateless_metrics(
        model, metrics_variables, (x, y, sample_weight), y_pred
    )
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _stateless_split_loss(
    model, trainable, non_trainable, metrics_variables, optimizer_variables, batch
):
    """`((task, distillation), (y_pred, non-trainable, metrics variables))`
    of the scaled losses on values, as Keras's `compute_loss_and_updates`."""
    x, y, sample_weight = batch
    y_pred, non_trainable, forward_losses = model.stateless_call(
        trainable, non_trainable, x, return_losses=True, training=True
    )
    # What Keras does so that `model.losses` in the loss reads the forward
    # pass's regularisation losses on these values.
    model._losses_override = forward_losses
    mapping = [
        *zip(model.trainable_variables, trainable, strict=True),
        *zip(model.non_trainable_variables, non_trainable, strict=True),
        *zip(model.metrics_variables, metrics_variables, strict=True),
    ]
    try:
        with keras.StatelessScope(state_mapping=mapping) as scope:
            losses = model.compute_split_loss(
                x, y, y_pred, sample_weight, training=True
            )
    finally:
        model._losses_override = []
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    metrics_variables = [scope.get_current_value(v) for v in model.metrics_variables]
    optimizer_mapping = list(
        zip(model.optimizer.variables, optimizer_variables, strict=True)
    )
    with keras.StatelessScope(state_mapping=optimizer_mapping):
        losses = tuple(_scaled(model, losses))
    return losses, (y_pred, non_trainable, metrics_variables)


def _stateless_metrics(model, metrics_variables, batch, y_pred):
    """`model.compute_metrics` on the metrics' values: (logs, new values)."""
    x, y, sample_weight = batch
    mapping = list(zip(model.metrics_variables, metrics_variables, strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.compute_metrics(x, y, y_pred, sample_weight)
    new_values = []
    for variable, value in zip(model.metrics_variables, metrics_variables, strict=True):
        current = scope.get_current_value(variable)
        new_values.append(value if current is None else current)
    return logs, new_values
