"""Several seeds of one config: each run in its own workdir, then aggregated.

`run_seeds` runs a config once per seed in `workdir/seed_<n>` and writes the
mean and standard deviation of the accuracies to `workdir/seeds.json`;
`train.py --seeds=0,1,2` calls it (through `keras_cskd.training.run_seeds`).
"""

import copy
import json
from pathlib import Path

from keras_cskd import config as config_module
from keras_cskd import distribute, files
from keras_cskd import summary as summary_module
from keras_cskd import workdir as workdir_module


def run_seeds(config, workdir, seeds, run_one, overwrite=False):
    """Runs `config` once per seed (in `workdir/seed_<n>`) with
    `run_one(config, seed_workdir)` and writes the mean and standard deviation
    of the test accuracies to `workdir/seeds.json`.

    Run again, it keeps the seeds that finished (their `summary.json`),
    resumes an interrupted one from its checkpoint and runs the rest;
    `overwrite=True` starts every seed over.

    Example:

    ```python
    aggregate = run_seeds(config, "runs/kd", [0, 1, 2], training.run)
    aggregate["metrics"]["student_test_accuracy"]["mean"]
    ```
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
        summaries = [seed_summary(config, workdir, seed, run_one) for seed in seeds]
        aggregate = summary_module.aggregate(seeds, summaries)
        if chief:
            files.write_text(
                workdir / "seeds.json", json.dumps(aggregate, indent=2) + "\n"
            )
    return aggregate


def seed_summary(config, workdir, seed, run_one):
    """One seed's summary: a finished seed's is read back (if it ran this
    config), any other seed is run, or resumed from its checkpoint."""
    seeded = copy.deepcopy(config)
    seeded.seed = int(seed)
    seed_dir = workdir / f"seed_{seed}"
    if not (seed_dir / "summary.json").exists():
        return run_one(seeded, seed_dir)
    summary = json.loads((seed_dir / "summary.json").read_text())
    saved = json.loads((seed_dir / "config.json").read_text())
    changes = config_module.changed_keys(saved, config_module.to_dict(seeded))
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
