"""Datasets as `tf.data` pipelines: named sources, splits, batching, augmentation.

Sources (`load(name)`): `"digits"` (embedded), `"tfds:<spec>"` (TensorFlow
Datasets, never downloaded unless asked) and `"folder:<path>"` (image folders);
`register` adds one (keras_cskd.data.registry, docs/extending.md).
"""

from keras_cskd.checks import refuse_renamed
from keras_cskd.data import digits, folder, tfds  # noqa: F401  (register themselves)
from keras_cskd.data.augment import (
    RandomHorizontalFlip,
    RandomPaddedCrop,
    RandomSequence,
    cifar_augmentation,
    cifar_strong_augmentation,
    digits_augmentation,
)
from keras_cskd.data.dataset import Dataset
from keras_cskd.data.decoded import (
    pipeline,
    to_numpy,
    with_sample_indices,
    with_teacher_logits,
)
from keras_cskd.data.digits import digits_arrays
from keras_cskd.data.folder import FileRecords
from keras_cskd.data.randaugment import ReferenceRandAugment
from keras_cskd.data.registry import load, names, register
from keras_cskd.data.streamed_source import EncodedRecords, StreamedSource
from keras_cskd.data.tfds import TFDSRecords

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
    "register",
    "to_numpy",
    "with_sample_indices",
    "with_teacher_logits",
]

# Names that moved, refused with where they went.
__getattr__ = refuse_renamed(
    __name__, {"ImageRecords": "keras_cskd.data.StreamedSource"}
)
