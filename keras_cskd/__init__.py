"""keras-cskd: knowledge distillation for Keras, centred on CSKD with CSWT.

`keras_cskd.export` (SavedModel and TFLite) is imported on its own:
`from keras_cskd import export`.
"""

from keras_cskd import data, losses, models, optimizers
from keras_cskd.distiller import Distiller

__version__ = "0.1.0"

__all__ = ["Distiller", "data", "losses", "models", "optimizers"]
