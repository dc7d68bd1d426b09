"""Train or distil a model from a config file: `python -m keras_cskd.train`,
or `python train.py` in a checkout (the same command).

    python train.py                                   # configs/digits_cskd.py
    python train.py --config=configs/digits_kd.py --config.epochs=5
    python train.py --config=configs/digits_teacher.py   # rebuild the teacher
    python train.py --list                # losses, models, datasets, configs
    python train.py --config=configs/cifar100_distill.py:kd,resnet32x4,resnet8x4 \
        --config.teacher=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth

Everything goes under --workdir (default runs/<config name>): config.json,
log.csv, tensorboard/, student.keras, export/, summary.json and manifest.json
(what the run wrote: all that --overwrite deletes). docs/workdir.md says what
each is and what is safe to delete.

Outside a checkout (an installed wheel) with no ./configs/digits_cskd.py, the
default --config is the package's copy of that run
(keras_cskd/assets/digits_cskd.py), its teacher the shipped digits CNN.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from keras_cskd.config import teacher_file_shorthand  # noqa: E402

# The default run: the checkout's config, else the copy the package ships.
DEFAULT_CONFIG = "configs/digits_cskd.py"


def default_config_file():
    """`DEFAULT_CONFIG` where it exists (a checkout), else the shipped copy."""
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return str(Path(__file__).parent / "assets" / Path(DEFAULT_CONFIG).name)


def fail(error):
    """Reports a command-line error as `keras_cskd.cli` does, and exits."""
    from keras_cskd import cli

    sys.exit(cli.report(error))


def _explained(error):
    """`error`, or what it means and its fix where config_flags's words don't
    say: a renamed config key names the key that replaced it."""
    from keras_cskd.config import RENAMED_KEYS, renamed_key_problem

    for key, (new_key, _) in RENAMED_KEYS.items():
        if any(arg.startswith(f"--config.{key}=") for arg in sys.argv):
            return ValueError(f"{renamed_key_problem(key)}: pass --config.{new_key}")
    if isinstance(error, AttributeError) and "get_config" in str(error):
        return ValueError(
            "The --config file defines no get_config(): define one that returns "
            "keras_cskd.config.default_config() with your changes."
        )
    if isinstance(error, (AttributeError, KeyError)):  # a key the config lacks
        key = str(error.args[0] if error.args else error).strip("\"'")
        return ValueError(
            f"Unknown config key in the --config.* overrides: '{key}'; every key "
            "is in keras_cskd/config.py, and a --config file's get_config() "
            "starts from default_config()."
        )
    return error


# `--config.teacher=FILE` means `--config.teacher.path=FILE`; config_flags
# reads the overrides from sys.argv when the flag is defined, below.
sys.argv = teacher_file_shorthand(sys.argv)
try:  # config_flags applies the --config.key=value overrides right here
    _CONFIG = config_flags.DEFINE_config_file(
        "config", default_config_file(), "Experiment config file (get_config())."
    )
except Exception as error:  # noqa: BLE001  wrong types, a broken config file, ...
    fail(_explained(error))
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (runs/<config>).")
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus",
    0,
    "Split the CPU into this many logical devices (testing "
    "MirroredStrategy without GPUs); 0 leaves it whole.",
)
_LIST = flags.DEFINE_bool(
    "list", False, "List the losses, models, datasets and configs, then exit."
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace the run in --workdir, deleting only the files a run writes (a "
    "workdir holding anything else is refused); with --seeds, every seed.",
)
_SEEDS = flags.DEFINE_list(
    "seeds",
    [],
    "Run once per seed (workdir/seed_<n>) and aggregate: --seeds=0,1,2. Run "
    "again, finished seeds are kept and an interrupted one resumes.",
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of errors.")


def listing():
    """The --list lines: what a config can name, registry by registry
    (`register` in keras_cskd.losses, .models, .data adds to them)."""
    from keras_cskd import data, losses, models
    from keras_cskd.data import augment

    registries = {
        "losses": ["scratch", *losses.names()],  # loss.method (scratch: no teacher)
        "models": models.names(),  # model
        "datasets": data.names(),  # data.name
        "augmentations": augment.AUGMENTATIONS.names(),  # data.augmentation
        # data.strong_augmentation
        "strong views": augment.STRONG_AUGMENTATIONS.names(),
    }
    configs = sorted(p.stem for p in Path("configs").glob("*.py"))
    registries["configs"] = configs  # --config=configs/<name>.py
    width = max(map(len, registries)) + 2
    return [
        f"{label + ':':<{width}}{', '.join(names)}"
        for label, names in registries.items()
    ]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines are noise here
    if _LOGICAL_CPUS.value < 0:
        fail(
            ValueError(
                f"--logical_cpus={_LOGICAL_CPUS.value} is negative: give the number "
                "of logical CPU devices (e.g. --logical_cpus=2), or 0 to leave the "
                "CPU whole."
            )
        )
    if _LOGICAL_CPUS.value:
        from keras_cskd import distribute

        distribute.split_cpu(_LOGICAL_CPUS.value)
    from keras_cskd import config as config_module
    from keras_cskd import training

    if _LIST.value:
        print("\n".join(listing()))
        return 0
    try:
        config = _CONFIG.value  # a config file that failed to load raises here
        config_module.validate(config)  # names missing keys before any use
    except Exception as error:  # noqa: BLE001
        fail(_explained(error))
    if not config.name:
        config.name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    workdir = os.path.expanduser(_WORKDIR.value or os.path.join("runs", config.name))
    try:
        seeds = [int(seed) for seed in _SEEDS.value]
    except ValueError as error:
        fail(ValueError(f"--seeds takes integers, e.g. --seeds=0,1,2 ({error})"))
    return training.main(config, workdir, _OVERWRITE.value, _VERBOSE.value, seeds)


def parse_flags(argv):
    """absl's parser, with its errors (bad flags, unknown config keys, a
    config file that fails to load) as one line and exit code 1."""
    try:
        return flags.FLAGS(argv)
    except Exception as error:  # noqa: BLE001  config_flags raises many types
        fail(_explained(error))


def run():
    """Parses the flags and runs `main`, exiting with its code."""
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
