"""Temporary: the names `keras_cskd.training` still imports from here.

`data/imagenet.py` was split by concept: the transforms into
`keras_cskd.data.transforms`, the streamed pipelines into
`keras_cskd.data.streaming`, `ImageRecords` into
`keras_cskd.data.streamed_source.StreamedSource`. Delete this module once
`training.py` imports those.
"""

from keras_cskd.data.streamed_source import StreamedSource as ImageRecords
from keras_cskd.data.streaming import (
    eval_pipeline,
    sample_views,
    steps_per_epoch,
    train_pipeline,
)

__all__ = [
    "ImageRecords",
    "eval_pipeline",
    "sample_views",
    "steps_per_epoch",
    "train_pipeline",
]
