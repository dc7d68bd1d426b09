"""CTKD: KD with a learnable temperature trained adversarially (Li et al., 2023)."""

import math
import numbers

import keras
from keras import ops

from keras_cskd.checks import non_negative_number, positive_number
from keras_cskd.losses.functional import kl_divergence_from_logits
from keras_cskd.losses.logit_loss import LogitLoss
from keras_cskd.losses.registry import register

# How the reversal weight lambda multiplies the temperature's gradient.
# "reference": by +lambda, as CTKD's code computes it (its lambda runs from 0
# down to -1, so the net effect is a reversal); "paper": by -lambda, as its
# docstring and the paper say (lambda from 0 up to 1 gives the same updates).
REVERSALS = {"reference": 1.0, "paper": -1.0}


def reverse_gradient(x, scale):
    """The identity forward; the gradient multiplied by `scale` backward.

    `stop_gradient(x) + scale * (x - stop_gradient(x))` is `x` exactly (the
    difference is 0) and has the derivative `scale`, in plain `keras.ops` on
    every backend.

    Example:

    >>> import keras
    >>> keras.ops.convert_to_numpy(reverse_gradient(keras.ops.ones((2,)), -0.5))
    array([1., 1.], dtype=float32)
    """
    frozen = ops.stop_gradient(x)
    return frozen + scale * (x - frozen)


def cosine_curriculum(epoch, start=0.0, end=-1.0, epochs=10):
    """CTKD's `CosineDecay.get_value`: `start` at epoch 0 to `end` at `epochs`.

    `end + (start - end) * (cos(pi * e / epochs) + 1) / 2`, `e` the epoch
    clipped to `[0, epochs]` (1-based in training: the first epoch is 1).

    Example:

    >>> round(cosine_curriculum(5), 6)
    -0.5
    """
    if isinstance(epoch, numbers.Real):  # Python's or NumPy's numbers
        clipped = min(max(float(epoch), 0.0), float(epochs))
        return end + (start - end) * (math.cos(math.pi * clipped / epochs) + 1.0) / 2
    clipped = ops.clip(ops.cast(epoch, "float32"), 0.0, float(epochs))
    cosine = ops.cos(math.pi * clipped / epochs)
    return end + (start - end) * (cosine + 1.0) / 2.0


@keras.saving.register_keras_serializable(package="keras_cskd")
class GlobalTemperature(keras.layers.Layer):
    """CTKD's learnable global temperature parameter (before its sigmoid).

    One trainable scalar `logit`, initialised to `initial_value` (CTKD's
    `Global_T`: `torch.ones(1)`). Called on a batch `[B, ...]` it returns the
    scalar as a column `[B, 1]`, one copy per row, so that the rows carry it
    through the `Distiller`'s cross-replica gather and its gradient, like the
    student's, comes from each replica's own rows (summed once over replicas).

    Example:

    >>> import keras
    >>> layer = GlobalTemperature()
    >>> tuple(layer(keras.ops.zeros((3, 10))).shape)
    (3, 1)
    """

    def __init__(self, initial_value=1.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)

    def build(self, input_shape=None):
        self.logit = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_value),
            trainable=True,
            name="temperature_logit",
        )

    def call(self, rows):
        return ops.zeros_like(rows[:, :1]) + self.logit

    def get_config(self):
        return {**super().get_config(), "initial_value": self.initial_value}


@register("ctkd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class CTKD(LogitLoss):
    """Curriculum temperature KD (Li et al., AAAI 2023), a global temperature.

    KD, `T^2 * mean_i KL(softmax(zt / T) || softmax(zs / T))`, at a learnable
    temperature `T = min_temperature + temperature_range * sigmoid(w)`, `w` a
    trainable scalar (`GlobalTemperature`) that the Distiller's optimizer
    updates with the student. `w` is trained adversarially: its gradient goes
    through a gradient reversal that multiplies it by `sign * lambda(epoch)`,
    `lambda` a cosine curriculum (`cosine_curriculum`) from `lambda_start` at
    epoch 0 to `lambda_end` at `lambda_epochs`, and `sign` +1 for
    `reversal="reference"` (CTKD's code) or -1 for `"paper"`. The student's
    gradient is KD's at the current `T`.

    CTKD's code multiplies by `+lambda` (its docstring says `-lambda`) with
    `lambda` running from 0 to -1: the net effect is a reversal that grows
    from 0 to 1, so `T` ascends the loss the student descends. `"paper"` with
    `lambda_end=1` (its default there) is the same update written as the
    paper writes it. docs/reproducing.md has the details.

    The temperature's weight lives in the loss's `layers`: the Distiller
    trains it, saves it in its checkpoints and never exports it with the
    student. (`keras.distillation.Distiller` trains no loss weights: use
    `keras_cskd.Distiller`.)

    Args:
        min_temperature: the lowest temperature (CTKD's `--t_start`, 1).
        temperature_range: the temperature's range above it (CTKD's
            `--t_end`, 20: `T` in (1, 21)).
        initial_logit: `w`'s initial value (1: `T` starts at 15.62).
        lambda_start: `lambda` at epoch 0 (CTKD's `--decay_max`, 0).
        lambda_end: `lambda` from `lambda_epochs` on (CTKD's `--decay_min`,
            -1); `None` for the reversal's default, -1 ("reference") or 1
            ("paper").
        lambda_epochs: the curriculum's length (CTKD's `--decay_loops`, 10).
        reversal: "reference" (gradient times `+lambda`) or "paper" (times
            `-lambda`).

    `compute_loss` takes `epoch=`, the 1-based epoch (the Distiller passes
    it); without it `lambda` is `lambda_end`.

    Example:

    >>> import keras
    >>> loss = CTKD()
    >>> teacher = keras.ops.convert_to_tensor([[2.0, 0.0, -1.0]])
    >>> student = keras.ops.convert_to_tensor([[1.0, 0.5, 0.0]])
    >>> float(loss.compute_loss(teacher, student, epoch=1)) > 0
    True
    """

    cswt_argument = None
    uses_epoch = True

    def __init__(
        self,
        min_temperature=1.0,
        temperature_range=20.0,
        initial_logit=1.0,
        lambda_start=0.0,
        lambda_end=None,
        lambda_epochs=10,
        reversal="reference",
    ):
        # Not LogitLoss's __init__: there is no fixed temperature to store.
        self.global_batch = True
        if reversal not in REVERSALS:
            raise ValueError(
                f"`reversal` must be one of {', '.join(REVERSALS)}, got {reversal!r}."
            )
        self.reversal = reversal
        self.min_temperature = positive_number("min_temperature", min_temperature)
        self.temperature_range = non_negative_number(
            "temperature_range", temperature_range
        )
        self.initial_logit = float(initial_logit)
        self.lambda_start = float(lambda_start)
        default_end = -REVERSALS[reversal]
        self.lambda_end = float(default_end if lambda_end is None else lambda_end)
        self.lambda_epochs = positive_number("lambda_epochs", lambda_epochs)
        self._temperature_layer = None

    @property
    def layers(self):
        """`[GlobalTemperature]` once built."""
        return [] if self._temperature_layer is None else [self._temperature_layer]

    def build(self, teacher_shape=None, student_shape=None):
        """Creates the temperature's weight (the Distiller calls it once)."""
        if self._temperature_layer is None:
            layer = GlobalTemperature(self.initial_logit, name="ctkd_temperature")
            layer.build()
            self._temperature_layer = layer

    def reversal_weight(self, epoch):
        """`lambda(epoch)`: the curriculum's value at the 1-based `epoch`."""
        if epoch is None:
            return self.lambda_end
        return cosine_curriculum(
            epoch, self.lambda_start, self.lambda_end, self.lambda_epochs
        )

    def current_temperature(self, logit=None):
        """`min_temperature + temperature_range * sigmoid(w)` (now, by default)."""
        logit = self._temperature_layer.logit if logit is None else logit
        return self.min_temperature + self.temperature_range * ops.sigmoid(logit)

    def project_student(self, student_outputs, training=False):
        """The student logits with the temperature's column appended, `[B, C+1]`."""
        self.build()
        student_logits = ops.cast(student_outputs, "float32")
        column = self._temperature_layer(student_logits)
        return ops.concatenate([student_logits, column], axis=-1)

    def compute_loss(self, teacher_logits, student_logits, labels=None, **kwargs):
        return self.compare(
            teacher_logits, self.project_student(student_logits), labels, **kwargs
        )

    def compare(self, teacher_outputs, projected, labels=None, epoch=None, **kwargs):
        """The loss from the teacher logits and `project_student`'s output."""
        student_logits, column = projected[:, :-1], projected[:, -1:]
        scale = REVERSALS[self.reversal] * self.reversal_weight(epoch)
        column = reverse_gradient(column, scale)
        # The value of one row, the gradient of the mean: each replica's rows
        # (their share of the batch) carry their share of the gradient.
        mean = ops.mean(column)
        logit = ops.stop_gradient(column[0, 0]) + mean - ops.stop_gradient(mean)
        return super().compute_loss(
            teacher_outputs,
            student_logits,
            labels,
            temperature=self.current_temperature(logit),
        )

    def call(self, teacher_logits, student_logits, labels=None, temperature=None, **_):
        return ops.square(temperature) * kl_divergence_from_logits(
            teacher_logits, student_logits, temperature
        )

    def get_config(self):
        return {
            "min_temperature": self.min_temperature,
            "temperature_range": self.temperature_range,
            "initial_logit": self.initial_logit,
            "lambda_start": self.lambda_start,
            "lambda_end": self.lambda_end,
            "lambda_epochs": self.lambda_epochs,
            "reversal": self.reversal,
        }
