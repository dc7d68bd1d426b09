"""`DistillationLoss`: everything the `Distiller` gives a loss, in one place."""

import math

import keras


class DistillationLoss(keras.distillation.DistillationLoss):
    """The interface between the `Distiller` and a distillation loss.

    Every keras-cskd loss subclasses it. The `Distiller` reads only what is
    declared here; a plain `keras.distillation.DistillationLoss` (Keras's
    `LogitsDistillation`, `FeatureDistillation`) gets the defaults below and is
    called as Keras calls it, `compute_loss(teacher_outputs, student_outputs)`.
    `@keras_cskd.losses.register("name")` lets configs name a subclass
    (`loss.method`); docs/extending.md adds one.

    What the Distiller passes to `compute_loss(teacher_outputs,
    student_outputs, **kwargs)`:
        - the outputs: float32 logits `[B, C]`, or, when `teacher_layer_name`
          / `student_layer_name` are set, the outputs of those layers (the
          teacher's always behind `stop_gradient`). Under `tf.distribute` they
          hold the global batch unless `global_batch` is false.
        - `labels=`: integer `[B]` or one-hot/soft `[B, C]` labels.
        - `epoch=`, only when `uses_epoch`: the 1-based epoch as a float
          scalar, kept by `fit`; `Distiller.train_on_batch` takes it as an
          argument.
        - `sample_indices=`, only when `uses_sample_indices`: each example's
          index in its dataset, int32 `[B]`, read from the batch's inputs
          dict, `x = {"images": ..., "sample_indices": ...}` (exact up to
          2**24 examples: the cross-replica gather carries them as float32).

    Attributes:
        teacher_layer_name, student_layer_name: what the loss compares
            (functional or Sequential models): `None` for the logits, a
            layer name, a list of layer names (the loss gets a list), or a
            feature tap of `keras_cskd.models.features` by spec: `"feats[2]"`,
            `"pooled_feat"` (one tensor) or `"feats[1:]"` (a list), resolved on
            zoo models and on models whose layers are named `feats_<i>`.
            `build` and `project_student` get shapes and outputs alike.
        requires_labels: whether the loss cannot be computed without labels.
        uses_epoch: whether the loss changes with the epoch (DKD's warm-up).
        num_views: `> 1` for a loss over several augmented views at once
            (`TwoViewCSKD`); it then gets lists of outputs, one per view.
        global_batch: under `tf.distribute`, compute the loss on the global
            batch (the default) or on each replica's shard.
        cswt_argument: the `__init__` argument that takes a `CSWT`, which
            a config's `loss.cswt=True` (with `loss.t_min`, `loss.t_max`)
            fills: `"temperature"` (a float or a CSWT: `KD`, `SKD`, `LSKD`,
            `DKD`, `DIST`), `"cswt"` (a CSWT or `None`, set to `None` when
            `loss.cswt` is off: `CSKD`, `TwoViewCSKD`), or `None` for a loss
            that takes none (a config asking one for it is refused).
        uses_sample_indices: whether the loss needs each example's dataset
            index (CRD's memory bank); the Distiller then refuses batches
            without `"sample_indices"`, and a run gives it the training
            split's labels through `adapt(train_labels)` before building it.
        teacher_in_training_mode: run the teacher with `training=True` in
            training steps, its BatchNorm on batch statistics, its moving
            statistics updated, its weights still frozen (mdistiller's OFD).
        reads_teacher_batch_norms: whether the Distiller is to call the
            loss's `use_teacher_batch_norms(layers)` with the teacher's
            BatchNorm before each stage's last ReLU
            (`keras_cskd.models.bn_before_relu`; OFD's margins).

    The loss's own trainable layers (FitNets' regressor) are listed by
    `layers` and created by `build(teacher_shape, student_shape)`, which the
    Distiller calls once with the shapes of the compared outputs; the
    optimizer trains them with the student. A loss with layers splits
    `compute_loss` into `project_student` (the layers, run on each replica's
    own rows, so that their gradients add up across replicas like the
    student's) and `compare` (the loss between teacher outputs and projected
    student outputs); the Distiller calls the two. `project_student` gets the
    step's mode, `training` (true in `fit`, false in `evaluate`), so that
    BatchNorm in the loss's layers (FitNet's regressor) trains in training
    steps only.

    Example, a logit loss that warms up over 5 epochs:

    >>> class WarmLogitMSE(DistillationLoss):
    ...     uses_epoch = True
    ...     def compute_loss(self, teacher, student, epoch=1.0, **kwargs):
    ...         ramp = keras.ops.minimum(epoch / 5.0, 1.0)
    ...         return ramp * keras.ops.mean(keras.ops.square(teacher - student))
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = keras_cskd.Distiller(teacher, student, WarmLogitMSE())
    """

    teacher_layer_name = None
    student_layer_name = None
    requires_labels = False
    uses_epoch = False
    num_views = 1
    global_batch = True
    cswt_argument = None
    uses_sample_indices = False
    teacher_in_training_mode = False
    reads_teacher_batch_norms = False

    @property
    def layers(self):
        """The loss's trainable Keras layers (none by default)."""
        return []

    @property
    def extra_parameters(self):
        """The trainable values of `layers`: what mdistiller's
        `get_extra_parameters` counts of a distiller's own modules (their
        BatchNorm moving statistics excluded). 0 before `build`."""
        return sum(
            math.prod(w.shape) for layer in self.layers for w in layer.trainable_weights
        )

    def adapt(self, train_labels):
        """Learns what it needs of the training split from its labels, `[N]`
        in example order (CRD: its size and classes); nothing by default."""

    def build(self, teacher_shape, student_shape):
        """Creates the loss's layers for outputs of these shapes."""

    def project_student(self, student_outputs, training=False):
        """The student outputs through the loss's own layers (as they are)."""
        return student_outputs

    def compare(self, teacher_outputs, projected_student_outputs, **kwargs):
        """The loss given projected student outputs (`compute_loss` without
        `project_student`)."""
        return self.compute_loss(teacher_outputs, projected_student_outputs, **kwargs)

    @classmethod
    def from_config(cls, config):
        """The loss `get_config()` describes (its `__init__` arguments)."""
        return cls(**config)

    def student_logits_for_ce(self, student_logits):
        """The logits the student's cross-entropy uses (its own by default;
        `SKD(normalize_student_ce=True)` gives its normalised logits)."""
        return student_logits


def as_distillation_loss(loss):
    """`loss` as this interface: itself, or Keras's own loss wrapped with the
    defaults above (what the Distiller reads of every loss).

    Example:

    >>> as_distillation_loss(keras.distillation.LogitsDistillation()).uses_epoch
    False
    """
    return loss if isinstance(loss, DistillationLoss) else _KerasLossAdapter(loss)


class _KerasLossAdapter(DistillationLoss):
    """A `keras.distillation.DistillationLoss` seen through the interface."""

    def __init__(self, loss):
        self.loss = loss
        self.teacher_layer_name = getattr(loss, "teacher_layer_name", None)
        self.student_layer_name = getattr(loss, "student_layer_name", None)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return self.loss.compute_loss(teacher_outputs, student_outputs)

    def validate_outputs(self, teacher_outputs, student_outputs):
        self.loss.validate_outputs(teacher_outputs, student_outputs)
