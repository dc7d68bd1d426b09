"""The run config: every key with its default, loading, and validation."""

import importlib.util
import inspect
import json
import math
import re
from pathlib import Path

import ml_collections

from keras_cskd import distribute
from keras_cskd import losses as losses_module


def default_config():
    """Every config key with its default; experiment configs start from this.

    Example:

    >>> config = default_config()
    >>> config.loss = loss_config("kd", temperature=4.0)
    """
    config = ml_collections.ConfigDict()
    config.name = ""  # set from the config file's name when empty
    config.seed = 0
    # Bitwise-reproducible runs (tf.config.experimental.enable_op_determinism);
    # costs speed on GPUs, where some kernels then have slower deterministic forms.
    config.deterministic = False
    config.strategy = "auto"  # auto | none | mirrored | multiworker | tpu
    config.epochs = 30
    config.verbose = "auto"  # Keras fit verbosity: auto, 0, 1 or 2
    config.checkpoint_every_steps = 0  # also checkpoint within epochs; 0: epochs only
    config.data = ml_collections.ConfigDict(
        {
            "name": "digits",  # digits | tfds:<name>[:<splits>] | folder:<path>
            "data_dir": "",  # TFDS data directory ("": TFDS's default)
            # Where manually downloaded files are (tfds:imagenet2012's tars).
            "manual_dir": "",
            # Read encoded images as training goes (ImageNet-scale data; TFDS
            # datasets of images of varying size are streamed anyway).
            "streaming": False,
            "download": False,  # let TFDS download and prepare missing data
            # Resize every image to this size (square), for folders and TFDS
            # datasets of mixed sizes; streamed: the crop size. 0: as stored.
            "image_size": 0,
            "validation_fraction": 0.0,  # carve a validation split from train
            "batch_size": 64,  # the global batch, split over the replicas
            "eval_batch_size": 256,
            # The training view, by name (keras_cskd.data.augment):
            # none | digits_shift | cifar_crop_flip | imagenet_rrc (streamed).
            "augmentation": "none",
            "mixup_alpha": 0.0,
            # A second, strongly augmented view of every image (the CSKD
            # code's crop, flip, RandAugment and cutout); see `view_weights`.
            "two_views": False,
            "strong_augmentation": "cifar_randaugment",  # that view, by name
            # Compute the teacher's logits once and reuse them every epoch
            # (not with mixup or two views). With an augmentation, the logits of every
            # crop/flip variant of every image, cached beside the teacher
            # (keras_cskd.data.teacher_cache), built on first use.
            "cache_teacher_logits": False,
            # float32 (exact) or float16 (half the disk) for that cache.
            "cache_dtype": "float32",
            # Each training example's index in the training split in the
            # batches, {"images": ..., "sample_indices": ...}: for a loss
            # that keeps a row per example (CRD's memory bank).
            "sample_indices": False,
        }
    )
    config.model = "digits_mlp"  # the model this run trains (the student)
    # Images per BatchNorm statistics group in the zoo model: the reference's
    # per-device batch, the same on any device count (docs/distributed.md).
    # 0: the whole global batch, one device's behaviour.
    config.batch_norm_group = 0
    config.teacher = ml_collections.ConfigDict(
        {
            # A trained teacher; if the file is missing and `config` names a
            # config file, that config trains it first and saves it here.
            "path": "saved_models/digits_teacher.keras",
            "config": "configs/digits_teacher.py",
            # What the teacher's file outputs: "logits", or "probabilities"
            # (a softmax head) to distil from their log, the logits up to a
            # per-row constant. A softmax head is refused under "logits".
            "outputs": "logits",
            # A teacher near chance accuracy (< 1.5 / num_classes on the test
            # split) is refused before training unless this is True (an
            # untrained-teacher ablation).
            "allow_untrained": False,
        }
    )
    config.loss = loss_config("cskd", temperature=4.0, cswt=True, alpha=2.0)
    # The objective: ce_weight * CE + distillation_loss_weight * loss (the
    # Distiller's `ce_weight`; Keras's alpha is `Distiller(student_loss_weight=)`).
    config.ce_weight = 1.0
    config.distillation_loss_weight = 1.0
    # With two_views: the weights of the weak and the strong view's terms (of
    # the cross-entropy alone for a loss that takes both views, two_view_cskd).
    config.view_weights = (1.0, 1.0)
    config.optimizer = ml_collections.ConfigDict(
        {
            # sgd | adam (Keras's, decoupled weight decay) | torch_sgd (PyTorch's
            # SGD: weight decay added to the gradient, as the reference recipes)
            # | dot (mdistiller's DOT: momentum -+ dot.delta for the task and the
            # distillation gradients; optimizers.DOT)
            "name": "sgd",
            "learning_rate": 0.05,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "schedule": "cosine",  # constant | cosine | multistep
            # multistep: x decay_rate at the start of each epoch after these
            "milestones": (150, 180, 210),
            "decay_rate": 0.1,
            "dot": ml_collections.ConfigDict(
                {
                    "delta": 0.075,  # mdistiller's SOLVER.DOT.DELTA
                    # mdistiller's rules (docs/reproducing.md), or the clean variant
                    "as_mdistiller": True,
                }
            ),
        }
    )
    # Any of savedmodel, tflite, tflite_float16, tflite_dynamic_range,
    # tflite_int8, onnx, onnx_int8 (these two need the [onnx] extra),
    # comma-separated; "" exports nothing.
    config.export = ml_collections.ConfigDict({"formats": "savedmodel,tflite"})
    config.save_model_to = ""  # also save the trained model here (teachers)
    return config


def loss_config(method, cswt=False, t_min=2.0, t_max=6.0, standardize=False, **options):
    """A `config.loss` block: the method's name, its arguments, and CSWT.

    `cswt=True` adds the CSWT term to CSKD and makes the temperature of every
    other loss `CSWT(t_min, t_max)`. `standardize=True` is LS-KD's logit
    standardisation, for the losses that take it (`kd`, `dkd`; `lskd` always
    standardises); every config has the key, so `--config.loss.standardize=True`
    works on any recipe. `method="scratch"` trains with cross-entropy alone.

    Example:

    >>> config = default_config()
    >>> config.loss = loss_config("dkd", temperature=4.0, beta=8.0)
    >>> config.loss = loss_config("kd", temperature=2.0, standardize=True)
    """
    return ml_collections.ConfigDict(
        {
            "method": method,
            "cswt": cswt,
            "t_min": t_min,
            "t_max": t_max,
            "standardize": standardize,
            **options,
        }
    )


def teacher_file_shorthand(argv):
    """`argv` with `--config.teacher=FILE` (a `.keras` or PyTorch `.pth`
    teacher) spelled `--config.teacher.path=FILE`, the key it sets.

    Example:

    >>> teacher_file_shorthand(["--config.teacher=r32x4_vanilla/ckpt.pth"])
    ['--config.teacher.path=r32x4_vanilla/ckpt.pth']
    """
    prefix = "--config.teacher="
    return [
        f"--config.teacher.path={arg[len(prefix) :]}"
        if arg.startswith(prefix) and arg.endswith((".keras", ".pth"))
        else arg
        for arg in argv
    ]


def load_config(path):
    """Loads `get_config()` from a Python config file; `"file.py:arg"` passes
    `arg` to it, as `--config=file.py:arg` does on the command line.

    Example:

    ```python
    config = load_config("configs/cifar100_teacher.py:resnet56")
    ```
    """
    path, _, argument = str(path).partition(".py:")
    path = Path(path if path.endswith(".py") else path + ".py")
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(
            f"Config file {path} defines no get_config(): define one that returns "
            "keras_cskd.config.default_config() with your changes."
        )
    config = module.get_config(argument) if argument else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"get_config() in {path} returned a {type(config).__name__}, not a "
            "ConfigDict: return keras_cskd.config.default_config() with your changes."
        )
    return config


# (key, check, what it must be) for the keys whose range matters.
_RANGES = [
    ("seed", lambda v: v >= 0, "an integer >= 0"),
    ("epochs", lambda v: v >= 1, "an integer >= 1"),
    ("checkpoint_every_steps", lambda v: v >= 0, "an integer >= 0"),
    ("batch_norm_group", lambda v: v >= 0, "an integer >= 0 (0: the global batch)"),
    ("verbose", lambda v: str(v) in ("auto", "0", "1", "2"), "auto, 0, 1 or 2"),
    ("strategy", lambda v: v in distribute.STRATEGIES, "|".join(distribute.STRATEGIES)),
    ("data.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("data.eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("data.validation_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.mixup_alpha", lambda v: v >= 0, ">= 0"),
    ("data.cache_dtype", lambda v: v in ("float32", "float16"), "float32 or float16"),
    ("data.image_size", lambda v: v >= 0, "an integer >= 0 (0: as stored)"),
    (
        "teacher.outputs",
        lambda v: v in ("logits", "probabilities"),
        "logits or probabilities",
    ),
    ("ce_weight", lambda v: v >= 0, ">= 0"),
    ("distillation_loss_weight", lambda v: v >= 0, ">= 0"),
    ("view_weights", lambda v: len(v) == 2 and min(v) >= 0, "two weights >= 0"),
    (
        "optimizer.name",
        lambda v: v in ("sgd", "adam", "torch_sgd", "dot"),
        "sgd, adam, torch_sgd or dot",
    ),
    ("optimizer.dot.delta", lambda v: v >= 0, ">= 0"),
    ("optimizer.learning_rate", lambda v: v > 0, "> 0"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    (
        "optimizer.schedule",
        lambda v: v in ("constant", "cosine", "multistep"),
        "constant, cosine or multistep",
    ),
    ("optimizer.decay_rate", lambda v: 0 < v <= 1, "in (0, 1]"),
]


def validate(config):
    """Checks keys, types and ranges; raises one `ValueError` listing every problem.

    Example:

    >>> validate(default_config())   # passes silently
    """
    problems = _unknown_or_mistyped(config, default_config(), prefix="")
    if any(problem.startswith("missing key") for problem in problems):
        raise ValueError(
            "Invalid config: " + "; ".join(problems) + ". Start get_config() from "
            "keras_cskd.config.default_config(), which sets every key."
        )
    for key, check, expected in _RANGES:
        value = _get(config, key)
        try:
            ok = check(value)
        except TypeError:
            ok = False
        if not ok:
            problems.append(f"{key} must be {expected} (got {value!r})")
    problems += _loss_problems(config.loss)
    problems += _combination_problems(config)
    if problems:
        raise ValueError("Invalid config: " + "; ".join(problems) + ".")


# Keys renamed: (the key that replaces each, with the same value, and why).
# Configs and checkpoints written before the rename name the old key.
RENAMED_KEYS = {
    "student_loss_weight": (
        "ce_weight",
        "the cross-entropy's weight; a Distiller's student_loss_weight is Keras's "
        "alpha",
    ),
    "data.augment": (
        "data.augmentation",
        "the augmentation is named: True was 'digits_shift' for the 8x8 digits, "
        "'imagenet_rrc' streamed and 'cifar_crop_flip' otherwise; False is 'none'",
    ),
}


def _augmentation_of_augment(augment, saved):
    """The `data.augmentation` a config with the old boolean `data.augment` ran
    with (the old code picked it from the input shape and the pipeline)."""
    name = saved.get("data.name", "digits")
    if not augment:
        return "none"
    if name == "digits":
        return "digits_shift"
    if saved.get("data.streaming") or name.startswith("tfds:imagenet"):
        return "imagenet_rrc"
    return "cifar_crop_flip"


# Renamed keys whose value changed form too: the old value's new spelling,
# from the old value and the rest of the (flattened) config that held it.
RENAMED_VALUES = {"data.augment": _augmentation_of_augment}


def renamed_key_problem(key):
    """Why a renamed config key is refused and what replaces it, or `None`.

    Example:

    >>> renamed_key_problem("student_loss_weight")
    "config key student_loss_weight is now ce_weight, with the same value (the ..."
    """
    if key not in RENAMED_KEYS:
        return None
    new_key, why = RENAMED_KEYS[key]
    same = "" if key in RENAMED_VALUES else ", with the same value"
    return f"config key {key} is now {new_key}{same} ({why})"


def _unknown_or_mistyped(config, defaults, prefix):
    missing = [f"'{prefix}{key}'" for key in defaults if key not in config]
    problems = [f"missing key(s) {', '.join(missing)}"] if missing else []
    for key, value in config.items():
        name = prefix + key
        if name in RENAMED_KEYS:
            new_key = RENAMED_KEYS[name][0]
            problems.append(f"{renamed_key_problem(name)}: set config.{new_key}")
        elif key not in defaults:
            problems.append(f"unknown key '{name}'")
        elif name == "loss":
            continue  # method-specific keys, checked by _loss_problems
        elif isinstance(defaults[key], ml_collections.ConfigDict):
            problems += _unknown_or_mistyped(value, defaults[key], name + ".")
        elif not _same_type(value, defaults[key]):
            problems.append(
                f"{name} must be a {type(defaults[key]).__name__} (got {value!r})"
            )
        elif not all(map(_finite, value if isinstance(value, tuple) else [value])):
            problems.append(f"{name} must be finite (got {value!r})")
    return problems


def _finite(value):
    return not isinstance(value, float) or math.isfinite(value)


def _same_type(value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def _loss_problems(loss):
    method = loss.get("method")
    if method == "scratch":
        return []
    if method not in losses_module.names():
        return [
            f"unknown distillation method {method!r} in loss.method (use scratch or "
            f"one of {', '.join(losses_module.names())})"
        ]
    accepted = set(inspect.signature(losses_module.get_class(method)).parameters)
    accepted |= {"method", "cswt", "t_min", "t_max", "standardize"}
    problems = [
        f"unknown key 'loss.{key}' for method {method} (it takes: "
        f"{', '.join(sorted(accepted))})"
        for key in loss
        if key not in accepted
    ]
    if not problems:  # the loss's own checks: every option's type and range
        from keras_cskd import builders

        try:
            builders.build_loss(loss)
        except (TypeError, ValueError) as error:  # "`alpha` must be" -> loss.alpha
            message = str(error).rstrip(".")
            problems.append(re.sub(r"^`(\w+)`", r"loss.\1", message, count=1))
    return problems


def _combination_problems(config):
    from keras_cskd import export  # TensorFlow-heavy; only needed here

    problems = []
    try:
        if config.export.formats:  # "" exports nothing
            export.parse_formats(config.export.formats)
    except ValueError as error:
        problems.append(f"export.formats: {error}")
    data = config.data
    if config.loss.method == "scratch":
        for key in ("two_views", "cache_teacher_logits"):
            if data[key]:
                problems.append(
                    f"data.{key} needs a teacher, and loss.method scratch trains "
                    "without one: turn it off or choose a distillation method"
                )
    milestones = list(config.optimizer.milestones)
    if milestones != sorted(set(milestones)) or not all(
        isinstance(m, int) and m >= 0 for m in milestones
    ):
        problems.append(
            "optimizer.milestones must be increasing whole epochs >= 0 (got "
            f"{tuple(config.optimizer.milestones)!r})"
        )
    if data.cache_teacher_logits and (data.mixup_alpha > 0 or data.two_views):
        problems.append(
            "data.cache_teacher_logits cannot be combined with data.mixup_alpha "
            "or data.two_views (mixed images and the strong view are continuous: "
            "no finite set of variants to cache; data.augmentation's crops and flips "
            "can be)"
        )
    optimizer = config.optimizer
    if optimizer.name == "dot" and not (
        0 <= optimizer.momentum - optimizer.dot.delta
        and optimizer.momentum + optimizer.dot.delta < 1
    ):
        problems.append(
            "optimizer.momentum -+ optimizer.dot.delta (DOT's two momenta) must be "
            f"in [0, 1) (got {optimizer.momentum} and {optimizer.dot.delta})"
        )
    if optimizer.name == "dot" and config.loss.method == "scratch":
        problems.append(
            "optimizer.name dot needs a distillation loss (it takes the task and "
            "the distillation gradients apart): choose torch_sgd for scratch"
        )
    if data.two_views and data.mixup_alpha > 0:
        problems.append("data.two_views and data.mixup_alpha cannot be combined")
    method = config.loss.method
    indexed = method in losses_module.names() and getattr(
        losses_module.get_class(method), "uses_sample_indices", False
    )
    if indexed and not data.sample_indices:
        problems.append(
            f"loss.method {method} keeps a row per training example: set "
            "data.sample_indices=True (batches with each example's index)"
        )
    if data.sample_indices and data.validation_fraction > 0:
        problems.append(
            "data.sample_indices cannot be combined with data.validation_fraction "
            "(validating the Distiller would run the indexed loss, CRD, on "
            "un-indexed batches): the test accuracy is measured on the student alone"
        )
    if data.sample_indices and (data.mixup_alpha > 0 or data.cache_teacher_logits):
        problems.append(
            "data.sample_indices cannot be combined with data.mixup_alpha (a mixed "
            "image is two examples) or data.cache_teacher_logits"
        )
    if method in losses_module.names() and not data.two_views:
        if losses_module.get_class(method).num_views > 1:  # two_view_cskd, mlkd
            problems.append(
                f"loss.method {method} needs data.two_views=True (it takes a weak "
                "and a strong view of every batch)"
            )
    return problems


# Keys a resumed run may change: where data and results live, how long to
# train, what to print and export. Any other change is refused on resume.
RESUMABLE_CHANGES = (
    "name",
    "epochs",
    "verbose",
    # Every loss term is on the global batch, and BatchNorm statistics over
    # batch_norm_group images, whatever the replicas (docs/distributed.md).
    "strategy",
    "checkpoint_every_steps",
    "data.data_dir",
    "data.manual_dir",
    "data.streaming",
    "data.download",
    "data.eval_batch_size",
    "teacher.config",
    "teacher.allow_untrained",
    "export.formats",
    "save_model_to",
)


def to_dict(config):
    """`config` as plain JSON values (what `config.json` and checkpoints hold).

    Example:

    >>> to_dict(default_config())["data"]["name"]
    'digits'
    """
    return json.loads(config.to_json_best_effort())


def changed_keys(saved, current):
    """The dotted keys whose values differ between two configs (as dicts),
    except `RESUMABLE_CHANGES`: `{key: (saved value, current value)}`. A key
    of `saved` that has since been renamed (`RENAMED_KEYS`) is compared under
    its new name, and a key added since has its default there, so a
    checkpoint made by an earlier version resumes.

    Example:

    >>> changed_keys({"loss": {"method": "kd"}}, {"loss": {"method": "cskd"}})
    {'loss.method': ('kd', 'cskd')}
    """
    saved, current = _flatten(saved), _flatten(current)
    saved = {
        RENAMED_KEYS.get(key, (key,))[0]: RENAMED_VALUES.get(key, lambda v, s: v)(
            value, saved
        )
        for key, value in saved.items()
    }
    # A key added since the checkpoint was made had its default then.
    defaults = _flatten(json.loads(default_config().to_json_best_effort()))
    saved = {**{k: v for k, v in defaults.items() if k in current}, **saved}
    return {
        key: (saved.get(key), current.get(key))
        for key in sorted(saved.keys() | current.keys())
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
    }


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def _get(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config
