"""Images per second of teacher inference, student training and distillation.

On resnet32x4 -> resnet8x4 (random 32x32x3 images, 100 classes) at batch 64,
it measures, interleaved (round-robin, several rounds) after a warm-up:

- the teacher's inference (a `tf.function` forward pass);
- the student alone training on the cross-entropy (its compiled train step);
- `keras_cskd.Distiller` with CSKD+CSWT (its compiled train step);

on this machine's CPU, and also on the first GPU when TensorFlow sees one
(models and steps placed with `tf.device`). Images per second is the batch
size over the median time per step.

    python benchmarks/throughput.py                  # batch 64, CPU (+ GPU)
    python benchmarks/throughput.py --batch_size=128 --jit_compile
    python benchmarks/throughput.py --mixed_precision --json=throughput.json
    python benchmarks/throughput.py --smoke          # smoke test: batch 8
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")

PAIR = "cifar"
# Configuration name -> table label.
CONFIGURATIONS = {
    "teacher": "teacher inference",
    "student": "student training, CE",
    "cskd_cswt": "distillation, CSKD+CSWT",
}
SMOKE_BATCH_SIZE = 8


def main(argv):
    del argv
    values = timing.settings()
    batch_size = timing.smoke_or(_BATCH_SIZE, SMOKE_BATCH_SIZE)
    devices = ["/CPU:0", *timing.gpu_devices()[:1]]
    results = {device: measure(device, batch_size, values) for device in devices}
    print(report(results, batch_size, values))
    timing.write_json(
        values.json_path,
        {"settings": values, "batch_size": batch_size, "devices": results},
    )
    return 0


def measure(device, batch_size, values):
    """Step times and images per second of each configuration on `device`."""
    pair = timing.PAIRS[PAIR]
    batch = pair.random_batch(batch_size)
    steps, xla = {}, {}
    with tf.device(device):
        for configuration in CONFIGURATIONS:
            model = timing.build(configuration, pair, values.jit_compile)
            steps[configuration] = _on_device(
                device, timing.make_step(model, batch, values.jit_compile)
            )
            xla[configuration] = timing.effective_jit(model, values.jit_compile)
    num_steps = values.steps_for(pair)
    summaries = timing.interleaved_step_times(
        steps, num_steps, values.warmup, values.repeats
    )
    return {
        "device": timing.describe_device(device),
        "steps": num_steps,
        "step_ms": summaries,
        "images_per_second": {
            name: 1000.0 * batch_size / summary.median
            for name, summary in summaries.items()
        },
        "xla": xla,
    }


def _on_device(device, step):
    def step_on_device():
        with tf.device(device):
            return step()

    return step_on_device


def report(results, batch_size, values):
    """A title line and one table: a row per device and configuration."""
    rows = [
        [
            f"{label} ({device})",
            result["device"],
            f"{result['step_ms'][name].median:.1f}",
            f"{result['images_per_second'][name]:.0f}",
        ]
        for device, result in results.items()
        for name, label in CONFIGURATIONS.items()
    ]
    xla = {
        f"{device} {name}": on
        for device, result in results.items()
        for name, on in result["xla"].items()
    }
    num_steps = next(iter(results.values()))["steps"]
    title = (
        f"## {timing.PAIRS[PAIR]}, batch {batch_size}; "
        f"{timing.describe_run(values, num_steps, xla)}"
    )
    header = ["configuration", "device", "median ms/step", "images/s"]
    return f"{title}\n\n{timing.markdown_table(header, rows)}"


if __name__ == "__main__":
    app.run(main)
