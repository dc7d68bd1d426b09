"""What the exact teacher-logit cache saves on an augmented training recipe.

For each teacher/student pair it measures, in one process and interleaved
(round-robin over the three trainers, median of the rounds, after a warm-up
epoch), the time of one augmented training epoch of:

- the student alone (cross-entropy, the same pipeline without a teacher);
- online distillation (`Distiller`, CSKD; the teacher runs every step);
- distillation from the cache (`keras_cskd.data.teacher_cache.pipeline`);

and the time to build the cache (the teacher on every crop/flip variant of
every image), per variant image. From those it projects a `--recipe_epochs`
recipe: cache build + epochs with the cache, against epochs online.

`digits` is digits_cnn -> digits_mlp on the real digits (9 variants);
`cifar` is resnet32x4 -> resnet8x4 on `--cifar_images` random 32x32x3
images held in memory (162 variants; untrained weights: time does not depend
on their values).

    python benchmarks/teacher_cache.py            # both pairs
    python benchmarks/teacher_cache.py --quick    # smoke test: seconds
"""

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_cskd  # noqa: E402
from keras_cskd import data  # noqa: E402
from keras_cskd.data import augment, teacher_cache  # noqa: E402

_PAIR = flags.DEFINE_enum("pair", "both", ["digits", "cifar", "both"], "Pair(s).")
_CIFAR_IMAGES = flags.DEFINE_integer("cifar_images", 256, "Random CIFAR images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Training batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed epochs per trainer.")
_RECIPE = flags.DEFINE_integer("recipe_epochs", 240, "Epochs of the projection.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: tiny and fast.")

CIFAR_NORMALIZATION = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def digits_pair(directory):
    dataset = data.load("digits")
    teacher = keras_cskd.models.get("digits_cnn", 10, (8, 8, 1))
    return dataset, teacher, "digits_mlp", augment.digits_augmentation()


def cifar_pair(directory, images):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(images, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 100, images).astype("int32")
    split = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = data.Dataset(
        "random-cifar", split, None, split, 100, (32, 32, 3), CIFAR_NORMALIZATION
    )
    teacher = keras_cskd.models.get("resnet32x4", 100, (32, 32, 3))
    augmentation = augment.cifar_augmentation(normalization=CIFAR_NORMALIZATION)
    return dataset, teacher, "resnet8x4", augmentation


def measure(name, dataset, teacher, student_name, augmentation, directory):
    """`{row: seconds}` for one pair."""
    path = Path(directory) / f"{name}_teacher.keras"
    teacher.save(path)
    key = teacher_cache.cache_key(path, dataset, augmentation)
    cache_path = teacher_cache.default_path(path, dataset.name)
    began = time.perf_counter()
    teacher_cache.build(cache_path, key, teacher, dataset, augmentation, progress=None)
    build = time.perf_counter() - began
    logits = teacher_cache.load(cache_path, key)
    examples = int(dataset.train.cardinality())
    batch, classes = _BATCH_SIZE.value, dataset.num_classes
    shape = dataset.input_shape

    def trainer(kind):
        keras.utils.set_random_seed(0)
        student = keras_cskd.models.get(student_name, classes, shape)
        if kind == "student":
            student.compile(
                keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model = student
        else:
            model = keras_cskd.Distiller(teacher, student, "cskd")
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        if kind == "cached":
            train = teacher_cache.pipeline(
                dataset.train, logits, batch, augmentation, seed=0
            )
        else:
            train = data.pipeline(
                dataset.train, batch, True, 0, augmentation=augmentation
            )
        model.fit(train, epochs=1, verbose=0)  # warm-up: tracing
        return model, train

    kinds = ["student", "online", "cached"]
    trainers = {kind: trainer(kind) for kind in kinds}
    times = {kind: [] for kind in kinds}
    for _ in range(_ROUNDS.value):
        for kind in kinds:
            model, train = trainers[kind]
            began = time.perf_counter()
            model.fit(train, epochs=1, verbose=0)
            times[kind].append(time.perf_counter() - began)
    epoch = {kind: statistics.median(t) for kind, t in times.items()}
    return {
        "examples": examples,
        "variants": logits.shape[1],
        "build_s": build,
        "build_ms_per_image": 1e3 * build / (examples * logits.shape[1]),
        **{f"epoch_{kind}_s": seconds for kind, seconds in epoch.items()},
    }


def table(results, recipe):
    header = (
        "| pair | examples x variants | build (ms/variant image) | build (s) | "
        "epoch: student alone (s) | epoch: online KD (s) | epoch: cached (s) | "
        f"cached / online epoch | {recipe} epochs: cached+build / online |"
    )
    lines = [header, "|" + "---|" * 9]
    for name, r in results.items():
        total_cached = r["build_s"] + recipe * r["epoch_cached_s"]
        total_online = recipe * r["epoch_online_s"]
        lines.append(
            f"| {name} | {r['examples']} x {r['variants']} | "
            f"{r['build_ms_per_image']:.3f} | {r['build_s']:.1f} | "
            f"{r['epoch_student_s']:.3f} | {r['epoch_online_s']:.3f} | "
            f"{r['epoch_cached_s']:.3f} | "
            f"{r['epoch_cached_s'] / r['epoch_online_s']:.2f} | "
            f"{total_cached / total_online:.2f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    quick = _QUICK.value
    pairs = ["digits", "cifar"] if _PAIR.value == "both" else [_PAIR.value]
    images = 2 if quick else _CIFAR_IMAGES.value
    if quick:
        flags.FLAGS.rounds = 1
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in pairs:
            if name == "digits":
                pair = digits_pair(directory)
            else:
                pair = cifar_pair(directory, images)
            results[name] = measure(name, *pair, directory)
    print(
        f"Teacher-logit cache, batch {_BATCH_SIZE.value}, "
        f"{tf.config.list_logical_devices()[0].device_type}, median of "
        f"{flags.FLAGS.rounds} epochs per trainer"
    )
    print(table(results, _RECIPE.value))
    return 0


if __name__ == "__main__":
    app.run(main)
