"""What the benchmarks share: their flags, the workloads, interleaved step
timing, peak memory and Markdown tables.

The scripts next to this file import it as `timing`; run them from the
repository root, for example `python benchmarks/step_time.py --smoke`.

A *workload* is one configuration on one teacher/student pair, for example
`"cskd_cswt"` on `PAIRS["digits"]`: `build()` makes its (compiled) model and
`make_step()` a callable that runs one step of it on a fixed random batch.
Training configurations run the model's own compiled train function (what
`fit` runs each step) on an iterator over a cached, repeated in-memory batch;
teacher inference runs one `tf.function` forward pass. Step times come from
`interleaved_step_times()`, which times every call separately and goes
round-robin over the configurations, so that load from other processes falls
on all of them alike.

Training steps also run under the JAX and PyTorch backends (`KERAS_BACKEND`),
where TensorFlow is not imported; everything else here needs TensorFlow's.
"""

import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import statistics
import time

import keras
import numpy as np
from absl import flags

import keras_cskd
from keras_cskd import builders

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Every model traces its own train function once, which TensorFlow's
    # retracing detector counts against the one Python function Keras wraps;
    # it and MirroredStrategy's INFO lines would bury the tables.
    tf.get_logger().setLevel("ERROR")

_STEPS = flags.DEFINE_integer(
    "steps",
    None,
    "Timed steps of each configuration in each round (default: the pair's, "
    "50 for digits and 5 for cifar).",
)
_WARMUP = flags.DEFINE_integer(
    "warmup", 3, "Untimed steps of each configuration before the first round."
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 5, "Rounds over all configurations (round-robin, rotating order)."
)
_JIT_COMPILE = flags.DEFINE_bool(
    "jit_compile", False, "Compile the steps with XLA (`compile(jit_compile=True)`)."
)
_MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision",
    False,
    "Use the mixed_float16 policy (mixed_bfloat16 when there is no GPU).",
)
_SMOKE = flags.DEFINE_bool(
    "smoke", False, "A smoke run in seconds (for tests): numbers mean nothing."
)
_JSON = flags.DEFINE_string("json", None, "Also write the results to this file.")

# `--smoke` replaces the defaults of the flags not given on the command line.
SMOKE_VALUES = {"steps": 2, "warmup": 1, "repeats": 1}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The common flags, resolved (see `settings()`)."""

    steps: int | None
    warmup: int
    repeats: int
    jit_compile: bool
    mixed_precision: bool
    smoke: bool
    json_path: str | None

    def steps_for(self, pair):
        """Timed steps per round on `pair`: `--steps`, else the pair's default."""
        return self.steps or pair.default_steps


def settings():
    """Returns the common flags' values and applies `--mixed_precision`."""
    values = Settings(
        steps=smoke_or(_STEPS, SMOKE_VALUES["steps"]),
        warmup=smoke_or(_WARMUP, SMOKE_VALUES["warmup"]),
        repeats=smoke_or(_REPEATS, SMOKE_VALUES["repeats"]),
        jit_compile=_JIT_COMPILE.value,
        mixed_precision=_MIXED_PRECISION.value,
        smoke=_SMOKE.value,
        json_path=_JSON.value,
    )
    if values.mixed_precision:
        keras.mixed_precision.set_global_policy(
            "mixed_float16" if _has_gpu() else "mixed_bfloat16"
        )
    return values


def smoke_or(flag, smoke_value):
    """`flag`'s value, or `smoke_value` under `--smoke` if `flag` was not given."""
    if _SMOKE.value and not flags.FLAGS[flag.name].present:
        return smoke_value
    return flag.value


def common_flag_args(values):
    """Command-line arguments that give a subprocess the same `settings()`."""
    args = [
        f"--warmup={values.warmup}",
        f"--repeats={values.repeats}",
        f"--jit_compile={values.jit_compile}",
        f"--mixed_precision={values.mixed_precision}",
    ]
    return args + ([f"--steps={values.steps}"] if values.steps else [])


# Workloads.


@dataclasses.dataclass(frozen=True)
class Pair:
    """A teacher and a student from the model zoo, and their data."""

    teacher: str
    student: str
    input_shape: tuple
    num_classes: int
    default_steps: int
    # The training split's size (CRD's memory banks hold a row per example).
    train_examples: int = 50000
    # The student of the feature methods (one with feature taps) and its options.
    feature_student: str = ""
    feature_student_options: tuple = ()

    def __str__(self):
        return f"{self.teacher} -> {self.student}"

    def random_batch(self, batch_size, seed=0):
        """A batch of uniform images and integer labels, as NumPy arrays."""
        rng = np.random.default_rng(seed)
        x = rng.random((batch_size, *self.input_shape), dtype="float32")
        y = rng.integers(0, self.num_classes, size=batch_size).astype("int32")
        return x, y

    def train_labels(self):
        """Labels of a training split of `train_examples`, classes in turn."""
        return np.arange(self.train_examples) % self.num_classes

    def describe_feature_student(self):
        """`"digits_cnn (width=8)"`: the feature student and its options."""
        options = ", ".join(f"{k}={v}" for k, v in self.feature_student_options)
        return (
            f"{self.feature_student} ({options})" if options else self.feature_student
        )

    def model(self, role):
        options = (
            dict(self.feature_student_options) if role == "feature_student" else {}
        )
        return keras_cskd.models.get(
            getattr(self, role), self.num_classes, self.input_shape, **options
        )


PAIRS = {
    # digits_mlp has no feature taps: the feature methods distil a narrow CNN.
    "digits": Pair(
        "digits_cnn",
        "digits_mlp",
        (8, 8, 1),
        10,
        default_steps=50,
        train_examples=1257,  # keras_cskd.data's digits training split
        feature_student="digits_cnn",
        feature_student_options=(("width", 8),),
    ),
    "cifar": Pair(
        "resnet32x4",
        "resnet8x4",
        (32, 32, 3),
        100,
        default_steps=5,
        feature_student="resnet8x4",
    ),
}

# Configuration name -> table label.
CONFIGURATIONS = {
    "student": "(a) student alone, CE",
    "teacher": "(b) teacher inference",
    "kd": "(c) Distiller, KD",
    "cskd": "(c) Distiller, CSKD",
    "cskd_cswt": "(c) Distiller, CSKD+CSWT",
    "kd_cached": "(c) Distiller, KD, cached teacher logits",
    "cskd_cached": "(c) Distiller, CSKD, cached teacher logits",
    "cskd_cswt_cached": "(c) Distiller, CSKD+CSWT, cached teacher logits",
    "keras_kd": "(d) keras.distillation.Distiller, KD",
}

_OUR_LOSSES = {
    "kd": lambda: keras_cskd.losses.KD(temperature=4.0),
    "cskd": lambda: keras_cskd.losses.CSKD(temperature=4.0, cswt=None),
    "cskd_cswt": lambda: keras_cskd.losses.CSKD(
        temperature=4.0, cswt=keras_cskd.losses.CSWT(2.0, 6.0)
    ),
}
_OUR_LOSSES.update({f"{name}_cached": loss for name, loss in _OUR_LOSSES.items()})


# The feature methods: `FEATURE_RECIPES` of the CIFAR-100 recipes' config, each
# timed against KD on the same (feature) student.
RECIPES_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "cifar100_distill.py",
)
FEATURE_BASELINE = "kd"


def feature_recipes():
    """`{method: recipe}`: `FEATURE_RECIPES` of configs/cifar100_distill.py
    (each `dict(loss=..., ce_weight=..., distillation_loss_weight=...)`)."""
    spec = importlib.util.spec_from_file_location("_cifar100_distill", RECIPES_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(getattr(module, "FEATURE_RECIPES", {}))


def feature_methods(requested=None):
    """The methods of the feature table: KD first, then `requested` (default:
    every feature recipe). Raises a `ValueError` naming the known ones."""
    recipes = feature_recipes()
    requested = list(recipes) if requested is None else list(requested)
    unknown = sorted(set(requested) - set(recipes) - {FEATURE_BASELINE})
    if unknown:
        raise ValueError(
            f"No feature recipe for {unknown}: use kd or one of "
            f"{', '.join(recipes) or 'none'} (configs/cifar100_distill.py)."
        )
    return [FEATURE_BASELINE] + [m for m in requested if m != FEATURE_BASELINE]


def build_feature(method, pair, jit_compile=False, recipes=None):
    """`keras_cskd.Distiller` of `method`'s recipe (its loss, taps and weights)
    on `pair`'s teacher and feature student, compiled with SGD(0.05,
    momentum=0.9); `"kd"` is KD at temperature 4 with CE and KD at 0.5 each."""
    keras.utils.set_random_seed(0)
    teacher, student = pair.model("teacher"), pair.model("feature_student")
    if method == FEATURE_BASELINE:
        loss, weights = keras_cskd.losses.KD(temperature=4.0), (0.5, 0.5)
    else:
        recipe = (recipes or feature_recipes())[method]
        loss = builders.build_loss(recipe["loss"], train_labels=pair.train_labels)
        weights = (recipe["ce_weight"], recipe["distillation_loss_weight"])
    model = keras_cskd.Distiller(
        teacher,
        student,
        loss,
        ce_weight=weights[0],
        distillation_loss_weight=weights[1],
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit_compile
    )
    return model


def batch_for(configuration, model, batch):
    """The batch a configuration trains on: with cached teacher logits, the
    images come with the teacher's logits, computed once beforehand; for a
    loss that reads each example's dataset index (CRD), with indices."""
    x, y = batch
    losses = getattr(model, "distillation_losses", [])
    if any(getattr(loss, "uses_sample_indices", False) for loss in losses):
        return {"images": x, "sample_indices": np.arange(len(y), dtype="int32")}, y
    if not configuration.endswith("_cached"):
        return batch
    logits = model.teacher.predict(x, verbose=0)
    return {"images": x, "teacher_logits": logits}, y


def build(configuration, pair, jit_compile=False):
    """Builds the model of `configuration` on `pair` (seeded, untrained weights).

    Returns the teacher alone for `"teacher"`, else a model compiled with
    SGD(0.05, momentum=0.9). Every trainer computes the same extras: top-1
    accuracy, and for the distillers `0.5 * CE + 0.5 * distillation loss`.
    Build under a strategy's `scope()` to distribute it.
    """
    keras.utils.set_random_seed(0)
    teacher = pair.model("teacher")
    if configuration == "teacher":
        return teacher
    student = pair.model("student")
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    if configuration == "student":
        model = student
    elif configuration == "keras_kd":
        model = keras.distillation.Distiller(
            teacher,
            student,
            keras.distillation.LogitsDistillation(
                temperature=4.0, loss=keras.losses.KLDivergence()
            ),
            student_loss_weight=0.5,
        )
    else:
        model = keras_cskd.Distiller(
            teacher,
            student,
            _OUR_LOSSES[configuration](),
            ce_weight=0.5,
            distillation_loss_weight=0.5,
        )
        model.compile(optimizer=optimizer, jit_compile=jit_compile)
        return model
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


def make_step(model, batch, jit_compile=False):
    """A callable running one step of `model` on `batch`, traced and ready.

    For a compiled model: one optimizer step of its train function (the one
    `fit` calls; a one-step `fit` builds and traces it) on an iterator over
    the batch, cached and repeated. For an uncompiled model (the teacher): its
    inference-mode forward pass on the batch, as a `tf.function`.

    Under the JAX and PyTorch backends, the train function runs as their
    `fit` runs it, on the batch converted once, and the teacher's forward pass
    is a `jax.jit` of its `stateless_call` (without `jit_compile`: plain) or a
    call under `torch.no_grad()` (`torch.compile`d with `jit_compile`); a JAX
    step waits for its results (JAX dispatches asynchronously).
    """
    x, y = batch
    if keras.backend.backend() != "tensorflow":
        if getattr(model, "optimizer", None) is None:
            return _backend_forward(model, x, jit_compile)
        return _backend_train_step(model, batch)
    if getattr(model, "optimizer", None) is None:  # the teacher: x are images
        forward = tf.function(
            lambda images: model(images, training=False), jit_compile=jit_compile
        )
        images = tf.constant(x)
        forward(images)
        return lambda: forward(images)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(len(y), drop_remainder=True)
        .cache()
        .repeat()
    )
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    iterator = iter(model.distribute_strategy.experimental_distribute_dataset(dataset))
    return lambda: model.train_function(iterator)


def _backend_forward(model, x, jit_compile):
    """`make_step` for the teacher under the JAX or PyTorch backend."""
    images = keras.ops.convert_to_tensor(x)
    if keras.backend.backend() == "torch":
        import torch

        def forward(images):
            with torch.no_grad():
                return model(images, training=False)

        if jit_compile:
            forward = torch.compile(forward)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else None

        def torch_step():
            outputs = forward(images)
            if sync:
                sync()
            return outputs

        torch_step()
        return torch_step
    import jax

    weights = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )

    def forward(weights, images):
        return model.stateless_call(*weights, images, training=False)[0]

    if jit_compile:
        forward = jax.jit(forward)

    def jax_step():
        return jax.block_until_ready(forward(weights, images))

    jax_step()
    return jax_step


def _backend_train_step(model, batch):
    """`make_step` for a compiled model under the JAX or PyTorch backend."""
    x, y = batch
    # A one-step `fit` builds the model, the optimizer and the metrics and
    # compiles the train function (JAX traces it for these shapes).
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0, shuffle=False)
    model.make_train_function()
    data = keras.tree.map_structure(keras.ops.convert_to_tensor, (x, y))
    if keras.backend.backend() == "torch":
        import torch

        batches = [data]  # the list of one batch that torch's fit passes
        sync = torch.cuda.synchronize if torch.cuda.is_available() else None

        def torch_step():
            logs = model.train_function(batches)
            if sync:
                sync()
            return logs

        return torch_step
    import jax

    # As JAX's fit: the variables' values leave the model as one state that
    # each step takes (donated) and returns updated (private Keras API).
    state = [
        model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            optimizer_variables=True,
            metrics_variables=True,
            purge_model_variables=True,
        )
    ]
    batches = itertools.repeat(data)

    def jax_step():
        logs, state[0] = model.train_function(state[0], batches)
        return jax.block_until_ready((logs, state[0]))

    return jax_step


def effective_jit(model, requested):
    """Whether XLA compiles `model`'s steps: Keras may turn it off for a
    compiled model; `make_step` compiles the teacher's forward as requested."""
    if getattr(model, "optimizer", None) is None:
        return bool(requested)
    return bool(model.jit_compile)


def describe_run(values, num_steps, xla):
    """How a table was measured, in words (`xla`: `{configuration: bool}`)."""
    xla = "/".join(sorted({str(on) for on in xla.values()}))
    return (
        f"XLA: {xla}; dtype policy {keras.mixed_precision.global_policy().name}; "
        f"{values.repeats} rounds x {num_steps} steps after {values.warmup} "
        "warm-up steps"
    )


# Timing.


@dataclasses.dataclass(frozen=True)
class Summary:
    """Statistics of per-step times, in milliseconds."""

    median: float
    q1: float
    q3: float
    count: int

    @classmethod
    def of(cls, seconds):
        ms = [1000.0 * s for s in seconds]
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else ms * 3
        return cls(statistics.median(ms), q1, q3, len(ms))

    @property
    def iqr(self):
        return self.q3 - self.q1


def interleaved_step_times(steps, num_steps, warmup, repeats):
    """Measures the seconds of every call of each step function.

    Each function first runs `warmup` untimed calls; then come `repeats`
    rounds, in each of which every function runs `num_steps` timed calls in a
    row. The order of the functions rotates from round to round.

    Args:
        steps: `{name: callable}`.

    Returns:
        `{name: Summary}`.
    """
    warm_up(steps, warmup)
    seconds = {name: [] for name in steps}
    for round_index in range(repeats):
        for name, values in timed_round(steps, num_steps, round_index).items():
            seconds[name].extend(values)
    return {name: Summary.of(values) for name, values in seconds.items()}


def warm_up(steps, warmup):
    """Runs each of `{name: callable}` `warmup` times, untimed."""
    for step in steps.values():
        for _ in range(warmup):
            _timed(step)


def timed_round(steps, num_steps, round_index):
    """One round of `interleaved_step_times`: `{name: [seconds of each call]}`,
    the functions' order rotated by `round_index`."""
    names = list(steps)
    shift = round_index % len(names)
    return {
        name: [_timed(steps[name]) for _ in range(num_steps)]
        for name in names[shift:] + names[:shift]
    }


def _timed(step):
    start = time.perf_counter()
    step()
    # A function call on the CPU returns when its kernels have run; a GPU's
    # kernels may still be queued. (JAX and PyTorch steps wait themselves.)
    if keras.backend.backend() == "tensorflow" and _has_gpu():
        tf.test.experimental.sync_devices()
    return time.perf_counter() - start


@functools.cache
def _has_gpu():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return bool(tf.config.list_physical_devices("GPU"))


def gpu_devices():
    """Names of the visible GPUs, e.g. `["/GPU:0"]`."""
    return [f"/GPU:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]


def describe_device(device):
    """`device` in words: the CPU model and core count, or the GPU's name."""
    if device.upper().startswith("/GPU"):
        index = int(device.rsplit(":", 1)[1])
        gpu = tf.config.list_physical_devices("GPU")[index]
        name = tf.config.experimental.get_device_details(gpu).get("device_name")
        return f"GPU {name or index}"
    model = "CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                line.split(":", 1)[1].strip()
                for line in cpuinfo
                if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


# Memory.


def reset_peak_rss():
    """Resets this process's peak resident set size (VmHWM) to its current one.

    Returns whether it could (Linux >= 4.0, writable /proc/self/clear_refs).
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def rss_mib(field="VmRSS"):
    """This process's resident set size (`"VmRSS"`) or its peak (`"VmHWM"`)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"{field} is not in /proc/self/status.")


# Output.


def markdown_table(header, rows, left=1):
    """A Markdown table; the first `left` columns left-aligned, the others right."""
    table = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(3, *(len(row[i]) for row in table)) for i in range(len(header))]

    def line(cells):
        padded = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * width if i < left else "-" * (width - 1) + ":"
        for i, width in enumerate(widths)
    ]
    return "\n".join([line(table[0]), line(rule)] + [line(row) for row in table[1:]])


def write_json(path, payload):
    if path:
        with open(path, "w") as file:
            json.dump(payload, file, indent=2, default=_jsonable)
            file.write("\n")


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON.")
