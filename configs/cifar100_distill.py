"""Distil a CIFAR-100 student: the paper recipes for KD, CSKD+CSWT and DKD.

    python train.py --config=configs/cifar100_distill.py:cskd,resnet32x4,resnet8x4

The argument is `method,teacher,student` with method kd, cskd (CSKD+CSWT) or
dkd and one of the pairs in PAIRS. The teacher is read from
saved_models/cifar100_<teacher>.keras and, if missing, trained first with
configs/cifar100_teacher.py. Recipe (METHODS.md): SGD with momentum 0.9 and
weight decay 5e-4, batch 64, 240 epochs (--config.epochs), the learning rate
x0.1 at epochs 150, 180 and 210; base learning rate 0.05 for KD and DKD and
0.025 for CSKD, 0.01 for ShuffleNet and MobileNetV2 students; KD: CE 0.1, KD
0.9, T 4; CSKD: CE 1, CSKD+CSWT 1 (T 4, CSWT 2..6, alpha 2); DKD: CE 1, T 4,
alpha 1, beta per pair, 20 warm-up epochs.
"""

from keras_cskd.config import default_config, loss_config

# (teacher, student): DKD's beta for the pair.
PAIRS = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("resnet32x4", "shufflenetv1"): 8.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("wrn_40_2", "shufflenetv1"): 8.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("resnet50", "mobilenetv2"): 8.0,
}
SMALL_LEARNING_RATE_STUDENTS = ("shufflenetv1", "shufflenetv2", "mobilenetv2")


def get_config(spec="cskd,resnet32x4,resnet8x4"):
    method, teacher, student = (part.strip() for part in spec.split(","))
    if (teacher, student) not in PAIRS:
        pairs = ", ".join(f"{t},{s}" for t, s in PAIRS)
        raise ValueError(f"Unknown pair {teacher},{student}; known pairs: {pairs}.")
    config = default_config()
    config.model = student
    config.teacher.path = f"saved_models/cifar100_{teacher}.keras"
    config.teacher.config = f"configs/cifar100_teacher.py:{teacher}"
    config.data.name = "tfds:cifar100"
    config.data.augment = True
    config.data.batch_size = 64
    config.data.eval_batch_size = 500
    config.epochs = 240
    small = student in SMALL_LEARNING_RATE_STUDENTS
    if method == "kd":
        config.loss = loss_config("kd", temperature=4.0)
        config.student_loss_weight, config.distillation_loss_weight = 0.1, 0.9
        learning_rate = 0.01 if small else 0.05
    elif method == "cskd":
        config.loss = loss_config(
            "cskd", temperature=4.0, cswt=True, t_min=2.0, t_max=6.0, alpha=2.0
        )
        learning_rate = 0.01 if small else 0.025
    elif method == "dkd":
        config.loss = loss_config(
            "dkd",
            temperature=4.0,
            alpha=1.0,
            beta=PAIRS[teacher, student],
            warmup_epochs=20,
        )
        learning_rate = 0.01 if small else 0.05
    else:
        raise ValueError(f"Unknown method '{method}' for CIFAR-100: kd, cskd or dkd.")
    config.optimizer.update(
        name="sgd",
        learning_rate=learning_rate,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(150, 180, 210),
        decay_rate=0.1,
    )
    config.export.formats = "savedmodel,tflite,tflite_int8"
    return config
