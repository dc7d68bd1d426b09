"""Distils a fixed student for six steps on one backend; run by test_backends.py.

    python tests/backend_run.py --backend=jax --inputs=in.npz --out=out.npz
    python tests/backend_run.py --backend=jax --data_parallel --inputs=... --out=...

Builds a small convolutional teacher and student (both with batch
normalisation), loads their initial weights from `--inputs` (written once by
`make_inputs`, with NumPy, so every backend starts from the same numbers),
distils with `keras_cskd.Distiller` and CSKD + CSWT under SGD (0.1, momentum
0.9) for two epochs of three batches of 16, and writes to `--out` the student's
and the teacher's final weights, the history and what actually ran (backend,
devices). It runs on the CPU: GPUs round float32 matmuls in TF32 by default,
which a 1e-4 comparison would not survive.

With `--data_parallel` (JAX) the batches are split over two host devices by
`keras.distribution.DataParallel`; `XLA_FLAGS` gets
`--xla_force_host_platform_device_count=2` if it does not ask for a device count.
On JAX, `XLA_FLAGS` also gets `FAST_COMPILE` (compiling is most of a run).
With `--also_per_shard` the same process trains a second student from the same
start with the batch-wise loss computed on each half of the batch and averaged
(what a backend that lost the global batch would train) and writes it under the
prefix `per_shard_`, for the test that shows the comparison notices.
"""

import argparse
import os
import sys
import time

import numpy as np

IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 10
NUM_SAMPLES = 48
BATCH_SIZE = 16
EPOCHS = 2
DATA_PARALLEL_DEVICES = 2
# Every weight is overwritten from the inputs; constant initialisers spare JAX
# compiling its random-number kernels (seconds per kernel shape on the CPU).
NOT_RANDOM = {"kernel_initializer": "zeros"}
# XLA's CPU backend without LLVM's optimisation passes: these runs are a few
# steps of small models, where compiling is most of the time (a wrn_16_2 job of
# batch_norm_job.py: 51 -> 31 CPU-s). The numbers differ in the last bit at
# most, far under every tolerance these runs are compared with.
FAST_COMPILE = "--xla_backend_optimization_level=0"
HISTORY_KEYS = ("loss", "ce_loss", "distillation_loss", "accuracy")


def build_teacher():
    """Two conv-BN-ReLU blocks, global pooling and a dense layer (~6k weights)."""
    import keras
    from keras import layers

    inputs = keras.Input(IMAGE_SHAPE)
    x = inputs
    for filters, strides in ((16, 1), (32, 2)):
        x = layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, **NOT_RANDOM
        )(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES, **NOT_RANDOM)(x)
    return keras.Model(inputs, outputs, name="teacher")


def build_student():
    """One strided conv-BN-ReLU block, flattened into a dense layer (~5k weights)."""
    import keras
    from keras import layers

    inputs = keras.Input(IMAGE_SHAPE)
    x = layers.Conv2D(8, 3, strides=2, padding="same", **NOT_RANDOM)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(NUM_CLASSES, **NOT_RANDOM)(x)
    return keras.Model(inputs, outputs, name="student")


def initial_weights(model, rng):
    """NumPy values for `model.weights`, in order, chosen by each weight's kind.

    The moving statistics are not 0 and 1, so a teacher run in training mode
    (batch statistics) would give other logits than in inference mode."""
    values = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        if weight.name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif weight.name == "gamma":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif weight.name == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        elif weight.name in ("bias", "beta", "moving_mean"):
            value = 0.1 * rng.normal(size=shape)
        else:
            raise ValueError(f"No initial value for weight {weight.path}.")
        values.append(value.astype("float32"))
    return values


def make_inputs(path, seed=0):
    """Writes the data and both models' initial weights (and names) to `path`.

    Uses whichever Keras backend is loaded, for the weights' shapes only."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x": rng.normal(size=(NUM_SAMPLES, *IMAGE_SHAPE)).astype("float32"),
        "y": rng.integers(0, NUM_CLASSES, NUM_SAMPLES).astype("int32"),
    }
    for role, build in (("teacher", build_teacher), ("student", build_student)):
        model = build()
        arrays.update(weight_arrays(role, initial_weights(model, rng)))
        arrays[f"{role}_names"] = np.array([w.name for w in model.weights])
    np.savez(path, **arrays)


def weight_arrays(role, values):
    return {f"{role}_{index}": np.asarray(v) for index, v in enumerate(values)}


def read_weights(arrays, role):
    """The `role` ("teacher" or "student") weights in an npz, in order."""
    weights = []
    while f"{role}_{len(weights)}" in arrays:
        weights.append(arrays[f"{role}_{len(weights)}"])
    return weights


def build_loss(name):
    from keras import ops

    from keras_cskd import losses

    paper = {"temperature": 4.0, "cswt": losses.CSWT(2.0, 6.0)}
    if name == "cskd":
        return losses.CSKD(**paper)
    if name != "cskd_per_shard":
        raise ValueError(f"Unknown loss {name!r}: cskd or cskd_per_shard.")

    class PerShardCSKD(losses.CSKD):
        """CSKD averaged over the two halves of the batch."""

        def call(self, teacher_logits, student_logits, labels=None, **kwargs):
            half = ops.shape(teacher_logits)[0] // 2
            shards = [slice(None, half), slice(half, None)]
            return 0.5 * sum(
                super(PerShardCSKD, self).call(
                    teacher_logits[shard], student_logits[shard]
                )
                for shard in shards
            )

    return PerShardCSKD(**paper)


def set_backend(backend, data_parallel):
    """Environment for the backend; must run before Keras is imported."""
    if "keras" in sys.modules:
        raise RuntimeError("set_backend must run before keras is imported.")
    os.environ["KERAS_BACKEND"] = backend
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU only, on every backend
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        add_xla_flag(FAST_COMPILE)
    if data_parallel:
        if backend != "jax":
            raise ValueError("--data_parallel runs on the jax backend only.")
        add_xla_flag(f"--xla_force_host_platform_device_count={DATA_PARALLEL_DEVICES}")


def add_xla_flag(flag):
    """Appends `flag` to `XLA_FLAGS` unless its name is there already."""
    flags = os.environ.get("XLA_FLAGS", "")
    if flag.split("=")[0] not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def distribute_over_host_devices():
    """Sets a DataParallel distribution over exactly two CPU devices."""
    import keras

    devices = keras.distribution.list_devices("cpu")
    if len(devices) != DATA_PARALLEL_DEVICES:
        raise RuntimeError(
            f"DataParallel needs {DATA_PARALLEL_DEVICES} host devices, found "
            f"{devices}; XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}."
        )
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices)
    )
    return len(devices)


def variable_devices(model):
    """On how many devices the model's first weight lives (jax); 1 elsewhere."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    return len(model.weights[0].value.sharding.device_set)


def train(inputs, loss_name="cskd", num_devices=1):
    """Distils from the weights in `inputs`; returns the arrays to write."""
    import keras

    import keras_cskd

    teacher, student = models_from(inputs)
    distiller = keras_cskd.Distiller(teacher, student, build_loss(loss_name))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = distiller.fit(
        inputs["x"],
        inputs["y"],
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
    )
    arrays = trained_arrays(student, history)
    arrays["num_devices"] = np.array(num_devices)
    arrays["variable_devices"] = np.array(variable_devices(student))
    arrays.update(weight_arrays("teacher", teacher.get_weights()))
    return arrays


def models_from(inputs):
    """`(teacher, student)` with the weights in `inputs`."""
    import keras

    teacher, student = build_teacher(), build_student()
    for role, model in (("teacher", teacher), ("student", student)):
        names = [w.name for w in model.weights]
        if names != list(inputs[f"{role}_names"]):
            raise RuntimeError(
                f"The {role}'s weights are {names} on {keras.backend.backend()}, "
                f"the inputs hold {list(inputs[f'{role}_names'])}."
            )
        model.set_weights(read_weights(inputs, role))
    return teacher, student


def trained_arrays(student, history):
    """The backend, the student's weights and the history, to write."""
    import keras

    arrays = {"backend": np.array(keras.backend.backend())}
    arrays.update(weight_arrays("student", student.get_weights()))
    for key, values in history.history.items():
        arrays[f"history_{key}"] = np.asarray(values, dtype="float64")
    return arrays


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data_parallel", action="store_true")
    parser.add_argument("--also_per_shard", action="store_true")
    args = parser.parse_args()
    set_backend(args.backend, args.data_parallel)
    import keras_cskd  # noqa: F401  (imported here, so the timing is training's)

    start = time.perf_counter()
    num_devices = distribute_over_host_devices() if args.data_parallel else 1
    with np.load(args.inputs) as inputs:
        inputs = dict(inputs)
    arrays = train(inputs, "cskd", num_devices)
    if args.also_per_shard:
        per_shard = train(inputs, "cskd_per_shard", num_devices)
        arrays.update({f"per_shard_{k}": v for k, v in per_shard.items()})
    arrays["train_seconds"] = np.array(time.perf_counter() - start)
    np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
