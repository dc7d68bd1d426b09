"""What cross-replica BatchNorm statistics cost against per-replica ones.

The CPU is split into 2 logical devices (`keras_cskd.distribute.split_cpu`,
before TensorFlow starts). A BatchNorm student from the zoo then trains (SGD,
cross-entropy) on the same global batch, interleaved round-robin, with its
statistics over:

- the global batch on one device (the default strategy): the reference;
- each replica's shard under `MirroredStrategy` over both devices
  (`batch_norm_group` = half the batch): ghost batches, no communication but
  replica 0's moving statistics;
- the global batch under `MirroredStrategy` (`batch_norm_group` unset): two
  all-gathers of per-image sums per BatchNorm layer, and their sums in the
  backward pass.

Logical CPU devices share the same cores, so the ratio of the last two rows
is the cost of the cross-replica statistics, not a speed-up.

    python benchmarks/batch_norm_groups.py                 # resnet8x4, batch 64
    python benchmarks/batch_norm_groups.py --student=wrn_16_2 --batch_size=128
    python benchmarks/batch_norm_groups.py --smoke         # smoke test, seconds
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_cskd  # noqa: E402
from keras_cskd import distribute  # noqa: E402

_STUDENT = flags.DEFINE_string("student", "resnet8x4", "A zoo model with BatchNorm.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image height and width.")

NUM_DEVICES = 2
SMOKE = {"student": "resnet8", "batch_size": 8, "image_size": 8}

# Name -> (table label, strategy name, group: None or "half").
RUNS = {
    "one_device": ("1 device, global batch", "default", None),
    "per_replica": ("2 devices, per-replica (group = batch / 2)", "mirrored", "half"),
    "cross_replica": ("2 devices, cross-replica (global batch)", "mirrored", None),
}


def main(argv):
    del argv
    distribute.split_cpu(NUM_DEVICES)
    values = timing.settings()
    student = timing.smoke_or(_STUDENT, SMOKE["student"])
    batch_size = timing.smoke_or(_BATCH_SIZE, SMOKE["batch_size"])
    image_size = timing.smoke_or(_IMAGE_SIZE, SMOKE["image_size"])
    pair = timing.Pair("", student, (image_size, image_size, 3), 100, 5)
    result = measure(pair, batch_size, values)
    print(report(pair, batch_size, result, values), flush=True)
    timing.write_json(values.json_path, {"settings": values, "result": result})
    return 0


def measure(pair, batch_size, values):
    """Step times of the student under each of `RUNS`, on one global batch."""
    batch = pair.random_batch(batch_size)
    steps = {}
    for name, (_, strategy_name, group) in RUNS.items():
        strategy = (
            tf.distribute.get_strategy()
            if strategy_name == "default"
            else distribute.get_strategy(strategy_name)
        )
        with strategy.scope():
            model = student(pair, batch_size // NUM_DEVICES if group else None)
        steps[name] = timing.make_step(model, batch)
    num_steps = values.steps_for(pair)
    summaries = timing.interleaved_step_times(
        steps, num_steps, values.warmup, values.repeats
    )
    return {"student": pair.student, "steps": num_steps, "step_ms": summaries}


def student(pair, group):
    keras.utils.set_random_seed(0)
    model = keras_cskd.models.get(
        pair.student, pair.num_classes, pair.input_shape, batch_norm_group=group
    )
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def commit():
    """The repository's commit (with `+` when the tree has changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+" if dirty else "")


def report(pair, batch_size, result, values):
    """The Markdown section: a title line and the table."""
    per_replica = result["step_ms"]["per_replica"].median
    rows = [
        [
            label,
            f"{result['step_ms'][name].median:.2f}",
            f"{result['step_ms'][name].iqr:.2f}",
            f"{result['step_ms'][name].median / per_replica:.2f}",
        ]
        for name, (label, _, _) in RUNS.items()
    ]
    title = (
        f"## BatchNorm statistics: {pair.student} on {pair.input_shape} images, "
        f"global batch {batch_size}, {timing.describe_device('/CPU:0')} split "
        f"into {NUM_DEVICES} logical devices; commit {commit()}; "
        f"{timing.describe_run(values, result['steps'], {'': False})}"
    )
    header = ["BatchNorm statistics", "median ms/step", "IQR ms", "÷ per-replica"]
    return f"{title}\n\n{timing.markdown_table(header, rows)}"


if __name__ == "__main__":
    app.run(main)
