"""`tf.distribute` for the Distiller: strategies by name, and the global batch.

Under a strategy the Distiller computes every loss term on the global batch
(`global_batch`), so the loss, and for a student without BatchNorm the summed
gradients of the replicas, are what one device computes on the same batch.
The student's forward pass still runs on each replica's shard, so its
BatchNorm layers in training normalise with their shard's statistics (zoo
models' `synchronized=True` uses all replicas': closer to one device, not
identical), and a BatchNorm student does not train exactly as on one device.
"""

import functools
import itertools
import json
import math
import os

import tensorflow as tf
from keras import ops, tree

STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu")


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
        ValueError: for an unknown name, or `"multiworker"` without `TF_CONFIG`.

    Example:

    >>> strategy = get_strategy("mirrored")
    >>> with strategy.scope():
    ...     distiller = keras_cskd.Distiller(teacher, student, "cskd")
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy '{name}'. Choose one of: {', '.join(STRATEGIES)}."
        )
    # MultiWorkerMirroredStrategy must come before anything that initialises
    # TensorFlow's devices (even listing them).
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy 'multiworker' needs the TF_CONFIG environment variable "
                "(the cluster and this worker's task); see the README."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = gpus or tf.config.list_logical_devices("CPU")
    return _mirrored(tuple(d.name for d in devices))


@functools.cache
def _mirrored(devices):
    # One MirroredStrategy per set of devices and process: a second one hands
    # out the same collective keys, and their collectives then clash
    # (tensorflow/tensorflow#62790).
    return tf.distribute.MirroredStrategy(list(devices))


def task_name():
    """This process's task in `TF_CONFIG`, e.g. `"worker_1"` (`"chief"` without one)."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return f"{task.get('type', 'chief')}_{task.get('index', 0)}"


def is_chief():
    """Whether this process writes the run's artefacts: true without `TF_CONFIG`,
    for the chief, and for worker 0 of a cluster that has no chief."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind in (None, "chief"):
        return True
    return kind == "worker" and index == 0 and not tf_config["cluster"].get("chief")


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
