"""DIST (Huang et al., 2022): inter- and intra-class Pearson correlation, T = 4,
beta = gamma = 1, CE 1, distillation 2."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config("dist", temperature=4.0, beta=1.0, gamma=1.0)
    config.distillation_loss_weight = 2.0
    return config
