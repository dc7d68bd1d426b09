"""Train or distil a model from a config file (`keras_cskd.train`).

    python train.py                                   # configs/digits_cskd.py
    python train.py --config=configs/digits_kd.py --config.epochs=5
    python train.py --config=configs/digits_teacher.py   # rebuild the teacher
    python train.py --list                # losses, models, datasets, configs
    python train.py --config=configs/cifar100_distill.py:kd,resnet32x4,resnet8x4 \
        --config.teacher=cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth

The same command as `python -m keras_cskd.train`, which an installed wheel
runs anywhere. Everything goes under --workdir (default runs/<config name>);
docs/workdir.md says what each file is.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from keras_cskd.train import run  # noqa: E402

if __name__ == "__main__":
    run()
