"""The `Distiller`: trains a student from a frozen teacher with `model.fit`."""

import keras
import tensorflow as tf
from keras import ops

from keras_cskd import distribute
from keras_cskd import losses as losses_module
from keras_cskd.callbacks import EpochCounter
from keras_cskd.checks import non_negative_number
from keras_cskd.metrics import Means

# Keys of an input batch that carries cached teacher logits.
IMAGES = "images"
CACHED_TEACHER_LOGITS = "teacher_logits"
# What every step logs (global values, averaged over the epoch's samples).
LOGGED_TERMS = ("loss", "ce_loss", "distillation_loss", "accuracy")


@keras.saving.register_keras_serializable(package="keras_cskd")
class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher` while fitting the labels.

    Each step runs the teacher in inference mode outside the gradient tape
    (its logits behind `stop_gradient`), the student in training mode, and
    minimises `student_loss_weight * CE(y, zs) + distillation_loss_weight *
    distillation_loss(zt, zs)` plus the student's regularisation losses.
    Labels may be integers `[B]` or one-hot/soft `[B, C]` (mixup).

    Under `tf.distribute` (MirroredStrategy, MultiWorkerMirroredStrategy)
    every term is computed on the global batch: each replica gathers the
    teacher logits, student logits and labels of all replicas in one
    forward `all_gather`, and differentiates the global loss with respect to
    its own shard of student logits, so the summed gradients of N replicas
    are exactly the gradient one device gets from the same global batch,
    and batch-wise losses (CSKD, CSWT) see the whole batch. A loss built
    with `global_batch=False` is instead computed on each replica's shard
    and averaged (weighted by shard size). Logged values are global values.

    Logs: `loss` (the total), `ce_loss`, `distillation_loss`, `accuracy` (the
    student's top-1), and whatever `compile(metrics=...)` adds. `evaluate`
    reports the same on the student in inference mode.

    Args:
        teacher: a trained `keras.Model` returning logits; it is frozen.
        student: a `keras.Model` returning logits with the teacher's shape.
        distillation_loss: a `keras.distillation.DistillationLoss` (for example
            `keras_cskd.losses.CSKD()`) or the name of one (`"cskd"`).
        student_loss_weight: weight of the cross-entropy with the labels.
        distillation_loss_weight: weight of the distillation loss.
        view_weights: for batches of several augmented views of the same
            images, `x = (view_1, view_2, ...)`: every term is computed on
            each view and summed with these weights. A loss that takes all
            views at once (`num_views > 1`, such as `TwoViewCSKD`, the CSKD
            code's objective, with `(1.0, 1.0)`) gets them together, and the
            weights then weight the cross-entropy alone. Evaluation batches
            have one view (weight 1; a loss over all views gets it as each).

    Inputs (or each view) may also carry precomputed teacher logits,
    `x = {"images": ..., "teacher_logits": ...}` (see
    `keras_cskd.data.with_teacher_logits`): the teacher then does not run.

    Example:

    >>> distiller = keras_cskd.Distiller(teacher, student, keras_cskd.losses.CSKD())
    >>> distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> distiller.fit(train_dataset, epochs=10, validation_data=val_dataset)
    >>> student = distiller.student
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_loss,
        student_loss_weight=1.0,
        distillation_loss_weight=1.0,
        view_weights=None,
        name="distiller",
        **kwargs,
    ):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "keras_cskd.Distiller needs the TensorFlow backend "
                f"(KERAS_BACKEND=tensorflow); the backend is {keras.backend.backend()}."
            )
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        if isinstance(distillation_loss, str):
            distillation_loss = losses_module.get(distillation_loss)
        if not isinstance(distillation_loss, keras.distillation.DistillationLoss):
            raise ValueError(
                "`distillation_loss` must be a keras.distillation.DistillationLoss "
                f"(for example keras_cskd.losses.CSKD()), got {distillation_loss!r}."
            )
        self.student_loss_weight = non_negative_number(
            "student_loss_weight", student_loss_weight
        )
        self.distillation_loss_weight = non_negative_number(
            "distillation_loss_weight", distillation_loss_weight
        )
        self.teacher = teacher
        self.teacher.trainable = False
        self.student = student
        self.distillation_loss = distillation_loss
        self.view_weights = tuple(float(w) for w in view_weights or ()) or None
        # The 1-based epoch number, for losses that change over training (DKD's
        # warm-up); `fit` keeps it current.
        self.epoch = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="epoch"
        )
        self.term_means = Means(LOGGED_TERMS)
        # Built models make a built Distiller (BackupAndRestore needs that).
        self.built = bool(teacher.built and student.built)

    @property
    def metrics(self):
        compiled = getattr(self, "_compile_metrics", None)
        return [self.term_means] + ([compiled] if compiled is not None else [])

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Configures the optimizer and any extra metrics; the loss is built in."""
        if loss is not None:
            raise ValueError(
                "The Distiller computes its own loss (cross-entropy plus the "
                "distillation loss): call compile() without `loss`."
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded Distiller as it was saved (`keras.saving.load_model`),
        so that it trains on with its optimizer's state."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), EpochCounter()]
        for callback in callbacks:
            # Keras finds a metric's direction on compiled metrics only; the
            # logged accuracy lives in `term_means`, so tell its monitors.
            monitored = getattr(callback, "monitor", "")
            if monitored in ("accuracy", "val_accuracy"):
                if getattr(callback, "mode", None) == "auto":
                    callback.mode = "max"
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the compiled metrics from a batch it averages with
        # strategy.reduce, which fails on MultiWorkerMirroredStrategy's
        # per-replica batches (Keras 3.15); one replica's shard builds them alike.
        if iterator is not None and isinstance(
            self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        x, y = _unpack(data)
        views = self._views(x)
        teacher_logits = [self._teacher_logits(view) for view in views]
        with tf.GradientTape() as tape:
            student_logits = [
                self.student(view.images, training=True) for view in views
            ]
            terms = self._combined_terms(y, teacher_logits, student_logits)
            # Each replica differentiates the global objective through its own
            # student logits only; the optimizer sums the replicas' gradients.
            # Regularisation is the same on every replica, hence the 1/N.
            replica_loss = terms["objective"] + terms["regularization"] / (
                distribute.num_replicas()
            )
            replica_loss = self.optimizer.scale_loss(replica_loss)
        variables = self.student.trainable_variables
        gradients = tape.gradient(replica_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return self._update_metrics(x, y, student_logits[0], terms)

    def test_step(self, data):
        x, y = _unpack(data)
        views = self._views(x)
        teacher_logits = [self._teacher_logits(view) for view in views]
        student_logits = [self.student(view.images, training=False) for view in views]
        terms = self._combined_terms(y, teacher_logits, student_logits)
        return self._update_metrics(x, y, student_logits[0], terms)

    def _views(self, x):
        """The input views of a batch: one, or several (a tuple with
        `view_weights`); each an image batch, or a dict of images and their
        cached teacher logits."""
        if self.view_weights and isinstance(x, (tuple, list)):
            if len(x) != len(self.view_weights):
                raise ValueError(
                    f"The batch has {len(x)} views but `view_weights` has "
                    f"{len(self.view_weights)} weights."
                )
            return [_View.of(view) for view in x]
        return [_View.of(x)]

    def _teacher_logits(self, view):
        logits = view.teacher_logits
        if logits is None:
            logits = self.teacher(view.images, training=False)
        return ops.stop_gradient(ops.cast(logits, "float32"))

    def _combined_terms(self, y, teacher_logits, student_logits):
        """Global values of every term, identical on every replica.

        With several views the cross-entropy is the `view_weights`-weighted sum
        over views, and so is the distillation loss, unless the loss takes all
        views at once (`num_views > 1`, e.g. `TwoViewCSKD`). A batch of one
        view (evaluation) has weight 1, and such a loss gets it as every view.
        """
        weights = self.view_weights if len(student_logits) > 1 else (1.0,)
        gathered = [
            distribute.global_batch(teacher, ops.cast(student, "float32"), y)
            for teacher, student in zip(teacher_logits, student_logits, strict=True)
        ]
        teachers, students, labels, replica_ids = (
            list(part) for part in zip(*gathered, strict=True)
        )
        ce_loss = sum(
            weight * self._cross_entropy(labels[0], student)
            for weight, student in zip(weights, students, strict=True)
        )
        num_views = getattr(self.distillation_loss, "num_views", 1)
        if num_views > 1:
            if len(students) == 1:
                teachers, students = teachers * num_views, students * num_views
            distillation_loss = self._distillation_loss(teachers, students, labels[0])
        else:
            distillation_loss = sum(
                weight * self._view_distillation_loss(*view)
                for weight, *view in zip(
                    weights, teachers, students, labels, replica_ids, strict=True
                )
            )
        objective = (
            self.student_loss_weight * ce_loss
            + self.distillation_loss_weight * distillation_loss
        )
        regularization = (
            ops.sum(self.student.losses) if self.student.losses else ops.zeros(())
        )
        correct = ops.equal(
            ops.argmax(students[0], axis=-1), ops.cast(_class_ids(labels[0]), "int64")
        )
        return {
            "objective": objective,
            "regularization": regularization,
            "loss": objective + regularization,
            "ce_loss": ce_loss,
            "distillation_loss": distillation_loss,
            "correct": ops.cast(correct, "float32"),
        }

    def _cross_entropy(self, labels, student_logits):
        # SKD can ask for its normalised logits in the cross-entropy too.
        ce_logits = getattr(
            self.distillation_loss, "student_logits_for_ce", lambda logits: logits
        )(student_logits)
        return ops.mean(cross_entropy(labels, ce_logits))

    def _view_distillation_loss(
        self, teacher_logits, student_logits, labels, replica_ids
    ):
        if replica_ids is None or getattr(self.distillation_loss, "global_batch", True):
            return self._distillation_loss(teacher_logits, student_logits, labels)
        return self._mean_over_shards(
            teacher_logits, student_logits, labels, replica_ids
        )

    def _mean_over_shards(self, teacher_logits, student_logits, labels, replica_ids):
        """The distillation loss of each replica's shard, averaged by shard size."""
        total = ops.zeros(())
        for replica in range(distribute.num_replicas()):
            in_shard = ops.equal(replica_ids, replica)
            shard_size = ops.sum(ops.cast(in_shard, "float32"))
            loss = self._distillation_loss(
                *(
                    tf.boolean_mask(t, in_shard)
                    for t in (teacher_logits, student_logits, labels)
                )
            )
            total += ops.where(shard_size > 0, loss * shard_size, 0.0)
        return total / ops.cast(ops.shape(labels)[0], "float32")

    def _distillation_loss(self, teacher_logits, student_logits, labels):
        loss = self.distillation_loss.compute_loss(
            teacher_logits, student_logits, labels=labels, epoch=self.epoch
        )
        if len(getattr(loss, "shape", ())) != 0:
            raise ValueError(
                f"{type(self.distillation_loss).__name__}.compute_loss must return a "
                f"scalar, got shape {loss.shape}."
            )
        return ops.cast(loss, "float32")

    def _update_metrics(self, x, y, student_logits, terms):
        self.term_means.update_state(
            dict(terms, accuracy=ops.mean(terms["correct"])),
            num_samples=ops.shape(terms["correct"])[0],
        )
        logs = self.compute_metrics(x, y, student_logits, sample_weight=None)
        if isinstance(
            self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            # Keras 3.15 reduces step logs across workers along axis 0, which
            # scalars lack; epoch logs are read from the metrics themselves.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_loss": keras.saving.serialize_keras_object(
                    self.distillation_loss
                ),
                "student_loss_weight": self.student_loss_weight,
                "distillation_loss_weight": self.distillation_loss_weight,
                "view_weights": self.view_weights,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student", "distillation_loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


class _View:
    """One view of a batch: its images, and the teacher's logits if cached."""

    def __init__(self, images, teacher_logits=None):
        self.images, self.teacher_logits = images, teacher_logits

    @classmethod
    def of(cls, x):
        if isinstance(x, dict) and CACHED_TEACHER_LOGITS in x:
            return cls(x[IMAGES], x[CACHED_TEACHER_LOGITS])
        return cls(x)


def cross_entropy(labels, logits):
    """Per-sample cross-entropy from logits, for integer or one-hot/soft labels."""
    if len(labels.shape) == 2 and labels.shape[-1] not in (None, 1):
        return keras.losses.categorical_crossentropy(
            ops.cast(labels, logits.dtype), logits, from_logits=True
        )
    return keras.losses.sparse_categorical_crossentropy(
        ops.reshape(labels, (-1,)), logits, from_logits=True
    )


def _class_ids(labels):
    if len(labels.shape) == 2 and labels.shape[-1] not in (None, 1):
        return ops.argmax(labels, axis=-1)
    return ops.reshape(labels, (-1,))


def _unpack(data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if sample_weight is not None:
        raise ValueError(
            "The Distiller does not take sample weights or class weights: the "
            "batch-wise distillation losses have no per-sample weighting. "
            "Resample the dataset instead."
        )
    if y is None:
        raise ValueError("The Distiller needs labels: give it (inputs, labels) pairs.")
    return x, y


def _check_models(teacher, student):
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            raise ValueError(f"The {role} must be a keras.Model, got {type(model)}.")
    teacher_out = _static_shape(teacher, "output")
    student_out = _static_shape(student, "output")
    if teacher_out and student_out and teacher_out[-1] != student_out[-1]:
        raise ValueError(
            f"The teacher predicts {teacher_out[-1]} classes but the student "
            f"predicts {student_out[-1]}: build the student with "
            f"num_classes={teacher_out[-1]}."
        )
    teacher_in = _static_shape(teacher, "input")
    student_in = _static_shape(student, "input")
    if teacher_in and student_in and teacher_in[1:] != student_in[1:]:
        raise ValueError(
            f"The teacher takes inputs of shape {teacher_in[1:]} but the student "
            f"takes {student_in[1:]}: both must read the same batches."
        )


def _static_shape(model, which):
    try:
        shape = getattr(model, f"{which}_shape")
    except (AttributeError, ValueError):
        return None  # a subclassed model that has not been built
    return (
        tuple(shape)
        if isinstance(shape, (tuple, list))
        and (not shape or not isinstance(shape[0], (tuple, list)))
        else None
    )
