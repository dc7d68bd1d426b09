"""Images per second of the ImageNet training input pipeline, against plain `tf.data`.

It writes `--num_images` JPEGs of ImageNet's sizes (500 pixels on the long
side, mostly 4:3; smooth colour, edges and noise; quality 90, 4:2:0) into a
temporary ImageNet-style folder, then times, interleaved (round-robin, the
order rotating, several rounds, each pipeline built afresh every round and
warmed up before its timed batches):

- the baseline, a plain `tf.data` pipeline written the usual way:
  `Dataset.list_files` -> `map(read, decode_jpeg, sample_distorted_bounding_box
  crop, tf.image.resize to 224, random_flip_left_right, normalise; AUTOTUNE)`
  -> `batch` -> `prefetch`;
- `keras_cskd.data.streaming.train_pipeline` on the folder streamed
  (`load("folder:...", streaming=True)`): torchvision's transforms exactly
  (accurate-DCT decoding, `RandomResizedCrop` with Pillow's integer
  resampling, flip, normalise), stateless and resumable;
- `keras_cskd.data.streaming.eval_pipeline` (resize 256, centre crop 224);
- decoding alone (`decode_jpeg`, accurate DCT), the floor under every row.

The files sit in the page cache after the first round, so reading costs
little: this measures the CPU work. Images/s is the batch size over the
median time per batch; images per CPU-second divides the images by the
process's CPU time over the timed batches, which other processes' load does
not inflate: it is the figure that says how many cores feed an accelerator.

    python benchmarks/imagenet_input.py                    # 512 images, batch 64
    python benchmarks/imagenet_input.py --repeats=7 --steps=6
    python benchmarks/imagenet_input.py --smoke            # smoke test, seconds
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_cskd import data  # noqa: E402
from keras_cskd.data import streaming, transforms  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "JPEGs to write.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_GPU_IMAGES_PER_SECOND = flags.DEFINE_float(
    "gpu_images_per_second",
    5600.0,
    "The accelerator's training speed to project to (default: ResNet-18 on "
    "one A100 with mixed precision, 2470 images/s for ResNet-50 in NVIDIA's "
    "DeepLearningExamples scaled by the FLOPs ratio 4.1 / 1.8; an assumption).",
)

CLASSES = 10
# (height, width) of the images, cycled: ImageNet's common shapes.
SHAPES = ((375, 500), (500, 375), (333, 500), (500, 500), (281, 500), (400, 500))
SMOKE = {"num_images": 24, "batch_size": 8, "shape": (120, 160), "image_size": 64}
CONFIGURATIONS = {
    "baseline": "plain tf.data, the usual way (decode, crop, resize, flip)",
    "train": "keras_cskd streaming.train_pipeline",
    "eval": "keras_cskd streaming.eval_pipeline",
    "decode": "decoding alone (accurate DCT)",
}


def main(argv):
    del argv
    values = timing.settings()
    num_images = timing.smoke_or(_NUM_IMAGES, SMOKE["num_images"])
    batch_size = timing.smoke_or(_BATCH_SIZE, SMOKE["batch_size"])
    image_size = SMOKE["image_size"] if values.smoke else transforms.IMAGE_SIZE
    shapes = (SMOKE["shape"],) if values.smoke else SHAPES
    steps = values.steps or (2 if values.smoke else 4)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        mean_bytes = write_jpegs(root, num_images, shapes)
        pipelines = make_pipelines(root, batch_size, image_size)
        results = measure(pipelines, batch_size, steps, values.warmup, values.repeats)
    gpu = _GPU_IMAGES_PER_SECOND.value
    print(report(results, batch_size, steps, values, num_images, mean_bytes, gpu))
    timing.write_json(
        values.json_path,
        {
            "settings": values,
            "batch_size": batch_size,
            "num_images": num_images,
            "mean_jpeg_bytes": mean_bytes,
            "results": results,
            "gpu_images_per_second": gpu,
        },
    )
    return 0


def synthetic_image(rng, height, width):
    """Smooth colour gradients, sharp-edged rectangles and pixel noise."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        fx, fy = rng.uniform(0.01, 0.08, 2)
        image[..., channel] = 128 + 90 * np.sin(fx * columns + fy * rows + channel)
    for _ in range(8):
        top, left = rng.integers(0, height), rng.integers(0, width)
        bottom, right = (
            top + rng.integers(8, height // 2),
            left + rng.integers(8, width // 2),
        )
        image[top:bottom, left:right] = rng.integers(0, 256, 3)
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_jpegs(root, num_images, shapes):
    """An ImageNet-style tree: `train/<class>/<i>.JPEG` and one `val` image a
    class. Returns the mean JPEG size in bytes."""
    rng = np.random.default_rng(0)
    sizes = []
    for split, count in (("train", num_images), ("val", CLASSES)):
        for index in range(count):
            folder = root / split / f"n{index % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            image = synthetic_image(rng, *shapes[index % len(shapes)])
            encoded = tf.io.encode_jpeg(image, quality=90).numpy()
            (folder / f"{index}.JPEG").write_bytes(encoded)
            if split == "train":
                sizes.append(len(encoded))
    return float(np.mean(sizes))


def make_pipelines(root, batch_size, image_size):
    """`{name: function making a fresh, endless batched dataset}`."""
    imagenet_folder = data.load(f"folder:{root}", streaming=True, image_size=image_size)
    train, test = imagenet_folder.train, imagenet_folder.test
    epochs = 200 * batch_size // train.num_examples + 2  # enough for any round
    return {
        "baseline": lambda: baseline(root, batch_size, image_size),
        "train": lambda: streaming.train_pipeline(
            train, batch_size, seed=0, epochs=epochs, image_size=image_size
        ),
        "eval": lambda: streaming.eval_pipeline(
            train, batch_size, image_size=image_size
        ).repeat(),
        "decode": lambda: decode_only(test, train, batch_size),
    }


def baseline(root, batch_size, image_size):
    """A training input pipeline as the `tf.data` guides write one."""
    class_names = sorted(path.name for path in (root / "train").iterdir())
    mean, std = (tf.constant(v) for v in transforms.NORMALIZATION)

    def load(path):
        label = tf.argmax(tf.strings.split(path, os.sep)[-2] == class_names)
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            area_range=(0.08, 1.0),
            aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
        image = tf.image.resize(image, (image_size, image_size))
        image = tf.image.random_flip_left_right(image)
        return (image / 255.0 - mean) / std, tf.cast(label, tf.int32)

    files = tf.data.Dataset.list_files(str(root / "train" / "*" / "*"), seed=0)
    examples = files.repeat().map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return examples.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def decode_only(test, train, batch_size):
    """Reading and decoding alone: each image's pixel count, batched."""
    del test
    examples = train.dataset().repeat()
    sizes = examples.map(
        lambda encoded, label: tf.size(transforms.decode(encoded)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return sizes.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def measure(pipelines, batch_size, steps, warmup, repeats):
    """Per configuration: images/s of every round and images per CPU-second."""
    seconds = {name: [] for name in pipelines}
    cpu_seconds = {name: 0.0 for name in pipelines}
    names = list(pipelines)
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            iterator = iter(pipelines[name]())
            for _ in range(max(warmup, 1)):
                next(iterator)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(steps):
                next(iterator)
            seconds[name].append((time.perf_counter() - wall) / steps)
            cpu_seconds[name] += time.process_time() - cpu
            del iterator
    results = {}
    for name, values in seconds.items():
        rates = [batch_size / s for s in values]
        q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else rates * 3
        results[name] = {
            "images_per_second": statistics.median(rates),
            "iqr": q3 - q1,
            "images_per_cpu_second": batch_size * steps * repeats / cpu_seconds[name],
            "rounds": rates,
        }
    return results


def report(results, batch_size, steps, values, num_images, mean_bytes, gpu):
    """A title, the table and the projection to one accelerator."""
    base = results["baseline"]["images_per_second"]
    rows = [
        [
            label,
            f"{results[name]['images_per_second']:.0f}",
            f"{results[name]['iqr']:.0f}",
            f"{results[name]['images_per_second'] / base:.2f}",
            f"{results[name]['images_per_cpu_second']:.0f}",
        ]
        for name, label in CONFIGURATIONS.items()
    ]
    header = ["pipeline", "median images/s", "IQR", "÷ baseline", "images/CPU-s"]
    title = (
        f"## ImageNet input, batch {batch_size}, {num_images} JPEGs "
        f"(mean {mean_bytes / 1000:.0f} kB); {timing.describe_device('/CPU:0')}; "
        f"{values.repeats} rounds x {steps} batches after {max(values.warmup, 1)} "
        "warm-up batches"
    )
    train = results["train"]["images_per_cpu_second"]
    baseline_rate = results["baseline"]["images_per_cpu_second"]
    projection = (
        f"Feeding {gpu:.0f} images/s takes {gpu / train:.1f} cores of this CPU with "
        f"streaming.train_pipeline ({train:.0f} images per CPU-second) and "
        f"{gpu / baseline_rate:.1f} with the baseline ({baseline_rate:.0f})."
    )
    return f"{title}\n\n{timing.markdown_table(header, rows)}\n\n{projection}"


if __name__ == "__main__":
    app.run(main)
