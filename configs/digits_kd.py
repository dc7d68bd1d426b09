"""KD (Hinton et al., 2015) on the digits pair: CE 0.1, KD 0.9, T = 4."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config("kd", temperature=4.0)
    config.ce_weight = 0.1
    config.distillation_loss_weight = 0.9
    return config
