"""Spherical KD (Guo et al., 2020): (1 - a) CE + a KD on sphere-projected logits,
a = 0.9, T = 4, multiplier 2, the student's CE on its normalised logits too."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.loss = loss_config(
        "skd", temperature=4.0, multiplier=2.0, normalize_student_ce=True
    )
    config.ce_weight = 0.1
    config.distillation_loss_weight = 0.9
    return config
