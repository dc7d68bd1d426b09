"""keras-cskd: knowledge distillation for Keras, centred on CSKD with CSWT."""

from keras_cskd import losses, models
from keras_cskd.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "losses", "models"]
