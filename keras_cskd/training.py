"""One training run, as `train.py` drives it: config in, workdir and summary out."""

import importlib.util
import json
import math
import tempfile
import time
from pathlib import Path

import keras
import ml_collections
import numpy as np

from keras_cskd import data as data_module
from keras_cskd import distribute, files
from keras_cskd import losses as losses_module
from keras_cskd import models as models_module
from keras_cskd.data import augment
from keras_cskd.distiller import Distiller


def default_config():
    """Every config key with its default; experiment configs start from this.

    Example:

    >>> config = default_config()
    >>> config.loss.method = "kd"
    """
    config = ml_collections.ConfigDict()
    config.name = ""  # set from the config file's name when empty
    config.seed = 0
    config.strategy = "auto"  # auto | none | mirrored | multiworker | tpu
    config.epochs = 30
    config.verbose = "auto"  # Keras fit verbosity: auto, 0, 1 or 2
    config.data = ml_collections.ConfigDict(
        {
            "name": "digits",
            "batch_size": 64,  # the global batch, split over the replicas
            "eval_batch_size": 256,
            "augment": False,
            "mixup_alpha": 0.0,
            # A second, strongly augmented view of every image (RandAugment,
            # 2 ops at magnitude 10 of 30, then cutout); see `view_weights`.
            "two_views": False,
            # Compute the teacher's logits once and reuse them every epoch
            # (only without random augmentation, mixup or two views).
            "cache_teacher_logits": False,
        }
    )
    config.model = "digits_mlp"  # the model this run trains (the student)
    config.teacher = ml_collections.ConfigDict(
        {
            # A trained teacher; if the file is missing and `config` names a
            # config file, that config trains it first and saves it here.
            "path": "saved_models/digits_teacher.keras",
            "config": "configs/digits_teacher.py",
        }
    )
    config.loss = loss_config("cskd", temperature=4.0, cswt=True, alpha=2.0)
    config.student_loss_weight = 1.0
    config.distillation_loss_weight = 1.0
    config.view_weights = (0.5, 1.0)  # weak and strong view, with two_views
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "sgd",  # sgd | adam
            "learning_rate": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "schedule": "cosine",  # constant | cosine | multistep
            "milestones": (150, 180, 210),  # epochs, for multistep
            "decay_rate": 0.1,
        }
    )
    config.export = ml_collections.ConfigDict({"formats": "savedmodel,tflite"})
    config.save_model_to = ""  # also save the trained model here (teachers)
    return config


def loss_config(method, cswt=False, t_min=2.0, t_max=6.0, **options):
    """A `config.loss` block: the method's name, its arguments, and CSWT.

    `cswt=True` adds the CSWT term to CSKD and makes the temperature of every
    other loss `CSWT(t_min, t_max)`. `method="scratch"` trains with
    cross-entropy alone.

    Example:

    >>> config.loss = loss_config("dkd", temperature=4.0, beta=8.0)
    """
    return ml_collections.ConfigDict(
        {"method": method, "cswt": cswt, "t_min": t_min, "t_max": t_max, **options}
    )


def load_config(path):
    """Loads `get_config()` from a Python config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def build_loss(loss_config):
    """The distillation loss a `config.loss` block describes."""
    options = dict(loss_config)
    method = options.pop("method")
    cswt_on = options.pop("cswt", False)
    cswt = losses_module.CSWT(options.pop("t_min", 2.0), options.pop("t_max", 6.0))
    if method == "cskd":
        options["cswt"] = cswt if cswt_on else None
    elif cswt_on:
        options["temperature"] = cswt
    loss_class = losses_module.get(method).__class__
    return loss_class(**options)


def build_optimizer(config, steps_per_epoch):
    """SGD or Adam with the configured learning-rate schedule (per step)."""
    opt = config.optimizer
    total_steps = max(1, config.epochs * steps_per_epoch)
    if opt.schedule == "constant":
        learning_rate = opt.learning_rate
    elif opt.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            opt.learning_rate, decay_steps=total_steps
        )
    elif opt.schedule == "multistep":
        boundaries = [m * steps_per_epoch for m in opt.milestones if m < config.epochs]
        values = [
            opt.learning_rate * opt.decay_rate**i for i in range(len(boundaries) + 1)
        ]
        learning_rate = (
            keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
            if boundaries
            else opt.learning_rate
        )
    else:
        raise ValueError(
            f"Unknown learning-rate schedule '{opt.schedule}': use constant, "
            "cosine or multistep."
        )
    weight_decay = opt.weight_decay or None
    if opt.name == "sgd":
        return keras.optimizers.SGD(
            learning_rate, momentum=opt.momentum, weight_decay=weight_decay
        )
    if opt.name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{opt.name}': use sgd or adam.")


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


def run(config, workdir):
    """Trains (or distils) the model `config` describes; writes `workdir`.

    Everything that can be checked is checked before the workdir is created,
    so a bad config, dataset or teacher leaves nothing behind.

    Returns the summary dict (also written as `workdir/summary.json`).
    """
    start = time.time()
    workdir = Path(workdir)
    keras.utils.set_random_seed(config.seed)
    strategy = distribute.get_strategy(config.strategy)
    distilling = config.loss.method != "scratch"
    loss = build_loss(config.loss) if distilling else None
    dataset = data_module.load(config.data.name)
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
            teacher = None
            trainer = model
            trainer.compile(
                optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(from_logits=True)
                if config.data.mixup_alpha > 0
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )

    train_examples = dataset.train
    if distilling and config.data.cache_teacher_logits:
        train_examples = data_module.with_teacher_logits(train_examples, teacher)
    train = data_module.pipeline(
        train_examples,
        batch_size,
        training=True,
        seed=config.seed,
        augmentation=_augmentation(dataset) if config.data.augment else None,
        strong_augmentation=(
            _strong_augmentation(config.seed) if config.data.two_views else None
        ),
        mixup_alpha=config.data.mixup_alpha,
        num_classes=dataset.num_classes,
    )
    validation = dataset.validation and data_module.pipeline(
        dataset.validation, config.data.eval_batch_size
    )

    chief = distribute.is_chief()
    # Non-chief workers of a multi-worker run write to a scratch directory.
    out = workdir if chief else Path(tempfile.mkdtemp(prefix="keras_cskd_worker_"))
    out.mkdir(parents=True, exist_ok=True)
    files.write_text(out / "config.json", config.to_json_best_effort(indent=2))

    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        _TestAccuracy(model, test_images, test_labels, config.data.eval_batch_size),
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "tensorboard")),
    ]
    history = trainer.fit(
        train,
        epochs=config.epochs,
        validation_data=validation,
        callbacks=callbacks,
        verbose=config.verbose if config.verbose == "auto" else int(config.verbose),
    ).history

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
        summary["teacher_test_accuracy"] = accuracy(teacher, test_images, test_labels)
        summary["teacher_params"] = teacher.count_params()
    if chief and config.export.formats:
        summary["exports"] = _export(
            config, model, dataset, out, test_images, test_labels
        )
    summary["wall_time_s"] = round(time.time() - start, 1)
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
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
        "best_test_accuracy_over_epochs": max(test),
    }


def _prepare_teacher(config, workdir):
    """The teacher's path; trains it from its own config first if it is missing."""
    path = Path(config.teacher.path)
    if not path.exists() and config.teacher.config:
        teacher_config = load_config(config.teacher.config)
        teacher_config.save_model_to = str(path)
        teacher_config.strategy = config.strategy
        print(f"Teacher {path} is missing: training it with {config.teacher.config}.")
        run(teacher_config, Path(workdir) / "teacher")
    return path


def _check_data(dataset):
    for split in ("train", "test"):
        if next(iter(getattr(dataset, split).take(1)), None) is None:
            raise ValueError(
                f"The '{split}' split of dataset '{dataset.name}' is empty."
            )


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
    if tuple(dataset.input_shape[:2]) == (8, 8):
        return augment.digits_augmentation()
    return augment.cifar_augmentation(image_size=dataset.input_shape[0])


def _strong_augmentation(seed):
    """The CSKD code's strong view: RandAugment with 2 ops at magnitude 10
    (of 30; inferred from its RandAugment implementation) and a cutout of up
    to half the side (a quarter of the area)."""
    return keras.Sequential(
        [
            keras.layers.RandAugment(
                value_range=(0, 1), num_ops=2, factor=10 / 30, seed=seed
            ),
            keras.layers.RandomErasing(
                factor=1.0, scale=(0.02, 0.25), value_range=(0, 1), seed=seed
            ),
        ]
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
