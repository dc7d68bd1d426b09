"""One training run, as `train.py` drives it: config in, workdir and summary out."""

import copy
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_cskd import checkpointing, distribute, files, optimizers
from keras_cskd import config as config_module
from keras_cskd import data as data_module
from keras_cskd import losses as losses_module
from keras_cskd import models as models_module
from keras_cskd.data import augment
from keras_cskd.distiller import Distiller


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite during training."""


def build_loss(loss_config):
    """The distillation loss a `config.loss` block describes."""
    options = dict(loss_config)
    method = options.pop("method")
    cswt_on = options.pop("cswt", False)
    cswt = losses_module.CSWT(options.pop("t_min", 2.0), options.pop("t_max", 6.0))
    if method in ("cskd", "two_view_cskd"):
        options["cswt"] = cswt if cswt_on else None
    elif cswt_on:
        options["temperature"] = cswt
    return losses_module.get(method, **options)


def build_optimizer(config, steps_per_epoch):
    """The configured optimizer and its learning-rate schedule (per step).

    `torch_sgd` with the `multistep` schedule is the reference recipes'
    `torch.optim.SGD` with the rate set at each epoch start (docs/reproducing.md).
    """
    opt = config.optimizer
    if opt.schedule == "constant":
        learning_rate = opt.learning_rate
    elif opt.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            opt.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch)
        )
    else:  # multistep, validated
        learning_rate = optimizers.EpochStepDecay(
            opt.learning_rate, steps_per_epoch, opt.milestones, opt.decay_rate
        )
    if opt.name == "torch_sgd":
        return optimizers.TorchSGD(
            learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    weight_decay = opt.weight_decay or None  # Keras's decoupled weight decay
    if opt.name == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=opt.momentum, weight_decay=weight_decay
        )
    return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)


def accuracy(model, images, labels, batch_size=256):
    """Top-1 accuracy of `model` on NumPy arrays."""
    logits = model.predict(images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


class _TestAccuracy(keras.callbacks.Callback):
    """Adds the student's `test_accuracy` to each epoch's logs (so the CSV and
    TensorBoard logs hold it and the summary can report last and best epoch)."""

    def __init__(self, student, images, labels, batch_size):
        super().__init__()
        self.student, self.images, self.labels = student, images, labels
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["test_accuracy"] = accuracy(
                self.student, self.images, self.labels, self.batch_size
            )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss terms are not finite,
    naming the term (cross-entropy, distillation loss, or the total with its
    regularisation) and the step."""

    TERMS = ("ce_loss", "distillation_loss", "loss")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        for term in self.TERMS:
            if term in (logs or {}) and not math.isfinite(float(logs[term])):
                raise NonFiniteLossError(
                    f"The {term} became {float(logs[term])} at epoch "
                    f"{self._epoch + 1}, step {batch + 1}: lower the learning "
                    "rate, check the data for NaN or infinite values, or (mixed "
                    "precision) check the loss scale."
                )


def main(config, workdir, overwrite=False, verbose=False, seeds=()):
    """Runs `config` for the command line: returns the exit code, and prints a
    user error as one line on stderr (the traceback too with `verbose`).
    With `seeds`, runs once per seed and prints their aggregate."""
    try:
        if seeds:
            aggregate = run_seeds(config, workdir, seeds, overwrite=overwrite)
        else:
            summary = run(config, workdir, overwrite=overwrite)
    except Exception as error:
        if verbose:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {type(error).__name__}: {message}", file=sys.stderr)
        return 1
    if seeds:
        for key, stats in aggregate["metrics"].items():
            print(
                f"{key}: {stats['mean']:.4f} +- {stats['std']:.4f} ({len(seeds)} seeds)"
            )
    else:
        print(format_summary(summary))
    print(f"Results in {workdir}")
    return 0


SEED_METRICS = (
    "student_test_accuracy",
    "student_test_accuracy_at_best_epoch",
    "best_test_accuracy_over_epochs",
)


def run_seeds(config, workdir, seeds, overwrite=False):
    """Runs `config` once per seed (in `workdir/seed_<n>`) and writes the mean
    and standard deviation of the test accuracies to `workdir/seeds.json`.

    Example:

    >>> aggregate = run_seeds(config, "runs/kd", seeds=[0, 1, 2, 3, 4])
    >>> aggregate["metrics"]["student_test_accuracy"]["mean"]
    """
    summaries = []
    for seed in seeds:
        seeded = copy.deepcopy(config)
        seeded.seed = int(seed)
        summaries.append(run(seeded, Path(workdir) / f"seed_{seed}", overwrite))
    aggregate = {
        "seeds": [int(seed) for seed in seeds],
        "metrics": {
            key: {
                "mean": float(np.mean([s[key] for s in summaries])),
                "std": float(np.std([s[key] for s in summaries], ddof=1))
                if len(summaries) > 1
                else 0.0,
                "values": [s[key] for s in summaries],
            }
            for key in SEED_METRICS
        },
    }
    files.write_text(
        Path(workdir) / "seeds.json", json.dumps(aggregate, indent=2) + "\n"
    )
    return aggregate


def run(config, workdir, overwrite=False):
    """Trains (or distils) the model `config` describes; writes `workdir`.

    Everything that can be checked is checked before the workdir is created,
    so a bad config, dataset or teacher leaves nothing behind. A run that
    finds a checkpoint in `workdir` resumes from it; a finished run (one with
    a `summary.json`) is only replaced with `overwrite=True`.

    Returns the summary dict (also written as `workdir/summary.json`).
    """
    start = time.time()
    config_module.validate(config)
    workdir = Path(workdir)
    if (workdir / "summary.json").exists() and not overwrite:
        raise ValueError(
            f"{workdir} holds a finished run; pass --overwrite to replace it, or "
            "choose another --workdir."
        )
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.get_strategy(config.strategy)
    distilling = config.loss.method != "scratch"
    loss = build_loss(config.loss) if distilling else None
    dataset = data_module.load(
        config.data.name,
        data_dir=config.data.data_dir or None,
        download=config.data.download,
        validation_fraction=config.data.validation_fraction,
        seed=config.seed,
    )
    _check_data(dataset)
    test_images, test_labels = data_module.to_numpy(dataset.test)
    if distilling:
        teacher_path = _prepare_teacher(config, workdir)

    batch_size = config.data.batch_size
    steps_per_epoch = math.ceil(int(dataset.train.cardinality()) / batch_size)
    # Every variable (the teacher's too) is created in the strategy's scope.
    with strategy.scope():
        model = models_module.get(
            config.model, dataset.num_classes, dataset.input_shape
        )
        optimizer = build_optimizer(config, steps_per_epoch)
        teacher = None
        if distilling:
            teacher = models_module.load(teacher_path)
            _check_teacher(teacher, dataset)
            trainer = Distiller(
                teacher,
                model,
                loss,
                student_loss_weight=config.student_loss_weight,
                distillation_loss_weight=config.distillation_loss_weight,
                view_weights=config.view_weights if config.data.two_views else None,
            )
            trainer.compile(optimizer=optimizer)
        else:
            trainer = model
            trainer.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True)
                if config.data.mixup_alpha > 0
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
    teacher_accuracy = teacher and _evaluate_teacher(
        teacher, dataset, test_images, test_labels
    )

    chief = distribute.is_chief()
    if chief and overwrite and workdir.exists():
        shutil.rmtree(workdir)
    # Non-chief workers of a multi-worker run write to a scratch directory and
    # resume from the chief's checkpoint (the workdir must be shared).
    out = workdir if chief else Path(tempfile.mkdtemp(prefix="keras_cskd_worker_"))
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "config.json", config.to_json_best_effort(indent=2))
    checkpoint = workdir / "checkpoint"
    frozen = [teacher] if teacher is not None else []
    resumed = checkpointing.restore(checkpoint, trainer, frozen)
    first_epoch, first_step, history = resumed or (0, 0, {})
    if resumed:
        print(
            f"Resuming from {checkpoint}: epoch {first_epoch + 1}, step {first_step}."
        )

    train_examples = dataset.train
    if distilling and config.data.cache_teacher_logits:
        train_examples = data_module.with_teacher_logits(train_examples, teacher)
    validation = dataset.validation and data_module.pipeline(
        dataset.validation, config.data.eval_batch_size
    )
    checkpointer = checkpointing.Checkpointer(
        checkpoint if chief else out / "checkpoint",
        every_steps=config.checkpoint_every_steps,
        frozen=frozen,
        history=history,
    )
    callbacks = [
        _TestAccuracy(model, test_images, test_labels, config.data.eval_batch_size),
        StopOnNonFiniteLoss(),
        checkpointer,
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard")),
    ]
    # A resumed run first finishes its interrupted epoch, then runs the rest;
    # each epoch's batches depend on (seed, epoch) alone, resumed or not.
    segments = [(first_epoch, first_epoch + 1, first_step)] if first_step else []
    segments.append((first_epoch + (1 if first_step else 0), config.epochs, 0))
    for begin, end, skip in segments:
        if begin >= end:
            continue
        checkpointer.first_step = skip
        train = data_module.pipeline(
            train_examples,
            batch_size,
            training=True,
            seed=config.seed,
            augmentation=_augmentation(dataset) if config.data.augment else None,
            strong_augmentation=(
                _strong_augmentation(dataset, config.seed)
                if config.data.two_views
                else None
            ),
            mixup_alpha=config.data.mixup_alpha,
            num_classes=dataset.num_classes,
            epochs=end,
            first_epoch=begin,
            skip_steps=skip,
        )
        trainer.fit(
            train,
            epochs=end,
            initial_epoch=begin,
            steps_per_epoch=steps_per_epoch - skip,
            validation_data=validation,
            callbacks=callbacks,
            verbose=config.verbose if config.verbose == "auto" else int(config.verbose),
        )
    history = checkpointer.history

    with files.atomic_path(out / "student.keras") as tmp:
        model.save(tmp)
    if config.save_model_to and chief:
        with files.atomic_path(config.save_model_to) as tmp:
            model.save(tmp)

    summary = {
        "config": config.name,
        "method": config.loss.method,
        "model": config.model,
        "seed": config.seed,
        "replicas": strategy.num_replicas_in_sync,
        "epochs": config.epochs,
        "model_params": model.count_params(),
        **_epoch_summary(history),
    }
    if teacher is not None:
        summary["teacher_test_accuracy"] = teacher_accuracy
        summary["teacher_params"] = teacher.count_params()
    if chief and config.export.formats:
        summary["exports"] = _export(
            config, model, dataset, out, test_images, test_labels
        )
    summary["wall_time_s"] = round(time.time() - start, 1)
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the run is finished
    return summary


def _epoch_summary(history):
    """Last-epoch test accuracy (the headline), and the epoch the validation
    split selects; the best test accuracy over epochs is what the reference
    frameworks report, given for comparison only."""
    test = history["test_accuracy"]
    selector = history.get("val_accuracy") or test
    best = int(np.argmax(selector))
    return {
        "last_epoch": len(test),
        "student_test_accuracy": test[-1],
        "best_epoch": best + 1,
        "best_epoch_selected_by": "val_accuracy"
        if "val_accuracy" in history
        else "test_accuracy",
        "student_test_accuracy_at_best_epoch": test[best],
        "best_validation_accuracy": max(history["val_accuracy"])
        if "val_accuracy" in history
        else None,
        "best_test_accuracy_over_epochs": max(test),
    }


def _prepare_teacher(config, workdir):
    """The teacher's path; trains it from its own config first if it is missing."""
    path = Path(config.teacher.path)
    if not path.exists() and config.teacher.config:
        teacher_config = config_module.load_config(config.teacher.config)
        teacher_config.save_model_to = str(path)
        teacher_config.strategy = config.strategy
        print(f"Teacher {path} is missing: training it with {config.teacher.config}.")
        run(teacher_config, Path(workdir) / "teacher")
    return path


def _check_data(dataset):
    """Non-empty train and test splits, and labels within the class range."""
    for split in ("train", "validation", "test"):
        examples = getattr(dataset, split)
        if examples is None:
            continue
        labels = examples.map(lambda x, y: tf.cast(y, tf.int64)).batch(8192)
        low, high, count = labels.reduce(
            (
                tf.constant(2**62, tf.int64),
                tf.constant(-(2**62), tf.int64),
                tf.constant(0, tf.int64),
            ),
            lambda state, y: (
                tf.minimum(state[0], tf.reduce_min(y)),
                tf.maximum(state[1], tf.reduce_max(y)),
                state[2] + tf.size(y, tf.int64),
            ),
        )
        if int(count) == 0:
            raise ValueError(
                f"The '{split}' split of dataset '{dataset.name}' is empty."
            )
        if int(low) < 0 or int(high) >= dataset.num_classes:
            raise ValueError(
                f"The '{split}' split of dataset '{dataset.name}' has labels in "
                f"[{int(low)}, {int(high)}], outside the {dataset.num_classes} "
                f"classes [0, {dataset.num_classes - 1}]."
            )


def _evaluate_teacher(teacher, dataset, test_images, test_labels):
    """The teacher's test accuracy; warns when it is near chance (a wrong or
    untrained teacher would waste the whole run)."""
    result = accuracy(teacher, test_images, test_labels)
    chance = 1.0 / dataset.num_classes
    if result < 1.5 * chance:
        warnings.warn(
            f"The teacher's test accuracy is {result:.3f}, near chance "
            f"({chance:.3f}): is it the right, trained teacher?",
            stacklevel=2,
        )
    return result


def _check_teacher(teacher, dataset):
    classes = teacher.output_shape[-1]
    if classes != dataset.num_classes:
        raise ValueError(
            f"The teacher predicts {classes} classes but the dataset "
            f"'{dataset.name}' has {dataset.num_classes}."
        )
    if tuple(teacher.input_shape[1:]) != tuple(dataset.input_shape):
        raise ValueError(
            f"The teacher takes inputs of shape {tuple(teacher.input_shape[1:])} "
            f"but the dataset '{dataset.name}' has images of shape "
            f"{tuple(dataset.input_shape)}."
        )


def _augmentation(dataset):
    """The standard view: the CSKD code's black-padded crop and flip (CIFAR)."""
    if tuple(dataset.input_shape[:2]) == (8, 8):
        return augment.digits_augmentation()
    return augment.cifar_augmentation(
        dataset.input_shape[:2], normalization=dataset.normalization
    )


def _strong_augmentation(dataset, seed):
    """The CSKD code's strong view: its own crop and flip, `RandAugment(2, 10)`
    and `Cutout` (`augment.cifar_strong_augmentation`); the 8x8 digits are
    padded by 1 pixel, as their standard view shifts them."""
    padding = 1 if tuple(dataset.input_shape[:2]) == (8, 8) else 4
    return augment.cifar_strong_augmentation(
        dataset.normalization, dataset.input_shape[:2], padding=padding, seed=seed
    )


def _export(config, model, dataset, out, test_images, test_labels):
    """Exports the student and measures every artefact against it."""
    from keras_cskd import export

    export.export(
        model,
        out / "export",
        formats=config.export.formats,
        representative_data=dataset.train,
    )
    report = export.evaluate_exports(model, out / "export", test_images, test_labels)
    print(export.format_table(report))
    return report["artefacts"]


def format_summary(summary):
    """A short, aligned table of a run's summary for the terminal."""
    rows = [
        ("method", summary["method"]),
        ("model (params)", f"{summary['model']} ({summary['model_params']:,})"),
    ]
    if "teacher_test_accuracy" in summary:
        rows.append(
            ("teacher test accuracy", f"{summary['teacher_test_accuracy']:.4f}")
        )
    rows += [
        (
            f"test accuracy, last epoch ({summary['last_epoch']})",
            f"{summary['student_test_accuracy']:.4f}",
        ),
        (
            f"test accuracy, best epoch ({summary['best_epoch']}, by "
            f"{summary['best_epoch_selected_by']})",
            f"{summary['student_test_accuracy_at_best_epoch']:.4f}",
        ),
    ]
    for name, report in summary.get("exports", {}).items():
        rows.append(
            (
                f"{name}: accuracy / agreement / max |dlogit|",
                f"{report['accuracy']:.4f} / {report['agreement']:.4f} / "
                f"{report['max_abs_logit_diff']:.1e}",
            )
        )
    rows.append(("wall time", f"{summary['wall_time_s']:.1f} s"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
