"""Distillation losses and the CSWT temperature, as specified in docs/methods.md."""

from keras_cskd.losses.attention_transfer import AttentionTransfer
from keras_cskd.losses.base import LogitsDistillationLoss
from keras_cskd.losses.cskd import CSKD
from keras_cskd.losses.cswt import CSWT
from keras_cskd.losses.dist import DIST
from keras_cskd.losses.dkd import DKD
from keras_cskd.losses.feature_distillation import FeatureDistillation
from keras_cskd.losses.kd import KD
from keras_cskd.losses.lskd import LSKD
from keras_cskd.losses.skd import SKD
from keras_cskd.losses.two_view_cskd import TwoViewCSKD

_LOSSES = {
    "kd": KD,
    "cskd": CSKD,
    "skd": SKD,
    "lskd": LSKD,
    "dkd": DKD,
    "dist": DIST,
    "two_view_cskd": TwoViewCSKD,
    "feature_distillation": FeatureDistillation,
    "attention_transfer": AttentionTransfer,
}


def names():
    """Returns the names `get` accepts, e.g. `["cskd", "kd"]`."""
    return sorted(_LOSSES)


def get_class(name):
    """The loss class called `name` (case-insensitive), e.g. `KD` for "kd"."""
    key = str(name).lower()
    if key not in _LOSSES:
        raise ValueError(
            f"Unknown distillation method '{name}'. Known methods: "
            f"{', '.join(names())}."
        )
    return _LOSSES[key]


def get(name, **kwargs):
    """Builds a distillation loss by (case-insensitive) name.

    Example:

    >>> loss = keras_cskd.losses.get("kd", temperature=4.0)
    """
    return get_class(name)(**kwargs)


__all__ = [
    "AttentionTransfer",
    "CSKD",
    "CSWT",
    "DIST",
    "DKD",
    "FeatureDistillation",
    "KD",
    "LSKD",
    "LogitsDistillationLoss",
    "SKD",
    "TwoViewCSKD",
    "get",
    "get_class",
    "names",
]
