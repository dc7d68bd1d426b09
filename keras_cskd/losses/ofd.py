"""OFD: the overhaul of feature distillation, as in mdistiller's OFD."""

import math

import keras
from keras import ops

from keras_cskd.batch_norm import TorchBatchNormalization
from keras_cskd.initializers import kaiming_normal_fan_out
from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_loss import as_list, average_pool_to, shape_list
from keras_cskd.losses.registry import register

_PREACT_STAGES = "preact_feats[1:]"


def margin(gamma, beta):
    """The expected value of a channel's negative responses (OFD's margin).

    A pre-ReLU response of the teacher is modelled as `N(beta, |gamma|)`,
    from the BatchNorm before the ReLU; the margin is `E[x | x < 0]`,
    `beta - s * phi(beta / s) / Phi(-beta / s)` with `s = |gamma|`, or `-3 s`
    where `Phi(-beta / s) <= 0.001` (the reference's cut-off).

    Example:

    >>> round(margin(1.0, 0.0), 6)   # -sqrt(2 / pi)
    -0.797885
    """
    scale, mean = abs(float(gamma)), float(beta)
    below_zero = 0.5 * math.erfc((mean / scale) / math.sqrt(2.0))  # Phi(-m / s)
    if below_zero > 0.001:
        density = math.exp(-((mean / scale) ** 2) / 2) / math.sqrt(2 * math.pi)
        return -scale * density / below_zero + mean
    return -3 * scale


def margins_from_batch_norms(batch_norms):
    """Each stage's per-channel margins from the teacher's BatchNorm layers.

    Args:
        batch_norms: the teacher's BatchNorm before each compared stage's last
            ReLU (`keras_cskd.models.bn_before_relu(teacher)`), or
            `(gamma, beta)` pairs of arrays.

    Returns:
        A list (one per stage) of lists of floats (one per channel).

    Example:

    >>> margins_from_batch_norms([([1.0, 2.0], [0.0, 10.0])])
    [[-0.797..., -6.0]]
    """
    margins = []
    for batch_norm in batch_norms:
        gamma, beta = (
            (batch_norm.gamma, batch_norm.beta)
            if hasattr(batch_norm, "gamma")
            else batch_norm
        )
        gamma, beta = (ops.convert_to_numpy(ops.ravel(v)) for v in (gamma, beta))
        margins.append([margin(g, b) for g, b in zip(gamma, beta, strict=True)])
    return margins


def partial_l2(student, teacher, margin):
    """OFD's partial L2 between a connected student map and the teacher's:
    squared differences, except where the teacher is negative: there only a
    student above the teacher (or above the margin, when the teacher is below
    it) counts. Summed over `[H, W, C]`, averaged over the batch."""
    square = ops.square(student - teacher)
    above_margin = ops.logical_and(student > margin, teacher <= margin)
    between = ops.logical_and(
        ops.logical_and(student > teacher, teacher > margin), teacher <= 0
    )
    loss = (
        ops.square(student - margin) * ops.cast(above_margin, student.dtype)
        + square * ops.cast(between, student.dtype)
        + square * ops.cast(teacher > 0, student.dtype)
    )
    return ops.sum(ops.mean(ops.abs(loss), axis=0))


@register("ofd")
@keras.saving.register_keras_serializable(package="keras_cskd")
class OFD(DistillationLoss):
    """A comprehensive overhaul of feature distillation (Heo et al., 2019).

    The student's pre-ReLU features of each stage go through a connector
    (a bias-free `kernel_size` conv to the teacher's channels, then
    BatchNorm) and are compared with the teacher's pre-ReLU features (average
    pooled to the student's size) by `partial_l2` with the stage's per-channel
    margins: `L = sum_i partial_l2_i / 2^(n - 1 - i)` over the `n` stages,
    the last stage at weight 1. mdistiller weighs it by 0.001
    (`REFERENCE_WEIGHT`, cfg.py's `OFD.LOSS.FEAT_WEIGHT`) beside a CE of 1.

    The margins come from the teacher's BatchNorm before each stage's last
    ReLU (`margin`): pass them, or let the Distiller fill them from
    `keras_cskd.models.bn_before_relu(teacher)` (`reads_teacher_batch_norms`;
    a loss never reads a model itself). The teacher's BatchNorm weights are
    frozen, so the margins are fixed once, as in the reference, and saved in
    the loss's config.

    mdistiller's OFD overrides `train()` and so trains with the teacher in
    training mode: its BatchNorm layers normalise with the batch's statistics
    and their running statistics move. `teacher_batch_statistics=True` (the
    default) reproduces it (the Distiller reads `teacher_in_training_mode`);
    `False` runs the teacher in inference mode.

    Args:
        margins: per stage, the per-channel margins (`margins_from_batch_norms`),
            or `None` until the Distiller fills them.
        kernel_size: the connectors' kernel size (cfg's
            `OFD.CONNECTOR.KERNEL_SIZE`, 1), odd.
        teacher_layer_name, student_layer_name: the compared features, each a
            list of `[B, H, W, C]` maps, mdistiller's `preact_feats[1:]`.
        teacher_batch_statistics: run the teacher in training mode, as the
            reference does.

    Example:

    >>> loss = OFD(margins=[[-1.0] * 8])
    >>> loss.build([(None, 4, 4, 8)], [(None, 4, 4, 2)])   # the Distiller does it
    >>> loss.extra_parameters   # conv 2 * 8 plus BatchNorm 2 * 8
    32
    >>> teacher, student = keras.ops.ones((2, 4, 4, 8)), keras.ops.ones((2, 4, 4, 2))
    >>> # A constant batch normalises to 0; the teacher's 1s count 4 * 4 * 8 times.
    >>> round(float(loss.compute_loss([teacher], [student], training=True)), 2)
    128.0
    """

    REFERENCE_WEIGHT = 0.001

    def __init__(
        self,
        margins=None,
        kernel_size=1,
        teacher_layer_name=_PREACT_STAGES,
        student_layer_name=_PREACT_STAGES,
        teacher_batch_statistics=True,
    ):
        if int(kernel_size) % 2 != 1:
            raise ValueError(
                f"OFD's connectors keep the feature size with odd kernels, got "
                f"kernel_size={kernel_size}: pass 1, 3, ..."
            )
        self.margins = (
            None if margins is None else [list(map(float, m)) for m in margins]
        )
        self.kernel_size = int(kernel_size)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.teacher_batch_statistics = bool(teacher_batch_statistics)
        self._connectors = []

    @property
    def teacher_in_training_mode(self):
        """Whether the Distiller runs the teacher in training mode."""
        return self.teacher_batch_statistics

    @property
    def reads_teacher_batch_norms(self):
        """Whether the Distiller is to pass the teacher's BatchNorm layers to
        `use_teacher_batch_norms` (while the margins are unknown)."""
        return self.margins is None

    def use_teacher_batch_norms(self, batch_norms):
        """Sets the margins from the teacher's BatchNorm before each stage's
        last ReLU (the Distiller passes `models.bn_before_relu(teacher)`)."""
        self.margins = margins_from_batch_norms(batch_norms)

    @property
    def layers(self):
        """Each stage's connector conv and BatchNorm, once built."""
        return [layer for connector in self._connectors for layer in connector]

    def build(self, teacher_shape, student_shape):
        """Creates one connector per stage, from the student's channels to the
        teacher's."""
        teacher_shapes, student_shapes = (
            shape_list(teacher_shape),
            shape_list(student_shape),
        )
        self._check_stage_counts(len(teacher_shapes), len(student_shapes))
        if self._connectors:
            return
        for index, (teacher, student) in enumerate(
            zip(teacher_shapes, student_shapes, strict=True)
        ):
            self._connectors.append(self._connector(index, tuple(student), teacher[-1]))

    def _connector(self, index, student_shape, teacher_channels):
        conv = keras.layers.Conv2D(
            teacher_channels,
            self.kernel_size,
            padding="same",
            use_bias=False,
            # normal(0, sqrt(2 / (k * k * out_channels))), as the reference.
            kernel_initializer=kaiming_normal_fan_out(),
            name=f"ofd_connector{index}_conv",
            dtype="float32",
        )
        conv.build(student_shape)
        # PyTorch's BatchNorm2d over the global batch on any replica count.
        batch_norm = TorchBatchNormalization(
            name=f"ofd_connector{index}_bn", dtype="float32"
        )
        batch_norm.build(student_shape[:-1] + (teacher_channels,))
        return (conv, batch_norm)

    def _check_stage_counts(self, teacher_count, student_count):
        margin_count = None if self.margins is None else len(self.margins)
        if teacher_count != student_count or margin_count not in (None, teacher_count):
            raise ValueError(
                f"OFD compares stages pairwise; got {teacher_count} teacher and "
                f"{student_count} student features and {margin_count} margin "
                "lists: tap as many stages of each as the teacher has margins."
            )

    def project_student(self, student_outputs, training=False):
        """Each stage's student features through its connector, in float32."""
        if not self._connectors:
            raise ValueError(
                "OFD is not built: call build(teacher_shapes, student_shapes) first."
            )
        student_stages = as_list(student_outputs)
        self._check_stage_counts(len(self._connectors), len(student_stages))
        return [
            batch_norm(conv(ops.cast(student, "float32")), training=training)
            for (conv, batch_norm), student in zip(
                self._connectors, student_stages, strict=True
            )
        ]

    def compute_loss(self, teacher_outputs, student_outputs, training=None, **kwargs):
        """The loss between teacher and (unprojected) student features."""
        projected = self.project_student(student_outputs, training=training)
        return self.compare(teacher_outputs, projected)

    def compare(self, teacher_outputs, projected_student_outputs, **kwargs):
        """The weighted sum of the stages' partial L2 losses."""
        if self.margins is None:
            raise ValueError(
                "OFD has no margins: use it in a Distiller, or pass OFD(margins="
                "margins_from_batch_norms(keras_cskd.models.bn_before_relu(teacher)))."
            )
        teacher_stages = as_list(teacher_outputs)
        students = as_list(projected_student_outputs)
        self._check_stage_counts(len(teacher_stages), len(students))
        total = 0.0
        for index, (teacher, student) in enumerate(
            zip(teacher_stages, students, strict=True)
        ):
            teacher = ops.stop_gradient(ops.cast(teacher, "float32"))
            teacher = average_pool_to(teacher, student.shape[1], student.shape[2])
            stage_margin = ops.convert_to_tensor(self.margins[index], "float32")
            stage_loss = partial_l2(student, teacher, stage_margin)
            total += stage_loss / 2.0 ** (len(students) - index - 1)
        return total

    def get_config(self):
        return {
            "margins": self.margins,
            "kernel_size": self.kernel_size,
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
            "teacher_batch_statistics": self.teacher_batch_statistics,
        }
