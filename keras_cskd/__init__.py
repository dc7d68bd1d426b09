"""keras-cskd: knowledge distillation for Keras, centred on CSKD with CSWT.

The losses, the model zoo, the optimizers and the `Distiller` are backend
agnostic (TensorFlow, JAX, PyTorch). `keras_cskd.data` (`tf.data` pipelines,
TFDS) and `keras_cskd.export` (SavedModel and TFLite) need TensorFlow and are
imported on first use: `keras_cskd.data.load(...)`, `from keras_cskd import
export`.
"""

import importlib

from keras_cskd import losses, models, optimizers
from keras_cskd.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "data", "losses", "models", "optimizers"]

# Subpackages that need TensorFlow, imported when first accessed.
_TENSORFLOW_SUBPACKAGES = ("data", "export")


def __getattr__(name):
    if name not in _TENSORFLOW_SUBPACKAGES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "tensorflow":
            raise
        raise ModuleNotFoundError(
            f"keras_cskd.{name} needs TensorFlow, which is not installed: "
            "pip install tensorflow.",
            name=error.name,
        ) from error


def __dir__():
    return sorted({*globals(), *_TENSORFLOW_SUBPACKAGES})
