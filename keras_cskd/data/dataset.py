"""The `Dataset` record every data source returns."""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class Dataset:
    """The splits of a classification dataset, as unbatched `(image, label)` pairs.

    Attributes:
        name: the name the dataset was loaded by.
        train, validation, test: unbatched `tf.data.Dataset`s of float32 images
            and int32 labels; `validation` may be `None`.
        num_classes: number of classes.
        input_shape: shape of one image, without the batch axis.
    """

    name: str
    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_classes: int
    input_shape: tuple
