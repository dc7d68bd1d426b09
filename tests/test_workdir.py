"""A workdir you can trust: --overwrite deletes a run's own files only, a killed
multi-seed run resumes, and a second run on a workdir in use is refused."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from keras_cskd import callbacks, training, workdir
from keras_cskd import config as config_module
from keras_cskd import summary as summary_module

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--config.epochs=1", "--config.export.formats=", "--config.verbose=0"]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *QUICK, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def refusal(result):
    """The one error line of a refused run (TensorFlow may log before it)."""
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    return errors[0]


def digits_config(**overrides):
    config = config_module.load_config(ROOT / "configs" / "digits_cskd.py")
    config.update({"epochs": 1, "verbose": "0", **overrides})
    config.export.formats = ""
    return config


def tree(directory):
    """Every path under `directory` with its file's bytes (None for a folder)."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def plant_foreign_files(directory):
    (directory / "photos").mkdir(parents=True)
    (directory / "photos" / "beach.jpg").write_bytes(b"\xff\xd8 a photo")
    (directory / "thesis.tex").write_text("precious\n")


def a_finished_run(directory):
    """A finished run's files as a run before manifests wrote them."""
    directory.mkdir(parents=True)
    config = digits_config()
    (directory / "config.json").write_text(config.to_json_best_effort())
    (directory / "summary.json").write_text("{}")
    (directory / "log.csv").write_text("epoch,loss\n0,1.0\n")
    (directory / "tensorboard" / "train").mkdir(parents=True)


# Fast tier: the rules, on planted directories.


def test_a_new_or_empty_workdir_is_a_new_run(tmp_path):
    assert workdir.check(tmp_path / "new")["layout"] == "run"
    assert workdir.check(tmp_path, layout="seeds")["layout"] == "seeds"
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_holding_no_run_is_refused_naming_a_file(tmp_path, overwrite):
    plant_foreign_files(tmp_path)
    (tmp_path / "summary.json").write_text("{}")  # a run's name, not a run
    before = tree(tmp_path)
    with pytest.raises(workdir.WorkdirError, match="holds 'photos', which no"):
        workdir.claim(tmp_path, overwrite=overwrite)
    assert tree(tmp_path) == before


def test_a_workdir_from_before_manifests_is_recognised_and_overwritten(tmp_path):
    a_finished_run(tmp_path / "run")
    with pytest.raises(workdir.WorkdirError, match="holds a finished run"):
        workdir.check(tmp_path / "run")
    with workdir.claim(tmp_path / "run", overwrite=True):
        assert sorted(os.listdir(tmp_path / "run")) == [".lock", "manifest.json"]
    assert os.listdir(tmp_path / "run") == []  # the new run wrote nothing


def test_overwrite_needs_a_runs_config_json_beside_files_named_as_a_runs(tmp_path):
    (tmp_path / "config.json").write_text('{"theme": "dark"}')
    (tmp_path / "log.csv").write_text("a spreadsheet\n")
    workdir.check(tmp_path)  # nothing would be deleted: recognised by the names
    with pytest.raises(workdir.WorkdirError, match="holds 'config.json'"):
        workdir.check(tmp_path, overwrite=True)


def test_overwrite_checks_nested_runs_before_deleting_anything(tmp_path):
    for seed in (0, 1):
        a_finished_run(tmp_path / f"seed_{seed}")
    with workdir.claim(tmp_path, layout="seeds", runs=["seed_0", "seed_1"]):
        (tmp_path / "seeds.json").write_text("{}")
    (tmp_path / "seed_1" / "notes.txt").write_text("mine\n")
    before = tree(tmp_path)
    with pytest.raises(workdir.WorkdirError, match="seed_1 holds 'notes.txt'"):
        workdir.claim(tmp_path, overwrite=True, layout="seeds")
    assert tree(tmp_path) == before


def test_a_run_of_the_other_layout_is_refused_without_overwrite(tmp_path):
    a_finished_run(tmp_path / "run")
    with pytest.raises(workdir.WorkdirError, match="single run, not a multi-seed"):
        workdir.check(tmp_path / "run", layout="seeds")
    workdir.check(tmp_path / "run", overwrite=True, layout="seeds")


def test_a_held_lock_refuses_a_second_claim_and_names_its_holder(tmp_path):
    with workdir.claim(tmp_path):
        holder = f"PID {os.getpid()} on {socket.gethostname()}"
        assert (tmp_path / workdir.LOCK).read_text().strip() == holder
        with pytest.raises(workdir.WorkdirInUseError, match=f"the run of {holder}"):
            workdir.check(tmp_path)
    assert not (tmp_path / workdir.LOCK).exists()  # released and removed


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    (tmp_path / workdir.LOCK).write_text("PID 4242 on elsewhere\n")  # nobody holds it
    workdir.check(tmp_path)
    with workdir.lock(tmp_path):
        holder = (tmp_path / workdir.LOCK).read_text()
    assert holder == f"PID {os.getpid()} on {socket.gethostname()}\n"
    assert "from PID 4242 on elsewhere, which ended" in capsys.readouterr().out


def test_repeated_seeds_are_refused_in_one_line(tmp_path, capsys):
    assert training.main(digits_config(), tmp_path / "w", seeds=[0, 1, 0]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: ValueError: --seeds lists seed 0 more than once: give each seed "
        "once, e.g. --seeds=0,1,2."
    ]
    assert not (tmp_path / "w").exists()


def plant_finished_seed(work, seed, accuracy, **overrides):
    seed_dir = work / f"seed_{seed}"
    seed_dir.mkdir(parents=True)
    config = digits_config(seed=seed, **overrides)
    (seed_dir / "config.json").write_text(config.to_json_best_effort())
    metrics = dict.fromkeys(summary_module.SEED_METRICS, accuracy)
    summary = {"seed": seed, "epochs": config.epochs, **metrics}
    (seed_dir / "summary.json").write_text(json.dumps(summary))


def test_a_rerun_of_finished_seeds_reads_their_summaries(tmp_path, capsys):
    for seed, accuracy in ((0, 0.5), (1, 0.75)):
        plant_finished_seed(tmp_path, seed, accuracy)
    aggregate = training.run_seeds(digits_config(), tmp_path, [0, 1])
    stats = aggregate["metrics"]["student_test_accuracy"]
    assert stats["values"] == [0.5, 0.75] and stats["mean"] == 0.625
    assert capsys.readouterr().out.count("finished before: keeping") == 2
    assert json.loads((tmp_path / workdir.MANIFEST).read_text())["runs"] == [
        "seed_0",
        "seed_1",
    ]


def test_a_finished_seed_of_another_config_is_refused_naming_the_key(tmp_path):
    plant_finished_seed(tmp_path, 0, 0.5, epochs=2)
    with pytest.raises(ValueError, match=r"another config \(epochs: 2 then, 1 now\)"):
        training.run_seeds(digits_config(), tmp_path, [0])


# Through the command line.


@pytest.mark.large
def test_overwrite_refuses_a_workdir_with_foreign_files_and_deletes_nothing(
    tmp_path,
):
    work = tmp_path / "work"
    plant_foreign_files(work)
    before = tree(work)
    line = refusal(run_cli(f"--workdir={work}", "--overwrite"))
    assert f"{work} holds 'photos', which no keras-cskd run wrote" in line
    assert "move 'photos' out, or choose another --workdir" in line
    assert tree(work) == before  # no manifest, no lock, nothing deleted


@pytest.mark.large
def test_overwrite_replaces_a_finished_run_and_only_its_files(tmp_path):
    run = tmp_path / "run"
    training.run(digits_config(), run)
    (run / ".student.keras.x1y2z3").mkdir()  # what a killed atomic write leaves
    record = json.loads((run / workdir.MANIFEST).read_text())
    names = [path.name for path in run.iterdir()]
    assert workdir._foreign(names, record) == []  # the manifest lists all it wrote

    result = run_cli(f"--workdir={run}", "--overwrite", "--config.seed=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["seed"] == 1
    assert sorted(os.listdir(run)) == [
        "config.json",
        "log.csv",
        "manifest.json",
        "student.keras",
        "summary.json",
        "tensorboard",
    ]
    assert len((run / "log.csv").read_text().splitlines()) == 2  # one header, one row


class _Killed(RuntimeError):
    pass


SEEDS = ("seed_0", "seed_1")


@pytest.mark.large
def test_a_killed_multi_seed_run_keeps_finished_seeds_and_resumes(
    tmp_path, monkeypatch, capsys
):
    """Seed 0 finishes and seed 1 stops right after its step-2 checkpoint; the
    rerun keeps seed 0 and resumes seed 1; --overwrite starts both over."""
    work, resumable = tmp_path / "work", ["--config.checkpoint_every_steps=2"]

    def stop_seed_1_at_step_3(self, batch, logs=None):
        if batch == 2 and (work / "seed_0" / "summary.json").exists():
            raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(
            callbacks.StopOnNonFiniteLoss, "on_train_batch_end", stop_seed_1_at_step_3
        )
        with pytest.raises(_Killed):
            training.run_seeds(digits_config(checkpoint_every_steps=2), work, [0, 1])
    seed_0 = tree(work / "seed_0")
    assert (work / "seed_1" / "checkpoint").is_dir()

    result = run_cli(f"--workdir={work}", "--seeds=0,1", *resumable)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Seed 0 finished before: keeping" in result.stdout
    checkpoint = work / "seed_1" / "checkpoint"
    assert f"Resuming from {checkpoint}: epoch 1, step 2." in result.stdout
    assert tree(work / "seed_0") == seed_0  # kept, not retrained
    accuracies = json.loads((work / "seeds.json").read_text())["metrics"]
    summary_0 = json.loads(seed_0["summary.json"])
    assert (
        accuracies["student_test_accuracy"]["values"][0]
        == (summary_0["student_test_accuracy"])
    )
    assert not checkpoint.exists()  # seed 1 finished

    finished = {seed: (work / seed / "summary.json").stat() for seed in SEEDS}
    capsys.readouterr()
    training.run_seeds(digits_config(checkpoint_every_steps=2), work, [0, 1], True)
    output = capsys.readouterr().out
    assert "keeping" not in output and "Resuming" not in output
    for seed in SEEDS:  # both trained again
        again = (work / seed / "summary.json").stat()
        assert again.st_mtime_ns > finished[seed].st_mtime_ns


@pytest.mark.large
def test_a_second_run_on_a_workdir_in_use_is_refused_and_a_stale_lock_is_taken(
    tmp_path,
):
    work = tmp_path / "work"
    work.mkdir()
    with workdir.lock(work):
        line = refusal(run_cli(f"--workdir={work}"))
    assert f"in use by the run of PID {os.getpid()} on {socket.gethostname()}" in line
    assert os.listdir(work) == []

    holder = subprocess.Popen(  # holds the lock until killed, as a run would
        [
            sys.executable,
            "-c",
            "import sys\nfrom keras_cskd import workdir\n"
            "with workdir.lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()",
            str(work),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    result = run_cli(f"--workdir={work}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from PID {holder.pid} on {socket.gethostname()}, which ended" in (
        result.stdout
    )
    assert (work / "summary.json").exists() and not (work / workdir.LOCK).exists()
