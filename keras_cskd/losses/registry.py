"""The loss registry: each loss module registers its class by name.

A loss module decorates its class with `@register("name")`; importing the
module registers it (`keras_cskd.losses` imports its own). The `Distiller`,
`builders.build_loss` and `train.py` then find it by name.
"""

from keras_cskd.registry import Registry

LOSSES = Registry("distillation method")


def register(name):
    """Registers a distillation loss class under `name` (lower case).

    The class subclasses `keras_cskd.losses.DistillationLoss` and declares
    what it needs there (labels, the epoch, views, named layers, a CSWT,
    sample indices); configs name it as `loss.method`.

    Example:

    >>> from keras_cskd.losses import DistillationLoss
    >>> @register("logit_mse_example")
    ... class LogitMSE(DistillationLoss):
    ...     def compute_loss(self, teacher_logits, student_logits, **kwargs):
    ...         return keras.ops.mean(keras.ops.square(teacher_logits - student_logits))
    >>> keras_cskd.losses.get("logit_mse_example")
    <...LogitMSE object at ...>
    """
    return LOSSES.register(str(name).lower())


def names():
    """Returns the names `get` accepts, e.g. `["cskd", "kd"]`."""
    return LOSSES.names()


def get_class(name):
    """The loss class called `name` (case-insensitive), e.g. `KD` for "kd"."""
    return LOSSES.get(str(name).lower())


def get(name, **kwargs):
    """Builds a distillation loss by (case-insensitive) name.

    Example:

    >>> loss = keras_cskd.losses.get("kd", temperature=4.0)
    """
    return get_class(name)(**kwargs)
