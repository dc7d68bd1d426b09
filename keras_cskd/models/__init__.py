"""The model zoo: `get(name, num_classes, input_shape)`, `names()`, `features`."""

from keras_cskd.batch_norm import (
    GroupBatchNormalization,
    TorchBatchNormalization,
)
from keras_cskd.models import (
    cifar_mobilenet,  # noqa: F401
    cifar_resnet,  # noqa: F401
    cifar_shufflenet,  # noqa: F401
    cifar_vgg,  # noqa: F401
    cifar_wrn,  # noqa: F401
    digits,  # noqa: F401  (registers the digits pair)
    imagenet_mobilenet,  # noqa: F401
    imagenet_resnet,  # noqa: F401
)
from keras_cskd.models.registry import get, names, register
from keras_cskd.models.saving import CodeInModelError, load
from keras_cskd.models.taps import bn_before_relu, features
from keras_cskd.models.teacher import load_teacher

__all__ = [
    "CodeInModelError",
    "GroupBatchNormalization",
    "TorchBatchNormalization",
    "bn_before_relu",
    "features",
    "get",
    "load",
    "load_teacher",
    "names",
    "register",
]
