"""`FeatureLoss`: the base of the feature methods without trainable modules."""

import keras
from keras import ops

from keras_cskd.losses.distillation_loss import DistillationLoss
from keras_cskd.losses.feature_distillation import check_named_layers


class FeatureLoss(DistillationLoss):
    """A loss between teacher and student features, stage by stage.

    The `Distiller` passes the outputs that `teacher_layer_name` and
    `student_layer_name` name: one tensor (a layer, `"pooled_feat"`,
    `"feats[-1]"`) or a list, one per stage (a slice such as mdistiller's
    `"feats[1:]"`, or a list of layer names); `compute_loss` takes the same.
    Subclasses define `stage_losses(teacher_stages, student_stages)`, which
    gets float32 lists, the teacher's behind `stop_gradient`, and returns a
    scalar. `min_rank` is the feature rank the method needs (4: `[B, H, W, C]`).

    Args:
        teacher_layer_name: the teacher's layer, tap spec or list of layer
            names, or `None` for its logits.
        student_layer_name: the student's, alike.

    Example:

    >>> from keras_cskd.losses import PKT
    >>> loss = PKT("teacher_pool", "student_pool")
    >>> loss.get_config()["teacher_layer_name"]
    'teacher_pool'
    """

    min_rank = 2

    def __init__(self, teacher_layer_name=None, student_layer_name=None):
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name

    def validate_model_compatibility(self, teacher, student):
        """Checks that the named layers exist in functional or Sequential models."""
        check_named_layers(self, teacher, student)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """The scalar loss between teacher and student features (or lists)."""
        teacher_stages, student_stages = self.stages(teacher_outputs, student_outputs)
        return self.stage_losses(teacher_stages, student_stages)

    def stages(self, teacher_outputs, student_outputs):
        """Both outputs as equally long float32 lists, the teacher's frozen."""
        name = type(self).__name__
        teacher_stages, student_stages = (
            as_list(teacher_outputs),
            as_list(student_outputs),
        )
        if len(teacher_stages) != len(student_stages) or not teacher_stages:
            raise ValueError(
                f"{name} compares stages pairwise; got {len(teacher_stages)} teacher "
                f"and {len(student_stages)} student features: pass as many of each."
            )
        for teacher, student in zip(teacher_stages, student_stages, strict=True):
            if len(teacher.shape) < self.min_rank or len(student.shape) < self.min_rank:
                raise ValueError(
                    f"{name} needs features of rank {self.min_rank} or more, got "
                    f"teacher {tuple(teacher.shape)} and student "
                    f"{tuple(student.shape)}: name other layers."
                )
        teacher_stages = [
            ops.stop_gradient(ops.cast(teacher, "float32"))
            for teacher in teacher_stages
        ]
        student_stages = [ops.cast(student, "float32") for student in student_stages]
        return teacher_stages, student_stages

    def stage_losses(self, teacher_stages, student_stages):
        raise NotImplementedError

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
        }


def flatten_rows(features):
    """`[B, ...] -> [B, D]` (the order within a row does not matter to the
    methods that use it: they only take dot products of whole rows)."""
    return ops.reshape(features, (ops.shape(features)[0], -1))


def l2_normalize(x, axis):
    """PyTorch's `F.normalize`: `x / max(|x|, 1e-12)`; zero stays zero, with a
    finite gradient."""
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(squared_norm, 1e-24))


def average_pool_to(features, height, width):
    """PyTorch's `adaptive_avg_pool2d` of `[B, H, W, C]` features to `(height,
    width)`, for sizes that divide `H` and `W`: the mean of each block.

    Example:

    >>> import numpy as np
    >>> x = np.arange(16.0, dtype="float32").reshape(1, 4, 4, 1)
    >>> np.ravel(average_pool_to(x, 2, 2)).tolist()
    [2.5, 4.5, 10.5, 12.5]
    """
    feature_height, feature_width = features.shape[1], features.shape[2]
    if (feature_height, feature_width) == (height, width):
        return features
    if feature_height % height or feature_width % width:
        raise ValueError(
            f"Pooling {feature_height}x{feature_width} features to {height}x{width} "
            "takes sizes that divide them: choose other layers or taps."
        )
    blocks = ops.reshape(
        features,
        (
            ops.shape(features)[0],
            height,
            feature_height // height,
            width,
            feature_width // width,
            -1,
        ),
    )
    return ops.mean(blocks, axis=(2, 4))


def as_list(outputs):
    """One tensor, or a list or tuple of them, as a list."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def shapes_of(outputs):
    """A tensor's shape tuple; for (nested) lists of tensors, the list of
    their shape tuples, flattened in order.

    Example:

    >>> shapes_of([keras.ops.ones((2, 3)), [keras.ops.ones((2, 4))]])
    [(2, 3), (2, 4)]
    """
    if isinstance(outputs, (list, tuple, dict)):
        return [tuple(x.shape) for x in keras.tree.flatten(outputs)]
    return tuple(outputs.shape)


def shape_list(shapes):
    """A shape, or a (nested) list of shapes, as a flat list of shape tuples:
    what `build` gets for one tensor or for a list of them.

    Example:

    >>> shape_list((None, 4, 4, 8))
    [(None, 4, 4, 8)]
    >>> shape_list([[(None, 4, 4, 8), (None, 2, 2, 8)], (None, 8)])
    [(None, 4, 4, 8), (None, 2, 2, 8), (None, 8)]
    """
    if shapes and isinstance(shapes[0], (list, tuple)):
        return [flat for shape in shapes for flat in shape_list(shape)]
    return [tuple(shapes)]


def stored_layer_name(name):
    """A layer name or tap spec as given; several as a list (JSON-friendly in
    `get_config`)."""
    return list(name) if isinstance(name, (list, tuple)) else name
