"""Train a CIFAR-100 teacher from the zoo (the frameworks' teacher recipe).

    python train.py --config=configs/cifar100_teacher.py:resnet32x4

The reference teacher recipe (mdistiller, llieeai/lud `configs/cifar100/
teacher/`): PyTorch's SGD at 0.05 with momentum 0.9 and weight decay 5e-4 on
every parameter, batch 64, 240 epochs, the rate x0.1 at the start of epochs
151, 181 and 211; black-padded random crop and horizontal flip. Saves
saved_models/cifar100_<model>.keras.
Needs CIFAR-100 prepared for TFDS (see docs/recipes.md; --config.data.data_dir).
"""

from keras_cskd.config import default_config, loss_config


def get_config(model="resnet32x4"):
    config = default_config()
    config.model = model
    config.loss = loss_config("scratch")
    config.data.name = "tfds:cifar100"
    config.data.augmentation = "cifar_crop_flip"
    config.data.batch_size = 64
    config.batch_norm_group = 64  # the reference's one GPU: BatchNorm over 64
    config.data.eval_batch_size = 500
    config.epochs = 240
    config.optimizer.update(
        name="torch_sgd",
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(150, 180, 210),
        decay_rate=0.1,
    )
    config.export.formats = ""
    config.save_model_to = f"saved_models/cifar100_{model}.keras"
    return config
