"""`tf.distribute` for the Distiller: strategies by name, and the global batch.

Under a strategy the Distiller computes every loss term on the global batch
(`global_batch`), so the loss and the summed gradients of the replicas are
what one device computes on the same batch. The student's forward pass runs
on each replica's shard; zoo models' BatchNorm layers
(`keras_cskd.batch_norm.GroupBatchNormalization`) gather what their statistics
need across replicas themselves, so a BatchNorm student trains as on one
device too (docs/distributed.md).
"""

import functools
import itertools
import json
import math
import os

import tensorflow as tf
from keras import ops, tree

from keras_cskd import cli

STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu")
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


def split_cpu(num_devices):
    """Splits the CPU into `num_devices` logical devices (for testing
    MirroredStrategy without GPUs). Must run before TensorFlow initialises
    its devices, i.e. before any op runs."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
    )


def get_strategy(name="auto"):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: `"auto"` (MirroredStrategy over all visible GPUs when there is
            more than one, else the default strategy), `"none"` (the default
            strategy), `"mirrored"` (MirroredStrategy over all GPUs, or over
            all logical CPU devices when there is no GPU), `"multiworker"`
            (MultiWorkerMirroredStrategy configured from the `TF_CONFIG`
            environment variable) or `"tpu"` (TPUStrategy through TensorFlow's
            cluster resolver).

    Raises:
        ValueError: for an unknown name, a malformed `TF_CONFIG`,
            `"multiworker"` without `TF_CONFIG`, or `"tpu"` without a TPU.

    Example:

    ```python
    strategy = get_strategy("mirrored")
    with strategy.scope():
        distiller = keras_cskd.Distiller(teacher, student, "cskd")
    ```
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy '{name}'. Choose one of: {', '.join(STRATEGIES)}."
        )
    cluster = tf_config()
    # MultiWorkerMirroredStrategy must come before anything that initialises
    # TensorFlow's devices (even listing them).
    if name == "multiworker":
        if not cluster:
            raise ValueError(
                "strategy 'multiworker' needs the TF_CONFIG environment variable "
                f"(the cluster and this worker's task, e.g. {TF_CONFIG_EXAMPLE}); "
                "see the README."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return _mirrored(tuple(d.name for d in devices))


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ValueError(
            f"strategy 'tpu' found no TPU ({cli.one_line(error)}): run on a TPU VM "
            "(or set TPU_NAME to the TPU's name), or choose strategy auto, "
            "mirrored or none."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


@functools.cache
def _mirrored(devices):
    # One MirroredStrategy per set of devices and process: a second one hands
    # out the same collective keys, and their collectives then clash
    # (tensorflow/tensorflow#62790).
    return tf.distribute.MirroredStrategy(list(devices))


def tf_config():
    """The `TF_CONFIG` environment variable, parsed and checked (`{}` when unset).

    Raises:
        ValueError: one line naming what is wrong and the expected form, for
            JSON that does not parse, a `cluster` that is not a dict of lists
            of `"host:port"` strings, or a `task` that is not in the cluster.

    Example:

    >>> os.environ["TF_CONFIG"] = json.dumps({
    ...     "cluster": {"worker": ["host0:2222", "host1:2222"]},
    ...     "task": {"type": "worker", "index": 0},
    ... })
    >>> tf_config()["task"]
    {'type': 'worker', 'index': 0}
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}): set it to the cluster and this "
            f"process's task, e.g. {TF_CONFIG_EXAMPLE}, or unset it."
        ) from None
    problem = _tf_config_problem(parsed)
    if problem:
        raise ValueError(
            f"TF_CONFIG {problem}: set it to the cluster and this process's task, "
            f"e.g. {TF_CONFIG_EXAMPLE}, or unset it."
        )
    return parsed


def _tf_config_problem(parsed):
    """What is wrong with a parsed `TF_CONFIG`, or `None`."""
    if not isinstance(parsed, dict) or not isinstance(parsed.get("cluster"), dict):
        return "has no 'cluster' object"
    cluster = parsed["cluster"]
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            return f"lists no addresses for '{kind}' (a list of 'host:port')"
        if not all(isinstance(a, str) and ":" in a for a in addresses):
            return f"has '{kind}' addresses that are not 'host:port' strings"
    task = parsed.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        return f"has a task {task!r} whose 'type' is not one of {sorted(cluster)}"
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        return (
            f"has task index {index!r}, not one of the "
            f"{len(cluster[task['type']])} '{task['type']}' addresses"
        )
    return None


def task_name():
    """This process's task in `TF_CONFIG`, e.g. `"worker_1"` (`"chief"` without one)."""
    task = tf_config().get("task", {})
    return f"{task.get('type', 'chief')}_{task.get('index', 0)}"


def is_chief():
    """Whether this process writes the run's artefacts: true without `TF_CONFIG`,
    for the chief, and for worker 0 of a cluster that has no chief."""
    cluster = tf_config()
    task = cluster.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind in (None, "chief"):
        return True
    return kind == "worker" and index == 0 and not cluster["cluster"].get("chief")


def num_replicas():
    """The number of replicas training in sync (1 outside a strategy)."""
    return tf.distribute.get_replica_context().num_replicas_in_sync


def global_batch(teacher_outputs, student_outputs, labels):
    """The global batch, gathered from all replicas in replica order.

    Called in a replica context (a `train_step` under `tf.distribute`), with
    dicts of `[local_batch, ...]` float32 outputs (logits, features).

    Returns the teacher outputs, student outputs and labels of the global
    batch, and the replica id of each row. One forward all_gather carries
    all of them, with the student outputs behind `stop_gradient`; this
    replica's own rows are then put back live, so the gradient reaches the
    student through its own shard only and no collective runs in the
    backward pass. What the student computed on its shard alone (BatchNorm
    statistics) stays per replica.
    """
    context = tf.distribute.get_replica_context()
    local_size = ops.shape(labels)[0]
    replica_id = ops.cast(context.replica_id_in_sync_group, "float32")
    parts = [
        *tree.flatten(teacher_outputs),
        *(ops.stop_gradient(s) for s in tree.flatten(student_outputs)),
        ops.cast(labels, "float32"),
        ops.full((local_size,), replica_id),
    ]
    widths = [math.prod(part.shape[1:]) for part in parts]
    gathered = context.all_gather(
        ops.concatenate([ops.reshape(p, (local_size, -1)) for p in parts], axis=-1),
        axis=0,
    )
    ends = list(itertools.accumulate(widths))
    pieces = [
        ops.reshape(gathered[:, end - width : end], (-1, *part.shape[1:]))
        for part, width, end in zip(parts, widths, ends, strict=True)
    ]
    replica_ids = pieces.pop()
    all_labels = ops.cast(pieces.pop(), labels.dtype)
    num_teacher = len(tree.flatten(teacher_outputs))
    start = ops.sum(ops.cast(replica_ids < replica_id, "int32"))
    all_students = [
        ops.concatenate([rows[:start], own, rows[start + local_size :]], axis=0)
        for rows, own in zip(
            pieces[num_teacher:], tree.flatten(student_outputs), strict=True
        )
    ]
    return (
        tree.pack_sequence_as(teacher_outputs, pieces[:num_teacher]),
        tree.pack_sequence_as(student_outputs, all_students),
        all_labels,
        replica_ids,
    )


def shards(tensors, replica_ids):
    """Yields `(tensors of one replica's rows, row count)` for every replica
    of a global batch from `global_batch`."""
    for replica in range(num_replicas()):
        in_shard = ops.equal(replica_ids, replica)
        shard = tree.map_structure(
            lambda t, mask=in_shard: tf.boolean_mask(t, mask), tensors
        )
        yield shard, ops.sum(ops.cast(in_shard, "float32"))
