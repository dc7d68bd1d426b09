"""Datasets as `tf.data` pipelines: named sources, splits, batching, augmentation.

Sources (`load(name)`): `"digits"` (embedded), `"tfds:<spec>"` (TensorFlow
Datasets, never downloaded unless asked) and `"folder:<path>"` (image folders);
`register` adds one (keras_cskd.data.registry, docs/extending.md).
"""

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
from keras_cskd.data.digits import digits_arrays
from keras_cskd.data.imagenet import (
    EncodedRecords,
    FileRecords,
    ImageRecords,
    TFDSRecords,
)
from keras_cskd.data.pipeline import pipeline, to_numpy, with_teacher_logits
from keras_cskd.data.randaugment import ReferenceRandAugment
from keras_cskd.data.registry import load, names, register

__all__ = [
    "Dataset",
    "EncodedRecords",
    "FileRecords",
    "ImageRecords",
    "RandomHorizontalFlip",
    "RandomPaddedCrop",
    "RandomSequence",
    "ReferenceRandAugment",
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
    "with_teacher_logits",
]
