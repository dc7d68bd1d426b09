"""What `MirroredStrategy` costs the Distiller on logical CPU devices.

The CPU is split into 2 logical devices (`keras_cskd.distribute.split_cpu`,
before TensorFlow starts). The Distiller with CSKD+CSWT then trains on the
same global batch, interleaved (round-robin, several rounds), under:

- the default strategy, which uses the first device only;
- `MirroredStrategy` over that one device (the strategy's own overhead);
- `MirroredStrategy` over both devices (`get_strategy("mirrored")`): each
  replica gets half the batch, and the Distiller all-gathers teacher logits,
  student logits and labels so the batch-wise losses see the global batch.

Logical CPU devices share the same cores and thread pools, so the 2-device
row measures the cost of replication (the all-gather, the gradient
all-reduce, two half-batch steps), not a speed-up.

    python benchmarks/distributed_overhead.py              # digits and cifar
    python benchmarks/distributed_overhead.py --pair=digits --batch_size=128
    python benchmarks/distributed_overhead.py --smoke      # smoke test, seconds

The digits pair trains at `--batch_size` (default 64); the cifar pair
(resnet32x4 -> resnet8x4) at `--cifar_batch_size` (default 16).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_cskd import distribute  # noqa: E402

_PAIR = flags.DEFINE_enum(
    "pair", "both", ["digits", "cifar", "both"], "Teacher/student pair(s)."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Global batch size of the digits pair."
)
_CIFAR_BATCH_SIZE = flags.DEFINE_integer(
    "cifar_batch_size", 16, "Global batch size of the cifar pair."
)

CONFIGURATION = "cskd_cswt"
NUM_DEVICES = 2

# Strategy name -> table label.
STRATEGIES = {
    "default": "default strategy, 1 device",
    "mirrored_1": "MirroredStrategy, 1 device",
    "mirrored_2": "MirroredStrategy, 2 devices",
}


def main(argv):
    del argv
    distribute.split_cpu(NUM_DEVICES)
    values = timing.settings()
    pair = timing.smoke_or(_PAIR, "digits")
    pair_names = ["digits", "cifar"] if pair == "both" else [pair]
    # One set of strategies for all pairs: two MirroredStrategy objects in one
    # process hand out the same collective keys, and their all-gathers clash.
    strategies = make_strategies()
    results = {}
    for name in pair_names:
        batch_size = _BATCH_SIZE.value if name == "digits" else _CIFAR_BATCH_SIZE.value
        results[name] = measure(name, batch_size, strategies, values)
        print(report(name, batch_size, results[name], values), end="\n\n", flush=True)
    timing.write_json(values.json_path, {"settings": values, "pairs": results})
    return 0


def make_strategies():
    """`{name: strategy}` for the names of `STRATEGIES`."""
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    return {
        "default": tf.distribute.get_strategy(),
        "mirrored_1": tf.distribute.MirroredStrategy(devices[:1]),
        "mirrored_2": distribute.get_strategy("mirrored"),
    }


def measure(pair_name, batch_size, strategies, values):
    """Step times of the Distiller under each strategy, on one global batch."""
    pair = timing.PAIRS[pair_name]
    batch = pair.random_batch(batch_size)
    steps, xla = {}, {}
    for name, strategy in strategies.items():
        with strategy.scope():
            model = timing.build(CONFIGURATION, pair, values.jit_compile)
        steps[name] = timing.make_step(model, batch, values.jit_compile)
        xla[name] = timing.effective_jit(model, values.jit_compile)
    num_steps = values.steps_for(pair)
    summaries = timing.interleaved_step_times(
        steps, num_steps, values.warmup, values.repeats
    )
    return {
        "pair": str(pair),
        "batch_size": batch_size,
        "steps": num_steps,
        "step_ms": summaries,
        "xla": xla,
    }


def report(pair_name, batch_size, result, values):
    """The Markdown section of one pair: a title line and the table."""
    baseline = result["step_ms"]["default"].median
    rows = [
        [
            label,
            f"{result['step_ms'][name].median:.2f}",
            f"{result['step_ms'][name].iqr:.2f}",
            f"{result['step_ms'][name].median / baseline:.2f}",
        ]
        for name, label in STRATEGIES.items()
    ]
    title = (
        f"## {pair_name}: {result['pair']}, Distiller CSKD+CSWT, global batch "
        f"{batch_size}, {timing.describe_device('/CPU:0')} split into "
        f"{NUM_DEVICES} logical devices; "
        f"{timing.describe_run(values, result['steps'], result['xla'])}"
    )
    header = ["strategy", "median ms/step", "IQR ms", "÷ default"]
    return f"{title}\n\n{timing.markdown_table(header, rows)}"


if __name__ == "__main__":
    app.run(main)
