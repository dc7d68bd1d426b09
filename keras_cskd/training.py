"""One training run, as `train.py` drives it: config in, workdir and summary out.

`run` is four steps, each with one job:

1. `prepare`: validate the config, load and check the data and the teacher.
   Nothing is written, so a run that cannot start leaves no workdir.
2. `build`: the model, optimizer and trainer inside the strategy's scope,
   restored from the workdir's checkpoint when there is one.
3. `fit`: the epochs that are left, checkpointed as they go.
4. `finalise`: save the model, export it, write the summary.

Example:

>>> summary = run(load_config("configs/digits_kd.py"), "runs/digits_kd")
"""

import copy
import dataclasses
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from keras_cskd import builders, callbacks, checkpointing, cli, distribute, files
from keras_cskd import config as config_module
from keras_cskd import data as data_module
from keras_cskd import models as models_module
from keras_cskd import summary as summary_module
from keras_cskd.data import augment, imagenet, teacher_cache
from keras_cskd.data.checks import check_dataset

# A streamed (ImageNet-scale) dataset's exports are measured on this many test
# images, and its int8 export calibrated on this many training images.
EXPORT_SAMPLE = 1000


@dataclasses.dataclass
class Run:
    """What the steps of one run hand to each other."""

    config: object
    workdir: Path
    overwrite: bool
    start: float
    strategy: object = None
    dataset: object = None
    test: tuple = ()  # (images, labels) as NumPy arrays
    teacher_path: Path | None = None
    out: Path | None = None  # the workdir, or a non-chief's scratch directory
    model: object = None
    teacher: object = None
    trainer: object = None
    resumed: tuple = (0, 0, {})  # (epoch, step, history)

    @property
    def streamed(self):
        """Whether the splits are encoded images read as needed (ImageNet)."""
        return isinstance(self.dataset.train, imagenet.ImageRecords)

    @property
    def steps_per_epoch(self):
        if self.streamed:
            return imagenet.steps_per_epoch(
                self.dataset.train, self.config.data.batch_size
            )
        examples = int(self.dataset.train.cardinality())
        return math.ceil(examples / self.config.data.batch_size)


def main(config, workdir, overwrite=False, verbose=False, seeds=()):
    """Runs `config` for the command line and returns the exit code; a user
    error is one line on stderr (`keras_cskd.cli`), the traceback with
    `verbose`. With `seeds`, runs once per seed and prints their aggregate."""
    try:
        if seeds:
            result = run_seeds(config, workdir, seeds, overwrite=overwrite)
        else:
            result = run(config, workdir, overwrite=overwrite)
    except Exception as error:
        if verbose:
            raise
        return cli.report(error)
    if seeds:
        for key, stats in result["metrics"].items():
            print(
                f"{key}: {stats['mean']:.4f} +- {stats['std']:.4f} ({len(seeds)} seeds)"
            )
    else:
        print(summary_module.format_summary(result))
    print(f"Results in {workdir}")
    return 0


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
    aggregate = summary_module.aggregate(seeds, summaries)
    files.write_text(
        Path(workdir) / "seeds.json", json.dumps(aggregate, indent=2) + "\n"
    )
    return aggregate


def run(config, workdir, overwrite=False):
    """Trains (or distils) the model `config` describes; writes `workdir`.

    Everything that can be checked is checked before the workdir is created,
    so a bad config, dataset or teacher leaves nothing behind. A run that
    finds a checkpoint in `workdir` resumes from it, on any strategy, if its
    config is the checkpoint's (up to `config.RESUMABLE_CHANGES`); a finished
    run (one with a `summary.json`) is only replaced with `overwrite=True`.

    Returns the summary dict (also written as `workdir/summary.json`).
    """
    state = prepare(config, workdir, overwrite)
    try:
        build(state)
        history = fit(state)
        return finalise(state, history)
    finally:
        if state.out is not None and state.out != state.workdir:
            shutil.rmtree(state.out, ignore_errors=True)  # a non-chief's scratch


def prepare(config, workdir, overwrite=False):
    """Step 1: checks everything that can be checked; writes nothing."""
    state = Run(config, Path(workdir), overwrite, time.time())
    config_module.validate(config)
    if (state.workdir / "summary.json").exists() and not overwrite:
        raise ValueError(
            f"{workdir} holds a finished run; pass --overwrite to replace it, or "
            "choose another --workdir."
        )
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    state.strategy = distribute.get_strategy(config.strategy)
    state.dataset = data_module.load(
        config.data.name,
        data_dir=config.data.data_dir or None,
        download=config.data.download,
        validation_fraction=config.data.validation_fraction,
        seed=config.seed,
        **_load_options(config.data),
    )
    check_dataset(state.dataset)
    if state.streamed:
        _check_streamed(config)
        state.test = (_eval_pipeline(state, state.dataset.test), None)
    else:
        state.test = data_module.to_numpy(state.dataset.test)
    if config.loss.method != "scratch":
        state.teacher_path = _teacher_path(config, state.workdir)
    return state


def build(state):
    """Step 2: every variable (the teacher's too) is created and restored in
    the strategy's scope; non-chief workers resume from the chief's checkpoint
    and write to a scratch directory, `workdir/.<task>`, removed at the end."""
    config, dataset = state.config, state.dataset
    with state.strategy.scope():
        state.model = models_module.get(
            config.model, dataset.num_classes, dataset.input_shape
        )
        if state.teacher_path is not None:
            state.teacher = builders.load_teacher(state.teacher_path, dataset)
        optimizer = builders.build_optimizer(config, state.steps_per_epoch)
        state.trainer = builders.build_trainer(
            config, state.model, state.teacher, optimizer
        )
        resumed = not state.overwrite and checkpointing.restore(
            state.workdir / "checkpoint",
            state.trainer,
            _frozen(state),
            config=_config_dict(config),
        )
    if resumed:
        state.resumed = resumed
        print(
            f"Resuming from {state.workdir / 'checkpoint'}: epoch {resumed[0] + 1}, "
            f"step {resumed[1]}."
        )
    chief = distribute.is_chief()
    if chief and state.overwrite and state.workdir.exists():
        _clear(state.workdir)
    state.out = state.workdir
    if not chief:  # a killed worker's scratch is replaced
        state.out = state.workdir / f".{distribute.task_name()}"
        shutil.rmtree(state.out, ignore_errors=True)
    state.out.mkdir(parents=True, exist_ok=True)
    files.write_text(state.out / "config.json", config.to_json_best_effort(indent=2))


def fit(state):
    """Step 3: trains the epochs left. A resumed run first finishes its
    interrupted epoch; each epoch's batches and augmentations depend on
    (seed, epoch, step) alone, resumed or not. Returns the per-epoch history."""
    config = state.config
    first_epoch, first_step, history = state.resumed
    checkpointer = checkpointing.Checkpointer(
        state.out / "checkpoint",
        every_steps=config.checkpoint_every_steps,
        frozen=_frozen(state),
        history=history,
        config=_config_dict(config),
    )
    # First: a non-finite step stops the run before any other callback, so
    # before the checkpointer writes its weights (at that step or at the end of
    # its epoch) and before the logs record an epoch that did not finish.
    stop_on_non_finite = callbacks.StopOnNonFiniteLoss()
    fit_callbacks = [
        stop_on_non_finite,
        callbacks.TestAccuracy(state.model, *state.test, config.data.eval_batch_size),
        checkpointer,
        keras.callbacks.CSVLogger(str(state.out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(state.out / "tensorboard")),
    ]
    validation = state.dataset.validation and (
        _eval_pipeline(state, state.dataset.validation)
        if state.streamed
        else data_module.pipeline(state.dataset.validation, config.data.eval_batch_size)
    )
    segments = [(first_epoch, first_epoch + 1, first_step)] if first_step else []
    segments.append((first_epoch + (1 if first_step else 0), config.epochs, 0))
    for begin, end, skip in segments:
        if begin >= end:
            continue
        checkpointer.first_step = stop_on_non_finite.first_step = skip
        try:
            state.trainer.fit(
                _train_pipeline(state, begin, end, skip),
                epochs=end,
                initial_epoch=begin,
                steps_per_epoch=state.steps_per_epoch - skip,
                validation_data=validation,
                callbacks=fit_callbacks,
                verbose=config.verbose
                if config.verbose == "auto"
                else int(config.verbose),
            )
        except callbacks.NonFiniteLossError as error:
            raise callbacks.NonFiniteLossError(
                f"{error} {_last_good_checkpoint(checkpointer.directory)}"
            ) from None
    return checkpointer.history


def _last_good_checkpoint(directory):
    """What a rerun of a run stopped by a non-finite step starts from."""
    try:
        metadata = json.loads((directory / checkpointing.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return (
            "No checkpoint was written, so a rerun starts from the beginning once "
            "the cause is fixed."
        )
    return (
        f"The last good checkpoint, {directory} (epoch {metadata['epoch'] + 1}, "
        f"step {metadata['step']}), is kept: a rerun with the same config resumes "
        "from it; to change the config (e.g. the learning rate), start over with "
        "--overwrite."
    )


def finalise(state, history):
    """Step 4: saves the model, exports it (chief), writes the summary and
    removes the finished run's checkpoint."""
    config, model, out = state.config, state.model, state.out
    with files.atomic_path(out / "student.keras") as tmp:
        model.save(tmp)
    chief = out == state.workdir
    if config.save_model_to and chief:
        with files.atomic_path(config.save_model_to) as tmp:
            model.save(tmp)
    summary = {
        "config": config.name,
        "method": config.loss.method,
        "model": config.model,
        "seed": config.seed,
        "replicas": state.strategy.num_replicas_in_sync,
        "epochs": config.epochs,
        "model_params": model.count_params(),
        **summary_module.epoch_summary(history),
    }
    if state.teacher is not None:
        summary["teacher_test_accuracy"] = _teacher_accuracy(state)
        summary["teacher_params"] = state.teacher.count_params()
    if chief and config.export.formats:
        summary["exports"] = _export(state)
    summary["wall_time_s"] = round(time.time() - state.start, 1)
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out / "checkpoint", ignore_errors=True)  # the run is finished
    return summary


def _train_pipeline(state, begin, end, skip):
    config, dataset = state.config, state.dataset
    examples = dataset.train
    if state.streamed:  # each input pipeline decodes its replicas' rows only
        return state.strategy.distribute_datasets_from_function(
            lambda context: imagenet.train_pipeline(
                examples,
                config.data.batch_size,
                seed=config.seed,
                epochs=end,
                first_epoch=begin,
                skip_steps=skip,
                normalization=dataset.normalization,
                input_context=context,
            )
        )
    cached = state.teacher is not None and config.data.cache_teacher_logits
    augmentation = _augmentation(dataset) if config.data.augment else None
    if cached and augmentation is not None:  # every crop/flip variant, cached
        logits = teacher_cache.ensure(
            state.teacher_path,
            state.teacher,
            dataset,
            augmentation,
            dtype=config.data.cache_dtype,
        )
        return teacher_cache.pipeline(
            examples,
            logits,
            config.data.batch_size,
            augmentation,
            seed=config.seed,
            epochs=end,
            first_epoch=begin,
            skip_steps=skip,
        )
    if cached:
        examples = data_module.with_teacher_logits(examples, state.teacher)
    return data_module.pipeline(
        examples,
        config.data.batch_size,
        training=True,
        seed=config.seed,
        augmentation=augmentation,
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


def _load_options(data):
    """The loader options a config sets (the digits loader takes none)."""
    options = {"manual_dir": data.manual_dir} if data.manual_dir else {}
    return {**options, "streaming": True} if data.streaming else options


def _check_streamed(config):
    """Refuses what the streamed (ImageNet) pipeline does not do."""
    data = config.data
    for unsupported, value in (
        ("two_views", data.two_views),
        ("mixup_alpha", data.mixup_alpha),
        ("cache_teacher_logits", data.cache_teacher_logits),
    ):
        if value:
            raise ValueError(
                f"data.{unsupported} is not supported for the streamed dataset "
                f"{data.name}: its training view is RandomResizedCrop and flip."
            )
    if not data.augment:
        raise ValueError(
            f"{data.name} is streamed and trains on RandomResizedCrop and flip: "
            "set data.augment=True."
        )


def _eval_pipeline(state, records):
    return imagenet.eval_pipeline(
        records,
        state.config.data.eval_batch_size,
        normalization=state.dataset.normalization,
    )


def _clear(workdir):
    """Removes a finished run's files; other workers' `.<task>` scratch stays."""
    for entry in workdir.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            shutil.rmtree(entry)
        elif not entry.is_dir():
            entry.unlink()


def _frozen(state):
    return [state.teacher] if state.teacher is not None else []


def _config_dict(config):
    return json.loads(config.to_json_best_effort())


def _teacher_path(config, workdir):
    """The teacher's path; trains it from its own config first if it is missing."""
    path = Path(config.teacher.path)
    if not path.exists() and not config.teacher.config:
        raise FileNotFoundError(
            f"The teacher {path} does not exist: set teacher.path to a trained "
            "teacher, or teacher.config to the config that trains it."
        )
    if not path.exists():
        teacher_config = config_module.load_config(config.teacher.config)
        teacher_config.save_model_to = str(path)
        teacher_config.strategy = config.strategy
        print(f"Teacher {path} is missing: training it with {config.teacher.config}.")
        run(teacher_config, Path(workdir) / "teacher")
    return path


def _teacher_accuracy(state):
    """The teacher's test accuracy; warns when it is near chance (a wrong or
    untrained teacher would waste the whole run)."""
    result = callbacks.accuracy(state.teacher, *state.test)
    chance = 1.0 / state.dataset.num_classes
    if result < 1.5 * chance:
        warnings.warn(
            f"The teacher's test accuracy is {result:.3f}, near chance "
            f"({chance:.3f}): is it the right, trained teacher?",
            stacklevel=2,
        )
    return result


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


def _export(state):
    """Exports the student and measures every artefact against it."""
    from keras_cskd import export

    directory = state.out / "export"
    calibration, test = state.dataset.train, state.test
    if state.streamed:  # a sample of each split, as arrays
        calibration, test = (
            _eval_pipeline(state, records).unbatch().take(EXPORT_SAMPLE)
            for records in (state.dataset.train, state.dataset.test)
        )
        test = data_module.to_numpy(test)
    export.export(
        state.model,
        directory,
        formats=state.config.export.formats,
        representative_data=calibration,
    )
    report = export.evaluate_exports(state.model, directory, *test)
    print(export.format_table(report))
    return report["artefacts"]
