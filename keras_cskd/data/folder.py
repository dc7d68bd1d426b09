"""Image folders (`folder:<path>`): `<path>/<split>/<class>/<image>` files.

Splits are `train` and `test`, optionally `validation`. Class names, sorted
alphabetically, become label ids `0..num_classes-1`, the same in every split.
Every image is decoded once, eagerly, when the folder is loaded, so a corrupt
file is reported by name rather than failing a `tf.data` pipeline mid-training.

Large trees (ImageNet's `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`) are
*streamed* instead (`streaming=True`): the files are listed, not decoded, and
the splits are `FileRecords` (this folder's `StreamedSource`), read as needed
by the streamed pipelines (`streaming.train_pipeline`,
`streaming.eval_pipeline`). A streamed folder may name its test split `val`,
as ImageNet's does.
"""

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_cskd.data import sampling, transforms
from keras_cskd.data.dataset import Dataset, size_pair
from keras_cskd.data.registry import register
from keras_cskd.data.stateless import fold_in
from keras_cskd.data.streamed_source import StreamedSource

SPLITS = ("train", "validation", "test")
LAYOUT = (
    "<path>/<split>/<class>/<image>, splits 'train', 'test' and optionally 'validation'"
)
# The key of the streamed epoch orders (`batching.batch_seed` derives from
# `[seed, 0]`).
_ORDER_STREAM = 1


@register("folder:<path>")
def load(path, validation_fraction=0.0, seed=0, image_size=None, streaming=False):
    """Loads an image-classification folder.

    Images are decoded with `tf.io.decode_image` (PNG, JPEG, BMP, GIF; the
    first frame of an animation), resized to `image_size` when given and
    scaled to float32 in [0, 1]. When images mix grayscale, RGB and RGBA, all
    are converted to RGB. Hidden files and folders (`.name`) are ignored.

    Args:
        path: the folder holding the split folders.
        validation_fraction: when there is no `validation` folder, move this
            fraction of each training class (chosen with `seed`, so the same
            files each time) into a validation split; `0` leaves
            `validation=None`.
        seed: the seed of the validation carve.
        image_size: `(height, width)` or an int to resize every image to;
            without it all images must share one size. Streamed: the crop
            size of the ImageNet transforms (default 224).
        streaming: list the files without decoding them: the splits are
            `FileRecords`, the `input_shape` the crop size and the
            `normalization` `transforms.NORMALIZATION`, what the ImageNet
            transforms make of the files; `test` may be named `val`.

    Returns:
        A `Dataset` named `folder:<path>` of unbatched `(image, label)` splits
        (float32 images, int32 labels), or of `FileRecords` when streamed.

    Raises:
        FileNotFoundError: when `path` is not a directory.
        ValueError: for a missing `train` or `test` split, a split without
            images or with classes other than train's, stray files beside the
            class folders, images that cannot be decoded (listed by file
            name), images of different sizes without `image_size`, or both a
            `validation` folder and a `validation_fraction`.

    Example:

    ```python
    flowers = load("/data/flowers", validation_fraction=0.1, image_size=64)
    flowers.input_shape
    # (64, 64, 3)
    imagenet = load("/data/imagenet", validation_fraction=0.01, streaming=True)
    imagenet.train
    # FileRecords('folder:/data/imagenet/train', 1268355 examples)
    ```
    """
    root = Path(path).expanduser()
    if streaming:
        return _load_streaming(root, path, validation_fraction, seed, image_size)
    has_validation = _check_layout(root, validation_fraction)
    files, class_names = _list_splits(root, has_validation)
    paths, labels = _paths_and_labels(files, class_names)
    images = _decode_all(paths, root, image_size)
    if validation_fraction > 0:
        _carve_validation(images, labels, validation_fraction, seed, root)

    def split_dataset(split):
        if split not in images:
            return None
        return tf.data.Dataset.from_tensor_slices((images[split], labels[split]))

    return Dataset(
        f"folder:{path}",
        split_dataset("train"),
        split_dataset("validation"),
        split_dataset("test"),
        num_classes=len(class_names),
        input_shape=tuple(int(side) for side in images["train"].shape[1:]),
    )


def _load_streaming(root, path, validation_fraction, seed, image_size):
    """The streamed folder: its files and labels as `FileRecords`."""
    test = "val" if _is_test_named_val(root) else "test"
    has_validation = _check_layout(root, validation_fraction, test)
    files, class_names = _list_splits(root, has_validation, test)
    paths, labels = _paths_and_labels(files, class_names)
    if validation_fraction > 0:
        _carve_validation(paths, labels, validation_fraction, seed, root)
    folders = {"train": "train", "validation": "validation", "test": test}

    def split_records(split):
        if split not in paths:
            return None
        where = f"folder:{root / folders[split]}"
        if split == "validation" and not has_validation:
            where = f"folder:{root / 'train'} (validation carve)"
        return FileRecords(paths[split], labels[split], name=where)

    size = size_pair(image_size or transforms.IMAGE_SIZE)
    return Dataset(
        f"folder:{path}",
        split_records("train"),
        split_records("validation"),
        split_records("test"),
        num_classes=len(class_names),
        input_shape=(*size, 3),
        normalization=transforms.NORMALIZATION,
    )


def _paths_and_labels(files, class_names):
    """`({split: paths}, {split: int32 labels})` of `{split: {class: [files]}}`,
    class by class; the paths an object array, so a validation carve can
    index them as it indexes the labels."""
    paths, labels = {}, {}
    for split, by_class in files.items():
        paths[split] = np.array(
            [file for name in class_names for file in by_class[name]], dtype=object
        )
        labels[split] = np.array(
            [i for i, name in enumerate(class_names) for _ in by_class[name]],
            dtype="int32",
        )
    return paths, labels


def _is_test_named_val(root):
    return not (root / "test").is_dir() and (root / "val").is_dir()


def _check_layout(root, validation_fraction, test="test"):
    """Checks the split folders; returns whether there is a `validation` one."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder '{root}' does not exist or is not a directory. "
            f"Expected the layout {LAYOUT}."
        )
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1), got {validation_fraction}."
        )
    for required in ("train", test):
        if not (root / required).is_dir():
            raise ValueError(
                f"Image folder '{root}' has no '{required}' split folder. "
                f"Expected the layout {LAYOUT}."
            )
    has_validation = (root / "validation").is_dir()
    if has_validation and validation_fraction > 0:
        raise ValueError(
            f"Image folder '{root}' has its own 'validation' split; "
            "leave `validation_fraction` at 0."
        )
    return has_validation


def _list_splits(root, has_validation, test="test"):
    """`({split: {class: [files]}}, sorted class names)`, the same classes in
    every split and training images in every class; the test split is read
    from the folder `test`."""
    files = {"train": _list_split(root, "train")}
    class_names = sorted(files["train"])
    for split in SPLITS[1:]:
        if split == "validation" and not has_validation:
            continue
        folder = test if split == "test" else split
        files[split] = _list_split(root, folder)
        if sorted(files[split]) != class_names:
            raise ValueError(
                f"The '{folder}' split of image folder '{root}' has the classes "
                f"{sorted(files[split])}, but 'train' has {class_names}; every "
                "split must have the same class folders."
            )
    empty = [name for name in class_names if not files["train"][name]]
    if empty:
        raise ValueError(
            f"These classes of image folder '{root}' have no training images: {empty}."
        )
    return files, class_names


def _carve_validation(images, labels, validation_fraction, seed, root):
    """Moves a stratified, seeded fraction of the training split to validation."""
    keep, carve = _carve(labels["train"], validation_fraction, seed)
    if not len(carve):
        raise ValueError(
            f"`validation_fraction={validation_fraction}` carves no images "
            f"from the {len(keep)} training images of image folder '{root}'."
        )
    for arrays in (images, labels):
        arrays["validation"] = arrays["train"][carve]
        arrays["train"] = arrays["train"][keep]


def _visible(directory):
    """`[(path, is_dir, is_file)]` of a directory's visible entries, sorted by
    path; one `os.scandir`, whose entries know their type without a `stat`
    call on most file systems (ImageNet's train split holds 1.28M files)."""
    with os.scandir(directory) as entries:
        return sorted(
            (Path(entry.path), entry.is_dir(), entry.is_file())
            for entry in entries
            if not entry.name.startswith(".")
        )


def _list_split(root, split):
    """`{class name: [image paths]}` of one split folder."""
    directory = root / split
    entries = _visible(directory)
    stray = [entry.name for entry, is_dir, _ in entries if not is_dir]
    if stray:
        raise ValueError(
            f"Split folder '{directory}' holds files beside its class folders: "
            f"{stray[:5]}. Expected the layout {LAYOUT}."
        )
    by_class = {
        entry.name: [file for file, _, is_file in _visible(entry) if is_file]
        for entry, _, _ in entries
    }
    if not any(by_class.values()):
        raise ValueError(
            f"Split folder '{directory}' holds no images. Expected the layout {LAYOUT}."
        )
    return by_class


def _decode(file, channels=0):
    return tf.io.decode_image(
        file.read_bytes(), channels=channels, expand_animations=False
    )


def _decode_all(paths, root, image_size):
    """Decodes every file once: `{split: float32 array [N, H, W, C]}`."""
    decoded, bad = {}, []
    for split, files in paths.items():
        decoded[split] = []
        for file in files:
            try:
                decoded[split].append(_decode(file))
            except (tf.errors.OpError, OSError) as error:
                message = str(error).strip().splitlines()[0] if str(error) else ""
                bad.append(f"{file} ({type(error).__name__}: {message})")
    if bad:
        raise ValueError(
            f"Image folder '{root}' has {len(bad)} file(s) that cannot be "
            "decoded as images (PNG, JPEG, BMP or GIF):\n  " + "\n  ".join(bad)
        )

    all_images = [image for images in decoded.values() for image in images]
    if len({int(image.shape[-1]) for image in all_images}) > 1:
        # Mixed grayscale / RGB / RGBA: decode everything as RGB.
        decoded = {
            split: [_decode(file, channels=3) for file in files]
            for split, files in paths.items()
        }

    size = size_pair(image_size)
    if size is None:
        shapes = {}
        for split, files in paths.items():
            for file, image in zip(files, decoded[split], strict=True):
                shapes.setdefault(tuple(image.shape[:2]), file)
        if len(shapes) > 1:
            examples = ", ".join(
                f"{height}x{width} (e.g. {file})"
                for (height, width), file in shapes.items()
            )
            raise ValueError(
                f"The images of image folder '{root}' differ in size: {examples}. "
                "Resize them to one size with `image_size` (train.py: "
                "--config.data.image_size=SIZE)."
            )

    def to_array(images):
        images = [tf.image.convert_image_dtype(image, tf.float32) for image in images]
        if size is not None:
            images = [tf.image.resize(image, size) for image in images]
        return np.stack([image.numpy() for image in images]).astype("float32")

    return {split: to_array(images) for split, images in decoded.items()}


def _carve(labels, validation_fraction, seed):
    """Stratified indices `(keep, carve)` moving a fraction of each class."""
    rng = np.random.default_rng(seed)
    keep, carve = [], []
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        count = min(round(len(indices) * validation_fraction), len(indices) - 1)
        carve.extend(indices[:count])
        keep.extend(indices[count:])
    return np.sort(np.array(keep, dtype="int64")), np.sort(
        np.array(carve, dtype="int64")
    )


class FileRecords(StreamedSource):
    """Image files and their labels, read lazily (random access).

    Each epoch's order is a full permutation, `stateless_shuffle` of the
    indices with the seed `fold_in([seed, 1], epoch)`.

    Args:
        paths: the image files, a sequence of paths.
        labels: their int labels.
        name: a description, for messages.

    Example:

    >>> records = FileRecords(["a.jpg", "b.jpg"], [0, 1])
    >>> records.num_examples
    2
    """

    def __init__(self, paths, labels, name="files"):
        self.paths = np.asarray([str(path) for path in paths], dtype=object)
        self.labels = np.asarray(labels, dtype=np.int32)
        if self.paths.shape != self.labels.shape:
            raise ValueError(
                f"{len(self.paths)} paths but {len(self.labels)} labels for {name}."
            )
        self.name = name
        self.num_examples = len(self.paths)
        self._tensors = None

    def _table(self):
        if self._tensors is None:
            with tf.init_scope():  # eager, even when first asked inside a map
                self._tensors = (
                    tf.constant(self.paths.astype(bytes)),
                    tf.constant(self.labels),
                )
        return self._tensors

    def keys(self):
        return tf.data.Dataset.range(self.num_examples)

    def epoch_keys(self, seed, epoch):
        count = self.num_examples
        order_seed = fold_in([seed, _ORDER_STREAM], epoch)
        return tf.data.Dataset.range(1).flat_map(
            lambda _: tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(
                    tf.range(count, dtype=tf.int64), order_seed
                )
            )
        )

    def read(self, index):
        paths, labels = self._table()
        return tf.io.read_file(tf.gather(paths, index)), tf.gather(labels, index)

    def balanced_sample(self, count, seed=sampling.SEED):
        """A class-balanced sample, chosen from the listing's labels: only the
        chosen files are ever read (see `StreamedSource.balanced_sample`).

        Example:

        ```python
        imagenet.train.balanced_sample(1000).num_examples  # one a class
        # 1000
        ```
        """
        chosen = sampling.balanced_indices(self.labels, count, seed)
        return FileRecords(
            self.paths[chosen], self.labels[chosen], name=f"{self.name}, balanced"
        )
