"""Datasets as `tf.data` pipelines: named sources, splits, batching, augmentation.

Sources (`load(name)`): `"digits"` (embedded), `"tfds:<spec>"` (TensorFlow
Datasets, never downloaded unless asked) and `"folder:<path>"` (image folders).
"""

from keras_cskd.data import digits, folder, tfds
from keras_cskd.data.augment import (
    RandomHorizontalFlip,
    RandomPaddedCrop,
    RandomSequence,
    cifar_augmentation,
    cifar_strong_augmentation,
    digits_augmentation,
)
from keras_cskd.data.dataset import Dataset
from keras_cskd.data.decoded import pipeline, to_numpy, with_teacher_logits
from keras_cskd.data.digits import digits_arrays
from keras_cskd.data.folder import FileRecords
from keras_cskd.data.randaugment import ReferenceRandAugment
from keras_cskd.data.streamed_source import EncodedRecords, StreamedSource
from keras_cskd.data.tfds import TFDSRecords

TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"


def names():
    """The dataset names (and name patterns) `load` understands."""
    return ["digits", f"{TFDS_PREFIX}<name>", f"{FOLDER_PREFIX}<path>"]


def load(
    name, data_dir=None, download=False, validation_fraction=0.0, seed=0, **options
):
    """Loads a named dataset.

    Args:
        name: one of
            - `"digits"`: scikit-learn's bundled 8x8 handwritten digits (real
              data, no download), 10 classes, images scaled to [0, 1] as
              `[8, 8, 1]`, split 70/15/15 (stratified, fixed seed; it has its
              own validation split, so a `validation_fraction` is refused).
            - `"tfds:<name>[/<config>][:<version>][:<splits>]"`: a TensorFlow
              Datasets image classification dataset, e.g. `"tfds:cifar100"`
              or `"tfds:cifar10:train[:10%],test=test[:5%]"` (see
              `keras_cskd.data.tfds`).
            - `"folder:<path>"`: a folder of `<split>/<class>/<image>` files
              (see `keras_cskd.data.folder`).
        data_dir: the TFDS data directory (TFDS datasets only).
        download: let TFDS download and prepare a missing dataset (TFDS
            datasets only). Without it nothing is downloaded.
        validation_fraction: for TFDS datasets and folders without their own
            validation split, the fraction of the training split held out
            for validation; `0` means no validation split.
        seed: the seed of a folder's validation carve.
        **options: passed on to the source's loader: `normalization` and
            `image_size` (TFDS), `image_size` (folders).

    Returns:
        A `Dataset` of unbatched `(image, label)` splits.

    Raises:
        ValueError: for an unknown name, options or a `validation_fraction`
            given to `digits`, or a source's own errors (see `tfds.load` and
            `folder.load`).
        TypeError: for options the source does not take.
        FileNotFoundError: for an unprepared TFDS dataset or a missing folder.

    Example:

    >>> digits = keras_cskd.data.load("digits")
    >>> digits.num_classes, digits.input_shape
    (10, (8, 8, 1))
    """
    if name == "digits":
        if options:
            raise ValueError(
                f"The digits dataset takes no options, got {options}: remove them "
                "(train.py: leave data.image_size, data.manual_dir and data.streaming "
                "unset)."
            )
        if validation_fraction:
            raise ValueError(
                "The digits dataset has its own validation split (15% of the images, "
                f"stratified), so validation_fraction={validation_fraction} would "
                "be ignored: leave it at 0 (train.py: data.validation_fraction)."
            )
        return digits.load()
    if name.startswith(TFDS_PREFIX):
        return tfds.load(
            name[len(TFDS_PREFIX) :],
            data_dir=data_dir,
            download=download,
            validation_fraction=validation_fraction,
            seed=seed,
            **options,
        )
    if name.startswith(FOLDER_PREFIX):
        return folder.load(
            name[len(FOLDER_PREFIX) :],
            validation_fraction=validation_fraction,
            seed=seed,
            **options,
        )
    raise ValueError(f"Unknown dataset '{name}'. Known datasets: {', '.join(names())}.")


__all__ = [
    "Dataset",
    "EncodedRecords",
    "FileRecords",
    "RandomHorizontalFlip",
    "RandomPaddedCrop",
    "RandomSequence",
    "ReferenceRandAugment",
    "StreamedSource",
    "TFDSRecords",
    "cifar_augmentation",
    "cifar_strong_augmentation",
    "digits_arrays",
    "digits_augmentation",
    "load",
    "names",
    "pipeline",
    "to_numpy",
    "with_teacher_logits",
]
