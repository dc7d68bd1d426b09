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
    python benchmarks/step_time.py --quick         # smoke test: digits, seconds

`--pair=cifar` is resnet32x4 -> resnet8x4 on random 32x32x3 images (100
classes); `--pair=digits` is digits_cnn -> digits_mlp on 8x8x1 (10 classes).
"""

import json
import os
import subprocess
import sys
from concurrent import futures

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
    "--quick unless given).",
)
_MEMORY_PROBE = flags.DEFINE_enum(
    "memory_probe",
    None,
    list(timing.CONFIGURATIONS),
    "Internal: run this configuration alone and print its memory as JSON.",
)

# How many memory subprocesses run at once (memory does not depend on load).
_MEMORY_JOBS = 2


def main(argv):
    del argv
    values = timing.settings()
    pair = timing.quick_or(_PAIR, "digits")
    pair_names = ["digits", "cifar"] if pair == "both" else [pair]
    if _MEMORY_PROBE.value:
        print(json.dumps(probe_memory(_MEMORY_PROBE.value, pair_names[0], values)))
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
    num_steps = values.steps_for(pair)
    summaries = timing.interleaved_step_times(
        steps, num_steps, values.warmup, values.repeats
    )
    memory = {}
    if timing.quick_or(_MEMORY, False):
        with futures.ThreadPoolExecutor(_MEMORY_JOBS) as pool:
            memory = dict(
                zip(
                    models,
                    pool.map(lambda c: run_memory_probe(c, pair_name, values), models),
                    strict=True,
                )
            )
    return {
        "pair": str(pair),
        "device": timing.describe_device("/CPU:0"),
        "steps": num_steps,
        "step_ms": summaries,
        "memory_mib": memory,
        "xla": {
            c: timing.effective_jit(m, values.jit_compile) for c, m in models.items()
        },
    }


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
    model = timing.build(configuration, pair, values.jit_compile)
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


def report(pair_name, result, values):
    """The Markdown section of one pair: a title line and the table."""
    step_ms = {name: summary.median for name, summary in result["step_ms"].items()}
    separate = step_ms["student"] + step_ms["teacher"]
    rows = []
    for configuration, label in timing.CONFIGURATIONS.items():
        summary = result["step_ms"][configuration]
        distils = configuration not in ("student", "teacher")
        memory = result["memory_mib"].get(configuration)
        rows.append(
            [
                label,
                f"{summary.median:.2f}",
                f"{summary.iqr:.2f}",
                f"{step_ms[configuration] / step_ms['student']:.2f}"
                if distils
                else "-",
                f"{step_ms[configuration] / separate:.2f}" if distils else "-",
                f"{step_ms[configuration] / step_ms['keras_kd']:.2f}"
                if distils
                else "-",
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
        "configuration",
        "median ms/step",
        "IQR ms",
        "÷ (a)",
        "÷ (a + b)",
        "÷ (d)",
        "peak RSS MiB (own process)",
        "RSS growth MiB (own process)",
    ]
    return f"{title}\n\n{timing.markdown_table(header, rows)}"


if __name__ == "__main__":
    app.run(main)
