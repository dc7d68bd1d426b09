"""FeatureDistillation: Keras's feature matching, with FitNets' regressor."""

import keras
from keras import ops

from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.registry import register

_REGRESSOR = "fitnets_regressor"


@register("feature_distillation")
@keras.saving.register_keras_serializable(package="keras_cskd")
class FeatureDistillation(DistillationLoss):
    """Matches a student layer's features to a teacher layer's (FitNets hints).

    `L = mean(loss(f_t, r(f_s)))`, with `f_t`, `f_s` the outputs of the named
    layers. With `regressor=False`, `r` is the identity and the value is that
    of `keras.distillation.FeatureDistillation` for the same inputs (with
    "mse", `mean_{b,h,w,c} (f_t - f_s)^2`). With `regressor=True`, the hint
    loss of FitNets (Romero et al., 2015): `r` is a trainable 1x1 `Conv2D`
    (features `[B, H, W, C]`) or `Dense` (features `[B, C]`) with the
    teacher's channel count, created by `build` and listed by `layers`.

    Compared with mdistiller's FitNet (whose value, `F.mse_loss`, is the
    "mse" mean above): its `ConvReg` adds BatchNorm and ReLU after the conv
    and resizes spatially (stride-2 conv, transposed conv or a larger
    kernel); ours is a plain linear 1x1 conv, the paper's regressor for equal
    spatial sizes, so the layers must have the same H and W. The paper also
    applies the hint layer's non-linearity to `r`'s output; we do not.
    Features are cast to float32; the teacher's get no gradient.

    Args:
        loss: a loss name ("mse", "mae", "cosine_similarity", ...), a
            `keras.losses.Loss` or a function `(y_true, y_pred)`. One loss:
            multi-output structures are refused.
        teacher_layer_name: the teacher layer, or `None` for its output.
        student_layer_name: the student layer, or `None` for its output.
        regressor: add the trainable regressor from the student's channels
            to the teacher's.

    Raises:
        ValueError: for a loss structure, or features of different ranks,
            spatial sizes, or channels without `regressor=True`.

    Example:

    >>> loss = FeatureDistillation(regressor=True)
    >>> loss.build((None, 8, 8, 64), (None, 8, 8, 16))   # the Distiller does it
    >>> loss.compute_loss(keras.ops.ones((2, 8, 8, 64)), keras.ops.ones((2, 8, 8, 16)))
    <...>
    """

    def __init__(
        self,
        loss="mse",
        teacher_layer_name=None,
        student_layer_name=None,
        regressor=False,
    ):
        if loss is None or isinstance(loss, (list, tuple, dict)):
            raise ValueError(
                f"FeatureDistillation takes one loss, got {loss!r}: for several "
                "outputs use one FeatureDistillation per layer pair."
            )
        self.loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        if not callable(self.loss):
            raise ValueError(f"`loss` must be a loss name or callable, got {loss!r}.")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.regressor = bool(regressor)
        self._regressor_layer = None

    @property
    def layers(self):
        """`[regressor]` once built with `regressor=True`, else `[]`."""
        return [] if self._regressor_layer is None else [self._regressor_layer]

    def build(self, teacher_shape, student_shape):
        """Checks the feature shapes and creates the regressor, if any."""
        teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
        self._check_shapes(teacher_shape, student_shape)
        if not self.regressor:
            return
        four_d = len(teacher_shape) == 4
        if self._regressor_layer is not None:
            kernel_shape = (1, 1) * four_d + (student_shape[-1], teacher_shape[-1])
            if tuple(self._regressor_layer.kernel.shape) != kernel_shape:
                raise ValueError(
                    f"FeatureDistillation's regressor was built for other shapes than "
                    f"{teacher_shape}, {student_shape}: use a new loss."
                )
            return
        layer_class = keras.layers.Conv2D if four_d else keras.layers.Dense
        kernel_size = {"kernel_size": 1} if four_d else {}
        layer = layer_class(
            teacher_shape[-1], **kernel_size, name=_REGRESSOR, dtype="float32"
        )
        layer.build(student_shape)
        self._regressor_layer = layer

    def validate_model_compatibility(self, teacher, student):
        """Checks that named layers exist in functional or Sequential models."""
        check_named_layers(self, teacher, student)

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Checks that the features are single tensors of comparable shapes."""
        if isinstance(teacher_outputs, (list, tuple, dict)) or isinstance(
            student_outputs, (list, tuple, dict)
        ):
            raise ValueError(
                "FeatureDistillation compares single tensors: name one layer "
                "with teacher_layer_name and student_layer_name."
            )
        self._check_shapes(tuple(teacher_outputs.shape), tuple(student_outputs.shape))

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Returns the scalar loss between teacher and student features."""
        self.validate_outputs(teacher_outputs, student_outputs)
        return self.compare(teacher_outputs, self.project_student(student_outputs))

    def project_student(self, student_outputs, training=False):
        """The student features through the regressor (if any), in float32."""
        student_features = ops.cast(student_outputs, "float32")
        if not self.regressor:
            return student_features
        if self._regressor_layer is None:
            raise ValueError(
                "FeatureDistillation(regressor=True) is not built: call "
                "build(teacher_shape, student_shape) first."
            )
        return self._regressor_layer(student_features)

    def compare(self, teacher_outputs, projected_student_outputs, **kwargs):
        """The loss between teacher features and projected student features."""
        teacher_features = ops.stop_gradient(ops.cast(teacher_outputs, "float32"))
        return ops.mean(self.loss(teacher_features, projected_student_outputs))

    def _check_shapes(self, teacher_shape, student_shape):
        shapes = f"teacher {teacher_shape} and student {student_shape}"
        rank = len(teacher_shape)
        if rank != len(student_shape):
            raise ValueError(
                f"FeatureDistillation got features of different ranks, {shapes}."
            )
        if self.regressor and rank not in (2, 4):
            raise ValueError(
                f"FeatureDistillation's regressor takes [B, C] or [B, H, W, C] "
                f"features, got {shapes}: use regressor=False."
            )
        differ = {
            axis
            for axis, dims in enumerate(zip(teacher_shape, student_shape, strict=True))
            if None not in dims and dims[0] != dims[1]
        }
        if differ == {rank - 1} and not self.regressor:
            raise ValueError(
                f"FeatureDistillation got different channel counts, {shapes}: "
                "pass regressor=True."
            )
        if differ - {rank - 1}:
            raise ValueError(
                f"FeatureDistillation needs features of one batch and spatial "
                f"size, got {shapes}: choose other layers (the regressor is 1x1)."
            )
        if self.regressor and None in (teacher_shape[-1], student_shape[-1]):
            raise ValueError(
                f"FeatureDistillation's regressor needs known channel counts, "
                f"got {shapes}."
            )

    def get_config(self):
        return {
            "loss": keras.losses.serialize(self.loss),
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "regressor": self.regressor,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        return cls(**config)


def check_named_layers(loss, teacher, student):
    """Raises unless `loss`'s named layers exist in the teacher and student.

    Example:

    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> check_named_layers(FeatureDistillation(), teacher, student)   # no names
    """
    for role, model, names in (
        ("teacher", teacher, loss.teacher_layer_name),
        ("student", student, loss.student_layer_name),
    ):
        names = names if isinstance(names, (list, tuple)) else [names]
        for name in names:
            if name is not None and "[" not in name:  # "feats[1:]": a tap spec
                _check_named_layer(loss, role, model, name)


def _check_named_layer(loss, role, model, name):
    if getattr(model, "inputs", None) is None:
        raise ValueError(
            f"{type(loss).__name__} reads layer '{name}' of the {role}, which "
            f"must then be a functional or Sequential model, not subclassed."
        )
    try:
        model.get_layer(name)
    except ValueError as error:
        raise ValueError(f"{type(loss).__name__}, in the {role}: {error}") from None
