"""TensorFlow Datasets image classification datasets (`tfds:<spec>`).

A spec names a TFDS dataset and, optionally, its version and splits:

```
<name>[/<config>][:<version>][:<splits>]
<splits> := <item>[,<item>...]
<item>   := [train=|validation=|test=]<TFDS split expression>
```

An item without a key overrides the train split. The defaults are `train` for
training and `test` for testing. Examples:

- `cifar100`: train on `train`, test on `test`.
- `cifar10:train[:10%]`: train on the first 10% of `train`, test on `test`.
- `cifar10:3.0.2:train[:50%],test=test[:20%]`: a pinned version and both splits.
- `imagenette/160px:train,test=validation`: a dataset without a `test` split.
- `imagenet2012`: ILSVRC 2012, tested on its `validation` split (its `test`
  split has no labels), streamed (below).

Nothing is ever downloaded unless `download=True`; an unprepared dataset fails
at once with the command that prepares it on a machine with network access.
Datasets that TFDS cannot download (`imagenet2012`) are prepared from files
put in a manual directory (`manual_dir`), without any network: without them,
loading fails at once with one line naming the files and where they go.

Datasets whose images differ in size (`imagenet2012`) are *streamed* unless an
`image_size` is given: their splits are then `TFDSRecords` (this source's
`StreamedSource`: encoded images read as needed) for the streamed pipelines,
`streaming.train_pipeline` and `streaming.eval_pipeline`.
"""

import os
import re

import numpy as np
import tensorflow as tf

from keras_cskd.data import sampling, transforms
from keras_cskd.data.batching import epoch_shuffle_seed
from keras_cskd.data.dataset import Dataset, normalize, size_pair
from keras_cskd.data.registry import register
from keras_cskd.data.streamed_source import EncodedRecords, StreamedSource

# Per-channel mean and standard deviation of the training images in [0, 1].
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet2012": transforms.NORMALIZATION,
}
# The split tested on when the spec names none, where `test` is not it.
DEFAULT_TEST_SPLIT = {"imagenet2012": "validation"}
# The files a manual download puts in `manual_dir`, and where they come from.
MANUAL_FILES = {
    "imagenet2012": (
        ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        "https://image-net.org/download-images",
    ),
}

SPLIT_KEYS = ("train", "validation", "test")
_VERSION = re.compile(r"^\d+(\.(\d+|\*)){0,2}$")
# The host a network probe asks before a download: TFDS's own bucket.
_PROBE_URL = "https://storage.googleapis.com"
# Streamed records held for shuffling (encoded ImageNet images are ~110 KB).
SHUFFLE_BUFFER = 10_000


def parse_spec(spec):
    """Splits a `tfds:` spec (prefix already stripped) into its parts.

    Args:
        spec: `<name>[/<config>][:<version>][:<splits>]`, see the module
            docstring.

    Returns:
        A tuple `(name, version, splits)`: the TFDS name (with its config),
        the version string or `None`, and a dict of the split expressions
        given, keyed by `"train"`, `"validation"` or `"test"`.

    Raises:
        ValueError: for an empty name, a repeated or unknown split key, or
            more parts than the syntax allows.

    Example:

    >>> parse_spec("cifar10:train[:10%],test=test[:5%]")
    ('cifar10', None, {'train': 'train[:10%]', 'test': 'test[:5%]'})
    """
    parts = _split_outside_brackets(spec, ":")
    name, rest = parts[0].strip(), parts[1:]
    if not name:
        raise ValueError(f"The TFDS spec '{spec}' names no dataset.")
    version = None
    if rest and _VERSION.match(rest[0].strip()):
        version = rest.pop(0).strip()
    if len(rest) > 1:
        raise ValueError(
            f"Cannot read the TFDS spec '{spec}': expected "
            "'<name>[/<config>][:<version>][:<splits>]'."
        )
    splits = {}
    for item in _split_outside_brackets(rest[0], ",") if rest else []:
        key, sep, expression = item.partition("=")
        key, expression = (key.strip(), expression.strip()) if sep else ("train", key)
        expression = expression.strip()
        if key not in SPLIT_KEYS or not expression:
            raise ValueError(
                f"Cannot read the split item '{item}' in the TFDS spec '{spec}': "
                "expected '<split>' or 'train=|validation=|test=<split>', "
                "for example 'cifar10:train[:10%],test=test[:5%]'."
            )
        if key in splits:
            raise ValueError(f"The TFDS spec '{spec}' gives the {key} split twice.")
        splits[key] = expression
    return name, version, splits


@register("tfds:<name>")
def load(
    spec,
    data_dir=None,
    download=False,
    validation_fraction=0.0,
    seed=0,
    normalization="auto",
    image_size=None,
    manual_dir=None,
    streaming=None,
):
    """Loads a TFDS image classification dataset with `image` and `label`.

    Images become float32 in [0, 1] and are then normalised per channel:
    CIFAR-10 and CIFAR-100 with their usual constants (`NORMALIZATION`), other
    datasets not at all unless `normalization` is given; the `Dataset` records
    the `(mean, std)` it applied (`keras_cskd.data.dataset.normalize`). Labels
    are int32.

    Streamed datasets (`streaming`) are not decoded here: their splits are
    `TFDSRecords`, their `input_shape` the crop size of the ImageNet
    transforms (`image_size`, default 224) and their `normalization` the one
    to give those transforms (`transforms.NORMALIZATION` for `"auto"` unless the
    dataset has its own constants above).

    Args:
        spec: `<name>[/<config>][:<version>][:<splits>]` (the `tfds:` prefix
            already stripped), see the module docstring.
        data_dir: the TFDS data directory; `None` uses TFDS's default
            (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        download: download and prepare the dataset when it is not prepared.
            Without network this fails at once rather than retrying.
        validation_fraction: carve this fraction off the end of the train
            split as the validation split (TFDS split slicing, so the same
            examples every time); `0` leaves `validation=None` unless the spec
            names a validation split.
        seed: unused: TFDS slicing is deterministic by itself. Accepted so
            every source takes the same arguments.
        normalization: `"auto"` (the constants above for known datasets,
            otherwise none), `None` (none), or a `(mean, std)` pair of
            per-channel sequences for images in [0, 1].
        image_size: `(height, width)` or an int to resize every image to;
            needed when the dataset's images differ in size, unless they are
            streamed. For a streamed dataset, the crop size (an int).
        manual_dir: the directory holding the files of a manual download
            (`imagenet2012`: `ILSVRC2012_img_train.tar` and
            `ILSVRC2012_img_val.tar`); an unprepared dataset is then prepared
            from them into `data_dir`, without network. `None` (or `""`):
            TFDS's default, `<data_dir>/downloads/manual`, is only named in
            errors.
        streaming: stream the encoded images (`TFDSRecords` splits)
            rather than decode them here; `None` streams exactly the datasets
            whose images differ in size when no `image_size` is given.

    Returns:
        A `Dataset` named `tfds:<spec>` of unbatched `(image, label)` splits,
        or of `TFDSRecords` when streamed.

    Raises:
        ValueError: for an unknown dataset, a malformed spec, a dataset without
            `image` and `label` features, images without a fixed size and no
            `image_size`, or a bad `validation_fraction`/`normalization`.
        FileNotFoundError: when the dataset is not prepared in `data_dir`
            and `download=False`, or, for a manual download, when its files
            are not in `manual_dir`.
        ConnectionError: when `download=True` but the network is unreachable
            or the download fails.

    Example:

    ```python
    cifar = load("cifar100", data_dir="/data/tfds", validation_fraction=0.1)
    cifar.num_classes, cifar.input_shape
    # (100, (32, 32, 3))
    ```
    """
    name, version, splits = parse_spec(spec)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in [0, 1), got {validation_fraction}."
        )
    full_name = f"{name}:{version}" if version else name
    builder = _builder(full_name, spec, data_dir)
    image_feature, label_feature = _image_and_label(builder.info.features, name)
    num_classes = int(label_feature.num_classes)
    manual = _needs_manual_download(builder)
    _prepare(builder, full_name, data_dir, manual_dir, download)
    train, validation, test = _split_names(
        builder, splits, name, spec, validation_fraction
    )

    mean_std = _normalization(normalization, name, image_feature.shape[-1])
    if streaming is None:
        streaming = image_size is None and None in tuple(image_feature.shape[:2])
    if streaming:
        shape = (*size_pair(image_size or transforms.IMAGE_SIZE), 3)
        if normalization == "auto" and mean_std is None:
            mean_std = transforms.NORMALIZATION  # what the ImageNet views use
    else:
        preprocess = _preprocess_fn(mean_std, image_size)
        shape = _input_shape(image_feature.shape, image_size, name)

    def split_dataset(split):
        try:
            dataset = builder.as_dataset(split=split, shuffle_files=False)
        except AssertionError as error:
            # TFDS's own check: `data_path` does not exist (nothing prepared).
            message = (
                _manual_message(builder, full_name, manual_dir)
                if manual
                else _not_prepared_message(builder, full_name, data_dir)
            )
            raise FileNotFoundError(message) from error
        if streaming:
            return TFDSRecords(builder, split)
        return dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)

    return Dataset(
        f"tfds:{spec}",
        split_dataset(train),
        None if validation is None else split_dataset(validation),
        split_dataset(test),
        num_classes=num_classes,
        input_shape=shape,
        normalization=mean_std,
    )


class TFDSRecords(StreamedSource):
    """A TFDS split's encoded images and labels, read as a stream.

    Images are read without decoding (`tfds.decode.SkipDecoding`). Epoch `e`'s
    order: the split's files in an order seeded by `(seed, e)`, interleaved,
    then a shuffle buffer of `shuffle_buffer` records seeded alike.

    Args:
        builder: a prepared `tfds.core.DatasetBuilder` with `image` and
            `label` features.
        split: a TFDS split expression, e.g. `"train[:98%]"`.
        shuffle_buffer: records held in the shuffle buffer.
        num_examples: the split's size; `None` reads it from the builder's
            info, or counts the records when the info does not know it.
    """

    def __init__(
        self, builder, split, shuffle_buffer=SHUFFLE_BUFFER, num_examples=None
    ):
        self.builder = builder
        self.split = split
        self.shuffle_buffer = shuffle_buffer
        self.name = f"tfds:{builder.info.full_name}[{split}]"
        self.num_examples = (
            num_examples if num_examples is not None else self._count_examples()
        )

    def _count_examples(self):
        try:
            known = int(self.builder.info.splits[self.split].num_examples)
        except (KeyError, ValueError, TypeError):
            known = 0
        if known > 0:
            return known
        return int(self._records().reduce(0, lambda count, _: count + 1))

    def _records(self, shuffle_seed=None):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False
        )
        examples = self.builder.as_dataset(
            split=self.split,
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=read_config,
        )
        return examples.map(
            lambda example: {
                "image": example["image"],
                "label": tf.cast(example["label"], tf.int32),
            }
        )

    def keys(self):
        return self._records()

    def epoch_keys(self, seed, epoch):
        epoch_seed = epoch_shuffle_seed(seed, epoch)
        return self._records(epoch_seed).shuffle(
            self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
        )

    def read(self, record):
        return record["image"], record["label"]

    def balanced_sample(
        self, count, seed=sampling.SEED, scan_limit=sampling.SCAN_LIMIT
    ):
        """A class-balanced sample from a bounded read of the records.

        The split's files are read in an order seeded by `seed`, interleaved
        (TFDS reads 16 files at a time), and TFDS shuffled the examples across
        its files when it prepared them, so the classes come mixed. Each class
        keeps the first records it meets, up to its share of `count`, and the
        read stops once the shares are filled (`sampling.fill_quotas`): for
        ImageNet's 1,000 classes and `count=1000`, about 7,500 records. It
        stops after `scan_limit` records in any case; a class not met by then
        is short in the sample, or absent, and the other classes fill its
        places. At most `2 * count` encoded images are held while reading; the
        sample's are kept in memory (`EncodedRecords`). See
        `StreamedSource.balanced_sample`.

        Example:

        ```python
        imagenet2012.train.balanced_sample(1000).num_examples
        # 1000
        ```
        """
        num_classes = int(self.builder.info.features["label"].num_classes)
        kept = sampling.fill_quotas(
            self._records(shuffle_seed=seed).as_numpy_iterator(),
            lambda record: record["label"],
            num_classes,
            count,
            scan_limit,
        )
        labels = np.array([record["label"] for record in kept], np.int32)
        chosen = sampling.balanced_indices(labels, count, seed)
        images = [kept[index]["image"] for index in chosen]
        return EncodedRecords(images, labels[chosen], name=f"{self.name}, balanced")


def _builder(full_name, spec, data_dir):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(full_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"Unknown TFDS dataset '{full_name}' (from 'tfds:{spec}'). "
            "`tfds.list_builders()` lists the known names."
        ) from error


def _prepare(builder, full_name, data_dir, manual_dir, download):
    """Prepares the dataset from `manual_dir`, or downloads it if asked."""
    manual = _needs_manual_download(builder)
    if manual and manual_dir and not builder.is_prepared():
        _prepare_from_manual_dir(builder, full_name, manual_dir)
    elif download and not builder.is_prepared():
        if manual:
            raise FileNotFoundError(_manual_message(builder, full_name, manual_dir))
        _download_and_prepare(builder, full_name, data_dir)


def _split_names(builder, splits, name, spec, validation_fraction):
    """The TFDS split names of train, validation (or `None`) and test."""
    train = splits.get("train", "train")
    test = splits.get("test", DEFAULT_TEST_SPLIT.get(name, "test"))
    validation = splits.get("validation")
    if validation_fraction > 0:
        if validation is not None:
            raise ValueError(
                f"The TFDS spec 'tfds:{spec}' names a validation split; "
                "leave `validation_fraction` at 0 or drop `validation=`."
            )
        train, validation = _carve(builder, train, validation_fraction, spec)
    return train, validation, test


def _split_outside_brackets(text, separator):
    """Splits `text` at `separator`s that are not inside `[...]`."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _image_and_label(features, name):
    import tensorflow_datasets as tfds

    keys = list(features.keys()) if hasattr(features, "keys") else []
    image = features["image"] if "image" in keys else None
    label = features["label"] if "label" in keys else None
    if not isinstance(image, tfds.features.Image) or not isinstance(
        label, tfds.features.ClassLabel
    ):
        raise ValueError(
            f"TFDS dataset '{name}' is not an image classification dataset "
            "with an `image` (Image) and a `label` (ClassLabel) feature; "
            f"its features are: {', '.join(keys) or features}."
        )
    return image, label


def _carve(builder, train, validation_fraction, spec):
    """Splits the train split expression into train and validation parts."""
    if not re.fullmatch(r"[\w-]+", train):
        raise ValueError(
            f"`validation_fraction` carves a plain split name, but the train "
            f"split of 'tfds:{spec}' is '{train}'. Name the validation split "
            "in the spec instead, e.g. 'cifar10:train[:80%],validation=train[80%:]'."
        )
    split_info = builder.info.splits.get(train) if builder.info.splits else None
    if split_info is not None:
        # Exact example counts when TFDS knows the size of the split.
        cut = split_info.num_examples - round(
            split_info.num_examples * validation_fraction
        )
        return f"{train}[:{cut}]", f"{train}[{cut}:]"
    percent = 100 * (1 - validation_fraction)
    if abs(percent - round(percent)) > 1e-9:
        raise ValueError(
            f"The size of the '{train}' split is not known yet, so "
            "`validation_fraction` must be a whole percentage (e.g. 0.1), "
            f"got {validation_fraction}."
        )
    return f"{train}[:{round(percent)}%]", f"{train}[{round(percent)}%:]"


def _normalization(normalization, name, channels):
    if isinstance(normalization, str):
        if normalization != "auto":
            raise ValueError(
                "`normalization` must be 'auto', None or (mean, std), "
                f"got '{normalization}'."
            )
        normalization = NORMALIZATION.get(name.split("/")[0])
    if normalization is None:
        return None
    mean, std = (tuple(float(v) for v in np.ravel(s)) for s in normalization)
    if channels is not None and (
        len(mean) not in (1, channels) or len(std) not in (1, channels)
    ):
        raise ValueError(
            f"`normalization` for '{name}' needs 1 or {channels} values per "
            f"statistic, got mean {list(mean)} and std {list(std)}."
        )
    return mean, std


def _preprocess_fn(mean_std, image_size):
    size = size_pair(image_size)

    def preprocess(example):
        image = example["image"]
        white = image.dtype.max if image.dtype.is_integer else 1.0
        image = tf.cast(image, tf.float32)
        if size is not None:
            image = tf.image.resize(image, size)
        return normalize(image, mean_std, white), tf.cast(example["label"], tf.int32)

    return preprocess


def _input_shape(feature_shape, image_size, name):
    height, width, channels = feature_shape
    size = size_pair(image_size)
    if size is not None:
        height, width = size
    if height is None or width is None or channels is None:
        raise ValueError(
            f"TFDS dataset '{name}' has images of varying shape {feature_shape}; "
            "resize them to one size with `image_size` (train.py: "
            "--config.data.image_size=SIZE)."
        )
    return (int(height), int(width), int(channels))


def _prepare_command(full_name, data_dir):
    directory = data_dir if data_dir else "DATA_DIR"
    return (
        'python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{full_name}', data_dir='{directory}')"
        '.download_and_prepare()"'
    )


def _how_to_prepare(full_name, data_dir):
    directory = data_dir if data_dir else "DATA_DIR"
    return (
        "Prepare it on a machine with network access:\n"
        f"    {_prepare_command(full_name, data_dir)}\n"
        f"then copy '{directory}' here and pass it with "
        f"--config.data.data_dir={directory} (or `data_dir=` in Python, or the "
        "TFDS_DATA_DIR environment variable)."
    )


def _not_prepared_message(builder, full_name, data_dir):
    return (
        f"TFDS dataset '{full_name}' is not prepared: no data in "
        f"'{builder.data_dir}', and nothing is downloaded without "
        f"`download=True`. {_how_to_prepare(full_name, data_dir)}"
    )


def _needs_manual_download(builder):
    return bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))


def _manual_files(builder, full_name):
    """`(file names, where they come from)` of a manual download."""
    files, source = MANUAL_FILES.get(full_name.split(":")[0].split("/")[0], ((), ""))
    if files:
        return files, source
    instructions = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    return (), instructions


def _manual_message(builder, full_name, manual_dir):
    """One line: which files go where for a manual download."""
    directory = manual_dir or os.path.join(
        str(builder.data_dir_root), "downloads", "manual"
    )
    files, source = _manual_files(builder, full_name)
    what = " and ".join(files) + f" (from {source})" if files else source
    return (
        f"TFDS dataset '{full_name}' is not prepared in '{builder.data_dir_root}' "
        f"and TFDS cannot download it: put {what} in '{directory}' and pass "
        "that directory as `manual_dir` to prepare it (nothing is downloaded)."
    )


def _prepare_from_manual_dir(builder, full_name, manual_dir):
    """Prepares a manual-download dataset from local files, without network."""
    import tensorflow_datasets as tfds

    files, _ = _manual_files(builder, full_name)
    missing = [f for f in files if not os.path.isfile(os.path.join(manual_dir, f))]
    if missing or not os.path.isdir(manual_dir):
        raise FileNotFoundError(_manual_message(builder, full_name, manual_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir), try_download_gcs=False
        )
    )


def _download_and_prepare(builder, full_name, data_dir):
    """Downloads and prepares, failing at once when there is no network.

    TFDS retries an unreachable host for minutes; a quick probe first turns
    "no network" into an immediate error.
    """
    import requests

    try:
        requests.head(_PROBE_URL, timeout=5)
    except requests.RequestException as error:
        raise ConnectionError(
            f"Cannot download TFDS dataset '{full_name}': the network is "
            f"unreachable ({type(error).__name__}). "
            f"{_how_to_prepare(full_name, data_dir)}"
        ) from error
    try:
        builder.download_and_prepare()
    except (OSError, requests.RequestException) as error:
        raise ConnectionError(
            f"Downloading TFDS dataset '{full_name}' failed: {error}. "
            f"{_how_to_prepare(full_name, data_dir)}"
        ) from error
