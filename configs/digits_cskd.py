"""The default run: distil the digits MLP from the shipped CNN with CSKD + CSWT
(T = 4, CSWT in [2, 6], alpha 2, CE 1, distillation 1, as in the paper's code)."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config(
        "cskd", temperature=4.0, cswt=True, t_min=2.0, t_max=6.0, alpha=2.0
    )
    config.ce_weight = 1.0
    config.distillation_loss_weight = 1.0
    return config
