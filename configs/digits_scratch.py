"""The floor of every comparison: the digits student on cross-entropy alone."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config("scratch")
    return config
