"""`LogitLoss`: the base class of the losses between teacher and student logits."""

import keras
from keras import ops

from keras_cskd.checks import positive_number
from keras_cskd.losses.cswt import CSWT
from keras_cskd.losses.distillation_loss import DistillationLoss

# Added to the standard deviation by logit standardisation (LS-KD's epsilon,
# lskd_KD.py `normalize`).
STD_EPSILON = 1e-7


def standardized_logits(logits):
    """Z-scores each row: `(z - mean) / (std + 1e-7)`, over the class axis.

    This is LS-KD's logit standardisation (Sun et al., 2024), the one place
    every loss with `standardize=True` (and `LSKD`) takes it from. `std` is
    the *sample* standard deviation (ddof=1, as `torch.std`). The variance is
    floored at 1e-30 before the square root so that the std of a row of equal
    logits has a zero, not a NaN, gradient, as `torch.std`'s backward; the row
    standardises to 0 and its gradient is finite (1e7 times the softmax's, as
    the reference's). The floor changes the value by less than 1e-8 relative.
    With a single class the denominator `C - 1` is taken as 1.

    Example:

    >>> logits = keras.ops.convert_to_tensor([[1.0, 2.0, 3.0]])
    >>> keras.ops.convert_to_numpy(standardized_logits(logits)).round(4).tolist()
    [[-1.0, 0.0, 1.0]]
    """
    num_classes = ops.cast(ops.shape(logits)[-1], logits.dtype)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    variance = ops.sum(ops.square(centred), axis=-1, keepdims=True) / ops.maximum(
        num_classes - 1.0, 1.0
    )
    std = ops.sqrt(ops.maximum(variance, 1e-30))
    return centred / (std + STD_EPSILON)


def standardize_flag(value):
    """Returns `value` if it is a bool (a loss's `standardize` switch); raises
    `ValueError` otherwise, so that a string "False" is never taken as True.

    Example:

    >>> standardize_flag(True)
    True
    """
    if not isinstance(value, bool):
        raise ValueError(f"`standardize` must be True or False, got {value!r}.")
    return value


class LogitLoss(DistillationLoss):
    """Base class of the losses between teacher and student logits.

    Subclasses implement `call(teacher_logits, student_logits, labels=None,
    **kwargs)` on float32 logits `[B, C]`; this class casts the logits, stops
    the teacher's gradient and checks shapes. What the `Distiller` gives them
    is `DistillationLoss`'s interface. A subclass that takes LS-KD's switch
    (`KD`, `DKD`) stores `self.standardize`; when it is True, `compute_loss`
    z-scores both logits with `standardized_logits` before `call`, so the
    whole loss (a CSWT too) sees standardised logits while the cross-entropy,
    which the `Distiller` computes, keeps the raw ones. The losses that need
    no labels (`requires_labels = False`) also work in
    `keras.distillation.Distiller`, which passes none.

    Args:
        temperature: a positive float, or a `CSWT` for per-sample temperatures.
        global_batch: under `tf.distribute`, whether the `Distiller` computes
            this loss on the global batch (gathered from all replicas; the
            default, and what makes N devices compute one device's loss) or
            on each replica's shard (batch-wise terms then see 1/N of it).

    Example, a loss on the temperature-scaled logits (a float or a CSWT):

    >>> class LogitL1(LogitLoss):
    ...     def call(self, teacher_logits, student_logits, labels=None, **kwargs):
    ...         temperature, _ = self.temperatures(teacher_logits, student_logits)
    ...         scaled = (teacher_logits - student_logits) / temperature
    ...         return keras.ops.mean(keras.ops.abs(scaled))
    """

    # `temperature` may be a CSWT (a config's `loss.cswt=True` puts one there).
    cswt_argument = "temperature"
    # LS-KD's logit standardisation, off unless a subclass takes `standardize`.
    standardize = False

    def __init__(self, temperature=4.0, global_batch=True):
        if isinstance(temperature, dict):
            temperature = keras.saving.deserialize_keras_object(temperature)
        if not isinstance(temperature, CSWT):
            if isinstance(temperature, bool) or not isinstance(
                temperature, (int, float)
            ):
                raise ValueError(
                    f"`temperature` must be a positive number or a CSWT, got "
                    f"{temperature!r}."
                )
            temperature = positive_number("temperature", temperature)
        self.temperature = temperature
        self.global_batch = bool(global_batch)

    def temperatures(self, teacher_logits, student_logits, temperature=None):
        """Returns `(T, T_squared)`: a scalar or a per-sample column `[B, 1]`,
        and the factor that replaces `T^2` (`mean(T_i)^2` for CSWT)."""
        temperature = self.temperature if temperature is None else temperature
        if isinstance(temperature, CSWT):
            per_sample = temperature(teacher_logits, student_logits)
            return per_sample, ops.square(ops.mean(per_sample))
        return temperature, temperature**2

    def compute_loss(self, teacher_logits, student_logits, labels=None, **kwargs):
        """Returns the scalar loss between teacher and student logits.

        Args:
            teacher_logits: `[B, C]` teacher logits (no gradient flows to them).
            student_logits: `[B, C]` student logits.
            labels: integer labels `[B]` or one-hot/soft labels `[B, C]`, for
                the losses that use them.
            **kwargs: passed on to the loss (for example `epoch` for DKD).
        """
        if isinstance(teacher_logits, (list, tuple, dict)) or isinstance(
            student_logits, (list, tuple, dict)
        ):
            raise ValueError(
                f"{type(self).__name__} takes single logit tensors; the models "
                "must have one output of shape [batch, num_classes]."
            )
        teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        student_logits = ops.cast(student_logits, "float32")
        self.validate_outputs(teacher_logits, student_logits)
        if self.standardize:
            teacher_logits = standardized_logits(teacher_logits)
            student_logits = standardized_logits(student_logits)
        if self.requires_labels and labels is None:
            raise ValueError(f"{type(self).__name__} needs the labels: pass `labels=`.")
        return self.call(teacher_logits, student_logits, labels=labels, **kwargs)

    def call(self, teacher_logits, student_logits, labels=None, **kwargs):
        raise NotImplementedError

    def validate_outputs(self, teacher_outputs, student_outputs):
        teacher_shape = tuple(teacher_outputs.shape)
        student_shape = tuple(student_outputs.shape)
        if len(teacher_shape) != 2 or len(student_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} expects logits of shape [batch, classes]; "
                f"got teacher {teacher_shape} and student {student_shape}."
            )
        for teacher_dim, student_dim, what in zip(
            teacher_shape, student_shape, ("batch sizes", "class counts"), strict=True
        ):
            if None not in (teacher_dim, student_dim) and teacher_dim != student_dim:
                raise ValueError(
                    f"Teacher and student {what} differ: teacher logits "
                    f"{teacher_shape}, student logits {student_shape}. Build the "
                    "student with the teacher's number of classes."
                )

    def get_config(self):
        temperature = self.temperature
        if isinstance(temperature, CSWT):
            temperature = keras.saving.serialize_keras_object(temperature)
        return {"temperature": temperature, "global_batch": self.global_batch}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.get_config())
        return f"{type(self).__name__}({args})"
