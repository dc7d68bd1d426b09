"""STKD (Zhao et al., 2021; our inferred formulation, see docs/methods.md): mixup
in the input pipeline (Beta(0.2, 0.2)), mixed-label CE 0.1 and KD 0.9 at T = 4
on the mixed images, which teacher and student both see."""

from keras_cskd.config import default_config, loss_config


def get_config():
    config = default_config()
    config.data.mixup_alpha = 0.2
    config.loss = loss_config("kd", temperature=4.0)
    config.ce_weight = 0.1
    config.distillation_loss_weight = 0.9
    return config
