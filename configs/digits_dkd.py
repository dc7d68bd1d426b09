"""Decoupled KD (Zhao et al., 2022): T = 4, alpha 1, beta 8, CE 1. The warm-up
is scaled to this 30-epoch schedule (20 of 240 epochs in the paper: 1/12)."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config(
        "dkd", temperature=4.0, alpha=1.0, beta=8.0, warmup_epochs=3
    )
    return config
