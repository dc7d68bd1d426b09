"""One training run, as `train.py` drives it: config in, workdir and summary out.

`run` is four steps, each with one job:

1. `prepare`: validate the config and the workdir, load and check the data
   and the teacher. Nothing is written, so a run that cannot start leaves no
   workdir.
2. `build`: the model, optimizer and trainer inside the strategy's scope,
   restored from the workdir's checkpoint when there is one; the teacher's
   outputs and test accuracy are checked before anything is written; then
   the workdir is claimed (`keras_cskd.workdir`: locked, cleared for
   `overwrite`).
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
from keras_cskd import workdir as workdir_module
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
    resumed: checkpointing.Resumed = dataclasses.field(
        default_factory=lambda: checkpointing.Resumed(0, 0, {})
    )
    teacher_accuracy: float | None = None  # on the test split, before training
    claim: object = None  # the chief's lock on the workdir (workdir.claim)

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

    Run again, it keeps the seeds that finished (their `summary.json`),
    resumes an interrupted one from its checkpoint and runs the rest;
    `overwrite=True` starts every seed over.

    Example:

    >>> aggregate = run_seeds(config, "runs/kd", seeds=[0, 1, 2, 3, 4])
    >>> aggregate["metrics"]["student_test_accuracy"]["mean"]
    """
    repeated = sorted({seed for seed in seeds if list(seeds).count(seed) > 1})
    if repeated:
        raise ValueError(
            f"--seeds lists seed {repeated[0]} more than once: give each seed "
            "once, e.g. --seeds=0,1,2."
        )
    workdir, chief = Path(workdir), distribute.is_chief()
    workdir_module.check(workdir, overwrite, "seeds", probe_lock=chief)
    runs = [f"seed_{seed}" for seed in seeds]
    with workdir_module.claim(workdir, overwrite, "seeds", runs, chief=chief):
        summaries = [_seed_summary(config, workdir, seed) for seed in seeds]
        aggregate = summary_module.aggregate(seeds, summaries)
        if chief:
            files.write_text(
                workdir / "seeds.json", json.dumps(aggregate, indent=2) + "\n"
            )
    return aggregate


def _seed_summary(config, workdir, seed):
    """One seed's summary: a finished seed's is read back (if it ran this
    config), any other seed is run, or resumed from its checkpoint."""
    seeded = copy.deepcopy(config)
    seeded.seed = int(seed)
    seed_dir = workdir / f"seed_{seed}"
    if not (seed_dir / "summary.json").exists():
        return run(seeded, seed_dir)
    summary = json.loads((seed_dir / "summary.json").read_text())
    saved = json.loads((seed_dir / "config.json").read_text())
    changes = config_module.changed_keys(saved, _config_dict(seeded))
    if summary["epochs"] != seeded.epochs:
        changes["epochs"] = (summary["epochs"], seeded.epochs)
    if changes:
        listed = "; ".join(
            f"{k}: {old!r} then, {new!r} now" for k, (old, new) in changes.items()
        )
        raise ValueError(
            f"{seed_dir} holds a finished run of another config ({listed}): pass "
            "--overwrite to start every seed over, or choose another --workdir."
        )
    print(f"Seed {seed} finished before: keeping {seed_dir / 'summary.json'}.")
    return summary


def run(config, workdir, overwrite=False):
    """Trains (or distils) the model `config` describes; writes `workdir`.

    Everything that can be checked is checked before the workdir is created,
    so a bad config, dataset or teacher leaves nothing behind. A run that
    finds a checkpoint in `workdir` resumes from it, on any strategy, if its
    config is the checkpoint's (up to `config.RESUMABLE_CHANGES`); a finished
    run (one with a `summary.json`) is only replaced with `overwrite=True`,
    which deletes the files a run writes and nothing else. The workdir is
    locked while the run writes it (`keras_cskd.workdir`).

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
        if state.claim is not None:
            state.claim.close()  # the workdir's lock


def prepare(config, workdir, overwrite=False):
    """Step 1: checks everything that can be checked; writes nothing."""
    state = Run(config, Path(workdir), overwrite, time.time())
    config_module.validate(config)
    workdir_module.check(state.workdir, overwrite, probe_lock=distribute.is_chief())
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
    the strategy's scope; then the chief claims the workdir (a model that
    cannot be built has cleared nothing). Non-chief workers resume from the
    chief's checkpoint and write to a scratch directory, `workdir/.<task>`,
    removed at the end."""
    config, dataset = state.config, state.dataset
    with state.strategy.scope():
        state.model = models_module.get(
            config.model, dataset.num_classes, dataset.input_shape
        )
        if state.teacher_path is not None:
            state.teacher = models_module.load_teacher(
                state.teacher_path,
                dataset,
                config.teacher.outputs,
                images=_first_test_images(state),
            )
            state.teacher_accuracy = _teacher_accuracy(state)
        optimizer = builders.build_optimizer(config, state.steps_per_epoch)
        state.trainer = builders.build_trainer(
            config, state.model, state.teacher, optimizer
        )
        resumed = not state.overwrite and checkpointing.restore(
            state.workdir / "checkpoint",
            state.trainer,
            _frozen(state),
            config=_config_dict(config),
            teacher_file=state.teacher_path,
        )
    if resumed and resumed.step > state.steps_per_epoch:
        raise ValueError(
            f"The checkpoint {state.workdir / 'checkpoint'} is at step "
            f"{resumed.step} of an epoch of {state.steps_per_epoch} steps: resume "
            "with the training data it was made with, or start over with "
            "--overwrite or another --workdir."
        )
    if resumed and resumed.step == state.steps_per_epoch and resumed.logs is None:
        raise ValueError(
            f"The checkpoint {state.workdir / 'checkpoint'} was written by keras-cskd "
            "0.1 after an epoch's last step, without the epoch's logs its end "
            "needs: delete it to start over (or resume from an earlier copy)."
        )
    if resumed:
        state.resumed = resumed
        print(
            f"Resuming from {state.workdir / 'checkpoint'}: epoch "
            f"{resumed.epoch + 1}, step {resumed.step}."
        )
    chief = distribute.is_chief()  # it claims (locks, clears) the workdir
    state.claim = workdir_module.claim(
        state.workdir, state.overwrite, runs=["teacher"], chief=chief
    )
    state.out = state.workdir
    if not chief:  # a killed worker's scratch is replaced
        state.out = state.workdir / f".{distribute.task_name()}"
        shutil.rmtree(state.out, ignore_errors=True)
    state.out.mkdir(parents=True, exist_ok=True)
    files.write_text(state.out / "config.json", config.to_json_best_effort(indent=2))


def fit(state):
    """Step 3: trains the epochs left. A resumed run first finishes its
    interrupted epoch (its steps left, or, when all ran, the end of the epoch:
    validation, test accuracy, logs); each epoch's batches and augmentations
    depend on (seed, epoch, step) alone, resumed or not. Returns the per-epoch
    history."""
    config, resumed = state.config, state.resumed
    steps_done = resumed.step == state.steps_per_epoch  # but not the epoch's end
    checkpointer = checkpointing.Checkpointer(
        state.out / "checkpoint",
        every_steps=config.checkpoint_every_steps,
        frozen=_frozen(state),
        history=resumed.history,
        config=_config_dict(config),
        teacher_file=state.teacher_path,
        metrics=None if steps_done else resumed.metrics,
    )
    # First: a non-finite step stops the run before any other callback, so
    # before the checkpointer writes its weights (at that step or at the end of
    # its epoch) and before the logs record an epoch that did not finish.
    stop_on_non_finite = callbacks.StopOnNonFiniteLoss()
    fit_callbacks = [
        stop_on_non_finite,
        callbacks.TestAccuracy(state.model, *state.test, config.data.eval_batch_size),
        keras.callbacks.CSVLogger(str(state.out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(state.out / "tensorboard")),
        checkpointer,  # last: an epoch's checkpoint follows its logs
    ]
    _keep_logged_epochs(state.out / "log.csv", resumed.history)
    validation = state.dataset.validation and (
        _eval_pipeline(state, state.dataset.validation)
        if state.streamed
        else data_module.pipeline(state.dataset.validation, config.data.eval_batch_size)
    )
    first_epoch, first_step = resumed.epoch, resumed.step
    if steps_done:
        _end_epoch(state, first_epoch, resumed.logs, fit_callbacks, validation)
        first_epoch, first_step = first_epoch + 1, 0
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


def _end_epoch(state, epoch, logs, fit_callbacks, validation):
    """What Keras's `fit` does after an epoch's last step, for an epoch whose
    steps all ran before its checkpoint: the epoch's logs (saved with the
    checkpoint), validation, and the callbacks' end of the epoch, once."""
    trainer = state.trainer
    callback_list = keras.callbacks.CallbackList(fit_callbacks, model=trainer)
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(epoch)
    logs = dict(logs)
    if validation:
        results = trainer.evaluate(
            validation, callbacks=callback_list, return_dict=True, verbose=0
        )
        logs.update({f"val_{name}": value for name, value in results.items()})
    callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end(logs)


def _keep_logged_epochs(path, history):
    """Keeps the CSV log's header and the rows of the epochs the checkpoint
    holds: a row logged after it, before a kill, is logged again."""
    done = len(next(iter(history.values()), []))
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not done:
        files.remove_tree(path)
    elif len(lines) > done + 1:
        files.write_text(path, "".join(lines[: done + 1]))


def _last_good_checkpoint(directory):
    """What a rerun of a run stopped by a non-finite step starts from."""
    try:
        loaded = checkpointing.load(directory)
    except checkpointing.CorruptCheckpointError as error:
        return str(error)
    if loaded is None:
        return (
            "No checkpoint was written, so a rerun starts from the beginning once "
            "the cause is fixed."
        )
    metadata = loaded[0]
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
        summary["teacher_test_accuracy"] = state.teacher_accuracy
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
    augmentation = (
        augment.standard_augmentation(dataset) if config.data.augment else None
    )
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
            augment.strong_augmentation(dataset, config.seed)
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
    if data.image_size:
        options["image_size"] = data.image_size
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
    """The teacher's test accuracy, measured before training: a teacher near
    chance (a wrong or untrained one would waste the whole run) is refused
    unless `teacher.allow_untrained`, which only warns."""
    result = callbacks.accuracy(
        state.teacher, *state.test, state.config.data.eval_batch_size
    )
    chance = 1.0 / state.dataset.num_classes
    if result >= 1.5 * chance:
        return result
    problem = (
        f"The teacher {state.teacher_path} is near chance on the test split of "
        f"{state.dataset.name} (accuracy {result:.3f}, chance {chance:.3f})"
    )
    if not state.config.teacher.allow_untrained:
        raise ValueError(
            f"{problem}: set teacher.path to a teacher trained on this dataset (with "
            "its normalisation), or teacher.allow_untrained=True to distil from it "
            "deliberately."
        )
    warnings.warn(f"{problem}; teacher.allow_untrained is set.", stacklevel=2)
    return result


def _first_test_images(state, count=64):
    """Up to `count` test images, to look at the teacher's outputs."""
    images = state.test[0]
    if state.streamed:  # a batched pipeline of (images, labels)
        images = next(iter(images))[0]
    return images[:count]


def _export(state):
    """Exports the student and measures every artefact against it."""
    from keras_cskd import export

    directory = state.out / "export"
    calibration, test = state.dataset.train, state.test
    if state.streamed:  # the data layer's class-balanced sample of each split
        calibration, test = (
            imagenet.sample_views(
                records,
                EXPORT_SAMPLE,
                state.config.data.eval_batch_size,
                normalization=state.dataset.normalization,
            )
            for records in (state.dataset.train, state.dataset.test)
        )
        test = data_module.to_numpy(test)
    export.export(
        state.model,
        directory,
        formats=state.config.export.formats,
        representative_data=calibration,
    )
    report = export.evaluate_exports(
        state.model, directory, *test, num_classes=state.dataset.num_classes
    )
    print(export.format_table(report))
    return report["artefacts"]
