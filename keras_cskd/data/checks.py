"""Temporary: `check_dataset` moved to `keras_cskd.data.dataset_checks`.

Delete this module once `keras_cskd.training` imports it from there.
"""

from keras_cskd.data.dataset_checks import check_dataset

__all__ = ["check_dataset"]
