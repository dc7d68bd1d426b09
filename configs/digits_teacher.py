"""The digits teacher (digits_cnn) trained on cross-entropy alone.

Rebuilds saved_models/digits_teacher.keras:
    python train.py --config=configs/digits_teacher.py
"""

from keras_cskd.config import default_config


def get_config():
    config = default_config()
    config.model = "digits_cnn"
    config.loss.method = "scratch"
    config.epochs = 40
    config.data.augmentation = "digits_shift"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.export.formats = ""
    config.save_model_to = "saved_models/digits_teacher.keras"
    return config
