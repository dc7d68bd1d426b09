"""Time per optimizer step of distillation, against its parts and Keras's own.

For a teacher/student pair and a batch size, it measures in one process,
interleaved (round-robin over the configurations, several rounds) and after a
warm-up, the median time per step of:

- (a) the student alone, training on the cross-entropy;
- (b) the teacher's inference on the same batch (a `tf.function` forward pass);
- (c) `keras_cskd.Distiller` with KD, CSKD (`cswt=None`) and CSKD+CSWT, each
  also on batches that carry the teacher's logits, computed once beforehand
  (`keras_cskd.data.with_teacher_logits`): the teacher does not run;
- (d) `keras.distillation.Distiller` with `LogitsDistillation(temperature=4,
  loss=KLDivergence())` and `student_loss_weight=0.5`.

(a), (c) and (d) are timed alike: each call of the model's compiled train
function (the one `fit` calls once per step) on a cached in-memory batch.
All trainers use SGD and also compute the top-1 accuracy. The ratio
`÷ (a + b)` is what distilling costs over training the student and running
the teacher separately; `÷ (d)` compares with Keras's Distiller (same
objective for KD: `0.5 * CE + 0.5 * T^2 * KL`). Weights are untrained and the
data random: step time does not depend on their values.

Peak memory cannot be told apart per configuration in one process (the peak
RSS only grows, and freed memory stays with the allocator), so each
configuration also runs alone in a fresh subprocess, which reports its peak
resident set size (VmHWM: TensorFlow's runtime included) and the growth of
the resident set from the built models to that peak (tracing, optimizer
slots, activations and gradients of the warm-up and timed steps).

    python benchmarks/step_time.py                 # both pairs at batch 64
    python benchmarks/step_time.py --pair=digits --batch_size=256 --steps=100
    python benchmarks/step_time.py --jit_compile   # every step with XLA
    python benchmarks/step_time.py --mixed_precision
    python benchmarks/step_time.py --nomemory --json=step_time.json
    python benchmarks/step_time.py --smoke         # smoke test: digits, seconds

`--pair=cifar` is resnet32x4 -> resnet8x4 on random 32x32x3 images (100
classes); `--pair=digits` is digits_cnn -> digits_mlp on 8x8x1 (10 classes).

A second table times the feature methods, each as its CIFAR-100 recipe
builds it (`FEATURE_RECIPES` in configs/cifar100_distill.py: its loss, the
reference's feature taps, its weights), against KD on the same student, in
the same interleaved rounds as the first table: the ratio `÷ KD`, and each
one's memory in a process of its own. The student is the pair's (resnet8x4),
or on the digits pair a narrow `digits_cnn` (width 8: the MLP has no feature
taps). `--methods` picks them (default: every feature recipe):

    python benchmarks/step_time.py --pair=cifar --methods=nst,pkt,rkd,sp,kdsvd
    python benchmarks/step_time.py --pair=cifar --methods=   # no feature table

With `--backends`, the same step times (not the memory) on each Keras backend
listed: one table, a row per backend and configuration, each ratio taken
within its backend.

    python benchmarks/step_time.py --pair=digits --backends=tensorflow,jax,torch
    python benchmarks/step_time.py --pair=digits --backends=jax,torch --cpus=1

Each backend runs in a process of its own (`KERAS_BACKEND` is read once, at
import), started with the hidden `--backend_worker` flag: it builds and warms
up its models, then times one round of every configuration each time the
parent asks (a line on its stdin) and answers with a JSON line. The parent
goes round-robin over the backends, so load from other processes falls on
all of them alike. Models compile with each backend's default
(`jit_compile="auto"`: XLA for JAX, eager PyTorch, no XLA for TensorFlow on a
CPU) unless `--jit_compile`/`--nojit_compile` is given; under JAX and PyTorch
the train function runs as their `fit` runs it (see `timing.make_step`).
`--cpus=N` pins every backend's process to N cores, which their thread pools
follow: on a shared machine PyTorch's OpenMP threads stall whenever another
process takes one of their cores. A backend that is not installed gets a
"skipped" row. Without `--backends` only the current backend runs: under
TensorFlow, the full table above (in this process); under another backend,
its rows of the per-backend table.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from concurrent import futures

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

_PAIR = flags.DEFINE_enum(
    "pair", "both", ["digits", "cifar", "both"], "Teacher/student pair(s)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_MEMORY = flags.DEFINE_bool(
    "memory",
    True,
    "Measure each configuration's memory in a subprocess of its own (off under "
    "--smoke unless given).",
)
_MEMORY_PROBE = flags.DEFINE_string(
    "memory_probe",
    None,
    "Internal: run this configuration (one of timing.CONFIGURATIONS, or "
    "features:<method>) alone and print its memory as JSON.",
)
_METHODS = flags.DEFINE_list(
    "methods",
    None,
    "Feature methods to time against KD on the same student (names of "
    "FEATURE_RECIPES in configs/cifar100_distill.py). Default: all of them; "
    "empty: no feature table. Not with --backends.",
)
# The feature table's configurations are named `features:<method>`.
_FEATURES = "features:"

_BACKENDS = flags.DEFINE_list(
    "backends",
    None,
    "Keras backends (tensorflow, jax, torch) to time every configuration on, "
    "each in a process of its own, interleaved; one table, without memory. "
    "Default: the current backend alone (under TensorFlow, the full table).",
)
_CPUS = flags.DEFINE_integer(
    "cpus",
    None,
    "With --backends: pin each backend's process to this many of the CPUs this "
    "one may use (the first ones); its thread pools size themselves to them. "
    "Default: all.",
    lower_bound=1,
)
_BACKEND_WORKER = flags.DEFINE_bool(
    "backend_worker",
    False,
    "Internal: time rounds on the current backend when asked on stdin, "
    "answering in JSON on stdout.",
)

# How many memory subprocesses run at once (memory does not depend on load).
_MEMORY_JOBS = 2

# The module each backend imports, and how to install it.
_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
_INSTALL_HINTS = {
    "tensorflow": "pip install keras-cskd",
    "jax": "pip install keras-cskd[jax]",
    "torch": "pip install keras-cskd[torch]",
}
# Marks the worker's answers among anything else written to its stdout.
_ANSWER = "step_time_worker: "


def main(argv):
    del argv
    values = timing.settings()
    pair = timing.smoke_or(_PAIR, "digits")
    pair_names = ["digits", "cifar"] if pair == "both" else [pair]
    if _MEMORY_PROBE.value:
        print(json.dumps(probe_memory(_MEMORY_PROBE.value, pair_names[0], values)))
        return 0
    if _BACKEND_WORKER.value:
        backend_worker(pair_names[0], values)
        return 0
    backends = _BACKENDS.value or [keras.backend.backend()]
    if _BACKENDS.present or backends != ["tensorflow"]:
        unknown = sorted(set(backends) - set(_BACKEND_MODULES))
        if unknown:
            raise app.UsageError(f"Unknown backends {unknown}: use {_BACKEND_MODULES}.")
        if _METHODS.value:
            raise app.UsageError(
                "--methods times the feature methods on TensorFlow alone: drop "
                "--backends, or --methods."
            )
        results = {}
        for name in pair_names:
            results[name] = measure_backends(name, backends, values)
            print(report_backends(name, results[name], values), end="\n\n")
        timing.write_json(
            values.json_path,
            {"settings": values, "batch_size": _BATCH_SIZE.value, "backends": results},
        )
        return 0
    results = {}
    for name in pair_names:
        results[name] = measure(name, values)
        print(report(name, results[name], values), end="\n\n", flush=True)
    timing.write_json(
        values.json_path,
        {"settings": values, "batch_size": _BATCH_SIZE.value, "pairs": results},
    )
    return 0


def measure(pair_name, values):
    """Step times of every configuration on a pair, and their memory."""
    pair = timing.PAIRS[pair_name]
    batch = pair.random_batch(_BATCH_SIZE.value)
    models = {
        configuration: timing.build(configuration, pair, values.jit_compile)
        for configuration in timing.CONFIGURATIONS
    }
    steps = {
        configuration: timing.make_step(
            model, timing.batch_for(configuration, model, batch), values.jit_compile
        )
        for configuration, model in models.items()
    }
    feature_models, feature_steps, skipped = feature_workloads(pair, batch, values)
    models.update(feature_models)
    steps.update(feature_steps)
    num_steps = values.steps_for(pair)
    summaries = timing.interleaved_step_times(
        steps, num_steps, values.warmup, values.repeats
    )
    memory = {}
    if timing.smoke_or(_MEMORY, False):
        with futures.ThreadPoolExecutor(_MEMORY_JOBS) as pool:
            memory = dict(
                zip(
                    models,
                    pool.map(lambda c: run_memory_probe(c, pair_name, values), models),
                    strict=True,
                )
            )
    xla = {c: timing.effective_jit(m, values.jit_compile) for c, m in models.items()}
    features = [c for c in models if c.startswith(_FEATURES)]
    return {
        "pair": str(pair),
        "device": timing.describe_device("/CPU:0"),
        "steps": num_steps,
        "step_ms": {c: s for c, s in summaries.items() if c not in features},
        "memory_mib": {c: m for c, m in memory.items() if c not in features},
        "xla": {c: x for c, x in xla.items() if c not in features},
        "feature_student": pair.describe_feature_student(),
        "feature_step_ms": {c[len(_FEATURES) :]: summaries[c] for c in features},
        "feature_memory_mib": {
            c[len(_FEATURES) :]: memory[c] for c in features if c in memory
        },
        "feature_skipped": skipped,
    }


def feature_workloads(pair, batch, values):
    """The feature table's models and steps, `{"features:<method>": ...}`, for
    KD and the `--methods` (default: every feature recipe; none for an empty
    `--methods`), and `{method: reason}` for those that cannot train on the
    benchmark's random batches (a loss that needs what only a run's data
    gives), shown as skipped rows."""
    if _METHODS.present and not _METHODS.value:
        return {}, {}, {}
    try:
        methods = timing.feature_methods(_METHODS.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    if methods == [timing.FEATURE_BASELINE]:  # no feature recipe yet
        return {}, {}, {}
    recipes = timing.feature_recipes()
    models, steps, skipped = {}, {}, {}
    for method in methods:
        try:
            model = timing.build_feature(method, pair, values.jit_compile, recipes)
            method_batch = timing.batch_for(_FEATURES + method, model, batch)
            step = timing.make_step(model, method_batch, values.jit_compile)
        except (ValueError, TypeError, KeyError) as error:
            skipped[method] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            continue
        models[_FEATURES + method], steps[_FEATURES + method] = model, step
    return models, steps, skipped


def run_memory_probe(configuration, pair_name, values):
    """Runs `configuration` alone in a fresh process; returns its memory."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--memory_probe={configuration}",
        f"--pair={pair_name}",
        f"--batch_size={_BATCH_SIZE.value}",
        *timing.common_flag_args(values),
    ]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        raise RuntimeError(
            f"The memory probe of {configuration} failed:\n{process.stderr[-3000:]}"
        )
    return json.loads(process.stdout.strip().splitlines()[-1])


def probe_memory(configuration, pair_name, values):
    """Builds and runs one configuration; its peak RSS and the growth to it."""
    pair = timing.PAIRS[pair_name]
    if configuration.startswith(_FEATURES):
        method = configuration[len(_FEATURES) :]
        model = timing.build_feature(method, pair, values.jit_compile)
    elif configuration in timing.CONFIGURATIONS:
        model = timing.build(configuration, pair, values.jit_compile)
    else:
        raise app.UsageError(
            f"Unknown --memory_probe={configuration}: use one of "
            f"{', '.join(timing.CONFIGURATIONS)} or {_FEATURES}<method>."
        )
    baseline = timing.rss_mib()
    peak_was_reset = timing.reset_peak_rss()
    batch = timing.batch_for(configuration, model, pair.random_batch(_BATCH_SIZE.value))
    step = timing.make_step(model, batch, values.jit_compile)
    for _ in range(values.warmup + values.steps_for(pair)):
        step()
    peak = timing.rss_mib("VmHWM")
    return {
        "peak": peak,
        "growth": peak - baseline,
        "built": baseline,
        "peak_was_reset": peak_was_reset,
    }


def measure_backends(pair_name, backends, values):
    """Step times of `timing.CONFIGURATIONS` on each backend, side by side.

    Starts one worker process per installed backend (all at once: building and
    warming up is not timed), then runs `values.repeats` rounds; in each, the
    workers time their round one after the other, in an order rotating from
    round to round, while the others wait.
    """
    skipped = {
        backend: f"not installed ({_INSTALL_HINTS[backend]})"
        for backend in backends
        if importlib.util.find_spec(_BACKEND_MODULES[backend]) is None
    }
    workers = {
        backend: _Worker(backend, pair_name, values)
        for backend in backends
        if backend not in skipped
    }
    try:
        started = {}
        for backend, worker in workers.items():
            started[backend] = worker.answer(starting=True)
            if "skipped" in started[backend]:
                skipped[backend] = started[backend]["skipped"]
        running = [backend for backend in workers if backend not in skipped]
        seconds = {
            backend: {name: [] for name in timing.CONFIGURATIONS} for backend in running
        }
        for round_index in range(values.repeats):
            shift = round_index % max(1, len(running))
            for backend in running[shift:] + running[:shift]:
                workers[backend].ask(round_index)
                for name, values_s in workers[backend].answer().items():
                    seconds[backend][name].extend(values_s)
    finally:
        for worker in workers.values():
            worker.close()
    results = {}
    for backend in backends:
        if backend in skipped:
            results[backend] = {"skipped": skipped[backend]}
            continue
        results[backend] = dict(
            started[backend],
            step_ms={
                name: timing.Summary.of(values_s)
                for name, values_s in seconds[backend].items()
            },
        )
    cpus = _pinned_cpus()
    return {
        "pair": str(timing.PAIRS[pair_name]),
        "device": timing.describe_device("/CPU:0"),
        "cpus": f" (each backend pinned to {len(cpus)})" if cpus else "",
        "steps": values.steps_for(timing.PAIRS[pair_name]),
        "backends": results,
    }


def _pinned_cpus():
    """The CPUs `--cpus` pins the workers to, or None."""
    if _CPUS.value is None:
        return None
    return sorted(os.sched_getaffinity(0))[: _CPUS.value]


class _Worker:
    """A `--backend_worker` subprocess on one backend; its stderr goes to a
    temporary file (shown if it fails)."""

    def __init__(self, backend, pair_name, values):
        self.backend = backend
        # Without --jit_compile, the worker keeps each backend's default.
        args = [
            arg
            for arg in timing.common_flag_args(values)
            if flags.FLAGS["jit_compile"].present or not arg.startswith("--jit")
        ]
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--backend_worker",
            f"--pair={pair_name}",
            f"--batch_size={_BATCH_SIZE.value}",
            *args,
        ]
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115  closed in close()
        cpus = _pinned_cpus()
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "KERAS_BACKEND": backend},
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )

    def ask(self, round_index):
        self.process.stdin.write(f"{round_index}\n")
        self.process.stdin.flush()

    def answer(self, starting=False):
        """The worker's next JSON answer. If it exits instead: `skipped` when
        `starting` and it could not import its backend, else an error."""
        for line in self.process.stdout:
            if line.startswith(_ANSWER):
                return json.loads(line[len(_ANSWER) :])
        self.process.wait()
        self.stderr.seek(0)
        errors = self.stderr.read()
        missing = [
            line
            for line in errors.splitlines()
            if line.startswith(("ModuleNotFoundError", "ImportError"))
        ]
        if starting and missing:
            return {"skipped": f"{missing[-1]} ({_INSTALL_HINTS[self.backend]})"}
        raise RuntimeError(
            f"The {self.backend} worker exited with {self.process.returncode}:\n"
            f"{errors[-3000:]}"
        )

    def close(self):
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()  # the worker ends at end of input
            except BrokenPipeError:
                pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def backend_worker(pair_name, values):
    """The `--backend_worker` process: builds `timing.CONFIGURATIONS` on the
    current backend, warms them up, says so, then times one round per line of
    stdin (the round's index) until stdin ends."""
    pair = timing.PAIRS[pair_name]
    jit = values.jit_compile if flags.FLAGS["jit_compile"].present else "auto"
    batch = pair.random_batch(_BATCH_SIZE.value)
    models = {name: timing.build(name, pair, jit) for name in timing.CONFIGURATIONS}
    # What "auto" resolved to (Keras resolves it at compile), for the teacher.
    jit = models["student"].jit_compile
    steps = {
        name: timing.make_step(model, timing.batch_for(name, model, batch), jit)
        for name, model in models.items()
    }
    timing.warm_up(steps, values.warmup)
    num_steps = values.steps_for(pair)

    def say(payload):
        sys.stdout.write(_ANSWER + json.dumps(payload) + "\n")
        sys.stdout.flush()

    say(
        {
            "version": _backend_version(),
            "gpu": timing._has_gpu(),
            "xla": {name: timing.effective_jit(m, jit) for name, m in models.items()},
        }
    )
    for line in sys.stdin:
        say(timing.timed_round(steps, num_steps, int(line)))


def _backend_version():
    backend = keras.backend.backend()
    return f"{backend} {importlib.import_module(_BACKEND_MODULES[backend]).__version__}"


def report_backends(pair_name, result, values):
    """The Markdown section of `--backends`: a title line, the table (a row
    per backend and configuration) and the backends' versions."""
    rows = []
    for backend, measured in result["backends"].items():
        if "skipped" in measured:
            rows.append([backend, f"skipped: {measured['skipped']}", *["-"] * 6])
            continue
        for name, cells in _step_cells(measured["step_ms"]).items():
            rows.append([backend, *cells, "yes" if measured["xla"][name] else "no"])
    title = (
        f"## {pair_name}: {result['pair']}, batch {_BATCH_SIZE.value}, "
        f"{result['device']}{result['cpus']}; dtype policy "
        f"{keras.mixed_precision.global_policy().name}; {values.repeats} rounds "
        f"x {result['steps']} steps after {values.warmup} warm-up steps, "
        "round-robin over the backends"
    )
    header = ["backend", *_STEP_HEADER, "XLA / torch.compile"]
    versions = ", ".join(
        f"{m['version']} ({'GPU' if m['gpu'] else 'CPU'})"
        for m in result["backends"].values()
        if "skipped" not in m
    )
    return f"{title}\n\n{timing.markdown_table(header, rows, left=2)}\n\n{versions}"


_STEP_HEADER = [
    "configuration",
    "median ms/step",
    "IQR ms",
    "÷ (a)",
    "÷ (a + b)",
    "÷ (d)",
]


def _step_cells(summaries):
    """`{configuration: cells under _STEP_HEADER}` from `{configuration: Summary}`."""
    step_ms = {name: summary.median for name, summary in summaries.items()}
    separate = step_ms["student"] + step_ms["teacher"]
    cells = {}
    for configuration, label in timing.CONFIGURATIONS.items():
        summary = summaries[configuration]
        distils = configuration not in ("student", "teacher")
        ratios = (
            [
                step_ms[configuration] / step_ms["student"],
                step_ms[configuration] / separate,
                step_ms[configuration] / step_ms["keras_kd"],
            ]
            if distils
            else []
        )
        cells[configuration] = [
            label,
            f"{summary.median:.2f}",
            f"{summary.iqr:.2f}",
            *([f"{ratio:.2f}" for ratio in ratios] or ["-"] * 3),
        ]
    return cells


def report(pair_name, result, values):
    """The Markdown section of one pair: a title line and the table."""
    rows = []
    for configuration, cells in _step_cells(result["step_ms"]).items():
        memory = result["memory_mib"].get(configuration)
        rows.append(
            [
                *cells,
                f"{memory['peak']:.0f}" if memory else "n/a",
                f"{memory['growth']:.0f}" if memory else "n/a",
            ]
        )
    title = (
        f"## {pair_name}: {result['pair']}, batch {_BATCH_SIZE.value}, "
        f"{result['device']}; "
        f"{timing.describe_run(values, result['steps'], result['xla'])}"
    )
    header = [
        *_STEP_HEADER,
        "peak RSS MiB (own process)",
        "RSS growth MiB (own process)",
    ]
    table = f"{title}\n\n{timing.markdown_table(header, rows)}"
    if not result["feature_step_ms"]:
        return table
    return f"{table}\n\n{report_features(pair_name, result)}"


def report_features(pair_name, result):
    """The feature methods' table: step time, its ratio to KD on the same
    student (timed in the same rounds), and memory."""
    step_ms = result["feature_step_ms"]
    baseline = step_ms[timing.FEATURE_BASELINE].median
    rows = []
    for method, summary in step_ms.items():
        memory = result["feature_memory_mib"].get(method)
        rows.append(
            [
                method,
                f"{summary.median:.2f}",
                f"{summary.iqr:.2f}",
                f"{summary.median / baseline:.2f}",
                f"{memory['peak']:.0f}" if memory else "n/a",
                f"{memory['growth']:.0f}" if memory else "n/a",
            ]
        )
    for method, reason in result["feature_skipped"].items():
        rows.append([method, f"skipped: {reason}", *["-"] * 4])
    title = (
        f"## {pair_name}, feature methods: {result['pair'].split(' -> ')[0]} -> "
        f"{result['feature_student']}, each as its CIFAR-100 recipe (loss, taps, "
        "weights); timed in the same rounds as the table above"
    )
    header = [
        "method",
        "median ms/step",
        "IQR ms",
        "÷ KD",
        "peak RSS MiB (own process)",
        "RSS growth MiB (own process)",
    ]
    return f"{title}\n\n{timing.markdown_table(header, rows)}"


if __name__ == "__main__":
    app.run(main)
