"""Logit standardisation (Sun et al., 2024): KD on z-scored logits, T = 2,
CE 0.1, KD 9."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config("lskd", temperature=2.0)
    config.ce_weight = 0.1
    config.distillation_loss_weight = 9.0
    return config
