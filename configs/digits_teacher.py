"""The digits teacher (digits_cnn) trained on cross-entropy alone.

Rebuilds saved_models/digits_teacher.keras:
    python train.py --config=configs/digits_teacher.py

That path links to keras_cskd/assets/digits_teacher.keras, the copy the package
ships (an installed wheel's default run distils from it), which is written here.
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
    # Not through the link: a file written atomically would replace it.
    config.save_model_to = "keras_cskd/assets/digits_teacher.keras"
    return config
