"""Distil an ImageNet student: mdistiller's ImageNet recipes of KD and DKD, and CSKD.

    python train.py \
        --config=configs/imagenet_distill.py:kd,resnet34_imagenet,resnet18_imagenet \
        --config.data.manual_dir=/data/imagenet_tars

The argument is `method,teacher,student`, for the two pairs of mdistiller's
ImageNet table (`configs/imagenet/r34_r18`, `configs/imagenet/r50_mv1`):
ResNet34 -> ResNet18 and ResNet50 -> MobileNetV1, and one of:

- `kd`: mdistiller's KD (CE 0.5, KD 0.5, T 1).
- `dkd`: mdistiller's DKD (CE 1, alpha 1, beta 0.5 for ResNet18 and 2 for
  MobileNetV1, T 1, a 1-epoch warm-up).
- `cskd`: CSKD+CSWT with its CIFAR settings (T 4, CSWT 2..6, alpha 2, weight
  1, CE 1). The CSKD code (llieeai/lud) publishes no ImageNet config: this
  loss setting is ours, on mdistiller's ImageNet solver.

Every recipe trains with PyTorch's SGD (momentum 0.9, weight decay 1e-4 added to
the gradient of every parameter) at 0.2 for the global batch of 512, 100
epochs, the rate x0.1 at the start of epochs 31, 61 and 91; torchvision's
RandomResizedCrop(224) and flip for training, Resize(256) and CenterCrop(224)
for evaluation (`keras_cskd.data.transforms`), on ILSVRC 2012 (`tfds:imagenet2012`,
prepared from the two tar files in `data.manual_dir`; or an ImageNet-style
`folder:<path>`), tested on its validation split. On N devices every loss term
is on the global batch of 512, but each replica's BatchNorm statistics are over
its own 512 / N images (docs/distributed.md). The teacher is
read from saved_models/imagenet_<teacher>.keras: port torchvision's pretrained
weights, as mdistiller does (`python -m keras_cskd.models.porting`), or train it
with configs/imagenet_teacher.py. docs/reproducing.md gives each value's source.
"""

from keras_cskd.config import default_config, loss_config

# (teacher, student): DKD's beta for the pair (mdistiller's configs).
PAIRS = {
    ("resnet34_imagenet", "resnet18_imagenet"): 0.5,
    ("resnet50_imagenet", "mobilenetv1_imagenet"): 2.0,
}
METHODS = ("kd", "dkd", "cskd")


def get_config(spec="kd,resnet34_imagenet,resnet18_imagenet"):
    method, teacher, student = (part.strip() for part in spec.split(","))
    if (teacher, student) not in PAIRS:
        pairs = ", ".join(f"{t},{s}" for t, s in PAIRS)
        raise ValueError(f"Unknown pair {teacher},{student}; known pairs: {pairs}.")
    if method not in METHODS:
        raise ValueError(
            f"Unknown method '{method}' for ImageNet: {', '.join(METHODS)}."
        )
    config = imagenet_config(student)
    config.teacher.path = f"saved_models/imagenet_{teacher}.keras"
    config.teacher.config = f"configs/imagenet_teacher.py:{teacher}"
    config.epochs = 100
    config.data.batch_size = 512
    # mdistiller's 512 over 8 GPUs: BatchNorm over 64 images, on any devices.
    config.batch_norm_group = 64
    if method == "kd":
        config.loss = loss_config("kd", temperature=1.0)
        config.ce_weight, config.distillation_loss_weight = 0.5, 0.5
    elif method == "dkd":
        config.loss = loss_config(
            "dkd",
            temperature=1.0,
            alpha=1.0,
            beta=PAIRS[teacher, student],
            warmup_epochs=1,
        )
    else:
        config.loss = loss_config("cskd", temperature=4.0, cswt=True, alpha=2.0)
    config.optimizer.update(learning_rate=0.2, milestones=(30, 60, 90))
    return config


def imagenet_config(model):
    """What every ImageNet run shares: the data, its transforms and the solver's
    form (PyTorch's SGD, weight decay 1e-4, step decay x0.1)."""
    config = default_config()
    config.model = model
    config.data.name = "tfds:imagenet2012"
    config.data.augmentation = "imagenet_rrc"
    config.data.streaming = True
    config.data.eval_batch_size = 128
    config.checkpoint_every_steps = 500  # an epoch of 512 is 2,502 steps
    config.optimizer.update(
        name="torch_sgd",
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        decay_rate=0.1,
    )
    config.export.formats = "savedmodel,tflite,tflite_int8"
    return config
