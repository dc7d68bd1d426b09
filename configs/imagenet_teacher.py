"""Train an ImageNet teacher from the zoo, for users without pretrained weights.

    python train.py --config=configs/imagenet_teacher.py:resnet34_imagenet \
        --config.data.manual_dir=/data/imagenet_tars

mdistiller's ImageNet teachers are torchvision's pretrained weights; port them
when you have them (`python -m keras_cskd.models.porting --checkpoint=... \
--model=resnet34_imagenet --output=saved_models/imagenet_resnet34_imagenet.keras`).
Otherwise this is torchvision's classification recipe for ResNets
(`references/classification`): SGD at 0.1 for a global batch of 256 (32 on
each of 8 GPUs), momentum 0.9, weight decay 1e-4, 90 epochs, the rate x0.1
every 30 epochs; RandomResizedCrop(224) and flip. Saves
saved_models/imagenet_<model>.keras.
"""

from keras_cskd.config import default_config, loss_config


def get_config(model="resnet34_imagenet"):
    config = default_config()
    config.model = model
    config.loss = loss_config("scratch")
    config.data.name = "tfds:imagenet2012"
    config.data.augmentation = "imagenet_rrc"
    config.data.streaming = True
    config.data.batch_size = 256
    # torchvision's reference: 8 GPUs x 32 images, BatchNorm over each 32.
    config.batch_norm_group = 32
    config.data.eval_batch_size = 128
    config.epochs = 90
    config.checkpoint_every_steps = 500  # an epoch of 256 is 5,005 steps
    config.optimizer.update(
        name="torch_sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        milestones=(30, 60),
        decay_rate=0.1,
    )
    config.export.formats = ""
    config.save_model_to = f"saved_models/imagenet_{model}.keras"
    return config
