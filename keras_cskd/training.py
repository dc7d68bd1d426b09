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

```python
summary = run(load_config("configs/digits_kd.py"), "runs/digits_kd")
```
"""

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import keras

from keras_cskd import (
    builders,
    callbacks,
    checkpointing,
    cli,
    distribute,
    files,
    resuming,
    teachers,
)
from keras_cskd import config as config_module
from keras_cskd import seeds as seeds_module
from keras_cskd import summary as summary_module
from keras_cskd import workdir as workdir_module
from keras_cskd.data.inputs import load_inputs


@dataclasses.dataclass
class RunState:
    """What the steps of one run hand to each other."""

    config: object
    workdir: Path
    overwrite: bool
    start: float
    strategy: object = None
    inputs: object = None  # keras_cskd.data.inputs: batches, splits, samples
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
    def frozen(self):
        """The variables a checkpoint holds but training never changes."""
        return [self.teacher] if self.teacher is not None else []

    @property
    def teacher_source(self):
        """`(path, teacher)` for the inputs' teacher logits, or `None`."""
        return None if self.teacher is None else (self.teacher_path, self.teacher)


def main(config, workdir, overwrite=False, verbose=False, seeds=()):
    """Runs `config` for the command line and returns the exit code; a user
    error is one line on stderr (`keras_cskd.cli`), the traceback with
    `verbose`. With `seeds`, runs once per seed and prints their aggregate."""
    try:
        if not seeds:
            result = run(config, workdir, overwrite=overwrite)
        else:
            result = run_seeds(config, workdir, seeds, overwrite=overwrite)
    except Exception as error:
        if verbose:
            raise
        return cli.report(error)
    if not seeds:
        print(summary_module.format_summary(result))
    else:
        for key, stats in result["metrics"].items():
            print(
                f"{key}: {stats['mean']:.4f} +- {stats['std']:.4f} ({len(seeds)} seeds)"
            )
    print(f"Results in {workdir}")
    return 0


def run_seeds(config, workdir, seeds, overwrite=False):
    """`keras_cskd.seeds.run_seeds` with `run`: once per seed, aggregated in
    `workdir/seeds.json`; finished seeds are kept, an interrupted one resumes.

    Example:

    ```python
    aggregate = run_seeds(config, "runs/kd", seeds=[0, 1, 2, 3, 4])
    ```
    """
    return seeds_module.run_seeds(config, workdir, seeds, run, overwrite=overwrite)


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
    with op_determinism(config.deterministic):
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


@contextlib.contextmanager
def op_determinism(enabled):
    """TensorFlow's deterministic kernels for the run (`config.deterministic`),
    and the process's setting back after it: the switch is process-wide, and a
    run leaves other code in the process (a notebook's) as it found it."""
    # The public API can only turn it on; TensorFlow's own config turns it off.
    from tensorflow.python.framework import config as tf_config

    turned_on = enabled and not tf_config.is_op_determinism_enabled()
    if turned_on:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if turned_on:
            tf_config.disable_op_determinism()


def prepare(config, workdir, overwrite=False):
    """Step 1: checks everything that can be checked; writes nothing."""
    state = RunState(config, Path(workdir), overwrite, time.time())
    config_module.validate(config)
    workdir_module.check(state.workdir, overwrite, probe_lock=distribute.is_chief())
    keras.utils.set_random_seed(config.seed)
    state.strategy = distribute.get_strategy(config.strategy)
    state.inputs = load_inputs(config.data, config.seed, state.strategy)
    if config.loss.method != "scratch":
        state.teacher_path = teachers.teacher_path(
            config, state.workdir, train=run, inputs=state.inputs
        )
    return state


def build(state):
    """Step 2: every variable (the teacher's too) is created and restored in
    the strategy's scope; then the chief claims (locks, clears) the workdir (a
    model that cannot be built has cleared nothing). Non-chief workers resume
    from the chief's checkpoint and write to a scratch directory,
    `workdir/.<task>`, removed at the end (a killed worker's is replaced)."""
    config, inputs = state.config, state.inputs
    with state.strategy.scope():
        state.model = builders.build_model(
            config, inputs.num_classes, inputs.input_shape
        )
        if state.teacher_path is not None:
            state.teacher, state.teacher_accuracy = teachers.load_checked(
                state.teacher_path, inputs, config.teacher
            )
        optimizer = builders.build_optimizer(config, inputs.steps_per_epoch)
        state.trainer = builders.build_trainer(
            config, state.model, state.teacher, optimizer, inputs.train_labels
        )
        resumed = not state.overwrite and checkpointing.restore(
            state.workdir / "checkpoint",
            state.trainer,
            state.frozen,
            config=config_module.to_dict(config),
            teacher_file=state.teacher_path,
            steps_per_epoch=inputs.steps_per_epoch,
        )
    if resumed:
        state.resumed = resumed
        print(
            f"Resuming from {state.workdir / 'checkpoint'}: epoch "
            f"{resumed.epoch + 1}, step {resumed.step}."
        )
    chief = distribute.is_chief()
    state.claim = workdir_module.claim(
        state.workdir, state.overwrite, runs=["teacher"], chief=chief
    )
    state.out = state.workdir
    if not chief:
        state.out = state.workdir / f".{distribute.task_name()}"
        shutil.rmtree(state.out, ignore_errors=True)
    state.out.mkdir(parents=True, exist_ok=True)
    files.write_text(
        state.out / "config.json", state.config.to_json_best_effort(indent=2)
    )


def fit(state):
    """Step 3: trains the epochs left. A resumed run first finishes its
    interrupted epoch (its steps left, or, when all ran, the end of the epoch:
    validation, test accuracy, logs); each epoch's batches and augmentations
    depend on (seed, epoch, step) alone, resumed or not. Returns the per-epoch
    history."""
    config, resumed, inputs = state.config, state.resumed, state.inputs
    steps_done = resumed.step == inputs.steps_per_epoch  # but not the epoch's end
    checkpointer = checkpointing.Checkpointer(
        state.out / "checkpoint",
        every_steps=config.checkpoint_every_steps,
        frozen=state.frozen,
        history=resumed.history,
        config=config_module.to_dict(config),
        teacher_file=state.teacher_path,
        metrics=None if steps_done else resumed.metrics,
    )
    # First: a non-finite step stops the run before any other callback, so
    # before the checkpointer writes its weights (at that step or at the end of
    # its epoch) and before the logs record an epoch that did not finish.
    stop_on_non_finite = callbacks.StopOnNonFiniteLoss()
    fit_callbacks = [
        stop_on_non_finite,
        callbacks.TestAccuracy(state.model, inputs.test),
        keras.callbacks.CSVLogger(str(state.out / "log.csv"), append=True),
        keras.callbacks.TensorBoard(str(state.out / "tensorboard")),
        checkpointer,  # last: an epoch's checkpoint follows its logs
    ]
    resuming.keep_logged_epochs(state.out / "log.csv", resumed.history)
    validation = inputs.validation
    first_epoch, first_step = resumed.epoch, resumed.step
    if steps_done:
        resuming.finish_epoch(
            state.trainer, first_epoch, resumed.logs, fit_callbacks, validation
        )
        first_epoch, first_step = first_epoch + 1, 0
    for begin, end, skip in resuming.segments(first_epoch, first_step, config.epochs):
        checkpointer.first_step = stop_on_non_finite.first_step = skip
        try:
            state.trainer.fit(
                inputs.train_batches(begin, end, skip, state.teacher_source),
                epochs=end,
                initial_epoch=begin,
                steps_per_epoch=inputs.steps_per_epoch - skip,
                validation_data=validation,
                callbacks=fit_callbacks,
                verbose=config.verbose
                if config.verbose == "auto"
                else int(config.verbose),
            )
        except callbacks.NonFiniteLossError as error:
            last_good = checkpointing.last_good_checkpoint(checkpointer.directory)
            raise callbacks.NonFiniteLossError(f"{error} {last_good}") from None
    return checkpointer.history


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


def _export(state):
    """Exports the student and measures every artefact against it, on the
    inputs' calibration and test sample."""
    from keras_cskd import export

    directory = state.out / "export"
    calibration, (images, labels) = state.inputs.export_sample()
    export.export(
        state.model,
        directory,
        formats=state.config.export.formats,
        representative_data=calibration,
    )
    report = export.evaluate_exports(
        state.model, directory, images, labels, num_classes=state.inputs.num_classes
    )
    print(export.format_table(report))
    return report["artefacts"]
