"""What the exact teacher-logit cache costs and saves: its cost model, measured.

A recipe of E epochs trains the student on one augmented view per image per
epoch. Online, every step runs the teacher (T, its forward pass per image)
and the student (S, its training step per image). The cache runs the teacher
once on each of an image's V variants (V = 162 for CIFAR's crop and flip)
and then trains the student alone; k runs (seeds, methods, students) that
name the same teacher and data share one cache. So, per image and epoch,

    cached / online = (V / E * T / k + S) / (T + S)

if the build costs what the teacher's inference costs and a cached step what
the student's step costs. This script measures, in one process, interleaved
(round-robin, the order rotating, medians of the rounds) after a warm-up:

- T: the teacher's inference on a batch (`timing.make_step`);
- S: the student alone, one training step (cross-entropy);
- the online step: `Distiller` (CSKD), the teacher running;
- the cached step: the same `Distiller` on batches carrying the teacher's
  logits (what `teacher_cache.pipeline` feeds it);
- the build: `teacher_cache.build` of a fresh cache of `--chunks` chunks of
  `--chunk_images` images at the same batch size, timed per chunk after the
  first (which traces the teacher), divided by the chunk's variant images
  (162 or 9 per image): the cost of one variant image.

It prints those per image, the implementation's ratios to its bound (build /
T, cached step / S, online step / (T + S)), and cached / online for k runs
over `--recipe_epochs` epochs, measured (the build's and the cached step's
own costs) and projected (T and S). It also prints the cache's disk size for
digits, CIFAR-10 and CIFAR-100 (examples x variants x classes x bytes),
checked against digits caches it builds.

`cifar` is resnet32x4 -> resnet8x4 on random 32x32x3 images (untrained
weights: time does not depend on their values); `digits` is digits_cnn ->
digits_mlp on the real digits.

    python benchmarks/teacher_cache.py                    # the CIFAR pair
    python benchmarks/teacher_cache.py --pair=digits --steps=20
    python benchmarks/teacher_cache.py --smoke            # smoke test: seconds
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
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_cskd import data  # noqa: E402
from keras_cskd.data import augment, teacher_cache  # noqa: E402

_PAIR = flags.DEFINE_enum("pair", "cifar", ["digits", "cifar"], "The pair.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size of every step.")
_CHUNK_IMAGES = flags.DEFINE_integer(
    "chunk_images",
    None,
    "Images per chunk of each round's build (default: 2 for cifar, 256 for "
    "digits, the build's own default).",
    lower_bound=1,
)
_CHUNKS = flags.DEFINE_integer(
    "chunks", 3, "Chunks each round's build writes (the first is not timed).", 2
)
_RECIPE = flags.DEFINE_integer("recipe_epochs", 240, "E of the projection.")
_RUNS = flags.DEFINE_list("runs", ["1", "3", "5"], "k: runs sharing one cache.")

CIFAR_NORMALIZATION = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# Training examples and classes of the datasets whose cache size is given.
DATASETS = {"digits": (1257, 9, 10), "CIFAR-10": (50000, 162, 10)}
DATASETS["CIFAR-100"] = (50000, 162, 100)
STEPS = {"teacher": "T: teacher inference", "student": "S: student step, CE"}
STEPS.update({"cskd": "online step (Distiller, CSKD)"})
STEPS.update({"cskd_cached": "cached step (Distiller, CSKD, cached logits)"})


def main(argv):
    del argv
    values = timing.settings()
    pair_name = timing.smoke_or(_PAIR, "digits")
    pair = timing.PAIRS[pair_name]
    with tempfile.TemporaryDirectory() as directory:
        per_image = measure(pair_name, values, Path(directory))
        sizes = measured_digits_sizes(Path(directory))
    print(
        f"Teacher-logit cache, {pair}, batch {_BATCH_SIZE.value}, "
        f"{timing.describe_device('/CPU:0')}; medians of {values.repeats} "
        f"interleaved rounds ({values.steps_for(pair)} steps and one "
        f"{_CHUNKS.value}-chunk build each)"
    )
    print(cost_table(per_image))
    print()
    print(ratio_table(per_image, pair_name))
    print()
    print(size_table(sizes))
    return 0


def measure(pair_name, values, directory):
    """`{name: median ms per image}` of the steps and the build's variants."""
    pair, batch_size = timing.PAIRS[pair_name], _BATCH_SIZE.value
    batch = pair.random_batch(batch_size)
    steps = {}
    for configuration in STEPS:
        model = timing.build(configuration, pair)
        model_batch = timing.batch_for(configuration, model, batch)
        steps[configuration] = timing.make_step(model, model_batch)
    build = build_timer(pair_name, pair, directory)
    timing.warm_up(steps, values.warmup)
    seconds = {name: [] for name in [*steps, "build"]}
    for round_index in range(values.repeats):
        timed = timing.timed_round(steps, values.steps_for(pair), round_index)
        for name, times in timed.items():
            seconds[name].append(statistics.median(times) / batch_size)
        seconds["build"].append(build(round_index))
    return {name: 1e3 * statistics.median(s) for name, s in seconds.items()}


def build_timer(pair_name, pair, directory):
    """A function of the round that builds a fresh cache and returns the
    median seconds per variant image of its chunks after the first."""
    keras.utils.set_random_seed(0)
    teacher = pair.model("teacher")
    teacher_path = directory / "teacher.keras"
    teacher.save(teacher_path)
    chunk = timing.smoke_or(_CHUNK_IMAGES, 32)
    chunk = chunk or (256 if pair_name == "digits" else 2)
    chunks = timing.smoke_or(_CHUNKS, 2)
    dataset, augmentation = build_data(pair_name, pair, chunk * chunks)
    key = teacher_cache.cache_key(teacher_path, dataset, augmentation)
    variants = chunk * teacher_cache.variant_space(augmentation).size

    def build(round_index):
        ends = []
        teacher_cache.build(
            directory / f"round{round_index}.npy",
            key,
            teacher,
            dataset,
            augmentation,
            batch_size=_BATCH_SIZE.value,
            chunk_size=chunk,
            progress=lambda line: ends.append(time.perf_counter()),
        )
        chunks = np.diff(ends[:-1])  # the last line reports completion
        return float(np.median(chunks)) / variants

    return build


def build_data(pair_name, pair, images):
    """`(Dataset, augmentation)` of `images` training images for the pair."""
    if pair_name == "digits":
        digits = data.load("digits")
        train = digits.train.take(images)
        dataset = data.Dataset("digits", train, None, digits.test, 10, (8, 8, 1))
        return dataset, augment.digits_augmentation()
    x, y = pair.random_batch(images, seed=1)
    split = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = data.Dataset(
        "random-cifar", split, None, split, 100, (32, 32, 3), CIFAR_NORMALIZATION
    )
    return dataset, augment.cifar_augmentation(normalization=CIFAR_NORMALIZATION)


def cost_table(ms):
    """The per-image costs and how far each sits from its bound."""
    teacher, student = ms["teacher"], ms["student"]
    rows = [[label, f"{ms[name]:.3f}", "-"] for name, label in STEPS.items()]
    rows[2][2] = f"{ms['cskd'] / (teacher + student):.2f} x (T + S)"
    rows[3][2] = f"{ms['cskd_cached'] / student:.2f} x S"
    build = ["B: build, per variant image", f"{ms['build']:.3f}"]
    rows.append(build + [f"{ms['build'] / teacher:.2f} x T"])
    return timing.markdown_table(["cost", "ms per image", "against its bound"], rows)


def ratio_table(ms, pair_name):
    """cached / online over the recipe for k runs sharing one cache."""
    epochs = _RECIPE.value
    variants = DATASETS["digits" if pair_name == "digits" else "CIFAR-100"][1]
    teacher, student = ms["teacher"], ms["student"]
    rows = []
    for runs in map(int, _RUNS.value):
        share = variants / epochs / runs
        measured = (share * ms["build"] + ms["cskd_cached"]) / ms["cskd"]
        projected = (share * teacher + student) / (teacher + student)
        rows.append([str(runs), f"{measured:.3f}", f"{projected:.3f}"])
    header = [
        f"k runs, {epochs} epochs, V = {variants}",
        "measured: (V/E x B/k + cached step) / online step",
        "projected: (V/E x T/k + S) / (T + S)",
    ]
    return timing.markdown_table(header, rows)


def measured_digits_sizes(directory):
    """`{dtype: bytes}` of the full digits cache, built (shipped teacher)."""
    teacher_path = Path(__file__).resolve().parents[1] / "saved_models"
    teacher_path = teacher_path / "digits_teacher.keras"
    teacher = keras.saving.load_model(teacher_path)
    digits, augmentation = data.load("digits"), augment.digits_augmentation()
    sizes = {}
    for dtype in teacher_cache.DTYPES:
        key = teacher_cache.cache_key(teacher_path, digits, augmentation, dtype)
        path = directory / f"digits.{dtype}.npy"
        teacher_cache.build(path, key, teacher, digits, augmentation, progress=None)
        sizes[dtype] = path.stat().st_size
    return sizes


def size_table(measured):
    """Disk size: examples x variants x classes x bytes (+ the .npy header)."""
    rows = []
    for name, (examples, variants, classes) in DATASETS.items():
        cells = [name, f"{examples} x {variants} x {classes}"]
        for dtype in teacher_cache.DTYPES:
            size = examples * variants * classes * np.dtype(dtype).itemsize
            cells.append(f"{size / 2**20:,.1f} MiB")
        rows.append(cells)
    header = ["dataset", "examples x variants x classes"]
    header += [f"{dtype} on disk" for dtype in teacher_cache.DTYPES]
    check = ", ".join(
        f"{dtype} {size} bytes = {size - 1257 * 9 * 10 * np.dtype(dtype).itemsize}"
        " (header) + formula"
        for dtype, size in measured.items()
    )
    return timing.markdown_table(header, rows) + f"\n\nBuilt digits caches: {check}."


if __name__ == "__main__":
    app.run(main)
