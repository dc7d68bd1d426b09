"""An exact cache of the teacher's logits on every augmented view of a split.

The standard augmentations are discrete: CIFAR's weak view is a black-padded
crop at an offset `(i, j)` in `[0, 2p]^2` and a flip (`(2p + 1)^2 * 2 = 162`
variants per image for `p = 4`), the digits' a crop with `p = 1` (9 variants).
`build` runs the teacher once on every variant of every example and writes a
memory-mapped `[num_examples, num_variants, num_classes]` array; `pipeline`
then augments each batch as the online pipeline does, from the same stateless
draws (`RandomPaddedCrop.draw`, `RandomHorizontalFlip.draw`), and gathers the
teacher's logits at `[example, variant]`: the student trains as it would with
the teacher online, without running it.

Files, next to the teacher (`default_path`): `<name>.npy` (the logits),
`<name>.npy.json` (the key, a SHA-256 of every chunk of examples and the
completion marker, written atomically last: a cache without it is never read)
and, while a build runs,
`<name>.npy.progress.json` (the chunks written so far, so a killed build
resumes); `<name>.npy.lock` makes builds of one cache take turns, so workers
sharing the directory build it once. The key records what the logits depend
on: the teacher file's SHA-256, the dataset, split, examples (a SHA-256 of
images and labels), normalisation, the augmentation's name
(`data.augmentation`, the layer's name) and variant space, and dtype;
`load_logits` refuses any other. The first `load_logits` of a cache checks every
chunk against its SHA-256
and records that it did (with the file's size, inode and change times), so
later runs read only what they train on; a cache whose bytes changed since is
checked again, and a corrupt one is refused.

    python -m keras_cskd.data.teacher_cache \\
        --teacher=saved_models/digits_teacher.keras --dataset=digits \\
        --augmentation=digits_shift

Example:

```python
logits = teacher_cache.ensure(teacher_path, teacher, digits, augmentation)
train = teacher_cache.pipeline(digits.train, logits, 64, augmentation)
distiller.fit(train, epochs=30)
```
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_cskd import cli, files
from keras_cskd.data import augment
from keras_cskd.data.batching import (
    IMAGES,
    TEACHER_LOGITS,
    WEAK_VIEW,
    epoch_batches,
    reshuffled_batches,
)

DTYPES = ("float32", "float16")
FORMAT_VERSION = 2  # 2: a SHA-256 per chunk


@dataclasses.dataclass(frozen=True)
class VariantSpace:
    """Every image a padded crop (and optional flip) can make of one image.

    Variant `v` of an image is the crop at offset `(i, j)`, flipped or not,
    with `v = (i * (2 * padding + 1) + j) * flips + flip` (`flips` is 2 with
    flipping, else 1).

    Attributes:
        padding: the crop's padding (offsets in `[0, 2 * padding]`).
        flip: whether a horizontal flip follows the crop.
        fill: the padding value, a float or one float per channel.

    Example:

    >>> space = VariantSpace(padding=4, flip=True)
    >>> space.size
    162
    >>> int(space.index([[4, 4]], [True])[0])  # the centred crop, flipped
    81
    """

    padding: int
    flip: bool
    fill: float | tuple = 0.0

    @property
    def size(self):
        return (2 * self.padding + 1) ** 2 * (2 if self.flip else 1)

    def index(self, offsets, flips=None):
        """The `[B]` int32 variant indices of `[B, 2]` offsets and `[B]` flips."""
        offsets = tf.cast(offsets, tf.int32)
        crop = offsets[:, 0] * (2 * self.padding + 1) + offsets[:, 1]
        if not self.flip:
            return crop
        return crop * 2 + tf.cast(flips, tf.int32)

    def decode(self, variants):
        """The `([B, 2] offsets, [B] flips)` of `[B]` variant indices."""
        variants = tf.cast(variants, tf.int32)
        flips = variants % 2 == 1 if self.flip else tf.zeros_like(variants, tf.bool)
        crop = variants // 2 if self.flip else variants
        side = 2 * self.padding + 1
        return tf.stack([crop // side, crop % side], axis=1), flips

    def apply(self, images, variants):
        """Image `b` of a `[B, H, W, C]` batch made into its variant `variants[b]`."""
        offsets, flips = self.decode(variants)
        images = augment.padded_crop(images, offsets, self.padding, self.fill)
        return augment.flip_left_right(images, flips) if self.flip else images

    def to_json(self):
        fill = list(self.fill) if isinstance(self.fill, tuple) else self.fill
        return {"padding": self.padding, "flip": self.flip, "fill": fill}


def variant_space(augmentation):
    """The `VariantSpace` of an augmentation built by `keras_cskd.data.augment`.

    Args:
        augmentation: a `RandomPaddedCrop` (the digits' view), or a
            `RandomSequence` of a `RandomPaddedCrop` and optionally a
            `RandomHorizontalFlip` (`cifar_augmentation`).

    Returns:
        A `VariantSpace`.

    Raises:
        ValueError: for any other augmentation (continuous ones, such as the
            strong view's RandAugment, have no finite set of variants).

    Example:

    >>> from keras_cskd.data.augment import cifar_augmentation
    >>> variant_space(cifar_augmentation()).size
    162
    """
    crop, flip = _parts(augmentation)
    return VariantSpace(crop.padding, flip is not None, crop.fill)


def draw_variants(augmentation, batch_size, seed):
    """The `[B]` variant indices `augmentation.augment(images, seed)` makes.

    The very draws of its layers (`RandomPaddedCrop.draw`,
    `RandomHorizontalFlip.draw`, layer `i` of a sequence seeded with
    `fold_in(seed, i)`), so `variant_space(augmentation).apply(images,
    draw_variants(augmentation, B, seed))` is `augmentation.augment(images,
    seed)`, bit for bit.

    Example:

    >>> from keras_cskd.data.augment import digits_augmentation
    >>> draw_variants(digits_augmentation(), 4, [0, 1]).shape
    TensorShape([4])
    """
    crop, flip = _parts(augmentation)
    sequence = isinstance(augmentation, augment.RandomSequence)
    offsets = crop.draw(batch_size, augment.fold_in(seed, 0) if sequence else seed)
    flips = flip.draw(batch_size, augment.fold_in(seed, 1)) if flip else None
    return variant_space(augmentation).index(offsets, flips)


def _parts(augmentation):
    """`(crop, flip or None)` of a discrete augmentation; `ValueError` otherwise."""
    layers = [augmentation]
    if isinstance(augmentation, augment.RandomSequence):
        layers = list(augmentation.layers)
    kinds = [type(layer) for layer in layers]
    if kinds == [augment.RandomPaddedCrop]:
        return layers[0], None
    if kinds == [augment.RandomPaddedCrop, augment.RandomHorizontalFlip]:
        return layers[0], layers[1]
    raise ValueError(
        f"The teacher-logit cache needs a discrete augmentation (a "
        "RandomPaddedCrop, optionally followed by a RandomHorizontalFlip, as "
        "data.augmentation 'digits_shift' and 'cifar_crop_flip'), got "
        f"{getattr(augmentation, 'name', augmentation)!r} "
        f"({', '.join(k.__name__ for k in kinds)}): its images have no finite "
        "set of variants to precompute. Turn caching off for it."
    )


def default_path(teacher_path, dataset_name, dtype="float32", split="train"):
    """Where the cache of `teacher_path` on `dataset_name` lives: beside it.

    Example:

    >>> default_path("saved_models/digits_teacher.keras", "digits")
    PosixPath('saved_models/digits_teacher.digits.train.float32.logits.npy')
    """
    teacher_path = Path(teacher_path)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset_name)
    stem = f"{teacher_path.stem}.{name}.{split}.{dtype}.logits.npy"
    return teacher_path.with_name(stem)


def cache_key(teacher_path, dataset, augmentation, dtype="float32", split="train"):
    """What the cached logits depend on, as a JSON-able dict.

    Args:
        teacher_path: the teacher's file (hashed with SHA-256).
        dataset: the `keras_cskd.data.Dataset`.
        augmentation: the training augmentation (`variant_space`), named
            as `data.augmentation` names it (`augment.get_augmentation`).
        dtype: `"float32"` (exact) or `"float16"` (half the disk).
        split: the split's attribute on `dataset`.

    Returns:
        `{"teacher_sha256", "dataset", "split", "num_examples",
        "examples_sha256", "num_classes", "normalization", "augmentation",
        "variants", "dtype", "version"}`. A cache made before the key held the
        augmentation's name is stale: it is rebuilt once.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    examples = getattr(dataset, split)
    normalization = dataset.normalization
    return {
        "teacher_sha256": files.sha256(teacher_path),
        "dataset": dataset.name,
        "split": split,
        "num_examples": int(examples.cardinality()),
        "examples_sha256": _sha256_examples(examples),
        "num_classes": int(dataset.num_classes),
        "normalization": None
        if normalization is None
        else [np.ravel(s).astype(float).tolist() for s in normalization],
        "augmentation": augmentation.name,
        "variants": variant_space(augmentation).to_json(),
        "dtype": dtype,
        "version": FORMAT_VERSION,
    }


def build(
    path,
    key,
    teacher,
    dataset,
    augmentation,
    split="train",
    batch_size=256,
    chunk_size=256,
    progress=print,
):
    """Runs `teacher` on every variant of every example and writes the cache.

    The examples are processed in chunks of `chunk_size`; after each chunk
    the file is flushed and the chunk's SHA-256 recorded, so a build that is
    killed continues where it stopped when called again with the same key.
    The cache counts as complete only once its metadata (`<path>.json`, with
    every chunk's SHA-256) is written, atomically, at the end. A complete
    cache with the same key is checked (`load_logits`) and left as it is; one with
    another key, or truncated, is rebuilt from scratch. Builds of one path
    take turns (a lock on `<path>.lock`): workers that share the directory
    wait for the first, then find its cache complete.

    Args:
        path: the `.npy` file to write (`default_path`).
        key: `cache_key(...)` for these arguments.
        teacher: the teacher `keras.Model`.
        dataset: the `keras_cskd.data.Dataset`.
        augmentation: the training augmentation (`variant_space`).
        split: the split's attribute on `dataset`.
        batch_size: the teacher's batch size.
        chunk_size: examples per chunk (a progress line, a resume point and
            a checksum).
        progress: called with one line per chunk (`print`), or `None`.

    Returns:
        `path`, as a `Path`.

    Raises:
        ValueError: for a `batch_size` or `chunk_size` below 1 (before any
            file is written), or a complete cache with this key that is
            corrupt (`load_logits`).

    Example:

    ```python
    key = cache_key(teacher_path, digits, augmentation)
    build(default_path(teacher_path, "digits"), key, teacher, digits, augmentation)
    ```
    """
    _check_positive(batch_size=batch_size, chunk_size=chunk_size)
    path = Path(path)
    with files.exclusive(path.with_name(f"{path.name}.lock")):
        return _build(
            path,
            key,
            teacher,
            dataset,
            augmentation,
            split,
            batch_size,
            chunk_size,
            progress or (lambda line: None),
        )


def _check_positive(**sizes):
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _build(
    path, key, teacher, dataset, augmentation, split, batch_size, chunk_size, report
):
    space = variant_space(augmentation)
    examples = getattr(dataset, split)
    shape = (key["num_examples"], space.size, key["num_classes"])
    metadata = _metadata(path)
    if metadata.get("key") == key and _whole(path, metadata):
        _verify(path, metadata)  # corrupt: refused, never silently replaced
        return path
    done = _start(path, key, shape, chunk_size, report)
    logits = np.load(path, mmap_mode="r+")
    forward = _variant_logits(teacher, space, examples.element_spec[0].shape)
    chunks = math.ceil(shape[0] / chunk_size)
    batches = examples.map(lambda x, y: x).batch(chunk_size)
    for number, images in enumerate(batches):
        if number in done:
            continue
        start, began = number * chunk_size, time.perf_counter()
        chunk = _chunk_logits(forward, images, space, batch_size).astype(key["dtype"])
        logits[start : start + len(chunk)] = chunk
        logits.flush()
        done[number] = _sha256_array(chunk)
        _write_progress(path, key, chunk_size, done)
        report(
            f"teacher cache {path.name}: chunk {number + 1}/{chunks} "
            f"({len(chunk) * space.size} images, "
            f"{time.perf_counter() - began:.1f} s)"
        )
    del logits
    _write_json(
        _metadata_path(path),
        {
            "key": key,
            "shape": list(shape),
            "bytes": os.path.getsize(path),
            "chunk_size": chunk_size,
            "chunk_sha256": [done[number] for number in range(chunks)],
        },
    )
    _progress_path(path).unlink(missing_ok=True)
    report(f"teacher cache {path} complete: {shape[0]} x {shape[1]} x {shape[2]}")
    return path


def _start(path, key, shape, chunk_size, report):
    """`{chunk: sha256}` already written for `key` (resuming), or a fresh file."""
    progress = _read_json(_progress_path(path))
    resumable = progress.get("key") == key and progress.get("chunk_size") == chunk_size
    if resumable and _intact(path, shape, key["dtype"]):
        report(f"teacher cache {path.name}: resuming ({len(progress['chunks'])} done)")
        return {int(number): sha for number, sha in progress["chunks"].items()}
    old = _metadata(path).get("key")
    if old is not None:
        why = _changes(old, key) or "the file is truncated"
        report(f"teacher cache {path.name}: rebuilding, {why}")
    _metadata_path(path).unlink(missing_ok=True)  # never complete while rewritten
    _progress_path(path).unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(path, mode="w+", dtype=key["dtype"], shape=shape)
    _write_progress(path, key, chunk_size, {})
    return {}


def _write_progress(path, key, chunk_size, done):
    chunks = {str(number): sha for number, sha in sorted(done.items())}
    _write_json(
        _progress_path(path), {"key": key, "chunk_size": chunk_size, "chunks": chunks}
    )


def _variant_logits(teacher, space, image_shape):
    """A `tf.function` of `(images, flat)`: the teacher's logits on variant
    `flat % V` of image `flat // V`, made and run in one graph (one trace)."""
    signature = [
        tf.TensorSpec([None, *image_shape], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ]

    @tf.function(input_signature=signature)
    def forward(images, flat):
        batch = tf.gather(images, flat // space.size)
        return teacher(space.apply(batch, flat % space.size), training=False)

    return forward


def _chunk_logits(forward, images, space, batch_size):
    """`[n, variants, classes]` float32 logits of a chunk of `n` images."""
    count = int(images.shape[0]) * space.size
    outputs = []
    for start in range(0, count, batch_size):
        flat = tf.range(start, min(start + batch_size, count))
        outputs.append(forward(images, flat).numpy())
    return np.concatenate(outputs).reshape(int(images.shape[0]), space.size, -1)


def load_logits(path, key):
    """The cached logits, memory-mapped read-only, after checking the cache.

    The first `load_logits` of a complete cache checks every chunk against the
    SHA-256 its build recorded, and records in the metadata that it did,
    with the file's size, inode and modification and change times; later
    loads of the unchanged file skip the check (they read only what they
    train on), and a file changed since is checked again.

    Args:
        path: the cache's `.npy` file.
        key: `cache_key(...)` of the run that wants it.

    Returns:
        A read-only `[num_examples, num_variants, num_classes]` `np.memmap`.

    Raises:
        ValueError: for a missing, incomplete (an interrupted build),
            truncated, stale (its key differs: the message names what
            changed) or corrupt cache (a chunk's bytes do not match their
            SHA-256), each in one line with the fix.

    Example:

    ```python
    logits = load_logits(default_path(teacher_path, "digits"), key)
    ```
    """
    path = Path(path)
    metadata = _metadata(path)
    fix = f"Rebuild it with: {rebuild_command(path, key)}"
    if not metadata:
        progress = _read_json(_progress_path(path))
        state = (
            f"incomplete (an interrupted build wrote {len(progress['chunks'])} chunks)"
            if progress or path.exists()
            else "missing"
        )
        raise ValueError(f"The teacher-logit cache {path} is {state}. {fix}")
    if metadata["key"] != key:
        raise ValueError(
            f"The teacher-logit cache {path} is stale: "
            f"{_changes(metadata['key'], key)}. {fix}"
        )
    if not _whole(path, metadata):
        raise ValueError(f"The teacher-logit cache {path} is truncated. {fix}")
    _verify(path, metadata)
    return np.load(path, mmap_mode="r")


def _whole(path, metadata):
    """Whether `path` has the size its complete build wrote."""
    return path.is_file() and os.path.getsize(path) == metadata.get("bytes")


def _verify(path, metadata):
    """Checks each chunk of a complete cache against its SHA-256, unless the
    file is unchanged since the last check; records a passed check."""
    stamp = _stamp(path)
    if metadata.get("verified") == stamp:
        return
    try:
        logits = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        raise _corrupt(path, f"its header is unreadable ({error})") from None
    if list(logits.shape) != metadata["shape"]:
        raise _corrupt(path, f"it holds {logits.shape} logits")
    size, count = metadata["chunk_size"], len(metadata["chunk_sha256"])
    for number, expected in enumerate(metadata["chunk_sha256"]):
        rows = logits[number * size : (number + 1) * size]
        if _sha256_array(rows) != expected:
            last = number * size + len(rows) - 1
            raise _corrupt(
                path,
                f"examples {number * size}-{last} (chunk {number + 1} of {count}) "
                "do not match their SHA-256",
            )
    del logits, rows
    # A read-only directory cannot record it: the check then runs each time.
    with contextlib.suppress(OSError):
        _write_json(_metadata_path(path), {**metadata, "verified": stamp})


def _stamp(path):
    """What changes whenever the file's bytes change (as far as `stat` tells)."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]


def _corrupt(path, why):
    return ValueError(
        f"The teacher-logit cache {path} is corrupt: {why}. Delete it (rm "
        f"{path} {_metadata_path(path)}) and the next run, or python -m "
        "keras_cskd.data.teacher_cache, rebuilds it."
    )


def _sha256_array(array):
    """The hex SHA-256 of a C-ordered array's bytes (a memmap's, as on disk)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def ensure(teacher_path, teacher, dataset, augmentation, dtype="float32", **options):
    """The cache of `teacher` for this training run: built (or resumed, or
    rebuilt when stale) if needed, then loaded (`load_logits`); what `train.py` calls.

    Args:
        teacher_path: the teacher's file.
        teacher: the loaded teacher.
        dataset: the `keras_cskd.data.Dataset`.
        augmentation: the training augmentation.
        dtype: `"float32"` or `"float16"`.
        **options: `split`, `batch_size`, `chunk_size`, `progress` for `build`.

    Returns:
        The read-only memory-mapped logits.
    """
    split = options.get("split", "train")
    key = cache_key(teacher_path, dataset, augmentation, dtype, split)
    path = default_path(teacher_path, dataset.name, dtype, split)
    build(path, key, teacher, dataset, augmentation, **options)
    return load_logits(path, key)


def pipeline(
    dataset,
    logits,
    batch_size,
    augmentation,
    seed=0,
    epochs=None,
    first_epoch=0,
    skip_steps=0,
    drop_remainder=False,
    strong_augmentation=None,
    mixup_alpha=0.0,
):
    """`data.pipeline(dataset, ..., training=True, augmentation=...)` with the
    teacher's logits of every augmented image read from the cache.

    The same shuffle, batches and augmentations as the online pipeline (the
    examples carry their index through the shuffle; each batch's variants
    are drawn from its weak-view seed with `draw_variants`), and batches of
    `({"images", "teacher_logits"}, labels)`, which make the `Distiller`
    skip its teacher.

    Args:
        dataset: the unbatched `(image, label)` split the cache was built on.
        logits: the cache (`load_logits` or `ensure`).
        batch_size, seed, epochs, first_epoch, skip_steps, drop_remainder: as
            for `data.pipeline`.
        augmentation: the discrete augmentation the cache was built for.
        strong_augmentation, mixup_alpha: refused (the strong view is
            continuous; mixup mixes images into ones no cache holds).

    Returns:
        A batched, prefetched `tf.data.Dataset`.

    Example:

    ```python
    train = pipeline(digits.train, logits, 64, digits_augmentation(), epochs=30)
    ```
    """
    _refuse(strong_augmentation, mixup_alpha)
    space = variant_space(augmentation)
    expected = (int(dataset.cardinality()), space.size)
    if tuple(logits.shape[:2]) != expected:
        raise ValueError(
            f"The teacher-logit cache holds {logits.shape[:2]} (examples, "
            f"variants), but this pipeline needs {expected}."
        )
    indexed = dataset.enumerate().map(lambda i, example: ((example[0], i), example[1]))
    if epochs is None:
        batches = reshuffled_batches(indexed, batch_size, seed, drop_remainder)
    else:
        batches = epoch_batches(
            indexed, batch_size, seed, drop_remainder, range(first_epoch, epochs)
        ).skip(skip_steps)
    batches = batches.map(
        _cached_view(augmentation, logits), num_parallel_calls=tf.data.AUTOTUNE
    )
    return batches.prefetch(tf.data.AUTOTUNE)


def _cached_view(augmentation, logits):
    """The map from `(batch seed, ((images, indices), labels))` to a batch."""

    def gather(indices, variants):
        return np.asarray(logits[indices, variants], np.float32)

    def view(key, batch):
        (images, indices), labels = batch
        seed = augment.fold_in(key, WEAK_VIEW)
        variants = draw_variants(augmentation, tf.shape(images)[0], seed)
        teacher_logits = tf.numpy_function(gather, [indices, variants], tf.float32)
        teacher_logits.set_shape([None, logits.shape[-1]])
        images = augmentation.augment(images, seed)
        return {IMAGES: images, TEACHER_LOGITS: teacher_logits}, labels

    return view


def _refuse(strong_augmentation, mixup_alpha):
    if strong_augmentation is not None:
        raise ValueError(
            "The teacher-logit cache cannot serve two views: the strong view "
            "(RandAugment, cutout) is continuous, with no finite set of variants "
            "to precompute. Turn caching or two views off."
        )
    if mixup_alpha > 0:
        raise ValueError(
            "The teacher-logit cache cannot serve mixup: mixed images are not "
            "among the cached variants. Turn caching or mixup off."
        )


def rebuild_command(path, key):
    """The command line that (re)builds the cache at `path` for `key`."""
    return (
        f"python -m keras_cskd.data.teacher_cache --teacher=<teacher.keras> "
        f"--dataset={key['dataset']} --augmentation={key.get('augmentation')} "
        f"--split={key['split']} --dtype={key['dtype']} --output={path} "
        "(train.py also rebuilds it on its next run)"
    )


_FIELDS = {
    "teacher_sha256": "the teacher changed",
    "examples_sha256": "the examples changed",
    "normalization": "the normalisation changed",
    "augmentation": "the augmentation (data.augmentation) changed",
    "variants": "the augmentation's variants changed",
}


def _changes(old, new):
    """`"the teacher changed (sha256 ab12... -> cd34...); ..."`."""
    changes = []
    for field in sorted(old.keys() | new.keys()):
        before, after = old.get(field), new.get(field)
        if before != after:
            if isinstance(before, str) and len(before) == 64:  # a SHA-256
                before, after = f"sha256 {before[:12]}", f"{str(after)[:12]}"
            what = _FIELDS.get(field, f"{field} changed")
            changes.append(f"{what} ({before} -> {after})")
    return "; ".join(changes)


def _metadata_path(path):
    return Path(f"{path}.json")


def _progress_path(path):
    return Path(f"{path}.progress.json")


def _metadata(path):
    return _read_json(_metadata_path(path))


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json(path, payload):
    files.write_text(path, json.dumps(payload, indent=1) + "\n")


def _intact(path, shape, dtype):
    """Whether `path` is a whole `.npy` array of `shape` and `dtype`."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    whole = os.path.getsize(path) == array.offset + array.nbytes
    return whole and array.shape == tuple(shape) and array.dtype == np.dtype(dtype)


def _sha256_examples(examples):
    digest = hashlib.sha256()
    for images, labels in examples.batch(4096).as_numpy_iterator():
        digest.update(np.ascontiguousarray(images, np.float32).tobytes())
        digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return digest.hexdigest()


def main(argv=None):
    """`python -m keras_cskd.data.teacher_cache --teacher=... --dataset=...`.

    Returns the exit code: 0, or 1 after one line on stderr (`keras_cskd.cli`)
    for a bad argument (checked before anything is written), a teacher or
    dataset that cannot be loaded, or a corrupt cache.

    Example:

    ```python
    main(["--teacher=saved_models/digits_teacher.keras", "--dataset=digits"])
    # returns 0, the exit code
    ```
    """
    args = _parser().parse_args(argv)
    try:
        path = _build_from_args(args)
    except (ValueError, OSError) as error:
        return cli.report(error)
    print(f"Teacher-logit cache: {path}")
    return 0


def _parser():
    parser = cli.ArgumentParser(
        prog="python -m keras_cskd.data.teacher_cache",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--teacher", required=True, help="the teacher .keras file")
    parser.add_argument("--dataset", default="digits", help="a data.load name")
    parser.add_argument(
        "--augmentation",
        default="digits_shift",
        choices=["digits_shift", "cifar_crop_flip"],  # the discrete ones
        help="the run's data.augmentation (the cached variants)",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch_size", type=_positive_int, default=256)
    parser.add_argument("--chunk_size", type=_positive_int, default=256)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--validation_fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--output", default=None, help="default: beside the teacher")
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _build_from_args(args):
    from keras_cskd import data, models  # heavy; not at import

    dataset = data.load(
        args.dataset,
        data_dir=args.data_dir,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    teacher = models.load_teacher(args.teacher, dataset)
    augmentation = augment.get_augmentation(args.augmentation, dataset)
    key = cache_key(args.teacher, dataset, augmentation, args.dtype, args.split)
    path = args.output or default_path(
        args.teacher, dataset.name, args.dtype, args.split
    )
    return build(
        path,
        key,
        teacher,
        dataset,
        augmentation,
        args.split,
        args.batch_size,
        args.chunk_size,
    )


if __name__ == "__main__":
    sys.exit(main())
