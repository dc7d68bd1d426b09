"""The default run: distil the digits MLP from the shipped CNN with CSKD + CSWT."""

from keras_cskd.training import default_config


def get_config():
    config = default_config()
    config.loss.method = "cskd"
    config.loss.temperature = 4.0
    config.loss.cswt = True
    config.loss.t_min = 2.0
    config.loss.t_max = 6.0
    config.loss.alpha = 2.0
    config.student_loss_weight = 1.0
    config.distillation_loss_weight = 1.0
    return config
