"""The `Distiller`: trains a student from a frozen teacher with `model.fit`."""

import contextlib
import os
import re
import threading

import keras
from keras import ops

from keras_cskd import losses as losses_module
from keras_cskd import split_gradients
from keras_cskd.callbacks import EpochCounter, RefuseEmptyEpochs, trained_weights
from keras_cskd.checks import class_labels, non_negative_number
from keras_cskd.losses.distillation_loss import as_distillation_loss
from keras_cskd.metrics import Means
from keras_cskd.models import taps

# Keys of an input batch that carries cached teacher logits.
IMAGES = "images"
CACHED_TEACHER_LOGITS = "teacher_logits"
# Key of each example's dataset index, for losses with `uses_sample_indices`.
SAMPLE_INDICES = "sample_indices"
# The student's logits among its outputs when feature losses need more.
LOGITS = "logits"
# What every step logs (global values, averaged over the epoch's samples).
LOGGED_TERMS = ("loss", "ce_loss", "distillation_loss", "accuracy")
# Keras's Distiller arguments that are spelled otherwise here (same values).
KERAS_SPELLINGS = {
    "distillation_losses": "`distillation_loss` (one loss or a list)",
    "distillation_loss_weights": "`distillation_loss_weight` (a float or a list)",
}


@keras.saving.register_keras_serializable(package="keras_cskd")
class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher` while fitting the labels.

    Each step runs the teacher in inference mode behind `stop_gradient`, the
    student in training mode, and minimises `ce_weight * CE(y, zs) + sum_i
    w_i * L_i` (`L_i` the distillation losses, `w_i` their
    `distillation_loss_weight`) or, given Keras's `student_loss_weight=alpha`,
    what `keras.distillation.Distiller` minimises, `alpha * CE(y, zs) +
    (1 - alpha) * sum_i w_i * L_i`; plus the student's regularisation losses.
    Labels may be integers `[B]` or one-hot/soft `[B, C]` (mixup). It runs on
    every Keras 3 backend through Keras's own training loops: it only defines
    `call` and `compute_loss` (and, for an optimizer that takes the task and
    distillation gradients apart, `optimizers.DOT`, a train step of
    `keras_cskd/split_gradients.py` over `compute_split_loss`).

    Every term is computed on the global batch. Under `tf.distribute`
    (MirroredStrategy, MultiWorkerMirroredStrategy) each replica gathers the
    teacher outputs, student outputs and labels of all replicas in one
    forward `all_gather` and differentiates the global loss through its own
    shard of student outputs, so batch-wise losses (CSKD, CSWT) see the
    whole batch and the summed gradients of N replicas are the gradient one
    device gets from the same global batch. Zoo students' BatchNorm layers
    compute their statistics over groups of `batch_norm_group` images of the
    global batch across replicas (docs/distributed.md), so a BatchNorm
    student trains as on one device too. Under JAX's
    `keras.distribution.DataParallel` the step is one program over the
    global batch, BatchNorm statistics included. A loss with
    `global_batch=False` is instead computed on each device's shard and
    averaged by shard size.

    Logs: `loss` (the total), `ce_loss`, `distillation_loss`, `accuracy` (the
    student's top-1), with several losses each one unweighted as
    `<name>_loss`, and whatever `compile(metrics=...)` adds. `evaluate`
    reports the same with the student in inference mode.

    Args:
        teacher: a trained `keras.Model` returning logits; it is frozen.
        student: a `keras.Model` returning logits with the teacher's shape.
        distillation_loss: a `keras.distillation.DistillationLoss` (a
            `keras_cskd.losses` one such as `CSKD()`, or Keras's own
            `LogitsDistillation` and `FeatureDistillation`), the name of one
            (`"cskd"`), or a list of them. Losses with `teacher_layer_name` /
            `student_layer_name` compare those layers' outputs (functional or
            Sequential models); what a loss is given is
            `keras_cskd.losses.DistillationLoss`'s interface.
        distillation_loss_weight: the weight `w_i` of the distillation loss,
            or a list with one weight per loss (Keras's
            `distillation_loss_weights`). It and the arguments after it are
            keyword-only.
        student_loss_weight: Keras's `alpha`, in [0, 1]: the objective is
            `alpha * CE + (1 - alpha) * sum_i w_i * L_i`, as in
            `keras.distillation.Distiller` (whose default is 0.5; here the
            default is `ce_weight=1`).
        ce_weight: the weight of the cross-entropy beside the distillation
            losses, which keep their weights: `ce_weight * CE + sum_i w_i *
            L_i`. Defaults to 1 when neither it nor `student_loss_weight` is
            given; giving both is refused.
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
    A loss with `uses_sample_indices` (CRD) needs each example's dataset
    index in the inputs, `x = {"images": ..., "sample_indices": ...}`.

    Example:

    >>> images = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    >>> labels = np.arange(32) % 4
    >>> teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> distiller = keras_cskd.Distiller(teacher, student, keras_cskd.losses.CSKD())
    >>> distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> history = distiller.fit(images, labels, batch_size=16, epochs=2, verbose=0)
    >>> student = distiller.student
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_loss=None,
        *,
        distillation_loss_weight=1.0,
        student_loss_weight=None,
        ce_weight=None,
        view_weights=None,
        name="distiller",
        **kwargs,
    ):
        _refuse_keras_spellings(kwargs)
        if distillation_loss is None:
            raise ValueError("Give the Distiller a `distillation_loss`, e.g. 'cskd'.")
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        self.distillation_losses = _loss_list(distillation_loss)
        # What the Distiller reads of each loss, adapted once (Keras's own
        # losses get the interface's defaults).
        self._interfaces = tuple(map(as_distillation_loss, self.distillation_losses))
        self._set_term_weights(distillation_loss_weight, student_loss_weight, ce_weight)
        self.teacher = teacher
        self.teacher.trainable = False
        self.student = student
        self.view_weights = tuple(float(w) for w in view_weights or ()) or None
        self._teacher_outputs_model = _outputs_model(
            teacher, "teacher", self._named_interfaces()
        )
        self._student_outputs_model = _outputs_model(
            student, "student", self._named_interfaces()
        )
        self.loss_layers = self._build_loss_layers()
        self._index_loss = next(
            (
                name
                for name, interface in self._named_interfaces()
                if interface.uses_sample_indices
            ),
            None,
        )
        # The 1-based epoch number, for losses that change over training (DKD's
        # warm-up); `fit` keeps it current, `train_on_batch` takes it.
        self.epoch = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="epoch"
        )
        self._in_fit = False
        several = len(self.distillation_losses) > 1
        self.term_means = Means(LOGGED_TERMS + (self._loss_names() if several else ()))
        # Built models make a built Distiller (BackupAndRestore needs that).
        self.built = bool(teacher.built and student.built)

    def _set_term_weights(
        self, distillation_loss_weight, student_loss_weight, ce_weight
    ):
        self.distillation_loss_weights = _weight_list(
            distillation_loss_weight, len(self.distillation_losses)
        )
        self.student_loss_weight, self.ce_weight = _ce_weights(
            student_loss_weight, ce_weight
        )
        # The weights of the cross-entropy and of sum_i w_i * L_i.
        alpha = self.student_loss_weight
        self._term_scales = (
            (self.ce_weight, 1.0) if alpha is None else (alpha, 1 - alpha)
        )

    @property
    def distillation_loss(self):
        """The distillation loss (the first, when there are several)."""
        return self.distillation_losses[0]

    @property
    def distillation_loss_weight(self):
        weights = self.distillation_loss_weights
        return weights[0] if len(weights) == 1 else weights

    @property
    def metrics(self):
        compiled = getattr(self, "_compile_metrics", None)
        return [self.term_means] + ([compiled] if compiled is not None else [])

    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Configures the optimizer and any extra metrics; the loss is built in."""
        if loss is not None:
            raise ValueError(
                "The Distiller computes its own loss (the cross-entropy with the "
                "labels plus the distillation losses): call compile() without "
                "`loss`, and weight the cross-entropy with `student_loss_weight` "
                "(Keras's alpha) or `ce_weight`."
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Compiles a loaded Distiller as it was saved (`keras.saving.load_model`),
        so that it trains on with its optimizer's state."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        """The student's logits (with feature losses, a dict of its compared
        outputs under `"logits"` and the layer names); a list for several views."""
        outputs = [
            self._student_outputs_model(view.images, training=training)
            for view in self._views(inputs)
        ]
        return outputs if len(outputs) > 1 else outputs[0]

    def predict(self, *args, **kwargs):
        return _logits(super().predict(*args, **kwargs))

    def predict_on_batch(self, *args, **kwargs):
        return _logits(super().predict_on_batch(*args, **kwargs))

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), EpochCounter(), RefuseEmptyEpochs()]
        for callback in callbacks:
            # Keras finds a metric's direction on compiled metrics only; the
            # logged accuracy lives in `term_means`, so tell its monitors.
            monitored = getattr(callback, "monitor", "")
            if monitored in ("accuracy", "val_accuracy"):
                if getattr(callback, "mode", None) == "auto":
                    callback.mode = "max"
        _check_training_data(args[0] if args else kwargs.get("x"))
        _check_labels(args[1] if len(args) > 1 else kwargs.get("y"), self.student)
        self._build_optimizer_before_tracing()
        self._in_fit = True
        try:
            return super().fit(*args, callbacks=callbacks, **kwargs)
        finally:
            self._in_fit = False

    def _build_optimizer_before_tracing(self):
        # Keras's TensorFlow trainer without a strategy scope builds the
        # optimizer inside the first trace of the train step; a tf.function
        # that creates variables is then traced a second time. Built first,
        # the step is traced once (the same variables, the same values).
        deferred = getattr(self, "_distribute_strategy", False) is None
        optimizer = getattr(self, "optimizer", None)
        if deferred and self.built and optimizer is not None and not optimizer.built:
            optimizer.build(self.trainable_variables)

    def train_on_batch(self, *args, epoch=None, **kwargs):
        """Keras's `train_on_batch`, with `epoch=`: the 1-based epoch of the
        batch, required when a loss changes with the epoch (DKD's warm-up)."""
        if epoch is not None:
            self.epoch.assign(float(epoch))
        elif not self._in_fit:
            for name, interface in self._named_interfaces():
                if interface.uses_epoch:
                    raise ValueError(
                        f"{name} changes with the epoch, which only "
                        "fit() counts: call train_on_batch(..., epoch=N) (1-based)."
                    )
        self._build_optimizer_before_tracing()
        return super().train_on_batch(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds the compiled metrics from a batch it averages with
        # strategy.reduce, which fails on MultiWorkerMirroredStrategy's
        # per-replica batches (Keras 3.15); one replica's shard builds them alike.
        if iterator is not None and _is_multi_worker(self):
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0],
                    next(batches),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, *args):
        # An optimizer that takes the task and distillation gradients apart
        # (DOT) gets them from a step of its own (keras_cskd/split_gradients.py).
        if split_gradients.takes_split_gradients(self.optimizer):
            return split_gradients.train_step(self, *args)
        return super().train_step(*args)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The loss this replica differentiates; logs the global terms."""
        terms = self._replica_terms(x, y, y_pred, sample_weight, training)
        # Under tf.distribute each replica differentiates the global objective
        # through its own student outputs only, and the optimizer sums the
        # replicas' gradients. Regularisation is the same on every replica.
        return terms["objective"] + terms["regularization"] / _num_replicas()

    def compute_split_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """`compute_loss` in two parts, `(task, distillation)`, for an
        optimizer that takes their gradients apart (`optimizers.DOT`): the
        weighted cross-entropy plus the regularisation, and the weighted
        distillation losses."""
        terms = self._replica_terms(x, y, y_pred, sample_weight, training)
        task = terms["task_objective"] + terms["regularization"] / _num_replicas()
        return task, terms["distillation_objective"]

    def _replica_terms(self, x, y, y_pred, sample_weight, training):
        """Every term of the loss on the global batch; logs them."""
        _check_targets(y, sample_weight)
        views = self._views(x)
        if y_pred is None:
            y_pred = self(x, training=training)
        student_outputs = y_pred if len(views) > 1 else [y_pred]
        teacher_outputs = [self._teacher_outputs(view, training) for view in views]
        terms = self._combined_terms(y, teacher_outputs, student_outputs, training)
        self.term_means.update_state(
            dict(
                self._logged(terms, [x, y, trained_weights(self)]),
                accuracy=ops.mean(terms["correct"]),
            ),
            num_samples=ops.shape(terms["correct"])[0],
        )
        return terms

    def _logged(self, terms, sources):
        """The loss terms as logged: NaN where `sources` (the batch, the
        weights) hold a NaN or an infinity. XLA's max (ReLU, pooling, the
        softmax's) drops NaN, so a compiled step can compute a finite loss from
        a NaN pixel or weight (whose gradient is NaN all the same); the logs
        then show what IEEE arithmetic gives, NaN, on every compiler."""
        checks = [
            ops.all(ops.isfinite(value))
            for value in keras.tree.flatten(sources)
            if "float" in keras.backend.standardize_dtype(value.dtype)
        ]
        finite = ops.all(ops.stack(checks))
        return {
            name: ops.where(finite, value, float("nan"))
            for name, value in terms.items()
            if name in self.term_means.names
        }

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        first_view = y_pred[0] if isinstance(y_pred, list) else y_pred
        logs = super().compute_metrics(x, y, _logits(first_view), sample_weight)
        if _is_multi_worker(self):
            # Keras 3.15 reduces step logs across workers along axis 0, which
            # scalars lack; epoch logs are read from the metrics themselves.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

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

    def _teacher_outputs(self, view, training=False):
        """The teacher's outputs as a dict, with the batch's sample indices
        when a loss uses them (gathered across replicas with the outputs)."""
        if view.teacher_logits is not None:
            if self._teacher_outputs_model is not self.teacher:
                raise ValueError(
                    "Cached teacher logits carry no teacher features: train the "
                    "feature losses without `teacher_logits` in the batches."
                )
            outputs = view.teacher_logits
        else:
            outputs = self._run_teacher(view.images, training)
        outputs = dict(_as_dict(outputs))
        if self._index_loss is not None:
            if view.sample_indices is None:
                raise ValueError(
                    f"{self._index_loss} needs each example's dataset index: give "
                    f"batches whose inputs are {{'{IMAGES}': ..., "
                    f"'{SAMPLE_INDICES}': ...}}."
                )
            outputs[SAMPLE_INDICES] = view.sample_indices
        return keras.tree.map_structure(ops.stop_gradient, _float32(outputs))

    def _run_teacher(self, images, training):
        """The teacher's outputs: in inference mode, or, in a training step of a
        loss that asks for it (`teacher_in_training_mode`: mdistiller's OFD),
        in training mode: its BatchNorm layers normalise with the batch's
        statistics and update their moving ones. Its weights still get no
        gradient: they are not among the trained variables, and its outputs
        are behind `stop_gradient`."""
        in_training_mode = training and any(
            interface.teacher_in_training_mode for interface in self._interfaces
        )
        if not in_training_mode:
            return self._teacher_outputs_model(images, training=False)
        with _batch_statistics(self.teacher):
            return self._teacher_outputs_model(images, training=True)

    def _combined_terms(self, y, teacher_outputs, student_outputs, training=True):
        """Global values of every term, identical on every replica.

        With several views the cross-entropy is the `view_weights`-weighted sum
        over views, and so is each distillation loss, unless it takes all
        views at once (`num_views > 1`, e.g. `TwoViewCSKD`). A batch of one
        view (evaluation) has weight 1, and such a loss gets it as every view.
        """
        weights = self.view_weights if len(student_outputs) > 1 else (1.0,)
        gathered = [
            _global_batch(_as_dict(teacher), self._projected(student, training), y)
            for teacher, student in zip(teacher_outputs, student_outputs, strict=True)
        ]
        teachers, students, labels, replica_ids = (
            list(part) for part in zip(*gathered, strict=True)
        )
        ce_loss = sum(
            weight * self._cross_entropy(labels[0], student[LOGITS])
            for weight, student in zip(weights, students, strict=True)
        )
        values = {}
        for index, (interface, name) in enumerate(
            zip(self._interfaces, self._loss_names(), strict=True)
        ):
            if interface.num_views > 1:
                views = [(teachers, students, labels[0], None)]
                view_weights = (1.0,)
            else:
                views = zip(teachers, students, labels, replica_ids, strict=True)
                view_weights = weights
            values[name] = sum(
                weight * self._loss_value(index, *view)
                for weight, view in zip(view_weights, views, strict=True)
            )
        distillation_loss = sum(
            weight * value
            for weight, value in zip(
                self.distillation_loss_weights, values.values(), strict=True
            )
        )
        ce_scale, distillation_scale = self._term_scales
        objective = ce_scale * ce_loss + distillation_scale * distillation_loss
        weighted_distillation = distillation_loss
        if len(values) == 1:
            # One loss logs unweighted, like the cross-entropy.
            distillation_loss = next(iter(values.values()))
        regularization = ops.sum(self.losses) if self.losses else ops.zeros(())
        logits = students[0][LOGITS]
        # A row with a NaN or infinite logit predicts nothing: it is wrong on
        # every backend, whatever the class its argmax picks.
        correct = ops.logical_and(
            ops.equal(
                ops.argmax(logits, axis=-1), ops.cast(_class_ids(labels[0]), "int32")
            ),
            ops.all(ops.isfinite(logits), axis=-1),
        )
        return {
            **values,
            "objective": objective,
            "task_objective": ce_scale * ce_loss,
            "distillation_objective": distillation_scale * weighted_distillation,
            "regularization": regularization,
            "loss": objective + regularization,
            "ce_loss": ce_loss,
            "distillation_loss": distillation_loss,
            "correct": ops.cast(correct, "float32"),
        }

    def _projected(self, student_outputs, training=True):
        """This replica's student outputs, with each loss's projection (its
        own layers) added under `_projected_key`, before the gather: their
        gradients then come from this replica's rows only, like the student's.
        `training` is the step's mode (BatchNorm in a loss's modules, FitNet's
        regressor, trains in training steps only)."""
        outputs = _float32(_as_dict(student_outputs))
        for index, adapted in enumerate(self._interfaces):
            if adapted.layers:
                outputs[_projected_key(index)] = adapted.project_student(
                    outputs[_output_key(adapted.student_layer_name or LOGITS)],
                    training=training,
                )
        return outputs

    def _cross_entropy(self, labels, student_logits):
        for interface in self._interfaces:
            # SKD can ask for its normalised logits in the cross-entropy too.
            student_logits = interface.student_logits_for_ce(student_logits)
        return ops.mean(cross_entropy(labels, student_logits))

    def _loss_value(self, index, teacher, student, labels, replica_ids):
        """Loss `index` on one view (or, for `num_views > 1`, on all views)."""
        adapted = self._interfaces[index]
        teacher_key = _output_key(adapted.teacher_layer_name or LOGITS)
        student_key = _output_key(adapted.student_layer_name or LOGITS)
        if adapted.layers:
            student_key = _projected_key(index)
        # The rows' sample indices (the same in every view), as a loss input.
        extra = {}
        if adapted.uses_sample_indices:
            first = teacher[0] if isinstance(teacher, list) else teacher
            extra["sample_indices"] = first[SAMPLE_INDICES]
        if isinstance(teacher, list):  # a loss over all views
            if len(teacher) == 1:  # evaluation's one view serves as each
                teacher, student = (v * adapted.num_views for v in (teacher, student))
            teacher = [t[teacher_key] for t in teacher]
            student = [s[student_key] for s in student]
        else:
            teacher, student = teacher[teacher_key], student[student_key]
        if replica_ids is not None and not adapted.global_batch:
            return self._mean_over_shards(
                adapted, (teacher, student, labels, extra), replica_ids
            )
        return self._scalar_loss(adapted, teacher, student, labels, extra)

    def _mean_over_shards(self, adapted, inputs, replica_ids):
        """The loss of each replica's shard of `inputs` (teacher, student,
        labels, extra inputs), averaged by shard size."""
        from keras_cskd import distribute

        total = ops.zeros(())
        for shard, shard_size in distribute.shards(inputs, replica_ids):
            loss = self._scalar_loss(adapted, *shard)
            total += ops.where(shard_size > 0, loss * shard_size, 0.0)
        return total / ops.cast(ops.shape(inputs[2])[0], "float32")

    def _scalar_loss(self, adapted, teacher, student, labels, extra):
        kwargs = {"labels": labels}
        if adapted.uses_epoch:
            kwargs["epoch"] = self.epoch
        if adapted.uses_sample_indices:
            kwargs["sample_indices"] = ops.cast(extra["sample_indices"], "int32")
        loss = adapted.compare(teacher, student, **kwargs)
        if len(getattr(loss, "shape", ())) != 0:
            raise ValueError(
                f"{type(adapted).__name__}.compute_loss must return a scalar, "
                f"got shape {loss.shape}."
            )
        return ops.cast(loss, "float32")

    def _named_interfaces(self):
        """`(class name, interface)` of each loss, for messages."""
        names = (type(loss).__name__ for loss in self.distillation_losses)
        return tuple(zip(names, self._interfaces, strict=True))

    def _loss_names(self):
        """Each loss's logged name, e.g. `"cskd_loss"` (`"distillation_loss"`
        for a single loss)."""
        if len(self.distillation_losses) == 1:
            return ("distillation_loss",)
        names = []
        for loss in self.distillation_losses:
            name = f"{_snake_case(type(loss).__name__)}_loss"
            names.append(name if name not in names else f"{name}_{len(names) + 1}")
        return tuple(names)

    def _build_loss_layers(self):
        """Builds each loss's own layers (FitNets' regressor) for the shapes of
        the outputs it compares; the Distiller tracks and trains them."""
        layers = []
        for adapted in self._interfaces:
            if adapted.reads_teacher_batch_norms:
                # OFD's margins come from the teacher's BatchNorm weights; a
                # loss never reads a model, so the Distiller hands them over.
                adapted.use_teacher_batch_norms(taps.bn_before_relu(self.teacher))
            adapted.build(
                _output_shape(self.teacher, adapted.teacher_layer_name),
                _output_shape(self.student, adapted.student_layer_name),
            )
            layers.extend(adapted.layers)
        return layers

    def get_config(self):
        config = super().get_config()
        losses = [
            keras.saving.serialize_keras_object(loss)
            for loss in self.distillation_losses
        ]
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_loss": losses if len(losses) > 1 else losses[0],
                "distillation_loss_weight": self.distillation_loss_weight,
                "student_loss_weight": self.student_loss_weight,
                "ce_weight": self.ce_weight,
                "view_weights": self.view_weights,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "ce_weight" not in config:
            # Written before `ce_weight` existed, when `student_loss_weight`
            # was the cross-entropy's weight (not Keras's alpha): load it so.
            config["ce_weight"] = config.pop("student_loss_weight", 1.0)
        for key in ("teacher", "student", "distillation_loss"):
            config[key] = _deserialize(config[key])
        return cls(**config)


class _View:
    """One view of a batch: its images, the teacher's logits if cached, and
    each example's dataset index if given."""

    def __init__(self, images, teacher_logits=None, sample_indices=None):
        self.images, self.teacher_logits = images, teacher_logits
        self.sample_indices = sample_indices

    @classmethod
    def of(cls, x):
        if isinstance(x, dict) and (CACHED_TEACHER_LOGITS in x or SAMPLE_INDICES in x):
            return cls(x[IMAGES], x.get(CACHED_TEACHER_LOGITS), x.get(SAMPLE_INDICES))
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


def _check_targets(y, sample_weight):
    if sample_weight is not None:
        raise ValueError(
            "The Distiller does not take sample weights or class weights: the "
            "batch-wise distillation losses have no per-sample weighting. "
            "Resample the dataset instead."
        )
    if y is None:
        raise ValueError("The Distiller needs labels: give it (inputs, labels) pairs.")


def _check_training_data(x):
    """Refuses a path, and training data known to be empty
    (`RefuseEmptyEpochs` catches the data whose size is only known once read)."""
    if isinstance(x, (str, os.PathLike)):
        raise ValueError(
            f"fit() got the path {str(x)!r}: it reads arrays, a tf.data.Dataset or "
            "a keras.utils.PyDataset; load the files first, e.g. with "
            f"keras_cskd.data.load('folder:{x}')."
        )
    if isinstance(x, keras.utils.PyDataset):
        size = len(x)
    elif hasattr(x, "cardinality"):  # a tf.data or tf.distribute dataset
        size = x.cardinality() if callable(x.cardinality) else x.cardinality
        size = int(size)
    else:
        first = keras.tree.flatten(x)[:1]
        size = len(first[0]) if first and hasattr(first[0], "__len__") else -1
    if size == 0:
        raise ValueError(
            "The training data is empty: check the dataset's path, its filters "
            "and its size."
        )


def _check_labels(labels, student):
    """Refuses array labels that are not the student's class ids or one-hot/soft
    rows before any step: a float id would be truncated, a string or an
    out-of-range id fail deep in the graph."""
    shape = _static_shape(student, "output")
    if labels is not None and shape and hasattr(labels, "__len__"):
        class_labels(labels, shape[-1], where="fit()'s `y`")


# Replicas under MirroredStrategy trace the teacher in threads that take
# turns at cross-replica calls: the layers stay trainable until the last
# replica's teacher call has returned.
_batch_statistics_lock = threading.Lock()
_batch_statistics_users = {}


@contextlib.contextmanager
def _batch_statistics(model):
    """Runs `model`'s frozen BatchNorm layers with batch statistics inside.

    Keras 3 runs a BatchNormalization layer whose `trainable` is False in
    inference mode whatever `training` says; PyTorch's `train()` does not
    look at `requires_grad`. The layers are made trainable for the call and
    frozen again after it, before the step lists its trained variables.
    """
    batch_norms = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    with _batch_statistics_lock:
        _batch_statistics_users[id(model)] = (
            _batch_statistics_users.get(id(model), 0) + 1
        )
        for layer in batch_norms:
            layer.trainable = True
    try:
        yield
    finally:
        with _batch_statistics_lock:
            _batch_statistics_users[id(model)] -= 1
            if not _batch_statistics_users[id(model)]:
                del _batch_statistics_users[id(model)]
                for layer in batch_norms:
                    layer.trainable = False


def _as_dict(outputs):
    return outputs if isinstance(outputs, dict) else {LOGITS: outputs}


def _projected_key(index):
    return f"projected_{index}"


def _float32(outputs):
    return keras.tree.map_structure(lambda t: ops.cast(t, "float32"), outputs)


def _logits(outputs):
    return outputs[LOGITS] if isinstance(outputs, dict) else outputs


def _num_replicas():
    if keras.backend.backend() != "tensorflow":
        return 1  # JAX's DataParallel and PyTorch run one program
    from keras_cskd import distribute

    return distribute.num_replicas()


def _global_batch(teacher, student, labels):
    if _num_replicas() == 1:
        return teacher, student, labels, None
    from keras_cskd import distribute

    return distribute.global_batch(teacher, student, labels)


def _is_multi_worker(model):
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(
        model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
    )


def _loss_list(losses):
    losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
    if not losses:
        raise ValueError("`distillation_loss` is an empty list: give at least one.")
    losses = [
        losses_module.get(loss) if isinstance(loss, str) else loss for loss in losses
    ]
    for loss in losses:
        if not isinstance(loss, keras.distillation.DistillationLoss):
            raise ValueError(
                "`distillation_loss` must be a keras.distillation.DistillationLoss "
                f"(for example keras_cskd.losses.CSKD()), got {loss!r}."
            )
    return losses


def _weight_list(weights, num_losses):
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(weights) != num_losses:
        raise ValueError(
            f"`distillation_loss_weight` has {len(weights)} weights for "
            f"{num_losses} losses: give one weight per loss."
        )
    return [non_negative_number("distillation_loss_weight", w) for w in weights]


def _ce_weights(student_loss_weight, ce_weight):
    """`(alpha, None)` for Keras's `student_loss_weight=alpha`, else
    `(None, ce_weight)` (1 when neither is given)."""
    if student_loss_weight is not None and ce_weight is not None:
        raise ValueError(
            "Give `student_loss_weight` (Keras's alpha: alpha * CE + (1 - alpha) * "
            "distillation) or `ce_weight` (ce_weight * CE + distillation), not both."
        )
    if student_loss_weight is None:
        ce_weight = 1.0 if ce_weight is None else ce_weight
        return None, non_negative_number("ce_weight", ce_weight)
    alpha = student_loss_weight
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (0 <= alpha <= 1)
    ):
        raise ValueError(
            "`student_loss_weight` is Keras's alpha (alpha * CE + (1 - alpha) * "
            f"distillation), a number in [0, 1], got {alpha!r}; to weight the "
            "cross-entropy alone, use `ce_weight`."
        )
    return float(alpha), None


def _refuse_keras_spellings(kwargs):
    """Refuses Keras's argument names whose value this Distiller takes under
    another name (`KERAS_SPELLINGS`), naming ours."""
    for keras_name, ours in KERAS_SPELLINGS.items():
        if keras_name in kwargs:
            raise ValueError(
                f"keras_cskd.Distiller takes {ours}, not `{keras_name}`: pass "
                "the same value; `student_loss_weight` (alpha) and the weights "
                "mean what they mean in keras.distillation.Distiller."
            )


def _outputs_model(model, role, named_interfaces):
    """`model`, or a model of its logits and the outputs the losses compare."""
    compared = {}
    for loss_name, interface in named_interfaces:
        name = getattr(interface, f"{role}_layer_name")
        if name is not None:
            compared.setdefault(_output_key(name), (name, loss_name))
    if not compared:
        return model
    if getattr(model, "inputs", None) is None:
        first_loss = next(iter(compared.values()))[1]
        raise ValueError(
            f"{first_loss} compares a layer of the {role}, which needs a "
            f"functional or Sequential {role}: build it that way."
        )
    outputs = {LOGITS: model.outputs[0]}
    for key, (name, loss_name) in compared.items():
        outputs[key] = _compared_outputs(model, role, name, loss_name)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_outputs")


def _compared_outputs(model, role, name, loss_name):
    """The symbolic output(s) a loss names: a layer's, a feature tap's
    (`"feats[1:]"`, `keras_cskd.models.taps.tap`) or a list of layers'."""
    if isinstance(name, (list, tuple)):
        return [_compared_outputs(model, role, n, loss_name) for n in name]
    layer_names = [layer.name for layer in model.layers]
    if name not in layer_names and taps.is_tap_spec(name):
        try:
            return taps.tap(model, name)
        except ValueError as error:
            raise ValueError(f"{loss_name}, in the {role}: {error}") from None
    if name not in layer_names:
        raise ValueError(
            f"{loss_name}: the {role} has no layer '{name}'; its layers are "
            f"{', '.join(layer_names)}."
        )
    return model.get_layer(name).output


def _output_key(name):
    """The key of the outputs a loss names, in the outputs dict."""
    return ",".join(name) if isinstance(name, (list, tuple)) else name


def _output_shape(model, layer_name):
    """The static shape of the output(s) a loss names (a list for several)."""
    if layer_name is None:
        return _static_shape(model, "output")
    outputs = _compared_outputs(model, "model", layer_name, "The loss")
    return keras.tree.map_structure(lambda t: tuple(t.shape), outputs)


def _snake_case(name):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _deserialize(config):
    if isinstance(config, list):
        return [keras.saving.deserialize_keras_object(c) for c in config]
    return keras.saving.deserialize_keras_object(config)


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
